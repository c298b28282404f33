//! Errors of the store and of transports.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

/// Why a store operation failed.
///
/// Serializable, so that a leader's answer to a forwarded request reaches the caller intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    /// no quorum: {reachable} of {voters} managers reachable; writes are refused until a majority is back, reads still work
    #[error(
        "no quorum: {reachable} of {voters} managers reachable; writes are refused until a majority is back, reads still work"
    )]
    NoQuorum {
        /// Managers (voters) this member could reach recently, itself included.
        reachable: usize,
        /// Voters in the configuration.
        voters: usize,
    },
    /// the store is not part of a cluster yet: bootstrap it or add it to an existing cluster first
    #[error(
        "the store is not part of a cluster yet: bootstrap it or add it to an existing cluster first"
    )]
    NotInitialized,
    /// this member is not the leader (known leader: {leader:?}); send the request to the leader
    #[error(
        "this member is not the leader (known leader: {leader:?}); send the request to the leader"
    )]
    NotLeader {
        /// The leader this member knows of.
        leader: Option<u64>,
    },
    /// forwarding the request to leader {leader} at {addr} failed: {reason}
    #[error("forwarding the request to leader {leader} at {addr} failed: {reason}")]
    ForwardFailed {
        /// Raft id of the leader.
        leader: u64,
        /// Address the request was sent to.
        addr: String,
        /// What the transport or the leader reported.
        reason: String,
    },
    /// the operation did not complete within {after:?}; it may or may not have been applied
    #[error("the operation did not complete within {after:?}; it may or may not have been applied")]
    Timeout {
        /// The time limit that was reached.
        after: Duration,
    },
    /// storage error at {path}: {reason}
    #[error("storage error at {path}: {reason}")]
    Storage {
        /// File or directory involved.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// raft error: {reason}
    #[error("raft error: {reason}")]
    Raft {
        /// What openraft reported.
        reason: String,
    },
    /// membership change refused: {reason}
    #[error("membership change refused: {reason}")]
    Membership {
        /// Why it was refused.
        reason: String,
    },
    /// invalid store config field `{field}`: {reason}
    #[error("invalid store config field `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// invalid argument `{field}`: {reason}
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// The offending argument.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// could not encode or decode {what}: {reason}
    #[error("could not encode or decode {what}: {reason}")]
    Codec {
        /// What was being encoded or decoded.
        what: String,
        /// The codec's message.
        reason: String,
    },
    /// the store is shut down
    #[error("the store is shut down")]
    ShutDown,
}

impl StoreError {
    pub(crate) fn storage(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        StoreError::Storage {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn codec(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        StoreError::Codec {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn raft(reason: impl std::fmt::Display) -> Self {
        StoreError::Raft {
            reason: reason.to_string(),
        }
    }
}

/// Why a [`RaftTransport`](crate::RaftTransport) call failed.
///
/// Use `Unreachable` only when the request surely did not reach the target (no connection):
/// forwarded writes are retried on it. Once the request may have been delivered, report
/// `Timeout` or `Other`, so that a write is never applied twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// member {target} is unreachable: {reason}
    #[error("member {target} is unreachable: {reason}")]
    Unreachable {
        /// Raft id of the target.
        target: u64,
        /// What the transport saw.
        reason: String,
    },
    /// no reply from member {target} within {after:?}
    #[error("no reply from member {target} within {after:?}")]
    Timeout {
        /// Raft id of the target.
        target: u64,
        /// The time limit.
        after: Duration,
    },
    /// transport error talking to member {target}: {reason}
    #[error("transport error talking to member {target}: {reason}")]
    Other {
        /// Raft id of the target.
        target: u64,
        /// What the transport saw.
        reason: String,
    },
}
