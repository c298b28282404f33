//! The services benchmark, end to end with tiny figures: services start on a lab of 3 hosts
//! (with and without an overlay), a killed host's tasks come back on the others (twice, the
//! host rejoining in between), a rolling update completes, the scheduler places a small
//! simulated cluster; the report shows every row and nothing is left behind. meshd, and
//! Docker Swarm when `dockerd` is installed. Needs root, `meshd` built next to the test
//! binary (or `MESHD_BIN`) and the tools of `scripts/build-test-image.sh`; skipped otherwise.
//! Asserts behaviour, never speed.

use std::time::Duration;

use mesh_bench::sched::SchedOptions;
use mesh_bench::services::{self, Section, ServicesOptions, SystemFigures, Systems};
use mesh_bench::{docker, services_report};

fn can_run() -> Option<Systems> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: the benchmark needs root (network namespaces)");
        return None;
    }
    if let Err(e) = mesh_testkit::meshd_bin() {
        eprintln!("skipping: {e}");
        return None;
    }
    match docker::binary() {
        Ok(_) => Some(Systems::Both),
        Err(e) => {
            eprintln!("Docker Swarm's part is skipped: {e}");
            Some(Systems::Meshd)
        }
    }
}

fn check(f: &SystemFigures) {
    assert!(!f.version.is_empty());
    assert_eq!(f.start.len(), 2, "one row without and one with the overlay");
    assert!(!f.start[0].network && f.start[1].network);
    for row in &f.start {
        assert_eq!(row.replicas, 3);
        assert_eq!(row.runs.len(), 2);
    }
    assert_eq!(f.kill.len(), 2);
    for k in &f.kill {
        assert!(k.tasks_on_host >= 1, "{k:?}");
        assert!(
            k.down > Duration::ZERO && k.recovered > Duration::ZERO,
            "{k:?}"
        );
    }
    assert_eq!(f.update.len(), 2);
    for u in &f.update {
        // `completed` waits out the monitor period after every new task runs.
        assert!(u.completed >= u.new_tasks_running, "{u:?}");
        assert!(u.completed >= Duration::from_millis(500), "{u:?}");
    }
}

#[test]
fn a_short_run_measures_every_section() {
    let Some(systems) = can_run() else {
        return;
    };
    let opts = ServicesOptions {
        runs: 2,
        replicas: vec![3],
        sections: Section::ALL.to_vec(),
        systems,
        image: None,
        update_monitor: Duration::from_millis(500),
        sched: SchedOptions {
            nodes: 20,
            services: 4,
            replicas: 10,
            runs: 2,
        },
    };
    let r = services::run(&opts, &|msg| eprintln!("{msg}")).unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    check(r.meshd.as_ref().unwrap());
    if systems == Systems::Both {
        check(r.swarm.as_ref().unwrap());
    }
    let s = r.sched.as_ref().unwrap();
    assert_eq!(s.placed, 40);
    assert_eq!(s.plan_created, 40);

    let text = services_report::render(&r);
    for row in [
        "| time to 3 running |",
        "| time to 3 running, on an overlay |",
        "| killed host's tasks running elsewhere |",
        "| rolling update of 6: update completed |",
        "| scheduler: placements/s",
    ] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }

    if systems == Systems::Both {
        assert!(text.contains("(Debian docker.io) run here"), "{text}");
    }

    // Nothing is left behind: no namespace of this process, no process of its labs.
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
    // dockerd, containerd and the containers carry the lab's directory in their command lines
    // (the containers of both systems die with their hosts, checked by the lab's sweep).
    let dir = format!("mesh-lab-{}x", std::process::id());
    let alive: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(&dir))
                .collect()
        })
        .unwrap_or_default();
    assert!(alive.is_empty(), "processes left: {alive:?}");
}
