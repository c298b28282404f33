//! The reference: an etcd cluster with one member per lab host, each in the host's network
//! namespace, data directory in the lab directory, driven through etcd's JSON gateway.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::Method;
use mesh_testkit::{Lab, LabOptions};
use serde::Deserialize;

use crate::http::{Endpoint, request_json};
use crate::{BenchError, cleanup, netns};

/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;
/// Heartbeat interval passed to etcd, ms (etcd's default).
pub const HEARTBEAT_MS: u64 = 100;
/// Election timeout passed to etcd, ms (etcd's default).
pub const ELECTION_MS: u64 = 1000;
/// Where Debian's `etcd-server` puts the binary.
const DEFAULT_BIN: &str = "/usr/bin/etcd";
/// Longest a probe request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many lines of a member's log an error shows.
const LOG_TAIL_LINES: usize = 15;

/// The etcd binary: `$ETCD_BIN`, else `/usr/bin/etcd`.
pub fn binary() -> Result<PathBuf, BenchError> {
    let path = std::env::var_os("ETCD_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::MissingProgram {
            program: "etcd",
            path,
            fix: "run `apt-get install etcd-server` (Debian 12 ships etcd 3.4), or set ETCD_BIN",
        })
    }
}

/// `etcd --version`'s version number, e.g. `3.4.23`.
pub fn version(bin: &Path) -> Result<String, BenchError> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| BenchError::io(format!("run {} --version", bin.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_version(&text).unwrap_or_else(|| text.lines().next().unwrap_or("").to_owned()))
}

fn parse_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_owned())
}

/// What `/v3/maintenance/status` answers (numbers come as strings; zeros are left out).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Who answered.
    pub header: Header,
    /// Member ID of the leader this member knows of.
    pub leader: Option<String>,
    /// Server version.
    pub version: String,
}

/// Response header of etcd's API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Header {
    /// Member ID of the member that answered.
    pub member_id: String,
}

struct Member {
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster. Dropping it kills every member by PID, removes their data
/// directories and tears the lab down.
pub struct EtcdCluster {
    lab: Arc<Lab>,
    bin: PathBuf,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Builds a lab of `members` hosts without meshd, starts one etcd member per host, and
    /// waits until they agree on a leader and accept writes.
    pub fn start(members: usize, timeout: Duration) -> Result<Self, BenchError> {
        let bin = binary()?;
        let lab = Arc::new(Lab::start_without_daemons(LabOptions::hosts(members))?);
        cleanup::register_lab(&lab);
        let members = (1..=members)
            .map(|i| {
                let host = lab.dir().join(format!("host{i}"));
                Member {
                    dir: host.join("etcd"),
                    log: host.join("etcd.log"),
                    child: None,
                }
            })
            .collect();
        let mut c = EtcdCluster { lab, bin, members };
        for i in 1..=c.members.len() {
            c.spawn(i)?;
        }
        c.wait_healthy(timeout)?;
        Ok(c)
    }

    fn member(&self, i: usize) -> Result<&Member, BenchError> {
        self.members
            .get(i.wrapping_sub(1))
            .ok_or_else(|| BenchError::Cluster(format!("there is no etcd member {i}")))
    }

    fn args(&self, i: usize) -> Result<Vec<String>, BenchError> {
        let m = self.member(i)?;
        let ip = self.lab.ip(i);
        let cluster = (1..=self.members.len())
            .map(|j| format!("m{j}=http://{}:{PEER_PORT}", self.lab.ip(j)))
            .collect::<Vec<_>>()
            .join(",");
        Ok(vec![
            format!("--name=m{i}"),
            format!("--data-dir={}", m.dir.display()),
            format!("--listen-client-urls=http://{ip}:{CLIENT_PORT}"),
            format!("--advertise-client-urls=http://{ip}:{CLIENT_PORT}"),
            format!("--listen-peer-urls=http://{ip}:{PEER_PORT}"),
            format!("--initial-advertise-peer-urls=http://{ip}:{PEER_PORT}"),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-state=new".to_owned(),
            "--initial-cluster-token=mesh-bench".to_owned(),
            format!("--heartbeat-interval={HEARTBEAT_MS}"),
            format!("--election-timeout={ELECTION_MS}"),
            "--logger=zap".to_owned(),
            "--log-outputs=stderr".to_owned(),
        ])
    }

    /// Starts member `i` in host `i`'s namespace (`nsenter --net`, which execs etcd, so the
    /// child's PID is etcd's).
    fn spawn(&mut self, i: usize) -> Result<(), BenchError> {
        let args = self.args(i)?;
        let ns = self.lab.netns_path(i);
        let m = self.member(i)?;
        if m.child.is_some() {
            return Err(BenchError::Cluster(format!("etcd member {i} is running")));
        }
        fs::create_dir_all(&m.dir)
            .map_err(|e| BenchError::io(format!("create {}", m.dir.display()), e))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| BenchError::io(format!("open {}", m.log.display()), e))?;
        let _ = writeln!(
            log,
            "--- mesh-bench: {} {}",
            self.bin.display(),
            args.join(" ")
        );
        let log_err = log
            .try_clone()
            .map_err(|e| BenchError::io(format!("duplicate {}", m.log.display()), e))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .arg("--")
            .arg(&self.bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a terminal's Ctrl-C reaches the bench, which cleans up.
            .process_group(0)
            .spawn()
            .map_err(|e| BenchError::io(format!("start etcd member {i} with nsenter"), e))?;
        cleanup::track_pid(child.id());
        tracing::info!(member = i, pid = child.id(), "etcd started");
        if let Some(m) = self.members.get_mut(i - 1) {
            m.child = Some(child);
        }
        Ok(())
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> Endpoint {
        Endpoint::Tcp(SocketAddr::from((self.lab.ip(i), CLIENT_PORT)))
    }

    /// Host `i`'s network namespace, where a client of member `i` runs.
    pub fn netns(&self, i: usize) -> PathBuf {
        self.lab.netns_path(i)
    }

    /// The lab.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Whether member `i` runs (reaps it if it exited).
    pub fn running(&mut self, i: usize) -> bool {
        let Some(m) = self.members.get_mut(i.wrapping_sub(1)) else {
            return false;
        };
        match m.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                if let Some(c) = m.child.take() {
                    cleanup::forget_pid(c.id());
                }
                false
            }
            None => false,
        }
    }

    /// `POST /v3/maintenance/status` on member `i`, from its own namespace.
    pub fn status(&self, i: usize) -> Result<Status, BenchError> {
        let ep = self.endpoint(i);
        netns::run("etcd-api", Some(self.netns(i)), move || async move {
            request_json(
                &ep,
                Method::POST,
                "/v3/maintenance/status",
                Some(&serde_json::json!({})),
                PROBE_TIMEOUT,
            )
            .await
        })
    }

    /// One put through member `i`.
    pub fn put(&self, i: usize, key: &str, value: &str) -> Result<(), BenchError> {
        let ep = self.endpoint(i);
        let body = serde_json::json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) });
        netns::run("etcd-api", Some(self.netns(i)), move || async move {
            let _: serde_json::Value =
                request_json(&ep, Method::POST, "/v3/kv/put", Some(&body), PROBE_TIMEOUT).await?;
            Ok(())
        })
    }

    /// The leader as every running member sees it, if they agree and it runs.
    fn agreed_leader(&mut self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 1..=self.members.len() {
            if !self.running(i) {
                return None;
            }
            let s = self.status(i).ok()?;
            let l = s.leader.filter(|l| !l.is_empty() && l != "0")?;
            if leader.get_or_insert_with(|| l.clone()) != &l {
                return None;
            }
            ids.push(s.header.member_id);
        }
        let leader = leader?;
        ids.iter().position(|id| *id == leader).map(|p| p + 1)
    }

    /// Waits until every member runs, all agree on one leader, and a put through each
    /// member succeeds. Returns the leader.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<usize, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.agreed_leader()
                && (1..=self.members.len()).all(|i| self.put(i, "bench/health", "ok").is_ok())
            {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Timeout {
                    what: "a healthy etcd cluster".to_owned(),
                    after: timeout,
                    details: format!("\n{}", self.log_tails()),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A member other than `leader` (the lowest-numbered).
    pub fn follower(&self, leader: usize) -> usize {
        (1..=self.members.len())
            .find(|m| *m != leader)
            .unwrap_or(leader)
    }

    /// SIGKILLs member `i` and reaps it; returns the instant just before the signal.
    pub fn kill(&mut self, i: usize) -> Result<Instant, BenchError> {
        let m = self
            .members
            .get_mut(i.wrapping_sub(1))
            .ok_or_else(|| BenchError::Cluster(format!("there is no etcd member {i}")))?;
        let mut child = m
            .child
            .take()
            .ok_or_else(|| BenchError::Cluster(format!("etcd member {i} is not running")))?;
        let t = Instant::now();
        let _ = child.kill();
        let _ = child.wait();
        cleanup::forget_pid(child.id());
        tracing::info!(member = i, "etcd killed");
        Ok(t)
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> Result<(), BenchError> {
        self.spawn(i)
    }

    /// The last lines of every member's log.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let text = fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            out.push_str(&format!(
                "--- etcd member {} log ({}) ---\n{tail}\n",
                i + 1,
                m.log.display()
            ));
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
                cleanup::forget_pid(c.id());
            }
            if let Err(e) = fs::remove_dir_all(&m.dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %m.dir.display(), error = %e, "could not remove etcd data");
            }
        }
        tracing::info!("etcd cluster stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version() {
        let out = "etcd Version: 3.4.23\nGit SHA: Not provided\nGo Version: go1.19.8\n";
        assert_eq!(parse_version(out).as_deref(), Some("3.4.23"));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn status_decodes_gateway_json() {
        let s: Status = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","member_id":"42","revision":"7","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"42","raftIndex":"9","raftTerm":"2"}"#,
        )
        .unwrap();
        assert_eq!(s.header.member_id, "42");
        assert_eq!(s.leader.as_deref(), Some("42"));
        let none: Status = serde_json::from_str(r#"{"header":{"member_id":"1"}}"#).unwrap();
        assert_eq!(none.leader, None);
    }
}
