//! Replicated and global services, node loss, drains, restart policy, rejects, history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use mesh_api::{
    Availability, NodeState, RestartCondition, ServiceMode, Task, TaskState, TaskStatus,
};
use mesh_orchestrator::TaskChange;

fn desired_changes(p: &mesh_orchestrator::Plan, state: TaskState) -> usize {
    p.tasks
        .iter()
        .filter(|c| matches!(c, TaskChange::Desired { state: s, .. } if *s == state))
        .count()
}

#[test]
fn scale_up_and_down_spreads_the_removal() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.services.push(replicated("web", 6, "img:1"));
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_values().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    // Make n1 hold more: its extra task must be among the first to go.
    sim.scale("web", 7);
    sim.settle();
    assert_eq!(sim.per_node("web").get("n1"), Some(&3));
    sim.scale("web", 3);
    let p = sim.step();
    assert_eq!(desired_changes(&p, TaskState::Remove), 4);
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_values().collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    // Removed slots' tasks are deleted once stopped: nothing but the 3 running is left.
    assert_eq!(sim.of("web").count(), 3);
    sim.scale("web", 5);
    sim.settle();
    assert_eq!(sim.running("web").len(), 5);
    let mut slots: Vec<u64> = sim.running("web").iter().map(|t| t.slot).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 5, "distinct slots");
    sim.scale("web", 0);
    sim.settle();
    assert_eq!(sim.of("web").count(), 0);
}

#[test]
fn scale_down_prefers_tasks_not_running() {
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    let mut s = replicated("web", 3, "img:1");
    s.spec.task_template.placement.max_replicas = 1;
    sim.services.push(s);
    sim.settle();
    assert_eq!(sim.running("web").len(), 2);
    let pending: Vec<String> = sim.pending("web").iter().map(|t| t.id.clone()).collect();
    assert_eq!(pending.len(), 1);
    sim.scale("web", 2);
    let p = sim.step();
    assert_eq!(
        p.remove, pending,
        "the pending task goes, the running ones stay"
    );
    assert!(p.tasks.is_empty());
}

#[test]
fn global_service_follows_nodes() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.node_mut("n3")
        .spec
        .labels
        .insert("gpu".into(), "no".into());
    let mut s = service("mon", ServiceMode::Global, template("img:1"));
    s.spec.task_template.placement.constraints = vec!["node.labels.gpu!=no".into()];
    sim.services.push(s);
    let p = sim.step();
    assert_eq!(p.create.len(), 2);
    for t in &p.create {
        assert_eq!(t.slot, 0);
        assert_eq!(t.status.state, TaskState::Assigned, "assigned at creation");
    }
    sim.settle();
    assert_eq!(
        sim.per_node("mon").into_keys().collect::<Vec<_>>(),
        vec!["n1", "n2"]
    );
    // A node that joins gets one.
    sim.nodes.push(node("n4"));
    sim.settle();
    assert_eq!(sim.running("mon").len(), 3);
    // Drain: its task stops and none replaces it.
    sim.node_mut("n1").spec.availability = Availability::Drain;
    sim.settle();
    assert_eq!(
        sim.per_node("mon").into_keys().collect::<Vec<_>>(),
        vec!["n2", "n4"]
    );
    // Pause: the task stays.
    sim.node_mut("n2").spec.availability = Availability::Pause;
    sim.settle();
    assert_eq!(sim.running("mon").len(), 2);
    // A label change that breaks the constraint stops the task there.
    sim.node_mut("n4")
        .spec
        .labels
        .insert("gpu".into(), "no".into());
    sim.settle();
    assert_eq!(
        sim.per_node("mon").into_keys().collect::<Vec<_>>(),
        vec!["n2"]
    );
    // Back to active: a task again.
    sim.node_mut("n1").spec.availability = Availability::Active;
    sim.settle();
    assert_eq!(
        sim.per_node("mon").into_keys().collect::<Vec<_>>(),
        vec!["n1", "n2"]
    );
    // A node removed from the cluster: its task is orphaned and then forgotten.
    let before: Vec<String> = sim
        .of("mon")
        .filter(|t| t.node_id == "n1")
        .map(|t| t.id.clone())
        .collect();
    sim.nodes.retain(|n| n.id != "n1");
    sim.settle();
    assert!(
        sim.of("mon").all(|t| t.node_id != "n1"),
        "{before:?} deleted"
    );
}

#[test]
fn drain_moves_tasks_at_once() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.services.push(replicated("web", 6, "img:1"));
    sim.settle();
    sim.node_mut("n1").spec.availability = Availability::Drain;
    let p = sim.step();
    // Both tasks of n1 are told to stop and replaced in the same plan, on n2 and n3.
    assert_eq!(desired_changes(&p, TaskState::Shutdown), 2);
    assert_eq!(p.create.len(), 2);
    let mut targets: Vec<&str> = p.create.iter().map(|t| t.node_id.as_str()).collect();
    targets.sort();
    assert_eq!(targets, vec!["n2", "n3"]);
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_values().collect::<Vec<_>>(),
        vec![3, 3]
    );
    // Pause: nothing moves, but new tasks avoid it.
    sim.node_mut("n2").spec.availability = Availability::Pause;
    sim.settle();
    assert_eq!(sim.per_node("web").get("n2"), Some(&3));
    sim.scale("web", 8);
    sim.settle();
    assert_eq!(sim.per_node("web").get("n3"), Some(&5));
}

#[test]
fn node_down_replaces_tasks_at_once_and_orphans_when_gone() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.services.push(replicated("web", 3, "img:1"));
    sim.settle();
    let on_n1: Vec<String> = sim
        .running("web")
        .iter()
        .filter(|t| t.node_id == "n1")
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(on_n1.len(), 1);
    sim.node_mut("n1").status.state = NodeState::Down;
    sim.node_mut("n1").updated_at = sim.now;
    let p = sim.step();
    // No restart delay: the replacement is assigned in the same plan.
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.create[0].status.state, TaskState::Assigned);
    assert_ne!(p.create[0].node_id, "n1");
    assert_eq!(
        p.next_wakeup_ms,
        Some(sim.now + mesh_orchestrator::DEFAULT_ORPHAN_AFTER_MS)
    );
    sim.settle();
    assert_eq!(sim.running("web").len(), 3);
    let old = sim.task(&on_n1[0]);
    assert_eq!(
        (old.desired_state, old.status.state),
        (TaskState::Shutdown, TaskState::Running)
    );
    // Still down a day later: orphaned.
    sim.advance(mesh_orchestrator::DEFAULT_ORPHAN_AFTER_MS);
    sim.settle();
    assert_eq!(sim.task(&on_n1[0]).status.state, TaskState::Orphaned);
    // Another node removed outright: orphaned at once, replaced at once.
    let on_n2: Vec<String> = sim
        .running("web")
        .iter()
        .filter(|t| t.node_id == "n2")
        .map(|t| t.id.clone())
        .collect();
    assert!(!on_n2.is_empty());
    sim.nodes.retain(|n| n.id != "n2");
    let p = sim.step();
    for id in &on_n2 {
        assert!(p.tasks.contains(&TaskChange::Observed {
            task_id: id.clone(),
            state: TaskState::Orphaned,
            message: "node n2 is gone".into(),
        }));
    }
    assert_eq!(p.create.len(), on_n2.len());
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_iter().collect::<Vec<_>>(),
        vec![("n3".to_string(), 3)]
    );
}

#[test]
fn node_coming_back_stops_its_replaced_tasks() {
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    sim.services.push(replicated("web", 2, "img:1"));
    sim.settle();
    sim.node_mut("n1").status.state = NodeState::Down;
    sim.settle();
    assert_eq!(sim.per_node("web").get("n2"), Some(&2));
    sim.node_mut("n1").status.state = NodeState::Ready;
    sim.settle();
    assert_eq!(sim.per_node("web").get("n2"), Some(&2));
    assert!(
        sim.of("web")
            .filter(|t| t.node_id == "n1")
            .all(|t| t.status.state == TaskState::Shutdown)
    );
}

/// A restart policy scenario: the image, the policy, and how many tasks end up started.
struct RestartCase {
    name: &'static str,
    condition: RestartCondition,
    completes: bool,
    max_attempts: u64,
    window_ms: u64,
    /// Tasks created for the one slot after running long enough.
    expect_tasks: usize,
}

#[test]
fn restart_policy_table() {
    let cases = [
        RestartCase {
            name: "any/fail",
            condition: RestartCondition::Any,
            completes: false,
            max_attempts: 3,
            window_ms: 0,
            expect_tasks: 4,
        },
        RestartCase {
            name: "any/complete",
            condition: RestartCondition::Any,
            completes: true,
            max_attempts: 2,
            window_ms: 0,
            expect_tasks: 3,
        },
        RestartCase {
            name: "on-failure/fail",
            condition: RestartCondition::OnFailure,
            completes: false,
            max_attempts: 1,
            window_ms: 0,
            expect_tasks: 2,
        },
        RestartCase {
            name: "on-failure/complete",
            condition: RestartCondition::OnFailure,
            completes: true,
            max_attempts: 0,
            window_ms: 0,
            expect_tasks: 1,
        },
        RestartCase {
            name: "none/fail",
            condition: RestartCondition::None,
            completes: false,
            max_attempts: 0,
            window_ms: 0,
            expect_tasks: 1,
        },
        // 3 attempts within a 60 s window with a 5 s delay: stops after 3 restarts.
        RestartCase {
            name: "wide window",
            condition: RestartCondition::Any,
            completes: false,
            max_attempts: 3,
            window_ms: 60_000,
            expect_tasks: 4,
        },
        // 3 attempts per 12 s window with a 5 s delay: the window keeps sliding, never stops.
        RestartCase {
            name: "window",
            condition: RestartCondition::Any,
            completes: false,
            max_attempts: 3,
            window_ms: 12_000,
            expect_tasks: 0,
        },
    ];
    for c in cases {
        let mut sim = Sim::with_nodes(&["n1"]);
        sim.history = 10;
        let mut s = replicated("job", 1, "img:1");
        let rp = &mut s.spec.task_template.restart_policy;
        rp.condition = c.condition;
        rp.max_attempts = c.max_attempts;
        rp.window_ms = c.window_ms;
        sim.services.push(s);
        if c.completes {
            sim.completing.insert("img:1".into());
        } else {
            sim.failing.insert("img:1".into());
        }
        sim.run_for(60_000);
        let n = sim.of("job").count();
        if c.expect_tasks == 0 {
            assert!(n > 5, "{}: still restarting, {n} tasks", c.name);
            continue;
        }
        assert_eq!(n, c.expect_tasks, "{}", c.name);
        // The last one stays ended: desired `complete`, no replacement.
        let last = sim.of("job").max_by_key(|t| t.created_at).unwrap();
        assert_eq!(last.desired_state, TaskState::Complete, "{}", c.name);
        assert!(sim.wakeup.is_none(), "{}", c.name);
    }
}

#[test]
fn restart_delay_holds_the_replacement() {
    let mut sim = Sim::with_nodes(&["n1"]);
    sim.services.push(replicated("web", 1, "img:1"));
    sim.settle();
    let first = sim.running("web")[0].id.clone();
    // The task fails at t0.
    let t0 = sim.now;
    {
        let t = sim.task_mut(&first);
        t.status.state = TaskState::Failed;
        t.status.timestamp = t0;
    }
    let p = sim.step();
    assert_eq!(desired_changes(&p, TaskState::Shutdown), 1);
    assert_eq!(p.create.len(), 1);
    let repl = &p.create[0];
    assert_eq!(repl.status.state, TaskState::Pending);
    assert_eq!(
        repl.status.message,
        format!("restart delay: waiting 5s after task {first} failed")
    );
    assert_eq!(p.next_wakeup_ms, Some(t0 + 5_000));
    let repl = repl.id.clone();
    sim.advance(4_999);
    assert!(sim.step().is_empty());
    sim.advance(1);
    let p = sim.step();
    assert_eq!(
        p.tasks,
        vec![TaskChange::Assign {
            task_id: repl.clone(),
            node_id: "n1".into()
        }]
    );
    assert_eq!(p.next_wakeup_ms, None);
}

#[test]
fn rejected_task_goes_elsewhere_and_pends_when_all_reject() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.missing.insert(("n1".into(), "img:1".into()));
    sim.missing.insert(("n2".into(), "img:1".into()));
    sim.services.push(replicated("web", 1, "img:1"));
    let p = sim.step();
    assert_eq!(p.create[0].node_id, "n1");
    sim.agents();
    // Rejected on n1: replaced at once (no restart delay), not on n1.
    let p = sim.step();
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.create[0].node_id, "n2");
    sim.agents();
    let p = sim.step();
    assert_eq!(p.create[0].node_id, "n3");
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_keys().collect::<Vec<_>>(),
        vec!["n3"]
    );

    // Every node rejects: pending with the reason.
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    for n in ["n1", "n2"] {
        sim.missing.insert((n.into(), "img:1".into()));
    }
    sim.services.push(replicated("web", 1, "img:1"));
    sim.settle();
    let pending = sim.pending("web");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].status.message,
        "no suitable node (task of this slot rejected earlier on 2 nodes)"
    );
    assert_eq!(
        sim.of("web")
            .filter(|t| t.status.state == TaskState::Rejected)
            .count(),
        2
    );
    // A node that has the image joins: placed there.
    sim.nodes.push(node("n3"));
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_keys().collect::<Vec<_>>(),
        vec!["n3"]
    );
}

#[test]
fn history_is_trimmed_per_slot() {
    let mut sim = Sim::with_nodes(&["n1"]);
    sim.history = 3;
    let mut s = replicated("web", 2, "img:1");
    s.spec.task_template.restart_policy.delay_ms = 1_000;
    sim.services.push(s);
    sim.failing.insert("img:1".into());
    sim.run_for(30_000);
    let mut per_slot: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for t in sim.of("web") {
        let e = per_slot.entry(t.slot).or_default();
        if t.desired_state > TaskState::Running && t.status.state.is_terminal() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    assert_eq!(per_slot.len(), 2);
    for (slot, (finished, current)) in per_slot {
        assert_eq!(finished, 3, "slot {slot}");
        assert_eq!(current, 1, "slot {slot}");
    }
    // Many more were created than kept.
    assert!(sim.plans.iter().map(|p| p.remove.len()).sum::<usize>() > 10);
}

#[test]
fn removed_service_tasks_are_removed_once_stopped() {
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    let mut s = replicated("web", 3, "img:1");
    s.spec.task_template.placement.max_replicas = 1;
    sim.services.push(s);
    sim.settle();
    assert_eq!((sim.running("web").len(), sim.pending("web").len()), (2, 1));
    sim.services.clear();
    let p = sim.step();
    // The pending one is deleted at once, the running ones are told to go.
    assert_eq!(p.remove.len(), 1);
    assert_eq!(desired_changes(&p, TaskState::Remove), 2);
    sim.agents();
    let p = sim.step();
    assert_eq!(p.remove.len(), 2);
    assert_eq!(sim.tasks.len(), 0);
}

#[test]
fn standalone_containers_are_left_alone_until_their_node_is_gone() {
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    let mk = |id: &str, node: &str, state: TaskState| Task {
        id: id.into(),
        version: 1,
        created_at: 0,
        updated_at: 0,
        service_id: String::new(),
        service_name: id.into(),
        slot: 0,
        node_id: node.into(),
        spec: template("img:1"),
        spec_version: 0,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state,
            ..Default::default()
        },
        networks: Vec::new(),
        host_ports: Vec::new(),
    };
    sim.tasks.push(mk("c1", "n1", TaskState::Running));
    sim.tasks.push(mk("c2", "n2", TaskState::Failed));
    sim.tasks.push(mk("c3", "n2", TaskState::Running));
    sim.node_mut("n2").spec.availability = Availability::Drain;
    assert!(sim.step().is_empty());
    sim.node_mut("n1").status.state = NodeState::Down;
    assert!(sim.step().is_empty(), "down is not gone");
    sim.nodes.retain(|n| n.id != "n1");
    let p = sim.step();
    assert_eq!(
        p.tasks,
        vec![TaskChange::Observed {
            task_id: "c1".into(),
            state: TaskState::Orphaned,
            message: "node n1 is gone".into()
        }]
    );
}

#[test]
fn standalone_containers_hold_resources_and_ports() {
    let mut sim = Sim::with_nodes(&["n1"]);
    sim.node_mut("n1").description.nano_cpus = 2 * CPU;
    let mut spec = template("img:1");
    spec.resources.reservations = reservation(2 * CPU, 0);
    sim.tasks.push(Task {
        id: "c1".into(),
        version: 1,
        created_at: 0,
        updated_at: 0,
        service_id: String::new(),
        service_name: "c1".into(),
        slot: 0,
        node_id: "n1".into(),
        spec,
        spec_version: 0,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Running,
            ..Default::default()
        },
        networks: Vec::new(),
        host_ports: vec![80],
    });
    let mut a = replicated("a", 1, "img:1");
    a.spec.task_template.resources.reservations = reservation(CPU, 0);
    let mut b = replicated("b", 1, "img:1");
    b.spec.endpoint_spec.ports = vec![host_port(80)];
    sim.services.push(a);
    sim.services.push(b);
    sim.settle();
    assert_eq!(
        sim.pending("a")[0].status.message,
        "no suitable node (insufficient resources on 1 node)"
    );
    assert_eq!(
        sim.pending("b")[0].status.message,
        "no suitable node (host-mode port already in use on 1 node)"
    );
}

#[test]
fn node_loss_replaces_even_with_restart_condition_none() {
    // Node loss replaces even with restart condition none: the task never got to finish.
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    let mut s = replicated("job", 1, "img:1");
    s.spec.task_template.restart_policy.condition = RestartCondition::None;
    sim.services.push(s);
    sim.settle();
    let node = sim.running("job")[0].node_id.clone();
    sim.node_mut(&node).status.state = NodeState::Down;
    sim.settle();
    assert_eq!(sim.running("job").len(), 1);
    assert_ne!(sim.running("job")[0].node_id, node);
}
