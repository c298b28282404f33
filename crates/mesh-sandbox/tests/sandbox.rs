//! Real namespaces, bridges and veths. These tests need root; without it they say so and pass.
//! Every namespace they make is named after the test process's pid and removed by a guard, also
//! when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_sandbox::{
    EndpointSpec, SandboxError, SandboxSpec, attach_endpoint, delete_netns, delete_sandbox,
    detach_endpoint, ensure_netns, ensure_sandbox, interface_mtu_towards, list_endpoints,
    list_sandboxes, mac_for_ip, netns_exists, netns_path, run_in_netns, set_link_up, sync_routes,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
    };
}

/// Deletes the namespaces it names when dropped (also on panic).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            if let Err(e) = delete_sandbox(name) {
                eprintln!("cleanup of {name} failed: {e}");
            }
        }
    }
}

fn name(tag: &str) -> String {
    format!("mst-{}-{tag}", std::process::id())
}

/// Runs a command inside the network namespace at `ns` (only the network namespace, via
/// nsenter) and returns its stdout; panics with its stderr when it fails.
fn run_in(ns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "{args:?} in {} failed: {}",
        ns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn try_in(ns: &Path, args: &[&str]) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .expect("run nsenter")
        .status
        .success()
}

fn ping(ns: &Path, ip: Ipv4Addr) -> bool {
    try_in(ns, &["ping", "-c1", "-W1", &ip.to_string()])
}

fn sysctl_in(ns: &Path, key: &str) -> String {
    run_in(ns, &["cat", &format!("/proc/sys/{key}")])
        .trim()
        .to_owned()
}

fn link_json(ns: &Path, dev: &str) -> serde_json::Value {
    let out = run_in(ns, &["ip", "-j", "addr", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    v[0].clone()
}

fn ipv4_addrs(link: &serde_json::Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["family"] == "inet")
                .map(|x| format!("{}/{}", x["local"].as_str().unwrap_or(""), x["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_up(link: &serde_json::Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

fn spec(tag: &str, third: u8, mtu: u16) -> SandboxSpec {
    SandboxSpec {
        name: name(tag),
        gateway: Ipv4Addr::new(10, 213, third, 1),
        prefix: 24,
        mtu,
    }
}

fn endpoint(id: &str, ns: &Path, ip: Ipv4Addr, mtu: u16) -> EndpointSpec {
    EndpointSpec {
        id: id.to_owned(),
        netns: ns.to_path_buf(),
        ifname: "eth0".into(),
        ip,
        prefix: 24,
        mtu,
    }
}

fn routes_via(ns: &Path, dev: &str) -> Vec<String> {
    let mut r: Vec<String> = run_in(ns, &["ip", "-4", "route", "show", "dev", dev])
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    r.sort();
    r
}

#[test]
fn sandbox_is_idempotent_repaired_and_deleted() {
    require_root!();
    let s = spec("life", 1, 1420);
    let _guard = Cleanup(vec![s.name.clone()]);
    let path = netns_path(&s.name);
    let host_forward =
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read host sysctl");

    ensure_sandbox(&s).expect("first ensure");
    assert!(netns_exists(&path));
    let first = link_json(&path, "br0");
    ensure_sandbox(&s).expect("second ensure");
    let second = link_json(&path, "br0");
    assert_eq!(first["ifindex"], second["ifindex"], "br0 was not recreated");
    assert_eq!(second["mtu"], 1420);
    assert_eq!(second["address"], mac_str(mac_for_ip(s.gateway)).as_str());
    assert!(is_up(&second));
    assert_eq!(ipv4_addrs(&second), vec!["10.213.1.1/24".to_owned()]);
    assert!(is_up(&link_json(&path, "lo")));
    assert_eq!(sysctl_in(&path, "net/ipv4/ip_forward"), "1");
    assert_eq!(sysctl_in(&path, "net/ipv4/conf/br0/proxy_arp"), "1");
    assert_eq!(sysctl_in(&path, "net/ipv4/conf/br0/rp_filter"), "0");
    assert_eq!(sysctl_in(&path, "net/ipv4/conf/all/rp_filter"), "0");
    assert_eq!(sysctl_in(&path, "net/ipv4/neigh/br0/proxy_delay"), "0");
    // The writes went to the sandbox, not to the host.
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read host sysctl"),
        host_forward
    );
    assert!(list_sandboxes(&name("li")).expect("list").contains(&s.name));

    // Break it: wrong MTU, MAC, an extra address, a wrong address, down, sysctl off.
    run_in(
        &path,
        &[
            "ip",
            "link",
            "set",
            "br0",
            "mtu",
            "1300",
            "address",
            "02:00:00:00:00:01",
        ],
    );
    run_in(&path, &["ip", "addr", "add", "10.99.0.9/16", "dev", "br0"]);
    run_in(&path, &["ip", "addr", "del", "10.213.1.1/24", "dev", "br0"]);
    run_in(&path, &["ip", "link", "set", "br0", "down"]);
    run_in(&path, &["sysctl", "-qw", "net.ipv4.conf.br0.proxy_arp=0"]);
    ensure_sandbox(&s).expect("repairing ensure");
    let repaired = link_json(&path, "br0");
    assert_eq!(repaired["mtu"], 1420);
    assert_eq!(repaired["address"], mac_str(mac_for_ip(s.gateway)).as_str());
    assert!(is_up(&repaired));
    assert_eq!(ipv4_addrs(&repaired), vec!["10.213.1.1/24".to_owned()]);
    assert_eq!(sysctl_in(&path, "net/ipv4/conf/br0/proxy_arp"), "1");

    // A new MTU in the spec is applied.
    let s2 = SandboxSpec {
        mtu: 1380,
        ..s.clone()
    };
    ensure_sandbox(&s2).expect("ensure with a new MTU");
    assert_eq!(link_json(&path, "br0")["mtu"], 1380);

    delete_sandbox(&s.name).expect("delete");
    assert!(!netns_exists(&path));
    assert!(!path.exists());
    assert!(!list_sandboxes(&name("li")).expect("list").contains(&s.name));
    delete_sandbox(&s.name).expect("deleting a missing sandbox is fine");
}

#[test]
fn bad_specs_are_refused_before_anything_is_made() {
    require_root!();
    let mut s = spec("bad", 2, 1420);
    s.gateway = Ipv4Addr::new(10, 213, 2, 0);
    let _guard = Cleanup(vec![s.name.clone()]);
    match ensure_sandbox(&s) {
        Err(SandboxError::InvalidSpec { field, .. }) => assert_eq!(field, "gateway"),
        other => panic!("expected an InvalidSpec error, got {other:?}"),
    }
    assert!(!netns_path(&s.name).exists());
}

#[test]
fn endpoints_reach_each_other_and_the_gateway() {
    require_root!();
    let s = spec("ping", 3, 1400);
    let a_name = name("ping-a");
    let b_name = name("ping-b");
    let _guard = Cleanup(vec![s.name.clone(), a_name.clone(), b_name.clone()]);
    ensure_sandbox(&s).expect("sandbox");
    let a_ns = ensure_netns(&a_name).expect("netns a");
    let b_ns = ensure_netns(&b_name).expect("netns b");
    let a_ip = Ipv4Addr::new(10, 213, 3, 2);
    let b_ip = Ipv4Addr::new(10, 213, 3, 3);
    let a = endpoint("aaaaaaaaaaaa1111", &a_ns, a_ip, 1400);
    let b = endpoint("bbbbbbbbbbbb2222", &b_ns, b_ip, 1400);
    attach_endpoint(&s.name, &a).expect("attach a");
    attach_endpoint(&s.name, &b).expect("attach b");

    assert!(ping(&a_ns, b_ip), "a cannot ping b");
    assert!(ping(&b_ns, a_ip), "b cannot ping a");
    assert!(ping(&a_ns, s.gateway), "a cannot ping the gateway");

    let eth0 = link_json(&a_ns, "eth0");
    assert_eq!(eth0["address"], mac_str(mac_for_ip(a_ip)).as_str());
    assert_eq!(eth0["mtu"], 1400);
    assert_eq!(ipv4_addrs(&eth0), vec!["10.213.3.2/24".to_owned()]);
    assert_eq!(
        run_in(&a_ns, &["ip", "-4", "route", "show", "default"]).trim(),
        ""
    );
    // b learnt a's deterministic MAC.
    let neigh = run_in(&b_ns, &["ip", "neigh", "show", &a_ip.to_string()]);
    assert!(neigh.contains(&mac_str(mac_for_ip(a_ip))), "{neigh}");

    let sb = netns_path(&s.name);
    let ve = link_json(&sb, "ve-aaaaaaaaaaaa");
    assert_eq!(ve["master"], "br0");
    assert_eq!(ve["mtu"], 1400);
    assert!(is_up(&ve));
    assert_eq!(
        list_endpoints(&s.name).expect("list"),
        vec!["aaaaaaaaaaaa".to_owned(), "bbbbbbbbbbbb".to_owned()]
    );

    // Re-plumbing a complete endpoint changes nothing.
    let index_before = link_json(&a_ns, "eth0")["ifindex"].clone();
    attach_endpoint(&s.name, &a).expect("attach a again");
    assert_eq!(link_json(&a_ns, "eth0")["ifindex"], index_before);
    assert_eq!(list_endpoints(&s.name).expect("list").len(), 2);

    // A damaged endpoint is repaired in place.
    run_in(&a_ns, &["ip", "addr", "flush", "dev", "eth0"]);
    run_in(&a_ns, &["ip", "link", "set", "eth0", "down", "mtu", "1300"]);
    run_in(&sb, &["ip", "link", "set", "ve-aaaaaaaaaaaa", "nomaster"]);
    attach_endpoint(&s.name, &a).expect("repairing attach");
    let eth0 = link_json(&a_ns, "eth0");
    assert_eq!(eth0["ifindex"], index_before);
    assert_eq!(eth0["mtu"], 1400);
    assert_eq!(ipv4_addrs(&eth0), vec!["10.213.3.2/24".to_owned()]);
    assert_eq!(link_json(&sb, "ve-aaaaaaaaaaaa")["master"], "br0");
    assert!(ping(&a_ns, b_ip), "a cannot ping b after the repair");

    // Detach removes both ends; again is fine.
    detach_endpoint(&s.name, "aaaaaaaaaaaa1111").expect("detach a");
    assert_eq!(
        list_endpoints(&s.name).expect("list"),
        vec!["bbbbbbbbbbbb".to_owned()]
    );
    assert!(
        !try_in(&a_ns, &["ip", "link", "show", "eth0"]),
        "eth0 left in a"
    );
    detach_endpoint(&s.name, "aaaaaaaaaaaa1111").expect("detach a again");
    assert!(!ping(&b_ns, a_ip), "a still answers after detach");

    // Plumbing it again gives the same MAC, so b's ARP entry stays right.
    attach_endpoint(&s.name, &a).expect("attach a once more");
    assert_eq!(
        link_json(&a_ns, "eth0")["address"],
        mac_str(mac_for_ip(a_ip)).as_str()
    );
    assert!(ping(&b_ns, a_ip), "b cannot ping a after re-attach");
}

#[test]
fn attach_refuses_conflicts_and_bad_addresses() {
    require_root!();
    let s = spec("conf", 4, 1420);
    let c_name = name("conf-c");
    let _guard = Cleanup(vec![s.name.clone(), c_name.clone()]);
    let c_ns = ensure_netns(&c_name).expect("netns c");

    // No sandbox yet.
    let ep = endpoint("cccccccccccc", &c_ns, Ipv4Addr::new(10, 213, 4, 5), 1420);
    assert!(matches!(
        attach_endpoint(&s.name, &ep),
        Err(SandboxError::NetnsMissing { .. })
    ));
    ensure_sandbox(&s).expect("sandbox");

    // An eth0 that is someone else's.
    run_in(&c_ns, &["ip", "link", "add", "eth0", "type", "bridge"]);
    match attach_endpoint(&s.name, &ep) {
        Err(SandboxError::EndpointConflict { ifname, .. }) => assert_eq!(ifname, "eth0"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(
        list_endpoints(&s.name).expect("list").is_empty(),
        "no veth may be left behind"
    );
    assert_eq!(
        link_json(&c_ns, "eth0")["link_type"],
        "ether",
        "the foreign eth0 stays"
    );

    // Outside the subnet, the gateway itself, a wrong prefix.
    for (ip, prefix, field) in [
        (Ipv4Addr::new(10, 213, 5, 5), 24, "endpoint ip"),
        (Ipv4Addr::new(10, 213, 4, 1), 24, "endpoint ip"),
        (Ipv4Addr::new(10, 213, 4, 5), 16, "endpoint prefix"),
    ] {
        let bad = EndpointSpec {
            ifname: "eth1".into(),
            ip,
            prefix,
            ..ep.clone()
        };
        match attach_endpoint(&s.name, &bad) {
            Err(SandboxError::InvalidSpec { field: f, .. }) => {
                assert_eq!(f, field, "{ip}/{prefix}")
            }
            other => panic!("expected InvalidSpec for {ip}/{prefix}, got {other:?}"),
        }
    }
    // A missing endpoint namespace.
    let gone = EndpointSpec {
        netns: PathBuf::from(format!("/var/run/netns/{}", name("nope"))),
        ..ep.clone()
    };
    assert!(matches!(
        attach_endpoint(&s.name, &gone),
        Err(SandboxError::NetnsMissing { .. })
    ));
    // Missing sandbox for detach is fine.
    detach_endpoint(&name("nosuch"), "cccccccccccc").expect("detach from a missing sandbox");
}

#[test]
fn run_in_netns_enters_the_namespace() {
    require_root!();
    let n = name("run");
    let _guard = Cleanup(vec![n.clone()]);
    let path = ensure_netns(&n).expect("netns");
    assert_eq!(ensure_netns(&n).expect("again"), path);
    let want = fs::metadata(&path).expect("stat netns").ino();
    let own = fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own")
        .ino();
    assert_ne!(want, own);
    let seen = run_in_netns(&path, || {
        fs::metadata("/proc/thread-self/ns/net")
            .map(|m| m.ino())
            .ok()
    })
    .expect("run");
    assert_eq!(seen, Some(want));
    // The caller's thread did not move.
    assert_eq!(
        fs::metadata("/proc/thread-self/ns/net")
            .expect("stat own")
            .ino(),
        own
    );

    // A socket made inside stays there: binding an address only that namespace has works.
    run_in(&path, &["ip", "link", "set", "lo", "up"]);
    run_in(
        &path,
        &["ip", "addr", "add", "10.213.250.1/32", "dev", "lo"],
    );
    let sock = run_in_netns(&path, || std::net::UdpSocket::bind("10.213.250.1:0"))
        .expect("run")
        .expect("bind inside");
    let port = sock.local_addr().expect("addr").port();
    assert!(
        std::net::UdpSocket::bind("10.213.250.1:0").is_err(),
        "the address leaked"
    );
    let out = run_in(&path, &["cat", "/proc/net/udp"]);
    assert!(
        out.contains(&format!(":{port:04X}")),
        "socket not in the namespace: {out}"
    );

    match run_in_netns(&PathBuf::from("/var/run/netns/does-not-exist-xyz"), || ()) {
        Err(SandboxError::NetnsMissing { .. }) => {}
        other => panic!("expected NetnsMissing, got {other:?}"),
    }
    match run_in_netns(&path, || -> () { panic!("boom") }) {
        Err(SandboxError::Panicked { message, .. }) => assert_eq!(message, "boom"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    delete_netns(&n).expect("delete");
    assert!(!netns_exists(&path));
}

#[test]
fn sync_routes_reconciles_host_routes() {
    require_root!();
    let s = spec("routes", 6, 1420);
    let _guard = Cleanup(vec![s.name.clone()]);
    ensure_sandbox(&s).expect("sandbox");
    let sb = netns_path(&s.name);
    run_in(&sb, &["ip", "tuntap", "add", "dev", "wg0", "mode", "tun"]);
    set_link_up(&s.name, "wg0", Some(1420)).expect("wg0 up");
    assert!(is_up(&link_json(&sb, "wg0")));
    let ip = |h| Ipv4Addr::new(10, 213, 6, h);

    sync_routes(&s.name, "wg0", &[ip(50), ip(51)]).expect("sync 1");
    assert_eq!(routes_via(&sb, "wg0"), vec!["10.213.6.50", "10.213.6.51"]);
    sync_routes(&s.name, "wg0", &[ip(51), ip(52), ip(52)]).expect("sync 2");
    assert_eq!(routes_via(&sb, "wg0"), vec!["10.213.6.51", "10.213.6.52"]);
    sync_routes(&s.name, "wg0", &[ip(51), ip(52)]).expect("sync 2 again");
    assert_eq!(routes_via(&sb, "wg0"), vec!["10.213.6.51", "10.213.6.52"]);
    // The connected subnet route is untouched.
    assert_eq!(routes_via(&sb, "br0"), vec!["10.213.6.0/24"]);
    // A route via wg0 that is not a /32 is not ours.
    run_in(&sb, &["ip", "route", "add", "10.214.0.0/16", "dev", "wg0"]);
    sync_routes(&s.name, "wg0", &[]).expect("sync empty");
    assert_eq!(routes_via(&sb, "wg0"), vec!["10.214.0.0/16"]);
    assert_eq!(routes_via(&sb, "br0"), vec!["10.213.6.0/24"]);

    match sync_routes(&s.name, "wg9", &[ip(50)]) {
        Err(SandboxError::LinkMissing { link, .. }) => assert_eq!(link, "wg9"),
        other => panic!("expected LinkMissing, got {other:?}"),
    }
}

#[test]
fn proxy_arp_answers_for_remote_endpoints() {
    require_root!();
    let s = spec("parp", 7, 1420);
    let e_name = name("parp-e");
    let _guard = Cleanup(vec![s.name.clone(), e_name.clone()]);
    ensure_sandbox(&s).expect("sandbox");
    let e_ns = ensure_netns(&e_name).expect("netns");
    let e_ip = Ipv4Addr::new(10, 213, 7, 2);
    attach_endpoint(&s.name, &endpoint("eeeeeeeeeeee", &e_ns, e_ip, 1420)).expect("attach");
    let sb = netns_path(&s.name);
    run_in(&sb, &["ip", "tuntap", "add", "dev", "wg0", "mode", "tun"]);
    set_link_up(&s.name, "wg0", None).expect("wg0 up");
    let remote = Ipv4Addr::new(10, 213, 7, 99);
    let unrouted = Ipv4Addr::new(10, 213, 7, 98);
    sync_routes(&s.name, "wg0", &[remote]).expect("routes");

    // The dummy swallows the packet, but the ARP question must have been answered by br0.
    let _ = ping(&e_ns, remote);
    let neigh = run_in(&e_ns, &["ip", "neigh", "show", &remote.to_string()]);
    let br_mac = mac_str(mac_for_ip(s.gateway));
    assert!(
        neigh.contains(&br_mac)
            && ["REACHABLE", "STALE", "DELAY", "PROBE"]
                .iter()
                .any(|st| neigh.contains(st)),
        "no proxy ARP answer for {remote}: {neigh:?}"
    );
    // An address with no route via wg0 gets no answer.
    let _ = ping(&e_ns, unrouted);
    let neigh = run_in(&e_ns, &["ip", "neigh", "show", &unrouted.to_string()]);
    assert!(
        !neigh.contains("lladdr"),
        "unexpected answer for {unrouted}: {neigh:?}"
    );

    // The MTU towards the gateway, seen from the endpoint's namespace, is its veth's.
    let mtu = run_in_netns(&e_ns, move || interface_mtu_towards(IpAddr::V4(s.gateway)))
        .expect("run")
        .expect("mtu");
    assert_eq!(mtu, 1420);
    let none = run_in_netns(&e_ns, || {
        interface_mtu_towards(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
    })
    .expect("run");
    assert!(
        matches!(none, Err(SandboxError::NoRoute { .. })),
        "{none:?}"
    );
}

#[test]
fn mtu_towards_loopback_is_capped() {
    require_root!();
    let lo: u32 = fs::read_to_string("/sys/class/net/lo/mtu")
        .expect("lo mtu")
        .trim()
        .parse()
        .expect("number");
    let mtu = interface_mtu_towards(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("mtu");
    assert_eq!(u32::from(mtu), lo.min(65535));
}

#[test]
fn bridge_mtu_stays_when_a_smaller_port_joins() {
    require_root!();
    for (tag, third, mtu) in [("pin", 8u8, 1420u16), ("pin15", 9, 1500)] {
        let s = spec(tag, third, mtu);
        let e_name = name(&format!("{tag}-e"));
        let _guard = Cleanup(vec![s.name.clone(), e_name.clone()]);
        ensure_sandbox(&s).expect("sandbox");
        let e_ns = ensure_netns(&e_name).expect("netns");
        let ep = endpoint(
            "ffffffffffff",
            &e_ns,
            Ipv4Addr::new(10, 213, third, 2),
            1300,
        );
        attach_endpoint(&s.name, &ep).expect("attach");
        let sb = netns_path(&s.name);
        assert_eq!(link_json(&sb, "br0")["mtu"], mtu);
        assert_eq!(link_json(&sb, "ve-ffffffffffff")["mtu"], 1300);
        assert_eq!(link_json(&e_ns, "eth0")["mtu"], 1300);
    }
}

/// Kills and reaps the child it holds when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn endpoint_namespace_given_as_a_process_path() {
    require_root!();
    let s = spec("proc", 10, 1420);
    let _guard = Cleanup(vec![s.name.clone()]);
    ensure_sandbox(&s).expect("sandbox");
    let child = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .expect("spawn unshare");
    let child = KillOnDrop(child);
    let ns = PathBuf::from(format!("/proc/{}/ns/net", child.0.id()));
    // unshare(1) execs sleep once the namespace is made; wait until the process has moved.
    let own = fs::metadata("/proc/self/ns/net").expect("stat").ino();
    for _ in 0..200 {
        if fs::metadata(&ns).map(|m| m.ino()).unwrap_or(own) != own {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(netns_exists(&ns));
    let ip = Ipv4Addr::new(10, 213, 10, 7);
    attach_endpoint(&s.name, &endpoint("ppppppppppppp", &ns, ip, 1420)).expect("attach");
    assert!(
        ping(&ns, s.gateway),
        "the process's namespace cannot ping the gateway"
    );
    assert!(
        ping(&netns_path(&s.name), ip),
        "the sandbox cannot ping the endpoint"
    );
    drop(child);
    // The process and its namespace are gone, and the veth with them.
    for _ in 0..200 {
        if list_endpoints(&s.name).expect("list").is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(list_endpoints(&s.name).expect("list").is_empty());
}

#[test]
fn callable_from_inside_a_tokio_runtime() {
    require_root!();
    let s = spec("tokio", 11, 1420);
    let _guard = Cleanup(vec![s.name.clone()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let found = rt.block_on(async {
        ensure_sandbox(&s).expect("ensure inside a runtime");
        list_endpoints(&s.name).expect("list inside a runtime")
    });
    assert!(found.is_empty());
}
