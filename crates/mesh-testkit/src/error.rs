//! Errors of the lab.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, driving or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// the lab needs root (network namespaces, veth pairs, nftables): run it as root
    #[error(
        "the lab needs root (network namespaces, veth pairs, nftables): run it as root (effective uid is {euid})"
    )]
    NotRoot {
        /// The effective uid of this process.
        euid: u32,
    },

    /// invalid lab option `{field}`: {reason}
    #[error("invalid lab option `{field}`: {reason}")]
    InvalidOption {
        /// The option at fault (`hosts`, `dir`, ...).
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// {name} binary not found (looked at {searched}); build it with `cargo build -p {package}` or set {env} to its path
    #[error(
        "{name} binary not found (looked at {searched}); build it with `cargo build -p {package}` or set {env} to its path"
    )]
    BinaryNotFound {
        /// The binary's file name.
        name: &'static str,
        /// The cargo package that builds it.
        package: &'static str,
        /// The environment variable that overrides the search.
        env: &'static str,
        /// The places that were tried.
        searched: String,
    },

    /// {what}: {source}
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `{command}` failed ({status}): {stderr}
    #[error("`{command}` failed ({status}): {stderr}{}", stdout_suffix(stdout))]
    CommandFailed {
        /// The command line.
        command: String,
        /// Exit status (128 + signal when killed by a signal, -1 when it could not run).
        status: i32,
        /// Its standard error, trimmed.
        stderr: String,
        /// Its standard output, trimmed.
        stdout: String,
    },

    /// meshd of host{host} exited ({status}) before accepting connections on its socket; log {log}: ...
    #[error(
        "meshd of host{host} exited ({status}) before accepting connections on its socket; last lines of {}:\n{tail}",
        log.display()
    )]
    DaemonExited {
        /// Host index (1-based).
        host: usize,
        /// How it exited.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// meshd of host{host} did not accept connections on {socket} within {timeout:?}; log {log}: ...
    #[error(
        "meshd of host{host} did not accept connections on {} within {timeout:.1?}; last lines of {}:\n{tail}",
        socket.display(),
        log.display()
    )]
    DaemonNotReady {
        /// Host index (1-based).
        host: usize,
        /// The socket that was polled.
        socket: PathBuf,
        /// How long the lab waited.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// meshd of host{host} is already running (pid {pid}): stop or kill it first
    #[error("meshd of host{host} is already running (pid {pid}): stop or kill it first")]
    DaemonRunning {
        /// Host index (1-based).
        host: usize,
        /// Its process id.
        pid: u32,
    },

    /// the lab has been torn down
    #[error("the lab has been torn down")]
    TornDown,

    /// demo step `{step}` failed: {source}
    #[error("demo step `{step}` failed: {source}")]
    DemoStep {
        /// The step's title.
        step: String,
        /// Why it failed.
        #[source]
        source: Box<LabError>,
    },

    /// timed out after {timeout:?} waiting for {what}; logs: ...
    #[error("timed out after {timeout:?} waiting for {what}\n{logs}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// For how long.
        timeout: Duration,
        /// The tail of every host's log.
        logs: String,
    },

    /// lab start failed (files kept in {dir}): {source}
    #[error("lab start failed (files kept in {}): {source}", dir.display())]
    StartFailed {
        /// The lab directory, kept for inspection.
        dir: PathBuf,
        /// Why it failed.
        #[source]
        source: Box<LabError>,
    },
}

fn stdout_suffix(stdout: &str) -> String {
    if stdout.is_empty() {
        String::new()
    } else {
        format!(" (stdout: {stdout})")
    }
}

impl LabError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
