//! Tasks: one container of a service (or a standalone container) on one node.
//!
//! A task's state only moves forward ([`TaskState`] is ordered); the manager decides the
//! desired state, the node reports the observed one.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::service::TaskSpec;

/// Where a task is in its life, in the order it gets there (swarmkit's states).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the orchestrator.
    #[default]
    New,
    /// Waiting for a node (the scheduler says why in the status message).
    Pending,
    /// Given to a node.
    Assigned,
    /// The node has seen it.
    Accepted,
    /// The node prepares it: image, network namespace, bundle.
    Preparing,
    /// Ready to start.
    Ready,
    /// Starting.
    Starting,
    /// Its container runs.
    Running,
    /// Its container exited with code 0.
    Complete,
    /// Stopped on purpose.
    Shutdown,
    /// Its container failed (non-zero exit, failed to start).
    Failed,
    /// The node refused it (e.g. the image is not there).
    Rejected,
    /// To be removed: the node tears it down and forgets it.
    Remove,
    /// Its node is gone; nothing will report on it any more.
    Orphaned,
}

impl TaskState {
    /// Lowercase name, as `service ps` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// Whether the task is finished: nothing will run for it again.
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }

    /// Whether the task holds (or will hold) resources on its node.
    pub fn is_active(self) -> bool {
        self <= TaskState::Running
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of the task's health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No health check configured.
    #[default]
    None,
    /// Configured, not passed yet.
    Starting,
    /// The last check passed (and at least one has).
    Healthy,
    /// `retries` checks failed in a row.
    Unhealthy,
}

impl Health {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// What the node reports about a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    /// Observed state.
    pub state: TaskState,
    /// When it got there, Unix ms.
    pub timestamp: u64,
    /// Short description of the state.
    #[serde(default)]
    pub message: String,
    /// The error that ended the task, if any (shown in `service ps` as ERROR).
    #[serde(default)]
    pub err: String,
    /// Container ID on the node.
    #[serde(default)]
    pub container_id: String,
    /// Process ID of the container's init, while it runs.
    #[serde(default)]
    pub pid: u32,
    /// Exit code, once it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Health check result.
    #[serde(default)]
    pub health: Health,
}

/// The task's address on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskAttachment {
    /// Network ID.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Endpoint ID (the network's record of this address).
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The address.
    #[serde(rename = "IP")]
    pub ip: Ipv4Addr,
    /// Interface name in the task (`eth0`, `eth1`, …).
    pub ifname: String,
    /// DNS aliases on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// One container of a service on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    /// Task ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Raft index of the last change.
    pub version: u64,
    /// Creation time, Unix ms.
    pub created_at: u64,
    /// Last change, Unix ms.
    pub updated_at: u64,
    /// Service ID; empty for a standalone container (`swarm run`).
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// Service name (or the container's name), for display and DNS.
    pub service_name: String,
    /// Replica slot (1-based) of a replicated service; 0 for global tasks and containers.
    pub slot: u64,
    /// Node that runs it; empty until scheduled.
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    /// What to run (a copy of the service's template at creation).
    pub spec: TaskSpec,
    /// The service's spec version this task was made from.
    pub spec_version: u64,
    /// State the manager wants: `running`, `shutdown` or `remove`.
    pub desired_state: TaskState,
    /// State the node reports.
    pub status: TaskStatus,
    /// Network addresses, given when the task is assigned to a node.
    #[serde(default)]
    pub networks: Vec<TaskAttachment>,
    /// Published ports in host mode: the node port each one took.
    #[serde(default)]
    pub host_ports: Vec<u16>,
}

impl Task {
    /// `NAME.SLOT` or `NAME.NODEID` as docker names tasks (without the task ID suffix).
    pub fn display_name(&self) -> String {
        if self.service_id.is_empty() {
            self.service_name.clone()
        } else if self.slot > 0 {
            format!("{}.{}", self.service_name, self.slot)
        } else {
            format!("{}.{}", self.service_name, self.node_id)
        }
    }

    /// The container's name on the node: `NAME.SLOT.TASKID`, like docker.
    pub fn container_name(&self) -> String {
        if self.service_id.is_empty() {
            self.service_name.clone()
        } else {
            format!("{}.{}", self.display_name(), self.id)
        }
    }

    /// Whether it is running and, if it has a health check, healthy: it may receive traffic.
    pub fn is_serving(&self) -> bool {
        self.desired_state == TaskState::Running
            && self.status.state == TaskState::Running
            && matches!(self.status.health, Health::None | Health::Healthy)
    }
}

/// A task status report from a node (one of a batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatusUpdate {
    /// Task ID.
    #[serde(rename = "TaskID")]
    pub task_id: String,
    /// The new status.
    pub status: TaskStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_ordered_forward() {
        assert!(TaskState::New < TaskState::Pending);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(TaskState::Running.is_active());
        assert!(!TaskState::Running.is_terminal());
        assert!(TaskState::Failed.is_terminal());
        assert!(TaskState::Orphaned > TaskState::Remove);
    }
}
