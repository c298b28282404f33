//! The object model of meshd and the messages of its control API.
//!
//! Everything here is plain data plus pure validation: no sockets, files or clocks.
//! Timestamps are Unix milliseconds handed in by the caller.

pub mod api;
pub mod cluster;
pub mod constraint;
pub mod error;
pub mod ids;
pub mod network;
pub mod node;
pub mod service;
pub mod task;

pub use cluster::{Cluster, ClusterSpec, DispatcherConfig, JoinTokens, RootCa};
pub use error::ValidationError;
pub use ids::new_id;
pub use network::{
    ConnectRequest, ConnectResponse, DisconnectRequest, Endpoint, EndpointOwner, Network,
    NetworkSpec, NetworkView,
};
pub use node::{
    Availability, ManagerStatus, Node, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus,
    Reachability,
};
pub use service::DEFAULT_TASK_HISTORY;
pub use service::{
    ContainerSpec, EndpointMode, EndpointSpec, FailureAction, HealthConfig, Mount, MountType,
    NetworkAttachmentConfig, Placement, PortConfig, Protocol, PublishMode, ResourceAmounts,
    Resources, RestartCondition, RestartPolicy, Service, ServiceMode, ServiceSpec, ServiceUpdate,
    ServiceView, TaskSpec, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus, VirtualIp,
};
pub use task::{Health, Task, TaskAttachment, TaskState, TaskStatus, TaskStatusUpdate};
