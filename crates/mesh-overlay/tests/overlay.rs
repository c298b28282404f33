//! The overlay between "hosts" that are network namespaces on one machine: real TUN devices,
//! real WireGuard (boringtun), real namespaces. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use mesh_overlay::HostPlan;

const WITHIN: Duration = Duration::from_secs(20);

#[test]
fn endpoints_talk_across_hosts_and_on_one_host() {
    let mut lab = Lab::new(3);
    let e0 = lab.endpoint_ns("a0");
    let e1 = lab.endpoint_ns("a1");
    let e2 = lab.endpoint_ns("a2");
    let e3 = lab.endpoint_ns("a3");
    let mut net = Net::new("net1aaaaaaaaaaaaaaaa", "10.60.0.0/24", 3);
    net.local[0] = vec![
        endpoint("ep0", ip("10.60.0.2"), &e0),
        endpoint("ep2", ip("10.60.0.4"), &e2),
    ];
    net.local[1] = vec![endpoint("ep1", ip("10.60.0.3"), &e1)];
    net.local[2] = vec![endpoint("ep3", ip("10.60.0.5"), &e3)];
    let o0 = lab.start(0);
    let o1 = lab.start(1);
    let o2 = lab.start(2);
    o0.apply(&host_plan(&[&net], 0)).expect("apply host 0");
    o1.apply(&host_plan(&[&net], 1)).expect("apply host 1");
    o2.apply(&host_plan(&[&net], 2)).expect("apply host 2");

    // Ping across hosts, both ways, between all three hosts, and on one host.
    assert!(
        ping_until(&e0, ip("10.60.0.3"), WITHIN),
        "e0 -> e1 across hosts"
    );
    assert!(
        ping_until(&e1, ip("10.60.0.2"), WITHIN),
        "e1 -> e0 across hosts"
    );
    assert!(
        ping_until(&e1, ip("10.60.0.4"), WITHIN),
        "e1 -> e2 across hosts"
    );
    assert!(
        ping_until(&e3, ip("10.60.0.3"), WITHIN),
        "e3 -> e1 across hosts"
    );
    assert!(
        ping_until(&e2, ip("10.60.0.5"), WITHIN),
        "e2 -> e3 across hosts"
    );
    assert!(
        ping_until(&e0, ip("10.60.0.4"), WITHIN),
        "e0 -> e2 on one host"
    );

    // TCP with a known payload, across hosts both ways and on one host.
    let data = pattern(4 << 20, 7);
    tcp_transfer(&e0, &e1, ip("10.60.0.3"), &data, WITHIN);
    tcp_transfer(&e1, &e2, ip("10.60.0.4"), &data, WITHIN);
    tcp_transfer(&e2, &e0, ip("10.60.0.2"), &data, WITHIN);
    tcp_transfer(&e3, &e0, ip("10.60.0.2"), &data[..1 << 20], WITHIN);

    // UDP datagrams both ways.
    let a = udp_socket(&e0, ip("10.60.0.2"), 7000);
    let b = udp_socket(&e1, ip("10.60.0.3"), 7000);
    let c = udp_socket(&e3, ip("10.60.0.5"), 7000);
    assert_eq!(
        udp_deliver(&a, &b, "10.60.0.3:7000".parse().unwrap(), 20),
        20
    );
    assert_eq!(
        udp_deliver(&b, &a, "10.60.0.2:7000".parse().unwrap(), 20),
        20
    );
    assert_eq!(
        udp_deliver(&c, &b, "10.60.0.3:7000".parse().unwrap(), 20),
        20
    );
    assert_eq!(
        udp_deliver(&b, &c, "10.60.0.5:7000".parse().unwrap(), 20),
        20
    );

    // Status shows the sessions and the traffic.
    let st = o0.status();
    assert_eq!(st.networks.len(), 1);
    let n = &st.networks[0];
    assert!(n.tun_up);
    assert_eq!(n.local, vec!["ep0".to_string(), "ep2".to_string()]);
    assert_eq!(n.peers.len(), 2);
    let p = &n.peers[0];
    assert_eq!(p.id, "node1");
    assert_eq!(p.endpoint, Some(Lab::underlay(1)));
    assert_eq!(p.allowed_ips, vec![ip("10.60.0.3")]);
    assert!(p.last_handshake.is_some(), "{p:?}");
    assert!(p.rx_bytes > 4 << 20 && p.tx_bytes > 4 << 20, "{p:?}");
    assert_eq!(n.peers[1].id, "node2");
    assert!(n.peers[1].rx_bytes > 1 << 20, "{:?}", n.peers[1]);
    assert_eq!(st.counters.drop_invalid, 0, "{:?}", st.counters);
    assert_eq!(st.counters.drop_source, 0, "{:?}", st.counters);

    // Packets as large as the MTU pass with DF set; one byte more is refused.
    let max = usize::from(MTU) - 28;
    let out = ping(&e0, ip("10.60.0.3"), max);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = ping(&e0, ip("10.60.0.3"), max + 1);
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("message too long") || text.contains("Frag needed"),
        "{text}"
    );

    drop((o0, o1, o2));
}

#[test]
fn networks_with_the_same_subnet_stay_apart() {
    let mut lab = Lab::new(2);
    let a0 = lab.endpoint_ns("a0");
    let a1 = lab.endpoint_ns("a1");
    let b0 = lab.endpoint_ns("b0");
    let b1 = lab.endpoint_ns("b1");
    let mut na = Net::new("aaaaaaaaaaaa-net", "10.77.0.0/24", 2);
    let mut nb = Net::new("bbbbbbbbbbbb-net", "10.77.0.0/24", 2);
    na.local[0] = vec![endpoint("a0", ip("10.77.0.2"), &a0)];
    na.local[1] = vec![endpoint("a1", ip("10.77.0.3"), &a1)];
    nb.local[0] = vec![endpoint("b0", ip("10.77.0.4"), &b0)];
    nb.local[1] = vec![endpoint("b1", ip("10.77.0.3"), &b1)];
    let o0 = lab.start(0);
    let o1 = lab.start(1);
    o0.apply(&host_plan(&[&na, &nb], 0)).expect("apply host 0");
    o1.apply(&host_plan(&[&na, &nb], 1)).expect("apply host 1");
    assert_eq!(lab.sandboxes(0).len(), 2);

    let _ra = Responder::start(&a1, ip("10.77.0.3"), 8000, "network A");
    let _rb = Responder::start(&b1, ip("10.77.0.3"), 8000, "network B");
    assert!(ping_until(&a0, ip("10.77.0.3"), WITHIN));
    assert!(ping_until(&b0, ip("10.77.0.3"), WITHIN));
    // Each reaches its own network's 10.77.0.3.
    assert_eq!(
        tcp_read(&a0, ip("10.77.0.3"), 8000).as_deref(),
        Ok("network A")
    );
    assert_eq!(
        tcp_read(&b0, ip("10.77.0.3"), 8000).as_deref(),
        Ok("network B")
    );
    // And nothing of the other network: b0's address does not exist in A.
    assert!(!ping(&a0, ip("10.77.0.4"), 56).status.success());
    assert!(tcp_read(&a0, ip("10.77.0.4"), 8000).is_err());
    drop((o0, o1));
}

#[test]
fn strangers_get_nothing() {
    let mut lab = Lab::new(2);
    let e0 = lab.endpoint_ns("a0");
    let e1 = lab.endpoint_ns("a1");
    let mut net = Net::new("strangers", "10.61.0.0/24", 2);
    net.local[0] = vec![endpoint("ep0", ip("10.61.0.2"), &e0)];
    net.local[1] = vec![endpoint("ep1", ip("10.61.0.3"), &e1)];
    let o0 = lab.start(0);
    let o1 = lab.start(1);
    o0.apply(&host_plan(&[&net], 0)).unwrap();
    o1.apply(&host_plan(&[&net], 1)).unwrap();
    assert!(ping_until(&e0, ip("10.61.0.3"), WITHIN));

    // A machine on the underlay that is no peer: host 1's namespace, another socket.
    let target: SocketAddr = Lab::underlay(0);
    let s = in_ns(&lab.hosts[1], || {
        std::net::UdpSocket::bind("0.0.0.0:0").unwrap()
    });
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    // Garbage, a data message with a made-up index, a handshake initiation from an unknown
    // key for a made-up network key, and one made for the network's real public key.
    let mut data = vec![0u8; 64];
    data[0] = 4;
    data[4..8].copy_from_slice(&0x00ab_cd00u32.to_le_bytes());
    let stranger = |responder: [u8; 32]| {
        let mut t = boringtun::noise::Tunn::new(
            boringtun::x25519::StaticSecret::from(rand_bytes()),
            boringtun::x25519::PublicKey::from(responder),
            None,
            None,
            1,
            None,
        );
        let mut buf = [0u8; 256];
        match t.format_handshake_initiation(&mut buf, false) {
            boringtun::noise::TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no handshake"),
        }
    };
    let msgs = vec![
        b"hello there".to_vec(),
        vec![0u8; 148],
        data,
        stranger(rand_bytes()),
        stranger(net.keys[0].public().0),
    ];
    for m in &msgs {
        s.send_to(m, target).unwrap();
    }
    let mut buf = [0u8; 2048];
    assert!(
        s.recv_from(&mut buf).is_err(),
        "a stranger got an answer from the overlay"
    );
    // The overlay still works for its peers.
    assert!(ping_until(&e0, ip("10.61.0.3"), WITHIN));
    drop((o0, o1));
}

fn rand_bytes() -> [u8; 32] {
    rand::random()
}

#[test]
fn apply_is_idempotent_and_removals_clean_up() {
    let mut lab = Lab::new(2);
    let e0 = lab.endpoint_ns("a0");
    let e1 = lab.endpoint_ns("a1");
    let e2 = lab.endpoint_ns("a2");
    let mut net = Net::new("idem", "10.62.0.0/24", 2);
    net.local[0] = vec![
        endpoint("ep0", ip("10.62.0.2"), &e0),
        endpoint("ep2", ip("10.62.0.4"), &e2),
    ];
    net.local[1] = vec![endpoint("ep1", ip("10.62.0.3"), &e1)];
    let o0 = lab.start(0);
    let o1 = lab.start(1);
    o0.apply(&host_plan(&[&net], 0)).unwrap();
    o1.apply(&host_plan(&[&net], 1)).unwrap();
    assert!(ping_until(&e0, ip("10.62.0.3"), WITHIN));
    let before = o0.status();

    // Same plan again: nothing changes, the session stays.
    o0.apply(&host_plan(&[&net], 0)).unwrap();
    o0.apply(&host_plan(&[&net], 0)).unwrap();
    let after = o0.status();
    assert_eq!(before.networks.len(), after.networks.len());
    let (pb, pa) = (&before.networks[0].peers[0], &after.networks[0].peers[0]);
    assert!(pa.last_handshake.is_some());
    assert!(
        pa.last_handshake >= pb.last_handshake,
        "the session was replaced: {pb:?} -> {pa:?}"
    );
    assert!(ping(&e0, ip("10.62.0.3"), 56).status.success());

    // Remove a local endpoint: its veth goes, the others keep working.
    let sb0 = mesh_overlay::sandbox_name(&lab.prefix(0), "idem");
    net.local[0].retain(|e| e.id != "ep2");
    o0.apply(&host_plan(&[&net], 0)).unwrap();
    o1.apply(&host_plan(&[&net], 1)).unwrap();
    let links = ok(&["ip", "-n", &e2, "-o", "link", "show"]);
    assert!(!links.contains("eth0"), "{links}");
    assert_eq!(o0.status().networks[0].local, vec!["ep0".to_string()]);
    assert!(ping(&e0, ip("10.62.0.3"), 56).status.success());

    // Remove the peer on host 1's side: its route goes and traffic stops.
    let sb1 = mesh_overlay::sandbox_name(&lab.prefix(1), "idem");
    let routes = ok(&["ip", "-n", &sb1, "route", "show", "dev", "wg0"]);
    assert!(routes.contains("10.62.0.2"), "{routes}");
    let mut p1 = host_plan(&[&net], 1);
    p1.networks[0].peers.clear();
    o1.apply(&p1).unwrap();
    let routes = ok(&["ip", "-n", &sb1, "route", "show", "dev", "wg0"]);
    assert!(routes.trim().is_empty(), "{routes}");
    assert!(o1.status().networks[0].peers.is_empty());
    assert!(!ping(&e1, ip("10.62.0.2"), 56).status.success());
    // Put it back: traffic resumes.
    o1.apply(&host_plan(&[&net], 1)).unwrap();
    assert!(ping_until(&e1, ip("10.62.0.2"), WITHIN));

    // Remove the network: sandbox and endpoints go.
    assert_eq!(lab.sandboxes(0), vec![sb0.clone()]);
    o0.apply(&HostPlan::default()).unwrap();
    assert!(lab.sandboxes(0).is_empty());
    assert!(o0.status().networks.is_empty());
    let links = ok(&["ip", "-n", &e0, "-o", "link", "show"]);
    assert!(!links.contains("eth0"), "{links}");
    drop((o0, o1));
}

#[test]
fn restart_brings_traffic_back_and_leftovers_go() {
    let mut lab = Lab::new(2);
    let e0 = lab.endpoint_ns("a0");
    let e1 = lab.endpoint_ns("a1");
    let mut net = Net::new("restart", "10.63.0.0/24", 2);
    net.local[0] = vec![endpoint("ep0", ip("10.63.0.2"), &e0)];
    net.local[1] = vec![endpoint("ep1", ip("10.63.0.3"), &e1)];
    let o0 = lab.start(0);
    let o1 = lab.start(1);
    o0.apply(&host_plan(&[&net], 0)).unwrap();
    o1.apply(&host_plan(&[&net], 1)).unwrap();
    assert!(ping_until(&e0, ip("10.63.0.3"), WITHIN));

    // Host 0's daemon stops: sandbox and endpoint stay, traffic stops.
    o0.shutdown();
    let sb0 = mesh_overlay::sandbox_name(&lab.prefix(0), "restart");
    assert_eq!(lab.sandboxes(0), vec![sb0.clone()]);
    assert!(ok(&["ip", "-n", &e0, "-o", "link", "show"]).contains("eth0"));
    assert!(!ping(&e0, ip("10.63.0.3"), 56).status.success());

    // A leftover sandbox of this prefix from some earlier life.
    let stale = format!("{}-deadbeef0000", lab.prefix(0));
    ok(&["ip", "netns", "add", &stale]);

    // It comes back with the same plan: traffic flows again, the leftover is gone.
    let o0 = lab.start(0);
    o0.apply(&host_plan(&[&net], 0)).unwrap();
    assert!(
        ping_until(&e0, ip("10.63.0.3"), WITHIN),
        "traffic after restart"
    );
    assert!(ping_until(&e1, ip("10.63.0.2"), WITHIN));
    assert_eq!(lab.sandboxes(0), vec![sb0]);
    tcp_transfer(&e1, &e0, ip("10.63.0.2"), &pattern(1 << 20, 3), WITHIN);

    // Leaves nothing behind.
    o0.apply(&HostPlan::default()).unwrap();
    o1.apply(&HostPlan::default()).unwrap();
    assert!(lab.sandboxes(0).is_empty() && lab.sandboxes(1).is_empty());
    drop((o0, o1));
}

#[test]
fn invalid_plans_change_nothing() {
    let mut lab = Lab::new(1);
    let e0 = lab.endpoint_ns("a0");
    let mut net = Net::new("invalid", "10.64.0.0/24", 1);
    net.local[0] = vec![endpoint("ep0", ip("10.65.0.2"), &e0)];
    let o0 = lab.start(0);
    let err = o0.apply(&host_plan(&[&net], 0)).unwrap_err();
    assert!(
        err.to_string().contains("networks[invalid].local[ep0].ip"),
        "{err}"
    );
    assert!(lab.sandboxes(0).is_empty());
    // A second overlay cannot take the same port.
    let err = in_ns(&lab.hosts[0], || {
        mesh_overlay::Overlay::start(lab.config(0))
    })
    .err()
    .expect("second bind refused");
    assert!(err.to_string().contains("51820"), "{err}");
    drop(o0);
}

/// An IPv4/UDP packet (no UDP checksum).
fn ipv4_udp(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

#[test]
fn an_external_wireguard_peer_is_served_and_cannot_spoof() {
    use boringtun::noise::{Tunn, TunnResult};
    let mut lab = Lab::new(2);
    let e0 = lab.endpoint_ns("a0");
    let ext_key = mesh_overlay::KeyPair::generate();
    let mut net = Net::new("external", "10.68.0.0/24", 1);
    net.local[0] = vec![endpoint("ep0", ip("10.68.0.2"), &e0)];
    let mut plan = host_plan(&[&net], 0);
    plan.networks[0].peers.push(mesh_overlay::PeerPlan {
        id: "laptop".into(),
        public_key: ext_key.public(),
        endpoint: None,
        allowed_ips: vec![ip("10.68.0.50")],
        keepalive_secs: None,
    });
    let o0 = lab.start(0);
    o0.apply(&plan).unwrap();
    let server = udp_socket(&e0, ip("10.68.0.2"), 9000);

    // The external peer lives on host 1's underlay address, port 51900, speaking WireGuard
    // through its own boringtun instance.
    let sock = in_ns(&lab.hosts[1], || {
        std::net::UdpSocket::bind("0.0.0.0:51900").unwrap()
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut t = Tunn::new(
        boringtun::x25519::StaticSecret::from(
            <[u8; 32]>::try_from(
                base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    ext_key.private_b64(),
                )
                .unwrap()
                .as_slice(),
            )
            .unwrap(),
        ),
        boringtun::x25519::PublicKey::from(net.keys[0].public().0),
        None,
        None,
        42,
        None,
    );
    let node: SocketAddr = Lab::underlay(0);
    let mut buf = [0u8; 2048];
    let mut out = [0u8; 2048];
    match t.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => {
            sock.send_to(p, node).unwrap();
        }
        other => panic!("{other:?}"),
    }
    let (n, from) = sock.recv_from(&mut buf).expect("handshake response");
    assert_eq!(from, node);
    match t.decapsulate(Some(from.ip()), &buf[..n], &mut out) {
        TunnResult::WriteToNetwork(p) => {
            sock.send_to(p, node).unwrap();
        }
        other => panic!("{other:?}"),
    }
    // The node learnt where the peer is from its handshake.
    assert!(wait_for(WITHIN, || {
        o0.status().networks[0]
            .peers
            .iter()
            .any(|p| p.id == "laptop" && p.endpoint == Some("172.31.250.2:51900".parse().unwrap()))
    }));

    let mut send_inner = |src: &str, payload: &[u8]| {
        let pkt = ipv4_udp(ip(src), ip("10.68.0.2"), 9100, 9000, payload);
        match t.encapsulate(&pkt, &mut buf) {
            TunnResult::WriteToNetwork(p) => {
                sock.send_to(p, node).unwrap();
            }
            other => panic!("{other:?}"),
        }
    };
    // Its own address gets through.
    send_inner("10.68.0.50", b"hello from outside");
    let mut rb = [0u8; 256];
    let (n, from) = server
        .recv_from(&mut rb)
        .expect("datagram from the external peer");
    assert_eq!(&rb[..n], b"hello from outside");
    assert_eq!(from, "10.68.0.50:9100".parse::<SocketAddr>().unwrap());
    // An address it does not own does not.
    send_inner("10.68.0.3", b"spoofed");
    send_inner("10.68.0.2", b"spoofed");
    assert!(
        server.recv_from(&mut rb).is_err(),
        "a spoofed packet got in"
    );

    // And the answer goes back to it, encrypted.
    server
        .send_to(b"hello from inside", "10.68.0.50:9100")
        .unwrap();
    let (n, _) = sock.recv_from(&mut buf).expect("encrypted answer");
    match t.decapsulate(Some(node.ip()), &buf[..n], &mut out) {
        TunnResult::WriteToTunnelV4(p, src) => {
            assert_eq!(src, ip("10.68.0.2"));
            assert_eq!(&p[28..], b"hello from inside");
        }
        other => panic!("{other:?}"),
    }
    drop(o0);
}
