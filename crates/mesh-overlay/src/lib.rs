//! meshd's encrypted overlay data plane.
//!
//! Per overlay network and host, a sandbox namespace holds the network's gateway bridge, the
//! local endpoints' veths and a TUN device `wg0`; this crate's userspace WireGuard engine
//! (boringtun's `noise::Tunn` per peer) moves packets between those TUN devices and one UDP
//! socket per host, routing by inner address to the peer host that serves it.
//!
//! - [`Overlay::start`] binds the UDP socket and starts the engine threads;
//!   [`Overlay::apply`] reconciles sandboxes, TUN devices, endpoints, routes and peers with a
//!   [`HostPlan`]; [`Overlay::status`] reports; [`Overlay::shutdown`] stops the engine and
//!   leaves sandboxes and endpoints for the next start to adopt.
//! - A [`KeyPair`] per (host, network) keeps networks apart on the shared socket, even with
//!   overlapping subnets: handshakes find their network by the key they were made for, every
//!   later message by its receiver index.
//! - [`RoutingTable`] is the pure cryptokey routing of one network.

mod engine;
mod error;
mod gro;
mod keys;
mod overlay;
mod plan;
pub mod routing;
mod sandbox;
mod tun;
mod udp;

pub use engine::EngineCounters;
pub use error::OverlayError;
pub use keys::{KEY_LEN, KeyPair, PublicKey};
pub use overlay::{NetworkStatus, Overlay, OverlayStatus, PeerStatus};
pub use plan::{
    ENDPOINT_ID_CHARS, HostPlan, LocalEndpoint, MAX_MTU, MIN_MTU, NetworkPlan, OverlayConfig,
    PeerPlan, SANDBOX_ID_LEN, TUN_NAME, sandbox_name, validate_config, validate_plan,
};
pub use routing::RoutingTable;
pub use udp::{Group, gso_groups};
