//! The control-plane benchmark, end to end with tiny loads: both clusters form, take writes,
//! survive a leader kill and report a killed node down; the report shows every figure.
//! Needs root, and `meshd` built next to the test binary (`cargo build --bins`); etcd's part
//! needs `/usr/bin/etcd` (or `ETCD_BIN`). Skipped otherwise. Asserts behaviour, never speed.

use std::time::Duration;

use mesh_bench::raft::{self, RaftOptions, Systems};
use mesh_bench::{etcd, report};

fn can_run() -> Option<Systems> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: the benchmark needs root (network namespaces)");
        return None;
    }
    if let Err(e) = mesh_testkit::meshd_bin() {
        eprintln!("skipping: {e}");
        return None;
    }
    match etcd::binary() {
        Ok(_) => Some(Systems::Both),
        Err(e) => {
            eprintln!("etcd's part is skipped: {e}");
            Some(Systems::Meshd)
        }
    }
}

#[test]
fn a_short_run_measures_both_systems() {
    let Some(systems) = can_run() else {
        return;
    };
    let opts = RaftOptions {
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
        clients: 4,
        runs: 1,
        max_writes: 100_000,
        systems,
    };
    let r = raft::run(&opts, &|msg| eprintln!("{msg}")).unwrap();
    let mut figures = vec![r.meshd.as_ref().unwrap()];
    if systems == Systems::Both {
        figures.push(r.etcd.as_ref().unwrap());
    }
    for f in figures {
        for l in [&f.one, &f.many, &f.many_follower] {
            assert!(l.writes > 0, "{} accepted no write: {l:?}", f.version);
            assert_eq!(l.errors, 0, "{l:?}");
            assert!(l.latency.p50 <= l.latency.p99 && l.latency.p99 <= l.latency.max);
        }
        assert_eq!(f.leader_kill.len(), 1);
    }
    let m = r.meshd.as_ref().unwrap();
    assert_eq!(m.leader_down.len(), 1);
    assert_eq!(m.worker_down.len(), 1);
    assert_eq!(m.manager_down.len(), 1);

    let text = report::render(&r);
    assert!(
        text.contains("| writes/s, 1 client, on the leader |"),
        "{text}"
    );
    assert!(text.contains("killed worker marked down"), "{text}");
    // Nothing is left behind: no namespace of this process, no etcd.
    let me = format!("ml{}x", std::process::id());
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.starts_with(&me))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
