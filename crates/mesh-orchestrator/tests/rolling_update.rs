//! Rolling updates: order, parallelism, delay, monitor, failure actions and rollback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use mesh_api::{FailureAction, ServiceMode, TaskState, UpdateOrder, UpdateState};
use mesh_orchestrator::{ServiceChange, TaskChange};

fn setup(replicas: u64, cfg: mesh_api::UpdateConfig) -> Sim {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    let mut s = replicated("web", replicas, "img:1");
    s.spec.update_config = cfg;
    s.spec.rollback_config = cfg;
    sim.services.push(s);
    sim.settle();
    assert_eq!(sim.running("web").len() as u64, replicas);
    sim
}

fn set_image(sim: &mut Sim, image: &str) {
    sim.update_spec("web", |s| {
        s.task_template.container.image = image.to_string()
    });
}

fn shutdowns(p: &mesh_orchestrator::Plan) -> Vec<String> {
    p.tasks
        .iter()
        .filter_map(|c| match c {
            TaskChange::Desired {
                task_id,
                state: TaskState::Shutdown,
            } => Some(task_id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn stop_first_one_at_a_time() {
    let mut sim = setup(3, update_config(1, 0, UpdateOrder::StopFirst));
    set_image(&mut sim, "img:2");
    let mut updated_slots = Vec::new();
    for round in 0..3 {
        let p = sim.step();
        if round == 0 {
            assert_eq!(
                p.services,
                vec![ServiceChange::UpdateStatus {
                    service_id: "web".into(),
                    status: Some(mesh_api::UpdateStatus {
                        state: UpdateState::Updating,
                        started_at: sim.now,
                        completed_at: 0,
                        message: "update in progress".into(),
                    }),
                }]
            );
        }
        // The old task is told to stop; its replacement waits for that.
        let stopped = shutdowns(&p);
        assert_eq!(stopped.len(), 1, "round {round}");
        assert_eq!(p.create.len(), 1);
        let new = &p.create[0];
        assert_eq!(new.status.state, TaskState::Pending);
        assert_eq!(
            new.status.message,
            format!("waiting for task {} to stop", stopped[0])
        );
        assert_eq!(new.spec.container.image, "img:2");
        updated_slots.push(new.slot);
        let new_id = new.id.clone();
        sim.assert_one_per_slot("web");
        // The node stops the old task; only then is the new one assigned.
        assert!(sim.agents());
        let p = sim.step();
        assert!(
            matches!(&p.tasks[..], [TaskChange::Assign { task_id, .. }] if *task_id == new_id),
            "{p:#?}"
        );
        sim.assert_one_per_slot("web");
        assert!(sim.agents());
        sim.assert_one_per_slot("web");
        sim.advance(1_000);
    }
    updated_slots.sort();
    assert_eq!(updated_slots, vec![1, 2, 3]);
    // All new, still monitoring for 5 s after the last one started.
    let p = sim.step();
    assert!(p.is_empty());
    let last_start = sim
        .running("web")
        .iter()
        .map(|t| t.status.timestamp)
        .max()
        .unwrap();
    assert_eq!(p.next_wakeup_ms, Some(last_start + 5_000));
    assert_eq!(sim.status("web"), Some(UpdateState::Updating));
    sim.now = last_start + 5_000;
    sim.step();
    let st = sim.svc("web").update_status.clone().unwrap();
    assert_eq!(
        (st.state, st.completed_at),
        (UpdateState::Completed, sim.now)
    );
    assert_eq!(
        sim.images("web").into_iter().collect::<Vec<_>>(),
        vec![("img:2".to_string(), 3)]
    );
}

#[test]
fn start_first_overlaps_in_the_slot() {
    let mut sim = setup(2, update_config(1, 0, UpdateOrder::StartFirst));
    set_image(&mut sim, "img:2");
    let p = sim.step();
    assert!(shutdowns(&p).is_empty(), "the old task keeps running");
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.create[0].status.state, TaskState::Assigned);
    let slot = p.create[0].slot;
    assert_eq!(
        sim.active("web").iter().filter(|t| t.slot == slot).count(),
        2
    );
    sim.agents(); // the new task runs
    let p = sim.step();
    // Now the old task of the slot stops, and the next slot starts its new task.
    let stopped = shutdowns(&p);
    assert_eq!(stopped.len(), 1);
    assert_eq!(sim.task(&stopped[0]).slot, slot);
    assert_eq!(sim.task(&stopped[0]).spec.container.image, "img:1");
    assert_eq!(p.create.len(), 1);
    assert_ne!(p.create[0].slot, slot);
    sim.run_for(10_000);
    assert_eq!(sim.status("web"), Some(UpdateState::Completed));
    assert_eq!(
        sim.images("web").into_iter().collect::<Vec<_>>(),
        vec![("img:2".to_string(), 2)]
    );
    sim.assert_one_per_slot("web");
}

#[test]
fn parallelism_two_with_delay() {
    let mut sim = setup(5, update_config(2, 10_000, UpdateOrder::StopFirst));
    set_image(&mut sim, "img:2");
    let mut batches: Vec<(u64, BTreeSet<u64>)> = Vec::new();
    let end = sim.now + 120_000;
    loop {
        let p = sim.step();
        let slots: BTreeSet<u64> = p.create.iter().map(|t| t.slot).collect();
        if !slots.is_empty() {
            batches.push((sim.now, slots));
        }
        // Never more than 2 slots between old stopped and new running.
        let in_flight = sim
            .of("web")
            .filter(|t| t.spec.container.image == "img:2" && t.status.state < TaskState::Running)
            .count();
        assert!(in_flight <= 2, "{in_flight} in flight");
        if !sim.agents() && p.is_empty() {
            match sim.wakeup {
                Some(at) if at <= end => sim.now = at,
                _ => break,
            }
        }
    }
    assert_eq!(batches.len(), 3, "{batches:?}");
    assert_eq!(
        batches.iter().map(|b| b.1.len()).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    // Each batch starts 10 s after the previous one's tasks run (they run at once here).
    assert_eq!(batches[1].0 - batches[0].0, 10_000);
    assert_eq!(batches[2].0 - batches[1].0, 10_000);
    assert_eq!(sim.status("web"), Some(UpdateState::Completed));
}

#[test]
fn parallelism_zero_updates_all_at_once() {
    let mut sim = setup(4, update_config(0, 0, UpdateOrder::StopFirst));
    set_image(&mut sim, "img:2");
    let p = sim.step();
    assert_eq!(p.create.len(), 4);
    assert_eq!(shutdowns(&p).len(), 4);
    sim.run_for(10_000);
    assert_eq!(sim.status("web"), Some(UpdateState::Completed));
}

#[test]
fn health_check_gates_the_next_batch() {
    let mut sim = setup(2, update_config(1, 0, UpdateOrder::StopFirst));
    sim.update_spec("web", |s| {
        s.task_template.container.healthcheck = Some(health())
    });
    sim.step();
    sim.agents(); // old stops
    sim.step();
    sim.agents(); // new runs, health starting
    let p = sim.step();
    assert!(p.create.is_empty(), "waits for healthy");
    sim.agents(); // healthy
    let p = sim.step();
    assert_eq!(p.create.len(), 1);
}

#[test]
fn failure_pauses_the_update() {
    let mut sim = setup(3, update_config(1, 0, UpdateOrder::StopFirst));
    sim.failing.insert("img:2".into());
    set_image(&mut sim, "img:2");
    sim.run_for(30_000);
    let st = sim.svc("web").update_status.clone().unwrap();
    assert_eq!(st.state, UpdateState::Paused);
    assert!(
        st.message.starts_with("update paused: task task"),
        "{}",
        st.message
    );
    // The first new task ran before it failed, so the second slot was updated meanwhile.
    assert!(
        st.message
            .contains("failed or ended early (1 of 2 updated tasks failed)"),
        "{}",
        st.message
    );
    assert_eq!(sim.images("web").get("img:1"), Some(&1));
    // Paused stays paused.
    sim.run_for(30_000);
    assert_eq!(sim.status("web"), Some(UpdateState::Paused));
    assert_eq!(sim.images("web").get("img:1"), Some(&1));
}

#[test]
fn unhealthy_new_task_counts_as_failure() {
    let mut sim = setup(2, update_config(1, 0, UpdateOrder::StopFirst));
    sim.unhealthy.insert("img:2".into());
    sim.update_spec("web", |s| {
        s.task_template.container.image = "img:2".into();
        s.task_template.container.healthcheck = Some(health());
    });
    sim.run_for(10_000);
    assert_eq!(sim.status("web"), Some(UpdateState::Paused));
}

#[test]
fn failure_continue_goes_on() {
    let mut cfg = update_config(1, 0, UpdateOrder::StopFirst);
    cfg.failure_action = FailureAction::Continue;
    let mut sim = setup(3, cfg);
    // n1 lacks the new image: tasks placed there are rejected and placed elsewhere.
    sim.missing.insert(("n1".into(), "img:2".into()));
    set_image(&mut sim, "img:2");
    sim.run_for(60_000);
    assert_eq!(sim.status("web"), Some(UpdateState::Completed));
    assert_eq!(
        sim.images("web").into_iter().collect::<Vec<_>>(),
        vec![("img:2".to_string(), 3)]
    );
    assert!(sim.of("web").any(|t| t.status.state == TaskState::Rejected));
    assert!(sim.running("web").iter().all(|t| t.node_id != "n1"));
}

#[test]
fn failure_ratio_counts_tasks_updated_so_far() {
    // Slots 1, 2, 3 run on n1, n2, n3 and are updated in that order; n3 lacks the image.
    // Its rejection comes with 3 slots updated: 1/3 is under 0.5 but not under 0.2.
    for (permille, expect) in [(500, UpdateState::Completed), (200, UpdateState::Paused)] {
        let mut cfg = update_config(1, 0, UpdateOrder::StopFirst);
        cfg.max_failure_permille = permille;
        let mut sim = setup(3, cfg);
        let on: Vec<(u64, String)> = sim
            .running("web")
            .iter()
            .map(|t| (t.slot, t.node_id.clone()))
            .collect();
        assert!(on.contains(&(3, "n3".to_string())), "{on:?}");
        sim.missing.insert(("n3".into(), "img:2".into()));
        set_image(&mut sim, "img:2");
        sim.run_for(60_000);
        assert_eq!(sim.status("web"), Some(expect), "{permille}");
    }
    // The same rejection as the first updated task: 1/1 trips any ratio below 1.
    let mut cfg = update_config(1, 0, UpdateOrder::StopFirst);
    cfg.max_failure_permille = 500;
    let mut sim = setup(3, cfg);
    sim.missing.insert(("n1".into(), "img:2".into()));
    set_image(&mut sim, "img:2");
    sim.run_for(60_000);
    assert_eq!(sim.status("web"), Some(UpdateState::Paused));
}

#[test]
fn failure_rolls_back_only_updated_tasks() {
    let mut cfg = update_config(1, 0, UpdateOrder::StopFirst);
    cfg.failure_action = FailureAction::Rollback;
    let mut sim = setup(4, cfg);
    let original: BTreeSet<String> = sim.running("web").iter().map(|t| t.id.clone()).collect();
    sim.failing.insert("img:2".into());
    set_image(&mut sim, "img:2");
    let mut rollback = None;
    for _ in 0..50 {
        let p = sim.step();
        if let Some(ServiceChange::Rollback { message, .. }) = p.services.first() {
            rollback = Some((message.clone(), p.clone()));
            break;
        }
        if !sim.agents() && p.is_empty() {
            sim.now = sim.wakeup.unwrap();
        }
    }
    let (message, _) = rollback.expect("a rollback");
    assert!(message.starts_with("update rolled back: task"), "{message}");
    let svc = sim.svc("web");
    assert_eq!(svc.spec.task_template.container.image, "img:1");
    assert_eq!(
        svc.update_status.as_ref().map(|s| s.state),
        Some(UpdateState::RollbackStarted)
    );
    sim.run_for(60_000);
    assert_eq!(sim.status("web"), Some(UpdateState::RollbackCompleted));
    assert_eq!(
        sim.images("web").into_iter().collect::<Vec<_>>(),
        vec![("img:1".to_string(), 4)]
    );
    // Two slots were updated (the first new task ran before it failed, so the second slot
    // went too); the other two original tasks were never touched by update or rollback.
    let now: BTreeSet<String> = sim.running("web").iter().map(|t| t.id.clone()).collect();
    assert_eq!(now.intersection(&original).count(), 2);
    let rollback_plan = &sim
        .plans
        .iter()
        .position(|p| {
            !p.services.is_empty() && matches!(p.services[0], ServiceChange::Rollback { .. })
        })
        .unwrap();
    let replaced_in_rollback: usize = sim.plans[*rollback_plan..]
        .iter()
        .map(|p| {
            p.create
                .iter()
                .filter(|t| t.spec.container.image == "img:1")
                .count()
        })
        .sum();
    assert_eq!(replaced_in_rollback, 2);
}

#[test]
fn rollback_without_previous_spec_pauses() {
    let mut cfg = update_config(1, 0, UpdateOrder::StopFirst);
    cfg.failure_action = FailureAction::Rollback;
    let mut sim = setup(2, cfg);
    sim.failing.insert("img:2".into());
    set_image(&mut sim, "img:2");
    sim.svc_mut("web").previous_spec = None;
    sim.run_for(30_000);
    let st = sim.svc("web").update_status.clone().unwrap();
    assert_eq!(st.state, UpdateState::Paused);
    assert!(
        st.message.ends_with("no previous spec to roll back to"),
        "{}",
        st.message
    );
}

#[test]
fn failed_rollback_pauses_the_rollback() {
    let mut cfg = update_config(1, 0, UpdateOrder::StopFirst);
    cfg.failure_action = FailureAction::Rollback;
    let mut sim = setup(2, cfg);
    sim.failing.insert("img:2".into());
    set_image(&mut sim, "img:2");
    // The old image breaks too (e.g. removed from the nodes): the rollback fails.
    sim.failing.insert("img:1".into());
    sim.run_for(60_000);
    assert_eq!(sim.status("web"), Some(UpdateState::RollbackPaused));
}

#[test]
fn scaling_is_not_an_update() {
    let mut sim = setup(2, update_config(1, 0, UpdateOrder::StopFirst));
    sim.scale("web", 4);
    sim.settle();
    sim.scale("web", 1);
    sim.settle();
    assert_eq!(sim.status("web"), None);
    assert!(sim.plans.iter().all(|p| p.services.is_empty()));
}

#[test]
fn scale_up_during_update_uses_the_new_spec() {
    let mut sim = setup(2, update_config(1, 0, UpdateOrder::StopFirst));
    set_image(&mut sim, "img:2");
    sim.scale("web", 4);
    sim.run_for(30_000);
    assert_eq!(
        sim.images("web").into_iter().collect::<Vec<_>>(),
        vec![("img:2".to_string(), 4)]
    );
    assert_eq!(sim.status("web"), Some(UpdateState::Completed));
}

#[test]
fn global_rolling_update() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    let mut s = service("mon", ServiceMode::Global, template("img:1"));
    s.spec.update_config = update_config(1, 0, UpdateOrder::StopFirst);
    sim.services.push(s);
    sim.settle();
    sim.update_spec("mon", |s| s.task_template.container.image = "img:2".into());
    let p = sim.step();
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.create[0].node_id, "n1");
    sim.run_for(30_000);
    assert_eq!(sim.status("mon"), Some(UpdateState::Completed));
    assert_eq!(
        sim.images("mon").into_iter().collect::<Vec<_>>(),
        vec![("img:2".to_string(), 3)]
    );
    assert_eq!(sim.per_node("mon").len(), 3);
}

#[test]
fn pending_dirty_tasks_are_replaced_first() {
    // A constraint nobody meets leaves a task pending; the update that fixes it replaces the
    // pending one before touching running ones.
    let mut sim = Sim::with_nodes(&["n1"]);
    let mut s = replicated("web", 2, "img:1");
    s.spec.task_template.placement.max_replicas = 1;
    s.spec.update_config = update_config(1, 0, UpdateOrder::StopFirst);
    sim.services.push(s);
    sim.settle();
    let pending = sim.pending("web")[0].id.clone();
    sim.update_spec("web", |s| s.task_template.placement.max_replicas = 2);
    let p = sim.step();
    assert_eq!(shutdowns(&p), vec![pending.clone()]);
    assert!(p.tasks.contains(&TaskChange::Observed {
        task_id: pending,
        state: TaskState::Shutdown,
        message: "stopped before it was assigned".into()
    }));
    assert_eq!(p.create[0].status.state, TaskState::Assigned);
    sim.run_for(30_000);
    assert_eq!(sim.running("web").len(), 2);
    assert_eq!(sim.status("web"), Some(UpdateState::Completed));
}
