//! The foundation on the lab: joining, tokens, managers, Raft faults, heartbeats.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mesh_api::{Availability, NodeRole, NodeState};
use mesh_integration_tests::*;

#[test]
fn init_and_two_joins_reach_three_ready_nodes() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    let table = ok(&lab, 1, &["node", "ls"]);
    assert!(table.contains("HOSTNAME"), "{table}");
    for h in ["host1", "host2", "host3"] {
        assert!(table.contains(h), "{table}");
    }
    assert!(table.contains("Leader"), "{table}");
    // The node the CLI talks to is marked.
    assert!(table.contains(" *"), "{table}");
    // `-q` prints the IDs only.
    let ids = ok(&lab, 1, &["node", "ls", "-q"]);
    assert_eq!(ids.lines().count(), 3, "{ids}");
    // Workers cannot read cluster state.
    let err = fails(&lab, 2, &["node", "ls"]);
    assert!(err.contains("not a swarm manager"), "{err}");
    // Info on a worker still answers.
    let inf = info(&lab, 2).unwrap();
    assert_eq!(inf.local_node_state, "active");
    assert!(!inf.control_available);
}

#[test]
fn wrong_rotated_and_foreign_tokens_are_refused() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    ok(&lab, 1, &["init", "--advertise-addr", "192.0.2.1"]);
    let old = ok(&lab, 1, &["join-token", "-q", "worker"])
        .trim()
        .to_string();

    // Malformed.
    let err = fails(
        &lab,
        2,
        &["join", "--token", "SWMTKN-1-nonsense", "192.0.2.1:2377"],
    );
    assert!(err.contains("--token"), "{err}");
    // Bad addresses.
    let err = fails(&lab, 2, &["join", "--token", &old, "not an address"]);
    assert!(err.contains("address"), "{err}");
    let err = fails(
        &lab,
        2,
        &[
            "join",
            "--token",
            &old,
            "--advertise-addr",
            "x.y",
            "192.0.2.1",
        ],
    );
    assert!(err.contains("--advertise-addr"), "{err}");
    // Nothing answers there: a clear error, and the node stays out of any cluster.
    let err = fails(&lab, 2, &["join", "--token", &old, "192.0.2.99:2377"]);
    assert!(err.contains("192.0.2.99"), "{err}");
    assert_eq!(info(&lab, 2).unwrap().local_node_state, "inactive");

    // Rotated: the old token stops working, the new one works.
    let out = ok(&lab, 1, &["join-token", "--rotate", "worker"]);
    assert!(
        out.contains("Successfully rotated worker join token"),
        "{out}"
    );
    let new = ok(&lab, 1, &["join-token", "-q", "worker"])
        .trim()
        .to_string();
    assert_ne!(old, new);
    let err = fails(&lab, 2, &["join", "--token", &old, "192.0.2.1:2377"]);
    assert!(err.contains("rotated"), "{err}");

    // Same shape, digest of another CA: refused before anything is sent.
    let mut parts: Vec<String> = new.split('-').map(str::to_string).collect();
    let digest = parts[2].clone();
    let flipped: String = digest
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    parts[2] = flipped;
    let foreign = parts.join("-");
    let err = fails(&lab, 2, &["join", "--token", &foreign, "192.0.2.1:2377"]);
    assert!(err.contains("digest"), "{err}");

    // Nothing of the failed attempts left a trace: host2 can still join, as a worker.
    let out = ok(&lab, 2, &["join", "--token", &new, "192.0.2.1:2377"]);
    assert!(out.contains("as a worker"), "{out}");
    // The manager token makes a manager.
    let mt = ok(&lab, 1, &["join-token", "-q", "manager"])
        .trim()
        .to_string();
    let out = ok(&lab, 3, &["join", "--token", &mt, "192.0.2.1:2377"]);
    assert!(out.contains("as a manager"), "{out}");
    lab.wait_until("host3 is a voting manager", CONVERGE, || {
        let inf = info(&lab, 3)?;
        (inf.control_available && inf.managers == 2).then_some(())
    })
    .unwrap();
    let ns = nodes(&lab, 1).unwrap();
    assert_eq!(ns.len(), 3);
    assert_eq!(
        ns.iter()
            .filter(|n| n.spec.role == NodeRole::Manager)
            .count(),
        2
    );
}

#[test]
fn promote_update_and_demote_with_last_manager_guard() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    three_managers(&lab);

    let out = ok(
        &lab,
        2,
        &[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "zone=a",
            "host3",
        ],
    );
    assert!(out.contains("host3"), "{out}");
    lab.wait_until("update visible on host1", CONVERGE, || {
        let n = nodes(&lab, 1)?
            .into_iter()
            .find(|n| n.description.hostname == "host3")?;
        (n.spec.availability == Availability::Drain
            && n.spec.labels.get("zone").map(String::as_str) == Some("a"))
        .then_some(())
    })
    .unwrap();

    // Bad input names the problem and changes nothing.
    let before = labels(&lab, 1, "host3").unwrap();
    let err = fails(
        &lab,
        1,
        &["node", "update", "--label-add", "bad key=1", "host3"],
    );
    assert!(err.contains("--label-add"), "{err}");
    let err = fails(&lab, 1, &["node", "update", "--label-rm", "nope", "host3"]);
    assert!(err.contains("nope"), "{err}");
    let err = fails(
        &lab,
        1,
        &["node", "update", "--availability", "sleepy", "host3"],
    );
    assert!(err.contains("--availability"), "{err}");
    let err = fails(
        &lab,
        1,
        &["node", "update", "--availability", "pause", "nosuchnode"],
    );
    assert!(err.contains("nosuchnode"), "{err}");
    assert_eq!(labels(&lab, 1, "host3").unwrap(), before);

    // Demote two managers, then the last one is refused.
    ok(&lab, 1, &["node", "demote", "host2", "host3"]);
    lab.wait_until("one manager left", CONVERGE, || {
        let inf = info(&lab, 1)?;
        (inf.managers == 1).then_some(())
    })
    .unwrap();
    lab.wait_until("host2 is a worker again", CONVERGE, || {
        let inf = info(&lab, 2)?;
        (!inf.control_available).then_some(())
    })
    .unwrap();
    let err = fails(&lab, 1, &["node", "demote", "host1"]);
    assert!(err.contains("last manager"), "{err}");
    let ns = nodes(&lab, 1).unwrap();
    let h1 = ns
        .iter()
        .find(|n| n.description.hostname == "host1")
        .unwrap();
    assert_eq!(h1.spec.role, NodeRole::Manager);
}

#[test]
fn leader_killed_new_leader_keeps_acknowledged_writes() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    three_managers(&lab);
    let leader = leader_host(&lab, 1).unwrap();
    let other = if leader == 1 { 2 } else { 1 };
    // Acknowledged writes, through a follower and through the leader.
    for k in 0..10 {
        let via = if k % 2 == 0 { leader } else { other };
        ok(
            &lab,
            via,
            &[
                "node",
                "update",
                "--label-add",
                &format!("k{k}=v{k}"),
                "host1",
            ],
        );
    }
    lab.kill(leader);
    let survivor = (1..=3).find(|i| *i != leader).unwrap();
    let new_leader = lab
        .wait_until("a new leader", CONVERGE, || {
            let l = leader_host(&lab, survivor)?;
            (l != leader).then_some(l)
        })
        .unwrap();
    assert_ne!(new_leader, leader);
    let ls = labels(&lab, survivor, "host1").unwrap();
    for k in 0..10 {
        assert_eq!(
            ls.get(&format!("k{k}")).map(String::as_str),
            Some(format!("v{k}").as_str())
        );
    }
    // The cluster still takes writes; the killed manager shows unreachable and down.
    ok(
        &lab,
        survivor,
        &["node", "update", "--label-add", "after=kill", "host1"],
    );
    lab.wait_until("killed manager marked down", CONVERGE, || {
        let n = nodes(&lab, survivor)?
            .into_iter()
            .find(|n| n.description.hostname == format!("host{leader}"))?;
        (n.status.state == NodeState::Down
            && n.manager_status.as_ref()?.reachability == mesh_api::Reachability::Unreachable)
            .then_some(())
    })
    .unwrap();
    // It comes back and catches up.
    lab.start_daemon(leader).unwrap();
    lab.wait_until("restarted manager caught up", CONVERGE, || {
        let ls = labels(&lab, leader, "host1")?;
        (ls.get("after").map(String::as_str) == Some("kill")).then_some(())
    })
    .unwrap();
}

#[test]
fn full_restart_keeps_cluster_and_state() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    three_managers(&lab);
    ok(
        &lab,
        1,
        &["node", "update", "--label-add", "persist=yes", "host2"],
    );
    let before = info(&lab, 1).unwrap();
    for i in 1..=3 {
        lab.stop(i);
    }
    for i in 1..=3 {
        lab.start_daemon(i).unwrap();
    }
    wait_ready(&lab, 1, 3);
    lab.wait_until("a leader after restart", CONVERGE, || leader_host(&lab, 2))
        .unwrap();
    let after = info(&lab, 1).unwrap();
    assert_eq!(before.cluster_id, after.cluster_id);
    assert_eq!(before.node_id, after.node_id);
    assert_eq!(
        labels(&lab, 3, "host2")
            .unwrap()
            .get("persist")
            .map(String::as_str),
        Some("yes")
    );
    ok(
        &lab,
        2,
        &["node", "update", "--label-add", "again=1", "host2"],
    );
}

#[test]
fn partitioned_minority_cannot_write_majority_can() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    three_managers(&lab);
    let leader = leader_host(&lab, 1).unwrap();
    let majority: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();
    // Cut the leader off: it becomes the minority.
    lab.partition(&[leader], &majority).unwrap();
    let m = majority[0];
    lab.wait_until("majority elects a leader", CONVERGE, || {
        let l = leader_host(&lab, m)?;
        (l != leader).then_some(())
    })
    .unwrap();
    ok(
        &lab,
        m,
        &["node", "update", "--label-add", "side=majority", "host1"],
    );

    // The minority refuses writes fast, with a clear error, and still serves reads.
    lab.wait_until("minority refuses writes", CONVERGE, || {
        let started = Instant::now();
        let out = lab.swarm(
            leader,
            &["node", "update", "--label-add", "side=minority", "host1"],
        );
        (out.status != 0
            && out.stderr.contains("no quorum")
            && started.elapsed() < Duration::from_secs(10))
        .then_some(())
    })
    .unwrap();
    assert!(
        nodes(&lab, leader).is_some(),
        "reads are served without quorum"
    );

    lab.heal().unwrap();
    lab.wait_until("minority catches up", CONVERGE, || {
        let ls = labels(&lab, leader, "host1")?;
        (ls.get("side").map(String::as_str) == Some("majority")).then_some(())
    })
    .unwrap();
    let ls = labels(&lab, m, "host1").unwrap();
    assert_eq!(ls.get("side").map(String::as_str), Some("majority"));
}

#[test]
fn killed_worker_goes_down_and_comes_back() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    lab.kill(3);
    lab.wait_until("host3 down", CONVERGE, || {
        let n = nodes(&lab, 1)?
            .into_iter()
            .find(|n| n.description.hostname == "host3")?;
        (n.status.state == NodeState::Down).then_some(())
    })
    .unwrap();
    lab.start_daemon(3).unwrap();
    wait_ready(&lab, 1, 3);
    // A frozen daemon (SIGSTOP) is as silent as a dead one.
    lab.pause(2);
    lab.wait_until("paused host2 down", CONVERGE, || {
        let n = nodes(&lab, 1)?
            .into_iter()
            .find(|n| n.description.hostname == "host2")?;
        (n.status.state == NodeState::Down).then_some(())
    })
    .unwrap();
    lab.resume(2);
    wait_ready(&lab, 1, 3);
    // A worker that left can be removed.
    ok(&lab, 3, &["leave"]);
    let err = fails(&lab, 1, &["node", "rm", "host1"]);
    assert!(err.contains("manager"), "{err}");
    lab.wait_until("host3 removable", CONVERGE, || {
        (lab.swarm(1, &["node", "rm", "host3"]).status == 0).then_some(())
    })
    .unwrap();
    assert_eq!(nodes(&lab, 1).unwrap().len(), 2);
}

#[test]
fn force_new_cluster_recovers_from_lost_quorum() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    three_managers(&lab);
    ok(
        &lab,
        1,
        &["node", "update", "--label-add", "before=loss", "host1"],
    );
    lab.kill(2);
    lab.kill(3);
    lab.wait_until("host1 refuses writes", CONVERGE, || {
        let out = lab.swarm(1, &["node", "update", "--label-add", "x=1", "host1"]);
        (out.status != 0 && out.stderr.contains("no quorum")).then_some(())
    })
    .unwrap();
    let out = ok(&lab, 1, &["init", "--force-new-cluster"]);
    assert!(out.contains("Swarm initialized"), "{out}");
    ok(
        &lab,
        1,
        &["node", "update", "--label-add", "after=recovery", "host1"],
    );
    let ls = labels(&lab, 1, "host1").unwrap();
    assert_eq!(ls.get("before").map(String::as_str), Some("loss"));
    let inf = info(&lab, 1).unwrap();
    assert_eq!(inf.managers, 1);
}

#[test]
fn demoting_the_leader_hands_over_and_it_can_come_back() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    three_managers(&lab);
    let leader = leader_host(&lab, 1).unwrap();
    let other = (1..=3).find(|i| *i != leader).unwrap();
    ok(&lab, leader, &["node", "demote", &format!("host{leader}")]);
    lab.wait_until(
        "old leader is a worker, two managers remain",
        CONVERGE,
        || {
            let inf = info(&lab, other)?;
            let old = info(&lab, leader)?;
            (inf.managers == 2 && !old.control_available && leader_host(&lab, other)? != leader)
                .then_some(())
        },
    )
    .unwrap();
    ok(
        &lab,
        other,
        &["node", "update", "--label-add", "handover=done", "host1"],
    );
    // Promote it again: it rejoins Raft from scratch and catches up.
    ok(&lab, other, &["node", "promote", &format!("host{leader}")]);
    lab.wait_until("three managers again", CONVERGE, || {
        let inf = info(&lab, leader)?;
        (inf.control_available && inf.managers == 3).then_some(())
    })
    .unwrap();
    lab.wait_until("re-promoted manager has the state", CONVERGE, || {
        let ls = labels(&lab, leader, "host1")?;
        (ls.get("handover").map(String::as_str) == Some("done")).then_some(())
    })
    .unwrap();
}
