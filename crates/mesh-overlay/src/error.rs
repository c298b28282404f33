//! Errors of the overlay.

use std::io;

/// What went wrong in the overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// invalid {field}: {problem}; {fix}
    #[error("invalid {field}: {problem}; {fix}")]
    InvalidPlan {
        /// The field that is wrong, e.g. `networks[n1].peers[p2].allowed_ips`.
        field: String,
        /// What is wrong with it.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// cannot bind the overlay UDP socket on 0.0.0.0:{port}: {source}; is another meshd or WireGuard using that port? Pick another data port
    #[error(
        "cannot bind the overlay UDP socket on 0.0.0.0:{port}: {source}; is another meshd or \
         WireGuard using that port? Pick another data port"
    )]
    Bind {
        /// The data port.
        port: u16,
        /// The OS error.
        source: io::Error,
    },
    /// overlay UDP socket: {what}: {source}
    #[error("overlay UDP socket: {what}: {source}")]
    Socket {
        /// The operation that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// network {network}: cannot create TUN device {ifname} in sandbox {sandbox}: {source}
    #[error("network {network}: cannot create TUN device {ifname} in sandbox {sandbox}: {source}")]
    Tun {
        /// Network ID.
        network: String,
        /// Sandbox namespace name.
        sandbox: String,
        /// Interface name.
        ifname: String,
        /// The OS error.
        source: io::Error,
    },
    /// {what}: {source}
    #[error("{what}: {source}")]
    Sandbox {
        /// What was being done, naming the network, sandbox or endpoint.
        what: String,
        /// The sandbox layer's error.
        source: crate::sandbox::SandboxError,
    },
    /// cannot start the overlay's {name} thread: {source}
    #[error("cannot start the overlay's {name} thread: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// the overlay plan was applied only in part ({} problem(s)): {}; apply it again to retry
    #[error(
        "the overlay plan was applied only in part ({} problem(s)): {}; apply it again to retry",
        .0.len(),
        .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
    )]
    Partial(Vec<OverlayError>),
}

impl OverlayError {
    pub(crate) fn invalid(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> OverlayError {
        OverlayError::InvalidPlan {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
