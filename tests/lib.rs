//! Helpers shared by meshd's multi-host tests (the tests themselves are the `[[test]]`
//! targets of this package). Every test runs real `meshd` daemons on a
//! [`mesh_testkit::Lab`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mesh_api::Node;
use mesh_api::api::Info;
use mesh_testkit::{Lab, LabOptions};

/// Whether the tests can run here (they need root for namespaces).
pub fn can_run() -> bool {
    if nix_is_root() {
        true
    } else {
        eprintln!("skipping: lab tests need root (network namespaces)");
        false
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Starts a lab of `n` hosts.
pub fn lab(n: usize) -> Lab {
    Lab::start(LabOptions {
        hosts: n,
        meshd_args: vec![],
        client: false,
        dir: None,
    })
    .expect("lab starts")
}

/// Runs `swarm ARGS` on host `i`, expecting success; returns stdout.
pub fn ok(lab: &Lab, i: usize, args: &[&str]) -> String {
    let out = lab.swarm(i, args);
    assert_eq!(
        out.status, 0,
        "swarm {args:?} on host{i} failed: {}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// Runs `swarm ARGS` on host `i`, expecting failure; returns stderr.
pub fn fails(lab: &Lab, i: usize, args: &[&str]) -> String {
    let out = lab.swarm(i, args);
    assert_ne!(
        out.status, 0,
        "swarm {args:?} on host{i} should have failed but printed: {}",
        out.stdout
    );
    out.stderr
}

/// `swarm node ls --format json` on host `i`, or None if it failed.
pub fn nodes(lab: &Lab, i: usize) -> Option<Vec<Node>> {
    let out = lab.swarm(i, &["node", "ls", "--format", "json"]);
    if out.status != 0 {
        return None;
    }
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `swarm info --format json` on host `i`.
pub fn info(lab: &Lab, i: usize) -> Option<Info> {
    let out = lab.swarm(i, &["info", "--format", "json"]);
    if out.status != 0 {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

/// Time allowed for the cluster to converge in a step. Generous: tests check
/// behaviour, never speed.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// Initialises host 1 and joins hosts 2..=n as workers; waits until all are ready.
pub fn form_cluster(lab: &Lab, n: usize) {
    let out = ok(lab, 1, &["init", "--advertise-addr", "192.0.2.1"]);
    assert!(out.contains("Swarm initialized"), "{out}");
    let token = ok(lab, 1, &["join-token", "-q", "worker"]);
    let token = token.trim();
    for i in 2..=n {
        let out = ok(lab, i, &["join", "--token", token, "192.0.2.1:2377"]);
        assert!(out.contains("joined a swarm as a worker"), "{out}");
    }
    wait_ready(lab, 1, n);
}

/// Waits until host `via` lists `n` nodes, all Ready.
pub fn wait_ready(lab: &Lab, via: usize, n: usize) {
    lab.wait_until(&format!("{n} nodes ready"), CONVERGE, || {
        let ns = nodes(lab, via)?;
        (ns.len() == n
            && ns
                .iter()
                .all(|x| x.status.state == mesh_api::NodeState::Ready))
        .then_some(())
    })
    .unwrap();
}

/// Promotes hosts 2 and 3 and waits until three managers are voters with a leader.
pub fn three_managers(lab: &Lab) {
    ok(lab, 1, &["node", "promote", "host2", "host3"]);
    lab.wait_until("3 reachable managers", CONVERGE, || {
        let ns = nodes(lab, 1)?;
        let ms: Vec<_> = ns
            .iter()
            .filter_map(|n| n.manager_status.as_ref())
            .collect();
        (ms.len() == 3
            && ms
                .iter()
                .all(|m| m.reachability == mesh_api::Reachability::Reachable)
            && ms.iter().filter(|m| m.leader).count() == 1)
            .then_some(())
    })
    .unwrap();
    for i in 1..=3 {
        lab.wait_until(&format!("host{i} sees 3 managers"), CONVERGE, || {
            let inf = info(lab, i)?;
            (inf.managers == 3 && inf.raft.as_ref()?.leader.is_some()).then_some(())
        })
        .unwrap();
    }
}

/// The host (1-based) whose node is the Raft leader, as seen from host `via`.
pub fn leader_host(lab: &Lab, via: usize) -> Option<usize> {
    let ns = nodes(lab, via)?;
    let leader = ns
        .iter()
        .find(|n| n.manager_status.as_ref().map(|m| m.leader).unwrap_or(false))?;
    leader
        .description
        .hostname
        .strip_prefix("host")?
        .parse()
        .ok()
}

/// Labels of the node named `host` as seen from host `via`.
pub fn labels(
    lab: &Lab,
    via: usize,
    host: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let ns = nodes(lab, via)?;
    ns.into_iter()
        .find(|n| n.description.hostname == host)
        .map(|n| n.spec.labels)
}

/// Network namespaces a test makes (endpoints) or makes meshd make (sandboxes), removed
/// on drop, also when the test panics.
#[derive(Default)]
pub struct NetnsGuard {
    names: std::sync::Mutex<Vec<String>>,
    prefixes: std::sync::Mutex<Vec<String>>,
}

impl NetnsGuard {
    /// Creates namespace `name` (with `lo` up) and removes it on drop.
    pub fn add(&self, name: &str) -> String {
        let st = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
        let _ = std::process::Command::new("ip")
            .args(["-n", name, "link", "set", "lo", "up"])
            .status();
        self.names.lock().unwrap().push(name.to_string());
        format!("/var/run/netns/{name}")
    }

    /// Removes, on drop, every namespace whose name starts with `prefix`.
    pub fn add_prefix(&self, prefix: &str) {
        self.prefixes.lock().unwrap().push(prefix.to_string());
    }

    /// Names of existing namespaces starting with `prefix`.
    pub fn existing(prefix: &str) -> Vec<String> {
        std::fs::read_dir("/var/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let mut all: Vec<String> = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        for p in self.prefixes.lock().map(|p| p.clone()).unwrap_or_default() {
            all.extend(Self::existing(&p));
        }
        for n in all {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &n])
                .status();
        }
    }
}

/// Runs `argv` inside the namespace at `path` (network namespace only).
pub fn in_netns(path: &str, argv: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(argv)
        .output()
        .expect("nsenter runs")
}

/// Whether `from` (a namespace path) can ping `ip`.
pub fn pings(from: &str, ip: &str) -> bool {
    in_netns(from, &["ping", "-c", "1", "-W", "1", ip])
        .status
        .success()
}

/// The prefix of host `i`'s overlay sandboxes in `lab` (plus the `-` before the
/// network part, so host1 never matches host10).
pub fn sandbox_prefix(lab: &Lab, i: usize) -> String {
    format!("{}-", lab.sandbox_prefix(i))
}

/// Path of the test image (an OCI layout tarball of busybox with an httpd that answers with
/// the task's hostname), built once per test process by `scripts/build-test-image.sh`.
pub fn test_image() -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace root")
                .to_path_buf();
            let out = root.join("target/images/meshd-test.tar");
            let status = std::process::Command::new("bash")
                .arg(root.join("scripts/build-test-image.sh"))
                .arg(&out)
                .status()
                .expect("build-test-image.sh runs");
            assert!(status.success(), "building the test image failed");
            out.to_string_lossy().into_owned()
        })
        .clone()
}
