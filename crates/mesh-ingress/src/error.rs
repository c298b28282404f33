//! Errors of the routing mesh.

use std::io;

/// What went wrong in the routing mesh.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// invalid {field}: {problem}; {fix}
    #[error("invalid {field}: {problem}; {fix}")]
    Invalid {
        /// The field of the plan or config.
        field: String,
        /// What is wrong with it.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// {context}: {source}
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// the eBPF data path is not available here: {0}
    #[error("the eBPF data path is not available here: {0}")]
    EbpfUnavailable(String),
}

impl IngressError {
    /// An invalid field.
    pub fn invalid(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        IngressError::Invalid {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        IngressError::Io {
            context: context.into(),
            source,
        }
    }
}
