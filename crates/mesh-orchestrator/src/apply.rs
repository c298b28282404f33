//! How a [`Plan`] changes the state: the reference the store's apply step follows, and what
//! the tests use.
//!
//! Every change is applied only if it still moves the task forward, so a plan applied to a
//! state that moved on in the meantime (a node reported a newer status) changes nothing it
//! should not: observed and desired states never go backwards, and an assigned task is never
//! reassigned.

use std::collections::{HashMap, HashSet};

use mesh_api::{Service, Task, TaskState, UpdateState, UpdateStatus};

use crate::{Plan, ServiceChange, TaskChange};

/// Applies `plan` to `services` and `tasks` at `now_ms`. Changes naming unknown IDs are
/// skipped.
pub fn apply(plan: &Plan, services: &mut [Service], tasks: &mut Vec<Task>, now_ms: u64) {
    if !plan.remove.is_empty() {
        let gone: HashSet<&str> = plan.remove.iter().map(String::as_str).collect();
        tasks.retain(|t| !gone.contains(t.id.as_str()));
    }
    let index: HashMap<String, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.clone(), i))
        .collect();
    for change in &plan.tasks {
        let Some(&i) = index.get(change.task_id()) else {
            continue;
        };
        let t = &mut tasks[i];
        let changed = apply_task_change(t, change, now_ms);
        if changed {
            t.version += 1;
            t.updated_at = now_ms;
        }
    }
    tasks.extend(plan.create.iter().cloned());
    for change in &plan.services {
        let Some(s) = services.iter_mut().find(|s| s.id == change.service_id()) else {
            continue;
        };
        match change {
            ServiceChange::UpdateStatus { status, .. } => {
                s.update_status = status.clone();
            }
            ServiceChange::Rollback { message, .. } => {
                if !roll_back(s, message.clone(), now_ms) {
                    continue;
                }
            }
        }
        s.version += 1;
        s.updated_at = now_ms;
    }
}

/// Rolls `s` back to its previous spec: `spec` ← `previous_spec` (the current one becomes the
/// previous), a new spec version, and `update_status` ← `rollback_started` at `now_ms` with
/// `message`. False, and nothing changed, when there is no previous spec.
pub fn roll_back(s: &mut Service, message: String, now_ms: u64) -> bool {
    let Some(previous) = s.previous_spec.take() else {
        return false;
    };
    let current = std::mem::replace(&mut s.spec, previous);
    s.previous_spec = Some(current);
    s.previous_spec_version = s.spec_version;
    s.spec_version += 1;
    s.update_status = Some(UpdateStatus {
        state: UpdateState::RollbackStarted,
        started_at: now_ms,
        completed_at: 0,
        message,
    });
    true
}

/// Applies one change; whether it changed the task.
pub fn apply_task_change(t: &mut Task, change: &TaskChange, now_ms: u64) -> bool {
    match change {
        TaskChange::Assign { node_id, .. } => {
            if t.status.state > TaskState::Pending || t.desired_state != TaskState::Running {
                return false;
            }
            t.node_id = node_id.clone();
            t.status.state = TaskState::Assigned;
            t.status.timestamp = now_ms;
            t.status.message = "assigned".to_string();
            true
        }
        TaskChange::Pending { reason, .. } => {
            if t.status.state > TaskState::Pending
                || (t.status.state == TaskState::Pending && t.status.message == *reason)
            {
                return false;
            }
            t.status.state = TaskState::Pending;
            t.status.timestamp = now_ms;
            t.status.message = reason.clone();
            true
        }
        TaskChange::Desired { state, .. } => {
            if *state <= t.desired_state {
                return false;
            }
            t.desired_state = *state;
            true
        }
        TaskChange::Observed { state, message, .. } => {
            if *state <= t.status.state {
                return false;
            }
            t.status.state = *state;
            t.status.timestamp = now_ms;
            t.status.message = message.clone();
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::{ServiceSpec, TaskSpec, TaskStatus};

    use super::*;

    fn task(id: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            service_id: "s".into(),
            service_name: "s".into(),
            slot: 1,
            node_id: String::new(),
            spec: TaskSpec::default(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                ..Default::default()
            },
            networks: Vec::new(),
            host_ports: Vec::new(),
        }
    }

    fn change(t: &mut Task, c: TaskChange) -> bool {
        apply_task_change(t, &c, 10)
    }

    #[test]
    fn states_only_move_forward() {
        let mut t = task("a", TaskState::Running);
        let back = TaskChange::Observed {
            task_id: "a".into(),
            state: TaskState::Pending,
            message: String::new(),
        };
        assert!(!change(&mut t, back));
        assert_eq!(t.status.state, TaskState::Running);
        let desired = |state| TaskChange::Desired {
            task_id: "a".into(),
            state,
        };
        assert!(change(&mut t, desired(TaskState::Remove)));
        assert!(!change(&mut t, desired(TaskState::Shutdown)));
        assert_eq!(t.desired_state, TaskState::Remove);
        // An assigned task is never reassigned, nor sent back to pending.
        let mut t = task("b", TaskState::Pending);
        let assign = |n: &str| TaskChange::Assign {
            task_id: "b".into(),
            node_id: n.into(),
        };
        assert!(change(&mut t, assign("n1")));
        assert!(!change(&mut t, assign("n2")));
        assert_eq!(t.node_id, "n1");
        let pending = TaskChange::Pending {
            task_id: "b".into(),
            reason: "x".into(),
        };
        assert!(!change(&mut t, pending));
        assert_eq!(t.status.state, TaskState::Assigned);
    }

    #[test]
    fn rollback_swaps_specs() {
        let spec = |image: &str| ServiceSpec {
            name: "s".into(),
            task_template: TaskSpec {
                container: mesh_api::ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        };
        let mut services = vec![Service {
            id: "s".into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            spec: spec("v2"),
            spec_version: 2,
            previous_spec: Some(spec("v1")),
            previous_spec_version: 1,
            update_status: None,
            ports: Vec::new(),
            virtual_ips: Vec::new(),
        }];
        let plan = Plan {
            services: vec![ServiceChange::Rollback {
                service_id: "s".into(),
                message: "why".into(),
            }],
            ..Plan::default()
        };
        let mut tasks = vec![task("gone", TaskState::Failed)];
        let plan = Plan {
            remove: vec!["gone".into()],
            ..plan
        };
        apply(&plan, &mut services, &mut tasks, 42);
        let s = &services[0];
        assert_eq!(s.spec.task_template.container.image, "v1");
        assert_eq!(
            s.previous_spec
                .as_ref()
                .map(|p| p.task_template.container.image.as_str()),
            Some("v2")
        );
        assert_eq!((s.spec_version, s.previous_spec_version), (3, 2));
        let st = s.update_status.as_ref().map(|u| (u.state, u.started_at));
        assert_eq!(st, Some((UpdateState::RollbackStarted, 42)));
        assert!(tasks.is_empty());
    }
}
