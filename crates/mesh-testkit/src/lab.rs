//! The lab: N hosts, each a network namespace on one bridge, each running its own meshd.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::bins;
use crate::cmd::{self, CmdOutput};
use crate::error::LabError;
use crate::stale;

/// The underlay subnet's first three octets: host i is `192.0.2.i/24` (TEST-NET-1).
const SUBNET: [u8; 3] = [192, 0, 2];
/// Prefix length of the underlay.
const PREFIX_LEN: u8 = 24;
/// The client namespace's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
/// The most hosts a lab holds (addresses .1 to .199; .200 is the client).
pub const MAX_HOSTS: usize = 199;
/// The control port every meshd listens on.
pub const CONTROL_PORT: u16 = 2377;
/// Underlay MTU.
const MTU: u32 = 1500;
/// How long a daemon may take to accept connections on its socket
/// (override: `MESH_LAB_READY_TIMEOUT`, seconds).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long teardown waits after SIGTERM before SIGKILL.
const TEARDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long `swarm`/`exec` commands may run before they are killed.
const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// How many log lines an error shows per host.
const LOG_TAIL_LINES: usize = 30;
/// Longest unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The nftables table `partition` adds in host namespaces.
const NFT_TABLE: &str = "meshlab";

/// What lab to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabOptions {
    /// Number of hosts, 1 to 199.
    pub hosts: usize,
    /// Extra arguments given to every meshd after the lab's own.
    pub meshd_args: Vec<String>,
    /// Also make the client namespace (`192.0.2.200`) for traffic generators.
    pub client: bool,
    /// Where the hosts' files go; a temporary directory when `None`. A directory given here is
    /// never removed by the lab.
    pub dir: Option<PathBuf>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            hosts: 3,
            meshd_args: Vec::new(),
            client: false,
            dir: None,
        }
    }
}

impl LabOptions {
    /// Options for `hosts` hosts, no extra arguments, no client, a temporary directory.
    pub fn hosts(hosts: usize) -> Self {
        LabOptions {
            hosts,
            ..LabOptions::default()
        }
    }

    fn validate(&self) -> Result<(), LabError> {
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return Err(LabError::InvalidOption {
                field: "hosts",
                reason: format!(
                    "must be between 1 and {MAX_HOSTS} (one address per host in 192.0.2.0/24), got {}",
                    self.hosts
                ),
            });
        }
        if let Some(bad) = self.meshd_args.iter().find(|a| a.contains('\0')) {
            return Err(LabError::InvalidOption {
                field: "meshd_args",
                reason: format!("argument {bad:?} contains a NUL byte; remove it"),
            });
        }
        Ok(())
    }
}

/// One host's fixed facts.
#[derive(Debug)]
struct Host {
    ip: Ipv4Addr,
    netns: String,
    data_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

/// What teardown still has to undo.
#[derive(Debug, Default)]
struct Made {
    /// Namespaces created, in order.
    netns: Vec<String>,
    /// The temporary directory, when the lab made one.
    temp: Option<TempDir>,
    /// The liveness marker.
    marker: Option<PathBuf>,
    /// Teardown has run.
    done: bool,
}

/// A running lab. Dropping it (also while unwinding from a panic) kills every process it
/// started, deletes every namespace it made and removes its temporary directory; the
/// directory is kept, and its path printed, when the thread is panicking, when `start` failed
/// after the daemons were launched, or when `MESH_LAB_KEEP=1`.
///
/// Host indices are 1-based (`1..=hosts()`); passing another index is a bug and panics.
#[derive(Debug)]
pub struct Lab {
    id: String,
    dir: PathBuf,
    lab_netns: String,
    client_netns: Option<String>,
    hosts: Vec<Host>,
    meshd_bin: PathBuf,
    meshd_args: Vec<String>,
    daemons: Mutex<Vec<Option<Child>>>,
    partitioned: Mutex<BTreeSet<usize>>,
    made: Mutex<Made>,
    torn_down: AtomicBool,
    /// Keep the directory and say so on teardown.
    keep: AtomicBool,
    /// Keep the directory without a word (a failed start's error already names it).
    keep_quietly: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ready_timeout() -> Duration {
    std::env::var("MESH_LAB_READY_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(READY_TIMEOUT, Duration::from_secs)
}

fn keep_env() -> bool {
    std::env::var("MESH_LAB_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

impl Lab {
    /// Builds the lab: the underlay namespace and bridge, the hosts' namespaces, and one
    /// meshd per host, returning once every daemon accepts connections on its socket.
    ///
    /// Sweeps stale labs first. Whatever it made is undone if it fails half-way.
    pub fn start(opts: LabOptions) -> Result<Lab, LabError> {
        Self::build(opts, true)
    }

    /// Builds the lab's network only: the underlay namespace and bridge and the hosts'
    /// namespaces (and the client's), with no meshd running. For programs other than meshd
    /// that need the same topology (e.g. a reference system in a benchmark); processes they
    /// start in the namespaces are killed on teardown like the daemons.
    /// [`Lab::start_daemon`] still starts a host's meshd when the binary is found.
    pub fn start_without_daemons(opts: LabOptions) -> Result<Lab, LabError> {
        Self::build(opts, false)
    }

    fn build(opts: LabOptions, daemons: bool) -> Result<Lab, LabError> {
        opts.validate()?;
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(LabError::NotRoot {
                euid: euid.as_raw(),
            });
        }
        stale::sweep_stale();
        let meshd_bin = match bins::meshd_bin() {
            Ok(bin) => bin,
            // Not needed to build the network; `start_daemon` then fails naming this path.
            Err(_) if !daemons => PathBuf::from("meshd"),
            Err(e) => return Err(e),
        };
        let id = stale::new_id();

        let (dir, temp) = match &opts.dir {
            Some(d) => {
                fs::create_dir_all(d).map_err(|e| LabError::InvalidOption {
                    field: "dir",
                    reason: format!(
                        "cannot create {}: {e}; give a writable directory",
                        d.display()
                    ),
                })?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("mesh-lab-{id}-"))
                    .tempdir()
                    .map_err(|e| LabError::io("create the lab's temporary directory", e))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let hosts: Vec<Host> = (1..=opts.hosts)
            .map(|i| {
                let hdir = dir.join(format!("host{i}"));
                Host {
                    ip: host_ip(i),
                    netns: format!("{}{id}-h{i}", stale::PREFIX),
                    data_dir: hdir.join("data"),
                    socket: hdir.join("meshd.sock"),
                    log: hdir.join("meshd.log"),
                }
            })
            .collect();
        if let Some(h) = hosts.last() {
            let len = h.socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(LabError::InvalidOption {
                    field: "dir",
                    reason: format!(
                        "socket path {} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of unix sockets; use a shorter directory (or TMPDIR)",
                        h.socket.display()
                    ),
                });
            }
        }
        let lab = Lab {
            lab_netns: format!("{}{id}-lab", stale::PREFIX),
            client_netns: opts.client.then(|| format!("{}{id}-c", stale::PREFIX)),
            id,
            dir,
            daemons: Mutex::new((0..hosts.len()).map(|_| None).collect()),
            hosts,
            meshd_bin,
            meshd_args: opts.meshd_args.clone(),
            partitioned: Mutex::new(BTreeSet::new()),
            made: Mutex::new(Made {
                temp,
                ..Made::default()
            }),
            torn_down: AtomicBool::new(false),
            keep: AtomicBool::new(false),
            keep_quietly: AtomicBool::new(false),
        };
        // From here on, an error drops `lab`, which undoes what was made.
        let marker = stale::write_marker(&lab.id, &lab.dir)?;
        lock(&lab.made).marker = Some(marker);
        tracing::info!(lab = %lab.id, hosts = lab.hosts.len(), dir = %lab.dir.display(), "starting lab");
        lab.build_network()?;
        if !daemons {
            tracing::info!(lab = %lab.id, "lab network is up (no daemons)");
            return Ok(lab);
        }
        if let Err(e) = lab.start_all_daemons() {
            lab.keep_quietly.store(true, Ordering::SeqCst);
            return Err(LabError::StartFailed {
                dir: lab.dir.clone(),
                source: Box::new(e),
            });
        }
        tracing::info!(lab = %lab.id, "lab is up");
        Ok(lab)
    }

    fn add_netns(&self, name: &str) -> Result<(), LabError> {
        // `ip netns add` may race with another one setting up /run/netns; retry a little.
        let mut attempt = 0;
        loop {
            match cmd::ip(&["netns", "add", name], None) {
                Ok(_) => break,
                Err(e) if attempt < 3 && !cmd::netns_path(name).exists() => {
                    tracing::debug!(netns = name, error = %e, "retrying netns add");
                    attempt += 1;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
        lock(&self.made).netns.push(name.to_owned());
        Ok(())
    }

    fn build_network(&self) -> Result<(), LabError> {
        self.add_netns(&self.lab_netns)?;
        let mut batch = String::from("link set lo up\nlink add br0 type bridge\nlink set br0 up\n");
        let mut members: Vec<(String, String, Ipv4Addr)> = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            members.push((format!("h{}", i + 1), h.netns.clone(), h.ip));
        }
        if let Some(c) = &self.client_netns {
            members.push(("c".to_owned(), c.clone(), CLIENT_IP));
        }
        for (_, ns, _) in &members {
            self.add_netns(ns)?;
        }
        for (port, ns, _) in &members {
            batch.push_str(&format!(
                "link add {port} mtu {MTU} type veth peer name eth0 mtu {MTU} netns {ns}\nlink set {port} master br0 up\n"
            ));
        }
        cmd::ip(&["-n", &self.lab_netns, "-batch", "-"], Some(&batch))?;
        for (_, ns, ip) in &members {
            let batch =
                format!("link set lo up\naddr add {ip}/{PREFIX_LEN} dev eth0\nlink set eth0 up\n");
            cmd::ip(&["-n", ns, "-batch", "-"], Some(&batch))?;
            // Many short connections in a test exhaust ephemeral ports otherwise.
            cmd::run(
                &cmd::tool("sh"),
                &[
                    "-c".to_owned(),
                    "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range && echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse".to_owned(),
                ],
                Some(&cmd::netns_path(ns)),
                None,
                CMD_TIMEOUT,
                Some(&self.torn_down),
            )
            .ok()?;
        }
        Ok(())
    }

    fn start_all_daemons(&self) -> Result<(), LabError> {
        for i in 1..=self.hosts.len() {
            self.spawn_daemon(i)?;
        }
        let deadline = Instant::now() + ready_timeout();
        for i in 1..=self.hosts.len() {
            self.wait_ready(i, deadline)?;
        }
        Ok(())
    }

    fn spawn_daemon(&self, i: usize) -> Result<(), LabError> {
        let h = self.host(i);
        // Held until the child is recorded, so teardown cannot miss it.
        let mut daemons = lock(&self.daemons);
        if self.torn_down.load(Ordering::SeqCst) {
            return Err(LabError::TornDown);
        }
        if let Some(c) = daemons[i - 1].as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            return Err(LabError::DaemonRunning {
                host: i,
                pid: c.id(),
            });
        }
        fs::create_dir_all(&h.data_dir)
            .map_err(|e| LabError::io(format!("create {}", h.data_dir.display()), e))?;
        let mut args: Vec<String> = [
            "--data-dir",
            &h.data_dir.display().to_string(),
            "--socket",
            &h.socket.display().to_string(),
            "--advertise-addr",
            &h.ip.to_string(),
            "--listen-addr",
            &format!("0.0.0.0:{CONTROL_PORT}"),
            "--hostname",
            &format!("host{i}"),
            "--sandbox-prefix",
            &self.sandbox_prefix(i),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(self.meshd_args.iter().cloned());
        let line = cmd::render(&self.meshd_bin, &args);

        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .map_err(|e| LabError::io(format!("open {}", h.log.display()), e))?;
        writeln!(log, "--- mesh-lab: starting in netns {}: {line}", h.netns)
            .map_err(|e| LabError::io(format!("write {}", h.log.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| LabError::io(format!("duplicate {}", h.log.display()), e))?;

        let mut command = Command::new(&self.meshd_bin);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            // Its own process group: a terminal's Ctrl-C reaches the lab, not the daemons,
            // and teardown can kill the daemon together with its helpers.
            .process_group(0);
        cmd::clear_signal_mask(&mut command);
        let ns_file = cmd::enter_netns(&mut command, &cmd::netns_path(&h.netns))?;
        let child = command
            .spawn()
            .map_err(|e| LabError::io(format!("start `{line}`"), e))?;
        drop(ns_file);
        tracing::info!(host = i, pid = child.id(), netns = %h.netns, "meshd started");
        daemons[i - 1] = Some(child);
        Ok(())
    }

    fn wait_ready(&self, i: usize, deadline: Instant) -> Result<(), LabError> {
        let h = self.host(i);
        let started = Instant::now();
        loop {
            {
                let mut daemons = lock(&self.daemons);
                let exited = match daemons[i - 1].as_mut() {
                    None => Some("not running".to_owned()),
                    Some(c) => match c.try_wait() {
                        Ok(Some(st)) => Some(st.to_string()),
                        Ok(None) => None,
                        Err(e) => Some(format!("unknown: {e}")),
                    },
                };
                if let Some(status) = exited {
                    daemons[i - 1] = None;
                    return Err(LabError::DaemonExited {
                        host: i,
                        status,
                        log: h.log.clone(),
                        tail: cmd::tail(&h.log, LOG_TAIL_LINES),
                    });
                }
            }
            if UnixStream::connect(&h.socket).is_ok() {
                tracing::debug!(host = i, "meshd accepts connections");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::DaemonNotReady {
                    host: i,
                    socket: h.socket.clone(),
                    timeout: started.elapsed(),
                    log: h.log.clone(),
                    tail: cmd::tail(&h.log, LOG_TAIL_LINES),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn host(&self, i: usize) -> &Host {
        assert!(
            (1..=self.hosts.len()).contains(&i),
            "host index {i} out of range: this lab has hosts 1..={}",
            self.hosts.len()
        );
        &self.hosts[i - 1]
    }

    /// This lab's id (`<pid>x<n>`), part of every namespace name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The directory holding `hostN/{data,meshd.sock,meshd.log}`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Underlay address of host `i`: `192.0.2.i`.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.host(i).ip
    }

    /// Control address of host `i`: `192.0.2.i:2377`.
    pub fn control_addr(&self, i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip(i), CONTROL_PORT)
    }

    /// Name of host `i`'s network namespace.
    pub fn netns(&self, i: usize) -> &str {
        &self.host(i).netns
    }

    /// Path of host `i`'s network namespace (for `nsenter --net=`).
    pub fn netns_path(&self, i: usize) -> PathBuf {
        cmd::netns_path(self.netns(i))
    }

    /// Name of the underlay namespace holding the bridge `br0`.
    pub fn lab_netns(&self) -> &str {
        &self.lab_netns
    }

    /// Name of the client namespace, if the lab has one.
    pub fn client_netns(&self) -> Option<&str> {
        self.client_netns.as_deref()
    }

    /// Address of the client namespace (when there is one): `192.0.2.200`.
    pub fn client_ip(&self) -> Ipv4Addr {
        CLIENT_IP
    }

    /// meshd's API socket on host `i`.
    pub fn socket(&self, i: usize) -> &Path {
        &self.host(i).socket
    }

    /// meshd's data directory on host `i`.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.host(i).data_dir
    }

    /// meshd's log (stdout and stderr, appended across restarts) on host `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.host(i).log.clone()
    }

    /// The process id of host `i`'s meshd, or `None` when it is not running (a daemon that
    /// exited by itself is reaped here).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.host(i);
        let mut daemons = lock(&self.daemons);
        let slot = &mut daemons[i - 1];
        let child = slot.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            Ok(Some(status)) => {
                tracing::warn!(host = i, %status, "meshd exited by itself");
                *slot = None;
                None
            }
            Err(_) => Some(child.id()),
        }
    }

    /// Runs the `swarm` CLI against host `i`'s daemon: `swarm -H unix://<socket> ARGS`.
    /// Killed after two minutes. A missing binary gives status -1 with the reason in stderr.
    pub fn swarm(&self, i: usize, args: &[&str]) -> CmdOutput {
        let mut full = vec![
            "-H".to_owned(),
            format!("unix://{}", self.socket(i).display()),
        ];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        match bins::swarm_bin() {
            Ok(bin) => cmd::run(&bin, &full, None, None, CMD_TIMEOUT, Some(&self.torn_down)),
            Err(e) => CmdOutput {
                command: cmd::render(Path::new("swarm"), &full),
                status: -1,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }

    /// Runs `argv` inside host `i`'s network namespace (only the network namespace is entered).
    /// Killed after two minutes.
    pub fn exec(&self, i: usize, argv: &[&str]) -> CmdOutput {
        self.exec_in(&self.host(i).netns, argv)
    }

    /// Runs `argv` inside the client namespace; status -1 when the lab has no client.
    pub fn exec_client(&self, argv: &[&str]) -> CmdOutput {
        match &self.client_netns {
            Some(ns) => self.exec_in(ns, argv),
            None => CmdOutput {
                command: argv.join(" "),
                status: -1,
                stdout: String::new(),
                stderr: "this lab has no client namespace; start it with LabOptions { client: true, .. }".to_owned(),
            },
        }
    }

    fn exec_in(&self, netns: &str, argv: &[&str]) -> CmdOutput {
        let Some((prog, rest)) = argv.split_first() else {
            return CmdOutput {
                command: String::new(),
                status: -1,
                stdout: String::new(),
                stderr: "exec needs a program: argv is empty".to_owned(),
            };
        };
        let args: Vec<String> = rest.iter().map(|a| (*a).to_owned()).collect();
        let program = if prog.contains('/') {
            PathBuf::from(prog)
        } else {
            cmd::tool(prog)
        };
        cmd::run(
            &program,
            &args,
            Some(&cmd::netns_path(netns)),
            None,
            CMD_TIMEOUT,
            Some(&self.torn_down),
        )
    }

    /// SIGKILLs host `i`'s meshd (a crash) and reaps it. Nothing to do when it is not running.
    pub fn kill(&self, i: usize) {
        self.host(i);
        let Some(mut child) = lock(&self.daemons)[i - 1].take() else {
            tracing::debug!(host = i, "kill: meshd is not running");
            return;
        };
        let pid = child.id();
        // Killing our own child cannot fail but for a bug; say so if it does.
        if let Err(e) = child.kill() {
            tracing::warn!(host = i, pid, error = %e, "could not SIGKILL meshd");
        }
        match child.wait() {
            Ok(status) => tracing::info!(host = i, pid, %status, "meshd killed"),
            Err(e) => tracing::warn!(host = i, pid, error = %e, "could not reap meshd"),
        }
    }

    /// Stops host `i`'s meshd: SIGTERM (and SIGCONT, should it be paused), then SIGKILL if it
    /// has not exited within 10 seconds; reaps it. Nothing to do when it is not running.
    pub fn stop(&self, i: usize) {
        self.host(i);
        let Some(mut child) = lock(&self.daemons)[i - 1].take() else {
            tracing::debug!(host = i, "stop: meshd is not running");
            return;
        };
        let pid = child.id();
        if let Err(e) = kill(pid_of(&child), Signal::SIGTERM) {
            tracing::warn!(host = i, pid, error = %e, "could not SIGTERM meshd");
        }
        let _ = kill(pid_of(&child), Signal::SIGCONT);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(host = i, pid, %status, "meshd stopped");
                    return;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) | Err(_) => break,
            }
        }
        tracing::warn!(host = i, pid, grace = ?STOP_GRACE, "meshd ignored SIGTERM, killing it");
        let _ = child.kill();
        if let Err(e) = child.wait() {
            tracing::warn!(host = i, pid, error = %e, "could not reap meshd");
        }
    }

    /// Starts host `i`'s meshd again (same data directory, same arguments) and waits until it
    /// accepts connections. Fails if it is already running.
    pub fn start_daemon(&self, i: usize) -> Result<(), LabError> {
        self.host(i);
        self.pid(i); // reaps a daemon that exited by itself
        self.spawn_daemon(i)?;
        self.wait_ready(i, Instant::now() + ready_timeout())
    }

    /// `stop` then `start_daemon`.
    pub fn restart(&self, i: usize) -> Result<(), LabError> {
        self.stop(i);
        self.start_daemon(i)
    }

    /// Freezes host `i`'s meshd (SIGSTOP): it keeps its sockets but answers nothing. Returns
    /// once the process is stopped. Nothing to do (but a warning) when it is not running.
    pub fn pause(&self, i: usize) {
        self.signal(i, Signal::SIGSTOP, |state| state == 'T');
    }

    /// Thaws host `i`'s meshd (SIGCONT). Returns once the process runs again.
    pub fn resume(&self, i: usize) {
        self.signal(i, Signal::SIGCONT, |state| state != 'T');
    }

    /// Sends `sig` to host `i`'s meshd, then waits (5 s at most) until its state passes `done`.
    fn signal(&self, i: usize, sig: Signal, done: fn(char) -> bool) {
        self.host(i);
        let pid = {
            let daemons = lock(&self.daemons);
            let Some(child) = daemons[i - 1].as_ref() else {
                tracing::warn!(host = i, %sig, "meshd is not running: nothing to signal");
                return;
            };
            if let Err(e) = kill(pid_of(child), sig) {
                tracing::warn!(host = i, pid = child.id(), %sig, error = %e, "could not signal meshd");
                return;
            }
            child.id()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match stale::proc_state(pid) {
                Some(state) if done(state) => return,
                // Exited (zombie or gone): nothing more to wait for.
                Some('Z') | None => return,
                Some(_) if Instant::now() >= deadline => {
                    tracing::warn!(host = i, pid, %sig, "process state did not change in 5 s");
                    return;
                }
                Some(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Cuts the underlay between two groups of hosts, both ways: in each host's namespace an
    /// nftables table `meshlab` drops packets to and from the other group's addresses.
    /// Partitions add up until [`Lab::heal`].
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) -> Result<(), LabError> {
        for &i in side_a.iter().chain(side_b) {
            self.host(i);
        }
        if let Some(i) = side_a.iter().find(|i| side_b.contains(i)) {
            return Err(LabError::InvalidOption {
                field: "side_b",
                reason: format!(
                    "host {i} is on both sides of the partition; put it on one side only"
                ),
            });
        }
        for (mine, theirs) in [(side_a, side_b), (side_b, side_a)] {
            if theirs.is_empty() {
                continue;
            }
            let set = theirs
                .iter()
                .map(|&j| self.ip(j).to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let script = format!(
                "add table inet {NFT_TABLE}\n\
                 add chain inet {NFT_TABLE} input {{ type filter hook input priority -10; policy accept; }}\n\
                 add chain inet {NFT_TABLE} output {{ type filter hook output priority -10; policy accept; }}\n\
                 add rule inet {NFT_TABLE} input ip saddr {{ {set} }} drop\n\
                 add rule inet {NFT_TABLE} output ip daddr {{ {set} }} drop\n"
            );
            for &i in mine {
                self.nft(i, &script)?;
                lock(&self.partitioned).insert(i);
            }
        }
        tracing::info!(?side_a, ?side_b, "partitioned");
        Ok(())
    }

    /// Removes every partition (the `meshlab` tables).
    pub fn heal(&self) -> Result<(), LabError> {
        let hosts: Vec<usize> = std::mem::take(&mut *lock(&self.partitioned))
            .into_iter()
            .collect();
        let mut first_err = None;
        for i in hosts {
            if let Err(e) = self.nft(i, &format!("delete table inet {NFT_TABLE}\n")) {
                first_err.get_or_insert(e);
            }
        }
        tracing::info!("healed");
        first_err.map_or(Ok(()), Err)
    }

    fn nft(&self, i: usize, script: &str) -> Result<(), LabError> {
        cmd::run(
            &cmd::tool("nft"),
            &["-f".to_owned(), "-".to_owned()],
            Some(&self.netns_path(i)),
            Some(script),
            CMD_TIMEOUT,
            Some(&self.torn_down),
        )
        .ok()
        .map(|_| ())
    }

    /// Calls `f` every 100 ms until it returns `Some`, for at most `timeout`. The error names
    /// what was awaited and for how long, with the last lines of every host's log.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_torn_down() {
                return Err(LabError::TornDown);
            }
            if let Some(v) = f() {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LabError::Timeout {
                    what: what.to_owned(),
                    timeout,
                    logs: self.log_tails(),
                });
            }
            thread::sleep((deadline - now).min(Duration::from_millis(100)));
        }
    }

    /// The last lines of every host's log, each under a header naming the host and file.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            out.push_str(&format!(
                "--- host{} log ({}) ---\n{}\n",
                i + 1,
                h.log.display(),
                cmd::tail(&h.log, LOG_TAIL_LINES)
            ));
        }
        out
    }

    /// Whether [`Lab::teardown`] has begun; from then on commands fail and waits end.
    pub fn is_torn_down(&self) -> bool {
        self.torn_down.load(Ordering::SeqCst)
    }

    /// Keeps the lab directory when the lab goes away, whatever happens.
    pub fn keep_files(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }

    /// Prefix of host `i`'s overlay sandbox namespaces (`meshd --sandbox-prefix`):
    /// `ml<ID>h<i>`. Removed with the lab.
    pub fn sandbox_prefix(&self, i: usize) -> String {
        format!("ml{}h{i}", self.id)
    }

    /// A name for an extra namespace of the lab (e.g. an endpoint a test connects):
    /// `ml<ID>-<suffix>`, removed with the lab.
    pub fn extra_netns_name(&self, suffix: &str) -> String {
        format!("ml{}-{suffix}", self.id)
    }

    /// Tears the lab down now (what dropping it does): stops every daemon (SIGTERM, then
    /// SIGKILL after 5 s), kills what is left in its namespaces, deletes them, and removes
    /// the temporary directory unless it is kept. Idempotent; callable from another thread
    /// (e.g. a signal handler thread) while the lab is in use, after which the lab's
    /// methods fail.
    pub fn teardown(&self) {
        self.torn_down.store(true, Ordering::SeqCst);
        let mut made = lock(&self.made);
        if made.done {
            return;
        }
        made.done = true;

        let children: Vec<(usize, Child)> = lock(&self.daemons)
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| c.take().map(|c| (i + 1, c)))
            .collect();
        stop_all(children);
        // Containers outlive meshd on purpose; the lab's go with it.
        for i in 1..=self.hosts() {
            remove_containers(&self.host(i).data_dir.join("runtime").join("runc"));
        }

        for name in made.netns.iter().rev() {
            stale::kill_netns_processes(&cmd::netns_path(name));
            if let Err(e) = stale::delete_netns(name) {
                tracing::warn!(netns = %name, error = %e, "could not delete network namespace");
            }
        }
        made.netns.clear();
        // Namespaces made on the lab's behalf: meshd's sandboxes and the endpoints that
        // tests and the demo create, all named with the lab's prefix.
        for name in lab_named_netns(&self.id) {
            stale::kill_netns_processes(&cmd::netns_path(&name));
            if let Err(e) = stale::delete_netns(&name) {
                tracing::warn!(netns = %name, error = %e, "could not delete network namespace");
            }
        }
        if let Some(m) = made.marker.take() {
            let _ = fs::remove_file(m);
        }

        unmount_below(&self.dir);

        let panicking = thread::panicking();
        let keep = panicking || self.keep.load(Ordering::SeqCst) || keep_env();
        match made.temp.take() {
            Some(t) if self.keep_quietly.load(Ordering::SeqCst) && !keep => {
                let _ = t.keep();
            }
            Some(t) if keep => {
                let path = t.keep();
                eprintln!(
                    "mesh-lab: lab {} torn down; its files (logs: hostN/meshd.log) are kept in {}",
                    self.id,
                    path.display()
                );
            }
            Some(t) => {
                if let Err(e) = t.close() {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the lab directory");
                }
            }
            None if panicking => {
                eprintln!(
                    "mesh-lab: lab {} torn down; its logs are in {}/hostN/meshd.log",
                    self.id,
                    self.dir.display()
                );
            }
            None => {}
        }
        tracing::info!(lab = %self.id, "lab torn down");
    }
}

/// SIGTERMs every daemon, waits for them (bounded), then SIGKILLs what is left; also kills
/// each daemon's process group (its helpers).
fn stop_all(mut children: Vec<(usize, Child)>) {
    for (_, c) in &children {
        let _ = kill(pid_of(c), Signal::SIGTERM);
        let _ = kill(pid_of(c), Signal::SIGCONT);
    }
    let deadline = Instant::now() + TEARDOWN_GRACE;
    while !children.is_empty() && Instant::now() < deadline {
        children.retain_mut(|(i, c)| match c.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::debug!(host = *i, %status, "meshd exited");
                let _ = killpg(pid_of(c), Signal::SIGKILL);
                false
            }
            Err(_) => false,
        });
        if !children.is_empty() {
            thread::sleep(Duration::from_millis(20));
        }
    }
    for (i, mut c) in children {
        tracing::warn!(
            host = i,
            pid = c.id(),
            "meshd still running after SIGTERM, killing it"
        );
        let _ = killpg(pid_of(&c), Signal::SIGKILL);
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Underlay address of host `i` (1-based).
fn host_ip(i: usize) -> Ipv4Addr {
    let last = u8::try_from(i).unwrap_or(u8::MAX);
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last)
}

/// Names in /var/run/netns made for lab `id`: `ml<id>-…` and `ml<id>h…`.
/// Deletes (killing first) every container of the runc state directory `root`.
fn remove_containers(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let res = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = res {
            tracing::warn!(container = %id, error = %e, "could not run runc delete");
        }
    }
}

/// Unmounts (lazily, deepest first) everything mounted below `dir`: the containers' root
/// filesystems and their bind mounts.
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix) && p.len() > prefix.len())
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        if let Err(e) = nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH) {
            tracing::debug!(mount = %p, error = %e, "could not unmount");
        }
    }
}

fn lab_named_netns(id: &str) -> Vec<String> {
    let (a, b) = (format!("ml{id}-"), format!("ml{id}h"));
    fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&a) || n.starts_with(&b))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let err = LabOptions::hosts(0).validate().unwrap_err().to_string();
        assert!(
            err.contains("`hosts`") && err.contains("between 1 and 199"),
            "{err}"
        );
        let err = LabOptions::hosts(200).validate().unwrap_err().to_string();
        assert!(err.contains("got 200"), "{err}");
        assert!(LabOptions::hosts(199).validate().is_ok());
        let opts = LabOptions {
            meshd_args: vec!["a\0b".into()],
            ..LabOptions::default()
        };
        assert!(
            opts.validate()
                .unwrap_err()
                .to_string()
                .contains("meshd_args")
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(host_ip(1), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(host_ip(199), Ipv4Addr::new(192, 0, 2, 199));
    }
}
