//! Messages between a node and the managers, carried by `mesh-transport` as JSON.
//!
//! Methods (the string the transport carries):
//! - [`CA`]: anonymous; answers the root CA certificate as raw PEM (the joiner pins it by digest).
//! - [`JOIN`]: anonymous; token + CSR → node ID and certificate.
//! - [`HEARTBEAT`]: node certificate; to the leader (others answer `not_leader`).
//! - [`RENEW`]: node certificate; CSR → certificate with the node's desired role.
//! - [`LEAVE`]: node certificate; the node is leaving.
//! - [`PING`]: node certificate; liveness between managers.
//! - [`RAFT`]: manager certificate; opaque Raft traffic for `mesh-store`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use mesh_api::{
    Endpoint, EndpointOwner, Network, NodeDescription, NodeRole, Service, Task, TaskStatusUpdate,
};
use serde::{Deserialize, Serialize};

/// Root CA request (anonymous).
pub const CA: &str = "ca";
/// Join request (anonymous).
pub const JOIN: &str = "join";
/// Heartbeat.
pub const HEARTBEAT: &str = "heartbeat";
/// Certificate renewal.
pub const RENEW: &str = "renew";
/// Leaving the cluster.
pub const LEAVE: &str = "leave";
/// Liveness probe.
pub const PING: &str = "ping";
/// Raft traffic.
pub const RAFT: &str = "raft";
/// The overlay networks this node takes part in, with their endpoints and peers.
pub const NETWORK_MAP: &str = "network_map";
/// Create an endpoint of a network on the calling node.
pub const ATTACH: &str = "attach";
/// Remove an endpoint of the calling node.
pub const DETACH: &str = "detach";
/// The tasks assigned to the calling node (long-poll: answers when they change).
pub const ASSIGNMENTS: &str = "assignments";
/// Task states observed by the calling node.
pub const TASK_STATUS: &str = "task_status";
/// `swarm run` on a worker: a standalone container on the calling node.
pub const RUN: &str = "run";
/// `swarm container rm` on a worker: a new desired state for a container of the caller.
pub const CONTAINER_DESIRED: &str = "container_desired";
/// Manager → node: a piece of a task's output (the node keeps the logs).
pub const TASK_LOGS: &str = "task_logs";

/// Error codes carried in `RemoteError::code`.
pub mod codes {
    /// The token is malformed, for another cluster, rotated or wrong.
    pub const BAD_TOKEN: &str = "bad_token";
    /// The method needs a node certificate of this cluster.
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// The caller's role may not call this method.
    pub const PERMISSION_DENIED: &str = "permission_denied";
    /// Ask the leader instead; the message is the leader's address (may be empty).
    pub const NOT_LEADER: &str = "not_leader";
    /// Writes are impossible without a majority of managers.
    pub const NO_QUORUM: &str = "no_quorum";
    /// The node was removed from the cluster.
    pub const REMOVED: &str = "removed";
    /// Bad request.
    pub const INVALID: &str = "invalid";
    /// Anything else.
    pub const INTERNAL: &str = "internal";
    /// No such object.
    pub const NOT_FOUND: &str = "not_found";
    /// Conflicts with the current state.
    pub const CONFLICT: &str = "conflict";
    /// Refused in the current state.
    pub const FAILED_PRECONDITION: &str = "failed_precondition";
    /// This daemon is not a manager.
    pub const NOT_MANAGER: &str = "not_manager";
}

/// `join` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token.
    pub token: String,
    /// CSR for the node certificate, PEM.
    pub csr_pem: String,
    /// Host facts.
    pub description: NodeDescription,
    /// Advertised IP.
    pub addr: String,
    /// Control address `IP:PORT`.
    pub control_addr: String,
    /// Overlay data port.
    pub data_port: u16,
    /// The Raft ID the node will use if it becomes a manager.
    pub raft_id: u64,
}

/// `join` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The new node ID.
    pub node_id: String,
    /// Cluster ID.
    pub cluster_id: String,
    /// The role the token grants.
    pub role: NodeRole,
    /// Node certificate, PEM.
    pub cert_pem: String,
    /// Manager control addresses.
    pub managers: Vec<String>,
}

/// `heartbeat` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Host facts.
    pub description: NodeDescription,
    /// Advertised IP.
    pub addr: String,
    /// Control address.
    pub control_addr: String,
    /// Overlay data port.
    pub data_port: u16,
    /// Raft ID.
    pub raft_id: u64,
    /// Expiry of the current certificate.
    pub cert_expiry: u64,
    /// This node's WireGuard public key per network (network ID → base64).
    #[serde(default)]
    pub network_keys: BTreeMap<String, String>,
}

/// `heartbeat` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The role the node should have.
    pub desired_role: NodeRole,
    /// Whether the node is currently a Raft voter or learner.
    pub raft_member: bool,
    /// Manager control addresses.
    pub managers: Vec<String>,
    /// When to send the next heartbeat.
    pub heartbeat_period_ms: u64,
    /// Version of the overlay state; refetch the network map when it changes.
    #[serde(default)]
    pub network_version: u64,
}

/// `renew` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    /// CSR, PEM.
    pub csr_pem: String,
}

/// `renew` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    /// New certificate.
    pub cert_pem: String,
    /// Role it carries.
    pub role: NodeRole,
}

/// A node taking part in an overlay network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// Node ID.
    pub node_id: String,
    /// Its underlay IP.
    pub addr: String,
    /// Its overlay data port.
    pub data_port: u16,
    /// Its public key for this network, once published.
    pub public_key: Option<String>,
}

/// One network as a node needs it to plumb its part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAssignment {
    /// The network.
    pub network: Network,
    /// Every endpoint of the network, on every node.
    pub endpoints: Vec<Endpoint>,
    /// Every node serving an endpoint of the network.
    pub nodes: Vec<PeerNode>,
    /// The names this network's tasks resolve (embedded DNS).
    #[serde(default)]
    pub dns: Vec<DnsEntry>,
}

/// A name on a network, as the embedded DNS answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsEntry {
    /// A service (or one of its aliases): `NAME` → its VIP, or its tasks without one
    /// (endpoint mode dnsrr); `tasks.NAME` → its running, healthy tasks.
    Service {
        /// Service name or alias.
        name: String,
        /// Its VIP on this network (none for dnsrr).
        vip: Option<Ipv4Addr>,
        /// Addresses of its serving tasks on this network.
        tasks: Vec<Ipv4Addr>,
    },
    /// One address: a task (`NAME.SLOT.TASKID`) or a standalone container (by name).
    Host {
        /// The name.
        name: String,
        /// Its address on this network.
        ip: Ipv4Addr,
    },
}

/// `network_map` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkMap {
    /// `network_version` it reflects.
    pub version: u64,
    /// Networks with an endpoint on the calling node.
    pub networks: Vec<NetworkAssignment>,
    /// Services with published ports, for the node's routing mesh.
    #[serde(default)]
    pub mesh: Vec<MeshService>,
}

/// A service with published ports and its serving tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshService {
    /// Service ID.
    pub service_id: String,
    /// Service name.
    pub name: String,
    /// Its ports, published ports allocated.
    pub ports: Vec<mesh_api::PortConfig>,
    /// Its running, healthy tasks that are not being stopped, by task ID.
    pub backends: Vec<MeshBackend>,
}

/// A task behind published ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshBackend {
    /// Task ID.
    pub task_id: String,
    /// Node that runs it.
    pub node_id: String,
    /// That node's underlay address.
    pub node_addr: String,
    /// The task's address on the ingress network (tasks of services with ingress ports).
    pub ingress_ip: Option<Ipv4Addr>,
}

/// `attach` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Network ID, name or ID prefix.
    pub network: String,
    /// Who holds the endpoint.
    pub owner: EndpointOwner,
    /// A specific address, if asked for.
    pub ip: Option<Ipv4Addr>,
}

/// `attach` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachResponse {
    /// The endpoint (new or existing).
    pub endpoint: Endpoint,
    /// Its network.
    pub network: Network,
}

/// `detach` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachRequest {
    /// Network ID, name or ID prefix.
    pub network: String,
    /// Namespace path of the endpoint to remove.
    pub netns: Option<String>,
    /// Or its ID.
    pub endpoint: Option<String>,
}

/// `assignments` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignmentsRequest {
    /// The version the node has; the answer waits until it differs (or `wait_ms` passes).
    pub known: Option<(u64, u64)>,
    /// How long to wait for a change, ms (capped by the manager).
    pub wait_ms: u64,
}

/// `assignments` answer: everything the node must run or clean up.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AssignmentsResponse {
    /// Version of this set.
    pub version: (u64, u64),
    /// Every task assigned to the node that the store still holds.
    pub tasks: Vec<Task>,
    /// The services of those tasks (for names and VIPs).
    #[serde(default)]
    pub services: Vec<Service>,
}

/// `task_status` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatusRequest {
    /// The reports.
    pub updates: Vec<TaskStatusUpdate>,
}

/// `task_logs` request (manager → node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskLogsRequest {
    /// Task ID.
    pub task_id: String,
    /// Where to read from.
    pub query: mesh_api::api::LogsQuery,
}

/// `container_desired` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerDesiredRequest {
    /// Container name or task ID (prefix).
    pub reference: String,
    /// Shutdown or Remove.
    pub state: mesh_api::TaskState,
}
