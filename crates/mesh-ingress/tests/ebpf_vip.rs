//! Service VIPs on the eBPF path, in namespaces: a registered client reaches the backends
//! round-robin on any port, TCP and UDP, with its own address; an unregistered one reaches
//! the VIP itself; backend changes apply to new connections; unloading leaves nothing.
//! Needs root.

mod ebpf_lab;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

use ebpf_lab::{Lab, ip, is_root, tcp_ask, tcp_server, udp_server, udp_socket};
use mesh_ingress::ebpf::{EbpfConfig, EbpfMesh};
use mesh_ingress::{MeshPlan, VipSandbox, VipService};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const B1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const B2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);

/// One L2 segment (a bridge in namespace `sw`) joining: `c` (the registered client), `u`
/// (a namespace not registered), backends `b1` and `b2`, and `v`, which holds the VIP
/// address itself. Every server answers with its name and the client address it sees.
fn topology(lab: &mut Lab) {
    let sw = lab.netns("sw");
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &sw, "link", "set", "br0", "up"]);
    for (short, addr) in [
        ("c", CLIENT),
        ("u", OTHER),
        ("b1", B1),
        ("b2", B2),
        ("v", VIP),
    ] {
        let ns = lab.netns(short);
        let port = format!("p-{short}");
        ip(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
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
    for (ns, name) in [("b1", "b1"), ("b2", "b2"), ("v", "vip")] {
        for port in [8080, 9090] {
            tcp_server(lab, ns, port, name);
            udp_server(lab, ns, port, name);
        }
    }
}

fn plan(lab: &Lab, backends: Option<Vec<Ipv4Addr>>) -> MeshPlan {
    MeshPlan {
        listeners: vec![],
        vips: vec![VipSandbox {
            network_id: "net1".into(),
            netns: lab.path("sw"),
            source: Ipv4Addr::new(10, 77, 0, 250),
            clients: vec![lab.path("c")],
            services: backends
                .map(|backends| VipService {
                    name: "web".into(),
                    vip: VIP,
                    backends,
                })
                .into_iter()
                .collect(),
        }],
    }
}

fn load(lab: &mut Lab) -> EbpfMesh {
    let cfg = EbpfConfig {
        cgroup2_dir: lab.mount_dir(),
        ..EbpfConfig::default()
    };
    EbpfMesh::load(cfg).unwrap_or_else(|e| panic!("loading the eBPF path: {e}"))
}

/// Asks `VIP:port` over TCP from `ns` `n` times: the names of who answered, after checking
/// each saw the client's own address and the client saw the VIP as its peer.
fn ask_tcp(lab: &Lab, ns: &str, port: u16, n: usize) -> Vec<String> {
    let client = if ns == "c" { CLIENT } else { OTHER };
    (0..n)
        .map(|_| {
            let (answer, peer) = tcp_ask(lab, ns, SocketAddrV4::new(VIP, port))
                .unwrap_or_else(|e| panic!("tcp to {VIP}:{port} from {ns}: {e}"));
            let (name, seen) = answer
                .split_once(' ')
                .unwrap_or_else(|| panic!("answer {answer:?}"));
            assert_eq!(
                seen,
                client.to_string(),
                "the backend sees the client itself"
            );
            assert_eq!(
                peer,
                SocketAddr::from((VIP, port)),
                "getpeername shows the VIP"
            );
            name.to_string()
        })
        .collect()
}

fn alternates(names: &[String]) -> bool {
    names.len() >= 2
        && names[0] != names[1]
        && names.iter().enumerate().all(|(i, n)| *n == names[i % 2])
}

#[test]
fn vips_over_tcp_and_udp() {
    if !is_root() {
        return;
    }
    let mut lab = Lab::new("vip");
    topology(&mut lab);
    let mesh = load(&mut lab);
    let report = mesh
        .apply(&plan(&lab, Some(vec![B1, B2])))
        .unwrap_or_else(|e| panic!("apply: {e}"));
    assert!(report.skipped.is_empty(), "{report:?}");
    assert_eq!((report.vip_clients, report.vip_services), (1, 1));

    // TCP: every port of the VIP, both backends in turn, on the same port.
    for port in [8080, 9090] {
        let names = ask_tcp(&lab, "c", port, 4);
        assert!(alternates(&names), "port {port}: {names:?}");
        let set: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(set, BTreeSet::from(["b1", "b2"]), "port {port}");
    }

    // A namespace that is not registered reaches the VIP's own holder.
    assert_eq!(ask_tcp(&lab, "u", 8080, 2), ["vip", "vip"]);

    // Connected UDP: the reply comes from the VIP.
    let mut udp_names = Vec::new();
    for _ in 0..2 {
        let s = udp_socket(&lab, "c");
        s.connect((VIP, 8080))
            .unwrap_or_else(|e| panic!("udp connect: {e}"));
        assert_eq!(
            s.peer_addr().unwrap_or_else(|e| panic!("{e}")),
            SocketAddr::from((VIP, 8080))
        );
        s.send(b"hi").unwrap_or_else(|e| panic!("udp send: {e}"));
        let mut buf = [0u8; 100];
        let n = s.recv(&mut buf).unwrap_or_else(|e| panic!("udp recv: {e}"));
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.ends_with(&CLIENT.to_string()), "{answer}");
        udp_names.push(answer);
    }
    assert_ne!(
        udp_names[0], udp_names[1],
        "two connected sockets, two backends"
    );

    // Unconnected UDP: recvfrom shows the VIP; one socket's datagrams stick to one backend;
    // the next socket goes to the next backend.
    let mut per_socket = Vec::new();
    for _ in 0..2 {
        let s = udp_socket(&lab, "c");
        let mut names = BTreeSet::new();
        for _ in 0..3 {
            s.send_to(b"hi", (VIP, 9090))
                .unwrap_or_else(|e| panic!("udp sendto: {e}"));
            let mut buf = [0u8; 100];
            let (n, from) = s
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("udp recvfrom: {e}"));
            assert_eq!(
                from,
                SocketAddr::from((VIP, 9090)),
                "the reply shows the VIP"
            );
            names.insert(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        assert_eq!(names.len(), 1, "one socket, one backend: {names:?}");
        per_socket.extend(names);
    }
    assert_ne!(per_socket[0], per_socket[1], "{per_socket:?}");

    let stats = mesh.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!(stats.vip_connects, 8 + 2, "{stats:?}");
    assert_eq!(stats.vip_sendmsgs, 6, "{stats:?}");
    assert!(
        stats.vip_recvmsgs >= 6 && stats.vip_getpeernames >= 10,
        "{stats:?}"
    );
}

#[test]
fn backend_changes_apply_to_new_connections() {
    if !is_root() {
        return;
    }
    let mut lab = Lab::new("chg");
    topology(&mut lab);
    let mesh = load(&mut lab);
    let apply = |b: Option<Vec<Ipv4Addr>>| {
        mesh.apply(&plan(&lab, b))
            .unwrap_or_else(|e| panic!("apply: {e}"))
    };
    apply(Some(vec![B1]));
    assert_eq!(ask_tcp(&lab, "c", 8080, 3), ["b1", "b1", "b1"]);

    // An unconnected UDP socket pinned to b1 moves when b1 leaves.
    let s = udp_socket(&lab, "c");
    let ask_udp = || {
        s.send_to(b"hi", (VIP, 8080))
            .unwrap_or_else(|e| panic!("sendto: {e}"));
        let mut buf = [0u8; 100];
        let (n, _) = s
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("recvfrom: {e}"));
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(ask_udp().starts_with("b1 "));

    apply(Some(vec![B2]));
    assert_eq!(ask_tcp(&lab, "c", 9090, 3), ["b2", "b2", "b2"]);
    assert!(ask_udp().starts_with("b2 "));

    apply(Some(vec![B1, B2]));
    let names = ask_tcp(&lab, "c", 8080, 4);
    assert!(alternates(&names), "{names:?}");

    // No backend: connections are refused at connect().
    apply(Some(vec![]));
    let e = tcp_ask(&lab, "c", SocketAddrV4::new(VIP, 8080));
    assert!(e.is_err(), "{e:?}");
    assert!(mesh.stats().map(|s| s.vip_refused).unwrap_or(0) >= 1);

    // The service leaves the plan: the VIP is just an address again.
    let report = apply(None);
    assert_eq!(report.vip_services, 0);
    assert_eq!(ask_tcp(&lab, "c", 8080, 1), ["vip"]);

    // The client leaves the plan too.
    let mut p = plan(&lab, Some(vec![B1]));
    p.vips[0].clients.clear();
    let report = mesh.apply(&p).unwrap_or_else(|e| panic!("apply: {e}"));
    assert_eq!(report.vip_clients, 0);
    assert_eq!(ask_tcp(&lab, "c", 8080, 1), ["vip"]);

    // A client namespace that does not exist is reported, the rest applied.
    let mut p = plan(&lab, Some(vec![B2]));
    p.vips[0].clients.push(lab.path("gone"));
    let report = mesh.apply(&p).unwrap_or_else(|e| panic!("apply: {e}"));
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert!(
        report.skipped[0].contains("vips[net1].clients[1]"),
        "{report:?}"
    );
    assert_eq!(ask_tcp(&lab, "c", 8080, 1), ["b2"]);
}

/// Waits until `cond` holds, failing the test after 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: still not true after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The program IDs `bpftool cgroup show DIR` lists, or None without bpftool.
fn attached(dir: &std::path::Path) -> Option<BTreeSet<u32>> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // JSON entries look like {"id":123,"attach_type":"connect4",...}.
    Some(
        text.split("\"id\":")
            .skip(1)
            .filter_map(|s| {
                s.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .collect(),
    )
}

#[test]
fn unload_leaves_nothing_attached() {
    if !is_root() {
        return;
    }
    let mut lab = Lab::new("unl");
    let dir = lab.mount_dir();
    let mesh = load(&mut lab);
    let ids: BTreeSet<u32> = mesh
        .program_ids()
        .unwrap_or_else(|e| panic!("ids: {e}"))
        .into_iter()
        .collect();
    // Four cgroup programs (VIPs) and two TC programs (published ports).
    assert_eq!(ids.len(), 6);
    let loaded = |ids: &BTreeSet<u32>| {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| ids.contains(&p.id()))
            .count()
    };
    assert_eq!(loaded(&ids), 6);
    if let Some(now) = attached(&dir) {
        assert_eq!(
            ids.intersection(&now).count(),
            4,
            "attached: {now:?}, ours: {ids:?}"
        );
    }
    drop(mesh);
    // The kernel frees programs asynchronously after the last reference goes: wait for it,
    // within a bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    while loaded(&ids) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(loaded(&ids), 0, "programs still loaded after drop");
    if let Some(now) = attached(&dir) {
        assert!(ids.is_disjoint(&now), "still attached: {now:?}");
    }
}

#[test]
fn probe_succeeds_here() {
    if !is_root() {
        return;
    }
    let mut lab = Lab::new("prb");
    let cfg = EbpfConfig {
        cgroup2_dir: lab.mount_dir(),
        ..EbpfConfig::default()
    };
    mesh_ingress::ebpf::probe(&cfg).unwrap_or_else(|e| panic!("probe: {e}"));
    let bad = EbpfConfig {
        cgroup2_dir: "relative/dir".into(),
        ..EbpfConfig::default()
    };
    let e = mesh_ingress::ebpf::probe(&bad).map_err(|e| e.to_string());
    assert!(matches!(&e, Err(m) if m.contains("cgroup2_dir")), "{e:?}");
    for (bad, field) in [
        (
            EbpfConfig {
                interfaces: vec!["no-such-if0".into()],
                ..cfg.clone()
            },
            "interfaces[0]",
        ),
        (
            EbpfConfig {
                encap_port: 0,
                ..cfg.clone()
            },
            "encap_port",
        ),
    ] {
        let e = mesh_ingress::ebpf::probe(&bad).map_err(|e| e.to_string());
        assert!(matches!(&e, Err(m) if m.contains(field)), "{e:?}");
    }
}

#[test]
fn two_daemons_on_one_kernel_each_serve_their_own_tasks() {
    if !is_root() {
        return;
    }
    let mut lab = Lab::new("two");
    topology(&mut lab);
    let a = load(&mut lab);
    let b = load(&mut lab);
    a.apply(&plan(&lab, Some(vec![B1])))
        .unwrap_or_else(|e| panic!("apply a: {e}"));
    let mut pb = plan(&lab, Some(vec![B2]));
    pb.vips[0].clients = vec![lab.path("u")];
    b.apply(&pb).unwrap_or_else(|e| panic!("apply b: {e}"));
    assert_eq!(ask_tcp(&lab, "c", 8080, 2), ["b1", "b1"]);
    assert_eq!(ask_tcp(&lab, "u", 8080, 2), ["b2", "b2"]);
    // One daemon gone: its tasks lose the VIP, the other's keep theirs. (A process that
    // another test thread is forking at that moment holds a copy of the link's fd until it
    // execs: the detach is waited for, within a bound.)
    drop(a);
    eventually("the VIP is no longer rewritten", || {
        ask_tcp(&lab, "c", 8080, 1) == ["vip"]
    });
    assert_eq!(ask_tcp(&lab, "u", 8080, 1), ["b2"]);
}

/// Set in the environment of the child process `a_killed_daemon_leaves_nothing` starts:
/// `<cgroup2 dir>|<client netns>|<sandbox netns>`.
const CHILD_ENV: &str = "MESH_EBPF_TEST_DAEMON";

/// Not a test on its own: the "daemon" `a_killed_daemon_leaves_nothing` runs in a child
/// process (this test binary again) and kills. It loads, serves the client, prints its
/// program IDs and waits to be killed.
#[test]
fn child_daemon() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    assert_eq!(parts.len(), 3, "{spec}");
    let mesh = EbpfMesh::load(EbpfConfig {
        cgroup2_dir: parts[0].into(),
        ..EbpfConfig::default()
    })
    .unwrap_or_else(|e| panic!("child load: {e}"));
    let plan = MeshPlan {
        listeners: vec![],
        vips: vec![VipSandbox {
            network_id: "net1".into(),
            netns: parts[2].into(),
            source: Ipv4Addr::new(10, 77, 0, 250),
            clients: vec![parts[1].into()],
            services: vec![VipService {
                name: "web".into(),
                vip: VIP,
                backends: vec![B1],
            }],
        }],
    };
    mesh.apply(&plan)
        .unwrap_or_else(|e| panic!("child apply: {e}"));
    let ids = mesh.program_ids().unwrap_or_else(|e| panic!("ids: {e}"));
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("ids {}", ids.join(","));
    // Bounded: the parent kills this process long before.
    std::thread::sleep(Duration::from_secs(120));
}

/// Kills the child on drop (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_daemon_leaves_nothing() {
    use std::io::BufRead;
    if !is_root() || std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mut lab = Lab::new("kil");
    topology(&mut lab);
    let dir = lab.mount_dir();
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let spec = format!(
        "{}|{}|{}",
        dir.display(),
        lab.path("c").display(),
        lab.path("sw").display()
    );
    let mut child = Killed(
        Command::new(exe)
            .args(["--exact", "child_daemon", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the child daemon: {e}")),
    );
    let out = child
        .0
        .stdout
        .take()
        .unwrap_or_else(|| panic!("child stdout"));
    // Ends at EOF if the child dies early.
    let ids: BTreeSet<u32> = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        // The harness prints "test child_daemon ... " on the same line.
        .find_map(|l| l.split_once("ids ").map(|(_, ids)| ids.to_string()))
        .unwrap_or_else(|| panic!("the child daemon printed no program IDs"))
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(
        ask_tcp(&lab, "c", 8080, 1),
        ["b1"],
        "the child serves the VIP"
    );

    // SIGKILL: no destructor runs; the kernel drops the links with the process's fds.
    child.0.kill().unwrap_or_else(|e| panic!("kill: {e}"));
    child.0.wait().unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(
        ask_tcp(&lab, "c", 8080, 1),
        ["vip"],
        "nothing rewrites any more"
    );
    let loaded = || {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| ids.contains(&p.id()))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while loaded() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(loaded(), 0, "programs of the killed daemon still loaded");
    if let Some(now) = attached(&dir) {
        assert!(ids.is_disjoint(&now), "still attached: {now:?}");
    }
}
