//! The services benchmark: how fast meshd gets containers running, recovers a killed host's
//! tasks and rolls an update through, on a lab of 3 hosts with real containers, side by side
//! with Docker Swarm on the same kind of lab (or against Swarm's quoted figures); and how fast
//! its scheduler places tasks (in-process, on a simulated cluster of 1,000 nodes).
//!
//! Every section of every system builds its own lab: 3 hosts, the cluster formed on host1
//! (the only manager) with host2 and host3 joined as workers, the test image
//! (`scripts/build-test-image.sh`) loaded on every host, all through the system's API. Every
//! figure is timed from the API call that asks for the change to the poll of the service's
//! tasks (every 20 ms, one keep-alive connection to the manager's unix socket) that first
//! shows it done. meshd and Swarm run one after the other for each section.
//!
//! - **Time to N running**: create a service of N replicas, without and with an overlay
//!   network (created beforehand), until N tasks are running (desired and observed); then the
//!   service is removed and its tasks awaited stopped before the next run.
//! - **Killed host**: a 6-replica service spread over the 3 hosts; host3 killed as a whole
//!   ([`crate::kill`]: its daemon, its containers and everything else it runs); until 6
//!   tasks run on the survivors (and, on the side, until the manager marks the node down).
//!   The host is restarted (it rejoins with its data) before the next run.
//! - **Rolling update**: a 6-replica service with Docker Swarm's default update settings
//!   (parallelism 1, delay 0, monitor 5 s, stop-first, failure action pause), updated with a
//!   new environment variable; until every task runs the new spec, and until the update
//!   status is `completed` (which in both systems waits out one monitor period after the
//!   last new task started).
//! - **Scheduler**: see [`crate::sched`].

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use mesh_api::api::{ImageLoadRequest, ImageSummary, path, routes};
use mesh_api::{
    ContainerSpec, FailureAction, Network, NetworkAttachmentConfig, NetworkSpec, NodeState,
    RestartPolicy, Service, ServiceMode, ServiceSpec, ServiceUpdate, ServiceView, Task, TaskSpec,
    TaskState, UpdateConfig, UpdateOrder, UpdateState,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::BenchError;
use crate::docker::{self, DockerTask, SwarmCluster};
use crate::http::{Conn, Endpoint, shorten};
use crate::machine::Machine;
use crate::meshd::MeshdCluster;
use crate::sched::{self, SchedFigures, SchedOptions};

/// Hosts of the lab: host1 is the manager, host2 and host3 workers.
pub const HOSTS: usize = 3;
/// The host killed by the killed-host section (a worker).
pub const KILLED_HOST: usize = 3;
/// Replicas of the killed-host and rolling-update services.
pub const SMALL_SERVICE: usize = 6;
/// The image every service runs (loaded from the test image tarball).
pub const IMAGE: &str = "meshd-test:latest";
/// How often the tasks are polled.
pub const POLL: Duration = Duration::from_millis(20);
/// The variable the rolling update changes: `…=1` at creation, `…=2` after.
pub const UPDATE_VAR: &str = "BENCH_VERSION";
/// Time allowed to form the cluster and load the image.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a measured change may take before the run fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest to wait for a removed service's tasks to be gone.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Name of the overlay network the `--network` rows attach to.
const NETWORK: &str = "benchnet";

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Section {
    /// Time from `service create` to N tasks running, without and with an overlay.
    Start,
    /// A killed host's tasks running on the other hosts.
    Kill,
    /// A rolling update of 6 tasks.
    Update,
    /// The pure scheduler's placements per second, and whole plans.
    Scheduler,
}

impl Section {
    /// Every section, in the order they run.
    pub const ALL: [Section; 4] = [
        Section::Scheduler,
        Section::Start,
        Section::Kill,
        Section::Update,
    ];

    /// Its name, as the option spells it.
    pub fn name(self) -> &'static str {
        match self {
            Section::Start => "start",
            Section::Kill => "kill",
            Section::Update => "update",
            Section::Scheduler => "scheduler",
        }
    }
}

/// Which systems run the lab sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Systems {
    /// meshd and a live Docker Swarm (Debian's docker.io), one after the other per section.
    Both,
    /// meshd only; Swarm's figures are quoted.
    Meshd,
    /// Docker Swarm only.
    Swarm,
}

impl Systems {
    /// Whether meshd runs.
    pub fn meshd(self) -> bool {
        matches!(self, Systems::Both | Systems::Meshd)
    }

    /// Whether Docker Swarm runs.
    pub fn swarm(self) -> bool {
        matches!(self, Systems::Both | Systems::Swarm)
    }
}

/// Options of the benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesOptions {
    /// Runs of each figure (the median is reported).
    pub runs: usize,
    /// Replica counts of the time-to-N-running rows.
    pub replicas: Vec<usize>,
    /// Which sections to run.
    pub sections: Vec<Section>,
    /// Which systems run the lab sections.
    pub systems: Systems,
    /// The test image tarball; built with `scripts/build-test-image.sh` when absent.
    pub image: Option<PathBuf>,
    /// `--update-monitor` of the rolling update (Swarm's default: 5 s).
    pub update_monitor: Duration,
    /// The simulated cluster of the scheduler section (its `runs` is this `runs`).
    pub sched: SchedOptions,
}

impl Default for ServicesOptions {
    fn default() -> Self {
        ServicesOptions {
            runs: 3,
            replicas: vec![10, 30, 100],
            sections: Section::ALL.to_vec(),
            systems: Systems::Both,
            image: None,
            update_monitor: Duration::from_secs(5),
            sched: SchedOptions::default(),
        }
    }
}

impl ServicesOptions {
    /// Checks the bounds; the error names the option and its range.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad =
            |field: &'static str, reason: String| Err(BenchError::InvalidOption { field, reason });
        if !(1..=20).contains(&self.runs) {
            return bad("--runs", "must be between 1 and 20".to_owned());
        }
        if self.replicas.is_empty() {
            return bad(
                "--replicas",
                "give at least one replica count, e.g. --replicas 10,30,100".to_owned(),
            );
        }
        if let Some(r) = self.replicas.iter().find(|r| !(1..=250).contains(*r)) {
            return bad(
                "--replicas",
                format!(
                    "{r} is out of range: each count must be between 1 and 250 (the overlay is a /24)"
                ),
            );
        }
        if self.sections.is_empty() {
            return bad(
                "--sections",
                "give at least one of scheduler, start, kill, update".to_owned(),
            );
        }
        if self.update_monitor > Duration::from_secs(60) {
            return bad("--update-monitor", "must be at most 60 seconds".to_owned());
        }
        if let Some(p) = &self.image
            && !p.is_absolute()
        {
            return bad(
                "--image",
                format!(
                    "{} is not an absolute path: the daemons read it from their own directory",
                    p.display()
                ),
            );
        }
        SchedOptions {
            runs: self.runs,
            ..self.sched
        }
        .validate()
    }

    fn has(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }
}

/// One time-to-N-running row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRow {
    /// Replicas.
    pub replicas: usize,
    /// Attached to an overlay network.
    pub network: bool,
    /// `service create` → N running, per run.
    pub runs: Vec<Duration>,
}

/// One killed-host run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillRun {
    /// Tasks the killed host ran.
    pub tasks_on_host: usize,
    /// Kill → the manager stores the node as down.
    pub down: Duration,
    /// Kill → every replica runs on the surviving hosts.
    pub recovered: Duration,
}

/// One rolling-update run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateRun {
    /// Update call → every task runs the new spec.
    pub new_tasks_running: Duration,
    /// Update call → update status `completed`.
    pub completed: Duration,
}

/// What one system measured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SystemFigures {
    /// Its version.
    pub version: String,
    /// Time-to-N-running rows.
    pub start: Vec<StartRow>,
    /// Killed-host runs.
    pub kill: Vec<KillRun>,
    /// Rolling-update runs.
    pub update: Vec<UpdateRun>,
}

/// A section that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `meshd`, `Docker Swarm` or `scheduler`.
    pub system: String,
    /// The section.
    pub section: Section,
    /// The error.
    pub error: String,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicesReport {
    /// Day of the run (UTC), `YYYY-MM-DD`.
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// The options.
    pub options: ServicesOptions,
    /// runc's version line.
    pub runc_version: Option<String>,
    /// meshd's figures, when it ran.
    pub meshd: Option<SystemFigures>,
    /// Docker Swarm's figures, when it ran.
    pub swarm: Option<SystemFigures>,
    /// The scheduler's figures.
    pub sched: Option<SchedFigures>,
    /// Sections that failed.
    pub failures: Vec<Failure>,
}

/// Runs the benchmark, telling `progress` what it does. A section that fails is recorded in
/// [`ServicesReport::failures`] and the others still run.
pub fn run(opts: &ServicesOptions, progress: &dyn Fn(&str)) -> Result<ServicesReport, BenchError> {
    opts.validate()?;
    let machine = Machine::detect();
    progress(&format!("machine: {}", machine.summary()));
    let mut r = ServicesReport {
        date: time::OffsetDateTime::now_utc().date().to_string(),
        machine,
        options: opts.clone(),
        runc_version: runc_version(),
        meshd: None,
        swarm: None,
        sched: None,
        failures: Vec::new(),
    };
    // The scheduler first, while nothing else of the benchmark runs.
    if opts.has(Section::Scheduler) {
        let so = SchedOptions {
            runs: opts.runs,
            ..opts.sched
        };
        match sched::run(&so, progress) {
            Ok(f) => r.sched = Some(f),
            Err(e) => fail(&mut r, progress, "scheduler", Section::Scheduler, e),
        }
    }
    let labs = [Section::Start, Section::Kill, Section::Update];
    if !labs.iter().any(|s| opts.has(*s)) {
        return Ok(r);
    }
    let (image, _built) = match &opts.image {
        Some(p) => (p.clone(), None),
        None => {
            let built = build_image(progress)?;
            (built.path.clone(), Some(built))
        }
    };
    let docker_image = if opts.systems.swarm() {
        let oci = std::fs::read(&image)
            .map_err(|e| BenchError::io(format!("read {}", image.display()), e))?;
        Some(docker::docker_save_tar(&oci, IMAGE)?)
    } else {
        None
    };
    if opts.systems.meshd() {
        r.meshd = Some(SystemFigures::default());
    }
    if opts.systems.swarm() {
        r.swarm = Some(SystemFigures::default());
    }
    for section in labs.into_iter().filter(|s| opts.has(*s)) {
        if opts.systems.meshd() {
            let res =
                MeshdEnv::start(&image, section == Section::Start, progress).and_then(|env| {
                    measure(
                        &env,
                        section,
                        opts,
                        progress,
                        r.meshd.get_or_insert_with(Default::default),
                    )
                });
            if let Err(e) = res {
                fail(&mut r, progress, "meshd", section, e);
            }
        }
        if let Some(tar) = &docker_image {
            let res = SwarmEnv::start(tar, section == Section::Start, progress).and_then(|env| {
                measure(
                    &env,
                    section,
                    opts,
                    progress,
                    r.swarm.get_or_insert_with(Default::default),
                )
            });
            if let Err(e) = res {
                fail(&mut r, progress, "Docker Swarm", section, e);
            }
        }
    }
    Ok(r)
}

fn fail(
    r: &mut ServicesReport,
    progress: &dyn Fn(&str),
    system: &str,
    section: Section,
    e: BenchError,
) {
    progress(&format!("{system}: {} failed: {e}", section.name()));
    r.failures.push(Failure {
        system: system.to_owned(),
        section,
        error: e.to_string(),
    });
}

/// Runs one lab section on `sys`, adding to `f`.
fn measure(
    sys: &dyn System,
    section: Section,
    opts: &ServicesOptions,
    progress: &dyn Fn(&str),
    f: &mut SystemFigures,
) -> Result<(), BenchError> {
    if f.version.is_empty() {
        f.version = sys.version().to_owned();
    }
    match section {
        Section::Start => start_rows(sys, opts, progress, &mut f.start),
        Section::Kill => kill_runs(sys, opts, progress, &mut f.kill),
        Section::Update => update_runs(sys, opts, progress, &mut f.update),
        Section::Scheduler => Ok(()),
    }
}

/// `runc --version`'s first line, if runc runs.
fn runc_version() -> Option<String> {
    let out = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

/// A test image built for this run, removed when dropped.
struct BuiltImage {
    path: PathBuf,
}

impl Drop for BuiltImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Builds the test image with the repository's script into a temporary file.
fn build_image(progress: &dyn Fn(&str)) -> Result<BuiltImage, BenchError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let script = root.join("scripts/build-test-image.sh");
    if !script.exists() {
        return Err(BenchError::InvalidOption {
            field: "--image",
            reason: format!(
                "{} is not there to build the test image; give the image with --image FILE (from scripts/build-test-image.sh FILE)",
                script.display()
            ),
        });
    }
    let out = std::env::temp_dir().join(format!("mesh-bench-image-{}.tar", std::process::id()));
    progress(&format!("building the test image into {}…", out.display()));
    let built = BuiltImage { path: out.clone() };
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .map_err(|e| BenchError::io(format!("run {}", script.display()), e))?;
    if !status.success() {
        return Err(BenchError::Cluster(format!(
            "{} failed ({status}); give the image with --image FILE",
            script.display()
        )));
    }
    Ok(built)
}

/// A task as the measurements see it, whatever the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLook {
    /// The node it is on (empty until placed).
    pub node_id: String,
    /// Desired and observed running.
    pub running: bool,
    /// It runs the updated spec (`BENCH_VERSION=2`).
    pub updated: bool,
    /// Observed state, lowercase.
    pub state: String,
}

/// Where a rolling update is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateLook {
    /// Not done yet (or not started yet).
    InProgress,
    /// `completed`.
    Completed,
    /// Paused or rolled back, with the system's message.
    Stopped(String),
}

/// A service of the benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    /// Its name.
    pub name: String,
    /// Replicas.
    pub replicas: usize,
    /// Attached to the overlay network.
    pub network: bool,
    /// Environment.
    pub env: Vec<String>,
    /// Update settings.
    pub update: UpdateConfig,
}

impl Svc {
    /// A service of `replicas` tasks of the test image, with Docker Swarm's defaults (the
    /// update monitor aside).
    pub fn new(name: &str, replicas: usize, network: bool, monitor: Duration) -> Svc {
        Svc {
            name: name.to_owned(),
            replicas,
            network,
            env: vec![format!("{UPDATE_VAR}=1")],
            update: update_settings(monitor),
        }
    }
}

/// What the measurements need from a cluster: meshd's and Docker Swarm's, each through its
/// own API.
pub trait System {
    /// `meshd` or `Docker Swarm`.
    fn name(&self) -> &'static str;
    /// Its version.
    fn version(&self) -> &str;
    /// Creates a service; returns its ID.
    fn create(&self, svc: &Svc) -> Result<String, BenchError>;
    /// The service's tasks.
    fn tasks(&self, service_id: &str) -> Result<Vec<TaskLook>, BenchError>;
    /// Removes the service.
    fn remove(&self, service_id: &str) -> Result<(), BenchError>;
    /// Tasks of a removed service that still hold a container.
    fn tasks_left(&self, service_id: &str) -> Result<usize, BenchError>;
    /// Starts a rolling update that sets `BENCH_VERSION=2`.
    fn update(&self, service_id: &str) -> Result<(), BenchError>;
    /// Where the rolling update is.
    fn update_state(&self, service_id: &str) -> Result<UpdateLook, BenchError>;
    /// The host (1-based) of a node.
    fn host_of(&self, node_id: &str) -> Option<usize>;
    /// The node of a host.
    fn node_id(&self, host: usize) -> String;
    /// Whether the manager stores the host's node as down.
    fn node_down(&self, host: usize) -> bool;
    /// Kills the host as a whole; returns the instant just before.
    fn kill_host(&self, host: usize) -> Instant;
    /// Starts the host's daemon again and waits until every node is ready.
    fn restart_host(&self, host: usize) -> Result<(), BenchError>;
}

/// A client of one daemon's API: one keep-alive connection (made again when it breaks),
/// driven by a runtime of its own on the calling thread.
struct Api {
    rt: tokio::runtime::Runtime,
    endpoint: Endpoint,
    /// Prefix of every path (Docker's API version).
    prefix: &'static str,
    conn: RefCell<Option<Conn>>,
}

impl Api {
    fn new(endpoint: Endpoint, prefix: &'static str) -> Result<Api, BenchError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("build a tokio runtime", e))?;
        Ok(Api {
            rt,
            endpoint,
            prefix,
            conn: RefCell::new(None),
        })
    }

    /// One exchange: its status and body. A failed exchange drops the connection (the next
    /// call makes a new one).
    fn raw(&self, method: Method, path: &str, body: Bytes) -> Result<(u16, Bytes), BenchError> {
        let full = format!("{}{path}", self.prefix);
        let mut slot = self.conn.borrow_mut();
        let taken = slot.take();
        let endpoint = &self.endpoint;
        let (conn, result) = self.rt.block_on(async {
            let exchange = async {
                let mut conn = match taken {
                    Some(c) => c,
                    None => Conn::connect(endpoint, REQUEST_TIMEOUT).await?,
                };
                let r = conn.call(method, &full, body).await?;
                Ok::<_, BenchError>((conn, r))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok((conn, r))) => (Some(conn), Ok(r)),
                Ok(Err(e)) => (None, Err(e)),
                Err(_) => (
                    None,
                    Err(BenchError::timeout(
                        format!("{full} on {endpoint}"),
                        REQUEST_TIMEOUT,
                    )),
                ),
            }
        });
        *slot = conn;
        result
    }

    /// One request with a JSON body (or none); a 2xx answer decoded as `T` (an empty body
    /// as JSON `null`).
    fn json<T, B>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T, BenchError>
    where
        T: DeserializeOwned,
        B: Serialize + ?Sized,
    {
        let target = || format!("{}{}{path}", self.endpoint, self.prefix);
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| BenchError::Http {
                target: target(),
                reason: format!("cannot encode the request: {e}"),
            })?),
            None => Bytes::new(),
        };
        let (status, answer) = self.raw(method, path, bytes)?;
        if !(200..300).contains(&status) {
            return Err(BenchError::Status {
                target: target(),
                status,
                body: shorten(&answer),
            });
        }
        let text: &[u8] = if answer.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &answer
        };
        serde_json::from_slice(text).map_err(|source| BenchError::Decode {
            target: target(),
            source,
            body: shorten(&answer),
        })
    }
}

/// A meshd lab with a formed cluster, the image loaded everywhere, and a client of the
/// manager.
struct MeshdEnv {
    cluster: MeshdCluster,
    api: Api,
    version: String,
}

impl MeshdEnv {
    fn start(image: &Path, network: bool, progress: &dyn Fn(&str)) -> Result<MeshdEnv, BenchError> {
        progress(&format!(
            "meshd: a lab of {HOSTS} hosts (init on host1, join of the others as workers)…"
        ));
        let cluster = MeshdCluster::start(HOSTS, 1, SETUP_TIMEOUT)?;
        let mut version = cluster.version()?;
        if let Some(rev) = std::env::var("MESH_BENCH_REVISION")
            .ok()
            .filter(|r| !r.trim().is_empty())
        {
            version.push_str(&format!(" ({})", rev.trim()));
        }
        let load = ImageLoadRequest {
            path: image.display().to_string(),
        };
        for i in 1..=HOSTS {
            let images: Vec<ImageSummary> = cluster.api(
                i,
                Method::POST,
                routes::IMAGES_LOAD.to_owned(),
                Some(&load),
                SETUP_TIMEOUT,
            )?;
            if !images
                .iter()
                .any(|im| im.repo_tags.iter().any(|t| t == IMAGE))
            {
                return Err(BenchError::Cluster(format!(
                    "host{i} loaded {} but it holds no {IMAGE}: {images:?}",
                    image.display()
                )));
            }
        }
        if network {
            let _: Network = cluster.api(
                1,
                Method::POST,
                routes::NETWORKS.to_owned(),
                Some(&NetworkSpec {
                    name: NETWORK.to_owned(),
                    driver: mesh_api::network::DRIVER_OVERLAY.to_owned(),
                    ..NetworkSpec::default()
                }),
                SETUP_TIMEOUT,
            )?;
        }
        let api = Api::new(cluster.endpoint(1), "")?;
        progress(&format!(
            "meshd {version}: cluster formed, {IMAGE} loaded on every host"
        ));
        Ok(MeshdEnv {
            cluster,
            api,
            version,
        })
    }
}

/// The spec `swarm service create --name NAME --replicas N [--network NET] --env … IMAGE`
/// sends (Docker's defaults), with the given update settings.
pub fn service_spec(svc: &Svc) -> ServiceSpec {
    ServiceSpec {
        name: svc.name.clone(),
        task_template: TaskSpec {
            container: ContainerSpec {
                image: IMAGE.to_owned(),
                env: svc.env.clone(),
                stop_grace_period_ms: mesh_api::service::DEFAULT_STOP_GRACE_MS,
                ..ContainerSpec::default()
            },
            restart_policy: RestartPolicy::default(),
            networks: svc
                .network
                .then(|| NetworkAttachmentConfig {
                    target: NETWORK.to_owned(),
                    aliases: Vec::new(),
                })
                .into_iter()
                .collect(),
            ..TaskSpec::default()
        },
        mode: ServiceMode::Replicated {
            replicas: svc.replicas as u64,
        },
        update_config: svc.update,
        rollback_config: UpdateConfig::default(),
        ..ServiceSpec::default()
    }
}

fn updated_env(env: &[String]) -> bool {
    env.iter().any(|e| *e == format!("{UPDATE_VAR}=2"))
}

impl System for MeshdEnv {
    fn name(&self) -> &'static str {
        "meshd"
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn create(&self, svc: &Svc) -> Result<String, BenchError> {
        let s: Service = self
            .api
            .json(Method::POST, routes::SERVICES, Some(&service_spec(svc)))?;
        Ok(s.id)
    }

    fn tasks(&self, service_id: &str) -> Result<Vec<TaskLook>, BenchError> {
        let ts: Vec<Task> = self.api.json(
            Method::GET,
            &format!("{}?service={service_id}", routes::TASKS),
            None::<&()>,
        )?;
        Ok(ts
            .iter()
            .map(|t| TaskLook {
                node_id: t.node_id.clone(),
                running: t.desired_state == TaskState::Running
                    && t.status.state == TaskState::Running,
                updated: updated_env(&t.spec.container.env),
                state: t.status.state.as_str().to_owned(),
            })
            .collect())
    }

    fn remove(&self, service_id: &str) -> Result<(), BenchError> {
        let _: Value = self.api.json(
            Method::DELETE,
            &path(routes::SERVICE, &[("service", service_id)]),
            None::<&()>,
        )?;
        Ok(())
    }

    fn tasks_left(&self, service_id: &str) -> Result<usize, BenchError> {
        // meshd deletes a removed service's task once its node reports it stopped.
        let ts: Vec<Task> = self.api.json(Method::GET, routes::TASKS, None::<&()>)?;
        Ok(ts.iter().filter(|t| t.service_id == service_id).count())
    }

    fn update(&self, service_id: &str) -> Result<(), BenchError> {
        let update = ServiceUpdate {
            env_add: vec![format!("{UPDATE_VAR}=2")],
            ..ServiceUpdate::default()
        };
        let _: Service = self.api.json(
            Method::POST,
            &path(routes::SERVICE_UPDATE, &[("service", service_id)]),
            Some(&update),
        )?;
        Ok(())
    }

    fn update_state(&self, service_id: &str) -> Result<UpdateLook, BenchError> {
        let view: ServiceView = self.api.json(
            Method::GET,
            &path(routes::SERVICE, &[("service", service_id)]),
            None::<&()>,
        )?;
        let Some(u) = &view.service.update_status else {
            return Ok(UpdateLook::InProgress);
        };
        Ok(match u.state {
            UpdateState::Updating => UpdateLook::InProgress,
            UpdateState::Completed => UpdateLook::Completed,
            s => UpdateLook::Stopped(format!("{}: {}", s.as_str(), u.message)),
        })
    }

    fn host_of(&self, node_id: &str) -> Option<usize> {
        self.cluster.host_of(node_id)
    }

    fn node_id(&self, host: usize) -> String {
        self.cluster.node_id(host).to_owned()
    }

    fn node_down(&self, host: usize) -> bool {
        self.cluster
            .node(1, host)
            .is_ok_and(|n| n.status.state == NodeState::Down)
    }

    fn kill_host(&self, host: usize) -> Instant {
        self.cluster.kill_host(host)
    }

    fn restart_host(&self, host: usize) -> Result<(), BenchError> {
        self.cluster.restart(host)?;
        self.cluster.wait_healthy(SETUP_TIMEOUT)?;
        Ok(())
    }
}

/// A Docker Swarm lab with the image loaded everywhere, and a client of the manager.
struct SwarmEnv {
    cluster: SwarmCluster,
    api: Api,
    version: String,
}

impl SwarmEnv {
    fn start(image: &[u8], network: bool, progress: &dyn Fn(&str)) -> Result<SwarmEnv, BenchError> {
        progress(&format!(
            "Docker Swarm: a lab of {HOSTS} hosts, one dockerd each (swarm init on host1, join of the others as workers)…"
        ));
        let cluster = SwarmCluster::start(HOSTS, SETUP_TIMEOUT)?;
        cluster.load_image(image, IMAGE)?;
        if network {
            cluster.expect_ok(
                1,
                Method::POST,
                "/networks/create",
                Some(json!({ "Name": NETWORK, "Driver": "overlay", "CheckDuplicate": true })),
            )?;
        }
        let api = Api::new(Endpoint::Unix(cluster.socket_path(1)), docker::API)?;
        let version = cluster.version().to_owned();
        progress(&format!(
            "Docker Swarm {version}: cluster formed, {IMAGE} loaded on every host"
        ));
        Ok(SwarmEnv {
            cluster,
            api,
            version,
        })
    }

    /// The Engine API's service spec, as `docker service create` sends it.
    fn spec(svc: &Svc) -> Value {
        let u = &svc.update;
        let mut template = json!({
            "ContainerSpec": { "Image": IMAGE, "Env": svc.env },
            "ForceUpdate": 0,
        });
        if svc.network {
            template["Networks"] = json!([{ "Target": NETWORK }]);
        }
        json!({
            "Name": svc.name,
            "TaskTemplate": template,
            "Mode": { "Replicated": { "Replicas": svc.replicas } },
            "UpdateConfig": {
                "Parallelism": u.parallelism,
                "Delay": u.delay_ms.saturating_mul(1_000_000),
                "FailureAction": u.failure_action.as_str(),
                "Monitor": u.monitor_ms.saturating_mul(1_000_000),
                "MaxFailureRatio": f64::from(u.max_failure_permille) / 1000.0,
                "Order": u.order.as_str(),
            },
        })
    }

    fn inspect(&self, service_id: &str) -> Result<Value, BenchError> {
        self.api
            .json(Method::GET, &format!("/services/{service_id}"), None::<&()>)
    }

    fn docker_tasks(&self, service_id: &str) -> Result<Vec<DockerTask>, BenchError> {
        self.api.json(
            Method::GET,
            &format!("/tasks?filters={}", docker::filter("service", service_id)),
            None::<&()>,
        )
    }
}

impl System for SwarmEnv {
    fn name(&self) -> &'static str {
        "Docker Swarm"
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn create(&self, svc: &Svc) -> Result<String, BenchError> {
        let v: Value = self
            .api
            .json(Method::POST, "/services/create", Some(&Self::spec(svc)))?;
        v.get("ID")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| BenchError::Cluster(format!("service create answered {v}")))
    }

    fn tasks(&self, service_id: &str) -> Result<Vec<TaskLook>, BenchError> {
        Ok(self
            .docker_tasks(service_id)?
            .into_iter()
            .map(|t| TaskLook {
                running: t.desired_state == "running" && t.status.state == "running",
                updated: updated_env(&t.spec.container_spec.env),
                state: t.status.state,
                node_id: t.node_id,
            })
            .collect())
    }

    fn remove(&self, service_id: &str) -> Result<(), BenchError> {
        let _: Value = self.api.json(
            Method::DELETE,
            &format!("/services/{service_id}"),
            None::<&()>,
        )?;
        Ok(())
    }

    fn tasks_left(&self, service_id: &str) -> Result<usize, BenchError> {
        // The service is gone, so its tasks cannot be filtered by it: all of them.
        let ts: Vec<DockerTask> = self.api.json(Method::GET, "/tasks", None::<&()>)?;
        Ok(ts
            .iter()
            .filter(|t| t.service_id == service_id && docker::is_active(&t.status.state))
            .count())
    }

    fn update(&self, service_id: &str) -> Result<(), BenchError> {
        let current = self.inspect(service_id)?;
        let version = current
            .pointer("/Version/Index")
            .and_then(Value::as_u64)
            .ok_or_else(|| BenchError::Cluster(format!("service {service_id} has no version")))?;
        let mut spec = current
            .get("Spec")
            .cloned()
            .ok_or_else(|| BenchError::Cluster(format!("service {service_id} has no spec")))?;
        let env = spec
            .pointer_mut("/TaskTemplate/ContainerSpec/Env")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| BenchError::Cluster(format!("service {service_id} has no env")))?;
        env.retain(|e| {
            e.as_str()
                .is_none_or(|s| !s.starts_with(&format!("{UPDATE_VAR}=")))
        });
        env.push(json!(format!("{UPDATE_VAR}=2")));
        let _: Value = self.api.json(
            Method::POST,
            &format!("/services/{service_id}/update?version={version}"),
            Some(&spec),
        )?;
        Ok(())
    }

    fn update_state(&self, service_id: &str) -> Result<UpdateLook, BenchError> {
        let v = self.inspect(service_id)?;
        let state = v
            .pointer("/UpdateStatus/State")
            .and_then(Value::as_str)
            .unwrap_or("");
        let message = v
            .pointer("/UpdateStatus/Message")
            .and_then(Value::as_str)
            .unwrap_or("");
        Ok(match state {
            "" | "updating" => UpdateLook::InProgress,
            "completed" => UpdateLook::Completed,
            s => UpdateLook::Stopped(format!("{s}: {message}")),
        })
    }

    fn host_of(&self, node_id: &str) -> Option<usize> {
        self.cluster.host_of(node_id)
    }

    fn node_id(&self, host: usize) -> String {
        self.cluster.node_id(host).to_owned()
    }

    fn node_down(&self, host: usize) -> bool {
        self.cluster.node_down(host)
    }

    fn kill_host(&self, host: usize) -> Instant {
        self.cluster.kill_host(host)
    }

    fn restart_host(&self, host: usize) -> Result<(), BenchError> {
        self.cluster.restart_host(host)?;
        self.cluster.wait_ready(SETUP_TIMEOUT)?;
        Ok(())
    }
}

/// The update settings of the rolling-update section: Docker Swarm's defaults, with the
/// given monitor period.
pub fn update_settings(monitor: Duration) -> UpdateConfig {
    UpdateConfig {
        parallelism: 1,
        delay_ms: 0,
        failure_action: FailureAction::Pause,
        monitor_ms: u64::try_from(monitor.as_millis()).unwrap_or(u64::MAX),
        max_failure_permille: 0,
        order: UpdateOrder::StopFirst,
    }
}

/// How many tasks are in each observed state, e.g. `running 7, starting 3`.
fn states(tasks: &[TaskLook]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in tasks {
        *counts.entry(t.state.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    if parts.is_empty() {
        "no tasks".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Polls the service's tasks every [`POLL`] from `since` until `done` holds, for at most
/// `timeout`; returns the time from `since` to the answer that showed it.
fn poll_until(
    sys: &dyn System,
    service_id: &str,
    since: Instant,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[TaskLook]) -> Result<bool, BenchError>,
) -> Result<Duration, BenchError> {
    loop {
        let tick = Instant::now();
        let last = match sys.tasks(service_id) {
            Ok(ts) => {
                if done(&ts)? {
                    return Ok(since.elapsed());
                }
                states(&ts)
            }
            Err(e) => e.to_string(),
        };
        if since.elapsed() > timeout {
            return Err(BenchError::Timeout {
                what: format!("{}: {what}", sys.name()),
                after: timeout,
                details: format!(" (last look at the tasks: {last})"),
            });
        }
        std::thread::sleep(POLL.saturating_sub(tick.elapsed()));
    }
}

/// Removes the service and waits until none of its tasks holds a container.
fn remove_and_wait(sys: &dyn System, service_id: &str) -> Result<(), BenchError> {
    sys.remove(service_id)?;
    let start = Instant::now();
    loop {
        let left = sys.tasks_left(service_id)?;
        if left == 0 {
            return Ok(());
        }
        if start.elapsed() > CLEANUP_TIMEOUT {
            return Err(BenchError::timeout(
                format!(
                    "{}: the {left} tasks left of removed service {service_id} to stop",
                    sys.name()
                ),
                CLEANUP_TIMEOUT,
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn running(ts: &[TaskLook]) -> usize {
    ts.iter().filter(|t| t.running).count()
}

/// Creates a service and waits until all its replicas run; returns its ID.
fn create_running(sys: &dyn System, svc: &Svc) -> Result<String, BenchError> {
    let id = sys.create(svc)?;
    poll_until(
        sys,
        &id,
        Instant::now(),
        RUN_TIMEOUT,
        &format!("{} tasks of {} running", svc.replicas, svc.name),
        |ts| Ok(running(ts) >= svc.replicas),
    )?;
    Ok(id)
}

fn start_rows(
    sys: &dyn System,
    opts: &ServicesOptions,
    progress: &dyn Fn(&str),
    rows: &mut Vec<StartRow>,
) -> Result<(), BenchError> {
    for network in [false, true] {
        for &n in &opts.replicas {
            let mut row = StartRow {
                replicas: n,
                network,
                runs: Vec::new(),
            };
            for run in 1..=opts.runs {
                let name = format!("start{n}{}r{run}", if network { "net" } else { "" });
                let svc = Svc::new(&name, n, network, opts.update_monitor);
                let t0 = Instant::now();
                let id = sys.create(&svc)?;
                let took = poll_until(
                    sys,
                    &id,
                    t0,
                    RUN_TIMEOUT,
                    &format!("{n} tasks of {name} running"),
                    |ts| Ok(running(ts) >= n),
                )?;
                progress(&format!(
                    "{}: {n} replicas{} running after {:.3} s (run {run}/{})",
                    sys.name(),
                    if network { " on an overlay" } else { "" },
                    took.as_secs_f64(),
                    opts.runs
                ));
                row.runs.push(took);
                remove_and_wait(sys, &id)?;
            }
            rows.push(row);
        }
    }
    Ok(())
}

fn kill_runs(
    sys: &dyn System,
    opts: &ServicesOptions,
    progress: &dyn Fn(&str),
    runs: &mut Vec<KillRun>,
) -> Result<(), BenchError> {
    let killed_id = sys.node_id(KILLED_HOST);
    for run in 1..=opts.runs {
        let name = format!("killr{run}");
        let svc = Svc::new(&name, SMALL_SERVICE, false, opts.update_monitor);
        let id = create_running(sys, &svc)?;
        let mut per_host = [0usize; HOSTS];
        for t in sys.tasks(&id)?.iter().filter(|t| t.running) {
            if let Some(h) = sys.host_of(&t.node_id) {
                per_host[h - 1] += 1;
            }
        }
        if per_host.contains(&0) {
            return Err(BenchError::Cluster(format!(
                "{SMALL_SERVICE} replicas are not spread over the {HOSTS} hosts: {per_host:?} per host"
            )));
        }
        let on_host = per_host[KILLED_HOST - 1];
        progress(&format!(
            "{}: killed host {run}/{}: {SMALL_SERVICE} replicas, {per_host:?} per host; host{KILLED_HOST} killed (its daemon, containers and all)…",
            sys.name(),
            opts.runs
        ));
        let at = sys.kill_host(KILLED_HOST);
        let mut down = None;
        let recovered = poll_until(
            sys,
            &id,
            at,
            RUN_TIMEOUT,
            &format!("{SMALL_SERVICE} tasks running without host{KILLED_HOST}"),
            |ts| {
                // The node's state, read on the manager at the same pace as the tasks.
                if down.is_none() && sys.node_down(KILLED_HOST) {
                    down = Some(at.elapsed());
                }
                Ok(ts
                    .iter()
                    .filter(|t| t.running && t.node_id != killed_id)
                    .count()
                    >= SMALL_SERVICE)
            },
        )?;
        let down = match down {
            Some(d) => d,
            None => {
                // Recovered before the node was seen down: keep looking, bounded.
                loop {
                    if sys.node_down(KILLED_HOST) {
                        break at.elapsed();
                    }
                    if at.elapsed() > RUN_TIMEOUT {
                        return Err(BenchError::timeout(
                            format!("{}: host{KILLED_HOST} marked down", sys.name()),
                            RUN_TIMEOUT,
                        ));
                    }
                    std::thread::sleep(POLL);
                }
            }
        };
        progress(&format!(
            "  host{KILLED_HOST} marked down after {:.3} s; {SMALL_SERVICE} tasks running on the others after {:.3} s",
            down.as_secs_f64(),
            recovered.as_secs_f64()
        ));
        runs.push(KillRun {
            tasks_on_host: on_host,
            down,
            recovered,
        });
        sys.restart_host(KILLED_HOST)?;
        remove_and_wait(sys, &id)?;
    }
    Ok(())
}

fn update_runs(
    sys: &dyn System,
    opts: &ServicesOptions,
    progress: &dyn Fn(&str),
    runs: &mut Vec<UpdateRun>,
) -> Result<(), BenchError> {
    for run in 1..=opts.runs {
        let name = format!("updr{run}");
        let svc = Svc::new(&name, SMALL_SERVICE, false, opts.update_monitor);
        let id = create_running(sys, &svc)?;
        progress(&format!(
            "{}: rolling update {run}/{} of {SMALL_SERVICE} tasks…",
            sys.name(),
            opts.runs
        ));
        let t0 = Instant::now();
        sys.update(&id)?;
        let mut new_running = None;
        let completed = poll_until(
            sys,
            &id,
            t0,
            RUN_TIMEOUT,
            &format!("the update of {name} to complete"),
            |ts| {
                if new_running.is_none()
                    && ts.iter().filter(|t| t.running && t.updated).count() >= SMALL_SERVICE
                {
                    new_running = Some(t0.elapsed());
                }
                match sys.update_state(&id)? {
                    UpdateLook::Completed => Ok(new_running.is_some()),
                    UpdateLook::InProgress => Ok(false),
                    UpdateLook::Stopped(why) => Err(BenchError::Cluster(format!(
                        "{}: the update of {name} stopped: {why}",
                        sys.name()
                    ))),
                }
            },
        )?;
        let new_tasks_running = new_running.unwrap_or(completed);
        progress(&format!(
            "  every task on the new spec after {:.3} s; update completed after {:.3} s",
            new_tasks_running.as_secs_f64(),
            completed.as_secs_f64()
        ));
        runs.push(UpdateRun {
            new_tasks_running,
            completed,
        });
        remove_and_wait(sys, &id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_name_the_option() {
        assert!(ServicesOptions::default().validate().is_ok());
        let cases = [
            (
                ServicesOptions {
                    runs: 0,
                    ..ServicesOptions::default()
                },
                "--runs",
            ),
            (
                ServicesOptions {
                    replicas: vec![10, 0],
                    ..ServicesOptions::default()
                },
                "--replicas",
            ),
            (
                ServicesOptions {
                    replicas: vec![],
                    ..ServicesOptions::default()
                },
                "--replicas",
            ),
            (
                ServicesOptions {
                    sections: vec![],
                    ..ServicesOptions::default()
                },
                "--sections",
            ),
            (
                ServicesOptions {
                    image: Some(PathBuf::from("img.tar")),
                    ..ServicesOptions::default()
                },
                "--image",
            ),
            (
                ServicesOptions {
                    update_monitor: Duration::from_secs(61),
                    ..ServicesOptions::default()
                },
                "--update-monitor",
            ),
        ];
        for (o, field) in cases {
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn specs_are_what_the_clis_would_send() {
        let svc = Svc::new("web", 10, true, Duration::from_secs(5));
        let s = service_spec(&svc);
        s.validate().unwrap();
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 10 });
        assert_eq!(s.task_template.networks[0].target, NETWORK);
        assert_eq!(s.task_template.container.stop_grace_period_ms, 10_000);
        assert_eq!(s.task_template.container.env, vec!["BENCH_VERSION=1"]);
        assert!(
            service_spec(&Svc::new("web", 1, false, Duration::ZERO))
                .task_template
                .networks
                .is_empty()
        );
        assert_eq!(
            update_settings(Duration::from_secs(5)),
            UpdateConfig::default(),
            "Swarm's defaults are meshd's"
        );
        let d = SwarmEnv::spec(&svc);
        assert_eq!(d["Mode"]["Replicated"]["Replicas"], 10);
        assert_eq!(d["TaskTemplate"]["Networks"][0]["Target"], NETWORK);
        assert_eq!(d["UpdateConfig"]["Monitor"], 5_000_000_000u64);
        assert_eq!(d["UpdateConfig"]["Order"], "stop-first");
        assert_eq!(d["UpdateConfig"]["FailureAction"], "pause");
        assert_eq!(
            d["TaskTemplate"]["ContainerSpec"]["Env"][0],
            "BENCH_VERSION=1"
        );
    }

    #[test]
    fn task_states_are_counted() {
        let t = |state: &str, running: bool| TaskLook {
            node_id: "n".into(),
            running,
            updated: false,
            state: state.into(),
        };
        let ts = vec![t("running", true), t("starting", false), t("running", true)];
        assert_eq!(states(&ts), "running 2, starting 1");
        assert_eq!(running(&ts), 2);
        assert_eq!(states(&[]), "no tasks");
        assert!(updated_env(&["A=1".into(), "BENCH_VERSION=2".into()]));
        assert!(!updated_env(&["BENCH_VERSION=1".into()]));
    }
}
