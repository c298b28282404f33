//! The replicated cluster state and the commands that change it.
//!
//! [`ClusterState::apply`] is deterministic and pure: every manager applies the same
//! commands in the same order and reaches the same state. Invariants that must hold
//! cluster-wide (one cluster object, at least one manager, removed nodes stay out) are
//! checked here, at apply time, so that two racing requests cannot both pass.

use std::collections::{BTreeMap, BTreeSet};

use std::net::Ipv4Addr;

pub(crate) use mesh_api::network::DEFAULT_MTU;
use mesh_api::node::NodeUpdate;
use mesh_api::{
    Cluster, Endpoint, EndpointOwner, Network, NetworkSpec, Node, NodeDescription, NodeRole,
    NodeSpec, NodeState, Service, ServiceSpec, ServiceUpdate, Task, TaskStatusUpdate,
};

use crate::ipam;
use crate::tasks::TaskPlan;
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
    /// Overlay networks by ID.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Endpoints of overlay networks by ID.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Bumped by every change that affects some node's overlay plan (networks,
    /// endpoints, keys, node addresses); nodes refetch their network map when it moves.
    #[serde(default)]
    pub network_version: u64,
    /// Services by ID.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Tasks by ID (service tasks and standalone containers).
    #[serde(default)]
    pub tasks: BTreeMap<String, Task>,
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
    /// `swarm network create`: the subnet is allocated here, at apply time, so that
    /// racing creations can never get overlapping subnets.
    CreateNetwork {
        /// New network ID.
        id: String,
        /// As requested.
        spec: NetworkSpec,
        /// Time of the change.
        now: u64,
    },
    /// `swarm network rm` (refused while endpoints remain).
    RemoveNetwork {
        /// Network ID.
        id: String,
    },
    /// An address of a network for someone on a node. Idempotent: the same owner on the
    /// same node and network gets its existing endpoint back.
    CreateEndpoint {
        /// New endpoint ID.
        id: String,
        /// Network ID.
        network_id: String,
        /// Node serving it.
        node_id: String,
        /// Who holds it.
        owner: EndpointOwner,
        /// A specific address, if asked for.
        ip: Option<Ipv4Addr>,
        /// Time of the change.
        now: u64,
    },
    /// The endpoint's address returns to the pool.
    RemoveEndpoint {
        /// Endpoint ID.
        id: String,
    },
    /// A node's WireGuard public keys per network, published by the node itself.
    SetNetworkKeys {
        /// Node ID (from its certificate).
        node_id: String,
        /// Network ID → base64 public key.
        keys: BTreeMap<String, String>,
    },
    /// `swarm service create`: ports and VIPs are allocated at apply time.
    CreateService {
        /// New service ID.
        id: String,
        /// As requested (network names are resolved to IDs here).
        spec: Box<ServiceSpec>,
        /// Time of the change.
        now: u64,
    },
    /// `swarm service update|scale|rollback` as a delta on the spec current at apply time.
    UpdateService {
        /// Service ID.
        id: String,
        /// The change.
        update: Box<ServiceUpdate>,
        /// Refuse if the service changed since this version was read.
        expect_version: Option<u64>,
        /// Time of the change.
        now: u64,
    },
    /// `swarm service rm`: its tasks are told to go away.
    RemoveService {
        /// Service ID.
        id: String,
        /// Time of the change.
        now: u64,
    },
    /// One pass of the orchestrator and scheduler.
    ApplyPlan {
        /// What to change.
        plan: Box<TaskPlan>,
        /// Time of the change.
        now: u64,
    },
    /// Task states reported by the node that runs them.
    UpdateTaskStatus {
        /// Reporting node (from its certificate).
        node_id: String,
        /// The reports.
        updates: Vec<TaskStatusUpdate>,
    },
    /// `swarm run`: a standalone container on one node.
    CreateTask {
        /// The task, with its node set.
        task: Box<Task>,
        /// Time of the change.
        now: u64,
    },
    /// `swarm container rm` and friends: a new desired state for one task.
    SetTaskDesired {
        /// Task ID.
        id: String,
        /// Shutdown or Remove.
        state: mesh_api::TaskState,
        /// Time of the change.
        now: u64,
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
    /// IDs of nodes created, changed or removed.
    pub nodes: Vec<String>,
    /// Whether the cluster object changed.
    pub cluster: bool,
    /// The object created or found (network or endpoint ID).
    #[serde(default)]
    pub object: Option<String>,
}

/// Whether two owners are the same holder: the same namespace (whatever the interface
/// name), or the same WireGuard key.
fn same_holder(a: &EndpointOwner, b: &EndpointOwner) -> bool {
    match (a, b) {
        (EndpointOwner::Netns { path: p, .. }, EndpointOwner::Netns { path: q, .. }) => p == q,
        (
            EndpointOwner::External { public_key: k, .. },
            EndpointOwner::External { public_key: l, .. },
        ) => k == l,
        (EndpointOwner::Task { task_id: a, .. }, EndpointOwner::Task { task_id: b, .. }) => a == b,
        _ => false,
    }
}

/// An object of `map` by ID, by name, or by an unambiguous ID prefix.
pub(crate) fn resolve_in<'a, T>(
    map: &'a BTreeMap<String, T>,
    reference: &str,
    name: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    if let Some(x) = map.get(reference) {
        return Some(x);
    }
    if let Some(x) = map.values().find(|x| name(x) == reference) {
        return Some(x);
    }
    if reference.is_empty() {
        return None;
    }
    let mut prefixed = map
        .range(reference.to_string()..)
        .take_while(|(k, _)| k.starts_with(reference));
    match (prefixed.next(), prefixed.next()) {
        (Some((_, x)), None) => Some(x),
        _ => None,
    }
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

    /// The pools and prefix length overlay subnets are allocated from.
    pub fn address_pools(&self) -> (Vec<ipnet::Ipv4Net>, u8) {
        let (pools, prefix) = match &self.cluster {
            Some(c) => (
                c.spec.default_addr_pool.clone(),
                c.spec.default_addr_pool_mask_len,
            ),
            None => (Vec::new(), 0),
        };
        let pools = if pools.is_empty() {
            vec![ipam::default_pool()]
        } else {
            pools
        };
        let prefix = if prefix == 0 {
            ipam::DEFAULT_SUBNET_PREFIX
        } else {
            prefix
        };
        (pools, prefix)
    }

    /// A network by ID, name or unambiguous ID prefix.
    pub fn resolve_network(&self, reference: &str) -> Option<&Network> {
        resolve_in(&self.networks, reference, |n| &n.spec.name)
    }

    /// How an endpoint is named in messages: `10.20.0.2 on host1 (netns /var/run/netns/foo)`.
    pub fn describe_endpoint(&self, e: &Endpoint) -> String {
        let host = self
            .nodes
            .get(&e.node_id)
            .map(|n| n.description.hostname.as_str())
            .unwrap_or(e.node_id.as_str());
        match &e.owner {
            EndpointOwner::Netns { path, .. } => format!("{} on {host} (netns {path})", e.ip),
            EndpointOwner::External { .. } => format!("{} on {host} (WireGuard peer)", e.ip),
            EndpointOwner::LoadBalancer => format!("{} on {host} (load balancer)", e.ip),
            EndpointOwner::Task { task_id, .. } => {
                let name = self
                    .tasks
                    .get(task_id)
                    .map(|t| t.display_name())
                    .unwrap_or_else(|| task_id.clone());
                format!("{} on {host} (task {name})", e.ip)
            }
        }
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
                    nodes: vec![id],
                    cluster: true,
                    object: None,
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
                    nodes: vec![],
                    cluster: true,
                    object: None,
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
                let now = node.created_at;
                self.nodes.insert(id.clone(), node);
                if let Some(ingress) = self.ingress_network().map(|n| n.id.clone())
                    && let Err(e) = self.ensure_lb_endpoint(&ingress, &id, now)
                {
                    tracing::warn!(node = %id, error = %e, "no load-balancer address on the ingress network");
                }
                Ok(Applied {
                    nodes: vec![id],
                    cluster: false,
                    object: None,
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
                    nodes: vec![id],
                    cluster: false,
                    object: None,
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
                    nodes: changed,
                    cluster: false,
                    object: None,
                })
            }
            Command::ReportNode { report, now } => {
                let Some(node) = self.nodes.get_mut(&report.id) else {
                    return reject(RejectKind::NotFound, format!("no such node: {}", report.id));
                };
                if node.status.addr != report.addr || node.data_port != report.data_port {
                    self.network_version += 1;
                }
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
                    nodes: vec![report.id],
                    cluster: false,
                    object: None,
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
                self.orphan_tasks_of(index, &id, 0);
                self.nodes.remove(&id);
                self.removed_nodes.insert(id.clone());
                let before = self.endpoints.len();
                self.endpoints.retain(|_, e| e.node_id != id);
                if before != self.endpoints.len() {
                    self.network_version += 1;
                }
                Ok(Applied {
                    nodes: vec![id],
                    cluster: false,
                    object: None,
                })
            }
            Command::CreateNetwork { id, spec, now } => {
                if let Err(e) = spec.validate() {
                    return reject(RejectKind::FailedPrecondition, e.to_string());
                }
                if spec.ingress || spec.name == crate::mesh::INGRESS_NETWORK {
                    return reject(
                        RejectKind::FailedPrecondition,
                        "invalid NAME: ingress is the routing mesh's network, made by the cluster when a service publishes a port; choose another name",
                    );
                }
                if let Some(other) = self.networks.values().find(|n| n.spec.name == spec.name) {
                    return reject(
                        RejectKind::Conflict,
                        format!(
                            "network with name {} already exists ({}); choose another name",
                            spec.name, other.id
                        ),
                    );
                }
                if self.networks.contains_key(&id) {
                    return reject(RejectKind::Conflict, format!("network {id} already exists"));
                }
                let used: Vec<_> = self.networks.values().map(|n| n.subnet).collect();
                let subnet = match spec.subnet {
                    Some(s) => {
                        if !spec.allow_overlap
                            && let Some(o) = self
                                .networks
                                .values()
                                .find(|n| ipam::overlaps(&n.subnet, &s))
                        {
                            return reject(
                                RejectKind::Conflict,
                                format!(
                                    "invalid --subnet: {s} overlaps network {} ({}); choose another subnet, or pass --allow-overlap to run both side by side (they stay isolated)",
                                    o.spec.name, o.subnet
                                ),
                            );
                        }
                        s
                    }
                    None => {
                        let (pools, prefix) = self.address_pools();
                        match ipam::allocate_subnet(&pools, prefix, &used) {
                            Some(s) => s,
                            None => {
                                return reject(
                                    RejectKind::FailedPrecondition,
                                    "the default address pools are exhausted; give --subnet, or remove unused networks",
                                );
                            }
                        }
                    }
                };
                let gateway = spec
                    .gateway
                    .unwrap_or_else(|| ipam::default_gateway(&subnet));
                self.networks.insert(
                    id.clone(),
                    Network {
                        id: id.clone(),
                        version: index,
                        created_at: now,
                        updated_at: now,
                        spec,
                        subnet,
                        gateway,
                        mtu: DEFAULT_MTU,
                    },
                );
                self.network_version += 1;
                Ok(Applied {
                    object: Some(id),
                    ..Default::default()
                })
            }
            Command::RemoveNetwork { id } => {
                let Some(net) = self.networks.get(&id) else {
                    return reject(RejectKind::NotFound, format!("no such network: {id}"));
                };
                let ingress = net.spec.ingress;
                let services: Vec<&str> = self
                    .services
                    .values()
                    .filter(|s| {
                        s.spec.task_template.networks.iter().any(|n| n.target == id)
                            || (ingress && crate::mesh::publishes_ingress(s))
                    })
                    .map(|s| s.spec.name.as_str())
                    .collect();
                if !services.is_empty() {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "network {} is in use by service(s) {}; remove them first (`swarm service rm`)",
                            net.spec.name,
                            services.join(", ")
                        ),
                    );
                }
                let users: Vec<String> = self
                    .endpoints
                    .values()
                    .filter(|e| e.network_id == id && e.owner != EndpointOwner::LoadBalancer)
                    .map(|e| self.describe_endpoint(e))
                    .collect();
                if !users.is_empty() {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "network {} is in use by {} endpoint(s): {}; disconnect them first (`swarm network disconnect`)",
                            net.spec.name,
                            users.len(),
                            users.join(", ")
                        ),
                    );
                }
                self.networks.remove(&id);
                self.endpoints.retain(|_, e| e.network_id != id);
                for node in self.nodes.values_mut() {
                    node.network_keys.remove(&id);
                }
                self.network_version += 1;
                Ok(Applied {
                    object: Some(id),
                    ..Default::default()
                })
            }
            Command::CreateEndpoint {
                id,
                network_id,
                node_id,
                owner,
                ip,
                now,
            } => {
                let Some(net) = self.networks.get(&network_id) else {
                    return reject(
                        RejectKind::NotFound,
                        format!("no such network: {network_id}"),
                    );
                };
                if !self.nodes.contains_key(&node_id) {
                    return reject(RejectKind::NotFound, format!("no such node: {node_id}"));
                }
                if !net.spec.attachable {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "network {} is not attachable; recreate it with `swarm network create --attachable`",
                            net.spec.name
                        ),
                    );
                }
                if let Some(existing) = self.endpoints.values().find(|e| {
                    e.network_id == network_id
                        && e.node_id == node_id
                        && same_holder(&e.owner, &owner)
                }) {
                    return Ok(Applied {
                        object: Some(existing.id.clone()),
                        ..Default::default()
                    });
                }
                if owner == EndpointOwner::LoadBalancer {
                    return reject(
                        RejectKind::FailedPrecondition,
                        "load-balancer endpoints are made by the cluster; connect a namespace (--netns) or a WireGuard peer instead",
                    );
                }
                if let EndpointOwner::External { public_key, .. } = &owner
                    && self.endpoints.values().any(|e| {
                        e.network_id == network_id
                            && matches!(&e.owner, EndpointOwner::External { public_key: k, .. } if k == public_key)
                    })
                {
                    return reject(
                        RejectKind::Conflict,
                        format!(
                            "a WireGuard peer with this public key is already connected to network {}",
                            net.spec.name
                        ),
                    );
                }
                // Endpoints and service VIPs.
                let used: BTreeSet<Ipv4Addr> = self.used_ips(&network_id);
                let addr = match ip {
                    Some(want) => {
                        if !ipam::is_assignable(&net.subnet, net.gateway, want) {
                            return reject(
                                RejectKind::FailedPrecondition,
                                format!(
                                    "invalid --ip: {want} is not a usable address of {} ({}, gateway {})",
                                    net.spec.name, net.subnet, net.gateway
                                ),
                            );
                        }
                        if used.contains(&want) {
                            return reject(
                                RejectKind::Conflict,
                                format!(
                                    "invalid --ip: {want} is already in use on network {}; leave --ip out to get a free address",
                                    net.spec.name
                                ),
                            );
                        }
                        want
                    }
                    None => match ipam::allocate_ip(&net.subnet, net.gateway, &used) {
                        Some(a) => a,
                        None => {
                            return reject(
                                RejectKind::FailedPrecondition,
                                format!(
                                    "network {} has no free address left in {}",
                                    net.spec.name, net.subnet
                                ),
                            );
                        }
                    },
                };
                self.endpoints.insert(
                    id.clone(),
                    Endpoint {
                        id: id.clone(),
                        network_id,
                        node_id,
                        ip: addr,
                        owner,
                        created_at: now,
                    },
                );
                self.network_version += 1;
                Ok(Applied {
                    object: Some(id),
                    ..Default::default()
                })
            }
            Command::RemoveEndpoint { id } => {
                if self.endpoints.remove(&id).is_none() {
                    return reject(RejectKind::NotFound, format!("no such endpoint: {id}"));
                }
                self.network_version += 1;
                Ok(Applied {
                    object: Some(id),
                    ..Default::default()
                })
            }
            Command::SetNetworkKeys { node_id, keys } => {
                let Some(node) = self.nodes.get_mut(&node_id) else {
                    return reject(RejectKind::NotFound, format!("no such node: {node_id}"));
                };
                if node.network_keys != keys {
                    node.network_keys = keys;
                    node.version = index;
                    self.network_version += 1;
                }
                Ok(Applied {
                    nodes: vec![node_id],
                    ..Default::default()
                })
            }
            Command::CreateService { id, spec, now } => {
                self.apply_create_service(index, id, *spec, now)
            }
            Command::UpdateService {
                id,
                update,
                expect_version,
                now,
            } => self.apply_update_service(index, &id, &update, expect_version, now),
            Command::RemoveService { id, now } => self.apply_remove_service(index, &id, now),
            Command::ApplyPlan { plan, now } => self.apply_plan(index, *plan, now),
            Command::UpdateTaskStatus { node_id, updates } => {
                self.apply_task_status(index, &node_id, updates)
            }
            Command::CreateTask { task, now } => self.apply_create_task(index, *task, now),
            Command::SetTaskDesired { id, state, now } => {
                if !self.tasks.contains_key(&id) {
                    return reject(RejectKind::NotFound, format!("no such task: {id}"));
                }
                self.set_desired(index, &id, state, now);
                Ok(Applied {
                    object: Some(id),
                    ..Default::default()
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
                    nodes: changed,
                    cluster: false,
                    object: None,
                })
            }
        }
    }
}

impl mesh_store::StateMachine for ClusterState {
    type Command = Command;
    type Output = Output;

    fn apply(&mut self, index: u64, cmd: Command) -> Output {
        ClusterState::apply(self, index, cmd)
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
            network_keys: Default::default(),
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

    fn spec(name: &str, subnet: Option<&str>) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            driver: "overlay".into(),
            subnet: subnet.map(|s| s.parse().unwrap()),
            attachable: true,
            ..Default::default()
        }
    }

    fn create_net(s: &mut ClusterState, i: u64, id: &str, sp: NetworkSpec) -> Output {
        s.apply(
            i,
            Command::CreateNetwork {
                id: id.into(),
                spec: sp,
                now: 1,
            },
        )
    }

    fn connect(s: &mut ClusterState, i: u64, id: &str, net: &str, path: &str) -> Output {
        s.apply(
            i,
            Command::CreateEndpoint {
                id: id.into(),
                network_id: net.into(),
                node_id: "n1".into(),
                owner: EndpointOwner::Netns {
                    path: path.into(),
                    ifname: "eth0".into(),
                },
                ip: None,
                now: 1,
            },
        )
    }

    #[test]
    fn networks_get_subnets_and_refuse_overlap_and_duplicates() {
        let mut s = init();
        create_net(&mut s, 2, "a", spec("appnet", Some("10.20.0.0/24"))).unwrap();
        create_net(&mut s, 3, "b", spec("backend", None)).unwrap();
        assert_eq!(s.networks["b"].subnet.to_string(), "10.0.0.0/24");
        assert_eq!(s.networks["a"].gateway.to_string(), "10.20.0.1");
        let before = s.clone();
        let e = create_net(&mut s, 4, "c", spec("other", Some("10.20.0.0/16"))).unwrap_err();
        assert!(
            e.message.contains("overlaps network appnet"),
            "{}",
            e.message
        );
        let e = create_net(&mut s, 4, "c", spec("appnet", Some("10.30.0.0/24"))).unwrap_err();
        assert!(e.message.contains("already exists"), "{}", e.message);
        assert_eq!(s, before);
        let mut sp = spec("tenant2", Some("10.20.0.0/24"));
        sp.allow_overlap = true;
        create_net(&mut s, 5, "d", sp).unwrap();
        // Allocation skips every used subnet, overlapping ones included.
        create_net(&mut s, 6, "e", spec("third", None)).unwrap();
        assert_eq!(s.networks["e"].subnet.to_string(), "10.0.1.0/24");
    }

    #[test]
    fn endpoints_allocate_release_and_block_removal() {
        let mut s = init();
        create_net(&mut s, 2, "a", spec("appnet", Some("10.20.0.0/24"))).unwrap();
        connect(&mut s, 3, "e1", "a", "/run/netns/x").unwrap();
        connect(&mut s, 4, "e2", "a", "/run/netns/y").unwrap();
        assert_eq!(s.endpoints["e1"].ip.to_string(), "10.20.0.2");
        assert_eq!(s.endpoints["e2"].ip.to_string(), "10.20.0.3");
        // Same owner again: the same endpoint back.
        let out = connect(&mut s, 5, "e3", "a", "/run/netns/x").unwrap();
        assert_eq!(out.object.as_deref(), Some("e1"));
        assert_eq!(s.endpoints.len(), 2);
        let e = s
            .apply(6, Command::RemoveNetwork { id: "a".into() })
            .unwrap_err();
        assert!(
            e.message
                .contains("10.20.0.2 on host1 (netns /run/netns/x)"),
            "{}",
            e.message
        );
        s.apply(7, Command::RemoveEndpoint { id: "e1".into() })
            .unwrap();
        connect(&mut s, 8, "e4", "a", "/run/netns/z").unwrap();
        assert_eq!(s.endpoints["e4"].ip.to_string(), "10.20.0.2");
        s.apply(9, Command::RemoveEndpoint { id: "e2".into() })
            .unwrap();
        s.apply(10, Command::RemoveEndpoint { id: "e4".into() })
            .unwrap();
        s.apply(11, Command::RemoveNetwork { id: "a".into() })
            .unwrap();
        assert!(s.networks.is_empty());
    }

    #[test]
    fn non_attachable_and_taken_addresses_are_refused() {
        let mut s = init();
        let mut sp = spec("private", Some("10.20.0.0/24"));
        sp.attachable = false;
        create_net(&mut s, 2, "p", sp).unwrap();
        let e = connect(&mut s, 3, "e1", "p", "/run/netns/x").unwrap_err();
        assert!(e.message.contains("not attachable"), "{}", e.message);
        create_net(&mut s, 4, "a", spec("appnet", Some("10.30.0.0/24"))).unwrap();
        let want = |s: &mut ClusterState, i, id: &str, ip: &str| {
            s.apply(
                i,
                Command::CreateEndpoint {
                    id: id.into(),
                    network_id: "a".into(),
                    node_id: "n1".into(),
                    owner: EndpointOwner::Netns {
                        path: format!("/p/{id}"),
                        ifname: "eth0".into(),
                    },
                    ip: Some(ip.parse().unwrap()),
                    now: 1,
                },
            )
        };
        want(&mut s, 5, "x", "10.30.0.9").unwrap();
        assert!(
            want(&mut s, 6, "y", "10.30.0.9")
                .unwrap_err()
                .message
                .contains("already in use")
        );
        assert!(
            want(&mut s, 7, "z", "10.30.0.1")
                .unwrap_err()
                .message
                .contains("not a usable")
        );
        assert!(
            want(&mut s, 8, "w", "10.31.0.5")
                .unwrap_err()
                .message
                .contains("not a usable")
        );
    }

    #[test]
    fn network_version_moves_with_changes_only() {
        let mut s = init();
        let v0 = s.network_version;
        create_net(&mut s, 2, "a", spec("appnet", None)).unwrap();
        assert_eq!(s.network_version, v0 + 1);
        let keys: BTreeMap<String, String> = [("a".to_string(), "k".to_string())].into();
        s.apply(
            3,
            Command::SetNetworkKeys {
                node_id: "n1".into(),
                keys: keys.clone(),
            },
        )
        .unwrap();
        assert_eq!(s.network_version, v0 + 2);
        s.apply(
            4,
            Command::SetNetworkKeys {
                node_id: "n1".into(),
                keys,
            },
        )
        .unwrap();
        assert_eq!(s.network_version, v0 + 2);
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
