//! Reconciling the managers operators ask for with the Raft membership (pure).
//!
//! `swarm node promote` only changes a node's desired role. The leader then walks each
//! promoted node through: manager certificate issued (the node renews it on its next
//! heartbeat) → Raft learner (catches up) → voter. Demotion is the reverse: the node
//! leaves the voters first, and renews its certificate as a worker afterwards. One
//! membership change happens at a time.

use std::collections::BTreeSet;

use mesh_api::{NodeRole, NodeState};

use crate::state::ClusterState;

/// The next membership change the leader should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleAction {
    /// Add the node as a learner so it can catch up.
    AddLearner {
        /// Raft member ID.
        raft_id: u64,
        /// Node ID.
        node_id: String,
        /// Control address.
        addr: String,
    },
    /// Replace the voter set.
    SetVoters(BTreeSet<u64>),
    /// Drop a learner that is no longer wanted.
    RemoveLearner(u64),
}

/// What the leader decides from the state and the current membership.
pub fn next_action(
    state: &ClusterState,
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
) -> Option<RoleAction> {
    let wanted: BTreeSet<u64> = state
        .nodes
        .values()
        .filter(|n| n.spec.role == NodeRole::Manager && n.raft_id != 0)
        .map(|n| n.raft_id)
        .collect();

    // 1. Promotions: ready nodes holding a manager certificate.
    for n in state.nodes.values() {
        let ready_manager = n.spec.role == NodeRole::Manager
            && n.role == NodeRole::Manager
            && n.raft_id != 0
            && n.status.state == NodeState::Ready;
        if !ready_manager || voters.contains(&n.raft_id) {
            continue;
        }
        if !learners.contains(&n.raft_id) {
            return Some(RoleAction::AddLearner {
                raft_id: n.raft_id,
                node_id: n.id.clone(),
                addr: n.control_addr.clone(),
            });
        }
        let mut next = voters.clone();
        next.insert(n.raft_id);
        return Some(RoleAction::SetVoters(next));
    }

    // 2. Demotions and removals: voters no longer wanted, one at a time, never the last.
    if let Some(&gone) = voters.iter().find(|id| !wanted.contains(id)) {
        let mut next = voters.clone();
        next.remove(&gone);
        if !next.is_empty() {
            return Some(RoleAction::SetVoters(next));
        }
    }

    // 3. Learners nobody wants any more.
    learners
        .iter()
        .find(|id| !wanted.contains(id))
        .map(|&id| RoleAction::RemoveLearner(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::node;
    use mesh_api::Node;

    fn st(nodes: Vec<Node>) -> ClusterState {
        let mut s = ClusterState::default();
        for n in nodes {
            s.nodes.insert(n.id.clone(), n);
        }
        s
    }

    fn mgr(id: &str, raft: u64) -> Node {
        let mut n = node(id, id, NodeRole::Manager);
        n.raft_id = raft;
        n
    }

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn steady_state_does_nothing() {
        let s = st(vec![mgr("a", 1), mgr("b", 2)]);
        assert_eq!(next_action(&s, &set(&[1, 2]), &set(&[])), None);
    }

    #[test]
    fn promotion_goes_learner_then_voter() {
        let s = st(vec![mgr("a", 1), mgr("b", 2)]);
        assert_eq!(
            next_action(&s, &set(&[1]), &set(&[])),
            Some(RoleAction::AddLearner {
                raft_id: 2,
                node_id: "b".into(),
                addr: "192.0.2.1:2377".into()
            })
        );
        assert_eq!(
            next_action(&s, &set(&[1]), &set(&[2])),
            Some(RoleAction::SetVoters(set(&[1, 2])))
        );
    }

    #[test]
    fn promotion_waits_for_certificate_and_readiness() {
        let mut b = mgr("b", 2);
        b.role = NodeRole::Worker; // still holds a worker certificate
        let s = st(vec![mgr("a", 1), b]);
        assert_eq!(next_action(&s, &set(&[1]), &set(&[])), None);
        let mut c = mgr("c", 3);
        c.status.state = NodeState::Down;
        let s = st(vec![mgr("a", 1), c]);
        assert_eq!(next_action(&s, &set(&[1]), &set(&[])), None);
    }

    #[test]
    fn demotion_removes_voter_but_never_the_last() {
        let mut b = mgr("b", 2);
        b.spec.role = NodeRole::Worker;
        let s = st(vec![mgr("a", 1), b]);
        assert_eq!(
            next_action(&s, &set(&[1, 2]), &set(&[])),
            Some(RoleAction::SetVoters(set(&[1])))
        );
        let mut a = mgr("a", 1);
        a.spec.role = NodeRole::Worker;
        let s = st(vec![a]);
        assert_eq!(next_action(&s, &set(&[1]), &set(&[])), None);
    }

    #[test]
    fn unknown_voters_and_learners_are_dropped() {
        let s = st(vec![mgr("a", 1)]);
        assert_eq!(
            next_action(&s, &set(&[1, 9]), &set(&[])),
            Some(RoleAction::SetVoters(set(&[1])))
        );
        assert_eq!(
            next_action(&s, &set(&[1]), &set(&[7])),
            Some(RoleAction::RemoveLearner(7))
        );
    }
}
