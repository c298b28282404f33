//! The routing-mesh benchmark's labs and the references it runs beside meshd.
//!
//! A [`MeshLab`] is a lab of 1 or 3 hosts plus the client namespace (`192.0.2.200`), every
//! meshd started with `--dataplane ebpf` or `--dataplane userspace`, formed into a cluster
//! through the `swarm` CLI, with two services of real tasks of the test image:
//!
//! - `web`: 3 replicas of nginx (the host's binary, bind-mounted with `/usr`, run through the
//!   host's loader; `worker_processes 1`, `access_log off`, `return 200` with the task's
//!   hostname), published on 8080 through the routing mesh;
//! - `iperf`: 1 replica of `iperf3 -s`, published on 5201.
//!
//! The references reach the same tasks over the same kind of path as the mesh: into host1's
//! namespace, then into host1's ingress sandbox (the namespace the mesh's own backend
//! connections and packets go through), then over the task's ingress interface:
//!
//! - [`Haproxy`] runs in host1's namespace, listens on host1's address, and opens its
//!   backend connections inside the ingress sandbox (HAProxy's `namespace` server option),
//!   as the userspace relay does;
//! - the direct path ([`MeshLab::open_direct`]) forwards packets in the kernel like the eBPF
//!   path does, without balancing: the client reaches a task's ingress address through
//!   host1 and a veth pair of the benchmark's between host1 and the sandbox, from a second
//!   client address (`192.0.2.201`) kept apart by policy routing, so that the mesh's own
//!   traffic (whose replies the eBPF path expects back on its mesh link) is never diverted.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mesh_api::{Task, TaskState};
use mesh_bench::cleanup;
use mesh_testkit::{Lab, LabOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::mesh_error::{MeshBenchError, Result, tail};
use crate::mesh_load::{TcpLoad, run_ok};

/// The port `web` is published on.
pub const WEB_PORT: u16 = 8080;
/// The port `iperf` is published on (and its tasks listen on).
pub const IPERF_PORT: u16 = 5201;
/// The first HAProxy's port for `web` (the next ones count up).
pub const HAPROXY_WEB_PORT: u16 = 8081;
/// The first HAProxy's port for `iperf` (the next ones count up).
pub const HAPROXY_IPERF_PORT: u16 = 5202;
/// Most HAProxy processes side by side (their ports must stay clear of the others').
pub const MAX_HAPROXIES: usize = 8;

/// The ports one HAProxy listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaproxyPorts {
    /// For `web`.
    pub web: u16,
    /// For `iperf`.
    pub iperf: u16,
}

impl HaproxyPorts {
    /// The ports of the `i`-th HAProxy (0-based, below [`MAX_HAPROXIES`]).
    pub fn nth(i: usize) -> HaproxyPorts {
        let i = u16::try_from(i.min(MAX_HAPROXIES - 1)).unwrap_or(0);
        HaproxyPorts {
            web: HAPROXY_WEB_PORT + i,
            iperf: HAPROXY_IPERF_PORT + i,
        }
    }
}
/// The client's second address, from which the direct path is taken.
pub const DIRECT_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 201);
/// Host side of the benchmark's veth pair into the ingress sandbox (RFC 2544 range).
const DIRECT_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Sandbox side of that pair.
const DIRECT_SANDBOX: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Name of that pair's interfaces (one in each namespace).
const DIRECT_LINK: &str = "mbdirect0";
/// Routing table (and rule preference) of the direct path.
const DIRECT_TABLE: &str = "201";
/// The loader and libraries of the host, as the tasks see them.
const LOADER: &str = "/host/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
/// Library directory of the host, as the tasks see it.
const LIBS: &str = "/host/usr/lib/x86_64-linux-gnu";
/// Longest a setup step (tasks running, a path answering) may take.
const CONVERGE: Duration = Duration::from_secs(90);
/// Longest a setup command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// meshd's data path for the routing mesh (`meshd --dataplane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dataplane {
    /// TC programs on the host's interfaces, direct server return.
    Ebpf,
    /// The userspace relay (splice).
    Userspace,
}

impl Dataplane {
    /// The flag's value: `ebpf` or `userspace`.
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Ebpf => "ebpf",
            Dataplane::Userspace => "userspace",
        }
    }
}

/// nginx's configuration for the `web` tasks (read from `/conf/nginx.conf`, with `/tmp` as
/// `scratch`): one worker, no access log, `return 200` with the hostname, on port 80.
pub fn nginx_conf(scratch: &str) -> String {
    format!(
        "# One worker, no access log, a constant answer: the task's hostname.
daemon off;
master_process on;
worker_processes 1;
user nobody nogroup;
pid {scratch}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    client_body_temp_path {scratch}/nginx-body;
    proxy_temp_path {scratch}/nginx-proxy;
    fastcgi_temp_path {scratch}/nginx-fastcgi;
    uwsgi_temp_path {scratch}/nginx-uwsgi;
    scgi_temp_path {scratch}/nginx-scgi;
    server {{
        listen 80 backlog=4096;
        location / {{
            return 200 \"$hostname\\n\";
        }}
    }}
}}
"
    )
}

/// HAProxy's configuration: TCP mode, round-robin, `threads` threads, listening on
/// `listen` at `ports`; every backend connection opened inside the namespace named `netns`
/// (`/var/run/netns/NAME`).
pub fn haproxy_conf(
    threads: u32,
    listen: Ipv4Addr,
    ports: HaproxyPorts,
    netns: &str,
    web: &[SocketAddrV4],
    iperf: SocketAddrV4,
) -> String {
    let (web_port, iperf_port) = (ports.web, ports.iperf);
    let mut c = format!(
        "global
    nbthread {threads}
    maxconn 4096
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    bind {listen}:{web_port}
    default_backend web
backend web
    balance roundrobin
"
    );
    for (i, b) in web.iter().enumerate() {
        let _ = writeln!(c, "    server web{} {b} namespace {netns}", i + 1);
    }
    let _ = write!(
        c,
        "frontend iperf
    bind {listen}:{iperf_port}
    default_backend iperf
backend iperf
    server iperf1 {iperf} namespace {netns}
"
    );
    c
}

/// One task of a service: its ID and its address on the ingress network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAddr {
    /// Task ID; its first 12 characters are the container's hostname.
    pub id: String,
    /// Host index (1-based) of the node running it.
    pub host: usize,
    /// Address on the ingress network.
    pub ip: Ipv4Addr,
}

impl TaskAddr {
    /// The hostname nginx answers with.
    pub fn hostname(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// A lab with meshd on every host, the cluster formed and the two services running.
pub struct MeshLab {
    lab: Arc<Lab>,
    sandbox: String,
    web: Vec<TaskAddr>,
    iperf: TaskAddr,
    direct: bool,
}

impl MeshLab {
    /// Starts a lab of `hosts` hosts (1 or 3) with the client namespace, every meshd on
    /// `dataplane`; forms the cluster (init on host1, the others joined as workers); loads
    /// `image` on every host; creates `web` (3 replicas, spread one per host on 3 hosts) with
    /// nginx configured from `conf_dir/nginx.conf`, and `iperf` (on host2 when there are 3
    /// hosts, so that the client's traffic to host1 crosses to another node); and waits until
    /// host1's published ports answer from every task.
    pub fn start(
        hosts: usize,
        dataplane: Dataplane,
        image: &Path,
        conf_dir: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<MeshLab> {
        if hosts != 1 && hosts != 3 {
            return Err(MeshBenchError::InvalidOption {
                field: "hosts",
                reason: format!("a mesh lab has 1 or 3 hosts, not {hosts}"),
            });
        }
        progress(&format!(
            "starting a lab of {hosts} host(s), meshd --dataplane {}",
            dataplane.name()
        ));
        let lab = Arc::new(Lab::start(LabOptions {
            hosts,
            meshd_args: vec!["--dataplane".to_owned(), dataplane.name().to_owned()],
            client: true,
            dir: None,
        })?);
        cleanup::register_lab(&lab);
        swarm(
            &lab,
            1,
            &["init", "--advertise-addr", &lab.ip(1).to_string()],
        )?;
        if hosts > 1 {
            let token = swarm(&lab, 1, &["join-token", "-q", "worker"])?;
            for i in 2..=hosts {
                swarm(
                    &lab,
                    i,
                    &[
                        "join",
                        "--token",
                        token.trim(),
                        &lab.control_addr(1).to_string(),
                    ],
                )?;
            }
        }
        wait_nodes_ready(&lab, hosts)?;
        let info = swarm(&lab, 1, &["info", "--format", "json"])?;
        let info: mesh_api::api::Info = serde_json::from_str(&info).map_err(|e| {
            MeshBenchError::Cluster(format!(
                "`swarm info --format json` printed something else ({e}): {}",
                tail(&info, 300)
            ))
        })?;
        let running = info.routing_mesh.as_ref().map(|m| m.dataplane.clone());
        if running.as_deref() != Some(dataplane.name()) {
            return Err(MeshBenchError::Cluster(format!(
                "host1's routing mesh runs on {running:?}, not {}; see {}",
                dataplane.name(),
                lab.log_path(1).display()
            )));
        }
        let image_s = image.display().to_string();
        for i in 1..=hosts {
            swarm(&lab, i, &["image", "load", "-i", &image_s])?;
        }
        progress("creating the services (nginx × 3, iperf3 × 1)");
        let usr = "type=bind,source=/usr,target=/host/usr,readonly".to_owned();
        let conf = format!(
            "type=bind,source={},target=/conf,readonly",
            conf_dir.display()
        );
        let web_port = format!("{WEB_PORT}:80");
        let mut web_args: Vec<&str> = vec![
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "-p",
            &web_port,
            "--mount",
            &usr,
            "--mount",
            &conf,
        ];
        if hosts > 1 {
            web_args.extend(["--replicas-max-per-node", "1"]);
        }
        web_args.extend([
            "meshd-test:latest",
            LOADER,
            "--library-path",
            LIBS,
            "/host/usr/sbin/nginx",
            "-e",
            "stderr",
            "-p",
            "/tmp/",
            "-c",
            "/conf/nginx.conf",
        ]);
        swarm(&lab, 1, &web_args)?;
        let iperf_port = format!("{IPERF_PORT}:{IPERF_PORT}");
        let iperf_listen = IPERF_PORT.to_string();
        let mut iperf_args: Vec<&str> = vec![
            "service",
            "create",
            "--name",
            "iperf",
            "--replicas",
            "1",
            "-p",
            &iperf_port,
            "--mount",
            &usr,
        ];
        if hosts > 1 {
            iperf_args.extend(["--constraint", "node.hostname==host2"]);
        }
        iperf_args.extend([
            "meshd-test:latest",
            LOADER,
            "--library-path",
            LIBS,
            "/host/usr/bin/iperf3",
            "-s",
            "-p",
            &iperf_listen,
        ]);
        swarm(&lab, 1, &iperf_args)?;

        let ingress = ingress_network(&lab)?;
        let web = wait_tasks(&lab, "web", 3, &ingress)?;
        let iperf = wait_tasks(&lab, "iperf", 1, &ingress)?
            .into_iter()
            .next()
            .ok_or_else(|| MeshBenchError::Cluster("the iperf service has no task".into()))?;
        let short: String = ingress.chars().take(12).collect();
        let sandbox = format!("{}-{short}", lab.sandbox_prefix(1));
        if !Path::new("/var/run/netns").join(&sandbox).exists() {
            return Err(MeshBenchError::Cluster(format!(
                "host1's ingress sandbox {sandbox} is not in /var/run/netns"
            )));
        }
        let me = MeshLab {
            lab,
            sandbox,
            web,
            iperf,
            direct: false,
        };
        progress("waiting until host1's published ports answer from every task");
        let url = format!("http://{}:{WEB_PORT}/", me.entry());
        me.wait_answers(&url, &me.hostnames(), "the published port")?;
        me.wait_iperf(&me.entry().to_string(), IPERF_PORT)?;
        Ok(me)
    }

    /// The lab.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The address every load enters by: host1's.
    pub fn entry(&self) -> Ipv4Addr {
        self.lab.ip(1)
    }

    /// The client namespace's path.
    pub fn client_netns(&self) -> PathBuf {
        Path::new("/var/run/netns").join(self.lab.client_netns().unwrap_or_default())
    }

    /// Name of host1's ingress sandbox namespace.
    pub fn sandbox(&self) -> &str {
        &self.sandbox
    }

    /// The `web` tasks.
    pub fn web(&self) -> &[TaskAddr] {
        &self.web
    }

    /// The `iperf` task.
    pub fn iperf(&self) -> &TaskAddr {
        &self.iperf
    }

    /// The `web` tasks' hostnames.
    pub fn hostnames(&self) -> BTreeSet<String> {
        self.web.iter().map(|t| t.hostname().to_owned()).collect()
    }

    /// Threads of host1's meshd named `mesh-ingress`: the userspace relay's workers.
    pub fn relay_workers(&self) -> Option<usize> {
        let pid = self.lab.pid(1)?;
        let dir = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        Some(
            dir.flatten()
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "mesh-ingress")
                })
                .count(),
        )
    }

    /// Makes the direct path: the client's second address [`DIRECT_CLIENT`], a /32 route
    /// from it to each task through host1; a veth pair between host1 and its ingress
    /// sandbox; policy routes sending that address's packets (and only them) over the pair
    /// both ways. Only namespaces of this lab are touched; they go with the lab.
    pub fn open_direct(&mut self) -> Result<()> {
        if self.direct {
            return Ok(());
        }
        let client = self.lab.client_netns().unwrap_or_default().to_owned();
        let host = self.lab.netns(1).to_owned();
        let sb = self.sandbox.clone();
        let l = DIRECT_LINK;
        let t = DIRECT_TABLE;
        let mut tasks: Vec<Ipv4Addr> = self.web.iter().map(|w| w.ip).collect();
        tasks.push(self.iperf.ip);
        let host_ns = Path::new("/var/run/netns").join(&host);
        let sb_ns = Path::new("/var/run/netns").join(&sb);
        ip(&[
            "-n", &host, "link", "add", l, "type", "veth", "peer", "name", l, "netns", &sb,
        ])?;
        ip(&[
            "-n",
            &host,
            "addr",
            "add",
            &format!("{DIRECT_HOST}/30"),
            "dev",
            l,
        ])?;
        ip(&[
            "-n",
            &sb,
            "addr",
            "add",
            &format!("{DIRECT_SANDBOX}/30"),
            "dev",
            l,
        ])?;
        ip(&["-n", &host, "link", "set", l, "up"])?;
        ip(&["-n", &sb, "link", "set", l, "up"])?;
        // IPv4 forwards by the input interface's setting; no reverse-path filter on the pair.
        let forwarding = format!("net.ipv4.conf.{l}.forwarding");
        let rp_filter = format!("net.ipv4.conf.{l}.rp_filter");
        sysctls(
            &host_ns,
            &[
                ("net.ipv4.conf.eth0.forwarding", "1"),
                (forwarding.as_str(), "1"),
                (rp_filter.as_str(), "0"),
            ],
        )?;
        sysctls(
            &sb_ns,
            &[(forwarding.as_str(), "1"), (rp_filter.as_str(), "0")],
        )?;
        ip(&[
            "-n",
            &client,
            "addr",
            "add",
            &format!("{DIRECT_CLIENT}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            &host,
            "rule",
            "add",
            "from",
            &DIRECT_CLIENT.to_string(),
            "lookup",
            t,
            "pref",
            t,
        ])?;
        ip(&[
            "-n",
            &sb,
            "rule",
            "add",
            "to",
            &DIRECT_CLIENT.to_string(),
            "lookup",
            t,
            "pref",
            t,
        ])?;
        ip(&[
            "-n",
            &sb,
            "route",
            "add",
            "default",
            "via",
            &DIRECT_HOST.to_string(),
            "dev",
            l,
            "table",
            t,
        ])?;
        for task in &tasks {
            let dst = format!("{task}/32");
            ip(&[
                "-n",
                &client,
                "route",
                "add",
                &dst,
                "via",
                &self.entry().to_string(),
                "src",
                &DIRECT_CLIENT.to_string(),
            ])?;
            ip(&[
                "-n",
                &host,
                "route",
                "add",
                &dst,
                "via",
                &DIRECT_SANDBOX.to_string(),
                "dev",
                l,
                "table",
                t,
            ])?;
        }
        self.direct = true;
        let first = &self.web[0];
        let one: BTreeSet<String> = [first.hostname().to_owned()].into();
        self.wait_answers(&format!("http://{}:80/", first.ip), &one, "the direct path")?;
        self.wait_iperf(&self.iperf.ip.to_string(), IPERF_PORT)?;
        Ok(())
    }

    /// Fetches `url` from the client until the answers seen cover `names` exactly.
    pub fn wait_answers(&self, url: &str, names: &BTreeSet<String>, what: &str) -> Result<()> {
        let client = self.client_netns();
        let deadline = Instant::now() + CONVERGE;
        let mut last = String::new();
        loop {
            let mut seen = BTreeSet::new();
            for _ in 0..names.len() * 2 {
                match run_ok(
                    Some(&client),
                    "curl",
                    &[
                        "-s".into(),
                        "-f".into(),
                        "-m".into(),
                        "3".into(),
                        url.to_owned(),
                    ],
                    Duration::from_secs(10),
                ) {
                    Ok(body) => {
                        seen.insert(body.trim().to_owned());
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if seen == *names {
                return Ok(());
            }
            if !seen.is_empty() {
                last = format!("answers from {seen:?}, expected {names:?}");
            }
            if Instant::now() >= deadline {
                return Err(MeshBenchError::Timeout {
                    what: format!("{what} ({url}) to answer from every task"),
                    after: CONVERGE,
                    details: format!("; last: {last}\n{}", self.lab.log_tails()),
                });
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs 1-second `iperf3` clients from the client to `host:port` until one succeeds.
    pub fn wait_iperf(&self, host: &str, port: u16) -> Result<()> {
        let load = TcpLoad {
            netns: self.client_netns(),
            host: host.to_owned(),
            port,
            duration: Duration::from_secs(1),
        };
        let deadline = Instant::now() + CONVERGE;
        loop {
            match load.run() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(MeshBenchError::Timeout {
                        what: format!("iperf3 through {host}:{port}"),
                        after: CONVERGE,
                        details: format!("; last: {e}"),
                    });
                }
                Err(e) => tracing::debug!(error = %e, "iperf3 not through yet"),
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Tears the lab down now.
    pub fn teardown(&self) {
        self.lab.teardown();
    }
}

impl Drop for MeshLab {
    fn drop(&mut self) {
        self.lab.teardown();
    }
}

/// `swarm ARGS` against host `i`; its standard output, or an error with its output.
fn swarm(lab: &Lab, i: usize, args: &[&str]) -> Result<String> {
    let out = lab.swarm(i, args);
    if out.status == 0 {
        return Ok(out.stdout);
    }
    Err(MeshBenchError::Command {
        command: out.command,
        status: format!("exit {}", out.status),
        output: tail(&format!("{}\n{}", out.stdout, out.stderr), 800),
    })
}

/// `ip ARGS`.
fn ip(args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    run_ok(None, "ip", &args, CMD_TIMEOUT).map(drop)
}

/// Sets `key=value` sysctls inside the network namespace at `netns`.
fn sysctls(netns: &Path, kv: &[(&str, &str)]) -> Result<()> {
    let mut args = vec!["-q".to_owned(), "-w".to_owned()];
    args.extend(kv.iter().map(|(k, v)| format!("{k}={v}")));
    run_ok(Some(netns), "sysctl", &args, CMD_TIMEOUT).map(drop)
}

fn wait_nodes_ready(lab: &Lab, n: usize) -> Result<()> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let out = lab.swarm(1, &["node", "ls", "--format", "json"]);
        let ready = (out.status == 0).then(|| {
            out.stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| serde_json::from_str::<mesh_api::Node>(l).ok())
                .filter(|x| x.status.state == mesh_api::NodeState::Ready)
                .count()
        });
        if ready == Some(n) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(MeshBenchError::Timeout {
                what: format!("{n} nodes ready"),
                after: CONVERGE,
                details: format!("\n{}", lab.log_tails()),
            });
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The ingress network's ID (made with the first published port).
fn ingress_network(lab: &Lab) -> Result<String> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let out = swarm(lab, 1, &["network", "ls", "--format", "json"])?;
        let found = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|n| {
                n.pointer("/Spec/Ingress")
                    .and_then(serde_json::Value::as_bool)
                    == Some(true)
            })
            .and_then(|n| n.get("ID").and_then(|v| v.as_str()).map(str::to_owned));
        if let Some(id) = found {
            return Ok(id);
        }
        if Instant::now() >= deadline {
            return Err(MeshBenchError::Timeout {
                what: "the ingress network".into(),
                after: CONVERGE,
                details: format!("; `swarm network ls`: {}", tail(&out, 500)),
            });
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `n` tasks of `service` run, and returns them with their ingress addresses.
fn wait_tasks(lab: &Lab, service: &str, n: usize, ingress: &str) -> Result<Vec<TaskAddr>> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let out = lab.swarm(1, &["service", "ps", "--format", "json", service]);
        let last = if out.status == 0 {
            let tasks: Vec<Task> = out
                .stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| serde_json::from_str::<Task>(l).ok())
                .filter(|t| {
                    t.desired_state == TaskState::Running && t.status.state == TaskState::Running
                })
                .collect();
            if tasks.len() == n {
                return addresses(lab, service, &tasks, ingress);
            }
            tail(&out.stdout, 600)
        } else {
            tail(&out.stderr, 300)
        };
        if Instant::now() >= deadline {
            let ps = lab.swarm(1, &["service", "ps", "--no-trunc", service]);
            return Err(MeshBenchError::Timeout {
                what: format!("{n} running tasks of {service}"),
                after: CONVERGE,
                details: format!("; last: {last}\n{}\n{}", ps.stdout, lab.log_tails()),
            });
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// `tasks` of `service` with their host and their address on the ingress network.
fn addresses(lab: &Lab, service: &str, tasks: &[Task], ingress: &str) -> Result<Vec<TaskAddr>> {
    let nodes = node_hosts(lab)?;
    tasks
        .iter()
        .map(|t| {
            let ip = t
                .networks
                .iter()
                .find(|a| a.network_id == ingress)
                .map(|a| a.ip)
                .ok_or_else(|| {
                    MeshBenchError::Cluster(format!(
                        "task {} of {service} has no address on the ingress network",
                        t.id
                    ))
                })?;
            let host = nodes
                .iter()
                .find(|(id, _)| *id == t.node_id)
                .map(|(_, h)| *h)
                .ok_or_else(|| {
                    MeshBenchError::Cluster(format!(
                        "task {} runs on unknown node {}",
                        t.id, t.node_id
                    ))
                })?;
            Ok(TaskAddr {
                id: t.id.clone(),
                host,
                ip,
            })
        })
        .collect()
}

/// (node ID, host index) of every node, from the hostnames the lab gives (`hostN`).
fn node_hosts(lab: &Lab) -> Result<Vec<(String, usize)>> {
    let out = swarm(lab, 1, &["node", "ls", "--format", "json"])?;
    Ok(out
        .lines()
        .filter_map(|l| serde_json::from_str::<mesh_api::Node>(l).ok())
        .filter_map(|n| {
            let h = n
                .description
                .hostname
                .strip_prefix("host")?
                .parse::<usize>()
                .ok()?;
            Some((n.id, h))
        })
        .collect())
}

/// A HAProxy process in a lab namespace, stopped (by PID) when dropped.
pub struct Haproxy {
    child: Option<Child>,
    threads: u32,
    ports: HaproxyPorts,
    log: PathBuf,
}

impl Haproxy {
    /// Writes `haproxy-<threads>.cfg` in `dir` for `mesh`'s tasks and starts `haproxy -db`
    /// in host1's namespace, listening on host1's address at `ports`; returns once it
    /// answers on its web port from every task and passes iperf3's traffic.
    pub fn start(mesh: &MeshLab, threads: u32, ports: HaproxyPorts, dir: &Path) -> Result<Haproxy> {
        let web: Vec<SocketAddrV4> = mesh
            .web()
            .iter()
            .map(|t| SocketAddrV4::new(t.ip, 80))
            .collect();
        let text = haproxy_conf(
            threads,
            mesh.entry(),
            ports,
            mesh.sandbox(),
            &web,
            SocketAddrV4::new(mesh.iperf().ip, IPERF_PORT),
        );
        let mut h = Haproxy::spawn(&mesh.lab().netns_path(1), &text, threads, ports, dir)?;
        let url = format!("http://{}:{}/", mesh.entry(), ports.web);
        let ready = mesh
            .wait_answers(&url, &mesh.hostnames(), "HAProxy")
            .and_then(|()| mesh.wait_iperf(&mesh.entry().to_string(), ports.iperf));
        if let Err(e) = ready {
            h.stop();
            return Err(MeshBenchError::Cluster(format!(
                "HAProxy ({threads} threads) did not serve: {e}; its output: {}",
                h.output()
            )));
        }
        Ok(h)
    }

    /// Writes `config` (made for `ports`) to `dir/haproxy-<threads>.cfg` and starts
    /// `haproxy -db` with it inside the network namespace at `netns`, its output in
    /// `dir/haproxy-<threads>.log`.
    pub fn spawn(
        netns: &Path,
        config: &str,
        threads: u32,
        ports: HaproxyPorts,
        dir: &Path,
    ) -> Result<Haproxy> {
        let cfg = dir.join(format!("haproxy-{threads}.cfg"));
        fs::write(&cfg, config)
            .map_err(|e| MeshBenchError::io(format!("write {}", cfg.display()), e))?;
        let log = dir.join(format!("haproxy-{threads}.log"));
        let out = fs::File::create(&log)
            .map_err(|e| MeshBenchError::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| MeshBenchError::io(format!("duplicate {}", log.display()), e))?;
        // nsenter execs haproxy: the child is HAProxy itself.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                MeshBenchError::io("start haproxy (apt-get install haproxy util-linux)", e)
            })?;
        cleanup::track_pid(child.id());
        tracing::info!(pid = child.id(), threads, "haproxy started");
        Ok(Haproxy {
            child: Some(child),
            threads,
            ports,
            log,
        })
    }

    /// The ports it listens on.
    pub fn ports(&self) -> HaproxyPorts {
        self.ports
    }

    /// The end of what HAProxy printed.
    pub fn output(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 800)
    }

    /// SIGTERM, then SIGKILL after 5 s; reaped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if let Ok(raw) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
        cleanup::forget_pid(pid);
        tracing::info!(pid, threads = self.threads, "haproxy stopped");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_balances_in_tcp_mode_from_the_sandbox() {
        let c = haproxy_conf(
            2,
            Ipv4Addr::new(192, 0, 2, 1),
            HaproxyPorts::nth(0),
            "sb-ingress",
            &[
                "10.0.0.3:80".parse().unwrap(),
                "10.0.0.4:80".parse().unwrap(),
            ],
            "10.0.0.5:5201".parse().unwrap(),
        );
        assert!(c.contains("nbthread 2\n"), "{c}");
        assert!(c.contains("mode tcp\n"), "{c}");
        assert!(c.contains("balance roundrobin\n"), "{c}");
        assert!(c.contains("bind 192.0.2.1:8081\n"), "{c}");
        assert!(c.contains("bind 192.0.2.1:5202\n"), "{c}");
        assert!(
            c.contains("server web1 10.0.0.3:80 namespace sb-ingress\n"),
            "{c}"
        );
        assert!(
            c.contains("server web2 10.0.0.4:80 namespace sb-ingress\n"),
            "{c}"
        );
        assert!(
            c.contains("server iperf1 10.0.0.5:5201 namespace sb-ingress\n"),
            "{c}"
        );
        // The machine's open-files limit: HAProxy refuses to start above ~8000.
        assert!(c.contains("maxconn 4096\n"), "{c}");
        let next = HaproxyPorts::nth(1);
        assert_eq!((next.web, next.iperf), (8082, 5203));
        assert_eq!(HaproxyPorts::nth(100), HaproxyPorts::nth(MAX_HAPROXIES - 1));
    }

    #[test]
    fn nginx_answers_its_hostname_with_one_worker_and_no_log() {
        let c = nginx_conf("/tmp");
        for line in [
            "worker_processes 1;",
            "access_log off;",
            "return 200 \"$hostname\\n\";",
            "daemon off;",
            "pid /tmp/nginx.pid;",
            "client_body_temp_path /tmp/nginx-body;",
        ] {
            assert!(c.contains(line), "{line} missing in {c}");
        }
    }

    /// Network namespaces of a test's own (loopback up), and a scratch directory; dropping
    /// it kills every process left in them and deletes them.
    struct Scratch {
        netns: Vec<String>,
        dir: PathBuf,
    }

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let pid = std::process::id();
            let s = Scratch {
                netns: vec![format!("mbt{pid}{tag}a"), format!("mbt{pid}{tag}b")],
                dir: std::env::temp_dir().join(format!("mesh-bench-mesh-test-{pid}-{tag}")),
            };
            fs::create_dir_all(&s.dir).unwrap();
            for n in &s.netns {
                ip(&["netns", "add", n]).unwrap();
                ip(&["-n", n, "link", "set", "lo", "up"]).unwrap();
            }
            s
        }

        fn path(&self, i: usize) -> PathBuf {
            Path::new("/var/run/netns").join(&self.netns[i])
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let ids: Vec<_> = (0..self.netns.len())
                .filter_map(|i| mesh_bench::kill::netns_id(&self.path(i)))
                .collect();
            mesh_bench::kill::kill_host(&ids, Duration::from_secs(2));
            for n in &self.netns {
                let _ = ip(&["netns", "del", n]);
            }
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn spawn_in(netns: &Path, argv: &[&str]) -> Child {
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The real tools, as the benchmark runs them: nginx from [`nginx_conf`] and `iperf3 -s`
    /// in one namespace (the backends' side), HAProxy from [`haproxy_conf`] in another (the
    /// entry), reaching the backends through its `namespace` option; `wrk` straight to nginx
    /// and through HAProxy in both modes, `iperf3` through HAProxy.
    #[test]
    fn nginx_haproxy_wrk_and_iperf3_across_namespaces() {
        let tools = ["wrk", "iperf3", "haproxy", "curl", "nsenter"];
        let have = |t: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .any(|d| d.join(t).is_file())
        };
        if !nix::unistd::geteuid().is_root()
            || !Path::new("/usr/sbin/nginx").is_file()
            || !tools.iter().all(|t| have(t))
        {
            eprintln!("skipping: needs root, nginx and {tools:?}");
            return;
        }
        let s = Scratch::new("t");
        let (entry, backends) = (s.path(0), s.path(1));
        let dir = s.dir.display().to_string();
        let conf = s.dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&dir)).unwrap();
        let nginx = spawn_in(
            &backends,
            &[
                "/usr/sbin/nginx",
                "-e",
                "stderr",
                "-p",
                &dir,
                "-c",
                conf.to_str().unwrap(),
            ],
        );
        let iperf = spawn_in(&backends, &["iperf3", "-s", "-p", "5201"]);
        let lo = Ipv4Addr::LOCALHOST;
        let ports = HaproxyPorts::nth(0);
        let cfg = haproxy_conf(
            1,
            lo,
            ports,
            &s.netns[1],
            &[SocketAddrV4::new(lo, 80)],
            SocketAddrV4::new(lo, IPERF_PORT),
        );
        let mut h = Haproxy::spawn(&entry, &cfg, 1, ports, &s.dir).unwrap();

        // Through HAProxy, nginx answers with its hostname (this machine's: no UTS namespace).
        let host = nix::unistd::gethostname()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let url = format!("http://127.0.0.1:{}/", h.ports().web);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = run_ok(
                Some(&entry),
                "curl",
                &[
                    "-s".into(),
                    "-f".into(),
                    "-m".into(),
                    "2".into(),
                    url.clone(),
                ],
                Duration::from_secs(5),
            );
            if got.as_ref().ok().map(|b| b.trim()) == Some(host.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no answer through HAProxy: {got:?}; {}",
                h.output()
            );
            thread::sleep(Duration::from_millis(100));
        }

        let load = |netns: &Path, url: &str, close: bool| {
            crate::mesh_load::HttpLoad {
                netns: netns.to_path_buf(),
                url: url.to_owned(),
                threads: 1,
                connections: 4,
                duration: Duration::from_secs(1),
                close,
            }
            .run()
            .unwrap()
        };
        for (netns, url) in [(&backends, "http://127.0.0.1:80/"), (&entry, url.as_str())] {
            for close in [false, true] {
                let r = load(netns, url, close);
                assert!(r.requests > 0 && r.rps > 0.0, "{url} close={close}: {r:?}");
                assert_eq!(
                    (r.socket_errors, r.non_2xx),
                    (0, 0),
                    "{url} close={close}: {r:?}"
                );
                assert!(r.p50 <= r.p99, "{r:?}");
            }
        }
        let tcp = TcpLoad {
            netns: entry.clone(),
            host: "127.0.0.1".into(),
            port: ports.iperf,
            duration: Duration::from_secs(1),
        }
        .run()
        .unwrap();
        assert!(tcp.bits_per_sec > 0.0, "{tcp:?}");
        h.stop();
        assert!(h.child.is_none());
        // Stopped: nothing listens on its port any more.
        assert!(
            run_ok(
                Some(&entry),
                "curl",
                &["-s".into(), "-f".into(), "-m".into(), "2".into(), url],
                Duration::from_secs(5),
            )
            .is_err()
        );
        for mut c in [nginx, iperf] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn hostnames_are_the_task_ids_first_12_characters() {
        let t = TaskAddr {
            id: "abcdefghijklmnop".into(),
            host: 1,
            ip: Ipv4Addr::new(10, 0, 0, 3),
        };
        assert_eq!(t.hostname(), "abcdefghijkl");
        let short = TaskAddr {
            id: "abc".into(),
            ..t
        };
        assert_eq!(short.hostname(), "abc");
    }

    #[test]
    fn a_lab_of_two_hosts_is_refused_naming_the_field() {
        let e = MeshLab::start(
            2,
            Dataplane::Userspace,
            Path::new("/none"),
            Path::new("/none"),
            &|_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("`hosts`"), "{e}");
    }
}
