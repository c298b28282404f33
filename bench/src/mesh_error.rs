//! Errors of the routing-mesh benchmark.

use std::time::Duration;

use mesh_testkit::LabError;

/// Why the routing-mesh benchmark could not set up or measure something.
#[derive(Debug, thiserror::Error)]
pub enum MeshBenchError {
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
    /// `{command}` failed ({status}): {output}
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status, or how it ended.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// `{command}` was still running after {after:?} and was killed
    #[error("`{command}` was still running after {after:?} and was killed")]
    Hung {
        /// The command line.
        command: String,
        /// How long it was given.
        after: Duration,
    },
    /// cannot read {what} from {tool}'s output: {output}
    #[error("cannot read {what} from {tool}'s output: {output}")]
    Parse {
        /// The tool (`wrk`, `iperf3`).
        tool: &'static str,
        /// The figure looked for.
        what: &'static str,
        /// The output (its start).
        output: String,
    },
    /// timed out after {after:?} waiting for {what}{details}
    #[error("timed out after {after:?} waiting for {what}{details}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// Context (what was seen last, log tails), may be empty.
        details: String,
    },
    /// {program} is not installed: {fix}
    #[error("{program} is not installed: {fix}")]
    MissingProgram {
        /// The program.
        program: &'static str,
        /// How to install it.
        fix: &'static str,
    },
    /// unexpected cluster state: {0}
    #[error("unexpected cluster state: {0}")]
    Cluster(String),
}

impl MeshBenchError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        MeshBenchError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result of the routing-mesh benchmark's steps.
pub type Result<T, E = MeshBenchError> = std::result::Result<T, E>;

/// The last `max` characters of `s` (on a character boundary), for error messages.
pub fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end_on_a_character_boundary() {
        assert_eq!(tail("  short \n", 10), "short");
        assert_eq!(tail("abcdef", 3), "…def");
        assert_eq!(tail("aé", 1), "…");
        assert_eq!(tail("xéé", 3), "…é");
    }

    #[test]
    fn messages_name_the_field_and_the_fix() {
        let e = MeshBenchError::InvalidOption {
            field: "runs",
            reason: "0 is out of range; give 1 to 15".into(),
        };
        assert_eq!(
            e.to_string(),
            "bad option `runs`: 0 is out of range; give 1 to 15"
        );
    }
}
