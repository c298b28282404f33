//! A quick single-stream TCP measurement across two hosts with iperf3 (when installed).
//! Ignored by default: `cargo test --release -p mesh-overlay --test throughput -- --ignored
//! --nocapture`. Prints the figures; asserts only that data went through.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

mod common;

use std::time::Duration;

use common::*;

fn secs() -> String {
    std::env::var("OVERLAY_IPERF_SECS").unwrap_or_else(|_| "5".into())
}

/// Runs iperf3 from namespace `client` to a one-shot server at `dst` in namespace `server`,
/// forward and reverse; prints and returns the receiver lines.
fn iperf3_both_ways(client: &str, server: &str, dst: &str) -> Vec<String> {
    let ns = |n: &str| format!("--net={}", netns_path(n).display());
    let mut lines = Vec::new();
    for reverse in [false, true] {
        let mut srv = std::process::Command::new("nsenter")
            .args([&ns(server), "iperf3", "-s", "-1", "-B", dst])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 server");
        std::thread::sleep(Duration::from_millis(500));
        let s = secs();
        let mut args = vec![
            "nsenter",
            &ns(client),
            "iperf3",
            "-c",
            dst,
            "-t",
            &s,
            "-f",
            "g",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if reverse {
            args.push("-R".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ok(&refs);
        let _ = srv.kill();
        let _ = srv.wait();
        let line = out
            .lines()
            .find(|l| l.contains("receiver"))
            .unwrap_or_else(|| panic!("no iperf3 summary: {out}"))
            .to_string();
        eprintln!("{} {line}", if reverse { "reverse" } else { "forward" });
        lines.push(line);
    }
    lines
}

fn have(cmds: &str) -> bool {
    !sh(&["sh", "-c", &format!("command -v {cmds}")])
        .stdout
        .is_empty()
}

/// The same measurement through two wireguard-go instances (host to host), for a figure taken
/// under the same load as the overlay's.
#[test]
#[ignore = "measurement; run on demand with --ignored"]
fn iperf3_wireguard_go_baseline() {
    if !have("iperf3 && command -v wireguard-go && command -v wg") {
        eprintln!("iperf3, wireguard-go or wg is not installed; skipping");
        return;
    }
    let lab = Lab::new(2);
    let keys = [
        mesh_overlay::KeyPair::generate(),
        mesh_overlay::KeyPair::generate(),
    ];
    let ifname = |h: usize| format!("w{}{h}", lab.tag.replace('x', ""));
    let mut children = Vec::new();
    for h in 0..2 {
        let ns = format!("--net={}", netns_path(&lab.hosts[h]).display());
        children.push(
            std::process::Command::new("nsenter")
                .args([&ns, "wireguard-go", "-f", &ifname(h)])
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("wireguard-go"),
        );
    }
    for h in 0..2 {
        assert!(wait_for(Duration::from_secs(10), || sh(&[
            "ip",
            "-n",
            &lab.hosts[h],
            "link",
            "show",
            &ifname(h)
        ])
        .status
        .success()));
        let ns = format!("--net={}", netns_path(&lab.hosts[h]).display());
        let key = std::env::temp_dir().join(format!("{}-{h}.key", lab.tag));
        std::fs::write(&key, keys[h].private_b64()).unwrap();
        let other = 1 - h;
        ok(&[
            "nsenter",
            &ns,
            "wg",
            "set",
            &ifname(h),
            "listen-port",
            "51830",
            "private-key",
            &key.display().to_string(),
            "peer",
            &keys[other].public_b64(),
            "endpoint",
            &format!("{}:51830", Lab::underlay_ip(other)),
            "allowed-ips",
            &format!("10.71.0.{}/32", other + 1),
        ]);
        let _ = std::fs::remove_file(&key);
        ok(&[
            "ip",
            "-n",
            &lab.hosts[h],
            "addr",
            "add",
            &format!("10.71.0.{}/24", h + 1),
            "dev",
            &ifname(h),
        ]);
        ok(&[
            "ip",
            "-n",
            &lab.hosts[h],
            "link",
            "set",
            &ifname(h),
            "mtu",
            "1420",
            "up",
        ]);
    }
    assert!(ping_until(
        &lab.hosts[0],
        ip("10.71.0.2"),
        Duration::from_secs(20)
    ));
    eprintln!("wireguard-go:");
    iperf3_both_ways(&lab.hosts[0], &lab.hosts[1], "10.71.0.2");
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
#[ignore = "measurement; run on demand with --ignored"]
fn iperf3_single_stream() {
    if !have("iperf3") {
        eprintln!("iperf3 is not installed; skipping");
        return;
    }
    let mut lab = Lab::new(2);
    let e0 = lab.endpoint_ns("a0");
    let e1 = lab.endpoint_ns("a1");
    let mut net = Net::new("perf", "10.66.0.0/24", 2);
    net.local[0] = vec![endpoint("ep0", ip("10.66.0.2"), &e0)];
    net.local[1] = vec![endpoint("ep1", ip("10.66.0.3"), &e1)];
    let o0 = lab.start(0);
    let o1 = lab.start(1);
    o0.apply(&host_plan(&[&net], 0)).unwrap();
    o1.apply(&host_plan(&[&net], 1)).unwrap();
    assert!(ping_until(&e0, ip("10.66.0.3"), Duration::from_secs(20)));
    eprintln!("overlay:");
    iperf3_both_ways(&e0, &e1, "10.66.0.3");
    eprintln!("host 0: {:#?}", o0.status().counters);
    eprintln!("host 1: {:#?}", o1.status().counters);
    drop((o0, o1));
}
