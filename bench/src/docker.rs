//! A Docker Swarm cluster on a lab (the reference of the services benchmark): one `dockerd`
//! (Debian's docker.io) per lab host, driven through the Docker Engine API like the `docker`
//! CLI would.
//!
//! Each daemon runs in its host's network namespace (entered with `nsenter --net`, which
//! keeps `/sys` and its cgroups) with a mount and a UTS namespace of its own (`unshare`): its
//! host name is `hostN`, `/etc/docker` is an empty tmpfs (no shared `key.json`, no machine
//! `daemon.json`), and its mounts (overlay2 layers, network namespaces) vanish with it.
//! Its data root, exec root (with its own containerd) and API socket are in the lab's
//! directory. `--iptables=false --ip-forward=false --bridge=none`: nothing is written into
//! the machine's firewall, and containers have no default bridge (swarm tasks don't use it).
//! The whole host is killed like a meshd host ([`crate::kill`]): its dockerd, containerd,
//! shims and containers.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use mesh_testkit::{CONTROL_PORT, Lab, LabOptions};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::http::{Conn, Endpoint, shorten};
use crate::kill::{self, NetnsId};
use crate::{BenchError, cleanup};

/// The Docker Engine API version spoken (Docker 20.10).
pub const API: &str = "/v1.41";
/// Where Debian's docker.io puts the daemon.
pub const DEFAULT_DOCKERD: &str = "/usr/sbin/dockerd";
/// Longest one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a daemon may take to answer its first ping.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a host kill keeps killing what is left.
const KILL_SWEEP: Duration = Duration::from_secs(2);

/// The daemon binary: `$DOCKERD_BIN`, else Debian's.
pub fn binary() -> Result<PathBuf, BenchError> {
    let path = std::env::var_os("DOCKERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKERD));
    if path.exists() {
        Ok(path)
    } else {
        Err(BenchError::MissingProgram {
            program: "dockerd",
            path,
            fix: "apt-get install docker.io (bench/services.sh does it), or set DOCKERD_BIN",
        })
    }
}

/// The daemons of a cluster: what a teardown must stop, also from the signal thread.
struct Daemons {
    /// Each host's daemon, while it runs.
    children: Mutex<Vec<Option<Child>>>,
    /// Each host's network namespace.
    namespaces: Vec<NetnsId>,
}

impl Daemons {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Child>>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Kills host `i` (1-based) as a whole and reaps its daemon.
    fn kill(&self, i: usize) -> usize {
        let killed = self
            .namespaces
            .get(i - 1)
            .map_or(0, |ns| kill::kill_host(&[*ns], KILL_SWEEP));
        if let Some(mut c) = self.lock().get_mut(i - 1).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
            cleanup::forget_pid(c.id());
        }
        killed
    }
}

impl cleanup::Teardown for Daemons {
    fn teardown(&self) {
        // Every host at once: the containers die with their daemons.
        kill::kill_host(&self.namespaces, KILL_SWEEP);
        for c in self.lock().iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
            cleanup::forget_pid(c.id());
        }
    }
}

/// A task as the Engine API returns it (the fields used here).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerTask {
    /// Task ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node ID.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Service ID.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// `running`, `shutdown`, …
    pub desired_state: String,
    /// Observed status.
    pub status: DockerTaskStatus,
    /// The task's spec.
    pub spec: DockerTaskSpec,
}

/// A task's observed status.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerTaskStatus {
    /// `new`, …, `running`, `complete`, `shutdown`, `failed`, `rejected`, `remove`,
    /// `orphaned`.
    pub state: String,
    /// The error, if any.
    pub err: String,
}

/// A task's spec (the container part).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerTaskSpec {
    /// The container.
    pub container_spec: DockerContainerSpec,
}

/// A container spec.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DockerContainerSpec {
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
}

/// Whether a task state is one in which the task holds (or will hold) a container.
pub fn is_active(state: &str) -> bool {
    matches!(
        state,
        "new"
            | "allocated"
            | "pending"
            | "assigned"
            | "accepted"
            | "preparing"
            | "ready"
            | "starting"
            | "running"
    )
}

/// A Docker Swarm of lab hosts: host1 the manager, the others workers.
pub struct SwarmCluster {
    lab: Arc<Lab>,
    daemons: Arc<Daemons>,
    dockerd: PathBuf,
    /// Node ID of each host.
    ids: BTreeMap<usize, String>,
    version: String,
}

impl Drop for SwarmCluster {
    fn drop(&mut self) {
        cleanup::Teardown::teardown(&*self.daemons);
        // Then the lab goes: namespaces and directory.
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `filters` query of a list call: `{"KEY":["VALUE"]}`, encoded.
pub fn filter(key: &str, value: &str) -> String {
    let mut m = serde_json::Map::new();
    m.insert(key.to_owned(), json!([value]));
    encode(&Value::Object(m).to_string())
}

impl SwarmCluster {
    /// Starts a lab of `hosts` hosts with one dockerd each, `swarm init` on host1 and `swarm
    /// join` of the others as workers; waits until every node is ready.
    pub fn start(hosts: usize, timeout: Duration) -> Result<SwarmCluster, BenchError> {
        let dockerd = binary()?;
        let lab = Arc::new(Lab::start_without_daemons(LabOptions::hosts(hosts))?);
        cleanup::register_lab(&lab);
        let namespaces = (1..=hosts)
            .map(|i| {
                kill::netns_id(&lab.netns_path(i)).ok_or_else(|| {
                    BenchError::Cluster(format!("host{i}'s network namespace is not there"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let daemons = Arc::new(Daemons {
            children: Mutex::new((0..hosts).map(|_| None).collect()),
            namespaces,
        });
        let weak: std::sync::Weak<dyn cleanup::Teardown> = {
            let d: Arc<dyn cleanup::Teardown> = daemons.clone();
            Arc::downgrade(&d)
        };
        cleanup::register(weak);
        let mut c = SwarmCluster {
            lab,
            daemons,
            dockerd,
            ids: BTreeMap::new(),
            version: String::new(),
        };
        for i in 1..=hosts {
            c.spawn(i)?;
        }
        for i in 1..=hosts {
            c.wait_ping(i)?;
        }
        c.version = c
            .json::<Value>(1, Method::GET, "/version", None)?
            .get("Version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        c.form(timeout)?;
        Ok(c)
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("docker{i}"))
    }

    /// Host `i`'s API socket.
    pub fn socket_path(&self, i: usize) -> PathBuf {
        self.dir(i).join("docker.sock")
    }

    /// Host `i`'s daemon log.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir(i).join("dockerd.log")
    }

    /// The daemons' version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The lab.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// Host `i`'s node ID.
    pub fn node_id(&self, i: usize) -> &str {
        self.ids.get(&i).map_or("", String::as_str)
    }

    /// The host whose node has ID `node_id`.
    pub fn host_of(&self, node_id: &str) -> Option<usize> {
        self.ids
            .iter()
            .find_map(|(h, id)| (id == node_id).then_some(*h))
    }

    /// Starts host `i`'s dockerd (its data root kept from a previous run, if any).
    fn spawn(&self, i: usize) -> Result<(), BenchError> {
        let dir = self.dir(i);
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::io(format!("create {}", dir.display()), e))?;
        let log_path = self.log_path(i);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| BenchError::io(format!("open {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| BenchError::io(format!("duplicate {}", log_path.display()), e))?;
        let script = r#"set -e
hostname "$1"
[ -d /etc/docker ] || mkdir -p /etc/docker
mount -t tmpfs -o mode=0755 dockerconf /etc/docker
dockerd="$2"
shift 2
exec "$dockerd" "$@""#;
        let ns = self.lab.netns_path(i);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.display()))
            .args(["unshare", "--mount", "--uts", "--propagation", "private"])
            .args(["sh", "-c", script, "sh"])
            .arg(format!("host{i}"))
            .arg(&self.dockerd)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket_path(i).display()))
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--bridge=none",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::io("start nsenter … dockerd", e))?;
        cleanup::track_pid(child.id());
        tracing::info!(host = i, pid = child.id(), "dockerd started");
        let mut children = self.daemons.lock();
        if let Some(slot) = children.get_mut(i - 1) {
            *slot = Some(child);
        }
        Ok(())
    }

    /// Waits until host `i`'s daemon answers `/_ping`.
    fn wait_ping(&self, i: usize) -> Result<(), BenchError> {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = self.call(i, Method::GET, "/_ping", None) {
                return Ok(());
            }
            let exited = self
                .daemons
                .lock()
                .get_mut(i - 1)
                .and_then(Option::as_mut)
                .map(|c| c.try_wait().ok().flatten());
            if let Some(Some(status)) = exited {
                return Err(BenchError::Cluster(format!(
                    "dockerd of host{i} exited ({status}); its log {}:\n{}",
                    self.log_path(i).display(),
                    tail(&self.log_path(i))
                )));
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(BenchError::Timeout {
                    what: format!("dockerd of host{i} to answer"),
                    after: START_TIMEOUT,
                    details: format!(
                        "; its log {}:\n{}",
                        self.log_path(i).display(),
                        tail(&self.log_path(i))
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn form(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let hosts = self.lab.hosts();
        let addr = |i: usize| format!("{}:{CONTROL_PORT}", self.lab.ip(i));
        let _: Value = self.json(
            1,
            Method::POST,
            "/swarm/init",
            Some(json!({ "ListenAddr": format!("0.0.0.0:{CONTROL_PORT}"), "AdvertiseAddr": addr(1) })),
        )?;
        let swarm: Value = self.json(1, Method::GET, "/swarm", None)?;
        let token = swarm
            .pointer("/JoinTokens/Worker")
            .and_then(Value::as_str)
            .ok_or_else(|| BenchError::Cluster(format!("no worker join token in {swarm}")))?
            .to_owned();
        for i in 2..=hosts {
            self.expect_ok(
                i,
                Method::POST,
                "/swarm/join",
                Some(json!({
                    "ListenAddr": format!("0.0.0.0:{CONTROL_PORT}"),
                    "AdvertiseAddr": addr(i),
                    "RemoteAddrs": [addr(1)],
                    "JoinToken": token,
                })),
            )?;
        }
        let nodes = self.wait_ready(timeout)?;
        for n in nodes {
            let hostname = n
                .pointer("/Description/Hostname")
                .and_then(Value::as_str)
                .unwrap_or("");
            let id = n.get("ID").and_then(Value::as_str).unwrap_or("");
            let host = hostname
                .strip_prefix("host")
                .and_then(|h| h.parse::<usize>().ok())
                .ok_or_else(|| {
                    BenchError::Cluster(format!("node {id} has hostname {hostname:?}, not hostN"))
                })?;
            self.ids.insert(host, id.to_owned());
        }
        Ok(())
    }

    /// Waits until the manager lists every host's node ready; returns the nodes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Vec<Value>, BenchError> {
        let hosts = self.lab.hosts();
        let start = Instant::now();
        loop {
            if let Ok(Value::Array(nodes)) = self.json::<Value>(1, Method::GET, "/nodes", None) {
                let ready = nodes
                    .iter()
                    .filter(|n| n.pointer("/Status/State").and_then(Value::as_str) == Some("ready"))
                    .count();
                if nodes.len() == hosts && ready == hosts {
                    return Ok(nodes);
                }
            }
            if start.elapsed() > timeout {
                return Err(BenchError::timeout(
                    format!("{hosts} Docker Swarm nodes ready"),
                    timeout,
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One request to host `i`'s daemon (path below [`API`] unless it is `/_ping`), on a
    /// fresh connection: its status and body.
    pub fn call(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), BenchError> {
        let ep = Endpoint::Unix(self.socket_path(i));
        let full = if path == "/_ping" {
            path.to_owned()
        } else {
            format!("{API}{path}")
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("build a tokio runtime", e))?;
        rt.block_on(async {
            let exchange = async {
                let mut conn = Conn::connect(&ep, REQUEST_TIMEOUT).await?;
                conn.call(method, &full, body.unwrap_or_default()).await
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(r) => r,
                Err(_) => Err(BenchError::timeout(
                    format!("{full} on {ep}"),
                    REQUEST_TIMEOUT,
                )),
            }
        })
    }

    /// A request with a JSON body (or none) that must answer 2xx with JSON.
    pub fn json<T: DeserializeOwned>(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, BenchError> {
        let (status, answer) =
            self.call(i, method, path, body.map(|b| Bytes::from(b.to_string())))?;
        check(i, path, status, &answer)?;
        serde_json::from_slice(&answer).map_err(|source| BenchError::Decode {
            target: format!("dockerd of host{i}: {path}"),
            source,
            body: shorten(&answer),
        })
    }

    /// A request that must answer 2xx (its body, if any, is ignored).
    pub fn expect_ok(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), BenchError> {
        let (status, answer) =
            self.call(i, method, path, body.map(|b| Bytes::from(b.to_string())))?;
        check(i, path, status, &answer)
    }

    /// Loads an image tarball (`docker save` format) on every host.
    pub fn load_image(&self, tar: &[u8], reference: &str) -> Result<(), BenchError> {
        for i in 1..=self.lab.hosts() {
            let (status, answer) = self.call(
                i,
                Method::POST,
                "/images/load?quiet=1",
                Some(Bytes::copy_from_slice(tar)),
            )?;
            check(i, "/images/load", status, &answer)?;
            let images: Value = self.json(i, Method::GET, "/images/json", None)?;
            let found = images.as_array().into_iter().flatten().any(|im| {
                im.get("RepoTags")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|t| t.as_str() == Some(reference))
            });
            if !found {
                return Err(BenchError::Cluster(format!(
                    "dockerd of host{i} loaded the image but lists no {reference}: {}",
                    shorten(&answer)
                )));
            }
        }
        Ok(())
    }

    /// SIGKILLs host `i` as a whole: dockerd, its containerd, the shims and the containers;
    /// returns the instant just before the first signal.
    pub fn kill_host(&self, i: usize) -> Instant {
        let t = Instant::now();
        let killed = self.daemons.kill(i);
        tracing::info!(host = i, killed, "docker host killed");
        t
    }

    /// Starts host `i`'s dockerd again (it rejoins with its state) and waits for its ping.
    pub fn restart_host(&self, i: usize) -> Result<(), BenchError> {
        self.spawn(i)?;
        self.wait_ping(i)
    }

    /// Whether the manager stores host `i`'s node as down.
    pub fn node_down(&self, i: usize) -> bool {
        self.json::<Value>(1, Method::GET, &format!("/nodes/{}", self.node_id(i)), None)
            .ok()
            .and_then(|n| {
                n.pointer("/Status/State")
                    .and_then(Value::as_str)
                    .map(|s| s == "down")
            })
            .unwrap_or(false)
    }
}

fn check(i: usize, path: &str, status: u16, answer: &[u8]) -> Result<(), BenchError> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(BenchError::Status {
            target: format!("dockerd of host{i}: {path}"),
            status,
            body: shorten(answer),
        })
    }
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Turns an OCI image layout tarball (as `scripts/build-test-image.sh` writes) into one
/// Docker 20.10's `docker load` reads: the same blobs, plus the `manifest.json` of the
/// `docker save` format naming the config, the layers and the tag.
pub fn docker_save_tar(oci: &[u8], reference: &str) -> Result<Vec<u8>, BenchError> {
    let bad = |what: String| BenchError::Cluster(format!("the image tarball: {what}"));
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(oci);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("unreadable entry: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| bad(format!("bad path: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("cannot read {name}: {e}")))?;
        files.insert(name, data);
    }
    let blob = |digest: &str| -> Result<String, BenchError> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| bad(format!("digest {digest:?} is not sha256")))?;
        let path = format!("blobs/sha256/{hex}");
        if files.contains_key(&path) {
            Ok(path)
        } else {
            Err(bad(format!("blob {path} is missing")))
        }
    };
    let json_of = |path: &str| -> Result<Value, BenchError> {
        let data = files
            .get(path)
            .ok_or_else(|| bad(format!("{path} is missing")))?;
        serde_json::from_slice(data).map_err(|e| bad(format!("{path}: {e}")))
    };
    let index = json_of("index.json")?;
    let manifest_digest = index
        .pointer("/manifests/0/digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("index.json names no manifest".to_owned()))?;
    let manifest = json_of(&blob(manifest_digest)?)?;
    let config = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the manifest names no config".to_owned()))?;
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|l| {
            l.get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a layer without a digest".to_owned()))
                .and_then(&blob)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let save = json!([{ "Config": blob(config)?, "RepoTags": [reference], "Layers": layers }]);
    files.insert("manifest.json".to_owned(), save.to_string().into_bytes());

    let mut out = tar::Builder::new(Vec::new());
    for (name, data) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        out.append_data(&mut h, name, data.as_slice())
            .map_err(|e| BenchError::io(format!("write {name} into the image tarball"), e))?;
    }
    out.into_inner()
        .map_err(|e| BenchError::io("finish the image tarball", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_encoded_json() {
        assert_eq!(
            filter("service", "ab1"),
            "%7B%22service%22%3A%5B%22ab1%22%5D%7D"
        );
    }

    #[test]
    fn active_states() {
        assert!(is_active("running"));
        assert!(is_active("pending"));
        assert!(!is_active("shutdown"));
        assert!(!is_active("failed"));
    }

    #[test]
    fn an_oci_layout_gets_a_docker_manifest() {
        let digest = |d: &[u8]| {
            use std::fmt::Write;
            let mut h = String::new();
            // Not a real digest: names only need to match.
            for b in d.iter().take(8) {
                let _ = write!(h, "{b:02x}");
            }
            h
        };
        let layer = b"layer-bytes".to_vec();
        let config = b"{\"config\":{}}".to_vec();
        let (l, c) = (digest(&layer), digest(&config));
        let manifest = json!({"config": {"digest": format!("sha256:{c}")}, "layers": [{"digest": format!("sha256:{l}")}]})
            .to_string()
            .into_bytes();
        let m = "feedface".to_owned();
        let index = json!({"manifests": [{"digest": format!("sha256:{m}")}]})
            .to_string()
            .into_bytes();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("index.json".to_owned(), index),
            (format!("blobs/sha256/{m}"), manifest),
            (format!("blobs/sha256/{l}"), layer),
            (format!("blobs/sha256/{c}"), config),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        let oci = b.into_inner().unwrap();
        let out = docker_save_tar(&oci, "meshd-test:latest").unwrap();
        let mut a = tar::Archive::new(out.as_slice());
        let mut found = None;
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_str() == Some("manifest.json") {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                found = Some(s);
            }
        }
        let m: Value = serde_json::from_str(&found.unwrap()).unwrap();
        assert_eq!(m[0]["Config"], format!("blobs/sha256/{c}"));
        assert_eq!(m[0]["Layers"][0], format!("blobs/sha256/{l}"));
        assert_eq!(m[0]["RepoTags"][0], "meshd-test:latest");
        let e = docker_save_tar(b"not a tar", "x").unwrap_err().to_string();
        assert!(e.contains("image tarball"), "{e}");
    }
}
