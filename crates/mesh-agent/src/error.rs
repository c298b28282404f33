//! Error types of the image store and the runtime.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// no image matches `{reference}`: load it first (`ImageStore::load`) or check the name/tag
    #[error(
        "no image matches `{reference}`: load it first (`ImageStore::load`) or check the name/tag"
    )]
    ImageNotFound {
        /// The reference as the caller gave it.
        reference: String,
    },
    /// `{reference}` matches several images ({candidates}): give more of the id
    #[error("`{reference}` matches several images ({candidates}): give more of the id")]
    AmbiguousReference {
        /// The reference as the caller gave it.
        reference: String,
        /// The ids it matches, comma separated.
        candidates: String,
    },
    /// invalid image reference `{reference}`: {reason}
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        /// The reference as the caller gave it.
        reference: String,
        /// What is wrong and how to write it.
        reason: String,
    },
    /// image {image} is used by container(s) {containers}: remove them first or force the removal
    #[error(
        "image {image} is used by container(s) {containers}: remove them first or force the removal"
    )]
    ImageInUse {
        /// The image's id.
        image: String,
        /// The containers using it, comma separated.
        containers: String,
    },
    /// bad image archive {path}: {reason}
    #[error("bad image archive {path}: {reason}")]
    BadArchive {
        /// The archive being loaded.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// {context}: {source}
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// {context}: {source}
    #[error("{context}: {source}")]
    Json {
        /// What was being read or written, naming the path.
        context: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        ImageError::Json {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn bad(path: &std::path::Path, reason: impl Into<String>) -> Self {
        ImageError::BadArchive {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// What can go wrong in the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// image store: {0}
    #[error("image store: {0}")]
    Image(#[from] ImageError),
    /// invalid container config, field `{field}`: {reason}
    #[error("invalid container config, field `{field}`: {reason}")]
    InvalidConfig {
        /// The offending field, e.g. `mounts[1].target`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// container {id} already exists: remove it first or pick another id
    #[error("container {id} already exists: remove it first or pick another id")]
    AlreadyExists {
        /// The container id.
        id: String,
    },
    /// no container {id} in this runtime
    #[error("no container {id} in this runtime")]
    NotFound {
        /// The container id.
        id: String,
    },
    /// container {id} is {state}: {hint}
    #[error("container {id} is {state}: {hint}")]
    WrongState {
        /// The container id.
        id: String,
        /// The state it is in.
        state: String,
        /// What the caller can do instead.
        hint: String,
    },
    /// container {id} failed to start: {message}
    #[error("container {id} failed to start: {message}")]
    StartFailed {
        /// The container id.
        id: String,
        /// runc's or the shim's own words.
        message: String,
    },
    /// runc {action} {id} failed ({status}): {stderr}
    #[error("runc {action} {id} failed ({status}): {stderr}")]
    Runc {
        /// The runc subcommand.
        action: String,
        /// The container id.
        id: String,
        /// How runc exited.
        status: String,
        /// What runc printed on stderr.
        stderr: String,
    },
    /// exec in container {id} did not finish within {timeout:?}; it was killed
    #[error("exec in container {id} did not finish within {timeout:?}; it was killed")]
    ExecTimeout {
        /// The container id.
        id: String,
        /// The time it was given.
        timeout: Duration,
    },
    /// container {id}: {what} did not happen within {timeout:?}
    #[error("container {id}: {what} did not happen within {timeout:?}")]
    Timeout {
        /// The container id.
        id: String,
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
    },
    /// {context}: {source}
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the container and path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// {context}: {message}
    #[error("{context}: {message}")]
    Other {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
    },
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RuntimeError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn other(context: impl Into<String>, message: impl Into<String>) -> Self {
        RuntimeError::Other {
            context: context.into(),
            message: message.into(),
        }
    }
}
