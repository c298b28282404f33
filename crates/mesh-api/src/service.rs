//! Services: the desired state of replicated or global containers, and how to update them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::error::ValidationError;

/// Default stop grace period (docker's 10 s).
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;
/// Default number of finished tasks kept per slot (docker's `--task-history-limit` 5).
pub const DEFAULT_TASK_HISTORY: usize = 5;
/// First port of the range published ports are allocated from.
pub const PUBLISHED_PORT_MIN: u16 = 30000;
/// Last port of that range.
pub const PUBLISHED_PORT_MAX: u16 = 32767;

/// Kind of a container mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A named volume local to the node.
    #[default]
    Volume,
    /// A host path.
    Bind,
    /// A tmpfs.
    Tmpfs,
}

/// A mount in the container (`--mount type=…,source=…,target=…[,readonly]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Mount {
    /// Kind.
    #[serde(rename = "Type")]
    pub kind: MountType,
    /// Volume name or host path; empty for tmpfs.
    #[serde(default)]
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Size of a tmpfs in bytes (0: the kernel's default).
    #[serde(default)]
    pub tmpfs_size: u64,
}

/// A health check run inside the container (`--health-cmd` and friends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// Shell command (`/bin/sh -c CMD`); healthy when it exits 0.
    pub cmd: String,
    /// Time between checks, ms.
    pub interval_ms: u64,
    /// Time a check may take, ms.
    pub timeout_ms: u64,
    /// Consecutive failures before the task is unhealthy.
    pub retries: u32,
    /// Failures in this first period don't count, ms.
    #[serde(default)]
    pub start_period_ms: u64,
}

/// What a container runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSpec {
    /// Image reference, as loaded with `swarm image load`.
    pub image: String,
    /// Replaces the image's entrypoint (`--entrypoint`).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Arguments (the image's CMD when empty).
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default)]
    pub dir: Option<String>,
    /// `uid`, `uid:gid` or a user name of the image.
    #[serde(default)]
    pub user: Option<String>,
    /// Host name inside the container (the task's short ID when absent).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Mounts.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Signal that asks it to stop (`SIGTERM` when absent, or the image's).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL, ms.
    #[serde(default = "default_grace")]
    pub stop_grace_period_ms: u64,
    /// Health check; none when absent.
    #[serde(default)]
    pub healthcheck: Option<HealthConfig>,
    /// Container labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_grace() -> u64 {
    DEFAULT_STOP_GRACE_MS
}

/// CPU (billionths of a CPU) and memory (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceAmounts {
    /// `NanoCPUs`: 1 CPU = 1_000_000_000.
    #[serde(rename = "NanoCPUs")]
    pub nano_cpus: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

/// Limits (enforced through cgroups) and reservations (used by the scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Resources {
    /// `--limit-cpu`, `--limit-memory`.
    pub limits: ResourceAmounts,
    /// `--reserve-cpu`, `--reserve-memory`.
    pub reservations: ResourceAmounts,
}

/// When a finished task is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// When it failed.
    OnFailure,
    /// Always.
    #[default]
    Any,
}

impl RestartCondition {
    /// Flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        }
    }
}

/// `--restart-condition`, `--restart-delay`, `--restart-max-attempts`, `--restart-window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    /// When.
    pub condition: RestartCondition,
    /// Wait between the end of a task and the start of its replacement, ms.
    pub delay_ms: u64,
    /// Restarts allowed in the window; 0 = unlimited.
    pub max_attempts: u64,
    /// Window the attempts are counted in, ms; 0 = forever.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// Where tasks may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Placement {
    /// `--constraint` expressions, all of which must hold.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `--replicas-max-per-node`; 0 = unlimited.
    #[serde(default)]
    pub max_replicas: u64,
}

/// A network a service's tasks join (`--network NAME` or `--network name=N,alias=A`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAttachmentConfig {
    /// Network name or ID as given (resolved to the ID when stored).
    pub target: String,
    /// Extra DNS names on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// What each task of a service runs, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TaskSpec {
    /// The container.
    pub container: ContainerSpec,
    /// Resources.
    #[serde(default)]
    pub resources: Resources,
    /// Restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Placement.
    #[serde(default)]
    pub placement: Placement,
    /// Networks, by ID once stored.
    #[serde(default)]
    pub networks: Vec<NetworkAttachmentConfig>,
    /// Bumped by `service update --force` to replace tasks with an unchanged spec.
    #[serde(default)]
    pub force_update: u64,
}

/// Replicated (a number of tasks) or global (one task per eligible node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum ServiceMode {
    /// `--replicas N`.
    Replicated {
        /// Number of tasks.
        replicas: u64,
    },
    /// `--mode global`.
    Global,
}

impl Default for ServiceMode {
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

/// What to do when an update fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop the update and wait for the operator.
    #[default]
    Pause,
    /// Go on.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

impl FailureAction {
    /// Flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }
}

/// Whether a replaced task stops before its replacement starts, or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one.
    #[default]
    StopFirst,
    /// Start the new task, stop the old one once it runs.
    StartFirst,
}

impl UpdateOrder {
    /// Flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
    }
}

/// `--update-*` (and `--rollback-*`) settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateConfig {
    /// Tasks replaced at once; 0 = all at once.
    pub parallelism: u64,
    /// Wait between batches, ms.
    pub delay_ms: u64,
    /// What to do on failure.
    pub failure_action: FailureAction,
    /// How long a new task is watched for failure after it starts, ms.
    pub monitor_ms: u64,
    /// Fraction of failed tasks tolerated, in thousandths (`0.2` = 200).
    pub max_failure_permille: u32,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_permille: 0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// How clients reach the service: a VIP or DNS round-robin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP per network, balanced over the tasks.
    #[default]
    Vip,
    /// The name resolves to the tasks' addresses.
    Dnsrr,
}

/// Transport of a published port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a port is published on every node (routing mesh) or on the task's node only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Every node, any task.
    #[default]
    Ingress,
    /// The task's own node.
    Host,
}

/// A published port (`-p 8080:80/tcp` or `-p mode=host,published=80,target=80`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct PortConfig {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port inside the container.
    pub target_port: u16,
    /// Port on the nodes; allocated from 30000–32767 when 0 (ingress mode).
    #[serde(default)]
    pub published_port: u16,
    /// Ingress or host.
    #[serde(default)]
    pub publish_mode: PublishMode,
    /// Send a PROXY protocol v2 header with the client's address to the task before the
    /// connection's data (`proxy-protocol=v2`; TCP only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

/// `--endpoint-mode` and `--publish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpec {
    /// VIP or DNS round-robin.
    #[serde(default)]
    pub mode: EndpointMode,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
}

/// What an operator asks for with `swarm service create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    /// Unique name.
    pub name: String,
    /// Service labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What each task runs.
    pub task_template: TaskSpec,
    /// Replicated or global.
    #[serde(default)]
    pub mode: ServiceMode,
    /// Rolling update settings.
    #[serde(default)]
    pub update_config: UpdateConfig,
    /// Rollback settings.
    #[serde(default)]
    pub rollback_config: UpdateConfig,
    /// Endpoint settings.
    #[serde(default)]
    pub endpoint_spec: EndpointSpec,
}

/// State of a rolling update or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Replacing tasks.
    Updating,
    /// Stopped after failures; `service update` again or `rollback`.
    Paused,
    /// Every task runs the new spec.
    Completed,
    /// Going back to the previous spec.
    RollbackStarted,
    /// A rollback stopped after failures.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// Whether tasks are still being replaced.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

/// Progress of the last update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatus {
    /// Where it is.
    pub state: UpdateState,
    /// Start, Unix ms.
    pub started_at: u64,
    /// End, Unix ms (0 while in progress).
    #[serde(default)]
    pub completed_at: u64,
    /// Why it is in this state.
    #[serde(default)]
    pub message: String,
}

/// A service's virtual IP on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualIp {
    /// Network ID.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The address.
    pub addr: Ipv4Addr,
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    /// Service ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Raft index of the last change.
    pub version: u64,
    /// Creation time, Unix ms.
    pub created_at: u64,
    /// Last change, Unix ms.
    pub updated_at: u64,
    /// Desired spec.
    pub spec: ServiceSpec,
    /// Bumped whenever the task template changes; tasks carry the version they were made from.
    pub spec_version: u64,
    /// The spec before the last update, for `rollback`.
    #[serde(default)]
    pub previous_spec: Option<ServiceSpec>,
    /// The spec version of `previous_spec`.
    #[serde(default)]
    pub previous_spec_version: u64,
    /// Progress of the last update, if any.
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    /// Published ports with allocated numbers filled in.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// One VIP per network (endpoint mode `vip`).
    #[serde(default)]
    pub virtual_ips: Vec<VirtualIp>,
}

impl Service {
    /// Desired number of tasks of a replicated service.
    pub fn replicas(&self) -> Option<u64> {
        match self.spec.mode {
            ServiceMode::Replicated { replicas } => Some(replicas),
            ServiceMode::Global => None,
        }
    }
}

/// `swarm service update` as a delta; unset fields keep their value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceUpdate {
    /// Replace the whole spec with this one (API users); the other fields apply on top.
    #[serde(default)]
    pub spec: Option<ServiceSpec>,
    /// `--image`.
    #[serde(default)]
    pub image: Option<String>,
    /// `--replicas` / `scale`.
    #[serde(default)]
    pub replicas: Option<u64>,
    /// `--args` (replaces the arguments).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// `--env-add`.
    #[serde(default)]
    pub env_add: Vec<String>,
    /// `--env-rm` (names).
    #[serde(default)]
    pub env_rm: Vec<String>,
    /// `--constraint-add`.
    #[serde(default)]
    pub constraint_add: Vec<String>,
    /// `--constraint-rm`.
    #[serde(default)]
    pub constraint_rm: Vec<String>,
    /// `--update-*` settings replaced.
    #[serde(default)]
    pub update_config: Option<UpdateConfig>,
    /// `--rollback-*` settings replaced.
    #[serde(default)]
    pub rollback_config: Option<UpdateConfig>,
    /// `--health-cmd` and friends replaced (`Some(None)` removes the check).
    #[serde(default)]
    pub healthcheck: Option<Option<HealthConfig>>,
    /// `--force`: replace every task even if nothing changed.
    #[serde(default)]
    pub force: bool,
    /// `--rollback`: go back to the previous spec.
    #[serde(default)]
    pub rollback: bool,
}

impl ServiceUpdate {
    /// The spec after this update, or the error naming the field.
    pub fn apply(&self, current: &ServiceSpec) -> Result<ServiceSpec, ValidationError> {
        let mut spec = self.spec.clone().unwrap_or_else(|| current.clone());
        if let Some(image) = &self.image {
            spec.task_template.container.image = image.clone();
        }
        if let Some(r) = self.replicas {
            match spec.mode {
                ServiceMode::Replicated { .. } => {
                    spec.mode = ServiceMode::Replicated { replicas: r }
                }
                ServiceMode::Global => {
                    return Err(ValidationError::new(
                        "--replicas",
                        format!("service {:?} is global", spec.name),
                        "scale only replicated services; a global service runs one task per node",
                    ));
                }
            }
        }
        if let Some(args) = &self.args {
            spec.task_template.container.args = args.clone();
        }
        let env = &mut spec.task_template.container.env;
        for name in &self.env_rm {
            env.retain(|e| e.split('=').next() != Some(name.as_str()));
        }
        for kv in &self.env_add {
            let key = kv.split('=').next().unwrap_or_default().to_string();
            env.retain(|e| e.split('=').next() != Some(key.as_str()));
            env.push(kv.clone());
        }
        let cons = &mut spec.task_template.placement.constraints;
        for c in &self.constraint_rm {
            cons.retain(|x| x != c);
        }
        for c in &self.constraint_add {
            if !cons.contains(c) {
                cons.push(c.clone());
            }
        }
        if let Some(u) = self.update_config {
            spec.update_config = u;
        }
        if let Some(u) = self.rollback_config {
            spec.rollback_config = u;
        }
        if let Some(h) = &self.healthcheck {
            spec.task_template.container.healthcheck = h.clone();
        }
        if self.force {
            spec.task_template.force_update = spec.task_template.force_update.wrapping_add(1);
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// `swarm service scale NAME=N` and `ls`: a service with its task counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceView {
    /// The service.
    #[serde(flatten)]
    pub service: Service,
    /// Tasks running (desired running and observed running).
    pub running_tasks: u64,
    /// Tasks wanted (replicas, or eligible nodes for a global service).
    pub desired_tasks: u64,
}

/// Checks a service name like docker: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 63 characters.
pub fn validate_service_name(name: &str) -> Result<(), ValidationError> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if name.is_empty() || name.len() > 63 || !ok_first || !ok_rest {
        return Err(ValidationError::new(
            "--name",
            format!("{name:?} is not a valid service name"),
            "use 1 to 63 letters, digits, '_' or '-', starting with a letter or digit (it becomes a DNS name)",
        ));
    }
    Ok(())
}

fn validate_abs_path(field: &str, path: &str) -> Result<(), ValidationError> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(ValidationError::new(
            field,
            format!("{path:?} is not an absolute path"),
            "give an absolute path without '..', e.g. /data",
        ));
    }
    Ok(())
}

impl ContainerSpec {
    /// Validates the container part.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(ValidationError::new(
                "IMAGE",
                format!("{:?} is not an image reference", self.image),
                "give an image loaded with `swarm image load`, e.g. meshd-test:latest",
            ));
        }
        if self.command.as_ref().is_some_and(Vec::is_empty) {
            return Err(ValidationError::new(
                "--entrypoint",
                "an empty entrypoint",
                "give a program, or leave --entrypoint out to use the image's",
            ));
        }
        for e in &self.env {
            let key = e.split('=').next().unwrap_or_default();
            if key.is_empty() || !e.contains('=') {
                return Err(ValidationError::new(
                    "--env",
                    format!("{e:?} is not KEY=VALUE"),
                    "write each variable as KEY=VALUE",
                ));
            }
        }
        if let Some(dir) = &self.dir {
            validate_abs_path("--workdir", dir)?;
        }
        if let Some(u) = &self.user
            && (u.is_empty() || u.contains(char::is_whitespace))
        {
            return Err(ValidationError::new(
                "--user",
                format!("{u:?} is not a user"),
                "give uid, uid:gid or a user name of the image",
            ));
        }
        if let Some(h) = &self.hostname
            && (h.is_empty()
                || h.len() > 63
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            return Err(ValidationError::new(
                "--hostname",
                format!("{h:?} is not a host name"),
                "use letters, digits, '-' and '.', at most 63 characters",
            ));
        }
        let mut targets = std::collections::BTreeSet::new();
        for m in &self.mounts {
            validate_abs_path("--mount target", &m.target)?;
            if !targets.insert(m.target.as_str()) {
                return Err(ValidationError::new(
                    "--mount target",
                    format!("{} is mounted twice", m.target),
                    "give each mount its own target",
                ));
            }
            match m.kind {
                MountType::Bind => validate_abs_path("--mount source", &m.source)?,
                MountType::Volume => {
                    if m.source.is_empty()
                        || !m
                            .source
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                    {
                        return Err(ValidationError::new(
                            "--mount source",
                            format!("{:?} is not a volume name", m.source),
                            "name the volume with letters, digits, '_', '.' or '-'",
                        ));
                    }
                }
                MountType::Tmpfs => {
                    if !m.source.is_empty() {
                        return Err(ValidationError::new(
                            "--mount source",
                            "a tmpfs mount has no source",
                            "leave source out for type=tmpfs",
                        ));
                    }
                }
            }
        }
        if let Some(sig) = &self.stop_signal {
            parse_signal(sig)?;
        }
        if let Some(h) = &self.healthcheck {
            if h.cmd.trim().is_empty() {
                return Err(ValidationError::new(
                    "--health-cmd",
                    "an empty command",
                    "give a shell command that exits 0 when the task is healthy",
                ));
            }
            if h.interval_ms == 0 || h.timeout_ms == 0 || h.retries == 0 {
                return Err(ValidationError::new(
                    "--health-interval",
                    "interval, timeout and retries must be above 0",
                    "e.g. --health-interval 2s --health-timeout 1s --health-retries 3",
                ));
            }
        }
        Ok(())
    }
}

/// The signal number of `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Result<i32, ValidationError> {
    const SIGNALS: &[(&str, i32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("KILL", 9),
        ("USR1", 10),
        ("USR2", 12),
        ("TERM", 15),
        ("WINCH", 28),
    ];
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    if let Some((_, n)) = SIGNALS.iter().find(|(n, _)| *n == name) {
        return Ok(*n);
    }
    match name.parse::<i32>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(ValidationError::new(
            "--stop-signal",
            format!("unknown signal {s:?}"),
            "give a name like SIGTERM or SIGINT, or a number from 1 to 64",
        )),
    }
}

impl ServiceSpec {
    /// Validates everything that needs no cluster state (networks and ports are checked
    /// against the cluster when stored).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_service_name(&self.name)?;
        for k in self.labels.keys() {
            crate::node::validate_label_key("--label", k)?;
        }
        let t = &self.task_template;
        t.container.validate()?;
        for c in &t.placement.constraints {
            Constraint::parse(c)?;
        }
        let lim = t.resources.limits;
        let res = t.resources.reservations;
        if lim.memory_bytes != 0 && lim.memory_bytes < 6 * 1024 * 1024 {
            return Err(ValidationError::new(
                "--limit-memory",
                format!("{} bytes is too little", lim.memory_bytes),
                "give at least 6MiB, e.g. --limit-memory 64m",
            ));
        }
        if lim.memory_bytes != 0 && res.memory_bytes > lim.memory_bytes {
            return Err(ValidationError::new(
                "--reserve-memory",
                "the reservation is above the limit",
                "reserve at most --limit-memory",
            ));
        }
        if lim.nano_cpus != 0 && res.nano_cpus > lim.nano_cpus {
            return Err(ValidationError::new(
                "--reserve-cpu",
                "the reservation is above the limit",
                "reserve at most --limit-cpu",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &t.networks {
            if n.target.is_empty() {
                return Err(ValidationError::new(
                    "--network",
                    "an empty network name",
                    "give a network name or ID, e.g. --network appnet",
                ));
            }
            if !seen.insert(n.target.as_str()) {
                return Err(ValidationError::new(
                    "--network",
                    format!("network {} is given twice", n.target),
                    "attach each network once",
                ));
            }
            for a in &n.aliases {
                validate_service_name(a).map_err(|_| {
                    ValidationError::new(
                        "--network alias",
                        format!("{a:?} is not a valid alias"),
                        "use letters, digits, '_' or '-'",
                    )
                })?;
            }
        }
        for (field, u) in [
            ("--update-max-failure-ratio", &self.update_config),
            ("--rollback-max-failure-ratio", &self.rollback_config),
        ] {
            if u.max_failure_permille > 1000 {
                return Err(ValidationError::new(
                    field,
                    "a ratio above 1",
                    "give a fraction from 0 to 1, e.g. 0.2",
                ));
            }
        }
        if self.endpoint_spec.mode == EndpointMode::Dnsrr
            && self
                .endpoint_spec
                .ports
                .iter()
                .any(|p| p.publish_mode == PublishMode::Ingress)
        {
            return Err(ValidationError::new(
                "--endpoint-mode",
                "dnsrr services cannot publish ports through the routing mesh",
                "use --endpoint-mode vip, or publish with mode=host",
            ));
        }
        let mut ports = std::collections::BTreeSet::new();
        for p in &self.endpoint_spec.ports {
            if p.target_port == 0 {
                return Err(ValidationError::new(
                    "--publish",
                    "target port 0",
                    "give the container's port, e.g. -p 8080:80",
                ));
            }
            if p.publish_mode == PublishMode::Host && p.published_port == 0 {
                return Err(ValidationError::new(
                    "--publish",
                    "mode=host needs a published port",
                    "e.g. -p mode=host,published=80,target=80",
                ));
            }
            if p.proxy_protocol && p.protocol == Protocol::Udp {
                return Err(ValidationError::new(
                    "--publish",
                    format!("proxy-protocol on UDP port {}", p.target_port),
                    "PROXY protocol is for TCP ports; drop proxy-protocol=v2 from the UDP port",
                ));
            }
            if p.published_port != 0 && !ports.insert((p.protocol, p.published_port)) {
                return Err(ValidationError::new(
                    "--publish",
                    format!(
                        "port {}/{} is published twice",
                        p.published_port, p.protocol
                    ),
                    "publish each port once",
                ));
            }
        }
        Ok(())
    }
}

/// Parses a duration like docker: `90s`, `1m30s`, `500ms`, `2h`, `1.5s`; a bare number is seconds.
pub fn parse_duration_ms(field: &str, s: &str) -> Result<u64, ValidationError> {
    let err = || {
        ValidationError::new(
            field,
            format!("{s:?} is not a duration"),
            "write e.g. 500ms, 2s, 1m30s",
        )
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = s.parse::<f64>() {
        if !(0.0..1e9).contains(&secs) {
            return Err(err());
        }
        return Ok((secs * 1000.0).round() as u64);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let value: f64 = rest[..n].parse().map_err(|_| err())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..u] {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return Err(err()),
        };
        total += value * factor;
        rest = &rest[u..];
    }
    if !(0.0..1e15).contains(&total) {
        return Err(err());
    }
    Ok(total.round() as u64)
}

/// Parses a size like docker: `512m`, `1g`, `64MiB`, `1024` (bytes).
pub fn parse_bytes(field: &str, s: &str) -> Result<u64, ValidationError> {
    let err = || {
        ValidationError::new(
            field,
            format!("{s:?} is not a size"),
            "write e.g. 64m, 512MiB or 1g",
        )
    };
    let t = s.trim().to_ascii_lowercase();
    let n = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let value: f64 = t[..n].parse().map_err(|_| err())?;
    let factor: f64 = match t[n..].trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        _ => return Err(err()),
    };
    let v = value * factor;
    if !(0.0..1.8e19).contains(&v) {
        return Err(err());
    }
    Ok(v.round() as u64)
}

/// Parses CPUs like docker: `0.5`, `2` → nano-CPUs.
pub fn parse_cpus(field: &str, s: &str) -> Result<u64, ValidationError> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1024.0).contains(&v) => Ok((v * 1e9).round() as u64),
        _ => Err(ValidationError::new(
            field,
            format!("{s:?} is not a number of CPUs"),
            "write e.g. 0.5 or 2",
        )),
    }
}

/// Parses `-p`: `8080:80`, `8080:80/udp`, `80` (published port allocated), or the long form
/// `mode=host,published=80,target=80,protocol=udp[,proxy-protocol=v2]`.
pub fn parse_port(s: &str) -> Result<PortConfig, ValidationError> {
    let err = |problem: String| {
        ValidationError::new(
            "--publish",
            problem,
            "write PUBLISHED:TARGET[/udp], e.g. -p 8080:80, or mode=host,published=80,target=80",
        )
    };
    let port = |v: &str| -> Result<u16, ValidationError> {
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(err(format!("{v:?} is not a port from 1 to 65535"))),
        }
    };
    let proto = |v: &str| match v {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(err(format!("unknown protocol {other:?} (tcp or udp)"))),
    };
    let mut p = PortConfig::default();
    if s.contains('=') {
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{part:?} is not KEY=VALUE")))?;
            match k.trim() {
                "mode" => {
                    p.publish_mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(err(format!("unknown mode {other:?} (ingress or host)")));
                        }
                    }
                }
                "published" => p.published_port = port(v)?,
                "target" => p.target_port = port(v)?,
                "protocol" => p.protocol = proto(v)?,
                "proxy-protocol" => {
                    p.proxy_protocol = match v {
                        "v2" => true,
                        "none" => false,
                        other => {
                            return Err(err(format!(
                                "unknown proxy-protocol {other:?} (v2 or none)"
                            )));
                        }
                    }
                }
                other => return Err(err(format!("unknown key {other:?}"))),
            }
        }
        if p.target_port == 0 {
            return Err(err("no target port".into()));
        }
        return Ok(p);
    }
    let (ports, pr) = match s.split_once('/') {
        Some((a, b)) => (a, proto(b)?),
        None => (s, Protocol::Tcp),
    };
    p.protocol = pr;
    match ports.split_once(':') {
        Some((published, target)) => {
            p.published_port = port(published)?;
            p.target_port = port(target)?;
        }
        None => p.target_port = port(ports)?,
    }
    Ok(p)
}

/// Parses `--mount type=bind,source=/a,target=/b,readonly` (also `src`, `dst`, `destination`,
/// `ro`, `tmpfs-size`).
pub fn parse_mount(s: &str) -> Result<Mount, ValidationError> {
    let err = |problem: String| {
        ValidationError::new(
            "--mount",
            problem,
            "write type=volume|bind|tmpfs,source=…,target=…[,readonly]",
        )
    };
    let mut m = Mount::default();
    for part in s.split(',') {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (part.trim(), "true"),
        };
        match k {
            "type" => {
                m.kind = match v {
                    "volume" => MountType::Volume,
                    "bind" => MountType::Bind,
                    "tmpfs" => MountType::Tmpfs,
                    other => return Err(err(format!("unknown type {other:?}"))),
                }
            }
            "source" | "src" => m.source = v.to_string(),
            "target" | "dst" | "destination" => m.target = v.to_string(),
            "readonly" | "ro" => {
                m.read_only = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => return Err(err(format!("readonly={other:?} (true or false)"))),
                }
            }
            "tmpfs-size" => m.tmpfs_size = parse_bytes("--mount tmpfs-size", v)?,
            other => return Err(err(format!("unknown key {other:?}"))),
        }
    }
    if m.target.is_empty() {
        return Err(err("no target".into()));
    }
    Ok(m)
}

/// Parses `--network NAME` or `--network name=NAME,alias=A[,alias=B]`.
pub fn parse_network(s: &str) -> Result<NetworkAttachmentConfig, ValidationError> {
    if !s.contains('=') {
        return Ok(NetworkAttachmentConfig {
            target: s.to_string(),
            aliases: Vec::new(),
        });
    }
    let mut n = NetworkAttachmentConfig::default();
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", v)) => n.target = v.to_string(),
            Some(("alias", v)) => n.aliases.push(v.to_string()),
            _ => {
                return Err(ValidationError::new(
                    "--network",
                    format!("{part:?} is not name=… or alias=…"),
                    "write --network NAME or --network name=NAME,alias=ALIAS",
                ));
            }
        }
    }
    Ok(n)
}

/// Parses a ratio `0.2` into thousandths.
pub fn parse_ratio(field: &str, s: &str) -> Result<u32, ValidationError> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok((v * 1000.0).round() as u32),
        _ => Err(ValidationError::new(
            field,
            format!("{s:?} is not a ratio from 0 to 1"),
            "write e.g. 0.2",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            task_template: TaskSpec {
                container: ContainerSpec {
                    image: "meshd-test:latest".into(),
                    stop_grace_period_ms: DEFAULT_STOP_GRACE_MS,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn durations_sizes_cpus() {
        assert_eq!(parse_duration_ms("f", "2s").unwrap(), 2000);
        assert_eq!(parse_duration_ms("f", "1m30s").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("f", "500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("f", "1.5s").unwrap(), 1500);
        assert_eq!(parse_duration_ms("f", "3").unwrap(), 3000);
        assert!(parse_duration_ms("f", "2x").is_err());
        assert!(parse_duration_ms("f", "").is_err());
        assert_eq!(parse_bytes("f", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("f", "1GiB").unwrap(), 1 << 30);
        assert!(parse_bytes("f", "lots").is_err());
        assert_eq!(parse_cpus("f", "0.5").unwrap(), 500_000_000);
        assert!(parse_cpus("f", "-1").is_err());
    }

    #[test]
    fn ports() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.published_port, p.target_port, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p = parse_port("5353:53/udp").unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        let p = parse_port("80").unwrap();
        assert_eq!((p.published_port, p.target_port), (0, 80));
        let p = parse_port("mode=host,published=80,target=8080").unwrap();
        assert_eq!(p.publish_mode, PublishMode::Host);
        assert_eq!((p.published_port, p.target_port), (80, 8080));
        assert!(parse_port("8080:0").is_err());
        assert!(parse_port("70000:80").is_err());
        assert!(parse_port("8080:80/sctp").is_err());
        assert!(parse_port("mode=weird,target=1").is_err());
        let p = parse_port("published=8443,target=443,proxy-protocol=v2").unwrap();
        assert!(p.proxy_protocol);
        assert!(parse_port("target=443,proxy-protocol=v1").is_err());
    }

    #[test]
    fn mounts_and_networks() {
        let m = parse_mount("type=bind,source=/srv,target=/data,readonly").unwrap();
        assert_eq!((m.kind, m.read_only), (MountType::Bind, true));
        let m = parse_mount("type=tmpfs,target=/tmp,tmpfs-size=16m").unwrap();
        assert_eq!(m.tmpfs_size, 16 << 20);
        assert!(parse_mount("type=bind,source=/a").is_err());
        let n = parse_network("name=appnet,alias=db,alias=pg").unwrap();
        assert_eq!(n.target, "appnet");
        assert_eq!(n.aliases, vec!["db", "pg"]);
        assert_eq!(parse_network("appnet").unwrap().target, "appnet");
    }

    #[test]
    fn validation_names_the_field() {
        spec().validate().unwrap();
        let mut s = spec();
        s.name = "bad name".into();
        assert_eq!(s.validate().unwrap_err().field, "--name");
        let mut s = spec();
        s.task_template.container.env = vec!["NOEQUALS".into()];
        assert_eq!(s.validate().unwrap_err().field, "--env");
        let mut s = spec();
        s.task_template.placement.constraints = vec!["node.labels.zone=a".into()];
        assert_eq!(s.validate().unwrap_err().field, "--constraint");
        let mut s = spec();
        s.task_template.container.mounts = vec![Mount {
            kind: MountType::Bind,
            source: "rel".into(),
            target: "/x".into(),
            ..Default::default()
        }];
        assert_eq!(s.validate().unwrap_err().field, "--mount source");
        let mut s = spec();
        s.task_template.resources.limits.memory_bytes = 1024;
        assert_eq!(s.validate().unwrap_err().field, "--limit-memory");
        let mut s = spec();
        s.endpoint_spec.ports = vec![parse_port("80:80").unwrap(), parse_port("80:81").unwrap()];
        assert_eq!(s.validate().unwrap_err().field, "--publish");
        let mut s = spec();
        s.task_template.container.stop_signal = Some("SIGNOPE".into());
        assert_eq!(s.validate().unwrap_err().field, "--stop-signal");
    }

    #[test]
    fn updates_apply_deltas() {
        let mut s = spec();
        s.mode = ServiceMode::Replicated { replicas: 3 };
        s.task_template.container.env = vec!["A=1".into(), "B=2".into()];
        let u = ServiceUpdate {
            image: Some("meshd-test:v2".into()),
            replicas: Some(5),
            env_add: vec!["A=9".into()],
            env_rm: vec!["B".into()],
            force: true,
            ..Default::default()
        };
        let n = u.apply(&s).unwrap();
        assert_eq!(n.task_template.container.image, "meshd-test:v2");
        assert_eq!(n.mode, ServiceMode::Replicated { replicas: 5 });
        assert_eq!(n.task_template.container.env, vec!["A=9".to_string()]);
        assert_eq!(n.task_template.force_update, 1);
        s.mode = ServiceMode::Global;
        let e = ServiceUpdate {
            replicas: Some(2),
            ..Default::default()
        }
        .apply(&s)
        .unwrap_err();
        assert_eq!(e.field, "--replicas");
    }
}
