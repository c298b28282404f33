//! `swarm service create | ls | ps | inspect | logs | scale | update | rollback | rm`.
//!
//! Flags map onto [`ServiceSpec`] and [`ServiceUpdate`] and are checked with mesh-api's
//! parsers and validators before anything is sent; the daemon checks everything again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::{ArgAction, Args, Subcommand};
use mesh_api::api::{TaskQuery, path, routes};
use mesh_api::constraint::Constraint;
use mesh_api::node::parse_label;
use mesh_api::service::{
    DEFAULT_STOP_GRACE_MS, parse_bytes, parse_cpus, parse_duration_ms, parse_mount, parse_network,
    parse_port, parse_ratio, parse_signal, validate_service_name,
};
use mesh_api::{
    ContainerSpec, EndpointMode, EndpointSpec, FailureAction, HealthConfig, Mount,
    NetworkAttachmentConfig, Placement, PortConfig, ResourceAmounts, Resources, RestartCondition,
    RestartPolicy, Service, ServiceMode, ServiceSpec, ServiceUpdate, ServiceView, Task, TaskSpec,
    TaskState, UpdateConfig, UpdateOrder, UpdateState, ValidationError,
};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tracing::debug;

use super::tasks::{
    FOLLOW_INTERVAL, Tail, TaskLog, decode_raw, get_list, node_names, parse_tail, task_route,
    tasks_route,
};
use super::{Ctx, Format, for_each, is_fatal, now_ms, parse_format};
use crate::client::encode_segment;
use crate::error::{CliError, Result};
use crate::format::container::{PrefixStyle, log_prefix};
use crate::format::service::{
    PsContext, ps_table, service_order, service_pretty, service_table, table_id, task_order,
};
use crate::format::{format_duration_ms, reformat_json};

/// Default `--health-interval` and `--health-timeout` (docker's 30 s).
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 30_000;
/// Default `--health-retries`.
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;
/// Time between two looks at a service while waiting for it to converge.
pub const CONVERGE_POLL: Duration = Duration::from_millis(500);
/// Least time `--detach=false` waits for a service to converge.
pub const CONVERGE_TIMEOUT_MS: u64 = 120_000;

/// The `swarm service` verbs.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List the services of the swarm.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks of one or more services, with their history.
    Ps(PsArgs),
    /// Show details of one or more services.
    Inspect(InspectArgs),
    /// Fetch the logs of a service or a task.
    Logs(LogsArgs),
    /// Scale one or more replicated services.
    Scale(ScaleArgs),
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// Revert a service to its previous spec.
    Rollback(RollbackArgs),
    /// Remove one or more services.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

// ------------------------------------------------------------------ value parsers

/// Splits a command line into words like a POSIX shell, without expanding anything:
/// `sh -c 'echo "a b"'` → `sh`, `-c`, `echo "a b"`. Used by `--entrypoint` and `--args`.
pub fn split_words(field: &str, s: &str) -> std::result::Result<Vec<String>, ValidationError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(unterminated(field, s, '\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(unterminated(field, s, '"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(unterminated(field, s, '"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => {
                        return Err(ValidationError::new(
                            field,
                            format!("{s:?} ends with a lone backslash"),
                            "escape it as \\\\ or remove it",
                        ));
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A command line split into words (see [`split_words`]): `--entrypoint` and `--args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words(pub Vec<String>);

fn entrypoint_words(s: &str) -> std::result::Result<Words, ValidationError> {
    split_words("--entrypoint", s).map(Words)
}

fn args_words(s: &str) -> std::result::Result<Words, ValidationError> {
    split_words("--args", s).map(Words)
}

fn unterminated(field: &str, s: &str, quote: char) -> ValidationError {
    ValidationError::new(
        field,
        format!("{s:?} has an unterminated {quote} quote"),
        format!("close the {quote} quote, e.g. 'sh -c \"echo hi\"'"),
    )
}

fn parse_name(s: &str) -> std::result::Result<String, ValidationError> {
    validate_service_name(s).map(|()| s.to_string())
}

fn parse_replicas(s: &str) -> std::result::Result<u64, ValidationError> {
    s.trim().parse::<u64>().map_err(|_| {
        ValidationError::new(
            "--replicas",
            format!("{s:?} is not a number of tasks"),
            "give a whole number, e.g. --replicas 3",
        )
    })
}

fn parse_count(field: &'static str, s: &str) -> std::result::Result<u64, ValidationError> {
    s.trim().parse::<u64>().map_err(|_| {
        ValidationError::new(
            field,
            format!("{s:?} is not a whole number"),
            format!("give a number such as {field} 2 (0 means no limit)"),
        )
    })
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A number of tasks (`--replicas`).
    #[default]
    Replicated,
    /// One task per eligible node.
    Global,
}

fn parse_mode(s: &str) -> std::result::Result<Mode, ValidationError> {
    match s {
        "replicated" => Ok(Mode::Replicated),
        "global" => Ok(Mode::Global),
        other => Err(ValidationError::new(
            "--mode",
            format!("unknown mode {other:?}"),
            "use --mode replicated (with --replicas N) or --mode global (one task per node)",
        )),
    }
}

fn parse_endpoint_mode(s: &str) -> std::result::Result<EndpointMode, ValidationError> {
    match s {
        "vip" => Ok(EndpointMode::Vip),
        "dnsrr" => Ok(EndpointMode::Dnsrr),
        other => Err(ValidationError::new(
            "--endpoint-mode",
            format!("unknown endpoint mode {other:?}"),
            "use vip (one virtual IP balanced over the tasks) or dnsrr (DNS round-robin)",
        )),
    }
}

fn parse_restart_condition(s: &str) -> std::result::Result<RestartCondition, ValidationError> {
    match s {
        "none" => Ok(RestartCondition::None),
        "on-failure" => Ok(RestartCondition::OnFailure),
        "any" => Ok(RestartCondition::Any),
        other => Err(ValidationError::new(
            "--restart-condition",
            format!("unknown condition {other:?}"),
            "use none, on-failure or any",
        )),
    }
}

fn parse_failure_action(
    field: &'static str,
    s: &str,
) -> std::result::Result<FailureAction, ValidationError> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" if field.starts_with("--update") => Ok(FailureAction::Rollback),
        "rollback" => Err(ValidationError::new(
            field,
            "a rollback cannot roll back",
            "use pause or continue",
        )),
        other if field.starts_with("--update") => Err(ValidationError::new(
            field,
            format!("unknown action {other:?}"),
            "use pause, continue or rollback",
        )),
        other => Err(ValidationError::new(
            field,
            format!("unknown action {other:?}"),
            "use pause or continue",
        )),
    }
}

fn parse_order(field: &'static str, s: &str) -> std::result::Result<UpdateOrder, ValidationError> {
    match s {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        other => Err(ValidationError::new(
            field,
            format!("unknown order {other:?}"),
            "use stop-first (stop the old task, then start the new one) or start-first",
        )),
    }
}

/// Parses `-e KEY=VALUE` given to `field`, or `-e KEY` to pass the variable as this
/// shell has it (like docker).
pub fn parse_env(field: &'static str, s: &str) -> std::result::Result<String, ValidationError> {
    let key = s.split('=').next().unwrap_or_default();
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err(ValidationError::new(
            field,
            format!("{s:?} is not KEY=VALUE"),
            "write each variable as KEY=VALUE, e.g. -e MODE=prod",
        ));
    }
    if s.contains('=') {
        return Ok(s.to_string());
    }
    match std::env::var(key) {
        Ok(value) => Ok(format!("{key}={value}")),
        Err(_) => Err(ValidationError::new(
            field,
            format!("{key} has no value and is not set in this shell"),
            format!("write {key}=VALUE, or export {key} first"),
        )),
    }
}

fn parse_env_name(s: &str) -> std::result::Result<String, ValidationError> {
    if s.is_empty() || s.contains('=') || s.chars().any(char::is_whitespace) {
        return Err(ValidationError::new(
            "--env-rm",
            format!("{s:?} is not a variable name"),
            "give the name only, e.g. --env-rm MODE",
        ));
    }
    Ok(s.to_string())
}

fn parse_constraint(field: &'static str, s: &str) -> std::result::Result<String, ValidationError> {
    Constraint::parse(s).map_err(|mut e| {
        e.field = field.to_string();
        e
    })?;
    Ok(s.to_string())
}

fn parse_label_arg(
    field: &'static str,
    s: &str,
) -> std::result::Result<(String, String), ValidationError> {
    parse_label(field, s)
}

fn parse_signal_arg(s: &str) -> std::result::Result<String, ValidationError> {
    parse_signal(s).map(|_| s.to_string())
}

fn parse_positive_duration(
    field: &'static str,
    s: &str,
) -> std::result::Result<u64, ValidationError> {
    match parse_duration_ms(field, s)? {
        0 => Err(ValidationError::new(
            field,
            "a zero duration",
            "give a positive duration, e.g. 10s",
        )),
        ms => Ok(ms),
    }
}

fn parse_retries(s: &str) -> std::result::Result<u32, ValidationError> {
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ValidationError::new(
            "--health-retries",
            format!("{s:?} is not a positive number"),
            "give the failures in a row that make a task unhealthy, e.g. 3",
        )),
    }
}

/// Parses `NAME=REPLICAS` as `service scale` takes it.
pub fn parse_scale(s: &str) -> std::result::Result<(String, u64), ValidationError> {
    const FIELD: &str = "SERVICE=REPLICAS";
    let Some((name, n)) = s.split_once('=') else {
        return Err(ValidationError::new(
            FIELD,
            format!("{s:?} has no '='"),
            "write SERVICE=REPLICAS, e.g. `swarm service scale web=5`",
        ));
    };
    if name.is_empty() {
        return Err(ValidationError::new(
            FIELD,
            format!("{s:?} names no service"),
            "write SERVICE=REPLICAS, e.g. `swarm service scale web=5`",
        ));
    }
    let n = n.trim().parse::<u64>().map_err(|_| {
        ValidationError::new(
            FIELD,
            format!("{n:?} is not a number of replicas"),
            format!("give a whole number, e.g. {name}=5"),
        )
    })?;
    Ok((name.to_string(), n))
}

/// A service name made from its image when `--name` is not given: `meshd-test-k3x9q2`.
pub fn generated_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split(['@', ':']).next().unwrap_or(base);
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    name = name.trim_matches(['-', '_']).to_string();
    if name.is_empty() {
        name = "service".to_string();
    }
    let id = mesh_api::new_id();
    format!("{name}-{}", id.get(..6).unwrap_or(&id))
}

// ------------------------------------------------------------------ shared flag groups

/// `--health-*` and `--no-healthcheck`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Health check")]
pub struct HealthArgs {
    /// Command run in the container to check its health (with /bin/sh -c); healthy when
    /// it exits 0.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between checks (default 30s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_positive_duration("--health-interval", s))]
    pub health_interval: Option<u64>,
    /// Time a check may take (default 30s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_positive_duration("--health-timeout", s))]
    pub health_timeout: Option<u64>,
    /// Failures in a row that make the task unhealthy (default 3).
    #[arg(long, value_name = "N", value_parser = parse_retries)]
    pub health_retries: Option<u32>,
    /// Time after the start in which failures do not count (default 0s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_duration_ms("--health-start-period", s))]
    pub health_start_period: Option<u64>,
    /// Run no health check.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period"])]
    pub no_healthcheck: bool,
}

impl HealthArgs {
    fn any_setting(&self) -> bool {
        self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some()
    }

    /// The check of a new service or container: none without `--health-cmd`.
    pub fn config(&self) -> std::result::Result<Option<HealthConfig>, ValidationError> {
        match self.merged(None)? {
            Some(Some(h)) => Ok(Some(h)),
            _ => Ok(None),
        }
    }

    /// The change `service update` sends: `None` when no health flag was given,
    /// `Some(None)` for `--no-healthcheck`, else the current check with the given fields
    /// replaced.
    pub fn merged(
        &self,
        current: Option<&HealthConfig>,
    ) -> std::result::Result<Option<Option<HealthConfig>>, ValidationError> {
        if self.no_healthcheck {
            return Ok(Some(None));
        }
        if self.health_cmd.is_none() && !self.any_setting() {
            return Ok(None);
        }
        let base = current.cloned().unwrap_or(HealthConfig {
            cmd: String::new(),
            interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            timeout_ms: DEFAULT_HEALTH_INTERVAL_MS,
            retries: DEFAULT_HEALTH_RETRIES,
            start_period_ms: 0,
        });
        let h = HealthConfig {
            cmd: self.health_cmd.clone().unwrap_or(base.cmd),
            interval_ms: self.health_interval.unwrap_or(base.interval_ms),
            timeout_ms: self.health_timeout.unwrap_or(base.timeout_ms),
            retries: self.health_retries.unwrap_or(base.retries),
            start_period_ms: self.health_start_period.unwrap_or(base.start_period_ms),
        };
        if h.cmd.trim().is_empty() {
            return Err(ValidationError::new(
                "--health-cmd",
                "the health settings have no command to run",
                "give --health-cmd CMD, e.g. --health-cmd 'wget -q -O- localhost/health'",
            ));
        }
        Ok(Some(Some(h)))
    }
}

/// The six settings of a rolling update or of a rollback, each one optional: only the
/// ones given change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateFlags {
    /// Tasks replaced at once.
    pub parallelism: Option<u64>,
    /// Wait between batches, ms.
    pub delay_ms: Option<u64>,
    /// On failure.
    pub failure_action: Option<FailureAction>,
    /// Watch time after each task starts, ms.
    pub monitor_ms: Option<u64>,
    /// Tolerated failure ratio, ‰.
    pub max_failure_permille: Option<u32>,
    /// Stop-first or start-first.
    pub order: Option<UpdateOrder>,
}

impl UpdateFlags {
    /// Whether any setting was given.
    pub fn any(&self) -> bool {
        *self != UpdateFlags::default()
    }

    /// `base` with the given settings replaced.
    pub fn apply(&self, base: UpdateConfig) -> UpdateConfig {
        UpdateConfig {
            parallelism: self.parallelism.unwrap_or(base.parallelism),
            delay_ms: self.delay_ms.unwrap_or(base.delay_ms),
            failure_action: self.failure_action.unwrap_or(base.failure_action),
            monitor_ms: self.monitor_ms.unwrap_or(base.monitor_ms),
            max_failure_permille: self
                .max_failure_permille
                .unwrap_or(base.max_failure_permille),
            order: self.order.unwrap_or(base.order),
        }
    }
}

/// `--update-*`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Rolling update")]
pub struct UpdateConfigArgs {
    /// Tasks updated at once; 0 = all at once (default 1).
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count("--update-parallelism", s))]
    pub update_parallelism: Option<u64>,
    /// Wait between updates of batches (default 0s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_duration_ms("--update-delay", s))]
    pub update_delay: Option<u64>,
    /// What to do when an update fails: pause, continue or rollback (default pause).
    #[arg(long, value_name = "ACTION", value_parser = |s: &str| parse_failure_action("--update-failure-action", s))]
    pub update_failure_action: Option<FailureAction>,
    /// Time each new task is watched for failure (default 5s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_duration_ms("--update-monitor", s))]
    pub update_monitor: Option<u64>,
    /// Fraction of tasks that may fail during an update, 0 to 1 (default 0).
    #[arg(long, value_name = "RATIO", value_parser = |s: &str| parse_ratio("--update-max-failure-ratio", s))]
    pub update_max_failure_ratio: Option<u32>,
    /// stop-first or start-first (default stop-first).
    #[arg(long, value_name = "ORDER", value_parser = |s: &str| parse_order("--update-order", s))]
    pub update_order: Option<UpdateOrder>,
}

impl UpdateConfigArgs {
    /// The settings given.
    pub fn flags(&self) -> UpdateFlags {
        UpdateFlags {
            parallelism: self.update_parallelism,
            delay_ms: self.update_delay,
            failure_action: self.update_failure_action,
            monitor_ms: self.update_monitor,
            max_failure_permille: self.update_max_failure_ratio,
            order: self.update_order,
        }
    }
}

/// `--rollback-*`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Rollback")]
pub struct RollbackConfigArgs {
    /// Tasks rolled back at once; 0 = all at once (default 1).
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count("--rollback-parallelism", s))]
    pub rollback_parallelism: Option<u64>,
    /// Wait between rollbacks of batches (default 0s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_duration_ms("--rollback-delay", s))]
    pub rollback_delay: Option<u64>,
    /// What to do when a rollback fails: pause or continue (default pause).
    #[arg(long, value_name = "ACTION", value_parser = |s: &str| parse_failure_action("--rollback-failure-action", s))]
    pub rollback_failure_action: Option<FailureAction>,
    /// Time each task is watched for failure (default 5s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_duration_ms("--rollback-monitor", s))]
    pub rollback_monitor: Option<u64>,
    /// Fraction of tasks that may fail during a rollback, 0 to 1 (default 0).
    #[arg(long, value_name = "RATIO", value_parser = |s: &str| parse_ratio("--rollback-max-failure-ratio", s))]
    pub rollback_max_failure_ratio: Option<u32>,
    /// stop-first or start-first (default stop-first).
    #[arg(long, value_name = "ORDER", value_parser = |s: &str| parse_order("--rollback-order", s))]
    pub rollback_order: Option<UpdateOrder>,
}

impl RollbackConfigArgs {
    /// The settings given.
    pub fn flags(&self) -> UpdateFlags {
        UpdateFlags {
            parallelism: self.rollback_parallelism,
            delay_ms: self.rollback_delay,
            failure_action: self.rollback_failure_action,
            monitor_ms: self.rollback_monitor,
            max_failure_permille: self.rollback_max_failure_ratio,
            order: self.rollback_order,
        }
    }
}

/// `-d/--detach` and `-q/--quiet` of the verbs that can wait for convergence.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Return at once (the default); --detach=false waits until the service converged,
    /// printing its progress.
    #[arg(
        short,
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    pub detach: bool,
    /// With --detach=false: print no progress.
    #[arg(short, long)]
    pub quiet: bool,
}

impl Default for WaitArgs {
    fn default() -> Self {
        WaitArgs {
            detach: true,
            quiet: false,
        }
    }
}

// ------------------------------------------------------------------ create

/// `swarm service create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name (default: made from the image's).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
    /// Number of tasks (default 1).
    #[arg(long, value_name = "N", value_parser = parse_replicas)]
    pub replicas: Option<u64>,
    /// replicated or global (one task on every eligible node).
    #[arg(long, value_name = "MODE", value_parser = parse_mode, default_value = "replicated")]
    pub mode: Mode,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this shell's); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = |s: &str| parse_env("--env", s))]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User: uid, uid:gid or a user name of the image.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Host name inside the container (default: the task's short ID).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Replace the image's entrypoint (split into words like a shell: "sh -c").
    #[arg(long, value_name = "CMD", value_parser = entrypoint_words)]
    pub entrypoint: Option<Words>,
    /// Attach a mount: type=volume|bind|tmpfs,source=…,target=…, and readonly if so; repeatable.
    #[arg(long, value_name = "MOUNT", value_parser = parse_mount)]
    pub mount: Vec<Mount>,
    /// Attach a network: NAME or name=NAME,alias=ALIAS; repeatable.
    #[arg(long, value_name = "NETWORK", value_parser = parse_network)]
    pub network: Vec<NetworkAttachmentConfig>,
    /// Publish a port: PUBLISHED:TARGET[/udp] or mode=host,published=…,target=…; repeatable.
    #[arg(short = 'p', long, value_name = "PORT", value_parser = parse_port)]
    pub publish: Vec<PortConfig>,
    /// vip (one virtual IP) or dnsrr (DNS round-robin).
    #[arg(long, value_name = "MODE", value_parser = parse_endpoint_mode, default_value = "vip")]
    pub endpoint_mode: EndpointMode,
    /// Placement constraint, e.g. node.labels.zone==a; repeatable.
    #[arg(long, value_name = "EXPR", value_parser = |s: &str| parse_constraint("--constraint", s))]
    pub constraint: Vec<String>,
    /// Most tasks of this service on one node (default 0: no limit).
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count("--replicas-max-per-node", s))]
    pub replicas_max_per_node: Option<u64>,
    /// CPU limit, e.g. 0.5.
    #[arg(long, value_name = "CPUS", value_parser = |s: &str| parse_cpus("--limit-cpu", s))]
    pub limit_cpu: Option<u64>,
    /// Memory limit, e.g. 64m.
    #[arg(long, value_name = "BYTES", value_parser = |s: &str| parse_bytes("--limit-memory", s))]
    pub limit_memory: Option<u64>,
    /// CPUs reserved for each task (the scheduler counts them), e.g. 0.25.
    #[arg(long, value_name = "CPUS", value_parser = |s: &str| parse_cpus("--reserve-cpu", s))]
    pub reserve_cpu: Option<u64>,
    /// Memory reserved for each task, e.g. 32m.
    #[arg(long, value_name = "BYTES", value_parser = |s: &str| parse_bytes("--reserve-memory", s))]
    pub reserve_memory: Option<u64>,
    /// When a finished task is replaced: none, on-failure or any (default any).
    #[arg(long, value_name = "COND", value_parser = parse_restart_condition)]
    pub restart_condition: Option<RestartCondition>,
    /// Wait between restarts (default 5s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_duration_ms("--restart-delay", s))]
    pub restart_delay: Option<u64>,
    /// Restarts allowed in the window (default 0: no limit).
    #[arg(long, value_name = "N", value_parser = |s: &str| parse_count("--restart-max-attempts", s))]
    pub restart_max_attempts: Option<u64>,
    /// Window the restarts are counted in (default: forever).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_duration_ms("--restart-window", s))]
    pub restart_window: Option<u64>,
    /// Time between the stop signal and SIGKILL (default 10s).
    #[arg(long, value_name = "DUR", value_parser = |s: &str| parse_duration_ms("--stop-grace-period", s))]
    pub stop_grace_period: Option<u64>,
    /// Signal that stops the container, e.g. SIGINT (default SIGTERM).
    #[arg(long, value_name = "SIGNAL", value_parser = parse_signal_arg)]
    pub stop_signal: Option<String>,
    /// Service label (KEY=VALUE); repeatable.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = |s: &str| parse_label_arg("--label", s))]
    pub label: Vec<(String, String)>,
    /// Container label (KEY=VALUE); repeatable.
    #[arg(long = "container-label", value_name = "KEY=VALUE", value_parser = |s: &str| parse_label_arg("--container-label", s))]
    pub container_label: Vec<(String, String)>,
    /// Waiting for convergence.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Image, as loaded with `swarm image load` (e.g. meshd-test:latest).
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments: the container's arguments (the image's CMD is replaced; its
    /// entrypoint stays unless --entrypoint).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
    /// Health check.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Rolling update settings.
    #[command(flatten)]
    pub update: UpdateConfigArgs,
    /// Rollback settings.
    #[command(flatten)]
    pub rollback: RollbackConfigArgs,
}

impl CreateArgs {
    /// The spec to send, checked with [`ServiceSpec::validate`].
    pub fn spec(&self) -> std::result::Result<ServiceSpec, ValidationError> {
        let mode = match (self.mode, self.replicas) {
            (Mode::Replicated, r) => ServiceMode::Replicated {
                replicas: r.unwrap_or(1),
            },
            (Mode::Global, None) => ServiceMode::Global,
            (Mode::Global, Some(_)) => {
                return Err(ValidationError::new(
                    "--replicas",
                    "a global service runs one task on every eligible node",
                    "leave --replicas out with --mode global",
                ));
            }
        };
        if self.mode == Mode::Global && self.replicas_max_per_node.is_some() {
            return Err(ValidationError::new(
                "--replicas-max-per-node",
                "a global service runs at most one task per node already",
                "leave --replicas-max-per-node out with --mode global",
            ));
        }
        let defaults = RestartPolicy::default();
        let spec = ServiceSpec {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| generated_name(&self.image)),
            labels: self.label.iter().cloned().collect(),
            task_template: TaskSpec {
                container: ContainerSpec {
                    image: self.image.clone(),
                    command: self.entrypoint.clone().map(|w| w.0),
                    args: self.command.clone(),
                    env: self.env.clone(),
                    dir: self.workdir.clone(),
                    user: self.user.clone(),
                    hostname: self.hostname.clone(),
                    mounts: self.mount.clone(),
                    stop_signal: self.stop_signal.clone(),
                    stop_grace_period_ms: self.stop_grace_period.unwrap_or(DEFAULT_STOP_GRACE_MS),
                    healthcheck: self.health.config()?,
                    labels: self.container_label.iter().cloned().collect(),
                },
                resources: Resources {
                    limits: ResourceAmounts {
                        nano_cpus: self.limit_cpu.unwrap_or(0),
                        memory_bytes: self.limit_memory.unwrap_or(0),
                    },
                    reservations: ResourceAmounts {
                        nano_cpus: self.reserve_cpu.unwrap_or(0),
                        memory_bytes: self.reserve_memory.unwrap_or(0),
                    },
                },
                restart_policy: RestartPolicy {
                    condition: self.restart_condition.unwrap_or(defaults.condition),
                    delay_ms: self.restart_delay.unwrap_or(defaults.delay_ms),
                    max_attempts: self.restart_max_attempts.unwrap_or(defaults.max_attempts),
                    window_ms: self.restart_window.unwrap_or(defaults.window_ms),
                },
                placement: Placement {
                    constraints: self.constraint.clone(),
                    max_replicas: self.replicas_max_per_node.unwrap_or(0),
                },
                networks: self.network.clone(),
                force_update: 0,
            },
            mode,
            update_config: self.update.flags().apply(UpdateConfig::default()),
            rollback_config: self.rollback.flags().apply(UpdateConfig::default()),
            endpoint_spec: EndpointSpec {
                mode: self.endpoint_mode,
                ports: self.publish.clone(),
            },
        };
        spec.validate()?;
        Ok(spec)
    }
}

// ------------------------------------------------------------------ ls, ps, inspect

/// A `--filter` of `service ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFilter {
    /// `id=PREFIX`.
    Id(String),
    /// `name=PREFIX`.
    Name(String),
    /// `mode=replicated|global`.
    Mode(Mode),
    /// `label=KEY` or `label=KEY=VALUE`.
    Label {
        /// The label key.
        key: String,
        /// The value it must have, if given.
        value: Option<String>,
    },
}

impl ServiceFilter {
    /// Parses `KEY=VALUE` as given to `--filter`.
    pub fn parse(s: &str) -> std::result::Result<Self, ValidationError> {
        const FIELD: &str = "--filter";
        let keys = "use id=, name=, mode= or label=, e.g. --filter mode=global";
        let Some((key, value)) = s.split_once('=') else {
            return Err(ValidationError::new(
                FIELD,
                format!("{s:?} is not KEY=VALUE"),
                keys,
            ));
        };
        match key {
            "id" => Ok(ServiceFilter::Id(value.to_string())),
            "name" => Ok(ServiceFilter::Name(value.to_string())),
            "mode" => parse_mode(value).map(ServiceFilter::Mode).map_err(|_| {
                ValidationError::new(
                    FIELD,
                    format!("unknown mode {value:?}"),
                    "use mode=replicated or mode=global",
                )
            }),
            "label" => {
                let (k, v) = match value.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (value, None),
                };
                mesh_api::node::validate_label_key(FIELD, k)?;
                Ok(ServiceFilter::Label {
                    key: k.to_string(),
                    value: v,
                })
            }
            other => Err(ValidationError::new(
                FIELD,
                format!("unknown filter {other:?}"),
                keys,
            )),
        }
    }

    fn key(&self) -> &'static str {
        match self {
            ServiceFilter::Id(_) => "id",
            ServiceFilter::Name(_) => "name",
            ServiceFilter::Mode(_) => "mode",
            ServiceFilter::Label { .. } => "label",
        }
    }

    /// Whether `service` passes this filter.
    pub fn matches(&self, service: &Service) -> bool {
        match self {
            ServiceFilter::Id(p) => service.id.starts_with(p.as_str()),
            ServiceFilter::Name(p) => service.spec.name.starts_with(p.as_str()),
            ServiceFilter::Mode(m) => {
                matches!(
                    (m, service.spec.mode),
                    (Mode::Replicated, ServiceMode::Replicated { .. })
                        | (Mode::Global, ServiceMode::Global)
                )
            }
            ServiceFilter::Label { key, value } => match (service.spec.labels.get(key), value) {
                (Some(v), Some(want)) => v == want,
                (Some(_), None) => true,
                (None, _) => false,
            },
        }
    }
}

/// A `--filter` of `service ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFilter {
    /// `desired-state=running|shutdown|accepted|…`.
    DesiredState(TaskState),
    /// `node=NODE`: the node's ID, ID prefix or host name.
    Node(String),
    /// `id=PREFIX`.
    Id(String),
    /// `name=TEXT`: the task name (`web.1`) starts with it.
    Name(String),
}

impl TaskFilter {
    /// Parses `KEY=VALUE` as given to `--filter`.
    pub fn parse(s: &str) -> std::result::Result<Self, ValidationError> {
        const FIELD: &str = "--filter";
        let keys = "use desired-state=, node=, id= or name=, e.g. -f desired-state=running";
        let Some((key, value)) = s.split_once('=') else {
            return Err(ValidationError::new(
                FIELD,
                format!("{s:?} is not KEY=VALUE"),
                keys,
            ));
        };
        match key {
            "desired-state" => {
                let state = match value {
                    "running" => TaskState::Running,
                    "shutdown" => TaskState::Shutdown,
                    "accepted" => TaskState::Accepted,
                    "remove" => TaskState::Remove,
                    other => {
                        return Err(ValidationError::new(
                            FIELD,
                            format!("unknown desired state {other:?}"),
                            "use desired-state=running, shutdown or accepted",
                        ));
                    }
                };
                Ok(TaskFilter::DesiredState(state))
            }
            "node" => Ok(TaskFilter::Node(value.to_string())),
            "id" => Ok(TaskFilter::Id(value.to_string())),
            "name" => Ok(TaskFilter::Name(value.to_string())),
            other => Err(ValidationError::new(
                FIELD,
                format!("unknown filter {other:?}"),
                keys,
            )),
        }
    }

    fn key(&self) -> &'static str {
        match self {
            TaskFilter::DesiredState(_) => "desired-state",
            TaskFilter::Node(_) => "node",
            TaskFilter::Id(_) => "id",
            TaskFilter::Name(_) => "name",
        }
    }

    /// Whether `task` passes this filter; `node_names` maps node IDs to host names.
    pub fn matches(&self, task: &Task, node_names: &BTreeMap<String, String>) -> bool {
        match self {
            TaskFilter::DesiredState(s) => task.desired_state == *s,
            TaskFilter::Node(n) => {
                !task.node_id.is_empty()
                    && (task.node_id.starts_with(n.as_str())
                        || node_names.get(&task.node_id) == Some(n))
            }
            TaskFilter::Id(p) => task.id.starts_with(p.as_str()),
            TaskFilter::Name(p) => task.display_name().starts_with(p.as_str()),
        }
    }
}

/// Whether `item` passes `filters`: filters with the same key are alternatives (OR),
/// different keys must all hold (AND), like docker.
fn passes<F>(filters: &[F], key: fn(&F) -> &'static str, matches: impl Fn(&F) -> bool) -> bool {
    let mut keys: Vec<&str> = filters.iter().map(key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.iter()
        .all(|k| filters.iter().filter(|f| key(f) == *k).any(&matches))
}

/// `swarm service ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print service IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// `json`: one service object per line, as the API returns it.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, default_value = "")]
    pub format: Format,
    /// Filter: id=PREFIX, name=PREFIX, mode=replicated|global, label=KEY[=VALUE].
    #[arg(short, long, value_name = "FILTER", value_parser = ServiceFilter::parse)]
    pub filter: Vec<ServiceFilter>,
}

/// `swarm service ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only print task IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print whole IDs, images and errors.
    #[arg(long)]
    pub no_trunc: bool,
    /// `json`: one task object per line, as the API returns it.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, default_value = "")]
    pub format: Format,
    /// Filter: desired-state=running|shutdown|accepted, node=NODE, id=PREFIX, name=TEXT.
    #[arg(short, long, value_name = "FILTER", value_parser = TaskFilter::parse)]
    pub filter: Vec<TaskFilter>,
    /// Service names, IDs or ID prefixes.
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

/// `swarm service inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print a human-readable block instead of JSON.
    #[arg(long, conflicts_with = "format")]
    pub pretty: bool,
    /// `json`: the services as one compact JSON array.
    #[arg(short, long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<Format>,
    /// Service names, IDs or ID prefixes.
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

/// `swarm service logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output (Ctrl-C to stop).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each task (or all).
    #[arg(short = 'n', long, value_name = "N", value_parser = parse_tail, default_value = "all")]
    pub tail: Tail,
    /// Leave the task IDs out of the line prefixes.
    #[arg(long)]
    pub no_task_ids: bool,
    /// Whole task IDs in the line prefixes.
    #[arg(long)]
    pub no_trunc: bool,
    /// Service name, ID or ID prefix, or a task ID.
    #[arg(value_name = "SERVICE|TASK")]
    pub target: String,
}

/// `swarm service scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Waiting for convergence.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// SERVICE=REPLICAS pairs, e.g. web=5.
    #[arg(value_name = "SERVICE=REPLICAS", required = true, value_parser = parse_scale)]
    pub scales: Vec<(String, u64)>,
}

/// `swarm service update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// New image.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Number of tasks.
    #[arg(long, value_name = "N", value_parser = parse_replicas)]
    pub replicas: Option<u64>,
    /// New arguments (replace the current ones; split into words like a shell).
    #[arg(long, value_name = "ARGS", value_parser = args_words)]
    pub args: Option<Words>,
    /// Add or change an environment variable (KEY=VALUE); repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = |s: &str| parse_env("--env-add", s))]
    pub env_add: Vec<String>,
    /// Remove an environment variable (KEY); repeatable.
    #[arg(long, value_name = "KEY", value_parser = parse_env_name)]
    pub env_rm: Vec<String>,
    /// Add a placement constraint; repeatable.
    #[arg(long, value_name = "EXPR", value_parser = |s: &str| parse_constraint("--constraint-add", s))]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint (as written when added); repeatable.
    #[arg(long, value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    pub force: bool,
    /// Go back to the previous spec (like `swarm service rollback`).
    #[arg(
        long = "rollback",
        conflicts_with_all = [
            "image", "replicas", "args", "env_add", "env_rm", "constraint_add",
            "constraint_rm", "force", "health_cmd", "health_interval", "health_timeout",
            "health_retries", "health_start_period", "no_healthcheck",
        ]
    )]
    pub do_rollback: bool,
    /// Waiting for convergence.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// Health check.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Rolling update settings (only the ones given change).
    #[command(flatten)]
    pub update: UpdateConfigArgs,
    /// Rollback settings (only the ones given change).
    #[command(flatten)]
    pub rollback: RollbackConfigArgs,
}

impl UpdateArgs {
    /// The update to send for a service whose spec is `current`: only what was given
    /// changes; the update and rollback settings are sent whole, the given fields
    /// replaced. Checked by applying it to `current`.
    pub fn update(
        &self,
        current: &ServiceSpec,
    ) -> std::result::Result<ServiceUpdate, ValidationError> {
        if self.do_rollback {
            return Ok(ServiceUpdate {
                rollback: true,
                update_config: self
                    .update
                    .flags()
                    .any()
                    .then(|| self.update.flags().apply(current.update_config)),
                rollback_config: self
                    .rollback
                    .flags()
                    .any()
                    .then(|| self.rollback.flags().apply(current.rollback_config)),
                ..ServiceUpdate::default()
            });
        }
        if let Some(image) = &self.image
            && (image.trim().is_empty() || image.chars().any(char::is_whitespace))
        {
            return Err(ValidationError::new(
                "--image",
                format!("{image:?} is not an image reference"),
                "give an image loaded with `swarm image load`, e.g. meshd-test:v2",
            ));
        }
        let update = ServiceUpdate {
            spec: None,
            image: self.image.clone(),
            replicas: self.replicas,
            args: self.args.clone().map(|w| w.0),
            env_add: self.env_add.clone(),
            env_rm: self.env_rm.clone(),
            constraint_add: self.constraint_add.clone(),
            constraint_rm: self.constraint_rm.clone(),
            update_config: self
                .update
                .flags()
                .any()
                .then(|| self.update.flags().apply(current.update_config)),
            rollback_config: self
                .rollback
                .flags()
                .any()
                .then(|| self.rollback.flags().apply(current.rollback_config)),
            healthcheck: self
                .health
                .merged(current.task_template.container.healthcheck.as_ref())?,
            force: self.force,
            rollback: false,
        };
        update.apply(current)?;
        Ok(update)
    }
}

/// `swarm service rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Waiting for convergence.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

/// `swarm service rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Service names, IDs or ID prefixes.
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

// ------------------------------------------------------------------ convergence

/// Whether a service has converged, as far as one look tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every wanted task runs the current spec (and is healthy when it has a check).
    Converged,
    /// The update stopped (paused, or rolled back while an update was awaited).
    Stopped(String),
}

/// One look at a converging service: the progress line to print and, once decided, the
/// outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// `web: 2/3 running, 1 starting`.
    pub line: String,
    /// `None` while it is still converging.
    pub outcome: Option<Outcome>,
}

/// Looks at a service and its tasks (`GET /v1/tasks?service=…`) while waiting for it to
/// converge since `since_ms` (failures before that are old news). `rollback` says that a
/// rollback is awaited, so that reaching `rollback_completed` is success.
pub fn progress(view: &ServiceView, tasks: &[Task], since_ms: u64, rollback: bool) -> Progress {
    let svc = &view.service;
    let name = &svc.spec.name;
    let wanted: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.service_id == svc.id && t.desired_state == TaskState::Running)
        .collect();
    let current = |t: &Task| t.spec_version == svc.spec_version;
    let running = wanted
        .iter()
        .filter(|t| current(t) && t.is_serving())
        .count() as u64;
    let desired = view.desired_tasks;
    let mut line = format!("{name}: {running}/{desired} running");
    let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in &wanted {
        let state = if !current(t) {
            "to replace"
        } else if t.status.state == TaskState::Running {
            match t.status.health {
                mesh_api::Health::Starting => "health starting",
                mesh_api::Health::Unhealthy => "unhealthy",
                _ => continue,
            }
        } else {
            t.status.state.as_str()
        };
        *states.entry(state).or_default() += 1;
    }
    for (state, n) in &states {
        line.push_str(&format!(", {n} {state}"));
    }
    if let Some(pending) = wanted
        .iter()
        .find(|t| t.status.state == TaskState::Pending && !t.status.message.is_empty())
    {
        line.push_str(&format!("; pending: {}", pending.status.message));
    }
    let failed = tasks
        .iter()
        .filter(|t| {
            t.service_id == svc.id
                && matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
                && t.status.timestamp >= since_ms
        })
        .max_by_key(|t| t.status.timestamp);
    if let Some(t) = failed {
        let why = if t.status.err.is_empty() {
            t.status.state.as_str()
        } else {
            t.status.err.as_str()
        };
        line.push_str(&format!("; {} {}: {why}", t.display_name(), t.status.state));
    }
    let mut in_progress = false;
    if let Some(u) = &svc.update_status {
        in_progress = u.state.in_progress();
        if in_progress {
            line.push_str(&format!(" ({})", u.state.as_str().replace('_', " ")));
        }
        let stopped = match u.state {
            UpdateState::Paused | UpdateState::RollbackPaused => true,
            UpdateState::RollbackCompleted => !rollback && u.started_at >= since_ms,
            _ => false,
        };
        if stopped {
            let reason = if u.message.is_empty() {
                u.state.as_str().replace('_', " ")
            } else {
                format!("{}: {}", u.state.as_str().replace('_', " "), u.message)
            };
            return Progress {
                line,
                outcome: Some(Outcome::Stopped(reason)),
            };
        }
    }
    let global = matches!(svc.spec.mode, ServiceMode::Global);
    let converged = running == desired
        && wanted.len() as u64 == desired
        && wanted.iter().all(|t| current(t))
        && !in_progress
        && (desired > 0 || !global);
    Progress {
        line,
        outcome: converged.then_some(Outcome::Converged),
    }
}

/// How long `--detach=false` waits for `view` to converge: two minutes, plus the update
/// delay and monitoring period of every task.
pub fn converge_timeout_ms(view: &ServiceView) -> u64 {
    let u = &view.service.spec.update_config;
    CONVERGE_TIMEOUT_MS.saturating_add(
        view.desired_tasks
            .saturating_mul(u.delay_ms.saturating_add(u.monitor_ms)),
    )
}

/// Waits until `reference` converged, printing each new progress line unless `quiet`.
pub async fn wait_converged(
    ctx: &mut Ctx<'_>,
    reference: &str,
    quiet: bool,
    rollback: bool,
) -> Result<()> {
    let since = now_ms();
    let mut deadline: Option<u64> = None;
    let mut last = String::new();
    loop {
        let view: ServiceView = ctx
            .client
            .get(&service_route(routes::SERVICE, reference))
            .await?;
        let tasks: Vec<Task> = ctx
            .client
            .get(&tasks_route(&TaskQuery {
                service: Some(view.service.id.clone()),
                ..TaskQuery::default()
            }))
            .await?;
        let p = progress(&view, &tasks, since, rollback);
        if !quiet && p.line != last {
            ctx.println(&p.line)?;
        }
        last = p.line;
        let name = view.service.spec.name.clone();
        match p.outcome {
            Some(Outcome::Converged) => {
                if !quiet {
                    ctx.println(&format!("{name}: converged"))?;
                }
                return Ok(());
            }
            Some(Outcome::Stopped(reason)) => {
                return Err(CliError::UpdateStopped {
                    service: name,
                    reason,
                });
            }
            None => {}
        }
        let limit = *deadline.get_or_insert_with(|| converge_timeout_ms(&view));
        let waited = now_ms().saturating_sub(since);
        if waited >= limit {
            return Err(CliError::NotConverged {
                service: name,
                waited: format_duration_ms(waited / 1_000 * 1_000),
                progress: last,
            });
        }
        tokio::time::sleep(CONVERGE_POLL).await;
    }
}

// ------------------------------------------------------------------ verbs

/// Runs a `swarm service` verb.
pub async fn run(ctx: &mut Ctx<'_>, command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Create(a) => create(ctx, *a).await,
        ServiceCommand::Ls(a) => ls(ctx, a).await,
        ServiceCommand::Ps(a) => ps(ctx, a).await,
        ServiceCommand::Inspect(a) => inspect(ctx, a).await,
        ServiceCommand::Logs(a) => logs(ctx, a).await,
        ServiceCommand::Scale(a) => scale(ctx, a).await,
        ServiceCommand::Update(a) => update(ctx, *a).await,
        ServiceCommand::Rollback(a) => rollback(ctx, a).await,
        ServiceCommand::Rm(a) => rm(ctx, a).await,
    }
}

/// The route of a service as the user named it.
pub fn service_route(template: &str, reference: &str) -> String {
    path(template, &[("service", &encode_segment(reference))])
}

/// `swarm service create`: prints the new service's ID (then its progress with
/// `--detach=false`).
pub async fn create(ctx: &mut Ctx<'_>, args: CreateArgs) -> Result<()> {
    let spec = args.spec()?;
    let service: Service = ctx.client.post(routes::SERVICES, &spec).await?;
    debug!(id = %service.id, name = %service.spec.name, "service created");
    ctx.println(&service.id)?;
    if !args.wait.detach {
        wait_converged(ctx, &service.id, args.wait.quiet, false).await?;
    }
    Ok(())
}

/// `swarm service ls`.
pub async fn ls(ctx: &mut Ctx<'_>, args: LsArgs) -> Result<()> {
    let mut views: Vec<(ServiceView, Box<RawValue>)> = get_list(ctx, routes::SERVICES)
        .await?
        .into_iter()
        .filter(|(v, _): &(ServiceView, _)| {
            passes(&args.filter, ServiceFilter::key, |f| f.matches(&v.service))
        })
        .collect();
    views.sort_by(|a, b| service_order(&a.0, &b.0));
    if args.quiet {
        let ids: String = views
            .iter()
            .map(|(v, _)| format!("{}\n", v.service.id))
            .collect();
        return ctx.print(&ids);
    }
    match args.format {
        Format::Json => {
            let lines: String = views
                .iter()
                .map(|(_, raw)| reformat_json(raw.get(), None) + "\n")
                .collect();
            ctx.print(&lines)
        }
        Format::Human => {
            let views: Vec<ServiceView> = views.into_iter().map(|(v, _)| v).collect();
            ctx.print(&service_table(&views))
        }
    }
}

/// `swarm service ps`: the tasks of every service given, in one table.
pub async fn ps(ctx: &mut Ctx<'_>, args: PsArgs) -> Result<()> {
    // `-f desired-state=running` alone is also asked of the daemon.
    let desired: Vec<&TaskFilter> = args
        .filter
        .iter()
        .filter(|f| matches!(f, TaskFilter::DesiredState(_)))
        .collect();
    let only_running = !desired.is_empty()
        && desired
            .iter()
            .all(|f| **f == TaskFilter::DesiredState(TaskState::Running));
    let node_names = node_names(ctx).await;
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let mut tasks: Vec<(Task, Box<RawValue>)> = Vec::new();
    let mut seen = BTreeSet::new();
    let result = for_each(ctx, &args.services, async |ctx, reference| {
        let view: ServiceView = ctx
            .client
            .get(&service_route(routes::SERVICE, reference))
            .await?;
        let route = tasks_route(&TaskQuery {
            service: Some(view.service.id.clone()),
            running: only_running,
            ..TaskQuery::default()
        });
        for (task, raw) in get_list::<Task>(ctx, &route).await? {
            if seen.insert(task.id.clone())
                && passes(&args.filter, TaskFilter::key, |f| {
                    f.matches(&task, &node_names)
                })
            {
                tasks.push((task, raw));
            }
        }
        services.insert(view.service.id.clone(), view.service);
        Ok(())
    })
    .await;
    if let Err(e) = &result
        && is_fatal(e)
    {
        return result;
    }
    tasks.sort_by(|a, b| task_order(&a.0, &b.0));
    if args.quiet {
        let ids: String = tasks
            .iter()
            .map(|(t, _)| format!("{}\n", table_id(&t.id, args.no_trunc)))
            .collect();
        ctx.print(&ids)?;
        return result;
    }
    match args.format {
        Format::Json => {
            let lines: String = tasks
                .iter()
                .map(|(_, raw)| reformat_json(raw.get(), None) + "\n")
                .collect();
            ctx.print(&lines)?;
        }
        Format::Human => {
            let tasks: Vec<Task> = tasks.into_iter().map(|(t, _)| t).collect();
            let context = PsContext {
                now_ms: now_ms(),
                no_trunc: args.no_trunc,
                node_names: &node_names,
                services: &services,
            };
            ctx.print(&ps_table(&tasks, &context))?;
        }
    }
    result
}

/// `swarm service inspect`: the services found as one JSON array (or `--pretty` blocks),
/// then a failure for each one that was not.
pub async fn inspect(ctx: &mut Ctx<'_>, args: InspectArgs) -> Result<()> {
    let mut found: Vec<Box<RawValue>> = Vec::new();
    let result = for_each(ctx, &args.services, async |ctx, reference| {
        let raw: Box<RawValue> = ctx
            .client
            .get(&service_route(routes::SERVICE, reference))
            .await?;
        found.push(raw);
        Ok(())
    })
    .await;
    if let Err(e) = &result
        && is_fatal(e)
    {
        return result;
    }
    if args.pretty {
        let networks: BTreeMap<String, String> = match ctx
            .client
            .get::<Vec<mesh_api::NetworkView>>(routes::NETWORKS)
            .await
        {
            Ok(list) => list
                .into_iter()
                .map(|v| (v.network.id, v.network.spec.name))
                .collect(),
            Err(e) => {
                debug!(error = %e, "no network names; printing network IDs");
                BTreeMap::new()
            }
        };
        let now = now_ms();
        let mut blocks = Vec::with_capacity(found.len());
        for raw in &found {
            let view: ServiceView = decode_raw(routes::SERVICE, raw)?;
            blocks.push(service_pretty(&view, &networks, now));
        }
        ctx.print(&blocks.join("\n"))?;
    } else {
        let array = format!(
            "[{}]",
            found.iter().map(|r| r.get()).collect::<Vec<_>>().join(",")
        );
        let indent = (args.format != Some(Format::Json)).then_some("    ");
        ctx.println(&reformat_json(&array, indent))?;
    }
    result
}

/// The tasks `service logs` reads: those of the service, or the one task named.
async fn log_targets(ctx: &Ctx<'_>, target: &str) -> Result<(Option<String>, Vec<Task>)> {
    match ctx
        .client
        .get::<ServiceView>(&service_route(routes::SERVICE, target))
        .await
    {
        Ok(view) => {
            let tasks: Vec<Task> = ctx
                .client
                .get(&tasks_route(&TaskQuery {
                    service: Some(view.service.id.clone()),
                    ..TaskQuery::default()
                }))
                .await?;
            Ok((Some(view.service.id), tasks))
        }
        Err(CliError::Daemon { status: 404, .. }) => {
            match ctx.client.get::<Task>(&task_route(target)).await {
                Ok(task) => Ok((None, vec![task])),
                Err(CliError::Daemon { status: 404, .. }) => Err(CliError::Daemon {
                    status: 404,
                    message: format!(
                        "no such service or task: {target}; `swarm service ls` lists the services, `swarm service ps SERVICE` their tasks"
                    ),
                }),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The prefix style of `args` for `tasks`: slot numbers padded to the widest.
fn prefix_style(args: &LogsArgs, tasks: &[Task]) -> PrefixStyle {
    let widest = tasks.iter().map(|t| t.slot).max().unwrap_or(1);
    PrefixStyle {
        no_task_ids: args.no_task_ids,
        no_trunc: args.no_trunc,
        slot_width: widest.max(1).to_string().len(),
    }
}

/// `swarm service logs`: each task's output, its lines prefixed with
/// `web.1.TASKID@HOST    | `; with `-f`, new output of every task (new tasks included)
/// until Ctrl-C.
pub async fn logs(ctx: &mut Ctx<'_>, args: LogsArgs) -> Result<()> {
    let (service_id, mut tasks) = log_targets(ctx, &args.target).await?;
    tasks.sort_by(task_order);
    let mut names = node_names(ctx).await;
    let style = prefix_style(&args, &tasks);
    let mut logs: Vec<TaskLog> = Vec::new();
    for t in tasks {
        let node = crate::format::service::node_column(&names, &t.node_id);
        logs.push(TaskLog::new(
            t.clone(),
            log_prefix(&t, &node, style),
            args.tail.0,
        ));
    }
    if !args.follow {
        let mut failed = 0;
        let total = logs.len();
        for log in &mut logs {
            if log.task.node_id.is_empty() {
                continue;
            }
            match log.read_all(ctx).await {
                Ok(()) => {}
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    super::report(&e);
                    failed += 1;
                }
            }
        }
        return if failed == 0 {
            Ok(())
        } else {
            Err(CliError::SomeFailed { failed, total })
        };
    }
    let mut round: u64 = 0;
    loop {
        for log in logs.iter_mut().filter(|l| !l.finished) {
            if log.task.node_id.is_empty() {
                continue;
            }
            match log.poll(ctx).await {
                Ok(_) => {}
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => debug!(task = %log.task.id, error = %e, "no logs yet"),
            }
        }
        round += 1;
        // Every second: pick up new tasks and tasks that got a node.
        if round.is_multiple_of(5)
            && let Some(id) = &service_id
        {
            let listed: Vec<Task> = match ctx
                .client
                .get(&tasks_route(&TaskQuery {
                    service: Some(id.clone()),
                    ..TaskQuery::default()
                }))
                .await
            {
                Ok(list) => list,
                // The service was removed: nothing more will come.
                Err(CliError::Daemon { status: 404, .. }) => return Ok(()),
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    debug!(error = %e, "cannot list the tasks");
                    tokio::time::sleep(FOLLOW_INTERVAL).await;
                    continue;
                }
            };
            // Tasks removed from the cluster took their output with them.
            for log in &mut logs {
                if !listed.iter().any(|t| t.id == log.task.id) {
                    log.finished = true;
                }
            }
            if listed
                .iter()
                .any(|t| !t.node_id.is_empty() && !names.contains_key(&t.node_id))
            {
                names = node_names(ctx).await;
            }
            let style = prefix_style(&args, &listed);
            for t in listed {
                let node = crate::format::service::node_column(&names, &t.node_id);
                let prefix = log_prefix(&t, &node, style);
                match logs.iter_mut().find(|l| l.task.id == t.id) {
                    Some(log) => {
                        if log.task.node_id.is_empty() {
                            log.prefix = prefix;
                        }
                        log.task = t;
                    }
                    None => logs.push(TaskLog::new(t, prefix, args.tail.0)),
                }
            }
        }
        if service_id.is_none() && logs.iter().all(|l| l.finished) {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// `swarm service scale`: prints `web scaled to 5` for each service.
pub async fn scale(ctx: &mut Ctx<'_>, args: ScaleArgs) -> Result<()> {
    let mut scaled: Vec<&str> = Vec::new();
    let mut failed = 0;
    for (name, replicas) in &args.scales {
        let update = ServiceUpdate {
            replicas: Some(*replicas),
            ..ServiceUpdate::default()
        };
        let sent: Result<IgnoredAny> = ctx
            .client
            .post(&service_route(routes::SERVICE_UPDATE, name), &update)
            .await;
        match sent {
            Ok(_) => {
                ctx.println(&format!("{name} scaled to {replicas}"))?;
                scaled.push(name);
            }
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                super::report(&e);
                failed += 1;
            }
        }
    }
    if !args.wait.detach {
        for name in scaled {
            wait_converged(ctx, name, args.wait.quiet, false).await?;
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::SomeFailed {
            failed,
            total: args.scales.len(),
        })
    }
}

/// `swarm service update`: reads the service, sends the change, prints its name.
pub async fn update(ctx: &mut Ctx<'_>, args: UpdateArgs) -> Result<()> {
    let current: ServiceView = ctx
        .client
        .get(&service_route(routes::SERVICE, &args.service))
        .await?;
    let update = args.update(&current.service.spec)?;
    let _: IgnoredAny = ctx
        .client
        .post(
            &service_route(routes::SERVICE_UPDATE, &current.service.id),
            &update,
        )
        .await?;
    ctx.println(&args.service)?;
    if !args.wait.detach {
        wait_converged(ctx, &current.service.id, args.wait.quiet, update.rollback).await?;
    }
    Ok(())
}

/// `swarm service rollback`: prints the service's name.
pub async fn rollback(ctx: &mut Ctx<'_>, args: RollbackArgs) -> Result<()> {
    let update = ServiceUpdate {
        rollback: true,
        ..ServiceUpdate::default()
    };
    let service: Service = ctx
        .client
        .post(
            &service_route(routes::SERVICE_UPDATE, &args.service),
            &update,
        )
        .await?;
    ctx.println(&args.service)?;
    if !args.wait.detach {
        wait_converged(ctx, &service.id, args.wait.quiet, true).await?;
    }
    Ok(())
}

/// `swarm service rm`: prints each service as it was named once removed.
pub async fn rm(ctx: &mut Ctx<'_>, args: RmArgs) -> Result<()> {
    for_each(ctx, &args.services, async |ctx, reference| {
        ctx.client
            .delete(&service_route(routes::SERVICE, reference))
            .await?;
        ctx.println(reference)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{Cli, Command};
    use clap::Parser;
    use mesh_api::{Health, MountType, Protocol, PublishMode, TaskStatus, UpdateStatus};

    fn parse(args: &[&str]) -> std::result::Result<ServiceCommand, String> {
        let full = std::iter::once("swarm")
            .chain(std::iter::once("service"))
            .chain(args.iter().copied());
        match Cli::try_parse_from(full) {
            Ok(Cli {
                command: Command::Service(c),
                ..
            }) => Ok(c),
            Ok(other) => Err(format!("not a service command: {:?}", other.command)),
            Err(e) => Err(e.to_string()),
        }
    }

    fn create(args: &[&str]) -> CreateArgs {
        let mut full = vec!["create"];
        full.extend_from_slice(args);
        match parse(&full) {
            Ok(ServiceCommand::Create(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    fn spec(args: &[&str]) -> ServiceSpec {
        create(args).spec().unwrap()
    }

    fn update_args(args: &[&str]) -> UpdateArgs {
        let mut full = vec!["update"];
        full.extend_from_slice(args);
        full.push("web");
        match parse(&full) {
            Ok(ServiceCommand::Update(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    /// The usage error of a command line, which must name `flag`.
    fn usage_error(args: &[&str], flag: &str) -> String {
        let e = parse(args).unwrap_err();
        assert!(e.contains(flag), "{args:?}: {e}");
        e
    }

    #[test]
    fn words_split_like_a_shell() {
        let w = |s: &str| split_words("--args", s).unwrap();
        assert_eq!(w("sleep 1d"), ["sleep", "1d"]);
        assert_eq!(
            w("  sh  -c 'echo \"a b\"; exit 3' "),
            ["sh", "-c", "echo \"a b\"; exit 3"]
        );
        assert_eq!(
            w(r#"echo "a \"q\" \$HOME \n" x\ y"#),
            ["echo", r#"a "q" $HOME \n"#, "x y"]
        );
        assert_eq!(w("''"), [""]);
        assert!(w("").is_empty());
        for bad in ["sh -c 'oops", "echo \"oops", "trailing\\"] {
            let e = split_words("--entrypoint", bad).unwrap_err();
            assert_eq!(e.field, "--entrypoint", "{bad}");
        }
    }

    #[test]
    fn create_defaults_follow_docker() {
        let s = spec(&["--name", "web", "meshd-test:latest"]);
        assert_eq!(s.name, "web");
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 1 });
        let c = &s.task_template.container;
        assert_eq!(c.image, "meshd-test:latest");
        assert_eq!(c.command, None);
        assert!(c.args.is_empty());
        assert_eq!(c.stop_grace_period_ms, 10_000);
        assert_eq!(c.healthcheck, None);
        assert_eq!(s.task_template.restart_policy, RestartPolicy::default());
        assert_eq!(s.update_config, UpdateConfig::default());
        assert_eq!(s.rollback_config, UpdateConfig::default());
        assert_eq!(s.endpoint_spec, EndpointSpec::default());
        assert!(create(&["meshd-test"]).wait.detach);
    }

    #[test]
    fn command_and_args_become_the_containers_args() {
        let s = spec(&[
            "--name",
            "web",
            "busybox",
            "sh",
            "-c",
            "echo hi; sleep 1d",
            "-e",
            "X",
        ]);
        let c = &s.task_template.container;
        assert_eq!(c.command, None);
        assert_eq!(c.args, ["sh", "-c", "echo hi; sleep 1d", "-e", "X"]);
        assert!(c.env.is_empty());
        let s = spec(&["--entrypoint", "/bin/sh -c", "busybox", "echo hi"]);
        let c = &s.task_template.container;
        assert_eq!(
            c.command,
            Some(vec!["/bin/sh".to_string(), "-c".to_string()])
        );
        assert_eq!(c.args, ["echo hi"]);
    }

    #[test]
    fn every_create_flag_lands_in_the_spec() {
        let s = spec(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--env",
            "B=two=2",
            "--workdir",
            "/srv",
            "-u",
            "1000:1000",
            "--hostname",
            "web-host",
            "--mount",
            "type=bind,source=/data,target=/data,readonly",
            "--mount",
            "type=tmpfs,target=/tmp,tmpfs-size=16m",
            "--network",
            "appnet",
            "--network",
            "name=backend,alias=api",
            "-p",
            "8080:80",
            "--publish",
            "mode=host,published=9000,target=9000,protocol=udp",
            "--endpoint-mode",
            "vip",
            "--constraint",
            "node.role==worker",
            "--constraint",
            "node.labels.zone!=b",
            "--replicas-max-per-node",
            "2",
            "--limit-cpu",
            "1.5",
            "--limit-memory",
            "128m",
            "--reserve-cpu",
            "0.25",
            "--reserve-memory",
            "64m",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "2s",
            "--restart-max-attempts",
            "4",
            "--restart-window",
            "1m",
            "--stop-grace-period",
            "30s",
            "--stop-signal",
            "SIGINT",
            "--health-cmd",
            "wget -q -O- localhost",
            "--health-interval",
            "5s",
            "--health-timeout",
            "2s",
            "--health-retries",
            "4",
            "--health-start-period",
            "10s",
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "20s",
            "--update-max-failure-ratio",
            "0.25",
            "--update-order",
            "start-first",
            "--rollback-parallelism",
            "0",
            "--rollback-delay",
            "1s",
            "--rollback-failure-action",
            "continue",
            "--rollback-monitor",
            "3s",
            "--rollback-max-failure-ratio",
            "1",
            "--rollback-order",
            "stop-first",
            "-l",
            "tier=front",
            "--label",
            "team",
            "--container-label",
            "logs=json",
            "meshd-test:latest",
        ]);
        assert_eq!(s.name, "web");
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(s.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(s.labels.get("team").map(String::as_str), Some(""));
        let t = &s.task_template;
        let c = &t.container;
        assert_eq!(c.env, ["A=1", "B=two=2"]);
        assert_eq!(c.dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.hostname.as_deref(), Some("web-host"));
        assert_eq!(c.mounts.len(), 2);
        assert_eq!(
            (
                c.mounts[0].kind,
                c.mounts[0].source.as_str(),
                c.mounts[0].read_only
            ),
            (MountType::Bind, "/data", true)
        );
        assert_eq!(
            (c.mounts[1].kind, c.mounts[1].tmpfs_size),
            (MountType::Tmpfs, 16 << 20)
        );
        assert_eq!(c.stop_grace_period_ms, 30_000);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(
            c.healthcheck,
            Some(HealthConfig {
                cmd: "wget -q -O- localhost".into(),
                interval_ms: 5_000,
                timeout_ms: 2_000,
                retries: 4,
                start_period_ms: 10_000,
            })
        );
        assert_eq!(c.labels.get("logs").map(String::as_str), Some("json"));
        assert_eq!(t.networks.len(), 2);
        assert_eq!(t.networks[0].target, "appnet");
        assert_eq!(
            (
                t.networks[1].target.as_str(),
                t.networks[1].aliases.as_slice()
            ),
            ("backend", &["api".to_string()][..])
        );
        assert_eq!(
            t.placement.constraints,
            ["node.role==worker", "node.labels.zone!=b"]
        );
        assert_eq!(t.placement.max_replicas, 2);
        assert_eq!(
            t.resources,
            Resources {
                limits: ResourceAmounts {
                    nano_cpus: 1_500_000_000,
                    memory_bytes: 128 << 20
                },
                reservations: ResourceAmounts {
                    nano_cpus: 250_000_000,
                    memory_bytes: 64 << 20
                },
            }
        );
        assert_eq!(
            t.restart_policy,
            RestartPolicy {
                condition: RestartCondition::OnFailure,
                delay_ms: 2_000,
                max_attempts: 4,
                window_ms: 60_000,
            }
        );
        assert_eq!(
            s.update_config,
            UpdateConfig {
                parallelism: 2,
                delay_ms: 10_000,
                failure_action: FailureAction::Rollback,
                monitor_ms: 20_000,
                max_failure_permille: 250,
                order: UpdateOrder::StartFirst,
            }
        );
        assert_eq!(
            s.rollback_config,
            UpdateConfig {
                parallelism: 0,
                delay_ms: 1_000,
                failure_action: FailureAction::Continue,
                monitor_ms: 3_000,
                max_failure_permille: 1000,
                order: UpdateOrder::StopFirst,
            }
        );
        assert_eq!(s.endpoint_spec.mode, EndpointMode::Vip);
        assert_eq!(
            s.endpoint_spec.ports,
            [
                PortConfig {
                    protocol: Protocol::Tcp,
                    target_port: 80,
                    published_port: 8080,
                    publish_mode: PublishMode::Ingress,
                    proxy_protocol: false,
                },
                PortConfig {
                    protocol: Protocol::Udp,
                    target_port: 9000,
                    published_port: 9000,
                    publish_mode: PublishMode::Host,
                    proxy_protocol: false,
                },
            ]
        );
    }

    #[test]
    fn global_dnsrr_and_detach_flags() {
        let a = create(&[
            "--mode",
            "global",
            "--endpoint-mode",
            "dnsrr",
            "--detach=false",
            "-q",
            "meshd-test",
        ]);
        assert!(!a.wait.detach && a.wait.quiet);
        let s = a.spec().unwrap();
        assert_eq!(s.mode, ServiceMode::Global);
        assert_eq!(s.endpoint_spec.mode, EndpointMode::Dnsrr);
        assert!(create(&["-d", "meshd-test"]).wait.detach);
        assert!(!create(&["-d=false", "meshd-test"]).wait.detach);
    }

    #[test]
    fn a_missing_name_is_made_from_the_image() {
        let s = spec(&["registry:5000/team/Web.App:v2"]);
        assert!(s.name.starts_with("web-app-"), "{}", s.name);
        assert_eq!(s.name.len(), "web-app-".len() + 6);
        assert!(generated_name("@@@").starts_with("service-"));
    }

    #[test]
    fn env_without_a_value_comes_from_this_shell() {
        // PATH is set in every test environment.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(parse_env("--env", "PATH").unwrap(), format!("PATH={path}"));
        let e = parse_env("--env", "SWARM_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert_eq!(e.field, "--env");
        assert!(
            e.fix.contains("SWARM_TEST_SURELY_UNSET_VARIABLE=VALUE"),
            "{e}"
        );
        assert_eq!(parse_env("--env-add", "=x").unwrap_err().field, "--env-add");
    }

    #[test]
    fn bad_create_flags_are_usage_errors_naming_the_flag() {
        for (flag, value, words) in [
            ("--name", "bad name", "not a valid service name"),
            ("--replicas", "three", "not a number of tasks"),
            ("--mode", "everywhere", "use --mode replicated"),
            ("--env", "=1", "KEY=VALUE"),
            ("--entrypoint", "sh -c 'x", "unterminated"),
            ("--mount", "type=nfs,target=/x", "unknown type"),
            ("--network", "name=a,colour=red", "name=… or alias=…"),
            ("--publish", "8080:80/sctp", "unknown protocol"),
            ("--endpoint-mode", "lb", "use vip"),
            ("--constraint", "node.labels.zone=a", "no == or != operator"),
            ("--replicas-max-per-node", "two", "not a whole number"),
            ("--limit-cpu", "lots", "not a number of CPUs"),
            ("--limit-memory", "1 bucket", "not a size"),
            ("--reserve-cpu", "much", "not a number of CPUs"),
            ("--reserve-memory", "x", "not a size"),
            (
                "--restart-condition",
                "always",
                "use none, on-failure or any",
            ),
            ("--restart-delay", "5x", "not a duration"),
            ("--restart-max-attempts", "many", "not a whole number"),
            ("--restart-window", "soon", "not a duration"),
            ("--stop-grace-period", "later", "not a duration"),
            ("--stop-signal", "SIGNOPE", "unknown signal"),
            ("--health-interval", "0s", "a zero duration"),
            ("--health-timeout", "x", "not a duration"),
            ("--health-retries", "0", "not a positive number"),
            ("--health-start-period", "x", "not a duration"),
            ("--update-parallelism", "x", "not a whole number"),
            ("--update-delay", "x", "not a duration"),
            (
                "--update-failure-action",
                "panic",
                "use pause, continue or rollback",
            ),
            ("--update-monitor", "x", "not a duration"),
            (
                "--update-max-failure-ratio",
                "1.5",
                "not a ratio from 0 to 1",
            ),
            ("--update-order", "random", "use stop-first"),
            ("--rollback-parallelism", "x", "not a whole number"),
            ("--rollback-delay", "x", "not a duration"),
            (
                "--rollback-failure-action",
                "rollback",
                "a rollback cannot roll back",
            ),
            ("--rollback-monitor", "x", "not a duration"),
            (
                "--rollback-max-failure-ratio",
                "2",
                "not a ratio from 0 to 1",
            ),
            ("--rollback-order", "x", "use stop-first"),
            ("--label", "bad key=1", "label key"),
            ("--container-label", "=x", "empty label key"),
        ] {
            let e = usage_error(
                &["create", flag, value, "meshd-test"],
                &format!("invalid {flag}"),
            );
            assert!(e.contains(words), "{flag} {value}: {e}");
        }
        usage_error(&["create", "--detach=maybe", "meshd-test"], "--detach");
        usage_error(
            &[
                "create",
                "--no-healthcheck",
                "--health-cmd",
                "true",
                "meshd-test",
            ],
            "--no-healthcheck",
        );
    }

    #[test]
    fn flags_that_do_not_fit_together_name_the_flag() {
        for (args, field) in [
            (vec!["--mode", "global", "--replicas", "2"], "--replicas"),
            (
                vec!["--mode", "global", "--replicas-max-per-node", "1"],
                "--replicas-max-per-node",
            ),
            (vec!["--health-interval", "5s"], "--health-cmd"),
            (vec!["--limit-memory", "1k"], "--limit-memory"),
            (
                vec!["--limit-memory", "64m", "--reserve-memory", "128m"],
                "--reserve-memory",
            ),
            (vec!["--network", "a", "--network", "a"], "--network"),
            (vec!["-p", "80:80", "-p", "80:81"], "--publish"),
            (
                vec!["--endpoint-mode", "dnsrr", "-p", "80:80"],
                "--endpoint-mode",
            ),
            (vec!["--workdir", "relative"], "--workdir"),
            (
                vec!["--mount", "type=bind,source=rel,target=/x"],
                "--mount source",
            ),
        ] {
            let mut full = args.clone();
            full.push("meshd-test");
            let e = create(&full).spec().unwrap_err();
            assert_eq!(e.field, field, "{args:?}: {e}");
            assert!(!e.fix.is_empty());
        }
        let e = create(&["--name", "web", "bad image"]).spec().unwrap_err();
        assert_eq!(e.field, "IMAGE");
    }

    fn current() -> ServiceSpec {
        let mut s = spec(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "--constraint",
            "node.role==worker",
            "--update-delay",
            "10s",
            "--rollback-order",
            "start-first",
            "--health-cmd",
            "true",
            "meshd-test:v1",
            "sleep",
            "1d",
        ]);
        s.update_config.monitor_ms = 7_000;
        s
    }

    #[test]
    fn update_sends_only_what_was_given() {
        let u = update_args(&["--image", "meshd-test:v2"])
            .update(&current())
            .unwrap();
        assert_eq!(
            u,
            ServiceUpdate {
                image: Some("meshd-test:v2".into()),
                ..ServiceUpdate::default()
            }
        );
        let u = update_args(&[
            "--replicas",
            "5",
            "--args",
            "sleep '2 d'",
            "--env-add",
            "A=9",
            "--env-rm",
            "B",
            "--constraint-add",
            "node.labels.zone==a",
            "--constraint-rm",
            "node.role==worker",
            "--force",
        ])
        .update(&current())
        .unwrap();
        assert_eq!(u.replicas, Some(5));
        assert_eq!(u.args, Some(vec!["sleep".to_string(), "2 d".to_string()]));
        assert_eq!(u.env_add, ["A=9"]);
        assert_eq!(u.env_rm, ["B"]);
        assert_eq!(u.constraint_add, ["node.labels.zone==a"]);
        assert_eq!(u.constraint_rm, ["node.role==worker"]);
        assert!(u.force && !u.rollback);
        assert_eq!(
            (u.update_config, u.rollback_config, u.healthcheck.clone()),
            (None, None, None)
        );
        let next = u.apply(&current()).unwrap();
        assert_eq!(next.task_template.container.env, ["A=9"]);
        assert_eq!(
            next.task_template.placement.constraints,
            ["node.labels.zone==a"]
        );
    }

    #[test]
    fn update_settings_merge_into_the_current_ones() {
        let u = update_args(&["--update-parallelism", "3", "--rollback-monitor", "9s"])
            .update(&current())
            .unwrap();
        assert_eq!(
            u.update_config,
            Some(UpdateConfig {
                parallelism: 3,
                delay_ms: 10_000,
                monitor_ms: 7_000,
                ..UpdateConfig::default()
            })
        );
        assert_eq!(
            u.rollback_config,
            Some(UpdateConfig {
                monitor_ms: 9_000,
                order: UpdateOrder::StartFirst,
                ..UpdateConfig::default()
            })
        );
        assert_eq!(u.image, None);
    }

    #[test]
    fn update_health_flags_change_the_current_check() {
        let u = update_args(&["--health-retries", "7"])
            .update(&current())
            .unwrap();
        assert_eq!(
            u.healthcheck,
            Some(Some(HealthConfig {
                cmd: "true".into(),
                interval_ms: 30_000,
                timeout_ms: 30_000,
                retries: 7,
                start_period_ms: 0,
            }))
        );
        let u = update_args(&["--no-healthcheck"])
            .update(&current())
            .unwrap();
        assert_eq!(u.healthcheck, Some(None));
        let mut bare = current();
        bare.task_template.container.healthcheck = None;
        let e = update_args(&["--health-timeout", "1s"])
            .update(&bare)
            .unwrap_err();
        assert_eq!(e.field, "--health-cmd");
        let u = update_args(&["--health-cmd", "exit 0"])
            .update(&bare)
            .unwrap();
        assert_eq!(u.healthcheck.flatten().map(|h| h.interval_ms), Some(30_000));
    }

    #[test]
    fn update_rollback_stands_alone() {
        let u = update_args(&["--rollback"]).update(&current()).unwrap();
        assert_eq!(
            u,
            ServiceUpdate {
                rollback: true,
                ..ServiceUpdate::default()
            }
        );
        let e = parse(&["update", "--rollback", "--image", "x", "web"]).unwrap_err();
        assert!(e.contains("--rollback") && e.contains("--image"), "{e}");
    }

    #[test]
    fn update_errors_name_the_flag() {
        let mut global = current();
        global.mode = ServiceMode::Global;
        let e = update_args(&["--replicas", "2"])
            .update(&global)
            .unwrap_err();
        assert_eq!(e.field, "--replicas");
        let e = update_args(&["--image", " "])
            .update(&current())
            .unwrap_err();
        assert_eq!(e.field, "--image");
        usage_error(&["update", "--env-rm", "A=1", "web"], "invalid --env-rm");
        usage_error(
            &["update", "--constraint-add", "zone", "web"],
            "invalid --constraint-add",
        );
        usage_error(&["update", "--args", "'open", "web"], "invalid --args");
    }

    #[test]
    fn scale_arguments_parse() {
        assert_eq!(parse_scale("web=5"), Ok(("web".to_string(), 5)));
        assert_eq!(parse_scale("web=0"), Ok(("web".to_string(), 0)));
        for (bad, words) in [
            ("web", "has no '='"),
            ("=3", "names no service"),
            ("web=-1", "not a number of replicas"),
            ("web=lots", "not a number of replicas"),
        ] {
            let e = parse_scale(bad).unwrap_err();
            assert_eq!(e.field, "SERVICE=REPLICAS", "{bad}");
            assert!(e.problem.contains(words), "{bad}: {e}");
        }
        let e = usage_error(&["scale", "web"], "invalid SERVICE=REPLICAS");
        assert!(e.contains("swarm service scale web=5"), "{e}");
        match parse(&["scale", "web=3", "db=1", "--detach=false"]) {
            Ok(ServiceCommand::Scale(a)) => {
                assert_eq!(a.scales, [("web".to_string(), 3), ("db".to_string(), 1)]);
                assert!(!a.wait.detach);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn service_filters() {
        let f = |s: &str| ServiceFilter::parse(s).unwrap();
        let mut svc = create(&["--name", "web", "-l", "tier=front", "meshd-test"])
            .spec()
            .unwrap();
        svc.mode = ServiceMode::Replicated { replicas: 1 };
        let service = Service {
            id: "svc1".into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            spec: svc,
            spec_version: 1,
            previous_spec: None,
            previous_spec_version: 0,
            update_status: None,
            ports: Vec::new(),
            virtual_ips: Vec::new(),
        };
        assert!(f("name=we").matches(&service));
        assert!(f("id=svc").matches(&service));
        assert!(f("mode=replicated").matches(&service));
        assert!(!f("mode=global").matches(&service));
        assert!(f("label=tier=front").matches(&service));
        assert!(!f("label=tier=back").matches(&service));
        for bad in ["mode=both", "colour=red", "name"] {
            assert_eq!(
                ServiceFilter::parse(bad).unwrap_err().field,
                "--filter",
                "{bad}"
            );
        }
        let filters = [f("name=db"), f("name=web"), f("mode=replicated")];
        assert!(passes(&filters, ServiceFilter::key, |x| x.matches(&service)));
        let filters = [f("name=web"), f("mode=global")];
        assert!(!passes(&filters, ServiceFilter::key, |x| x.matches(&service)));
    }

    fn task(slot: u64, version: u64, state: TaskState, desired: TaskState) -> Task {
        Task {
            id: format!("t{slot}v{version}{}", state.as_str()),
            version: 1,
            created_at: 1_000,
            updated_at: 1_000,
            service_id: "svc1".into(),
            service_name: "web".into(),
            slot,
            node_id: "n1".into(),
            spec: TaskSpec::default(),
            spec_version: version,
            desired_state: desired,
            status: TaskStatus {
                state,
                timestamp: 2_000,
                ..Default::default()
            },
            networks: Vec::new(),
            host_ports: Vec::new(),
        }
    }

    fn web_view(replicas: u64, spec_version: u64) -> ServiceView {
        let spec = create(&[
            "--name",
            "web",
            "--replicas",
            &replicas.to_string(),
            "meshd-test",
        ])
        .spec()
        .unwrap();
        ServiceView {
            service: Service {
                id: "svc1".into(),
                version: 1,
                created_at: 0,
                updated_at: 0,
                spec,
                spec_version,
                previous_spec: None,
                previous_spec_version: 0,
                update_status: None,
                ports: Vec::new(),
                virtual_ips: Vec::new(),
            },
            running_tasks: 0,
            desired_tasks: replicas,
        }
    }

    #[test]
    fn progress_counts_running_tasks_of_the_current_spec() {
        use TaskState::{Pending, Preparing, Running, Shutdown};
        let view = web_view(3, 2);
        let p = progress(&view, &[], 0, false);
        assert_eq!(p.line, "web: 0/3 running");
        assert_eq!(p.outcome, None);
        let mut pending = task(3, 2, Pending, Running);
        pending.status.message = "no suitable node (2 nodes are drained)".into();
        let tasks = [
            task(1, 2, Running, Running),
            task(2, 1, Running, Running),
            pending,
            task(1, 1, Shutdown, Shutdown),
        ];
        let p = progress(&view, &tasks, 0, false);
        assert_eq!(
            p.line,
            "web: 1/3 running, 1 pending, 1 to replace; pending: no suitable node (2 nodes are drained)"
        );
        assert_eq!(p.outcome, None);
        let tasks = [
            task(1, 2, Running, Running),
            task(2, 2, Preparing, Running),
            task(3, 2, Running, Running),
        ];
        assert_eq!(
            progress(&view, &tasks, 0, false).line,
            "web: 2/3 running, 1 preparing"
        );
        let tasks = [
            task(1, 2, Running, Running),
            task(2, 2, Running, Running),
            task(3, 2, Running, Running),
            task(2, 1, Shutdown, Shutdown),
        ];
        let p = progress(&view, &tasks, 0, false);
        assert_eq!(p.line, "web: 3/3 running");
        assert_eq!(p.outcome, Some(Outcome::Converged));
    }

    #[test]
    fn progress_waits_for_health_and_names_recent_failures() {
        use TaskState::{Failed, Running, Shutdown};
        let view = web_view(1, 1);
        let mut starting = task(1, 1, Running, Running);
        starting.status.health = Health::Starting;
        let mut failed = task(1, 1, Failed, Shutdown);
        failed.status.err = "task: non-zero exit (2)".into();
        failed.status.timestamp = 5_000;
        let p = progress(&view, &[starting.clone(), failed.clone()], 4_000, false);
        assert_eq!(
            p.line,
            "web: 0/1 running, 1 health starting; web.1 failed: task: non-zero exit (2)"
        );
        assert_eq!(p.outcome, None);
        // Failures from before the wait began are old news.
        let p = progress(&view, &[starting, failed], 6_000, false);
        assert_eq!(p.line, "web: 0/1 running, 1 health starting");
    }

    #[test]
    fn progress_stops_on_a_paused_or_rolled_back_update() {
        use TaskState::Running;
        let mut view = web_view(1, 2);
        let tasks = [task(1, 2, Running, Running)];
        view.service.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: 10,
            completed_at: 0,
            message: String::new(),
        });
        let p = progress(&view, &tasks, 0, false);
        assert_eq!(p.line, "web: 1/1 running (updating)");
        assert_eq!(p.outcome, None);
        view.service.update_status = Some(UpdateStatus {
            state: UpdateState::Paused,
            started_at: 10,
            completed_at: 0,
            message: "update paused: 1 task failed".into(),
        });
        assert_eq!(
            progress(&view, &tasks, 0, false).outcome,
            Some(Outcome::Stopped(
                "paused: update paused: 1 task failed".into()
            ))
        );
        view.service.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackCompleted,
            started_at: 10,
            completed_at: 20,
            message: String::new(),
        });
        assert_eq!(
            progress(&view, &tasks, 0, false).outcome,
            Some(Outcome::Stopped("rollback completed".into()))
        );
        assert_eq!(
            progress(&view, &tasks, 0, true).outcome,
            Some(Outcome::Converged)
        );
        // A rollback from before this wait is history.
        assert_eq!(
            progress(&view, &tasks, 50, false).outcome,
            Some(Outcome::Converged)
        );
    }

    #[test]
    fn a_global_service_needs_tasks_to_converge() {
        let mut view = web_view(1, 1);
        view.service.spec.mode = ServiceMode::Global;
        view.desired_tasks = 0;
        assert_eq!(progress(&view, &[], 0, false).outcome, None);
        let mut scaled_to_zero = web_view(0, 1);
        scaled_to_zero.desired_tasks = 0;
        assert_eq!(
            progress(&scaled_to_zero, &[], 0, false).outcome,
            Some(Outcome::Converged)
        );
    }

    #[test]
    fn the_wait_grows_with_the_update_settings() {
        let mut view = web_view(10, 1);
        view.service.spec.update_config.delay_ms = 10_000;
        assert_eq!(converge_timeout_ms(&view), 120_000 + 10 * 15_000);
    }
}
