//! meshd node-to-node transport: QUIC with mutual TLS, request/response RPC.
//!
//! One [`Transport`] per node is both server and client on one UDP socket (ALPN `meshd/1`).
//! Every call is one bidirectional stream carrying a method name and a body; the answer is a
//! body or a [`RemoteError`]. Connections are cached per address and re-established when they
//! die.
//!
//! Trust: the node presents its certificate (and the CA) both as server and as client. Servers
//! accept clients without a certificate ([`Peer::Anonymous`]: a node that has not joined yet;
//! the [`Handler`] decides what it may call) but refuse, during the handshake, any client
//! certificate not issued by the cluster CA. Clients accept a server only if its certificate
//! chains to the cluster CA; the host name is not checked.
//!
//! Joining, before a node has a certificate:
//! 1. [`fetch_ca_pinned`] (or [`fetch_ca_insecure`] followed by the caller's own check of
//!    `mesh_pki::ca_digest` against the token) fetches the CA certificate from the manager
//!    without verifying the server, **then pins it**: its digest must equal the join token's.
//!    This is the step that stops a man in the middle from posing as the manager.
//! 2. [`call_anonymous`] sends the join request (token secret + CSR) to the manager, verifying
//!    the manager against the pinned CA and presenting no certificate.
//! 3. With the signed certificate, [`Transport::bind`] starts the node's transport.

mod error;
mod tls;
mod transport;
mod wire;

use futures::future::BoxFuture;
use mesh_api::NodeRole;
use mesh_pki::NodeCredentials;

pub use error::{CallError, RemoteError, TransportError};
pub use tls::{ALPN, IDLE_TIMEOUT, KEEP_ALIVE, api_server_config};
pub use transport::{Transport, call_anonymous, fetch_ca_insecure, fetch_ca_pinned};
pub use wire::{MAX_MESSAGE_SIZE, MAX_METHOD_LEN};

/// The method a server answers with its CA certificate (PEM), for anyone, anonymous included.
/// The [`Handler`] implements it; [`fetch_ca_insecure`] calls it.
pub const METHOD_CA: &str = "ca";

/// The credentials a node presents: the cluster CA, its certificate and its key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// Cluster root certificate(s); peers must chain to one of them. With several (a CA
    /// rotation), the first one must be the issuer of `cert_pem`.
    pub ca_cert_pem: String,
    /// This node's certificate.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl From<NodeCredentials> for Identity {
    fn from(c: NodeCredentials) -> Self {
        Self {
            ca_cert_pem: c.ca_cert_pem,
            cert_pem: c.cert_pem,
            key_pem: c.key_pem,
        }
    }
}

impl From<&NodeCredentials> for Identity {
    fn from(c: &NodeCredentials) -> Self {
        c.clone().into()
    }
}

impl Identity {
    /// Checks that the certificate is signed by the CA and certifies the key.
    pub fn validate(&self) -> Result<(), TransportError> {
        let creds = NodeCredentials {
            ca_cert_pem: self.ca_cert_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        };
        creds.validate().map_err(|e| TransportError::Identity {
            field: "cert_pem",
            reason: e.to_string(),
        })
    }

    /// Who this identity says we are.
    pub fn peer(&self) -> Result<Peer, TransportError> {
        let id =
            mesh_pki::parse_node_cert(&self.cert_pem).map_err(|e| TransportError::Identity {
                field: "cert_pem",
                reason: e.to_string(),
            })?;
        Ok(Peer::Node {
            node_id: id.node_id,
            role: id.role,
            cluster_id: id.cluster_id,
        })
    }
}

/// Who is on the other end of a connection, as its verified certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A client without a certificate (a node that has not joined yet).
    Anonymous,
    /// A node of the cluster.
    Node {
        /// Its node id.
        node_id: String,
        /// Its role.
        role: NodeRole,
        /// Its cluster id.
        cluster_id: String,
    },
}

impl Peer {
    /// The node id, unless anonymous.
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Peer::Anonymous => None,
            Peer::Node { node_id, .. } => Some(node_id),
        }
    }

    /// The role, unless anonymous.
    pub fn role(&self) -> Option<NodeRole> {
        match self {
            Peer::Anonymous => None,
            Peer::Node { role, .. } => Some(*role),
        }
    }

    /// Whether the peer is a manager.
    pub fn is_manager(&self) -> bool {
        self.role() == Some(NodeRole::Manager)
    }
}

/// What a server does with each request. Called once per call, concurrently.
pub trait Handler: Send + Sync + 'static {
    /// Answers `method` with `body` from `peer`, or refuses with a [`RemoteError`] that the
    /// caller receives intact. A panic is answered with the error code `internal`.
    fn handle(
        &self,
        peer: Peer,
        method: String,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, RemoteError>>;
}
