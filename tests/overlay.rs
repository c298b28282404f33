//! Encrypted overlay networks on the lab: reachability across hosts over TCP, UDP and
//! ICMP, encryption on the wire, isolation, faults, cleanup, bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mesh_integration_tests::*;
use mesh_testkit::Lab;

/// A TCP/UDP echo-ish server in python: answers `<tag>:<what it received>`.
const SERVER: &str = r#"
import socket, sys, threading
tag = sys.argv[1]
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7000)); s.listen(16)
    while True:
        c, _ = s.accept()
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(65536)
            if not chunk: break
            data += chunk
        c.sendall(tag.encode() + b":" + str(len(data)).encode() + b"\n"); c.close()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7001))
    while True:
        d, a = u.recvfrom(65536); u.sendto(tag.encode() + b":" + d, a)
threading.Thread(target=udp, daemon=True).start()
tcp()
"#;

const CLIENT: &str = r#"
import socket, sys
ip, mode, payload = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "tcp":
    s = socket.create_connection((ip, 7000), timeout=5)
    s.sendall(payload.encode() + b"\n"); print(s.recv(1000).decode().strip())
else:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    u.sendto(payload.encode(), (ip, 7001)); print(u.recvfrom(1000)[0].decode())
"#;

struct Servers(Vec<std::process::Child>);
impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn serve(servers: &mut Servers, ns: &str, tag: &str) {
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net={ns}"))
        .args(["python3", "-c", SERVER, tag])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    servers.0.push(child);
}

fn ask(ns: &str, ip: &str, mode: &str, payload: &str) -> Option<String> {
    let out = in_netns(ns, &["python3", "-c", CLIENT, ip, mode, payload]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn connect(lab: &Lab, host: usize, net: &str, ns: &str) -> String {
    let out = ok(lab, host, &["network", "connect", net, "--netns", ns]);
    out.trim().split('/').next().unwrap().to_string()
}

#[test]
fn endpoints_on_three_hosts_reach_each_other_encrypted() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    let guard = NetnsGuard::default();
    form_cluster(&lab, 3);
    for i in 1..=3 {
        guard.add_prefix(&sandbox_prefix(&lab, i));
    }
    let id = ok(
        &lab,
        1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.20.0.0/24",
            "--attachable",
            "appnet",
        ],
    );
    assert_eq!(id.trim().len(), 25, "{id}");
    let ns: Vec<String> = (1..=3)
        .map(|i| guard.add(&format!("{}-ep", lab.netns(i))))
        .collect();
    let ips: Vec<String> = (1..=3)
        .map(|i| connect(&lab, i, "appnet", &ns[i - 1]))
        .collect();
    // A second endpoint on host1: same-host traffic too.
    let ns4 = guard.add(&format!("{}-ep2", lab.netns(1)));
    let ip4 = connect(&lab, 1, "appnet", &ns4);
    let mut servers = Servers(vec![]);
    for (k, n) in ns.iter().enumerate() {
        serve(&mut servers, n, &format!("ep{}", k + 1));
    }
    serve(&mut servers, &ns4, "ep4");

    // Every pair, ICMP then TCP and UDP (waiting for keys to travel and peers to form).
    let all: Vec<(&String, &String)> = ns
        .iter()
        .chain([&ns4])
        .zip(ips.iter().chain([&ip4]))
        .collect();
    for (from, _) in &all {
        for (k, (_, ip)) in all.iter().enumerate() {
            lab.wait_until(&format!("{from} pings {ip}"), CONVERGE, || {
                pings(from, ip).then_some(())
            })
            .unwrap();
            let tag = if k == 3 {
                "ep4".to_string()
            } else {
                format!("ep{}", k + 1)
            };
            // The servers may still be starting: retry until they answer.
            let tcp = lab
                .wait_until(&format!("TCP {from} -> {ip}"), CONVERGE, || {
                    ask(from, ip, "tcp", "hello")
                })
                .unwrap();
            assert_eq!(tcp, format!("{tag}:6"));
            let udp = lab
                .wait_until(&format!("UDP {from} -> {ip}"), CONVERGE, || {
                    ask(from, ip, "udp", "dgram")
                })
                .unwrap();
            assert_eq!(udp, format!("{tag}:dgram"));
        }
    }

    // A known payload never crosses the underlay in clear.
    let secret = "meshd-plaintext-marker-7f3a9c";
    let mut cap = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.lab_netns(),
            "tcpdump",
            "-i",
            "br0",
            "-w",
            "-",
            "-U",
            "udp or tcp",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..5 {
        let big = secret.repeat(200);
        ask(&ns[0], &ips[1], "tcp", &big).unwrap();
        ask(&ns[2], &ips[0], "udp", secret).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = cap.kill();
    let out = cap.wait_with_output().unwrap();
    assert!(
        out.stdout.len() > 1000,
        "the capture saw the traffic ({} bytes)",
        out.stdout.len()
    );
    let hay = String::from_utf8_lossy(&out.stdout);
    assert!(
        !hay.contains(secret),
        "plaintext payload seen on the underlay"
    );

    // Large packets up to the MTU pass; bigger ones are refused, not lost silently.
    let mtu = 1440;
    let ok_ping = in_netns(
        &ns[0],
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &(mtu - 28).to_string(),
            &ips[2],
        ],
    );
    assert!(
        ok_ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ok_ping.stdout)
    );
    let big_ping = in_netns(
        &ns[0],
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &(mtu - 27).to_string(),
            &ips[2],
        ],
    );
    assert!(!big_ping.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&big_ping.stdout),
        String::from_utf8_lossy(&big_ping.stderr)
    );
    assert!(
        said.contains("mtu") || said.contains("too long") || said.contains("Frag"),
        "{said}"
    );

    // In use: refused, naming who uses it.
    let err = fails(&lab, 1, &["network", "rm", "appnet"]);
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains(&ips[0]), "{err}");
}

#[test]
fn overlapping_networks_stay_isolated() {
    if !can_run() {
        return;
    }
    let lab = lab(2);
    let guard = NetnsGuard::default();
    form_cluster(&lab, 2);
    for i in 1..=2 {
        guard.add_prefix(&sandbox_prefix(&lab, i));
    }
    ok(
        &lab,
        1,
        &[
            "network",
            "create",
            "--subnet",
            "10.30.0.0/24",
            "--attachable",
            "red",
        ],
    );
    let err = fails(
        &lab,
        1,
        &[
            "network",
            "create",
            "--subnet",
            "10.30.0.0/16",
            "--attachable",
            "blue",
        ],
    );
    assert!(err.contains("overlaps network red"), "{err}");
    ok(
        &lab,
        1,
        &[
            "network",
            "create",
            "--subnet",
            "10.30.0.0/24",
            "--allow-overlap",
            "--attachable",
            "blue",
        ],
    );
    let red: Vec<String> = (1..=2)
        .map(|i| guard.add(&format!("{}-red", lab.netns(i))))
        .collect();
    let blue: Vec<String> = (1..=2)
        .map(|i| guard.add(&format!("{}-blue", lab.netns(i))))
        .collect();
    let red_ips: Vec<String> = (1..=2)
        .map(|i| connect(&lab, i, "red", &red[i - 1]))
        .collect();
    let blue_ips: Vec<String> = (1..=2)
        .map(|i| connect(&lab, i, "blue", &blue[i - 1]))
        .collect();
    assert_eq!(red_ips, blue_ips, "same subnet, same allocation order");
    let mut servers = Servers(vec![]);
    serve(&mut servers, &red[1], "red2");
    serve(&mut servers, &blue[1], "blue2");
    lab.wait_until("red reaches red", CONVERGE, || {
        ask(&red[0], &red_ips[1], "tcp", "x")
    })
    .map(|a| assert_eq!(a, "red2:2"))
    .unwrap();
    lab.wait_until("blue reaches blue", CONVERGE, || {
        ask(&blue[0], &blue_ips[1], "tcp", "x")
    })
    .map(|a| assert_eq!(a, "blue2:2"))
    .unwrap();
    // The same address from the other network always lands in its own network.
    for _ in 0..5 {
        assert_eq!(
            ask(&red[0], &blue_ips[1], "tcp", "x").as_deref(),
            Some("red2:2")
        );
        assert_eq!(
            ask(&blue[0], &red_ips[1], "tcp", "x").as_deref(),
            Some("blue2:2")
        );
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !can_run() {
        return;
    }
    let lab = lab(1);
    let guard = NetnsGuard::default();
    ok(&lab, 1, &["init", "--advertise-addr", "192.0.2.1"]);
    guard.add_prefix(&sandbox_prefix(&lab, 1));
    ok(
        &lab,
        1,
        &["network", "create", "--subnet", "10.40.0.0/24", "appnet"],
    );
    let err = fails(
        &lab,
        1,
        &["network", "create", "--subnet", "10.50.0.0/24", "appnet"],
    );
    assert!(err.contains("already exists"), "{err}");
    let err = fails(
        &lab,
        1,
        &["network", "create", "--subnet", "10.50.0.7/24", "x"],
    );
    assert!(err.contains("10.50.0.0/24"), "{err}");
    let err = fails(
        &lab,
        1,
        &[
            "network",
            "create",
            "--subnet",
            "10.50.0.0/24",
            "--gateway",
            "10.60.0.1",
            "y",
        ],
    );
    assert!(err.contains("--gateway"), "{err}");
    // Not attachable.
    let ns = guard.add(&format!("{}-x", lab.netns(1)));
    let err = fails(&lab, 1, &["network", "connect", "appnet", "--netns", &ns]);
    assert!(err.contains("not attachable"), "{err}");
    // Not a namespace.
    ok(&lab, 1, &["network", "create", "--attachable", "open"]);
    let err = fails(
        &lab,
        1,
        &["network", "connect", "open", "--netns", "/tmp/nope"],
    );
    assert!(err.contains("--netns"), "{err}");
    let err = fails(&lab, 1, &["network", "rm", "nosuch"]);
    assert!(err.contains("nosuch"), "{err}");
    // Default pool: a /24 out of 10.0.0.0/8.
    let out = ok(&lab, 1, &["network", "inspect", "open"]);
    assert!(out.contains("10.0.0.0/24"), "{out}");
    let ls = ok(&lab, 1, &["network", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 2, "{ls}");
}

#[test]
fn restarts_kills_and_cleanup() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    let guard = NetnsGuard::default();
    form_cluster(&lab, 3);
    let prefixes: Vec<String> = (1..=3).map(|i| sandbox_prefix(&lab, i)).collect();
    for p in &prefixes {
        guard.add_prefix(p);
    }
    ok(
        &lab,
        1,
        &[
            "network",
            "create",
            "--subnet",
            "10.60.0.0/24",
            "--attachable",
            "appnet",
        ],
    );
    let ns: Vec<String> = (1..=3)
        .map(|i| guard.add(&format!("{}-ep", lab.netns(i))))
        .collect();
    let ips: Vec<String> = (1..=3)
        .map(|i| connect(&lab, i, "appnet", &ns[i - 1]))
        .collect();
    let all_pairs = |what: &str| {
        for (a, from) in ns.iter().enumerate() {
            for (b, ip) in ips.iter().enumerate() {
                if a != b {
                    lab.wait_until(
                        &format!("{what}: ep{} pings ep{}", a + 1, b + 1),
                        CONVERGE,
                        || pings(from, ip).then_some(()),
                    )
                    .unwrap();
                }
            }
        }
    };
    all_pairs("formed");
    // Clean restart of a worker's meshd: endpoints keep their addresses, tunnels return.
    lab.stop(2);
    lab.start_daemon(2).unwrap();
    all_pairs("after restart");
    // Killed and back.
    lab.kill(3);
    lab.start_daemon(3).unwrap();
    all_pairs("after kill");
    // One sandbox per host, re-adopted rather than duplicated.
    for p in &prefixes {
        assert_eq!(NetnsGuard::existing(p).len(), 1, "{p}");
    }
    // Disconnect and remove: nothing left behind.
    for i in 1..=3 {
        ok(
            &lab,
            i,
            &["network", "disconnect", "appnet", "--netns", &ns[i - 1]],
        );
    }
    ok(&lab, 1, &["network", "rm", "appnet"]);
    lab.wait_until("sandboxes removed", CONVERGE, || {
        prefixes
            .iter()
            .all(|p| NetnsGuard::existing(p).is_empty())
            .then_some(())
    })
    .unwrap();
    // The endpoints' interfaces are gone too.
    for n in &ns {
        let links = in_netns(n, &["ip", "-o", "link"]);
        let text = String::from_utf8_lossy(&links.stdout);
        assert!(!text.contains("eth0"), "{text}");
    }
    // A node leaving takes its sandboxes with it.
    ok(&lab, 1, &["network", "create", "--attachable", "again"]);
    let extra = guard.add(&format!("{}-ep9", lab.netns(2)));
    connect(&lab, 2, "again", &extra);
    assert_eq!(NetnsGuard::existing(&prefixes[1]).len(), 1);
    ok(&lab, 2, &["leave"]);
    assert!(NetnsGuard::existing(&prefixes[1]).is_empty());
}
