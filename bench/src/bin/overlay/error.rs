//! What can go wrong in the overlay benchmark.

use std::time::Duration;

/// Every failure of `mesh-bench-overlay`, each naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum OverlayBenchError {
    /// the lab failed: {0}
    #[error("the lab failed: {0}")]
    Lab(#[from] mesh_testkit::LabError),

    /// `--{field}`: {reason}
    #[error("`--{field}`: {reason}")]
    InvalidOption {
        /// The option at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// `{tool}` is not installed; {fix}
    #[error("`{tool}` is not installed; {fix}")]
    MissingTool {
        /// The program looked for in `PATH`.
        tool: String,
        /// How to get it.
        fix: String,
    },

    /// could not start `{command}`: {source}
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// `{command}` failed ({status}): {stderr}
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (or output), trimmed.
        stderr: String,
    },

    /// `{command}` did not finish within {timeout:?} and was killed
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    CommandTimeout {
        /// The command line.
        command: String,
        /// How long it was given.
        timeout: Duration,
    },

    /// waited {timeout:?} in vain for {what}
    #[error("waited {timeout:?} in vain for {what}")]
    Wait {
        /// What was awaited.
        what: String,
        /// For how long.
        timeout: Duration,
    },

    /// unexpected output of {what}: {reason}
    #[error("unexpected output of {what}: {reason}")]
    Output {
        /// Which command or file.
        what: String,
        /// What was wrong with it.
        reason: String,
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
}

impl OverlayBenchError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        OverlayBenchError::Io {
            what: what.into(),
            source,
        }
    }

    /// Unexpected output of `what`.
    pub fn output(what: impl Into<String>, reason: impl Into<String>) -> Self {
        OverlayBenchError::Output {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Results of this benchmark.
pub type Result<T, E = OverlayBenchError> = std::result::Result<T, E>;
