//! Errors of the transport.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// An error returned by the remote handler. It travels back to the caller intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// A short machine-readable code, e.g. `permission_denied` or `not_leader`.
    pub code: String,
    /// A human-readable message.
    pub message: String,
}

impl RemoteError {
    /// Builds an error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Why a call did not return the remote handler's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// the remote handler answered with an error: {0}
    #[error("the remote handler answered with an error: {0}")]
    Remote(RemoteError),

    /// no answer within the call's timeout
    #[error("no answer within the call's timeout")]
    Timeout,

    /// {0}
    #[error("{0}")]
    Connect(String),

    /// {0}
    #[error("{0}")]
    Io(String),

    /// the CA certificate served by {addr} has digest {got} but the join token pins {expected};
    /// check the manager address and the token (someone may be impersonating the manager)
    #[error(
        "the CA certificate served by {addr} has digest {got} but the join token pins \
         {expected}; check the manager address and the token (someone may be impersonating \
         the manager)"
    )]
    CaMismatch {
        /// The address the CA was fetched from.
        addr: SocketAddr,
        /// The digest in the token.
        expected: String,
        /// The digest of what the server sent.
        got: String,
    },
}

/// Why a transport could not be set up or reconfigured.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// invalid identity {field}: {reason}; pass the node's credentials as saved by
    /// `NodeCredentials::save` (PEM)
    #[error(
        "invalid identity {field}: {reason}; pass the node's credentials as saved by \
         `NodeCredentials::save` (PEM)"
    )]
    Identity {
        /// `ca_cert_pem`, `cert_pem` or `key_pem`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// cannot build the TLS configuration: {0}
    #[error("cannot build the TLS configuration: {0}")]
    Tls(String),

    /// cannot listen on {addr}: {source}; choose a free UDP address or stop the process using it
    #[error(
        "cannot listen on {addr}: {source}; choose a free UDP address or stop the process \
         using it"
    )]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// the transport must be started from within a Tokio runtime
    #[error("the transport must be started from within a Tokio runtime")]
    NoRuntime,
}
