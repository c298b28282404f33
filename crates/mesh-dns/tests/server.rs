//! Real endpoints on loopback (and, as root, inside a network namespace) answering `dig`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_dns::{EndpointHandle, Resolver, ResolverConfig, Table};

const NET_A: &str = "net-a";
const NET_B: &str = "net-b";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn table() -> Table {
    let mut b = Table::builder();
    let web: Vec<IpAddr> = (11..=13).map(|i| ip(&format!("10.0.0.{i}"))).collect();
    b.add_service(NET_A, "web", Some(ip("10.0.0.2")), &web)
        .unwrap();
    let big: Vec<IpAddr> = (1..=60).map(|i| ip(&format!("10.0.1.{i}"))).collect();
    b.add_service(NET_A, "big", Some(ip("10.0.0.3")), &big)
        .unwrap();
    b.add_service(NET_B, "secret", Some(ip("10.9.0.2")), &[ip("10.9.0.3")])
        .unwrap();
    b.build()
}

fn resolver(config: ResolverConfig) -> Resolver {
    let r = Resolver::new(config).unwrap();
    r.set_table(Arc::new(table()));
    r
}

/// A UDP socket and a TCP listener on the same loopback port.
fn bind_pair(host: &str) -> (UdpSocket, TcpListener) {
    for _ in 0..100 {
        let udp = UdpSocket::bind((host, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind((host, port)) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on {host}");
}

fn serve(r: &Resolver, networks: &[&str]) -> (EndpointHandle, SocketAddr) {
    let (udp, tcp) = bind_pair("127.0.0.1");
    let addr = udp.local_addr().unwrap();
    let h = r
        .serve(networks.iter().map(|s| s.to_string()).collect(), udp, tcp)
        .unwrap();
    (h, addr)
}

#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// (name, ttl, type, data)
    answers: Vec<(String, u32, String, String)>,
    output: String,
}

impl Dig {
    fn addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .answers
            .iter()
            .filter(|a| a.2 == "A" || a.2 == "AAAA")
            .map(|a| ip(&a.3))
            .collect();
        v.sort();
        v
    }
}

fn dig_cmd(prefix: &[&str], server: SocketAddr, args: &[&str]) -> Dig {
    let (program, pre) = prefix
        .split_first()
        .map_or(("dig", &[][..]), |(p, rest)| (*p, rest));
    let out = Command::new(program)
        .args(pre)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .unwrap();
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = Dig {
        output: output.clone(),
        ..Dig::default()
    };
    let mut in_answer = false;
    for line in output.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or("");
            d.flags = flags.split_whitespace().map(str::to_string).collect();
        }
        if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
            continue;
        }
        if in_answer {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                in_answer = false;
                continue;
            }
            d.answers
                .push((f[0].into(), f[1].parse().unwrap(), f[3].into(), f[4].into()));
        }
    }
    d
}

fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    dig_cmd(&[], server, args)
}

fn ips(prefix: &str, range: std::ops::RangeInclusive<u32>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = range.map(|i| ip(&format!("{prefix}.{i}"))).collect();
    v.sort();
    v
}

#[test]
fn dig_gets_the_clusters_names_over_udp_and_tcp() {
    let r = resolver(ResolverConfig::default());
    let (_h, addr) = serve(&r, &[NET_A]);
    for transport in ["+notcp", "+tcp"] {
        let d = dig(addr, &[transport, "web", "A"]);
        assert_eq!(d.status, "NOERROR", "{}", d.output);
        assert!(d.flags.contains(&"aa".to_string()), "{}", d.output);
        assert_eq!(d.addrs(), vec![ip("10.0.0.2")]);
        assert_eq!(d.answers[0].1, 0, "TTL 0");

        let d = dig(addr, &[transport, "tasks.web", "A"]);
        assert_eq!(d.addrs(), ips("10.0.0", 11..=13), "{}", d.output);

        let d = dig(addr, &[transport, "WEB.", "AAAA"]);
        assert_eq!(d.status, "NOERROR", "{}", d.output);
        assert!(d.answers.is_empty());

        let d = dig(addr, &[transport, "nosuch", "A"]);
        assert_eq!(d.status, "NXDOMAIN", "{}", d.output);
        let d = dig(addr, &[transport, "tasks.nosuch", "A"]);
        assert_eq!(d.status, "NXDOMAIN", "{}", d.output);
        // No upstream configured: a name of the host's gets SERVFAIL.
        let d = dig(addr, &[transport, "example.com", "A"]);
        assert_eq!(d.status, "SERVFAIL", "{}", d.output);
    }
}

#[test]
fn large_answers_truncate_over_udp_and_complete_over_tcp() {
    let r = resolver(ResolverConfig::default());
    let (_h, addr) = serve(&r, &[NET_A]);
    let d = dig(addr, &["+noedns", "+ignore", "tasks.big"]);
    assert!(d.flags.contains(&"tc".to_string()), "{}", d.output);
    assert!(d.answers.len() < 60);
    // dig retries over TCP by itself on TC.
    let d = dig(addr, &["+noedns", "tasks.big"]);
    assert_eq!(d.addrs(), ips("10.0.1", 1..=60), "{}", d.output);
    let d = dig(addr, &["+tcp", "tasks.big"]);
    assert_eq!(d.addrs(), ips("10.0.1", 1..=60), "{}", d.output);
    // With EDNS and room enough, UDP carries all of it.
    let d = dig(addr, &["+edns=0", "+bufsize=4096", "+ignore", "tasks.big"]);
    assert!(!d.flags.contains(&"tc".to_string()), "{}", d.output);
    assert_eq!(d.answers.len(), 60);
    assert!(d.output.contains("; EDNS: version: 0"), "{}", d.output);
}

#[test]
fn scope_follows_the_task_and_endpoints_are_apart() {
    let r = resolver(ResolverConfig {
        threads: 2,
        ..ResolverConfig::default()
    });
    let (h, addr) = serve(&r, &[NET_A]);
    let (_hb, addr_b) = serve(&r, &[NET_B]);
    assert_eq!(dig(addr, &["secret"]).status, "NXDOMAIN");
    assert_eq!(dig(addr_b, &["secret"]).addrs(), vec![ip("10.9.0.2")]);
    assert_eq!(dig(addr_b, &["web"]).status, "NXDOMAIN");
    h.set_scope(vec![NET_A.into(), NET_B.into()]);
    assert_eq!(h.networks(), vec![NET_A.to_string(), NET_B.to_string()]);
    assert_eq!(dig(addr, &["secret"]).addrs(), vec![ip("10.9.0.2")]);
    assert_eq!(dig(addr, &["+tcp", "secret"]).addrs(), vec![ip("10.9.0.2")]);
    assert_eq!(dig(addr, &["web"]).addrs(), vec![ip("10.0.0.2")]);
    // Endpoints are spread over both threads: many queries, every one answered.
    for i in 0..20 {
        let name = if i % 2 == 0 { "web" } else { "tasks.web" };
        assert_eq!(dig(addr, &[name]).status, "NOERROR");
    }
}

#[test]
fn one_endpoint_on_several_threads_through_reuseport_sockets() {
    use socket2::{Domain, Socket, Type};
    let r = resolver(ResolverConfig {
        threads: 2,
        ..ResolverConfig::default()
    });
    let (first, tcp) = bind_pair("127.0.0.1");
    let addr = first.local_addr().unwrap();
    drop(first);
    let udp: Vec<UdpSocket> = (0..2)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            s.into()
        })
        .collect();
    let _h = r.serve_sockets(vec![NET_A.into()], udp, vec![tcp]).unwrap();
    // Each query comes from a new port, so the kernel spreads them over both sockets.
    for _ in 0..20 {
        assert_eq!(dig(addr, &["web"]).addrs(), vec![ip("10.0.0.2")]);
    }
    assert_eq!(dig(addr, &["+tcp", "web"]).addrs(), vec![ip("10.0.0.2")]);
    assert!(matches!(
        r.serve_sockets(vec![], vec![], vec![]),
        Err(mesh_dns::Error::NoSockets)
    ));
}

#[test]
fn a_table_swap_is_seen_by_the_next_query() {
    let r = resolver(ResolverConfig::default());
    let (_h, addr) = serve(&r, &[NET_A]);
    assert_eq!(dig(addr, &["web"]).addrs(), vec![ip("10.0.0.2")]);
    assert_eq!(dig(addr, &["api"]).status, "NXDOMAIN");
    let mut b = Table::builder();
    b.add_service(NET_A, "web", Some(ip("10.0.0.7")), &[])
        .unwrap();
    b.add_service(NET_A, "api", None, &[ip("10.0.0.8")])
        .unwrap();
    r.set_table(Arc::new(b.build()));
    assert_eq!(dig(addr, &["web"]).addrs(), vec![ip("10.0.0.7")]);
    assert_eq!(dig(addr, &["api"]).addrs(), vec![ip("10.0.0.8")]);
}

/// A second resolver standing in for the host's: it has `www.example.test` as a name of its
/// own, with a TTL long enough to be cached.
fn upstream(name_ip: &str) -> (Resolver, EndpointHandle, SocketAddr) {
    let up = Resolver::new(ResolverConfig {
        ttl: 300,
        ..ResolverConfig::default()
    })
    .unwrap();
    let mut b = Table::builder();
    b.add_ip("host", "www.example.test", ip(name_ip)).unwrap();
    b.add_ip("host", "other.example.test", ip("192.0.2.20"))
        .unwrap();
    up.set_table(Arc::new(b.build()));
    let (h, addr) = serve(&up, &["host"]);
    (up, h, addr)
}

#[test]
fn other_names_are_forwarded_and_cached() {
    let (up, _uh, up_addr) = upstream("192.0.2.10");
    let r = resolver(ResolverConfig {
        upstreams: vec![up_addr],
        ..ResolverConfig::default()
    });
    let (_h, addr) = serve(&r, &[NET_A]);
    let d = dig(addr, &["www.example.test"]);
    assert_eq!(d.status, "NOERROR", "{}", d.output);
    assert_eq!(d.addrs(), vec![ip("192.0.2.10")]);
    assert!(!d.flags.contains(&"aa".to_string()) || d.answers[0].1 <= 300);
    let d = dig(addr, &["+tcp", "other.example.test"]);
    assert_eq!(d.addrs(), vec![ip("192.0.2.20")], "{}", d.output);
    // The cluster's names still come from the table.
    assert_eq!(dig(addr, &["web"]).addrs(), vec![ip("10.0.0.2")]);

    // The upstream changes its answer; ours is cached for its TTL.
    let mut b = Table::builder();
    b.add_ip("host", "www.example.test", ip("192.0.2.99"))
        .unwrap();
    up.set_table(Arc::new(b.build()));
    let d = dig(addr, &["www.example.test"]);
    assert_eq!(d.addrs(), vec![ip("192.0.2.10")], "{}", d.output);
    assert!(d.answers[0].1 <= 300);
    // A name the upstream cannot answer (it has no upstream of its own): SERVFAIL passed on.
    let d = dig(addr, &["nothing.example.org"]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.output);
}

#[tokio::test]
async fn resolve_forwards_from_the_callers_runtime() {
    let (_up, _uh, up_addr) = upstream("192.0.2.10");
    let r = resolver(ResolverConfig {
        upstreams: vec![up_addr],
        ..ResolverConfig::default()
    });
    // A query for www.example.test, type A, id 0x0707, RD.
    let mut q = vec![0x07, 0x07, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["www", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(
        r.answer(&[NET_A], &q, mesh_dns::Transport::Udp),
        mesh_dns::Outcome::Forward
    );
    let answer = r
        .resolve(&[NET_A], &q, mesh_dns::Transport::Udp)
        .await
        .unwrap();
    assert_eq!(&answer[..2], &[0x07, 0x07]);
    assert_eq!(answer[3] & 0x0F, 0, "NOERROR");
    assert_eq!(u16::from_be_bytes([answer[6], answer[7]]), 1, "one answer");
    assert_eq!(&answer[answer.len() - 4..], &[192, 0, 2, 10]);
    // Now cached: answered without I/O.
    assert!(matches!(
        r.answer(&[NET_A], &q, mesh_dns::Transport::Udp),
        mesh_dns::Outcome::Reply(_)
    ));
    drop(r);
}

#[test]
fn the_next_upstream_is_tried_when_one_is_down() {
    // Nothing listens on `down`: its port is taken by a socket that is then closed.
    let down = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_up, _uh, up_addr) = upstream("192.0.2.10");
    let r = resolver(ResolverConfig {
        upstreams: vec![down, up_addr],
        ..ResolverConfig::default()
    });
    let (_h, addr) = serve(&r, &[NET_A]);
    let d = dig(addr, &["www.example.test"]);
    assert_eq!(d.addrs(), vec![ip("192.0.2.10")], "{}", d.output);
}

#[test]
fn an_unreachable_upstream_gives_servfail_not_a_hang() {
    // A socket that reads nothing: queries to it are never answered.
    let black_hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let r = resolver(ResolverConfig {
        upstreams: vec![black_hole.local_addr().unwrap()],
        upstream_timeout: Duration::from_millis(500),
        ..ResolverConfig::default()
    });
    let (_h, addr) = serve(&r, &[NET_A]);
    // dig waits 5 s: SERVFAIL must come before that.
    let d = dig(addr, &["www.example.test"]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.output);

    // Over TCP, an upstream that accepts and never answers.
    let r = resolver(ResolverConfig {
        upstreams: vec![silent.local_addr().unwrap()],
        upstream_timeout: Duration::from_millis(500),
        ..ResolverConfig::default()
    });
    let (_h, addr) = serve(&r, &[NET_A]);
    let d = dig(addr, &["+tcp", "www.example.test"]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.output);
}

#[test]
fn a_stopped_endpoint_closes_its_sockets() {
    let r = resolver(ResolverConfig::default());
    let (h, addr) = serve(&r, &[NET_A]);
    assert_eq!(dig(addr, &["web"]).status, "NOERROR");
    h.stop();
    // The loops end on the serving thread's next turn; then the port is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "sockets still open after stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace for the test, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn can_make_namespaces() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("ip").arg("-V").output().is_ok()
}

/// Binds 127.0.0.11:53 (UDP and TCP) inside the namespace `name`, from a thread that enters
/// it, as meshd does for a task.
fn bind_in_netns(name: &str) -> (UdpSocket, TcpListener) {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        assert_eq!(
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns"
        );
        let udp = UdpSocket::bind("127.0.0.11:53").unwrap();
        let tcp = TcpListener::bind("127.0.0.11:53").unwrap();
        (udp, tcp)
    })
    .join()
    .unwrap()
}

#[test]
fn an_endpoint_inside_a_task_namespace_forwards_from_the_host() {
    if !can_make_namespaces() {
        eprintln!("skipped: needs root and iproute2 to make a network namespace");
        return;
    }
    let ns = Netns(format!("mesh-dns-test-{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    // The upstream listens on the host's loopback, which the task's namespace cannot reach:
    // a forwarded answer proves forwarding leaves from the host.
    let (_up, _uh, up_addr) = upstream("192.0.2.10");
    let r = resolver(ResolverConfig {
        upstreams: vec![up_addr],
        ..ResolverConfig::default()
    });
    let (udp, tcp) = bind_in_netns(&ns.0);
    let _h = r.serve(vec![NET_A.into()], udp, tcp).unwrap();
    let inside = ["ip", "netns", "exec", ns.0.as_str(), "dig"];
    let server: SocketAddr = "127.0.0.11:53".parse().unwrap();
    let d = dig_cmd(&inside, server, &["web"]);
    assert_eq!(d.addrs(), vec![ip("10.0.0.2")], "{}", d.output);
    let d = dig_cmd(&inside, server, &["+tcp", "tasks.web"]);
    assert_eq!(d.addrs(), ips("10.0.0", 11..=13), "{}", d.output);
    let d = dig_cmd(&inside, server, &["www.example.test"]);
    assert_eq!(d.addrs(), vec![ip("192.0.2.10")], "{}", d.output);
    let d = dig_cmd(&inside, up_addr, &["www.example.test"]);
    assert!(
        d.answers.is_empty(),
        "the host's loopback is out of the task's reach"
    );
}
