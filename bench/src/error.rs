//! Errors of the benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use mesh_testkit::LabError;

/// Why a benchmark could not run or measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// lab: {0}
    #[error("lab: {0}")]
    Lab(#[from] LabError),
    /// bad option `{field}`: {reason}
    #[error("bad option `{field}`: {reason}")]
    InvalidOption {
        /// The option.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// cannot {what}: {source}
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// cannot reach {target}: {reason}
    #[error("cannot reach {target}: {reason}")]
    Connect {
        /// The endpoint.
        target: String,
        /// Why.
        reason: String,
    },
    /// HTTP exchange with {target} failed: {reason}
    #[error("HTTP exchange with {target} failed: {reason}")]
    Http {
        /// The endpoint and path.
        target: String,
        /// Why.
        reason: String,
    },
    /// {target} answered {status}: {body}
    #[error("{target} answered {status}: {body}")]
    Status {
        /// The endpoint and path.
        target: String,
        /// HTTP status.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// {target} answered something that is not the expected JSON ({source}): {body}
    #[error("{target} answered something that is not the expected JSON ({source}): {body}")]
    Decode {
        /// The endpoint and path.
        target: String,
        /// The parse error.
        source: serde_json::Error,
        /// The answer's body (truncated).
        body: String,
    },
    /// timed out after {after:?} waiting for {what}{details}
    #[error("timed out after {after:?} waiting for {what}{details}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// Context (log tails), may be empty.
        details: String,
    },
    /// {program} is not installed ({path} not found): {fix}
    #[error("{program} is not installed ({path} not found): {fix}")]
    MissingProgram {
        /// The program.
        program: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to install it.
        fix: &'static str,
    },
    /// unexpected cluster state: {0}
    #[error("unexpected cluster state: {0}")]
    Cluster(String),
    /// interrupted
    #[error("interrupted")]
    Interrupted,
}

impl BenchError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    /// A timeout without extra details.
    pub fn timeout(what: impl Into<String>, after: Duration) -> Self {
        BenchError::Timeout {
            what: what.into(),
            after,
            details: String::new(),
        }
    }
}
