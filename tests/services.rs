//! Services on the lab, with real runc containers: spread, scale, failures of hosts,
//! drain and pause, global services, constraints, rolling updates and rollbacks, logs,
//! standalone containers, and a restarted meshd re-adopting its containers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mesh_api::{Task, TaskState};
use mesh_integration_tests::*;
use mesh_testkit::Lab;

/// Tasks of `service` as `swarm service ps --format json` prints them.
fn tasks(lab: &Lab, i: usize, service: &str) -> Option<Vec<Task>> {
    let out = lab.swarm(i, &["service", "ps", "--format", "json", service]);
    if out.status != 0 {
        return None;
    }
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Running tasks of `service` (desired and observed running), by hostname of their node.
fn running_by_host(lab: &Lab, i: usize, service: &str) -> Option<BTreeMap<String, usize>> {
    let ts = tasks(lab, i, service)?;
    let ids = node_hostnames(lab, i)?;
    let mut m = BTreeMap::new();
    for t in ts
        .iter()
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
    {
        *m.entry(ids.get(&t.node_id).cloned().unwrap_or_default())
            .or_insert(0) += 1;
    }
    Some(m)
}

fn node_hostnames(lab: &Lab, i: usize) -> Option<BTreeMap<String, String>> {
    Some(
        nodes(lab, i)?
            .into_iter()
            .map(|n| (n.id, n.description.hostname))
            .collect(),
    )
}

fn wait_running(lab: &Lab, service: &str, n: usize) -> BTreeMap<String, usize> {
    lab.wait_until(&format!("{n} tasks of {service} running"), CONVERGE, || {
        let m = running_by_host(lab, 1, service)?;
        (m.values().sum::<usize>() == n).then_some(m)
    })
    .unwrap()
}

/// Loads the test image on every host.
fn load_image(lab: &Lab) {
    let image = test_image();
    for i in 1..=lab.hosts() {
        let out = ok(lab, i, &["image", "load", "-i", &image]);
        assert!(out.contains("meshd-test:latest"), "{out}");
    }
}

/// The task's network namespace on host `i`.
fn task_netns(lab: &Lab, i: usize, task: &Task) -> String {
    format!(
        "/var/run/netns/{}t{}",
        lab.sandbox_prefix(i),
        &task.id[..12]
    )
}

fn host_index(lab: &Lab, hostname: &str) -> usize {
    (1..=lab.hosts())
        .find(|i| format!("host{i}") == hostname)
        .unwrap()
}

#[test]
fn replicated_service_spreads_scales_and_survives_a_host() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    load_image(&lab);
    ok(&lab, 1, &["network", "create", "-d", "overlay", "appnet"]);
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--network",
            "appnet",
            "--restart-delay",
            "100ms",
            "meshd-test:latest",
        ],
    );
    let spread = wait_running(&lab, "web", 6);
    assert_eq!(spread.len(), 3, "6 replicas on 3 hosts: {spread:?}");
    assert!(spread.values().all(|n| *n == 2), "{spread:?}");

    // Every task serves its own hostname over the overlay, from another task's namespace.
    let ts: Vec<Task> = tasks(&lab, 1, "web")
        .unwrap()
        .into_iter()
        .filter(|t| t.status.state == TaskState::Running)
        .collect();
    let hosts = node_hostnames(&lab, 1).unwrap();
    let from = &ts[0];
    let from_ns = task_netns(&lab, host_index(&lab, &hosts[&from.node_id]), from);
    for t in &ts {
        let ip = t.networks[0].ip.to_string();
        let url = format!("http://{ip}/");
        let body = lab
            .wait_until(&format!("{url} answers"), CONVERGE, || {
                let out = in_netns(&from_ns, &["curl", "-s", "-m", "2", &url]);
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            })
            .unwrap();
        assert_eq!(body, &t.id[..12], "task {} answers with its hostname", t.id);
    }

    // Logs: each task's output is there.
    let logs = ok(&lab, 1, &["service", "logs", "web"]);
    for t in &ts {
        assert!(
            logs.contains(&t.id[..12]),
            "logs of {} missing:\n{logs}",
            t.id
        );
    }

    // Scale down and up.
    ok(&lab, 1, &["service", "scale", "web=3"]);
    wait_running(&lab, "web", 3);
    ok(&lab, 1, &["service", "scale", "web=5"]);
    wait_running(&lab, "web", 5);

    // Kill host3: its tasks run elsewhere.
    lab.kill(3);
    let m = lab
        .wait_until("5 tasks running on host1 and host2", CONVERGE, || {
            let m = running_by_host(&lab, 1, "web")?;
            (m.values().sum::<usize>() == 5 && !m.contains_key("host3")).then_some(m)
        })
        .unwrap();
    assert_eq!(m.len(), 2, "{m:?}");
}

#[test]
fn drain_pause_constraints_and_global_services() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 2);
    load_image(&lab);
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "4",
            "meshd-test:latest",
        ],
    );
    wait_running(&lab, "web", 4);

    // Drain host2: everything moves to host1; pause: no new tasks there, old ones stay.
    ok(
        &lab,
        1,
        &["node", "update", "--availability", "drain", "host2"],
    );
    let m = lab
        .wait_until("tasks off host2", CONVERGE, || {
            let m = running_by_host(&lab, 1, "web")?;
            (m.get("host1") == Some(&4) && m.len() == 1).then_some(m)
        })
        .unwrap();
    assert_eq!(m["host1"], 4);
    ok(
        &lab,
        1,
        &["node", "update", "--availability", "pause", "host1"],
    );
    ok(
        &lab,
        1,
        &["node", "update", "--availability", "active", "host2"],
    );
    ok(&lab, 1, &["service", "scale", "web=6"]);
    let m = wait_running(&lab, "web", 6);
    assert_eq!((m["host1"], m["host2"]), (4, 2), "{m:?}");
    ok(
        &lab,
        1,
        &["node", "update", "--availability", "active", "host1"],
    );

    // A constraint no node meets: pending with the reason, placed once a node matches.
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "zoned",
            "--constraint",
            "node.labels.zone==a",
            "meshd-test:latest",
        ],
    );
    let reason = lab
        .wait_until("zoned pending with a reason", CONVERGE, || {
            let ts = tasks(&lab, 1, "zoned")?;
            let t = ts.first()?;
            (t.status.state == TaskState::Pending && !t.status.message.is_empty())
                .then(|| t.status.message.clone())
        })
        .unwrap();
    assert!(reason.contains("constraint"), "{reason}");

    // A global service, then host3 joins: it gets the global task; label it for "zoned".
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "agent",
            "--mode",
            "global",
            "meshd-test:latest",
        ],
    );
    wait_running(&lab, "agent", 2);
    let token = ok(&lab, 1, &["join-token", "-q", "worker"]);
    ok(
        &lab,
        3,
        &["join", "--token", token.trim(), "192.0.2.1:2377"],
    );
    wait_ready(&lab, 1, 3);
    let m = wait_running(&lab, "agent", 3);
    assert_eq!(m.len(), 3, "{m:?}");
    ok(
        &lab,
        1,
        &["node", "update", "--label-add", "zone=a", "host3"],
    );
    let m = wait_running(&lab, "zoned", 1);
    assert_eq!(m.get("host3"), Some(&1), "{m:?}");
}

#[test]
fn rolling_update_in_order_and_rollback_on_failed_health() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    load_image(&lab);
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--health-cmd",
            "wget -qO- localhost:80",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
            "--update-parallelism",
            "1",
            "--update-delay",
            "200ms",
            "--update-monitor",
            "2s",
            "--update-failure-action",
            "rollback",
            "--env",
            "V=1",
            "meshd-test:latest",
        ],
    );
    wait_running(&lab, "web", 3);
    let old: BTreeSet<String> = tasks(&lab, 1, "web")
        .unwrap()
        .into_iter()
        .filter(|t| t.desired_state == TaskState::Running)
        .map(|t| t.id)
        .collect();

    // An update of the environment replaces every task, one at a time.
    ok(&lab, 1, &["service", "update", "--env-add", "V=2", "web"]);
    let done = lab
        .wait_until("update completed", CONVERGE, || {
            let out = lab.swarm(1, &["service", "inspect", "web"]);
            (out.status == 0 && out.stdout.contains("\"completed\"")).then_some(())
        })
        .is_ok();
    assert!(done);
    let ts = tasks(&lab, 1, "web").unwrap();
    let new: Vec<&Task> = ts
        .iter()
        .filter(|t| t.desired_state == TaskState::Running)
        .collect();
    assert_eq!(new.len(), 3);
    for t in &new {
        assert!(!old.contains(&t.id), "task {} was not replaced", t.id);
        assert!(t.spec.container.env.contains(&"V=2".to_string()));
    }
    // One at a time: the new tasks started at different times, each after an old one ended.
    let mut starts: Vec<u64> = new.iter().map(|t| t.created_at).collect();
    starts.sort();
    assert!(starts.windows(2).all(|w| w[1] > w[0]), "{starts:?}");

    // An update whose tasks never get healthy is rolled back.
    ok(
        &lab,
        1,
        &[
            "service",
            "update",
            "--health-cmd",
            "false",
            "--env-add",
            "V=3",
            "web",
        ],
    );
    lab.wait_until("rolled back", Duration::from_secs(60), || {
        let out = lab.swarm(1, &["service", "inspect", "web"]);
        (out.status == 0 && out.stdout.contains("rollback_completed")).then_some(())
    })
    .unwrap();
    let ts = tasks(&lab, 1, "web").unwrap();
    let running: Vec<&Task> = ts
        .iter()
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
        .collect();
    assert_eq!(running.len(), 3);
    for t in running {
        assert!(
            t.spec.container.env.contains(&"V=2".to_string()),
            "{:?}",
            t.spec.container.env
        );
    }
}

#[test]
fn restarted_meshd_readopts_its_containers_and_bad_specs_change_nothing() {
    if !can_run() {
        return;
    }
    let lab = lab(2);
    form_cluster(&lab, 2);
    load_image(&lab);
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "meshd-test:latest",
        ],
    );
    wait_running(&lab, "web", 2);
    let before: BTreeMap<String, u32> = tasks(&lab, 1, "web")
        .unwrap()
        .into_iter()
        .filter(|t| t.status.state == TaskState::Running)
        .map(|t| (t.id, t.status.pid))
        .collect();
    assert_eq!(before.len(), 2);

    // kill -9 the worker's meshd and start it again: same tasks, same processes.
    lab.kill(2);
    lab.start_daemon(2).unwrap();
    wait_ready(&lab, 1, 2);
    std::thread::sleep(Duration::from_secs(2));
    let after: BTreeMap<String, u32> = tasks(&lab, 1, "web")
        .unwrap()
        .into_iter()
        .filter(|t| t.desired_state == TaskState::Running)
        .map(|t| (t.id, t.status.pid))
        .collect();
    assert_eq!(before, after, "tasks were replaced instead of re-adopted");
    for pid in before.values() {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "container process {pid} is gone"
        );
    }

    // Bad input is refused, naming the field, and creates nothing.
    let e = fails(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--constraint",
            "zone=a",
            "meshd-test",
        ],
    );
    assert!(e.contains("--constraint"), "{e}");
    let e = fails(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--network",
            "nope",
            "meshd-test",
        ],
    );
    assert!(e.contains("nope"), "{e}");
    let e = fails(
        &lab,
        1,
        &["service", "create", "--name", "web", "meshd-test"],
    );
    assert!(e.contains("already exists"), "{e}");
    let ls = ok(&lab, 1, &["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "{ls}");

    // An image a node lacks: the task is rejected there and placed on a node that has it.
    let out = ok(&lab, 2, &["image", "rm", "-f", "meshd-test:latest"]);
    let _ = out;
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "one",
            "--replicas",
            "2",
            "meshd-test:latest",
        ],
    );
    let m = wait_running(&lab, "one", 2);
    assert_eq!(m.get("host1"), Some(&2), "{m:?}");
    let ts = tasks(&lab, 1, "one").unwrap();
    assert!(
        ts.iter()
            .any(|t| t.status.err.contains("is not present on node host2")),
        "no rejection recorded: {ts:?}"
    );

    // A standalone container: its output, its exit code.
    let out = lab.swarm(
        1,
        &[
            "run",
            "--name",
            "tool",
            "meshd-test:latest",
            "sh",
            "-c",
            "echo hello-from-run; exit 3",
        ],
    );
    assert!(
        out.stdout.contains("hello-from-run"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.status, 3, "{}", out.stderr);
}
