//! Errors of the `swarm` CLI. Each variant's message is what the user reads on stderr.

use std::io;
use std::path::PathBuf;

/// Everything that can make a `swarm` command fail (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Error response from daemon: {message}
    #[error("Error response from daemon: {message}")]
    Daemon {
        /// HTTP status of the answer.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// Cannot connect to the meshd daemon at {host}. Is meshd running?
    #[error("Cannot connect to the meshd daemon at {host}. Is meshd running?")]
    Connect {
        /// The host as the user gave it (`unix:///…` or `tcp://…`).
        host: String,
        /// Why the connection failed.
        #[source]
        source: io::Error,
    },
    /// permission denied while trying to connect to the meshd daemon socket at {host}: …
    #[error(
        "permission denied while trying to connect to the meshd daemon socket at {host}: {source}; run swarm as root or as a member of the socket's group"
    )]
    PermissionDenied {
        /// The host as the user gave it.
        host: String,
        /// The refusal.
        #[source]
        source: io::Error,
    },
    /// TLS handshake with the meshd daemon at {host} failed: …
    #[error(
        "TLS handshake with the meshd daemon at {host} failed: {source}; check that --tlscacert is the cluster's root CA and --tlscert/--tlskey a node certificate it signed"
    )]
    TlsHandshake {
        /// The host as the user gave it.
        host: String,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// talking to the meshd daemon at {host} failed: …
    #[error("talking to the meshd daemon at {host} failed: {source}")]
    Http {
        /// The host as the user gave it.
        host: String,
        /// The HTTP-level failure.
        #[source]
        source: hyper::Error,
    },
    /// the meshd daemon answered {route} with something swarm does not understand: …
    #[error(
        "the meshd daemon answered {route} with something swarm does not understand: {detail}; check that swarm and meshd are the same version (`swarm version`)"
    )]
    Decode {
        /// The route whose answer could not be read.
        route: String,
        /// What is wrong with it.
        detail: String,
    },
    /// cannot build the request for {route}: …
    #[error("cannot build the request for {route}: {detail}")]
    Request {
        /// The route of the request.
        route: String,
        /// What is wrong with it.
        detail: String,
    },
    /// TCP hosts need mutual TLS: …
    #[error(
        "{host} needs mutual TLS but {missing} is not set; pass --tlscacert, --tlscert and --tlskey, or set SWARM_CERT_PATH to a directory holding ca.crt, node.crt and node.key"
    )]
    MissingTls {
        /// The host as the user gave it.
        host: String,
        /// The flag that has no value.
        missing: &'static str,
    },
    /// cannot read {flag} file {path}: …
    #[error("cannot read {flag} file {}: {source}", path.display())]
    ReadFile {
        /// The flag the file came from.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// invalid {flag} file {path}: …
    #[error("invalid {flag} file {}: {problem}", path.display())]
    BadPem {
        /// The flag the file came from.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it and how to fix it.
        problem: String,
    },
    /// the TLS client settings were refused: …
    #[error("the TLS client settings were refused: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// A local check of the user's input failed; the message names the field and the fix.
    #[error(transparent)]
    Invalid(#[from] mesh_api::ValidationError),
    /// `self` was given but this node is not part of a swarm.
    #[error(
        "this node is not part of a swarm, so `self` names no node; run `swarm init` or `swarm join` first"
    )]
    NotInSwarm,
    /// cannot write the output: …
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
    /// cannot start the I/O runtime: …
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(#[source] io::Error),
    /// Some of the objects a command was given failed; each failure was already printed.
    #[error("{failed} of {total} operations failed")]
    SomeFailed {
        /// How many failed.
        failed: usize,
        /// How many were attempted.
        total: usize,
    },
    /// The container `swarm run` followed exited with a non-zero code, which becomes the
    /// exit code of `swarm` (its output said why).
    #[error("the container exited with code {code}")]
    ContainerExit {
        /// The container's exit code (1 to 255).
        code: u8,
    },
    /// container {name} did not run: {reason}
    #[error(
        "container {name} did not run: {reason}; see `swarm container ls -a` and `swarm container logs {name}`"
    )]
    ContainerFailed {
        /// The container's name.
        name: String,
        /// The error the node reported.
        reason: String,
    },
    /// service {service} did not converge within {waited}: {progress}
    #[error(
        "service {service} did not converge within {waited}: {progress}; it goes on converging in the background, see `swarm service ps {service}`"
    )]
    NotConverged {
        /// The service's name.
        service: String,
        /// How long swarm waited.
        waited: String,
        /// The last progress line.
        progress: String,
    },
    /// the update of service {service} stopped: {reason}
    #[error(
        "the update of service {service} stopped: {reason}; see `swarm service ps {service}`, then `swarm service update {service}` again or `swarm service rollback {service}`"
    )]
    UpdateStopped {
        /// The service's name.
        service: String,
        /// What the orchestrator said.
        reason: String,
    },
}

impl CliError {
    /// Whether the message was already printed (so `main` prints nothing more).
    pub fn already_reported(&self) -> bool {
        matches!(
            self,
            CliError::SomeFailed { .. } | CliError::ContainerExit { .. }
        )
    }

    /// The exit code of `swarm` for this failure: the container's own for
    /// [`CliError::ContainerExit`], 125 when a container did not run (docker's code for
    /// "the container could not be run"), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::ContainerExit { code } => *code,
            CliError::ContainerFailed { .. } => EXIT_CONTAINER_FAILED,
            _ => crate::EXIT_FAILURE,
        }
    }

    /// Whether this is a closed stdout (`swarm node ls | head`), which is no failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Exit code of `swarm run` when its container could not run at all (docker's 125).
pub const EXIT_CONTAINER_FAILED: u8 = 125;

/// Result of a CLI operation.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_render_like_docker() {
        let e = CliError::Daemon {
            status: 404,
            message: "no such node: x".into(),
        };
        assert_eq!(e.to_string(), "Error response from daemon: no such node: x");
    }

    #[test]
    fn connect_errors_render_like_docker() {
        let e = CliError::Connect {
            host: "unix:///run/meshd/meshd.sock".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(
            e.to_string(),
            "Cannot connect to the meshd daemon at unix:///run/meshd/meshd.sock. Is meshd running?"
        );
    }

    #[test]
    fn missing_tls_names_the_flag_and_the_fix() {
        let e = CliError::MissingTls {
            host: "tcp://10.0.0.1:2376".into(),
            missing: "--tlscert",
        };
        let s = e.to_string();
        assert!(s.contains("--tlscert is not set"), "{s}");
        assert!(s.contains("SWARM_CERT_PATH"), "{s}");
    }

    #[test]
    fn validation_errors_pass_through() {
        let e: CliError =
            mesh_api::ValidationError::new("--label-add", "empty label key", "write k=v").into();
        assert_eq!(
            e.to_string(),
            "invalid --label-add: empty label key; write k=v"
        );
    }

    #[test]
    fn exit_codes_follow_docker_run() {
        assert_eq!(CliError::ContainerExit { code: 3 }.exit_code(), 3);
        assert!(CliError::ContainerExit { code: 3 }.already_reported());
        let e = CliError::ContainerFailed {
            name: "job".into(),
            reason: "no such image: x".into(),
        };
        assert_eq!(e.exit_code(), 125);
        assert!(e.to_string().contains("swarm container logs job"), "{e}");
        assert_eq!(CliError::NotInSwarm.exit_code(), 1);
    }

    #[test]
    fn broken_pipe_is_recognised() {
        assert!(CliError::Output(io::Error::from(io::ErrorKind::BrokenPipe)).is_broken_pipe());
        assert!(!CliError::Output(io::Error::from(io::ErrorKind::Other)).is_broken_pipe());
        assert!(
            CliError::SomeFailed {
                failed: 1,
                total: 2
            }
            .already_reported()
        );
    }
}
