//! Errors of manager operations, mapped to API errors and to RPC errors.

use mesh_api::ValidationError;
use mesh_api::api::{ErrorBody, ErrorKind};
use mesh_transport::RemoteError;

use crate::rpc::codes;
use crate::state::{RejectKind, Rejected};

/// Why a manager operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// {0}
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The object was not found.
    #[error("{0}")]
    NotFound(String),
    /// The replicated state refused the change.
    #[error("{}", .0.message)]
    Rejected(Rejected),
    /// No majority of managers is reachable.
    #[error("{0}")]
    NoQuorum(String),
    /// The join token was refused.
    #[error("{0}")]
    BadToken(String),
    /// The caller presented no certificate of this cluster.
    #[error("this call needs a node certificate of this cluster")]
    Unauthenticated,
    /// The caller's role may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Only the leader does this; the payload is the leader's address if known.
    #[error("not the leader (leader: {0})")]
    NotLeader(String),
    /// The node was removed from the cluster.
    #[error("node {0} was removed from the cluster; join again with a new token")]
    Removed(String),
    /// The cluster has not been initialised.
    #[error("the cluster is not initialised yet")]
    NoCluster,
    /// Certificates could not be made or read.
    #[error("certificate authority: {0}")]
    Pki(String),
    /// The store failed.
    #[error("replicated store: {0}")]
    Store(String),
    /// A message could not be decoded.
    #[error("bad request: {0}")]
    Decode(String),
}

impl From<mesh_store::StoreError> for ManagerError {
    fn from(e: mesh_store::StoreError) -> Self {
        if matches!(e, mesh_store::StoreError::NoQuorum { .. }) {
            ManagerError::NoQuorum(e.to_string())
        } else {
            ManagerError::Store(e.to_string())
        }
    }
}

impl From<Rejected> for ManagerError {
    fn from(r: Rejected) -> Self {
        ManagerError::Rejected(r)
    }
}

impl From<ManagerError> for ErrorBody {
    fn from(e: ManagerError) -> Self {
        let kind = match &e {
            ManagerError::Invalid(_) | ManagerError::BadToken(_) | ManagerError::Decode(_) => {
                ErrorKind::InvalidArgument
            }
            ManagerError::NotFound(_) => ErrorKind::NotFound,
            ManagerError::Rejected(r) => match r.kind {
                RejectKind::NotFound => ErrorKind::NotFound,
                RejectKind::Conflict => ErrorKind::Conflict,
                RejectKind::FailedPrecondition => ErrorKind::FailedPrecondition,
            },
            ManagerError::NoQuorum(_) => ErrorKind::NoQuorum,
            ManagerError::Unauthenticated | ManagerError::PermissionDenied(_) => {
                ErrorKind::FailedPrecondition
            }
            ManagerError::Removed(_) | ManagerError::NoCluster => ErrorKind::FailedPrecondition,
            ManagerError::NotLeader(_) => ErrorKind::NoQuorum,
            ManagerError::Pki(_) | ManagerError::Store(_) => ErrorKind::Internal,
        };
        ErrorBody::new(kind, e.to_string())
    }
}

impl From<ManagerError> for RemoteError {
    fn from(e: ManagerError) -> Self {
        let code = match &e {
            ManagerError::BadToken(_) => codes::BAD_TOKEN,
            ManagerError::Unauthenticated => codes::UNAUTHENTICATED,
            ManagerError::PermissionDenied(_) => codes::PERMISSION_DENIED,
            ManagerError::NotLeader(_) => codes::NOT_LEADER,
            ManagerError::NoQuorum(_) => codes::NO_QUORUM,
            ManagerError::Removed(_) => codes::REMOVED,
            ManagerError::Invalid(_) | ManagerError::Decode(_) => codes::INVALID,
            ManagerError::NotFound(_) => codes::NOT_FOUND,
            ManagerError::Rejected(r) => match r.kind {
                RejectKind::NotFound => codes::NOT_FOUND,
                RejectKind::Conflict => codes::CONFLICT,
                RejectKind::FailedPrecondition => codes::FAILED_PRECONDITION,
            },
            _ => codes::INTERNAL,
        };
        let message = match &e {
            ManagerError::NotLeader(addr) => addr.clone(),
            other => other.to_string(),
        };
        RemoteError {
            code: code.to_string(),
            message,
        }
    }
}
