//! The error type of every operation of this crate.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// What went wrong while plumbing a sandbox, and where.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// invalid {field} `{value}`: {fix}
    #[error("invalid {field} `{value}`: {fix}")]
    InvalidSpec {
        /// The field of the spec or the argument that is wrong.
        field: &'static str,
        /// The value given.
        value: String,
        /// How to fix it.
        fix: String,
    },

    /// network namespace {path} does not exist (or is not a network namespace)
    #[error("network namespace {path} does not exist (or is not a network namespace)")]
    NetnsMissing {
        /// The path that was looked at.
        path: PathBuf,
    },

    /// cannot {op} for network namespace {path}: {source}
    #[error("cannot {op} for network namespace {path}: {source}")]
    Netns {
        /// The namespace concerned.
        path: PathBuf,
        /// What was being done (e.g. "bind-mount the new namespace").
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// cannot start a thread to work in network namespace {netns}: {source}
    #[error("cannot start a thread to work in network namespace {netns}: {source}")]
    Thread {
        /// The namespace concerned (`current` for the caller's own).
        netns: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// the thread working in network namespace {netns} panicked: {message}
    #[error("the thread working in network namespace {netns} panicked: {message}")]
    Panicked {
        /// The namespace concerned.
        netns: String,
        /// The panic message, when it was a string.
        message: String,
    },

    /// netlink: cannot {op} in network namespace {netns}: {detail}
    #[error("netlink: cannot {op} in network namespace {netns}: {detail}")]
    Netlink {
        /// The namespace concerned (`current` for the caller's own).
        netns: String,
        /// What was being done, naming the link (e.g. "create bridge br0").
        op: String,
        /// The errno the kernel answered with, when it answered with one.
        errno: Option<Errno>,
        /// The error as text.
        detail: String,
    },

    /// there is no link {link} in network namespace {netns}
    #[error("there is no link {link} in network namespace {netns}")]
    LinkMissing {
        /// The namespace concerned.
        netns: String,
        /// The interface name looked for.
        link: String,
    },

    /// sandbox {netns} is not set up ({what}): call ensure_sandbox first
    #[error("sandbox {netns} is not set up ({what}): call ensure_sandbox first")]
    NotReady {
        /// The sandbox namespace.
        netns: String,
        /// What is missing.
        what: String,
    },

    /// cannot set sysctl {key} in network namespace {netns}: {source}
    #[error("cannot set sysctl {key} in network namespace {netns}: {source}")]
    Sysctl {
        /// The namespace concerned.
        netns: String,
        /// The sysctl, as a path under /proc/sys.
        key: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// network namespace {netns} already has an interface {ifname} that is not the veth of endpoint {endpoint}: {fix}
    #[error(
        "network namespace {netns} already has an interface {ifname} that is not the veth of endpoint {endpoint}: {fix}"
    )]
    EndpointConflict {
        /// The endpoint's namespace.
        netns: String,
        /// The interface name asked for.
        ifname: String,
        /// The endpoint id.
        endpoint: String,
        /// How to fix it.
        fix: String,
    },

    /// there is no route towards {dst} in the current network namespace
    #[error("there is no route towards {dst} in the current network namespace")]
    NoRoute {
        /// The destination asked about.
        dst: std::net::IpAddr,
    },
}

impl SandboxError {
    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Netlink { errno, .. } => *errno,
            Self::Netns { source, .. }
            | Self::Thread { source, .. }
            | Self::Sysctl { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}
