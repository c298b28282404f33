//! The runc backend of `Runtime`.
//!
//! Layout under the runtime root (the image store's root):
//! - `containers/<id>/`: the bundle — `config.json`, `meta.json` (what was asked), `rootfs`
//!   (overlayfs mount), `upper`, `work`, `log`, `exit`, `pid`, `shim.pid`, `shim.log`,
//!   `runc.log`, `hosts`, `resolv.conf`, `hostname`;
//! - `volumes/<name>/`: named volumes;
//! - `runc/`: runc's `--root`, so runtimes rooted elsewhere never see these containers.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tracing::{debug, info, warn};

use crate::config::{ContainerConfig, MountSpec, parse_signal, validate_id};
use crate::error::{ImageError, RuntimeError};
use crate::image::{Image, ImageStore, write_atomic};
use crate::runtime::{ContainerInfo, ContainerState, EXEC_OUTPUT_LIMIT, ExecResult, Exit, Runtime};
use crate::shim::{
    EXIT_FILE, LOG_FILE, PID_FILE, RUNTIME_FAILURE, SHIM_LOG_FILE, SHIM_PID_FILE, now_ms,
    proc_start_time, write_exit,
};
use crate::spec::{SpecInputs, build};
use crate::user::{resolve_user, secure_join};

const META_FILE: &str = "meta.json";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long `stop` and `remove` wait for a SIGKILLed container to be reported gone.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// How the runc runtime is set up.
#[derive(Debug, Clone)]
pub struct RuncOptions {
    /// The command that runs the shim, before its own arguments: meshd passes
    /// `[<meshd exe>, "__shim"]`; the `mesh-shim` binary alone works too.
    pub shim: Vec<OsString>,
    /// The runc binary: a bare name is looked up on PATH. Default `runc`.
    pub runc: PathBuf,
    /// Parent cgroup of the containers (`/<parent>/<id>` in each hierarchy). Default `meshd`.
    pub cgroup_parent: String,
    /// How long `start` waits for runc to report the container running. Default 60 s.
    pub start_timeout: Duration,
}

impl RuncOptions {
    /// Defaults with the given shim command.
    pub fn new(shim: Vec<OsString>) -> RuncOptions {
        RuncOptions {
            shim,
            runc: PathBuf::from("runc"),
            cgroup_parent: "meshd".into(),
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// The OCI runtime meshd uses: runc underneath.
pub type OciRuntime = RuncRuntime;

/// What the runtime keeps about a container in `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContainerMeta {
    pub config: ContainerConfig,
    pub image_id: String,
    /// overlayfs lower dirs, top first.
    pub lower_dirs: Vec<PathBuf>,
    pub stop_signal: i32,
    pub created_at_ms: u64,
}

struct Inner {
    store: Arc<ImageStore>,
    opts: RuncOptions,
    runc: PathBuf,
    runc_root: PathBuf,
    containers: PathBuf,
    volumes: PathBuf,
}

/// The runc-backed runtime. Cheap to clone; dropping it leaves containers running.
#[derive(Clone)]
pub struct RuncRuntime {
    inner: Arc<Inner>,
}

fn find_on_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |e| RuntimeError::io(context, e)
}

/// Whether `path` is a mount point other than its parent's filesystem.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Some(parent)) = (fs::metadata(path), path.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|b| a.dev() != b.dev())
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out.dedup();
    out
}

fn unmount_all(dir: &Path) -> Result<(), RuntimeError> {
    for m in mounts_under(dir) {
        if let Err(e) = umount2(&m, MntFlags::empty()) {
            debug!(path = %m.display(), error = %e, "unmount failed, detaching");
            umount2(&m, MntFlags::MNT_DETACH).map_err(|e| {
                RuntimeError::io(
                    format!("unmounting {}", m.display()),
                    io::Error::from_raw_os_error(e as i32),
                )
            })?;
        }
    }
    Ok(())
}

/// Removes a half-made bundle unless disarmed.
struct BundleGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for BundleGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = unmount_all(&self.path) {
            warn!(path = %self.path.display(), error = %e, "could not unmount a failed bundle");
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            warn!(path = %self.path.display(), error = %e, "could not remove a failed bundle");
        }
    }
}

/// docker's rules: an entrypoint override drops the image's Cmd; args replace Cmd.
fn command_line(cfg: &ContainerConfig, image: &Image) -> Vec<String> {
    let (entrypoint, cmd) = match &cfg.entrypoint {
        Some(ep) => (ep.clone(), cfg.args.clone().unwrap_or_default()),
        None => (
            image.config.entrypoint.clone().unwrap_or_default(),
            cfg.args
                .clone()
                .or_else(|| image.config.cmd.clone())
                .unwrap_or_default(),
        ),
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// Image env, then the config's, later keys replacing earlier ones in place.
fn merge_env(image: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kv in image.iter().chain(overrides) {
        let key = kv.split('=').next().unwrap_or_default();
        match out
            .iter_mut()
            .find(|e| e.split('=').next().unwrap_or_default() == key)
        {
            Some(slot) => *slot = kv.clone(),
            None => out.push(kv.clone()),
        }
    }
    out
}

fn has_key(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split('=').next().unwrap_or_default() == key)
}

fn hosts_file(cfg: &ContainerConfig, hostname: &str) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    let mut named_self = false;
    for (ip, names) in &cfg.hosts {
        named_self |= names.iter().any(|n| n == hostname);
        s.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    if !named_self {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

impl RuncRuntime {
    /// A runtime rooted at `root` (meshd: `<data-dir>/runtime`), taking images from `store`
    /// (opened on the same root), running each container under `shim` (meshd:
    /// `[<meshd exe>, "__shim"]`), with the other options at their defaults.
    pub fn new(
        root: &Path,
        store: Arc<ImageStore>,
        shim: Vec<OsString>,
    ) -> Result<RuncRuntime, RuntimeError> {
        RuncRuntime::with_options(root, store, RuncOptions::new(shim))
    }

    /// Like `new`, with every option given. Fails if runc is not found, the store is rooted
    /// elsewhere, or the root cannot be prepared.
    pub fn with_options(
        root: &Path,
        store: Arc<ImageStore>,
        opts: RuncOptions,
    ) -> Result<RuncRuntime, RuntimeError> {
        let given =
            fs::canonicalize(root).map_err(io_err(format!("resolving {}", root.display())))?;
        if given != store.root() {
            return Err(RuntimeError::invalid(
                "root",
                format!(
                    "{} is not the image store's root {}: open the store on the runtime root",
                    given.display(),
                    store.root().display()
                ),
            ));
        }
        if opts.shim.is_empty() {
            return Err(RuntimeError::invalid(
                "shim",
                "it is empty: give the shim command, e.g. [<meshd exe>, \"__shim\"]",
            ));
        }
        if !crate::config::is_safe_name(&opts.cgroup_parent, 64) {
            return Err(RuntimeError::invalid(
                "cgroup_parent",
                format!("`{}` is not a plain name like meshd", opts.cgroup_parent),
            ));
        }
        let runc = find_on_path(&opts.runc).ok_or_else(|| {
            RuntimeError::other(
                "looking for runc",
                format!(
                    "`{}` is not an executable on PATH: install Debian's runc (apt-get install runc) or give its path",
                    opts.runc.display()
                ),
            )
        })?;
        let root = store.root().to_path_buf();
        let runc_root = root.join("runc");
        let containers = root.join("containers");
        let volumes = root.join("volumes");
        for d in [&runc_root, &containers, &volumes] {
            fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        fs::set_permissions(&runc_root, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("securing {}", runc_root.display())))?;
        debug!(root = %root.display(), runc = %runc.display(), "runc runtime ready");
        Ok(RuncRuntime {
            inner: Arc::new(Inner {
                store,
                opts,
                runc,
                runc_root,
                containers,
                volumes,
            }),
        })
    }

    /// The image store this runtime takes images from.
    pub fn store(&self) -> &Arc<ImageStore> {
        &self.inner.store
    }

    /// The bundle directory of container `id`.
    pub fn bundle_path(&self, id: &str) -> PathBuf {
        self.inner.containers.join(id)
    }

    /// The directory backing the named volume `name`.
    pub fn volume_path(&self, name: &str) -> PathBuf {
        self.inner.volumes.join(name)
    }

    fn read_meta(&self, id: &str) -> Result<ContainerMeta, RuntimeError> {
        let p = self.bundle_path(id).join(META_FILE);
        match fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| {
                RuntimeError::other(format!("reading {}", p.display()), e.to_string())
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(RuntimeError::NotFound { id: id.to_string() })
            }
            Err(e) => Err(RuntimeError::io(format!("reading {}", p.display()), e)),
        }
    }

    async fn runc(&self, id: &str, action: &str, args: &[&OsStr]) -> Result<Vec<u8>, RuntimeError> {
        let out = Command::new(&self.inner.runc)
            .arg("--root")
            .arg(&self.inner.runc_root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err(format!(
                "running {} {action}",
                self.inner.runc.display()
            )))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuntimeError::Runc {
                action: action.to_string(),
                id: id.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// runc's view: (status, pid), or None if runc does not know the container.
    async fn runc_state(&self, id: &str) -> Option<(String, i32)> {
        let out = self
            .runc(id, "state", &[OsStr::new("state"), OsStr::new(id)])
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out).ok()?;
        Some((
            v["status"].as_str().unwrap_or_default().to_string(),
            i32::try_from(v["pid"].as_i64().unwrap_or(0)).unwrap_or(0),
        ))
    }

    fn read_exit(bundle: &Path) -> Option<Exit> {
        let data = fs::read(bundle.join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Whether the shim recorded in the bundle is still alive: None if none was started.
    fn shim_alive(bundle: &Path) -> Option<bool> {
        let text = fs::read_to_string(bundle.join(SHIM_PID_FILE)).ok()?;
        let mut it = text.split_whitespace();
        let pid: i32 = it.next()?.parse().ok()?;
        let start: u64 = it.next()?.parse().ok()?;
        Some(matches!(proc_start_time(pid), Some((s, false)) if s == start))
    }

    fn container_pid(bundle: &Path) -> Option<i32> {
        fs::read_to_string(bundle.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    async fn probe(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let bundle = self.bundle_path(id);
        if !bundle.join(META_FILE).exists() {
            return Ok(ContainerState::Missing);
        }
        if let Some(exit) = Self::read_exit(&bundle) {
            return Ok(ContainerState::Exited(exit));
        }
        match Self::shim_alive(&bundle) {
            None => Ok(ContainerState::Created),
            Some(true) => Ok(match Self::container_pid(&bundle) {
                Some(pid) => ContainerState::Running { pid },
                None => ContainerState::Created,
            }),
            Some(false) => {
                // The shim may have just written the exit.
                if let Some(exit) = Self::read_exit(&bundle) {
                    return Ok(ContainerState::Exited(exit));
                }
                match self.runc_state(id).await {
                    Some((status, pid)) if status != "stopped" && pid > 0 => {
                        Ok(ContainerState::Running { pid })
                    }
                    _ => {
                        let exit = Exit {
                            code: RUNTIME_FAILURE,
                            finished_at_ms: now_ms(),
                            error: Some(
                                "its supervisor (the shim) died, so its exit code is lost".into(),
                            ),
                        };
                        warn!(container = id, "shim gone without an exit record");
                        write_exit(&bundle, &exit)
                            .map_err(io_err(format!("recording the exit of container {id}")))?;
                        Ok(ContainerState::Exited(exit))
                    }
                }
            }
        }
    }

    /// Waits for an exit up to `limit` (forever when None).
    async fn wait_exit(
        &self,
        id: &str,
        limit: Option<Duration>,
    ) -> Result<Option<Exit>, RuntimeError> {
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let mut interval = Duration::from_millis(20);
        loop {
            match self.probe(id).await? {
                ContainerState::Exited(e) => return Ok(Some(e)),
                ContainerState::Missing => {
                    return Err(RuntimeError::NotFound { id: id.to_string() });
                }
                _ => {}
            }
            if let Some(d) = deadline
                && tokio::time::Instant::now() >= d
            {
                return Ok(None);
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(200));
        }
    }

    async fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        let sig = (signal as i32).to_string();
        match self
            .runc(
                id,
                "kill",
                &[OsStr::new("kill"), OsStr::new(id), OsStr::new(&sig)],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                // Gone in between is fine; anything else is worth a fallback.
                if let ContainerState::Running { pid } = self.probe(id).await? {
                    warn!(container = id, error = %e, "runc kill failed, signalling the pid");
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(
                        |errno| {
                            RuntimeError::io(
                                format!("sending {signal} to container {id} (pid {pid})"),
                                io::Error::from_raw_os_error(errno as i32),
                            )
                        },
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Waits out a start in progress (shim running, container not yet): up to the start
    /// timeout.
    async fn settle_start(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let bundle = self.bundle_path(id);
        let deadline = tokio::time::Instant::now() + self.inner.opts.start_timeout;
        loop {
            let st = self.probe(id).await?;
            let starting =
                matches!(st, ContainerState::Created) && Self::shim_alive(&bundle) == Some(true);
            if !starting || tokio::time::Instant::now() >= deadline {
                return Ok(st);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn create_blocking(&self, cfg: &ContainerConfig) -> Result<(), RuntimeError> {
        cfg.validate()?;
        let inner = &self.inner;
        let bundle = self.bundle_path(&cfg.id);
        let (image, lower_dirs, mut guard) = {
            let _lock = inner.store.lock();
            if bundle.exists() {
                return Err(RuntimeError::AlreadyExists { id: cfg.id.clone() });
            }
            let image = inner.store.resolve(&cfg.image).map_err(|e| match e {
                ImageError::InvalidReference { reference, reason } => RuntimeError::invalid(
                    "image",
                    format!("`{reference}` is not a valid image reference: {reason}"),
                ),
                other => RuntimeError::Image(other),
            })?;
            let mut dirs = inner.store.layer_dirs(&image);
            dirs.reverse();
            if let Some(missing) = dirs.iter().find(|d| !d.is_dir()) {
                return Err(RuntimeError::other(
                    format!("image {}", image.id),
                    format!(
                        "layer directory {} is missing: load the image again",
                        missing.display()
                    ),
                ));
            }
            if dirs.is_empty() {
                let empty = inner.store.root().join("layers").join("empty");
                fs::create_dir_all(&empty)
                    .map_err(io_err(format!("creating {}", empty.display())))?;
                dirs.push(empty);
            }
            let lower_dirs = dirs;
            let stop_signal = match (&cfg.stop_signal, &image.config.stop_signal) {
                (Some(s), _) => parse_signal(s).unwrap_or(Signal::SIGTERM),
                (None, Some(s)) => parse_signal(s).unwrap_or_else(|| {
                    warn!(image = %image.id, signal = %s, "image StopSignal not understood; using SIGTERM");
                    Signal::SIGTERM
                }),
                (None, None) => Signal::SIGTERM,
            };
            fs::create_dir_all(&inner.containers)
                .map_err(io_err(format!("creating {}", inner.containers.display())))?;
            fs::create_dir(&bundle).map_err(io_err(format!("creating {}", bundle.display())))?;
            let guard = BundleGuard {
                path: bundle.clone(),
                armed: true,
            };
            let meta = ContainerMeta {
                config: cfg.clone(),
                image_id: image.id.clone(),
                lower_dirs: lower_dirs.clone(),
                stop_signal: stop_signal as i32,
                created_at_ms: now_ms(),
            };
            let data = serde_json::to_vec_pretty(&meta)
                .map_err(|e| RuntimeError::other("encoding the container record", e.to_string()))?;
            write_atomic(&bundle.join(META_FILE), &data).map_err(io_err(format!(
                "writing {}",
                bundle.join(META_FILE).display()
            )))?;
            (image, lower_dirs, guard)
        };

        let rootfs = bundle.join("rootfs");
        for d in ["rootfs", "upper", "work"] {
            let p = bundle.join(d);
            fs::create_dir(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        fs::set_permissions(&bundle, fs::Permissions::from_mode(0o711))
            .map_err(io_err(format!("chmod {}", bundle.display())))?;
        mount_rootfs(&bundle, &lower_dirs)?;

        // Everything that needs to look into the image.
        let user_spec = cfg.user.clone().or_else(|| image.config.user.clone());
        let user = resolve_user(&rootfs, user_spec.as_deref()).map_err(|reason| {
            let field = if cfg.user.is_some() {
                "user"
            } else {
                "user (from the image)"
            };
            RuntimeError::invalid(field, reason)
        })?;
        let cwd = cfg
            .workdir
            .clone()
            .or_else(|| image.config.working_dir.clone())
            .unwrap_or_else(|| "/".into());
        let cwd = if cwd.starts_with('/') {
            cwd
        } else {
            format!("/{cwd}")
        };
        let cwd_host = secure_join(&rootfs, Path::new(&cwd))
            .map_err(io_err(format!("resolving the working directory {cwd}")))?;
        if !cwd_host.is_dir() {
            fs::create_dir_all(&cwd_host)
                .map_err(io_err(format!("creating the working directory {cwd}")))?;
        }

        let args = command_line(cfg, &image);
        if args.is_empty() {
            return Err(RuntimeError::invalid(
                "args",
                "the image has no Entrypoint or Cmd: give the command to run in args (or entrypoint)",
            ));
        }
        let hostname = cfg.effective_hostname();
        let mut env = merge_env(&image.config.env, &cfg.env);
        if !has_key(&env, "PATH") {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        if !has_key(&env, "HOSTNAME") {
            env.push(format!("HOSTNAME={hostname}"));
        }
        if !has_key(&env, "HOME") {
            env.push(format!("HOME={}", user.home));
        }

        let mut volume_dirs = Vec::new();
        for m in &cfg.mounts {
            if let MountSpec::Volume { name, .. } = m {
                let dir = self.volume_path(name);
                fs::create_dir_all(&dir)
                    .map_err(io_err(format!("creating volume {}", dir.display())))?;
                volume_dirs.push(Some(dir));
            } else {
                volume_dirs.push(None);
            }
        }

        let resolv = match &cfg.resolv_conf {
            Some(r) => r.clone(),
            None => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        let files = [
            ("resolv.conf", resolv),
            ("hosts", hosts_file(cfg, &hostname)),
            ("hostname", format!("{hostname}\n")),
        ];
        for (name, content) in &files {
            let p = bundle.join(name);
            fs::write(&p, content).map_err(io_err(format!("writing {}", p.display())))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
                .map_err(io_err(format!("chmod {}", p.display())))?;
        }

        let mut annotations = HashMap::new();
        annotations.insert("org.meshd.image".to_string(), image.id.clone());
        if !cfg.name.is_empty() {
            annotations.insert("org.meshd.name".to_string(), cfg.name.clone());
        }
        let spec = build(&SpecInputs {
            cfg,
            args,
            env,
            cwd,
            user: &user,
            hostname,
            resolv_conf: bundle.join("resolv.conf"),
            hosts: bundle.join("hosts"),
            hostname_file: bundle.join("hostname"),
            volume_dirs,
            cgroups_path: format!("/{}/{}", inner.opts.cgroup_parent, cfg.id),
            annotations,
        })?;
        let data = serde_json::to_vec_pretty(&spec)
            .map_err(|e| RuntimeError::other("encoding config.json", e.to_string()))?;
        write_atomic(&bundle.join("config.json"), &data).map_err(io_err(format!(
            "writing {}",
            bundle.join("config.json").display()
        )))?;
        guard.armed = false;
        info!(container = %cfg.id, image = %image.id, "created container");
        Ok(())
    }
}

/// Mounts the overlay root filesystem of a bundle (lower dirs top first).
fn mount_rootfs(bundle: &Path, lower_dirs: &[PathBuf]) -> Result<(), RuntimeError> {
    let rootfs = bundle.join("rootfs");
    let lower = lower_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        bundle.join("upper").display(),
        bundle.join("work").display()
    );
    if data.len() >= 4096 {
        return Err(RuntimeError::other(
            format!("mounting {}", rootfs.display()),
            format!(
                "the overlay options are {} bytes, over the kernel's 4095: the image has too many layers for this root path; use a shorter runtime root",
                data.len()
            ),
        ));
    }
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| {
        RuntimeError::io(
            format!(
                "mounting the overlay root filesystem at {}",
                rootfs.display()
            ),
            io::Error::from_raw_os_error(e as i32),
        )
    })
}

async fn read_bounded<R: AsyncRead + Unpin>(mut r: R, limit: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(out.len());
                if n > room {
                    truncated = true;
                }
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (out, truncated)
}

#[async_trait::async_trait]
impl Runtime for RuncRuntime {
    async fn create(&self, cfg: &ContainerConfig) -> Result<(), RuntimeError> {
        let this = self.clone();
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || this.create_blocking(&cfg))
            .await
            .map_err(|e| RuntimeError::other("creating a container", e.to_string()))?
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let meta = self.read_meta(id)?;
        let bundle = self.bundle_path(id);
        match self.probe(id).await? {
            ContainerState::Created if Self::shim_alive(&bundle).is_none() => {}
            ContainerState::Created => {
                return Err(RuntimeError::WrongState {
                    id: id.into(),
                    state: "starting".into(),
                    hint: "another start is in progress".into(),
                });
            }
            ContainerState::Running { .. } => {
                return Err(RuntimeError::WrongState {
                    id: id.into(),
                    state: "running".into(),
                    hint: "it is already started".into(),
                });
            }
            ContainerState::Exited(_) => {
                return Err(RuntimeError::WrongState {
                    id: id.into(),
                    state: "exited".into(),
                    hint: "remove it and create it again to run it anew".into(),
                });
            }
            ContainerState::Missing => return Err(RuntimeError::NotFound { id: id.into() }),
        }
        if !is_mount_point(&bundle.join("rootfs")) {
            info!(
                container = id,
                "root filesystem not mounted (host restarted?); mounting it again"
            );
            mount_rootfs(&bundle, &meta.lower_dirs)?;
        }
        for stale in [PID_FILE, crate::shim::RUNC_LOG_FILE] {
            let _ = fs::remove_file(bundle.join(stale));
        }
        let (prog, prefix) = self
            .inner
            .opts
            .shim
            .split_first()
            .ok_or_else(|| RuntimeError::invalid("shim", "it is empty"))?;
        let shim_log_path = bundle.join(SHIM_LOG_FILE);
        let shim_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&shim_log_path)
            .map_err(io_err(format!("opening {}", shim_log_path.display())))?;
        let shim_log2 = shim_log
            .try_clone()
            .map_err(io_err(format!("opening {}", shim_log_path.display())))?;
        let status = Command::new(prog)
            .args(prefix)
            .arg("--runc")
            .arg(&self.inner.runc)
            .arg("--root")
            .arg(&self.inner.runc_root)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--id")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(shim_log))
            .stderr(Stdio::from(shim_log2))
            .status()
            .await
            .map_err(io_err(format!(
                "running the shim {} for container {id}",
                Path::new(prog).display()
            )))?;
        if !status.success() {
            let said = fs::read_to_string(&shim_log_path).unwrap_or_default();
            return Err(RuntimeError::StartFailed {
                id: id.into(),
                message: format!(
                    "the shim failed ({status}): {}",
                    said.lines().last().unwrap_or_default()
                ),
            });
        }
        let deadline = tokio::time::Instant::now() + self.inner.opts.start_timeout;
        let mut interval = Duration::from_millis(5);
        loop {
            if let Some(exit) = Self::read_exit(&bundle) {
                return match exit.error {
                    Some(message) => Err(RuntimeError::StartFailed {
                        id: id.into(),
                        message,
                    }),
                    None => {
                        debug!(
                            container = id,
                            code = exit.code,
                            "container ran and exited already"
                        );
                        Ok(())
                    }
                };
            }
            if let Some(pid) = Self::container_pid(&bundle) {
                info!(container = id, pid, "container running");
                return Ok(());
            }
            if Self::shim_alive(&bundle) == Some(false) && Self::read_exit(&bundle).is_none() {
                return Err(RuntimeError::StartFailed {
                    id: id.into(),
                    message: format!(
                        "the shim died before the container started; see {}",
                        bundle.join(SHIM_LOG_FILE).display()
                    ),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Timeout {
                    id: id.into(),
                    what: "runc reporting the container running".into(),
                    timeout: self.inner.opts.start_timeout,
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_millis(50));
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Exit, RuntimeError> {
        validate_id(id)?;
        let meta = self.read_meta(id)?;
        let bundle = self.bundle_path(id);
        match self.settle_start(id).await? {
            ContainerState::Missing => Err(RuntimeError::NotFound { id: id.into() }),
            ContainerState::Exited(e) => Ok(e),
            ContainerState::Created => {
                let exit = Exit {
                    code: 0,
                    finished_at_ms: now_ms(),
                    error: Some("stopped before it started".into()),
                };
                write_exit(&bundle, &exit)
                    .map_err(io_err(format!("recording the exit of container {id}")))?;
                Ok(exit)
            }
            ContainerState::Running { .. } => {
                let signal = Signal::try_from(meta.stop_signal).unwrap_or(Signal::SIGTERM);
                info!(container = id, %signal, ?grace, "stopping container");
                self.kill(id, signal).await?;
                if let Some(e) = self.wait_exit(id, Some(grace)).await? {
                    return Ok(e);
                }
                info!(container = id, "grace period over; killing");
                self.kill(id, Signal::SIGKILL).await?;
                self.wait_exit(id, Some(KILL_WAIT))
                    .await?
                    .ok_or_else(|| RuntimeError::Timeout {
                        id: id.into(),
                        what: "exit after SIGKILL".into(),
                        timeout: KILL_WAIT,
                    })
            }
        }
    }

    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        validate_id(id)?;
        self.wait_exit(id, None)
            .await?
            .ok_or_else(|| RuntimeError::NotFound { id: id.into() })
    }

    async fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        validate_id(id)?;
        self.probe(id).await
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        validate_id(id)?;
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err(RuntimeError::invalid(
                "argv",
                "it is empty: give the command to run",
            ));
        }
        match self.probe(id).await? {
            ContainerState::Running { .. } => {}
            ContainerState::Missing => return Err(RuntimeError::NotFound { id: id.into() }),
            other => {
                return Err(RuntimeError::WrongState {
                    id: id.into(),
                    state: other.name().into(),
                    hint: "exec needs a running container".into(),
                });
            }
        }
        let bundle = self.bundle_path(id);
        static EXEC_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = EXEC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid_file = bundle.join(format!("exec-{}-{n}.pid", std::process::id()));
        let mut child = Command::new(&self.inner.runc)
            .arg("--root")
            .arg(&self.inner.runc_root)
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err(format!("running runc exec in container {id}")))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out_task = tokio::spawn(async move {
            match stdout {
                Some(s) => read_bounded(s, EXEC_OUTPUT_LIMIT).await,
                None => (Vec::new(), false),
            }
        });
        let err_task = tokio::spawn(async move {
            match stderr {
                Some(s) => read_bounded(s, EXEC_OUTPUT_LIMIT).await,
                None => (Vec::new(), false),
            }
        });
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(s) => s.map_err(io_err(format!("waiting for runc exec in container {id}")))?,
            Err(_) => {
                if let Some(pid) = fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.kill().await;
                let _ = fs::remove_file(&pid_file);
                out_task.abort();
                err_task.abort();
                return Err(RuntimeError::ExecTimeout {
                    id: id.into(),
                    timeout,
                });
            }
        };
        let started = pid_file.exists();
        let _ = fs::remove_file(&pid_file);
        let (out, t1) = out_task.await.unwrap_or_default();
        let (err, t2) = err_task.await.unwrap_or_default();
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(RUNTIME_FAILURE);
        let stderr = String::from_utf8_lossy(&err).into_owned();
        if !started && exit_code != 0 {
            return Err(RuntimeError::Runc {
                action: "exec".into(),
                id: id.into(),
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(ExecResult {
            exit_code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr,
            truncated: t1 || t2,
        })
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let bundle = self.bundle_path(id);
        if !bundle.exists() {
            return Ok(());
        }
        if bundle.join(META_FILE).exists()
            && let ContainerState::Running { .. } = self.settle_start(id).await?
        {
            warn!(container = id, "removing a running container: killing it");
            self.kill(id, Signal::SIGKILL).await?;
            if self.wait_exit(id, Some(KILL_WAIT)).await?.is_none() {
                return Err(RuntimeError::Timeout {
                    id: id.into(),
                    what: "exit after SIGKILL".into(),
                    timeout: KILL_WAIT,
                });
            }
        }
        if let Err(e) = self
            .runc(
                id,
                "delete",
                &[OsStr::new("delete"), OsStr::new("--force"), OsStr::new(id)],
            )
            .await
        {
            let gone = matches!(&e, RuntimeError::Runc { stderr, .. } if stderr.contains("does not exist") || stderr.contains("not exist"));
            if !gone {
                return Err(e);
            }
        }
        let this = self.clone();
        let id_owned = id.to_string();
        tokio::task::spawn_blocking(move || {
            let bundle = this.bundle_path(&id_owned);
            unmount_all(&bundle)?;
            fs::remove_dir_all(&bundle).map_err(io_err(format!("removing {}", bundle.display())))
        })
        .await
        .map_err(|e| RuntimeError::other(format!("removing container {id}"), e.to_string()))??;
        info!(container = id, "removed container");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let dir = &self.inner.containers;
        let entries = fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))?;
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| validate_id(n).is_ok())
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let meta = match self.read_meta(&id) {
                Ok(m) => m,
                Err(RuntimeError::NotFound { .. }) => continue,
                Err(e) => {
                    warn!(container = %id, error = %e, "skipping a container with an unreadable record");
                    continue;
                }
            };
            let state = self.probe(&id).await?;
            out.push(ContainerInfo {
                id: id.clone(),
                name: meta.config.name.clone(),
                image: meta.config.image.clone(),
                image_id: meta.image_id.clone(),
                labels: meta.config.labels.clone(),
                created_at_ms: meta.created_at_ms,
                state,
                config: meta.config,
            });
        }
        Ok(out)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.bundle_path(id).join(LOG_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    fn image(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> Image {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Image {
            id: "sha256:x".into(),
            tags: vec![],
            manifest_digest: None,
            size: 0,
            created: None,
            architecture: "amd64".into(),
            os: "linux".into(),
            diff_ids: vec![],
            chain_ids: vec![],
            config: ImageConfig {
                entrypoint: ep.map(v),
                cmd: cmd.map(v),
                ..ImageConfig::default()
            },
        }
    }

    #[test]
    fn command_line_follows_docker() {
        let img = image(Some(&["/ep"]), Some(&["a", "b"]));
        let mut cfg = ContainerConfig::new("x", "i");
        assert_eq!(command_line(&cfg, &img), ["/ep", "a", "b"]);
        cfg.args = Some(vec!["c".into()]);
        assert_eq!(command_line(&cfg, &img), ["/ep", "c"]);
        cfg.entrypoint = Some(vec!["/other".into()]);
        cfg.args = None;
        assert_eq!(command_line(&cfg, &img), ["/other"]);
        let img = image(None, Some(&["/serve.sh"]));
        let mut cfg = ContainerConfig::new("x", "i");
        cfg.args = Some(vec!["sleep".into(), "1".into()]);
        assert_eq!(command_line(&cfg, &img), ["sleep", "1"]);
    }

    #[test]
    fn env_overrides_keep_order() {
        let e = merge_env(
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        );
        assert_eq!(e, ["PATH=/bin", "A=2", "B=3"]);
    }
}
