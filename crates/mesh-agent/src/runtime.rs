//! The container runtime interface meshd drives, independent of the backend.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ContainerConfig;
use crate::error::RuntimeError;

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code: the process's own, or 128 + signal number when a signal killed it
    /// (137 for SIGKILL). 255 when the runtime itself failed (see `error`).
    pub code: i32,
    /// When the exit was recorded, in milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
    /// Set when the container never ran or its end was not observed: runc's own message
    /// (e.g. `exec: "/bin/nope": stat /bin/nope: no such file or directory`).
    pub error: Option<String>,
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// The bundle is prepared; not started yet (or starting right now).
    Created,
    /// Its process runs, with this host pid.
    Running {
        /// Host pid of the container's first process.
        pid: i32,
    },
    /// It ran and ended.
    Exited(Exit),
    /// No such container.
    Missing,
}

impl ContainerState {
    /// A one-word name: `created`, `running`, `exited`, `missing`.
    pub fn name(&self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running { .. } => "running",
            ContainerState::Exited(_) => "exited",
            ContainerState::Missing => "missing",
        }
    }
}

/// What a command run with `exec` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Its exit code (128 + signal when killed by one).
    pub exit_code: i32,
    /// Its standard output, lossily decoded, at most `EXEC_OUTPUT_LIMIT` bytes.
    pub stdout: String,
    /// Its standard error, likewise bounded.
    pub stderr: String,
    /// Whether some output was dropped to stay within the bound.
    pub truncated: bool,
}

/// How much of each of an exec's output streams is kept.
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// A container found on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Its id.
    pub id: String,
    /// Its name, as configured.
    pub name: String,
    /// The image reference it was created from.
    pub image: String,
    /// The id of that image.
    pub image_id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Its state now.
    pub state: ContainerState,
    /// The config it was created with.
    pub config: ContainerConfig,
}

/// A container runtime. Every method takes the container id; ids that are not valid are
/// refused with `RuntimeError::InvalidConfig` before anything touches the disk.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Prepares the bundle and root filesystem; the container does not run yet. Bad configs
    /// are refused with an error naming the field, and nothing is left behind.
    async fn create(&self, cfg: &ContainerConfig) -> Result<(), RuntimeError>;
    /// Starts a created container; returns once it runs, or with runc's error (e.g. a
    /// missing executable) if it cannot.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Sends the stop signal, waits up to `grace`, then SIGKILL; returns the exit. On a
    /// container that already exited, returns that exit.
    async fn stop(&self, id: &str, grace: Duration) -> Result<Exit, RuntimeError>;
    /// Resolves when the container has exited.
    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError>;
    /// The container's state now.
    async fn state(&self, id: &str) -> Result<ContainerState, RuntimeError>;
    /// Runs `argv` in the running container (its user, env and working directory), killing
    /// it after `timeout`; output is bounded.
    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError>;
    /// Deletes the container (killing it if it still runs), unmounts its root filesystem and
    /// removes its bundle. Succeeds on a container that does not exist.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every container found on disk, with its state, so a restarted daemon can adopt them.
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// The container's log file: stdout and stderr merged, in the order written. Read it with
    /// `read_log` or follow it with `LogFollower`.
    fn log_path(&self, id: &str) -> PathBuf;
}
