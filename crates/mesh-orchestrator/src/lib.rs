//! Pure scheduler, orchestrator and rolling updater.
//!
//! [`plan`] turns the cluster's nodes, services and tasks into a [`Plan`]: the tasks to
//! create, the changes to existing tasks, the tasks to delete, the changes to services'
//! update status, and when to be called again. The manager's leader writes the plan to
//! Raft as one command and calls [`plan`] again; once a plan is applied (see [`apply()`]),
//! planning the resulting state returns an empty plan until time passes or the state
//! changes.
//!
//! Nothing here does I/O, reads a clock or draws random numbers: time is handed in as
//! `now_ms`, and IDs come from the generator the caller passes.
//!
//! [`Scheduler`] (and [`schedule`]) place a batch of unassigned tasks on nodes on their own;
//! [`plan`] uses it for every task it leaves unassigned.

pub mod apply;
mod orchestrate;
pub mod scheduler;

use mesh_api::{DEFAULT_TASK_HISTORY, Node, Service, Task, TaskState, UpdateStatus};
use serde::{Deserialize, Serialize};

pub use apply::{apply, roll_back};
pub use scheduler::{Decision, HostPort, Request, Scheduler, schedule};

/// How long a node may stay down before the tasks it still runs are marked orphaned
/// (swarmkit's 24 hours): by then it is not coming back to report on them.
pub const DEFAULT_ORPHAN_AFTER_MS: u64 = 24 * 60 * 60 * 1000;

/// The state [`plan`] works from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Every node of the cluster.
    pub nodes: &'a [Node],
    /// Every service.
    pub services: &'a [Service],
    /// Every task, of services and standalone containers alike.
    pub tasks: &'a [Task],
    /// The current time, Unix ms.
    pub now_ms: u64,
    /// Finished tasks kept per replica slot (per node for a global service); older ones are
    /// deleted. Docker's `--task-history-limit`, default 5.
    pub task_history: usize,
    /// A node down for this long has its remaining tasks marked orphaned.
    pub orphan_after_ms: u64,
}

impl<'a> Input<'a> {
    /// An input with the default task history (5) and orphan delay (24 h).
    pub fn new(nodes: &'a [Node], services: &'a [Service], tasks: &'a [Task], now_ms: u64) -> Self {
        Self {
            nodes,
            services,
            tasks,
            now_ms,
            task_history: DEFAULT_TASK_HISTORY,
            orphan_after_ms: DEFAULT_ORPHAN_AFTER_MS,
        }
    }
}

/// What to change in the cluster state, applied as one unit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// New tasks, fully formed: desired state `running`, observed `pending` (with the reason
    /// in the status message) or `assigned` (with `node_id` set).
    pub create: Vec<Task>,
    /// Changes to existing tasks, at most one of each kind per task.
    pub tasks: Vec<TaskChange>,
    /// IDs of tasks to delete from the store.
    pub remove: Vec<String>,
    /// Changes to services.
    pub services: Vec<ServiceChange>,
    /// The earliest time something timed is due (a restart delay, an update delay, the end
    /// of an update's monitor window, a down node's tasks becoming orphaned); plan again
    /// then even if nothing changed.
    pub next_wakeup_ms: Option<u64>,
}

impl Plan {
    /// Whether the plan changes nothing (`next_wakeup_ms` aside).
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.tasks.is_empty()
            && self.remove.is_empty()
            && self.services.is_empty()
    }
}

/// A change to an existing task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskChange {
    /// The scheduler gives an unassigned task (observed `new` or `pending`) to a node:
    /// set `node_id` and observed `assigned`.
    Assign {
        /// Task ID.
        task_id: String,
        /// Node ID.
        node_id: String,
    },
    /// The task stays (or becomes) `pending`; the reason goes to the status message, as
    /// `service ps` shows it.
    Pending {
        /// Task ID.
        task_id: String,
        /// Why it is not assigned.
        reason: String,
    },
    /// The desired state moves forward: `complete` (ended, not restarted by the restart
    /// policy), `shutdown` or `remove`.
    Desired {
        /// Task ID.
        task_id: String,
        /// New desired state.
        state: TaskState,
    },
    /// The manager moves the observed state forward itself: `orphaned` for a task whose node
    /// is gone, `shutdown` for a task stopped before it ever reached a node.
    Observed {
        /// Task ID.
        task_id: String,
        /// New observed state.
        state: TaskState,
        /// Status message.
        message: String,
    },
}

impl TaskChange {
    /// The task the change is about.
    pub fn task_id(&self) -> &str {
        match self {
            TaskChange::Assign { task_id, .. }
            | TaskChange::Pending { task_id, .. }
            | TaskChange::Desired { task_id, .. }
            | TaskChange::Observed { task_id, .. } => task_id,
        }
    }
}

/// A change to a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceChange {
    /// Set `update_status`.
    UpdateStatus {
        /// Service ID.
        service_id: String,
        /// New status.
        status: Option<UpdateStatus>,
    },
    /// Roll back after a failed update: `spec` ← `previous_spec` (and `previous_spec` ← the
    /// failed spec), `update_status` ← `rollback_started` with `started_at` = now and this
    /// message. [`apply()`] shows the exact rule.
    Rollback {
        /// Service ID.
        service_id: String,
        /// Why.
        message: String,
    },
}

impl ServiceChange {
    /// The service the change is about.
    pub fn service_id(&self) -> &str {
        match self {
            ServiceChange::UpdateStatus { service_id, .. }
            | ServiceChange::Rollback { service_id, .. } => service_id,
        }
    }
}

/// Plans the next step from `input`: see the crate documentation and the README for the
/// rules. `new_id` gives the ID of every task created.
pub fn plan(input: &Input<'_>, new_id: &mut dyn FnMut() -> String) -> Plan {
    orchestrate::plan(input, new_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_travel_as_json() {
        let p = Plan {
            tasks: vec![
                TaskChange::Assign {
                    task_id: "t".into(),
                    node_id: "n".into(),
                },
                TaskChange::Desired {
                    task_id: "t".into(),
                    state: TaskState::Complete,
                },
            ],
            remove: vec!["u".into()],
            services: vec![ServiceChange::Rollback {
                service_id: "s".into(),
                message: "m".into(),
            }],
            next_wakeup_ms: Some(7),
            ..Plan::default()
        };
        let json = serde_json::to_string(&p).unwrap_or_default();
        let back: Plan = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, p);
        assert!(!p.is_empty());
        assert!(Plan::default().is_empty());
    }
}
