//! `swarm run` and `swarm container ls | logs | rm | stop`: standalone containers on the
//! node the CLI talks to.

use std::time::Duration;

use clap::{Args, Subcommand};
use mesh_api::api::{RunRequest, TaskQuery, path, routes};
use mesh_api::service::{
    DEFAULT_STOP_GRACE_MS, parse_bytes, parse_cpus, parse_mount, parse_network,
    validate_service_name,
};
use mesh_api::{
    ContainerSpec, Mount, NetworkAttachmentConfig, ResourceAmounts, Resources, RestartCondition,
    RestartPolicy, Task, TaskSpec, TaskState, ValidationError,
};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tracing::debug;

use super::service::{HealthArgs, parse_env};
use super::tasks::{
    FOLLOW_INTERVAL, Tail, TaskLog, get_list, node_names, parse_tail, task_route, tasks_route,
};
use super::{Ctx, Format, for_each, now_ms, parse_format};
use crate::client::encode_segment;
use crate::error::{CliError, Result};
use crate::format::container::{container_order, container_table};
use crate::format::reformat_json;
use crate::format::service::table_id;

pub use mesh_api::api::routes::CONTAINER_STOP;

/// Least memory limit a container accepts (the kernel's floor, with room for runc).
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// How long `swarm run` waits for the exit status of a container whose output ended.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(30);

/// How long `swarm run` tolerates failing log requests for a container that has not ended.
const LOGS_PATIENCE: Duration = Duration::from_secs(30);

/// The `swarm container` verbs.
#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// List containers (running ones; all with -a).
    #[command(visible_aliases = ["list", "ps"])]
    Ls(LsArgs),
    /// Fetch the output of a container.
    Logs(LogsArgs),
    /// Remove one or more containers.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Stop one or more running containers.
    Stop(StopArgs),
}

fn parse_container_name(s: &str) -> std::result::Result<String, ValidationError> {
    validate_service_name(s).map(|()| s.to_string())
}

fn parse_memory(s: &str) -> std::result::Result<u64, ValidationError> {
    let bytes = parse_bytes("--memory", s)?;
    if bytes != 0 && bytes < MIN_MEMORY {
        return Err(ValidationError::new(
            "--memory",
            format!("{s} is too little"),
            "give at least 6MiB, e.g. -m 64m",
        ));
    }
    Ok(bytes)
}

fn parse_stop_timeout(s: &str) -> std::result::Result<u64, ValidationError> {
    s.trim()
        .parse::<u64>()
        .map(|secs| secs.saturating_mul(1_000))
        .map_err(|_| {
            ValidationError::new(
                "--stop-timeout",
                format!("{s:?} is not a number of seconds"),
                "give whole seconds, e.g. --stop-timeout 10",
            )
        })
}

fn parse_signal_arg(s: &str) -> std::result::Result<String, ValidationError> {
    mesh_api::service::parse_signal(s).map(|_| s.to_string())
}

fn parse_label_arg(s: &str) -> std::result::Result<(String, String), ValidationError> {
    mesh_api::node::parse_label("--label", s)
}

/// `swarm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Container name (default: generated).
    #[arg(long, value_name = "NAME", value_parser = parse_container_name)]
    pub name: Option<String>,
    /// Attach an attachable network: NAME or name=NAME,alias=ALIAS; repeatable.
    #[arg(long, value_name = "NETWORK", value_parser = parse_network)]
    pub network: Vec<NetworkAttachmentConfig>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this shell's); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = |s: &str| parse_env("--env", s))]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User: uid, uid:gid or a user name of the image.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Host name inside the container.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Replace the image's entrypoint with this program.
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// Attach a mount: type=volume|bind|tmpfs,source=…,target=…, and readonly if so; repeatable.
    #[arg(long, value_name = "MOUNT", value_parser = parse_mount)]
    pub mount: Vec<Mount>,
    /// CPU limit, e.g. 0.5.
    #[arg(long, value_name = "CPUS", value_parser = |s: &str| parse_cpus("--cpus", s))]
    pub cpus: Option<u64>,
    /// Memory limit, e.g. 64m.
    #[arg(short = 'm', long, value_name = "BYTES", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Signal that stops the container, e.g. SIGINT (default SIGTERM).
    #[arg(long, value_name = "SIGNAL", value_parser = parse_signal_arg)]
    pub stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL (default 10).
    #[arg(long, value_name = "SECONDS", value_parser = parse_stop_timeout)]
    pub stop_timeout: Option<u64>,
    /// Container label (KEY=VALUE); repeatable.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_label_arg)]
    pub label: Vec<(String, String)>,
    /// Remove the container once it exited.
    #[arg(long, conflicts_with = "detach")]
    pub rm: bool,
    /// Run in the background and print the container's ID.
    #[arg(short, long)]
    pub detach: bool,
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
}

impl RunArgs {
    /// The request to send, checked like the daemon checks it.
    pub fn request(&self) -> std::result::Result<RunRequest, ValidationError> {
        if let Some(e) = &self.entrypoint
            && e.trim().is_empty()
        {
            return Err(ValidationError::new(
                "--entrypoint",
                "an empty entrypoint",
                "give a program, or leave --entrypoint out to use the image's",
            ));
        }
        let container = ContainerSpec {
            image: self.image.clone(),
            command: self.entrypoint.clone().map(|e| vec![e]),
            args: self.command.clone(),
            env: self.env.clone(),
            dir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            mounts: self.mount.clone(),
            stop_signal: self.stop_signal.clone(),
            stop_grace_period_ms: self.stop_timeout.unwrap_or(DEFAULT_STOP_GRACE_MS),
            healthcheck: self.health.config()?,
            labels: self.label.iter().cloned().collect(),
        };
        container.validate()?;
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.network {
            if !seen.insert(n.target.as_str()) {
                return Err(ValidationError::new(
                    "--network",
                    format!("network {} is given twice", n.target),
                    "attach each network once",
                ));
            }
        }
        Ok(RunRequest {
            name: self.name.clone(),
            spec: TaskSpec {
                container,
                resources: Resources {
                    limits: ResourceAmounts {
                        nano_cpus: self.cpus.unwrap_or(0),
                        memory_bytes: self.memory.unwrap_or(0),
                    },
                    reservations: ResourceAmounts::default(),
                },
                restart_policy: RestartPolicy {
                    condition: RestartCondition::None,
                    ..RestartPolicy::default()
                },
                placement: Default::default(),
                networks: self.network.clone(),
                force_update: 0,
            },
        })
    }
}

/// `swarm container ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Show all containers (default: the running ones).
    #[arg(short, long)]
    pub all: bool,
    /// Only print container IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print whole IDs and commands.
    #[arg(long)]
    pub no_trunc: bool,
    /// `json`: one container (task) object per line, as the API returns it.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, default_value = "")]
    pub format: Format,
}

/// `swarm container logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output until the container ends (or Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (or all).
    #[arg(short = 'n', long, value_name = "N", value_parser = parse_tail, default_value = "all")]
    pub tail: Tail,
    /// Container name, ID or ID prefix.
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

/// `swarm container rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove running containers too (they are stopped first).
    #[arg(short, long)]
    pub force: bool,
    /// Container names, IDs or ID prefixes.
    #[arg(value_name = "CONTAINER", required = true)]
    pub containers: Vec<String>,
}

/// `swarm container stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Container names, IDs or ID prefixes.
    #[arg(value_name = "CONTAINER", required = true)]
    pub containers: Vec<String>,
}

/// Runs a `swarm container` verb.
pub async fn run_command(ctx: &mut Ctx<'_>, command: ContainerCommand) -> Result<()> {
    match command {
        ContainerCommand::Ls(a) => ls(ctx, a).await,
        ContainerCommand::Logs(a) => logs(ctx, a).await,
        ContainerCommand::Rm(a) => rm(ctx, a).await,
        ContainerCommand::Stop(a) => stop(ctx, a).await,
    }
}

/// The route of a container as the user named it.
pub fn container_route(template: &str, reference: &str) -> String {
    path(template, &[("container", &encode_segment(reference))])
}

/// What a followed container came to.
enum Ended {
    /// Its output ended.
    Finished,
    /// It ended without output being readable (e.g. the node rejected it).
    Terminal(Box<Task>),
}

/// Prints `log`'s output until it ends. Log requests may fail before the node started
/// the container; the container is then looked at, and a container that ended stops the
/// wait.
async fn follow_until_end(ctx: &mut Ctx<'_>, log: &mut TaskLog) -> Result<Ended> {
    let mut failing_since: Option<u64> = None;
    loop {
        match log.poll(ctx).await {
            Ok(_) => {
                failing_since = None;
                if log.finished {
                    return Ok(Ended::Finished);
                }
            }
            Err(e) if super::is_fatal(&e) => return Err(e),
            Err(e) => {
                let task: Task = ctx.client.get(&task_route(&log.task.id)).await?;
                if task.status.state.is_terminal() {
                    debug!(error = %e, "the container ended with no readable output");
                    return Ok(Ended::Terminal(Box::new(task)));
                }
                let since = *failing_since.get_or_insert_with(now_ms);
                if now_ms().saturating_sub(since) > LOGS_PATIENCE.as_millis() as u64 {
                    return Err(e);
                }
                debug!(error = %e, state = %task.status.state, "no output yet");
            }
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// The container once its end reached the manager.
async fn final_status(ctx: &Ctx<'_>, id: &str) -> Result<Task> {
    let start = now_ms();
    loop {
        let task: Task = ctx.client.get(&task_route(id)).await?;
        if task.status.state.is_terminal()
            || now_ms().saturating_sub(start) > EXIT_STATUS_WAIT.as_millis() as u64
        {
            return Ok(task);
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// What a finished container means for `swarm run`: success for exit code 0, its code
/// otherwise, or why it did not run.
pub fn run_outcome(task: &Task) -> Result<()> {
    match task.status.exit_code {
        Some(0) => Ok(()),
        Some(code) => Err(CliError::ContainerExit {
            code: u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1),
        }),
        None => {
            let reason = if !task.status.err.is_empty() {
                task.status.err.clone()
            } else if !task.status.state.is_terminal() {
                format!(
                    "its exit status did not reach the manager (it is {})",
                    task.status.state
                )
            } else if task.status.message.is_empty() {
                task.status.state.to_string()
            } else {
                format!("{}: {}", task.status.state, task.status.message)
            };
            Err(CliError::ContainerFailed {
                name: task.container_name(),
                reason,
            })
        }
    }
}

/// `swarm run`: with `-d` prints the container's ID; otherwise prints its output until it
/// exits, and exits with its code (removing it first with `--rm`).
pub async fn run(ctx: &mut Ctx<'_>, args: RunArgs) -> Result<()> {
    let request = args.request()?;
    let task: Task = ctx.client.post(routes::CONTAINERS, &request).await?;
    debug!(id = %task.id, name = %task.service_name, "container created");
    if args.detach {
        return ctx.println(&task.id);
    }
    let id = task.id.clone();
    let mut log = TaskLog::new(task, String::new(), None);
    let ended = follow_until_end(ctx, &mut log).await?;
    let task = match ended {
        Ended::Finished => final_status(ctx, &id).await?,
        Ended::Terminal(task) => *task,
    };
    if args.rm {
        let route = format!("{}?force=true", container_route(routes::CONTAINER, &id));
        if let Err(e) = ctx.client.delete(&route).await {
            super::report(&e);
        }
    }
    run_outcome(&task)
}

/// `swarm container ls`.
pub async fn ls(ctx: &mut Ctx<'_>, args: LsArgs) -> Result<()> {
    let route = tasks_route(&TaskQuery {
        containers: true,
        ..TaskQuery::default()
    });
    let mut containers: Vec<(Task, Box<RawValue>)> = get_list::<Task>(ctx, &route)
        .await?
        .into_iter()
        .filter(|(t, _)| args.all || t.status.state == TaskState::Running)
        .collect();
    containers.sort_by(|a, b| container_order(&a.0, &b.0));
    if args.quiet {
        let ids: String = containers
            .iter()
            .map(|(t, _)| format!("{}\n", table_id(&t.id, args.no_trunc)))
            .collect();
        return ctx.print(&ids);
    }
    match args.format {
        Format::Json => {
            let lines: String = containers
                .iter()
                .map(|(_, raw)| reformat_json(raw.get(), None) + "\n")
                .collect();
            ctx.print(&lines)
        }
        Format::Human => {
            let names = node_names(ctx).await;
            let tasks: Vec<Task> = containers.into_iter().map(|(t, _)| t).collect();
            ctx.print(&container_table(&tasks, &names, now_ms(), args.no_trunc))
        }
    }
}

/// `swarm container logs`: the container's output; with `-f` until it ends.
pub async fn logs(ctx: &mut Ctx<'_>, args: LogsArgs) -> Result<()> {
    let task: Task = ctx.client.get(&task_route(&args.container)).await?;
    let mut log = TaskLog::new(task, String::new(), args.tail.0);
    if !args.follow {
        return log.read_all(ctx).await;
    }
    follow_until_end(ctx, &mut log).await.map(drop)
}

/// `swarm container rm`: prints each container as it was named once removed.
pub async fn rm(ctx: &mut Ctx<'_>, args: RmArgs) -> Result<()> {
    let force = args.force;
    for_each(ctx, &args.containers, async |ctx, reference| {
        ctx.client
            .delete(&format!(
                "{}?force={force}",
                container_route(routes::CONTAINER, reference)
            ))
            .await?;
        ctx.println(reference)
    })
    .await
}

/// `swarm container stop`: prints each container as it was named once asked to stop.
pub async fn stop(ctx: &mut Ctx<'_>, args: StopArgs) -> Result<()> {
    for_each(ctx, &args.containers, async |ctx, reference| {
        let _: IgnoredAny = ctx
            .client
            .post_empty(&container_route(CONTAINER_STOP, reference))
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
    use mesh_api::{HealthConfig, MountType, TaskStatus};

    fn parse(args: &[&str]) -> std::result::Result<Command, String> {
        Cli::try_parse_from(std::iter::once("swarm").chain(args.iter().copied()))
            .map(|c| c.command)
            .map_err(|e| e.to_string())
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        match parse(&full) {
            Ok(Command::Run(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_flags_land_in_the_request() {
        let a = run_args(&[
            "--name",
            "job",
            "--network",
            "appnet",
            "--network",
            "name=backend,alias=worker",
            "-e",
            "A=1",
            "-w",
            "/work",
            "-u",
            "nobody",
            "--hostname",
            "job-host",
            "--entrypoint",
            "/bin/sh",
            "--mount",
            "type=volume,source=cache,target=/cache",
            "--cpus",
            "0.5",
            "-m",
            "64m",
            "--stop-signal",
            "SIGINT",
            "--stop-timeout",
            "3",
            "-l",
            "purpose=test",
            "--health-cmd",
            "true",
            "--rm",
            "meshd-test:latest",
            "-c",
            "echo hi; exit 3",
        ]);
        assert!(a.rm && !a.detach);
        let r = a.request().unwrap();
        assert_eq!(r.name.as_deref(), Some("job"));
        let c = &r.spec.container;
        assert_eq!(c.image, "meshd-test:latest");
        // docker run's --entrypoint is one program; COMMAND and ARGs are its arguments.
        assert_eq!(c.command, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(c.args, ["-c", "echo hi; exit 3"]);
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(c.dir.as_deref(), Some("/work"));
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.hostname.as_deref(), Some("job-host"));
        assert_eq!(c.mounts[0].kind, MountType::Volume);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(c.stop_grace_period_ms, 3_000);
        assert_eq!(c.labels.get("purpose").map(String::as_str), Some("test"));
        assert_eq!(
            c.healthcheck,
            Some(HealthConfig {
                cmd: "true".into(),
                interval_ms: 30_000,
                timeout_ms: 30_000,
                retries: 3,
                start_period_ms: 0,
            })
        );
        assert_eq!(
            r.spec.resources.limits,
            ResourceAmounts {
                nano_cpus: 500_000_000,
                memory_bytes: 64 << 20
            }
        );
        assert_eq!(r.spec.restart_policy.condition, RestartCondition::None);
        assert_eq!(r.spec.networks.len(), 2);
        assert_eq!(r.spec.networks[1].aliases, ["worker"]);
    }

    #[test]
    fn run_defaults() {
        let a = run_args(&["-d", "meshd-test"]);
        assert!(a.detach && !a.rm);
        let r = a.request().unwrap();
        assert_eq!(r.name, None);
        assert_eq!(r.spec.container.command, None);
        assert!(r.spec.container.args.is_empty());
        assert_eq!(r.spec.container.stop_grace_period_ms, DEFAULT_STOP_GRACE_MS);
        assert_eq!(r.spec.resources, Resources::default());
    }

    #[test]
    fn bad_run_flags_name_the_flag() {
        for (flag, value) in [
            ("--name", "bad name"),
            ("--network", "name=a,x=y"),
            ("--env", "=1"),
            ("--mount", "type=bind"),
            ("--cpus", "many"),
            ("--memory", "1k"),
            ("--memory", "lots"),
            ("--stop-signal", "SIGNOPE"),
            ("--stop-timeout", "soon"),
            ("--label", "=x"),
            ("--health-retries", "0"),
        ] {
            let e = parse(&["run", flag, value, "meshd-test"]).unwrap_err();
            assert!(
                e.contains(&format!("invalid {flag}")),
                "{flag} {value}: {e}"
            );
        }
        let e = parse(&["run", "-d", "--rm", "meshd-test"]).unwrap_err();
        assert!(e.contains("--rm") && e.contains("--detach"), "{e}");
        for (args, field) in [
            (vec!["--workdir", "rel"], "--workdir"),
            (vec!["--entrypoint", " "], "--entrypoint"),
            (vec!["--network", "a", "--network", "a"], "--network"),
            (vec!["--health-interval", "2s"], "--health-cmd"),
            (vec!["--hostname", "not a host"], "--hostname"),
        ] {
            let mut full = args.clone();
            full.push("meshd-test");
            let e = run_args(&full).request().unwrap_err();
            assert_eq!(e.field, field, "{args:?}");
        }
    }

    #[test]
    fn container_verbs_and_aliases_parse() {
        for args in [
            vec!["container", "ls", "-a", "-q"],
            vec!["container", "ps"],
            vec!["container", "list", "--no-trunc"],
        ] {
            assert!(
                matches!(
                    parse(&args),
                    Ok(Command::Container(ContainerCommand::Ls(_)))
                ),
                "{args:?}"
            );
        }
        assert!(
            matches!(parse(&["logs", "-f", "--tail", "5", "job"]), Ok(Command::Logs(a)) if a.follow && a.tail == Tail(Some(5)))
        );
        assert!(
            matches!(parse(&["rm", "-f", "a", "b"]), Ok(Command::Rm(a)) if a.force && a.containers.len() == 2)
        );
        assert!(matches!(parse(&["stop", "a"]), Ok(Command::Stop(_))));
        assert!(parse(&["container", "logs", "--tail", "-3", "job"]).is_err());
        assert!(parse(&["container", "rm"]).is_err());
    }

    fn ended(state: TaskState, exit_code: Option<i32>, err: &str) -> Task {
        Task {
            id: "c1".into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            service_id: String::new(),
            service_name: "job".into(),
            slot: 0,
            node_id: "n1".into(),
            spec: TaskSpec::default(),
            spec_version: 0,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                exit_code,
                err: err.into(),
                ..Default::default()
            },
            networks: Vec::new(),
            host_ports: Vec::new(),
        }
    }

    #[test]
    fn run_exits_with_the_containers_code() {
        assert!(run_outcome(&ended(TaskState::Complete, Some(0), "")).is_ok());
        let e = run_outcome(&ended(TaskState::Failed, Some(3), "exit 3")).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.already_reported());
        // Codes beyond a byte (or negative) still fail.
        assert_eq!(
            run_outcome(&ended(TaskState::Failed, Some(256), ""))
                .unwrap_err()
                .exit_code(),
            1
        );
        let e = run_outcome(&ended(TaskState::Rejected, None, "no such image: x:1")).unwrap_err();
        assert_eq!(e.exit_code(), 125);
        assert!(
            e.to_string()
                .contains("container job did not run: no such image: x:1"),
            "{e}"
        );
        let e = run_outcome(&ended(TaskState::Running, None, "")).unwrap_err();
        assert!(e.to_string().contains("did not reach the manager"), "{e}");
    }

    #[test]
    fn container_routes_are_encoded() {
        assert_eq!(
            container_route(routes::CONTAINER, "job"),
            "/v1/containers/job"
        );
        assert_eq!(
            container_route(CONTAINER_STOP, "a b"),
            "/v1/containers/a%20b/stop"
        );
    }
}
