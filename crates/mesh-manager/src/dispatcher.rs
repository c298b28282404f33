//! Heartbeat bookkeeping on the leader (pure: time is passed in).
//!
//! Every node heartbeats to the leader every `heartbeat_period`. A node silent for
//! `node_down_after` is marked down; its next heartbeat marks it ready again. A new
//! leader knows nothing of past heartbeats, so it starts every node's clock at the
//! moment it took over: nobody is marked down merely because leadership moved.

use std::collections::HashMap;

use mesh_api::NodeState;

use crate::state::{ClusterState, StatusUpdate};

/// Message recorded on a node marked down.
pub const DOWN_MESSAGE: &str = "heartbeat failure";

/// Last heartbeat of each node, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct HeartbeatTracker {
    last_seen: HashMap<String, u64>,
}

impl HeartbeatTracker {
    /// A tracker that considers every node of `state` seen at `now` (a new leader's grace).
    pub fn starting_at(state: &ClusterState, now: u64) -> Self {
        Self {
            last_seen: state.nodes.keys().map(|id| (id.clone(), now)).collect(),
        }
    }

    /// Records a heartbeat from `id` at `now`.
    pub fn heartbeat(&mut self, id: &str, now: u64) {
        self.last_seen.insert(id.to_string(), now);
    }

    /// Forgets a node (removed from the cluster).
    pub fn forget(&mut self, id: &str) {
        self.last_seen.remove(id);
    }

    /// When `id` was last heard from.
    pub fn last_seen(&self, id: &str) -> Option<u64> {
        self.last_seen.get(id).copied()
    }

    /// Nodes that must be marked down at `now`: silent for longer than `down_after`
    /// and not already down. (A heartbeat marks a node ready at once; see
    /// [`needs_ready`].)
    pub fn expired(
        &mut self,
        state: &ClusterState,
        now: u64,
        down_after: u64,
    ) -> Vec<StatusUpdate> {
        let mut out = Vec::new();
        for (id, node) in &state.nodes {
            let seen = *self.last_seen.entry(id.clone()).or_insert(now);
            let silent = now.saturating_sub(seen) > down_after;
            if silent && matches!(node.status.state, NodeState::Ready | NodeState::Unknown) {
                out.push(StatusUpdate {
                    id: id.clone(),
                    state: NodeState::Down,
                    message: DOWN_MESSAGE.to_string(),
                });
            }
        }
        self.last_seen.retain(|id, _| state.nodes.contains_key(id));
        out
    }
}

/// The status change a heartbeat from `id` calls for, if the node is not ready yet.
pub fn needs_ready(state: &ClusterState, id: &str) -> Option<StatusUpdate> {
    let node = state.nodes.get(id)?;
    (node.status.state != NodeState::Ready).then(|| StatusUpdate {
        id: id.to_string(),
        state: NodeState::Ready,
        message: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use crate::state::tests::{cluster, node};
    use mesh_api::NodeRole;

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(
            1,
            Command::CreateCluster {
                cluster: Box::new(cluster()),
                node: Box::new(node("m", "host1", NodeRole::Manager)),
            },
        )
        .unwrap();
        s.apply(
            2,
            Command::CreateNode {
                node: Box::new(node("w", "host2", NodeRole::Worker)),
            },
        )
        .unwrap();
        s
    }

    #[test]
    fn silent_node_goes_down_after_the_timeout_only() {
        let s = state();
        let mut t = HeartbeatTracker::starting_at(&s, 1_000);
        t.heartbeat("m", 2_500);
        assert!(t.expired(&s, 3_000, 2_000).is_empty());
        let down = t.expired(&s, 3_001, 2_000);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].id, "w");
        assert_eq!(down[0].state, NodeState::Down);
    }

    #[test]
    fn new_leader_grants_grace() {
        let s = state();
        let mut t = HeartbeatTracker::starting_at(&s, 10_000);
        assert!(t.expired(&s, 11_000, 2_000).is_empty());
        assert_eq!(t.expired(&s, 12_001, 2_000).len(), 2);
    }

    #[test]
    fn down_node_is_not_reported_twice_and_heartbeat_readies_it() {
        let mut s = state();
        let mut t = HeartbeatTracker::starting_at(&s, 0);
        let down = t.expired(&s, 5_000, 2_000);
        s.apply(
            3,
            Command::SetNodeStatus {
                updates: down,
                now: 5_000,
            },
        )
        .unwrap();
        assert!(t.expired(&s, 6_000, 2_000).is_empty());
        t.heartbeat("w", 6_000);
        let up = needs_ready(&s, "w").unwrap();
        assert_eq!(up.state, NodeState::Ready);
        assert!(needs_ready(&s, "nope").is_none());
    }

    #[test]
    fn unknown_nodes_start_their_clock_when_first_seen() {
        let s = state();
        let mut t = HeartbeatTracker::default();
        assert!(t.expired(&s, 100, 2_000).is_empty());
        assert_eq!(t.last_seen("w"), Some(100));
        t.forget("w");
        assert_eq!(t.last_seen("w"), None);
    }
}
