//! The node's task executor: runs the tasks the managers assign to this node.
//!
//! One controller per task drives it forward (accepted → preparing → starting → running →
//! complete|failed|shutdown) and reports every state to the managers; the assignments come
//! from a long-poll on the managers, so a new task starts within a round trip. Containers
//! outlive meshd: after a restart, running containers are re-adopted, not restarted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use mesh_api::{Health, Task, TaskState, TaskStatus, TaskStatusUpdate};
use mesh_manager::manager::now_ms;
use mesh_manager::rpc::{self, AssignmentsRequest, AssignmentsResponse, TaskStatusRequest};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::daemon::Active;
use crate::engine::{Engine, Exit, Prepared, RunState};

/// How long an assignments long-poll waits on the manager.
const ASSIGNMENT_WAIT_MS: u64 = 15_000;
/// How long the interfaces of a task may take to appear in its namespace.
const PLUMB_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a task that serves traffic is left running after it is told to stop, so every
/// node has taken it out of rotation first (two heartbeat periods of the default settings).
const MESH_DRAIN: Duration = Duration::from_millis(1000);

/// A task's controller as the executor keeps it.
struct Controller {
    desired: watch::Sender<TaskState>,
}

/// Runs this node's tasks.
pub struct Executor {
    engine: Arc<Engine>,
    active: Arc<Active>,
    hostname: String,
    controllers: Mutex<HashMap<String, Controller>>,
    /// The task IDs of the last assignments answer.
    last_assigned: Mutex<HashSet<String>>,
    reports: mpsc::UnboundedSender<TaskStatusUpdate>,
    sync_requested: watch::Sender<u64>,
    sync_done: watch::Sender<u64>,
}

impl Executor {
    /// Starts the executor of `active`: the assignment loop, the status reporter and the
    /// network syncer. Returns their join handles.
    pub fn start(
        engine: Arc<Engine>,
        active: Arc<Active>,
        hostname: String,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ex = Arc::new(Executor {
            engine,
            active,
            hostname,
            controllers: Mutex::new(HashMap::new()),
            last_assigned: Mutex::new(HashSet::new()),
            reports: tx,
            sync_requested: watch::channel(0).0,
            sync_done: watch::channel(0).0,
        });
        vec![
            tokio::spawn(Arc::clone(&ex).report_loop(rx)),
            tokio::spawn(Arc::clone(&ex).sync_loop()),
            tokio::spawn(ex.assignment_loop()),
        ]
    }

    fn report(&self, task_id: &str, status: TaskStatus) {
        debug!(task = %task_id, state = %status.state, msg = %status.message, "task state");
        let _ = self.reports.send(TaskStatusUpdate {
            task_id: task_id.to_string(),
            status,
        });
    }

    /// Sends reports in batches; keeps the latest per task until a manager took it.
    async fn report_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<TaskStatusUpdate>) {
        let mut stop = self.active.stop_signal();
        let mut pending: BTreeMap<String, TaskStatus> = BTreeMap::new();
        loop {
            if pending.is_empty() {
                tokio::select! {
                    u = rx.recv() => match u {
                        Some(u) => { pending.insert(u.task_id, u.status); }
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            while let Ok(u) = rx.try_recv() {
                pending.insert(u.task_id, u.status);
            }
            let updates: Vec<TaskStatusUpdate> = pending
                .iter()
                .map(|(k, v)| TaskStatusUpdate {
                    task_id: k.clone(),
                    status: v.clone(),
                })
                .collect();
            let body = match serde_json::to_vec(&TaskStatusRequest { updates }) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "could not encode task reports");
                    pending.clear();
                    continue;
                }
            };
            match self
                .active
                .call_manager(rpc::TASK_STATUS, body, Duration::from_secs(5))
                .await
            {
                Ok(_) => pending.clear(),
                Err(e) => {
                    debug!(error = %e, "task reports not delivered; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
    }

    /// Brings the overlay in line with the network map when a task asks, coalescing requests.
    async fn sync_loop(self: Arc<Self>) {
        let mut req = self.sync_requested.subscribe();
        let mut stop = self.active.stop_signal();
        loop {
            tokio::select! {
                r = req.changed() => if r.is_err() { break },
                _ = stop.changed() => break,
            }
            let target = *req.borrow_and_update();
            if let Err(e) = self.active.sync_network().await {
                warn!(error = format!("{e:#}"), "network sync for tasks failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.sync_done.send_replace(target);
        }
    }

    /// Asks for a network sync and waits until one that started after the request is done.
    async fn sync_network(&self) {
        let mut target = 0;
        self.sync_requested.send_modify(|v| {
            *v += 1;
            target = *v;
        });
        let mut done = self.sync_done.subscribe();
        let _ = tokio::time::timeout(PLUMB_TIMEOUT, done.wait_for(|d| *d >= target)).await;
    }

    async fn assignment_loop(self: Arc<Self>) {
        let mut stop = self.active.stop_signal();
        let mut known: Option<(u64, u64)> = None;
        let mut first = true;
        loop {
            let body = match serde_json::to_vec(&AssignmentsRequest {
                known,
                wait_ms: ASSIGNMENT_WAIT_MS,
            }) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "could not encode the assignments request");
                    return;
                }
            };
            let call = self.active.call_manager(
                rpc::ASSIGNMENTS,
                body,
                Duration::from_millis(ASSIGNMENT_WAIT_MS + 5_000),
            );
            let reply = tokio::select! {
                r = call => r,
                _ = stop.changed() => break,
            };
            let resp: AssignmentsResponse = match reply
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice(&b).map_err(anyhow::Error::from))
            {
                Ok(r) => r,
                Err(e) => {
                    debug!(
                        error = format!("{e:#}"),
                        "assignments unavailable; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                }
            };
            known = Some(resp.version);
            self.reconcile(resp.tasks, first).await;
            first = false;
        }
        debug!("assignment loop stopped");
    }

    /// Starts controllers for new tasks, passes desired states on, and cleans up containers
    /// of tasks the managers no longer hold.
    async fn reconcile(self: &Arc<Self>, tasks: Vec<Task>, first: bool) {
        let assigned: HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
        let mut spawn = Vec::new();
        {
            let Ok(mut ctl) = self.controllers.lock() else {
                return;
            };
            for t in &tasks {
                if let Some(c) = ctl.get(&t.id) {
                    c.desired.send_if_modified(|d| {
                        if t.desired_state > *d {
                            *d = t.desired_state;
                            true
                        } else {
                            false
                        }
                    });
                } else if !t.status.state.is_terminal() || first {
                    let (tx, rx) = watch::channel(t.desired_state);
                    ctl.insert(t.id.clone(), Controller { desired: tx });
                    spawn.push((t.clone(), rx));
                }
            }
            // Tasks the store dropped: their controllers remove the container.
            ctl.retain(|id, c| {
                if assigned.contains(id) {
                    true
                } else {
                    c.desired.send_replace(TaskState::Remove);
                    false
                }
            });
        }
        for (t, rx) in spawn {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.run_task(t, rx).await });
        }
        // Containers on disk with no task at all: left over from a task deleted while this
        // node was away (looked for at the start), or a finished task the managers dropped.
        let dropped = match self.last_assigned.lock() {
            Ok(mut last) => {
                let dropped = last.iter().any(|id| !assigned.contains(id));
                *last = assigned.clone();
                dropped
            }
            Err(_) => true,
        };
        if !first && !dropped {
            return;
        }
        let engine = Arc::clone(&self.engine);
        let orphans: Vec<String> = match engine.container_ids().await {
            Ok(ids) => ids
                .into_iter()
                .filter(|id| !assigned.contains(id))
                .collect(),
            Err(e) => {
                warn!(error = format!("{e:#}"), "could not list containers");
                Vec::new()
            }
        };
        for id in orphans {
            info!(container = %id, "removing a container no task owns");
            if let Err(e) = self.engine.destroy(&id, Duration::from_secs(10)).await {
                warn!(container = %id, error = format!("{e:#}"), "could not remove container");
            }
            self.delete_netns(&id).await;
        }
    }

    fn status(&self, state: TaskState, message: impl Into<String>) -> TaskStatus {
        TaskStatus {
            state,
            timestamp: now_ms(),
            message: message.into(),
            ..Default::default()
        }
    }

    /// Drives one task to its end, then waits for the word to remove it.
    async fn run_task(self: Arc<Self>, task: Task, mut desired: watch::Receiver<TaskState>) {
        let id = task.id.clone();
        let last = self.drive(&task, &mut desired).await;
        if let Some(st) = last {
            self.report(&id, st);
        }
        self.delete_netns(&id).await;
        // Keep the container (and its logs) until the task is removed.
        loop {
            if *desired.borrow() >= TaskState::Remove {
                break;
            }
            if desired.changed().await.is_err() {
                break;
            }
        }
        if let Err(e) = self.engine.destroy(&id, Duration::from_secs(0)).await {
            warn!(task = %id, error = format!("{e:#}"), "could not remove the task's container");
        }
        if let Ok(mut ctl) = self.controllers.lock()
            && ctl.get(&id).is_some_and(|c| c.desired.is_closed())
        {
            ctl.remove(&id);
        }
        debug!(task = %id, "task controller done");
    }

    /// The task's life up to its final state (returned, to be reported).
    async fn drive(
        self: &Arc<Self>,
        task: &Task,
        desired: &mut watch::Receiver<TaskState>,
    ) -> Option<TaskStatus> {
        let id = &task.id;
        // Re-adoption after a restart of meshd.
        match self.engine.run_state(id).await {
            RunState::Running { pid } => {
                info!(task = %id, pid, "re-adopted a running container");
                let netns = mesh_sandbox::netns_path(&self.active.net().task_netns_name(id));
                let _dns = if task.networks.is_empty() {
                    None
                } else {
                    self.serve_dns(task, &netns)
                        .await
                        .map_err(|e| warn!(task = %id, error = format!("{e:#}"), "no DNS for a re-adopted task"))
                        .ok()
                };
                if task.status.state < TaskState::Running {
                    let mut st = self.status(TaskState::Running, "started");
                    st.pid = pid;
                    st.container_id = id.clone();
                    self.report(id, st);
                }
                return self.monitor(task, desired).await;
            }
            RunState::Exited(exit) => return Some(self.exit_status(task, exit)),
            RunState::Created | RunState::Missing => {}
        }
        if task.status.state.is_terminal() {
            return None;
        }
        if *desired.borrow() > TaskState::Running {
            return Some(self.status(TaskState::Shutdown, "shut down before it started"));
        }
        self.report(id, self.status(TaskState::Accepted, "accepted"));
        self.report(id, self.status(TaskState::Preparing, "preparing"));
        let image = &task.spec.container.image;
        if !self.engine.has_image(image).await {
            let mut st = self.status(TaskState::Rejected, "rejected");
            st.err = format!(
                "image {image} is not present on node {}; load it there with `swarm image load`",
                self.hostname
            );
            return Some(st);
        }
        if let Err(e) = self.plumb(task).await {
            let mut st = self.status(TaskState::Rejected, "rejected");
            st.err = format!("network: {e:#}");
            return Some(st);
        }
        let netns = mesh_sandbox::netns_path(&self.active.net().task_netns_name(id));
        // The task's resolver at 127.0.0.11, answering for its networks; it lives as long as
        // this controller drives the task.
        let _dns = if task.networks.is_empty() {
            None
        } else {
            match self.serve_dns(task, &netns).await {
                Ok(h) => Some(h),
                Err(e) => {
                    let mut st = self.status(TaskState::Rejected, "rejected");
                    st.err = format!("dns: {e:#}");
                    return Some(st);
                }
            }
        };
        let prepared = Prepared {
            dns: !task.networks.is_empty(),
            netns,
            hostname: task
                .spec
                .container
                .hostname
                .clone()
                .unwrap_or_else(|| id.get(..12).unwrap_or(id).to_string()),
        };
        if let Err(e) = self.engine.create(task, &prepared).await {
            let mut st = self.status(TaskState::Rejected, "rejected");
            st.err = format!("{e:#}");
            return Some(st);
        }
        self.report(id, self.status(TaskState::Ready, "ready"));
        if *desired.borrow() > TaskState::Running {
            return Some(self.status(TaskState::Shutdown, "shut down before it started"));
        }
        self.report(id, self.status(TaskState::Starting, "starting"));
        match self.engine.start(id).await {
            Ok(pid) => {
                let mut st = self.status(TaskState::Running, "started");
                st.pid = pid;
                st.container_id = id.clone();
                if task.spec.container.healthcheck.is_some() {
                    st.health = Health::Starting;
                }
                self.report(id, st);
            }
            Err(e) => {
                let mut st = self.status(TaskState::Failed, "starting container failed");
                st.err = format!("{e:#}");
                return Some(st);
            }
        }
        self.monitor(task, desired).await
    }

    fn exit_status(&self, task: &Task, exit: Exit) -> TaskStatus {
        let _ = task;
        if exit.code == 0 {
            let mut st = self.status(TaskState::Complete, "finished");
            st.exit_code = Some(0);
            st
        } else {
            let mut st = self.status(TaskState::Failed, "task failed");
            st.exit_code = Some(exit.code);
            st.err = format!("task: non-zero exit ({})", exit.code);
            st
        }
    }

    /// Watches a running task: its exit, its health, and the desired state.
    async fn monitor(
        self: &Arc<Self>,
        task: &Task,
        desired: &mut watch::Receiver<TaskState>,
    ) -> Option<TaskStatus> {
        let id = &task.id;
        let grace = Duration::from_millis(task.spec.container.stop_grace_period_ms);
        let hc = task.spec.container.healthcheck.clone();
        let started = tokio::time::Instant::now();
        let mut health = if hc.is_some() {
            Health::Starting
        } else {
            Health::None
        };
        let mut failures = 0u32;
        let interval = hc
            .as_ref()
            .map(|h| Duration::from_millis(h.interval_ms.max(100)))
            .unwrap_or(Duration::from_secs(3600));
        let mut tick = tokio::time::interval_at(started + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let engine = Arc::clone(&self.engine);
        let wait_id = id.clone();
        let mut exited = tokio::spawn(async move { engine.wait(&wait_id).await });
        loop {
            if *desired.borrow() > TaskState::Running {
                if !task.networks.is_empty() || !task.host_ports.is_empty() {
                    // The managers took the task out of every node's rotation (VIPs, published
                    // ports, DNS) when they changed its desired state; the nodes apply that
                    // within a heartbeat. Only then is it told to stop; open connections go
                    // on until it exits or its grace period ends.
                    tokio::select! {
                        _ = tokio::time::sleep(MESH_DRAIN) => {}
                        _ = &mut exited => {}
                    }
                }
                exited.abort();
                let exit = self.engine.stop(id, grace).await;
                let mut st = self.status(TaskState::Shutdown, "shutdown");
                st.exit_code = exit.ok().map(|e| e.code);
                return Some(st);
            }
            tokio::select! {
                r = &mut exited => {
                    return Some(match r {
                        Ok(Ok(exit)) => self.exit_status(task, exit),
                        Ok(Err(e)) => {
                            let mut st = self.status(TaskState::Failed, "lost track of the container");
                            st.err = format!("{e:#}");
                            st
                        }
                        Err(e) => {
                            let mut st = self.status(TaskState::Failed, "lost track of the container");
                            st.err = e.to_string();
                            st
                        }
                    });
                }
                r = desired.changed() => {
                    if r.is_err() {
                        // The executor is going away (meshd stops): leave the container running.
                        exited.abort();
                        return None;
                    }
                }
                _ = tick.tick(), if hc.is_some() => {
                    let Some(h) = &hc else { continue };
                    let ok = self
                        .engine
                        .health_check(id, &h.cmd, Duration::from_millis(h.timeout_ms.max(100)))
                        .await;
                    let in_start_period = started.elapsed() < Duration::from_millis(h.start_period_ms);
                    let before = health;
                    if ok {
                        failures = 0;
                        health = Health::Healthy;
                    } else if !in_start_period {
                        failures += 1;
                        if failures >= h.retries.max(1) {
                            health = Health::Unhealthy;
                        }
                    }
                    if health != before {
                        info!(task = %id, health = health.as_str(), "task health changed");
                        if health == Health::Unhealthy {
                            exited.abort();
                            let exit = self.engine.stop(id, grace).await;
                            let mut st = self.status(TaskState::Failed, "unhealthy container");
                            st.err = "task: unhealthy container".into();
                            st.exit_code = exit.ok().map(|e| e.code);
                            st.health = Health::Unhealthy;
                            return Some(st);
                        }
                        let mut st = self.status(TaskState::Running, "started");
                        st.container_id = id.clone();
                        st.health = health;
                        self.report(id, st);
                    }
                }
            }
        }
    }

    /// Creates the task's namespace and waits for its interfaces.
    async fn plumb(&self, task: &Task) -> anyhow::Result<()> {
        let name = self.active.net().task_netns_name(&task.id);
        let n = name.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            mesh_sandbox::ensure_netns(&n)?;
            mesh_sandbox::set_link_up(&n, "lo", None)?;
            Ok(())
        })
        .await??;
        if task.networks.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + PLUMB_TIMEOUT;
        loop {
            self.sync_network().await;
            let path = mesh_sandbox::netns_path(&name);
            let want: Vec<String> = task.networks.iter().map(|a| a.ifname.clone()).collect();
            let missing = tokio::task::spawn_blocking(move || {
                mesh_sandbox::run_in_netns(&path, move || {
                    want.into_iter()
                        .filter(|i| nix::net::if_::if_nametoindex(i.as_str()).is_err())
                        .collect::<Vec<_>>()
                })
            })
            .await??;
            if missing.is_empty() {
                return self.route_via_ingress(task, &name).await;
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "interfaces {} did not appear in the task's namespace",
                    missing.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A task on the ingress network gets its default route through it: connections the
    /// routing mesh delivers keep the client's address, and the replies leave that way.
    async fn route_via_ingress(&self, task: &Task, netns_name: &str) -> anyhow::Result<()> {
        let Some((net, gateway)) = self.active.net().ingress_gateway() else {
            return Ok(());
        };
        let Some(a) = task.networks.iter().find(|a| a.network_id == net) else {
            return Ok(());
        };
        let path = mesh_sandbox::netns_path(netns_name);
        let ifname = a.ifname.clone();
        tokio::task::spawn_blocking(move || {
            mesh_sandbox::set_default_route(&path, gateway, &ifname)
        })
        .await?
        .with_context(|| format!("default route via the ingress network for task {}", task.id))?;
        Ok(())
    }

    /// Binds 127.0.0.11:53 (UDP and TCP) in the task's namespace and serves its networks'
    /// names there.
    async fn serve_dns(
        &self,
        task: &Task,
        netns: &std::path::Path,
    ) -> anyhow::Result<mesh_dns::EndpointHandle> {
        // Like Docker: the resolver listens on ports of its own and `127.0.0.11:53` is
        // translated to them, so the task's own programs may bind port 53 (a DNS service).
        // Only that traffic is tracked: the task's other connections cost no conntrack.
        let path = netns.to_path_buf();
        let (udp, tcp) = tokio::task::spawn_blocking(move || {
            mesh_sandbox::run_in_netns(&path, || -> std::io::Result<_> {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 11], 0));
                Ok((
                    std::net::UdpSocket::bind(addr)?,
                    std::net::TcpListener::bind(addr)?,
                ))
            })
        })
        .await???;
        let (uport, tport) = (udp.local_addr()?.port(), tcp.local_addr()?.port());
        let rules = format!(
            "table ip meshd_dns {{}}\ndelete table ip meshd_dns\n\
             table ip meshd_dns {{\n \
             chain raw_output {{\n  type filter hook output priority raw; policy accept;\n  \
             ip daddr != 127.0.0.11 ip saddr != 127.0.0.11 notrack\n }}\n \
             chain raw_prerouting {{\n  type filter hook prerouting priority raw; policy accept;\n  \
             ip daddr != 127.0.0.11 ip saddr != 127.0.0.11 notrack\n }}\n \
             chain output {{\n  type nat hook output priority -100; policy accept;\n  \
             ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:{uport}\n  \
             ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:{tport}\n }}\n}}\n"
        );
        let path = netns.to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let ns = std::fs::File::open(&path)?;
            mesh_sandbox::nft_in(&ns, &rules)
        })
        .await?
        .with_context(|| format!("port 53 of 127.0.0.11 for task {}", task.id))?;
        let networks: Vec<String> = task.networks.iter().map(|a| a.network_id.clone()).collect();
        Ok(self.active.net().resolver().serve(networks, udp, tcp)?)
    }

    async fn delete_netns(&self, task_id: &str) {
        let name = self.active.net().task_netns_name(task_id);
        let res = tokio::task::spawn_blocking(move || mesh_sandbox::delete_netns(&name)).await;
        if let Ok(Err(e)) = res {
            debug!(task = %task_id, error = %e, "could not delete the task's namespace");
        }
    }
}
