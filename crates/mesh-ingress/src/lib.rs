//! The routing mesh of meshd: published ports open on every node, each new connection (or
//! UDP flow) going round-robin to a healthy task anywhere in the cluster, and service VIPs
//! balanced over the healthy tasks for the tasks of a network.
//!
//! meshd builds a [`MeshPlan`] from the network map and hands it to a data path. Two data
//! paths have the same behaviour:
//! - the eBPF path ([`ebpf`]): programs in C under `ebpf/` compiled by clang, loaded with
//!   aya;
//! - the userspace twin ([`userspace`]): tokio listeners, TCP relayed with `splice(2)`.
//!
//! meshd leaves out of the plan the tasks of nodes that stop answering the probes of
//! [`peers`].

pub mod ebpf;
mod error;
pub mod peers;
pub mod plan;
pub mod userspace;

pub use error::IngressError;
pub use plan::{Backend, Egress, Listener, MeshPlan, Proto, VipSandbox, VipService};

/// UDP port between the nodes' routing meshes, the same on every node: published-port
/// traffic handed to another node (eBPF path) and the nodes' liveness probes ([`peers`]).
pub const MESH_PORT: u16 = 51821;
