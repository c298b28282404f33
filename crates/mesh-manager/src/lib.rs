//! The manager plane of meshd.
//!
//! - [`state`]: the replicated cluster state and the commands that change it (pure).
//! - [`dispatcher`]: heartbeat bookkeeping and down detection (pure).
//! - [`ipam`]: overlay subnets and addresses (pure).
//! - [`mesh`]: the ingress network, load-balancer addresses, what each node's mesh serves (pure).
//! - [`roles`]: reconciling desired manager roles with Raft membership (pure).
//! - [`rpc`]: the node-to-manager messages carried over QUIC.
//! - [`manager`]: the runtime that ties them to the store and the transport.

pub mod dispatcher;
pub mod error;
pub mod ipam;
pub mod manager;
pub mod mesh;
pub mod orchestration;
pub mod roles;
pub mod rpc;
pub mod state;
pub mod tasks;

pub use error::ManagerError;
pub use manager::{Manager, ManagerConfig};
pub use state::{ClusterState, Command, Output};
