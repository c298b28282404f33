//! The replicated cluster state and the commands that change it.
//!
//! [`ClusterState::apply`] is deterministic and pure: every manager applies the same
//! commands in the same order and reaches the same state. Invariants that must hold
//! cluster-wide (one cluster object, at least one manager, removed nodes stay out) are
//! checked here, at apply time, so that two racing requests cannot both pass.

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::node::NodeUpdate;
use mesh_api::{Cluster, Node, NodeDescription, NodeRole, NodeSpec, NodeState};
use serde::{Deserialize, Serialize};

/// Most managers a cluster may have (Raft gets slower, not safer, beyond this).
pub const MAX_MANAGERS: usize = 7;

/// Everything the managers replicate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster object, once `swarm init` ran.
    pub cluster: Option<Cluster>,
    /// Nodes by ID.
    pub nodes: BTreeMap<String, Node>,
    /// IDs of nodes removed with `node rm`: their certificates are no longer accepted.
    pub removed_nodes: BTreeSet<String>,
}

/// A change to a node's observed status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// Node ID.
    pub id: String,
    /// New state.
    pub state: NodeState,
    /// Why.
    pub message: String,
}

/// What a node reports about itself in its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node ID (from its certificate).
    pub id: String,
    /// Host facts.
    pub description: NodeDescription,
    /// Advertised IP.
    pub addr: String,
    /// Control address `IP:PORT`.
    pub control_addr: String,
    /// Overlay data port.
    pub data_port: u16,
    /// Raft member ID the node will use as a manager.
    pub raft_id: u64,
    /// Role of its current certificate.
    pub cert_role: NodeRole,
    /// Expiry of its current certificate.
    pub cert_expiry: u64,
}

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `swarm init`: the cluster object and the first node.
    CreateCluster {
        /// The cluster.
        cluster: Box<Cluster>,
        /// The first manager.
        node: Box<Node>,
    },
    /// Replace one join token (`swarm join-token --rotate`).
    RotateToken {
        /// Which token.
        role: NodeRole,
        /// The new token.
        token: String,
        /// Time of the change.
        now: u64,
    },
    /// A node joined.
    CreateNode {
        /// The node.
        node: Box<Node>,
    },
    /// `swarm node update|promote|demote`.
    UpdateNodeSpec {
        /// Node ID.
        id: String,
        /// The new spec.
        spec: NodeSpec,
        /// Refuse if the node changed since this version was read.
        expect_version: Option<u64>,
        /// Time of the change.
        now: u64,
    },
    /// `swarm node update|promote|demote` as a delta: applied to the spec current at
    /// apply time, so concurrent updates of different fields never conflict.
    UpdateNode {
        /// Node ID.
        id: String,
        /// The change.
        update: NodeUpdate,
        /// Time of the change.
        now: u64,
    },
    /// Heartbeat-driven state changes (ready/down).
    SetNodeStatus {
        /// The changes.
        updates: Vec<StatusUpdate>,
        /// Time of the change.
        now: u64,
    },
    /// Facts a node reported about itself.
    ReportNode {
        /// The report.
        report: Box<NodeReport>,
        /// Time of the change.
        now: u64,
    },
    /// `swarm node rm`.
    RemoveNode {
        /// Node ID.
        id: String,
        /// Remove even when not down.
        force: bool,
    },
    /// `swarm init --force-new-cluster`: every other manager becomes a worker, so the
    /// recovered cluster has exactly one manager until others are promoted again.
    ForceNewCluster {
        /// The surviving manager.
        keep: String,
        /// Time of the change.
        now: u64,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectKind {
    /// The object does not exist.
    NotFound,
    /// The object changed or already exists.
    Conflict,
    /// Refused in the current state.
    FailedPrecondition,
}

/// A refused command: nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Class.
    pub kind: RejectKind,
    /// Message naming what is wrong and what to do.
    pub message: String,
}

/// Result of applying a command.
pub type Output = Result<Applied, Rejected>;

/// What an applied command changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Raft log index of the command.
    pub index: u64,
    /// IDs of nodes created, changed or removed.
    pub nodes: Vec<String>,
    /// Whether the cluster object changed.
    pub cluster: bool,
}

fn reject(kind: RejectKind, message: impl Into<String>) -> Output {
    Err(Rejected {
        kind,
        message: message.into(),
    })
}

impl ClusterState {
    /// Number of nodes whose desired role is manager.
    pub fn desired_managers(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| n.spec.role == NodeRole::Manager)
            .count()
    }

    /// Nodes sorted by hostname, then ID.
    pub fn nodes_sorted(&self) -> Vec<&Node> {
        let mut v: Vec<&Node> = self.nodes.values().collect();
        v.sort_by(|a, b| {
            (a.description.hostname.as_str(), a.id.as_str())
                .cmp(&(b.description.hostname.as_str(), b.id.as_str()))
        });
        v
    }

    /// Applies `cmd` at Raft log `index`. Deterministic; on rejection nothing changes.
    pub fn apply(&mut self, index: u64, cmd: Command) -> Output {
        match cmd {
            Command::CreateCluster { cluster, node } => {
                if let Some(c) = &self.cluster {
                    return reject(
                        RejectKind::Conflict,
                        format!(
                            "this node is already part of cluster {}; run `swarm leave` first",
                            c.id
                        ),
                    );
                }
                let mut cluster = *cluster;
                cluster.version = index;
                let mut node = *node;
                node.version = index;
                let id = node.id.clone();
                self.cluster = Some(cluster);
                self.nodes.insert(id.clone(), node);
                Ok(Applied {
                    index,
                    nodes: vec![id],
                    cluster: true,
                })
            }
            Command::RotateToken { role, token, now } => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return reject(RejectKind::FailedPrecondition, "no cluster to rotate in");
                };
                match role {
                    NodeRole::Worker => cluster.join_tokens.worker = token,
                    NodeRole::Manager => cluster.join_tokens.manager = token,
                }
                cluster.version = index;
                cluster.updated_at = now;
                Ok(Applied {
                    index,
                    nodes: vec![],
                    cluster: true,
                })
            }
            Command::CreateNode { node } => {
                if self.removed_nodes.contains(&node.id) {
                    return reject(
                        RejectKind::Conflict,
                        format!("node {} was removed from the cluster", node.id),
                    );
                }
                if self.nodes.contains_key(&node.id) {
                    return reject(
                        RejectKind::Conflict,
                        format!("node {} already exists", node.id),
                    );
                }
                if node.spec.role == NodeRole::Manager && self.desired_managers() >= MAX_MANAGERS {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "the cluster already has {MAX_MANAGERS} managers, the most it supports; join with the worker token instead"
                        ),
                    );
                }
                let mut node = *node;
                node.version = index;
                let id = node.id.clone();
                self.nodes.insert(id.clone(), node);
                Ok(Applied {
                    index,
                    nodes: vec![id],
                    cluster: false,
                })
            }
            Command::UpdateNode { id, update, now } => {
                let Some(node) = self.nodes.get(&id) else {
                    return reject(RejectKind::NotFound, format!("no such node: {id}"));
                };
                let spec = match update.apply(&node.spec) {
                    Ok(s) => s,
                    Err(e) => return reject(RejectKind::FailedPrecondition, e.to_string()),
                };
                self.apply(
                    index,
                    Command::UpdateNodeSpec {
                        id,
                        spec,
                        expect_version: None,
                        now,
                    },
                )
            }
            Command::UpdateNodeSpec {
                id,
                spec,
                expect_version,
                now,
            } => {
                let managers = self.desired_managers();
                let Some(node) = self.nodes.get_mut(&id) else {
                    return reject(RejectKind::NotFound, format!("no such node: {id}"));
                };
                if let Some(v) = expect_version
                    && v != node.version
                {
                    return reject(
                        RejectKind::Conflict,
                        format!(
                            "node {id} changed while this update was prepared (version {} now, {v} expected); retry the command",
                            node.version
                        ),
                    );
                }
                if node.spec.role == NodeRole::Worker
                    && spec.role == NodeRole::Manager
                    && managers >= MAX_MANAGERS
                {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "cannot promote {}: the cluster already has {MAX_MANAGERS} managers, the most it supports; demote one first",
                            node.description.hostname
                        ),
                    );
                }
                if node.spec.role == NodeRole::Manager
                    && spec.role == NodeRole::Worker
                    && managers <= 1
                {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "cannot demote {}: it is the last manager of the cluster; promote another node first (`swarm node promote NODE`)",
                            node.description.hostname
                        ),
                    );
                }
                node.spec = spec;
                node.version = index;
                node.updated_at = now;
                Ok(Applied {
                    index,
                    nodes: vec![id],
                    cluster: false,
                })
            }
            Command::SetNodeStatus { updates, now } => {
                let mut changed = Vec::new();
                for u in updates {
                    if let Some(node) = self.nodes.get_mut(&u.id)
                        && (node.status.state != u.state || node.status.message != u.message)
                    {
                        node.status.state = u.state;
                        node.status.message = u.message;
                        node.version = index;
                        node.updated_at = now;
                        changed.push(u.id);
                    }
                }
                Ok(Applied {
                    index,
                    nodes: changed,
                    cluster: false,
                })
            }
            Command::ReportNode { report, now } => {
                let Some(node) = self.nodes.get_mut(&report.id) else {
                    return reject(RejectKind::NotFound, format!("no such node: {}", report.id));
                };
                node.description = report.description;
                node.status.addr = report.addr;
                node.control_addr = report.control_addr;
                node.data_port = report.data_port;
                node.raft_id = report.raft_id;
                node.role = report.cert_role;
                node.cert_expiry = report.cert_expiry;
                node.version = index;
                node.updated_at = now;
                Ok(Applied {
                    index,
                    nodes: vec![report.id],
                    cluster: false,
                })
            }
            Command::RemoveNode { id, force } => {
                let Some(node) = self.nodes.get(&id) else {
                    return reject(RejectKind::NotFound, format!("no such node: {id}"));
                };
                let host = &node.description.hostname;
                if node.spec.role == NodeRole::Manager || node.role == NodeRole::Manager {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "node {host} is a manager; demote it first (`swarm node demote {host}`), then remove it"
                        ),
                    );
                }
                if !force
                    && !matches!(
                        node.status.state,
                        NodeState::Down | NodeState::Disconnected | NodeState::Unknown
                    )
                {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "node {host} is not down and can't be removed; run `swarm leave` on it first, or use `swarm node rm --force {host}`"
                        ),
                    );
                }
                self.nodes.remove(&id);
                self.removed_nodes.insert(id.clone());
                Ok(Applied {
                    index,
                    nodes: vec![id],
                    cluster: false,
                })
            }
            Command::ForceNewCluster { keep, now } => {
                if !self.nodes.contains_key(&keep) {
                    return reject(RejectKind::NotFound, format!("no such node: {keep}"));
                }
                let mut changed = Vec::new();
                for (id, node) in self.nodes.iter_mut() {
                    if *id == keep {
                        node.spec.role = NodeRole::Manager;
                    } else if node.spec.role == NodeRole::Manager {
                        node.spec.role = NodeRole::Worker;
                    } else {
                        continue;
                    }
                    node.version = index;
                    node.updated_at = now;
                    changed.push(id.clone());
                }
                Ok(Applied {
                    index,
                    nodes: changed,
                    cluster: false,
                })
            }
        }
    }
}

impl mesh_store::StateMachine for ClusterState {
    type Command = Command;
    type Output = Output;

    fn apply(&mut self, index: u64, cmd: Command) -> Output {
        ClusterState::apply(self, index, cmd).map(|mut a| {
            a.index = index;
            a
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_api::{Availability, ClusterSpec, JoinTokens, NodeDescription, NodeStatus, RootCa};

    pub(crate) fn node(id: &str, host: &str, role: NodeRole) -> Node {
        Node {
            id: id.into(),
            version: 0,
            created_at: 1,
            updated_at: 1,
            spec: NodeSpec {
                labels: Default::default(),
                role,
                availability: Availability::Active,
            },
            description: NodeDescription {
                hostname: host.into(),
                ..Default::default()
            },
            status: NodeStatus {
                state: NodeState::Ready,
                message: String::new(),
                addr: "192.0.2.1".into(),
            },
            role,
            raft_id: 0,
            control_addr: "192.0.2.1:2377".into(),
            data_port: 51820,
            manager_status: None,
            cert_expiry: 0,
        }
    }

    pub(crate) fn cluster() -> Cluster {
        Cluster {
            id: "c1".into(),
            version: 0,
            created_at: 1,
            updated_at: 1,
            spec: ClusterSpec::default(),
            root_ca: RootCa {
                cert_pem: "cert".into(),
                key_pem: "key".into(),
                digest: "d".into(),
            },
            join_tokens: JoinTokens {
                worker: "w".into(),
                manager: "m".into(),
            },
        }
    }

    fn init() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(
            1,
            Command::CreateCluster {
                cluster: Box::new(cluster()),
                node: Box::new(node("n1", "host1", NodeRole::Manager)),
            },
        )
        .unwrap();
        s
    }

    #[test]
    fn init_twice_is_refused() {
        let mut s = init();
        let before = s.clone();
        let e = s
            .apply(
                2,
                Command::CreateCluster {
                    cluster: Box::new(cluster()),
                    node: Box::new(node("n2", "host2", NodeRole::Manager)),
                },
            )
            .unwrap_err();
        assert_eq!(e.kind, RejectKind::Conflict);
        assert_eq!(s, before);
    }

    #[test]
    fn last_manager_cannot_be_demoted() {
        let mut s = init();
        let mut spec = s.nodes["n1"].spec.clone();
        spec.role = NodeRole::Worker;
        let before = s.clone();
        let e = s
            .apply(
                2,
                Command::UpdateNodeSpec {
                    id: "n1".into(),
                    spec: spec.clone(),
                    expect_version: None,
                    now: 5,
                },
            )
            .unwrap_err();
        assert_eq!(e.kind, RejectKind::FailedPrecondition);
        assert!(e.message.contains("last manager"), "{}", e.message);
        assert_eq!(s, before);

        // With a second manager, demotion works.
        s.apply(
            3,
            Command::CreateNode {
                node: Box::new(node("n2", "host2", NodeRole::Manager)),
            },
        )
        .unwrap();
        s.apply(
            4,
            Command::UpdateNodeSpec {
                id: "n1".into(),
                spec,
                expect_version: None,
                now: 6,
            },
        )
        .unwrap();
        assert_eq!(s.nodes["n1"].spec.role, NodeRole::Worker);
        assert_eq!(s.nodes["n1"].version, 4);
    }

    #[test]
    fn delta_updates_compose_and_refuse_atomically() {
        let mut s = init();
        for (i, l) in ["a=1", "b=2"].iter().enumerate() {
            s.apply(
                2 + i as u64,
                Command::UpdateNode {
                    id: "n1".into(),
                    update: NodeUpdate {
                        label_add: vec![l.to_string()],
                        ..Default::default()
                    },
                    now: 3,
                },
            )
            .unwrap();
        }
        assert_eq!(s.nodes["n1"].spec.labels.len(), 2);
        let before = s.clone();
        let e = s
            .apply(
                9,
                Command::UpdateNode {
                    id: "n1".into(),
                    update: NodeUpdate {
                        label_add: vec!["c=3".into()],
                        label_rm: vec!["missing".into()],
                        ..Default::default()
                    },
                    now: 4,
                },
            )
            .unwrap_err();
        assert!(e.message.contains("missing"));
        assert_eq!(s, before);
    }

    #[test]
    fn at_most_seven_managers() {
        let mut s = init();
        for i in 2..=7 {
            s.apply(
                i,
                Command::CreateNode {
                    node: Box::new(node(&format!("m{i}"), "h", NodeRole::Manager)),
                },
            )
            .unwrap();
        }
        assert_eq!(s.desired_managers(), MAX_MANAGERS);
        let e = s
            .apply(
                20,
                Command::CreateNode {
                    node: Box::new(node("m8", "h8", NodeRole::Manager)),
                },
            )
            .unwrap_err();
        assert!(e.message.contains("worker token"), "{}", e.message);
        s.apply(
            21,
            Command::CreateNode {
                node: Box::new(node("w", "hw", NodeRole::Worker)),
            },
        )
        .unwrap();
        let e = s
            .apply(
                22,
                Command::UpdateNode {
                    id: "w".into(),
                    update: NodeUpdate {
                        role: Some(NodeRole::Manager),
                        ..Default::default()
                    },
                    now: 1,
                },
            )
            .unwrap_err();
        assert!(e.message.contains("demote one first"), "{}", e.message);
        assert_eq!(s.nodes["w"].spec.role, NodeRole::Worker);
    }

    #[test]
    fn stale_version_conflicts() {
        let mut s = init();
        let spec = s.nodes["n1"].spec.clone();
        let e = s
            .apply(
                2,
                Command::UpdateNodeSpec {
                    id: "n1".into(),
                    spec,
                    expect_version: Some(0),
                    now: 1,
                },
            )
            .unwrap_err();
        assert_eq!(e.kind, RejectKind::Conflict);
    }

    #[test]
    fn remove_rules() {
        let mut s = init();
        s.apply(
            2,
            Command::CreateNode {
                node: Box::new(node("w1", "host2", NodeRole::Worker)),
            },
        )
        .unwrap();
        // Ready worker: needs --force.
        let e = s
            .apply(
                3,
                Command::RemoveNode {
                    id: "w1".into(),
                    force: false,
                },
            )
            .unwrap_err();
        assert!(e.message.contains("--force"));
        // Manager: refused even with force.
        let e = s
            .apply(
                3,
                Command::RemoveNode {
                    id: "n1".into(),
                    force: true,
                },
            )
            .unwrap_err();
        assert!(e.message.contains("demote"));
        // Down worker: removed, and can't come back with the same ID.
        s.apply(
            4,
            Command::SetNodeStatus {
                updates: vec![StatusUpdate {
                    id: "w1".into(),
                    state: NodeState::Down,
                    message: "heartbeat failure".into(),
                }],
                now: 9,
            },
        )
        .unwrap();
        s.apply(
            5,
            Command::RemoveNode {
                id: "w1".into(),
                force: false,
            },
        )
        .unwrap();
        assert!(!s.nodes.contains_key("w1"));
        let e = s
            .apply(
                6,
                Command::CreateNode {
                    node: Box::new(node("w1", "host2", NodeRole::Worker)),
                },
            )
            .unwrap_err();
        assert_eq!(e.kind, RejectKind::Conflict);
    }

    #[test]
    fn status_only_changes_when_different() {
        let mut s = init();
        let out = s
            .apply(
                2,
                Command::SetNodeStatus {
                    updates: vec![StatusUpdate {
                        id: "n1".into(),
                        state: NodeState::Ready,
                        message: String::new(),
                    }],
                    now: 3,
                },
            )
            .unwrap();
        assert!(out.nodes.is_empty());
        assert_eq!(s.nodes["n1"].version, 1);
    }

    #[test]
    fn force_new_cluster_keeps_one_manager() {
        let mut s = init();
        s.apply(
            2,
            Command::CreateNode {
                node: Box::new(node("n2", "host2", NodeRole::Manager)),
            },
        )
        .unwrap();
        s.apply(
            3,
            Command::CreateNode {
                node: Box::new(node("w3", "host3", NodeRole::Worker)),
            },
        )
        .unwrap();
        s.apply(
            4,
            Command::ForceNewCluster {
                keep: "n2".into(),
                now: 7,
            },
        )
        .unwrap();
        assert_eq!(s.desired_managers(), 1);
        assert_eq!(s.nodes["n2"].spec.role, NodeRole::Manager);
        assert_eq!(s.nodes["n1"].spec.role, NodeRole::Worker);
        assert_eq!(s.nodes["w3"].spec.role, NodeRole::Worker);
    }

    #[test]
    fn rotate_token_changes_only_that_token() {
        let mut s = init();
        s.apply(
            2,
            Command::RotateToken {
                role: NodeRole::Worker,
                token: "w2".into(),
                now: 3,
            },
        )
        .unwrap();
        let c = s.cluster.as_ref().unwrap();
        assert_eq!(c.join_tokens.worker, "w2");
        assert_eq!(c.join_tokens.manager, "m");
        assert_eq!(c.version, 2);
    }
}
