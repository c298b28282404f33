//! A quick single-stream TCP measurement across two hosts with iperf3 (when installed).
//! Ignored by default: `cargo test --release -p mesh-overlay --test throughput -- --ignored
//! --nocapture`. Prints the figures; asserts only that data went through.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

mod common;

use std::time::Duration;

use common::*;

#[test]
#[ignore = "measurement; run on demand with --ignored"]
fn iperf3_single_stream() {
    if sh(&["sh", "-c", "command -v iperf3"]).stdout.is_empty() {
        eprintln!("iperf3 is not installed; skipping");
        return;
    }
    let secs = std::env::var("OVERLAY_IPERF_SECS").unwrap_or_else(|_| "5".into());
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
    let ns = |n: &str| format!("--net={}", netns_path(n).display());
    let mut server = std::process::Command::new("nsenter")
        .args([&ns(&e1), "iperf3", "-s", "-1", "-B", "10.66.0.3"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    for args in [vec![], vec!["-R"]] {
        let mut cmd = vec![
            "nsenter".to_string(),
            ns(&e0),
            "iperf3".into(),
            "-c".into(),
            "10.66.0.3".into(),
            "-t".into(),
            secs.clone(),
            "-f".into(),
            "g".into(),
        ];
        cmd.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = ok(&refs);
        let summary: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("sender") || l.contains("receiver"))
            .collect();
        eprintln!("iperf3 {args:?}:\n{}", summary.join("\n"));
        assert!(!summary.is_empty(), "{out}");
        if args.is_empty() {
            // The server serves one test (-1); start another for the reverse run.
            let _ = server.wait();
            server = std::process::Command::new("nsenter")
                .args([&ns(&e1), "iperf3", "-s", "-1", "-B", "10.66.0.3"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("iperf3 server");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    eprintln!("host 0: {:#?}", o0.status().counters);
    eprintln!("host 1: {:#?}", o1.status().counters);
    drop((o0, o1));
}
