//! Published ports on the eBPF path, in namespaces: three hosts on an underlay, a backend
//! task behind each host's sandbox, a client on the underlay. Connections to one host's
//! published port reach the backends of all three in turn, each seeing the client's own
//! address, replies coming straight from the backend's host. Needs root.

mod ebpf_lab;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use ebpf_lab::{IO_TIMEOUT, Lab, ip, is_root, tcp_ask, tcp_server, udp_server, udp_socket};
use mesh_ingress::ebpf::{EbpfConfig, EbpfMesh};
use mesh_ingress::{Backend, Egress, Listener, MeshPlan, Proto};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const HOSTS: [&str; 3] = ["a", "b", "c"];

fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 0, 1 + i as u8)
}

fn task_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, 11 + i as u8)
}

/// The underlay (bridge in `ul`), the client `cl`, and per host X: `hX` (external `eth0`),
/// its sandbox `sX` (bridge with the gateway, forwarding on) and the task `tX` behind it
/// (default route via the sandbox). Task X answers `"tX <client ip>"` on TCP and UDP 80 and
/// `"tX"` per line on TCP 81.
fn topology(lab: &mut Lab) {
    let ul = lab.netns("ul");
    ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &ul, "link", "set", "br0", "up"]);
    let mut on_underlay = vec![("cl".to_string(), CLIENT)];
    for (i, h) in HOSTS.iter().enumerate() {
        on_underlay.push((format!("h{h}"), host_ip(i)));
    }
    for (short, addr) in &on_underlay {
        let ns = lab.netns(short);
        let port = format!("p-{short}");
        ip(&[
            "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    }
    // The client sends real full-size frames (as over a NIC), not 64 KiB GSO packets.
    let cl = lab.name("cl");
    let out = Command::new("ip")
        .args([
            "netns", "exec", &cl, "ethtool", "-K", "eth0", "tso", "off", "gso", "off",
        ])
        .output()
        .unwrap_or_else(|e| panic!("ethtool (apt-get install ethtool): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, h) in HOSTS.iter().enumerate() {
        let s = lab.netns(&format!("s{h}"));
        let t = lab.netns(&format!("t{h}"));
        ip(&["-n", &s, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &s, "addr", "add", "172.30.0.1/24", "dev", "br0"]);
        ip(&["-n", &s, "link", "set", "br0", "up"]);
        ip(&[
            "-n", &s, "link", "add", "v-t", "type", "veth", "peer", "name", "eth0", "netns", &t,
        ]);
        ip(&["-n", &s, "link", "set", "v-t", "master", "br0", "up"]);
        ip(&[
            "-n",
            &t,
            "addr",
            "add",
            &format!("{}/24", task_ip(i)),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &t, "link", "set", "eth0", "up"]);
        ip(&["-n", &t, "route", "add", "default", "via", "172.30.0.1"]);
        sysctls(lab, &format!("s{h}"));
        let name = format!("t{h}");
        tcp_server(lab, &name, 80, &name);
        udp_server(lab, &name, 80, &name);
        line_server(lab, &name, 81, &name);
    }
}

/// What meshd's sandboxes have: forwarding on, no reverse-path filter.
fn sysctls(lab: &Lab, short: &str) {
    lab.in_ns(short, || {
        for (k, v) in [
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
            ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
        ] {
            std::fs::write(k, v).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
    });
}

/// A TCP server answering `"<name>\n"` to every line, for as long as the connection lasts.
fn line_server(lab: &Lab, ns: &str, port: u16, name: &str) {
    let l = lab
        .in_ns(ns, || TcpListener::bind(("0.0.0.0", port)))
        .unwrap_or_else(|e| panic!("binding {port} in {ns}: {e}"));
    let name = name.to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let name = name.clone();
            std::thread::spawn(move || {
                let Ok(mut w) = c.try_clone() else { return };
                for line in BufReader::new(c).lines() {
                    if line.is_err() || w.write_all(format!("{name}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Host `i`'s plan: TCP 8080 and UDP 8080 → tasks' port 80, TCP 8081 → port 81, over the
/// tasks in `tasks` (indices), each local to host `i` or remote on its own host.
fn plan(lab: &Lab, i: usize, tasks: &[usize]) -> MeshPlan {
    let listener = |proto, port, target| Listener {
        proto,
        port,
        service: "web".into(),
        egress: Egress {
            netns: lab.path(&format!("s{}", HOSTS[i])),
            source: None,
        },
        backends: tasks
            .iter()
            .map(|&t| Backend {
                addr: SocketAddrV4::new(task_ip(t), target),
                node: (t != i).then(|| host_ip(t)),
            })
            .collect(),
        proxy_protocol: false,
    };
    MeshPlan {
        listeners: vec![
            listener(Proto::Tcp, 8080, 80),
            listener(Proto::Udp, 8080, 80),
            listener(Proto::Tcp, 8081, 81),
        ],
        vips: vec![],
    }
}

fn load_all(lab: &mut Lab) -> Vec<EbpfMesh> {
    let dir = lab.mount_dir();
    (0..3)
        .map(|i| {
            let mesh = EbpfMesh::load(EbpfConfig {
                cgroup2_dir: dir.clone(),
                netns: Some(lab.path(&format!("h{}", HOSTS[i]))),
                interfaces: vec!["eth0".into()],
                encap_port: 51821,
                drain: Duration::from_secs(600),
            })
            .unwrap_or_else(|e| panic!("loading on host {i}: {e}"));
            mesh.set_nodes(&[host_ip(0), host_ip(1), host_ip(2)]);
            mesh
        })
        .collect()
}

fn apply_all(lab: &Lab, meshes: &[EbpfMesh], tasks: &[usize]) {
    for (i, m) in meshes.iter().enumerate() {
        let r = m
            .apply(&plan(lab, i, tasks))
            .unwrap_or_else(|e| panic!("apply on host {i}: {e}"));
        assert!(r.skipped.is_empty(), "host {i}: {r:?}");
        assert_eq!((r.ports, r.links), (3, 1), "host {i}: {r:?}");
    }
}

/// Asks host `h`'s TCP 8080 from the client; the name of the task that answered, after
/// checking it saw the client's own address.
fn ask(lab: &Lab, h: usize) -> String {
    let (answer, peer) = tcp_ask(lab, "cl", SocketAddrV4::new(host_ip(h), 8080))
        .unwrap_or_else(|e| panic!("tcp to host {h}: {e}"));
    assert_eq!(peer, SocketAddr::from((host_ip(h), 8080)));
    let (name, seen) = answer
        .split_once(' ')
        .unwrap_or_else(|| panic!("answer {answer:?}"));
    assert_eq!(
        seen,
        CLIENT.to_string(),
        "the backend sees the client's address"
    );
    name.to_string()
}

#[test]
fn published_ports_across_three_hosts() {
    if !is_root() {
        return;
    }
    let mut lab = Lab::new("ing");
    topology(&mut lab);
    let meshes = load_all(&mut lab);
    apply_all(&lab, &meshes, &[0, 1, 2]);

    // TCP: three connections to host a reach the tasks of a, b and c; the same from b.
    for h in [0, 1] {
        let names: BTreeSet<String> = (0..3).map(|_| ask(&lab, h)).collect();
        assert_eq!(
            names,
            BTreeSet::from(["ta".to_string(), "tb".into(), "tc".into()]),
            "via host {h}"
        );
    }
    let s: Vec<_> = meshes
        .iter()
        .map(|m| m.stats().unwrap_or_else(|e| panic!("stats: {e}")))
        .collect();
    assert!(
        s[0].ingress_local >= 1 && s[0].ingress_encap >= 1,
        "{:?}",
        s[0]
    );
    assert!(s[1].ingress_decap >= 1 && s[2].ingress_decap >= 1, "{s:?}");
    assert!(
        s[1].ingress_replies >= 1 && s[2].ingress_replies >= 1,
        "{s:?}"
    );

    // UDP by flow: one socket's datagrams stay on one task, the reply shows host a's
    // address and port; three sockets reach three tasks.
    let mut names = BTreeSet::new();
    for _ in 0..3 {
        let sock = udp_socket(&lab, "cl");
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            sock.send_to(b"hi", (host_ip(0), 8080))
                .unwrap_or_else(|e| panic!("sendto: {e}"));
            let mut buf = [0u8; 100];
            let (n, from) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("recvfrom: {e}"));
            assert_eq!(from, SocketAddr::from((host_ip(0), 8080)));
            let answer = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(answer.ends_with(&format!(" {CLIENT}")), "{answer}");
            seen.insert(answer);
        }
        assert_eq!(seen.len(), 1, "one flow, one task: {seen:?}");
        names.extend(seen);
    }
    assert_eq!(names.len(), 3, "{names:?}");

    // A long-lived connection keeps its task while the backend list changes, even when
    // its task leaves the rotation; new connections go to the others.
    let conn = lab
        .in_ns("cl", || {
            TcpStream::connect_timeout(&SocketAddr::from((host_ip(0), 8081)), IO_TIMEOUT)
        })
        .unwrap_or_else(|e| panic!("connect 8081: {e}"));
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    conn.set_write_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut w = conn.try_clone().unwrap_or_else(|e| panic!("{e}"));
    let mut r = BufReader::new(conn);
    let mut line = || {
        w.write_all(b"x\n").unwrap_or_else(|e| panic!("write: {e}"));
        let mut s = String::new();
        r.read_line(&mut s).unwrap_or_else(|e| panic!("read: {e}"));
        s.trim().to_string()
    };
    let pinned = line();
    let gone = ["ta", "tb", "tc"]
        .iter()
        .position(|n| *n == pinned)
        .unwrap_or_else(|| panic!("answer {pinned:?}"));
    let rest: Vec<usize> = (0..3).filter(|t| *t != gone).collect();
    apply_all(&lab, &meshes, &rest);
    for _ in 0..3 {
        assert_eq!(line(), pinned, "the flow stays on its task");
    }
    let now: BTreeSet<String> = (0..4).map(|_| ask(&lab, 0)).collect();
    assert!(!now.contains(&pinned) && now.len() == 2, "{now:?}");
    let r = meshes[gone]
        .apply(&plan(&lab, gone, &rest))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.draining, 3, "{r:?}");

    // The list changes again (the task comes back): the connection still holds.
    apply_all(&lab, &meshes, &[0, 1, 2]);
    assert_eq!(line(), pinned);

    // Full-size segments reach every task, the remote ones too (encapsulation adds 36
    // bytes: the MSS the backends announce is clamped to leave room for them).
    for _ in 0..3 {
        let mut c = lab
            .in_ns("cl", || {
                TcpStream::connect_timeout(&SocketAddr::from((host_ip(0), 8081)), IO_TIMEOUT)
            })
            .unwrap_or_else(|e| panic!("connect 8081: {e}"));
        c.set_read_timeout(Some(IO_TIMEOUT))
            .unwrap_or_else(|e| panic!("{e}"));
        c.set_write_timeout(Some(IO_TIMEOUT))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut big = vec![b'x'; 256 * 1024];
        big.push(b'\n');
        c.write_all(&big).unwrap_or_else(|e| panic!("write: {e}"));
        let mut s = String::new();
        BufReader::new(c)
            .read_line(&mut s)
            .unwrap_or_else(|e| panic!("a 256 KiB request through host a: {e}"));
        assert!(s.starts_with('t'), "{s:?}");
    }

    // Anything else a task sends through the link is dropped.
    let before = meshes[0]
        .stats()
        .map(|s| s.ingress_dropped_link)
        .unwrap_or(0);
    let stray = lab.in_ns("ta", || {
        TcpStream::connect_timeout(&SocketAddr::from((CLIENT, 9)), Duration::from_secs(1))
    });
    assert!(stray.is_err());
    let after = meshes[0]
        .stats()
        .map(|s| s.ingress_dropped_link)
        .unwrap_or(0);
    assert!(after > before, "{before} → {after}");
}

#[test]
fn unload_removes_links_and_programs() {
    if !is_root() {
        return;
    }
    let mut lab = Lab::new("inu");
    topology(&mut lab);
    // A link a killed daemon left behind.
    let (ha, sa) = (lab.name("ha"), lab.path("sa").display().to_string());
    let stale = "mi-0123456789ab";
    ip(&[
        "-n", &ha, "link", "add", stale, "type", "veth", "peer", "name", stale, "netns", &sa,
    ]);
    let meshes = load_all(&mut lab);
    apply_all(&lab, &meshes, &[0, 1, 2]);
    assert_eq!(ask(&lab, 2).len(), 2);
    let links: Vec<(String, String)> = meshes
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            m.mesh_links()
                .into_iter()
                .map(move |(_, name)| (format!("h{}", HOSTS[i]), name))
        })
        .collect();
    assert_eq!(links.len(), 3);
    let shows = |ns: &str, dev: &str| {
        Command::new("ip")
            .args(["-n", &lab.name(ns), "link", "show", dev])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    for (ns, dev) in &links {
        assert!(shows(ns, dev), "{dev} in {ns}");
    }
    assert!(!shows("ha", stale), "the stale link is gone");
    drop(meshes);
    for (ns, dev) in &links {
        assert!(!shows(ns, dev), "{dev} still in {ns}");
    }
    // Nothing answers on the published port any more (the host's stack refuses).
    let e = tcp_ask(&lab, "cl", SocketAddrV4::new(host_ip(0), 8080));
    assert!(e.is_err(), "{e:?}");
}
