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

use mesh_api::{NodeDescription, NodeRole};
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
