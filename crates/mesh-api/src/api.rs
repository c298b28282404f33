//! Messages of meshd's control API: HTTP/JSON on a unix socket (and mTLS TCP).
//!
//! Every route is below [`PREFIX`]. Errors come back with a non-2xx status and an
//! [`ErrorBody`]. The `swarm` CLI speaks only this API.

use serde::{Deserialize, Serialize};

use crate::node::{NodeRole, NodeUpdate};

/// Path prefix of every route.
pub const PREFIX: &str = "/v1";
/// Default path of the daemon's unix socket.
pub const DEFAULT_SOCKET: &str = "/run/meshd/meshd.sock";
/// Default control port (QUIC over UDP).
pub const DEFAULT_CONTROL_PORT: u16 = 2377;
/// Default overlay data port (WireGuard over UDP).
pub const DEFAULT_DATA_PORT: u16 = 51820;

/// Route paths. `{role}` and `{node}` are path parameters.
pub mod routes {
    /// `GET` → [`super::Info`].
    pub const INFO: &str = "/v1/info";
    /// `POST` [`super::InitRequest`] → [`super::InitResponse`].
    pub const SWARM_INIT: &str = "/v1/swarm/init";
    /// `POST` [`super::JoinRequest`] → [`super::JoinResponse`].
    pub const SWARM_JOIN: &str = "/v1/swarm/join";
    /// `POST` [`super::LeaveRequest`] → `{}`.
    pub const SWARM_LEAVE: &str = "/v1/swarm/leave";
    /// `GET` → [`super::SwarmView`].
    pub const SWARM: &str = "/v1/swarm";
    /// `GET` → [`super::JoinTokenResponse`].
    pub const JOIN_TOKEN: &str = "/v1/swarm/join-token/{role}";
    /// `POST` → [`super::JoinTokenResponse`] with the new token.
    pub const JOIN_TOKEN_ROTATE: &str = "/v1/swarm/join-token/{role}/rotate";
    /// `GET` → `Vec<Node>`.
    pub const NODES: &str = "/v1/nodes";
    /// `GET` → `Node`; `DELETE` with `?force=true|false` → `{}`.
    pub const NODE: &str = "/v1/nodes/{node}";
    /// `POST` [`super::NodeUpdate`] → `Node`.
    pub const NODE_UPDATE: &str = "/v1/nodes/{node}/update";
    /// `GET` → `Vec<NetworkView>`; `POST` `NetworkSpec` → `Network`.
    pub const NETWORKS: &str = "/v1/networks";
    /// `GET` → `NetworkView`; `DELETE` → `{}`.
    pub const NETWORK: &str = "/v1/networks/{network}";
    /// `POST` `ConnectRequest` → `ConnectResponse` (any node: it plumbs locally).
    pub const NETWORK_CONNECT: &str = "/v1/networks/{network}/connect";
    /// `POST` `DisconnectRequest` → `{}` (any node).
    pub const NETWORK_DISCONNECT: &str = "/v1/networks/{network}/disconnect";
    /// `GET` → `Vec<ServiceView>`; `POST` `ServiceSpec` → `Service`.
    pub const SERVICES: &str = "/v1/services";
    /// `GET` → `ServiceView`; `DELETE` → `{}`.
    pub const SERVICE: &str = "/v1/services/{service}";
    /// `POST` `ServiceUpdate` → `Service`.
    pub const SERVICE_UPDATE: &str = "/v1/services/{service}/update";
    /// `GET` with [`super::TaskQuery`] → `Vec<Task>` (`service ps`, `container ls`).
    pub const TASKS: &str = "/v1/tasks";
    /// `GET` → `Task`.
    pub const TASK: &str = "/v1/tasks/{task}";
    /// `GET` with [`super::LogsQuery`] → [`super::LogChunk`].
    pub const TASK_LOGS: &str = "/v1/tasks/{task}/logs";
    /// `POST` [`super::RunRequest`] → `Task` (`swarm run`, on the node that is asked).
    pub const CONTAINERS: &str = "/v1/containers";
    /// `DELETE` with `?force=true|false` → `{}`.
    pub const CONTAINER: &str = "/v1/containers/{container}";
    /// `POST` → `{}`: stop it (stop signal, grace period, SIGKILL), keep it.
    pub const CONTAINER_STOP: &str = "/v1/containers/{container}/stop";
    /// `GET` → `Vec<ImageSummary>` of this node.
    pub const IMAGES: &str = "/v1/images";
    /// `POST` [`super::ImageLoadRequest`] → `Vec<ImageSummary>` (into this node's store).
    pub const IMAGES_LOAD: &str = "/v1/images/load";
    /// `DELETE` with `?force=true|false` → `{}`.
    pub const IMAGE: &str = "/v1/images/{image}";
}

/// Builds a concrete path from a route template by replacing `{name}` with `value`.
pub fn path(template: &str, params: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in params {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// Class of an API error; maps to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad input: 400.
    InvalidArgument,
    /// No such object: 404.
    NotFound,
    /// Conflicts with the current state: 409.
    Conflict,
    /// Refused in the current state (e.g. demoting the last manager): 412.
    FailedPrecondition,
    /// This node is not a manager or not part of a cluster: 503.
    NotManager,
    /// The managers have no quorum; writes are refused, reads still work: 503.
    NoQuorum,
    /// Something else went wrong: 500.
    Internal,
}

impl ErrorKind {
    /// HTTP status code for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::FailedPrecondition => 412,
            ErrorKind::NotManager | ErrorKind::NoQuorum => 503,
            ErrorKind::Internal => 500,
        }
    }
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorBody {
    /// Class of the error.
    pub kind: ErrorKind,
    /// Human-readable message naming what is wrong and how to fix it.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<crate::ValidationError> for ErrorBody {
    fn from(e: crate::ValidationError) -> Self {
        ErrorBody::new(ErrorKind::InvalidArgument, e.to_string())
    }
}

/// `swarm init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InitRequest {
    /// Address other nodes reach this one at (IP or IP:PORT); defaults to the daemon's.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Control listen address; defaults to the daemon's.
    #[serde(default)]
    pub listen_addr: Option<String>,
    /// Recover a cluster from this manager's state as a single-manager cluster.
    #[serde(default)]
    pub force_new_cluster: bool,
    /// Heartbeat period in milliseconds (cluster-wide).
    #[serde(default)]
    pub heartbeat_period_ms: Option<u64>,
    /// Silence after which a node is marked down, in milliseconds.
    #[serde(default)]
    pub node_down_after_ms: Option<u64>,
    /// Validity of node certificates, in milliseconds.
    #[serde(default)]
    pub cert_expiry_ms: Option<u64>,
    /// Pools overlay subnets are allocated from (`--default-addr-pool`, CIDR; default 10.0.0.0/8).
    #[serde(default)]
    pub default_addr_pool: Vec<String>,
    /// Prefix length of allocated subnets (`--default-addr-pool-mask-length`; default 24).
    #[serde(default)]
    pub default_addr_pool_mask_len: Option<u8>,
}

/// Answer to `swarm init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitResponse {
    /// This node's ID.
    pub node_id: String,
    /// Cluster ID.
    pub cluster_id: String,
    /// Worker join token.
    pub worker_token: String,
    /// Address to give to `swarm join` (`IP:PORT`).
    pub manager_addr: String,
}

/// `swarm join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Join token `SWMTKN-1-…`.
    pub token: String,
    /// A manager's control address, `HOST[:PORT]`.
    pub remote_addr: String,
    /// Address to advertise; defaults to the daemon's.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Control listen address; defaults to the daemon's.
    #[serde(default)]
    pub listen_addr: Option<String>,
}

/// Answer to `swarm join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// This node's new ID.
    pub node_id: String,
    /// Role it joined with.
    pub role: NodeRole,
}

/// `swarm leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LeaveRequest {
    /// Leave even if this is a manager (may lose quorum).
    #[serde(default)]
    pub force: bool,
}

/// `swarm join-token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    /// Role the token joins as.
    pub role: NodeRole,
    /// The token.
    pub token: String,
    /// A manager address to join at.
    pub manager_addr: String,
}

/// What `GET /v1/swarm` returns: the cluster without its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmView {
    /// Cluster ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Raft index of the last change.
    pub version: u64,
    /// Creation time, Unix milliseconds.
    pub created_at: u64,
    /// Settings.
    pub spec: crate::ClusterSpec,
    /// Root CA certificate, PEM.
    pub root_ca_cert: String,
    /// Digest of the root CA as it appears in join tokens.
    pub root_ca_digest: String,
}

/// `swarm info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Info {
    /// meshd version.
    pub version: String,
    /// `inactive`, `pending`, `active` or `error`.
    pub local_node_state: String,
    /// This node's ID (empty when inactive).
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Host name.
    pub hostname: String,
    /// Advertised address.
    pub node_addr: String,
    /// Whether this node is a manager.
    pub control_available: bool,
    /// Cluster ID (empty when inactive).
    #[serde(rename = "ClusterID")]
    pub cluster_id: String,
    /// Number of managers (managers only).
    pub managers: usize,
    /// Number of nodes (managers only).
    pub nodes: usize,
    /// Known manager control addresses.
    pub remote_managers: Vec<RemoteManager>,
    /// Raft state as seen by this node (managers only).
    pub raft: Option<RaftInfo>,
    /// Heartbeat period in milliseconds.
    pub heartbeat_period_ms: u64,
    /// Silence after which a node is marked down.
    pub node_down_after_ms: u64,
    /// Expiry of this node's certificate, Unix milliseconds.
    pub cert_expiry: u64,
    /// Data port of the overlay.
    pub data_port: u16,
    /// The routing mesh on this node (active nodes only).
    #[serde(default)]
    pub routing_mesh: Option<RoutingMeshInfo>,
    /// Last error, if the node is in state `error`.
    pub error: String,
}

/// The routing mesh on one node, as `swarm info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RoutingMeshInfo {
    /// Data path: `ebpf` or `userspace`.
    pub dataplane: String,
    /// Published ports open on this node (TCP and UDP).
    pub published_ports: usize,
    /// Networks whose VIPs this node serves.
    pub vip_networks: usize,
    /// TCP connections relayed now (userspace path).
    pub tcp_relays: usize,
    /// UDP flows alive now (userspace path).
    pub udp_flows: usize,
}

/// A manager as listed by `swarm info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RemoteManager {
    /// Node ID.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Control address.
    pub addr: String,
}

/// Raft state of a manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RaftInfo {
    /// Raft member ID of this manager.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Raft ID of the leader, if known.
    pub leader: Option<u64>,
    /// Node ID of the leader, if known.
    pub leader_node_id: Option<String>,
    /// Index of the last log entry.
    pub last_log_index: u64,
    /// Index of the last applied entry.
    pub last_applied: u64,
    /// Index of the last snapshot.
    pub snapshot_index: u64,
    /// Whether this manager currently has a quorum behind it.
    pub has_quorum: bool,
}

/// Request body for `node update`, `promote`, `demote`.
pub type NodeUpdateRequest = NodeUpdate;

/// Query of `DELETE /v1/nodes/{node}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeRemoveQuery {
    /// Remove even if the node is not down.
    #[serde(default)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_in() {
        assert_eq!(
            path(routes::NODE_UPDATE, &[("node", "abc")]),
            "/v1/nodes/abc/update"
        );
        assert_eq!(
            path(routes::JOIN_TOKEN_ROTATE, &[("role", "worker")]),
            "/v1/swarm/join-token/worker/rotate"
        );
        assert!(routes::NODES.starts_with(PREFIX));
    }

    #[test]
    fn error_kinds_map_to_status() {
        assert_eq!(ErrorKind::NoQuorum.status(), 503);
        assert_eq!(ErrorKind::NotFound.status(), 404);
        let e: ErrorBody = crate::ValidationError::new("--x", "bad", "fix it").into();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("--x"));
    }
}

/// Filters of `GET /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskQuery {
    /// Only tasks of this service (ID, name or ID prefix).
    #[serde(default)]
    pub service: Option<String>,
    /// Only tasks on this node (ID, hostname or ID prefix).
    #[serde(default)]
    pub node: Option<String>,
    /// Only standalone containers.
    #[serde(default)]
    pub containers: bool,
    /// Only tasks whose desired state is running (`--filter desired-state=running`).
    #[serde(default)]
    pub running: bool,
}

/// Query of `GET /v1/tasks/{task}/logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LogsQuery {
    /// Byte offset to read from (0: the beginning).
    #[serde(default)]
    pub offset: u64,
    /// Only the last `tail` lines (when `offset` is 0).
    #[serde(default)]
    pub tail: Option<u64>,
}

/// A piece of a task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LogChunk {
    /// Output, stdout and stderr merged in order (lossy UTF-8).
    pub data: String,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// Whether the task has ended: no more output will come.
    pub finished: bool,
}

/// `swarm run`: a standalone container on the node that is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RunRequest {
    /// `--name`; generated when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// What to run; `networks` must be attachable.
    pub spec: crate::service::TaskSpec,
}

/// `swarm image load -i FILE`: a path on the daemon's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageLoadRequest {
    /// Absolute path of an OCI image layout tarball or a `docker save` tarball.
    pub path: String,
}

/// An image in a node's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    /// `sha256:…` of its config.
    #[serde(rename = "ID")]
    pub id: String,
    /// `name:tag` references.
    pub repo_tags: Vec<String>,
    /// Unpacked size in bytes.
    pub size: u64,
    /// Creation time from the image config (RFC 3339), if any.
    #[serde(default)]
    pub created: String,
}
