//! The node's image store and container runtime (mesh-agent), as the executor and the API
//! use them: task specs mapped onto container configs, errors with context.

use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_agent::{
    ContainerConfig, ContainerState, ImageStore, Limits, MountSpec, OciRuntime, Runtime,
};
use mesh_api::api::{ImageSummary, LogChunk, LogsQuery};
use mesh_api::{MountType, Task};
use tracing::warn;

/// Largest piece of log returned at once.
const MAX_LOG_CHUNK: u64 = 256 * 1024;

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal when killed by one).
    pub code: i32,
}

/// Where a task's container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No container.
    Missing,
    /// Created, not started.
    Created,
    /// Running with this pid.
    Running {
        /// Host pid.
        pid: u32,
    },
    /// Ended.
    Exited(Exit),
}

/// What the executor prepared for a task before its container is made.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The task's network namespace.
    pub netns: PathBuf,
    /// Its host name.
    pub hostname: String,
    /// Whether it resolves through the embedded DNS at 127.0.0.11.
    pub dns: bool,
}

/// This node's images and containers.
pub struct Engine {
    images: Arc<ImageStore>,
    runtime: OciRuntime,
}

impl Engine {
    /// Opens (or creates) the store and runtime under `root`.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let images = Arc::new(
            ImageStore::open(root).with_context(|| format!("image store in {}", root.display()))?,
        );
        let exe = std::env::current_exe().context("locating the meshd binary for the shim")?;
        let runtime = OciRuntime::new(
            root,
            Arc::clone(&images),
            vec![exe.into_os_string(), "__shim".into()],
        )
        .with_context(|| format!("container runtime in {}", root.display()))?;
        Ok(Self { images, runtime })
    }

    /// Whether `reference` names an image of this node.
    pub async fn has_image(&self, reference: &str) -> bool {
        let images = Arc::clone(&self.images);
        let r = reference.to_string();
        matches!(
            tokio::task::spawn_blocking(move || images.resolve(&r)).await,
            Ok(Ok(_))
        )
    }

    /// Every image of this node.
    pub async fn list_images(&self) -> anyhow::Result<Vec<ImageSummary>> {
        let images = Arc::clone(&self.images);
        let list = tokio::task::spawn_blocking(move || images.list()).await??;
        Ok(list
            .into_iter()
            .map(|i| ImageSummary {
                id: i.id,
                repo_tags: i.tags,
                size: i.size,
                created: i.created.unwrap_or_default(),
            })
            .collect())
    }

    /// Loads an archive; returns the images it brought.
    pub async fn load_image(&self, path: &Path) -> anyhow::Result<Vec<ImageSummary>> {
        let images = Arc::clone(&self.images);
        let p = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || images.load(&p)).await??;
        let all = self.list_images().await?;
        Ok(all
            .into_iter()
            .filter(|i| loaded.iter().any(|l| l.id == i.id))
            .collect())
    }

    /// Removes an image.
    pub async fn remove_image(&self, reference: &str, force: bool) -> anyhow::Result<()> {
        let images = Arc::clone(&self.images);
        let r = reference.to_string();
        tokio::task::spawn_blocking(move || images.remove(&r, force)).await??;
        Ok(())
    }

    /// The container config of a task.
    fn config(task: &Task, prepared: &Prepared) -> ContainerConfig {
        let c = &task.spec.container;
        let mut cfg = ContainerConfig::new(task.id.clone(), c.image.clone());
        cfg.name = task.container_name();
        cfg.hostname = Some(prepared.hostname.clone());
        cfg.entrypoint = c.command.clone();
        cfg.args = if c.args.is_empty() {
            None
        } else {
            Some(c.args.clone())
        };
        cfg.env = c.env.clone();
        cfg.workdir = c.dir.clone();
        cfg.user = c.user.clone();
        cfg.mounts = c
            .mounts
            .iter()
            .map(|m| match m.kind {
                MountType::Volume => MountSpec::Volume {
                    name: m.source.clone(),
                    target: m.target.clone(),
                    readonly: m.read_only,
                },
                MountType::Bind => MountSpec::Bind {
                    source: PathBuf::from(&m.source),
                    target: m.target.clone(),
                    readonly: m.read_only,
                },
                MountType::Tmpfs => MountSpec::Tmpfs {
                    target: m.target.clone(),
                    size: (m.tmpfs_size > 0).then_some(m.tmpfs_size),
                },
            })
            .collect();
        let l = task.spec.resources.limits;
        cfg.limits = Limits {
            nano_cpus: (l.nano_cpus > 0).then_some(l.nano_cpus),
            memory_bytes: (l.memory_bytes > 0).then_some(l.memory_bytes),
            pids: None,
        };
        cfg.netns = Some(prepared.netns.clone());
        cfg.resolv_conf = Some(resolv_conf(prepared.dns));
        let mut names = vec![prepared.hostname.clone()];
        if !task.service_id.is_empty() {
            names.push(task.container_name());
        }
        cfg.hosts = task
            .networks
            .iter()
            .map(|a| (IpAddr::V4(a.ip), names.clone()))
            .collect();
        cfg.stop_signal = c.stop_signal.clone();
        cfg.labels = c.labels.clone();
        cfg.labels.insert("meshd.task.id".into(), task.id.clone());
        if !task.service_id.is_empty() {
            cfg.labels
                .insert("meshd.service.id".into(), task.service_id.clone());
            cfg.labels
                .insert("meshd.service.name".into(), task.service_name.clone());
        }
        cfg
    }

    /// Creates the task's container (bundle and root filesystem), replacing a leftover one.
    pub async fn create(&self, task: &Task, prepared: &Prepared) -> anyhow::Result<()> {
        let cfg = Self::config(task, prepared);
        if !matches!(
            self.runtime.state(&task.id).await,
            Ok(ContainerState::Missing)
        ) {
            self.runtime
                .remove(&task.id)
                .await
                .with_context(|| format!("removing the leftover container {}", task.id))?;
        }
        self.runtime
            .create(&cfg)
            .await
            .with_context(|| format!("creating the container of task {}", task.id))
    }

    /// Starts a created container; returns its pid.
    pub async fn start(&self, id: &str) -> anyhow::Result<u32> {
        self.runtime.start(id).await?;
        Ok(match self.runtime.state(id).await? {
            ContainerState::Running { pid } => u32::try_from(pid).unwrap_or(0),
            _ => 0,
        })
    }

    /// Waits for the container to exit.
    pub async fn wait(&self, id: &str) -> anyhow::Result<Exit> {
        let e = self.runtime.wait(id).await?;
        Ok(Exit { code: e.code })
    }

    /// Stops the container: its stop signal, `grace`, then SIGKILL.
    pub async fn stop(&self, id: &str, grace: Duration) -> anyhow::Result<Exit> {
        let e = self.runtime.stop(id, grace).await?;
        Ok(Exit { code: e.code })
    }

    /// Where the task's container is.
    pub async fn run_state(&self, id: &str) -> RunState {
        match self.runtime.state(id).await {
            Ok(ContainerState::Running { pid }) => RunState::Running {
                pid: u32::try_from(pid).unwrap_or(0),
            },
            Ok(ContainerState::Exited(e)) => RunState::Exited(Exit { code: e.code }),
            Ok(ContainerState::Created) => RunState::Created,
            Ok(ContainerState::Missing) => RunState::Missing,
            Err(e) => {
                warn!(container = %id, error = %e, "could not read the container's state");
                RunState::Missing
            }
        }
    }

    /// Stops (after `grace`) and removes the container. Missing is fine.
    pub async fn destroy(&self, id: &str, grace: Duration) -> anyhow::Result<()> {
        if matches!(
            self.runtime.state(id).await,
            Ok(ContainerState::Running { .. })
        ) {
            let _ = self.runtime.stop(id, grace).await;
        }
        self.runtime
            .remove(id)
            .await
            .with_context(|| format!("removing container {id}"))
    }

    /// Removes every container (the node leaves its cluster).
    pub async fn destroy_all(&self) {
        for id in self.container_ids().await.unwrap_or_default() {
            if let Err(e) = self.destroy(&id, Duration::from_secs(10)).await {
                warn!(container = %id, error = format!("{e:#}"), "could not remove container");
            }
        }
    }

    /// IDs of every container on disk.
    pub async fn container_ids(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .runtime
            .list()
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Runs a health check (`/bin/sh -c CMD`); true when it exits 0 in time.
    pub async fn health_check(&self, id: &str, cmd: &str, timeout: Duration) -> bool {
        let argv = vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()];
        match self.runtime.exec(id, &argv, timeout).await {
            Ok(r) => r.exit_code == 0,
            Err(e) => {
                tracing::debug!(container = %id, error = %e, "health check could not run");
                false
            }
        }
    }

    /// A piece of the container's output.
    pub async fn read_logs(&self, id: &str, q: LogsQuery) -> anyhow::Result<LogChunk> {
        let path = self.runtime.log_path(id);
        let finished = !matches!(
            self.runtime.state(id).await,
            Ok(ContainerState::Running { .. } | ContainerState::Created)
        );
        let chunk = tokio::task::spawn_blocking(move || read_log(&path, q)).await??;
        Ok(LogChunk { finished, ..chunk })
    }
}

/// Reads `path` from `q.offset` (or its last `q.tail` lines), at most [`MAX_LOG_CHUNK`] bytes,
/// ending at a line boundary when it can.
fn read_log(path: &Path, q: LogsQuery) -> anyhow::Result<LogChunk> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no logs: the container is gone ({})", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = f.metadata()?.len();
    let mut start = q.offset.min(len);
    if q.offset == 0
        && let Some(n) = q.tail
    {
        // Find the start of the last `n` lines.
        let window = len.min(4 * 1024 * 1024);
        f.seek(SeekFrom::Start(len - window))?;
        let mut buf = Vec::with_capacity(window as usize);
        f.by_ref().take(window).read_to_end(&mut buf)?;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let mut cut = 0usize;
        let mut lines = 0u64;
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                lines += 1;
                if lines == n {
                    cut = i + 1;
                    break;
                }
            }
        }
        start = if n == 0 {
            len
        } else {
            len - window + cut as u64
        };
    }
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(MAX_LOG_CHUNK).read_to_end(&mut buf)?;
    if buf.len() as u64 == MAX_LOG_CHUNK
        && let Some(p) = buf.iter().rposition(|b| *b == b'\n')
    {
        buf.truncate(p + 1);
    }
    Ok(LogChunk {
        data: String::from_utf8_lossy(&buf).into_owned(),
        next_offset: start + buf.len() as u64,
        finished: false,
    })
}

/// The resolver configuration a task gets: the embedded DNS (which forwards to the host's
/// resolvers) with the host's search domains, or, for a task on no network, the host's own.
fn resolv_conf(embedded: bool) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !embedded {
        return host;
    }
    let mut out = String::from("nameserver 127.0.0.11\n");
    for line in host.lines() {
        let l = line.trim_start();
        if l.starts_with("search ") || l.starts_with("domain ") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("options ndots:0\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_from_offsets_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        let all = read_log(&p, LogsQuery::default()).unwrap();
        assert_eq!(all.data, "a\nb\nc\nd\n");
        assert_eq!(all.next_offset, 8);
        let rest = read_log(
            &p,
            LogsQuery {
                offset: 4,
                tail: None,
            },
        )
        .unwrap();
        assert_eq!(rest.data, "c\nd\n");
        let tail = read_log(
            &p,
            LogsQuery {
                offset: 0,
                tail: Some(2),
            },
        )
        .unwrap();
        assert_eq!(tail.data, "c\nd\n");
        let tail = read_log(
            &p,
            LogsQuery {
                offset: 0,
                tail: Some(10),
            },
        )
        .unwrap();
        assert_eq!(tail.data, "a\nb\nc\nd\n");
        assert!(read_log(&dir.path().join("nope"), LogsQuery::default()).is_err());
    }
}
