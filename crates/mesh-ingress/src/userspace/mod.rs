//! The userspace data path: the same behaviour as the eBPF path, with sockets.
//!
//! - **Published ports** (`plan.listeners`): a TCP listener or UDP socket on `0.0.0.0:port` in
//!   the namespace the mesh started in. Each TCP connection goes to the next backend
//!   round-robin; the backend socket is made in the listener's egress namespace (bound to its
//!   source address) and both sockets are relayed with `splice(2)`. A backend that fails to
//!   connect is tried no more for a while (passive health) and the next one is tried. UDP: one
//!   flow per client address, with its own connected socket to the backend, expiring when idle.
//! - **VIPs** (`plan.vips`): in each network's sandbox, the VIPs and the load-balancer address
//!   go on `lo` (so the sandbox answers ARP for them on `br0`), and an nftables TPROXY rule
//!   (table `inet meshd_vip`) steers every TCP and UDP packet to a VIP, whatever its port, to
//!   one transparent listener; a connection to `vip:P` is relayed to `backend:P` from the
//!   load-balancer address.
//!
//! Plan changes never cut open connections: a backend leaving the rotation only stops getting
//! new ones.
//!
//! ```no_run
//! use mesh_ingress::MeshPlan;
//! use mesh_ingress::userspace::{UserspaceConfig, UserspaceMesh};
//!
//! # fn main() -> Result<(), mesh_ingress::IngressError> {
//! let mesh = UserspaceMesh::start(UserspaceConfig::default())?;
//! let report = mesh.apply(&MeshPlan::default());
//! for failure in &report.failures {
//!     eprintln!("{failure}");
//! }
//! println!("{:?}", mesh.stats());
//! mesh.shutdown();
//! # Ok(())
//! # }
//! ```

mod flows;
mod netns;
pub mod proxy_v2;
pub mod reconcile;
mod relay;
mod rotation;
mod sock;
mod tcp;
mod udp;
mod vip;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UdpSocket};
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

pub use self::flows::FlowTable;
pub use self::rotation::Rotation;
pub use self::vip::{ADDR_TAG, NFT_TABLE};

use self::netns::{Netns, enter_home, in_netns};
use self::reconcile::{
    ListenerKey, diff, listener_needs_reopen, listeners_by_key, sandbox_needs_reopen,
    sandboxes_by_network,
};
use self::tcp::{PublishedTcp, TcpTarget, accept_loop};
use self::udp::{PublishedUdp, UdpTarget};
use self::vip::SandboxRuntime;
use crate::error::IngressError;
use crate::plan::{Listener, MeshPlan, Proto, VipSandbox};

/// Settings of the userspace data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserspaceConfig {
    /// Worker threads of the mesh's own runtime (default: the available parallelism).
    pub workers: usize,
    /// How long a backend gets to accept a connection before the next one is tried
    /// (default 500 ms).
    pub connect_timeout: Duration,
    /// How long a backend that failed stays out of rotation (default 2 s).
    pub eject_for: Duration,
    /// A UDP flow without traffic for this long is forgotten (default 30 s).
    pub udp_idle: Duration,
    /// Most UDP flows kept per published UDP port and per VIP sandbox; the least recently
    /// active goes when a new one comes (default 65536).
    pub max_udp_flows: usize,
    /// Listen backlog of the TCP listeners (default 4096; the kernel caps it at
    /// `net.core.somaxconn`).
    pub backlog: u32,
}

impl Default for UserspaceConfig {
    fn default() -> Self {
        UserspaceConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            connect_timeout: Duration::from_millis(500),
            eject_for: Duration::from_secs(2),
            udp_idle: Duration::from_secs(30),
            max_udp_flows: 65_536,
            backlog: 4096,
        }
    }
}

impl UserspaceConfig {
    /// Checks every setting, naming the wrong one and the fix.
    pub fn validate(&self) -> Result<(), IngressError> {
        if !(1..=1024).contains(&self.workers) {
            return Err(IngressError::invalid(
                "workers",
                format!("{} worker threads", self.workers),
                "use 1 to 1024 worker threads",
            ));
        }
        if self.connect_timeout < Duration::from_millis(1) {
            return Err(IngressError::invalid(
                "connect_timeout",
                format!("{:?} is too short", self.connect_timeout),
                "give backends at least 1 ms to accept (500 ms is the default)",
            ));
        }
        if self.udp_idle < Duration::from_millis(10) {
            return Err(IngressError::invalid(
                "udp_idle",
                format!("{:?} is too short", self.udp_idle),
                "keep idle UDP flows at least 10 ms (30 s is the default)",
            ));
        }
        if self.max_udp_flows == 0 {
            return Err(IngressError::invalid(
                "max_udp_flows",
                "0 flows",
                "allow at least 1 UDP flow per port (65536 is the default)",
            ));
        }
        if self.backlog == 0 {
            return Err(IngressError::invalid(
                "backlog",
                "0",
                "use a listen backlog of at least 1 (4096 is the default)",
            ));
        }
        Ok(())
    }
}

/// One part of a plan that could not be applied (the rest was).
#[derive(Debug)]
pub struct ApplyFailure {
    /// What it is, e.g. `port 22/tcp for service web`.
    pub item: String,
    /// Why it failed.
    pub error: IngressError,
}

impl fmt::Display for ApplyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.item, self.error)
    }
}

/// What [`UserspaceMesh::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// The whole plan was refused (invalid, or the mesh has stopped): nothing changed.
    pub refused: Option<IngressError>,
    /// Items opened (published ports, VIP sandboxes).
    pub opened: Vec<String>,
    /// Items closed.
    pub closed: Vec<String>,
    /// Items whose settings changed in place.
    pub updated: Vec<String>,
    /// Items that could not be applied; the rest was.
    pub failures: Vec<ApplyFailure>,
}

impl ApplyReport {
    fn refused(e: IngressError) -> Self {
        ApplyReport {
            refused: Some(e),
            ..ApplyReport::default()
        }
    }

    /// Whether the plan was applied entirely.
    pub fn is_complete(&self) -> bool {
        self.refused.is_none() && self.failures.is_empty()
    }
}

/// Figures of the userspace data path (shown by `swarm info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Published ports open (TCP and UDP).
    pub listeners: usize,
    /// VIP sandboxes served.
    pub vip_sandboxes: usize,
    /// TCP connections being relayed now.
    pub tcp_relays: usize,
    /// UDP flows alive now.
    pub udp_flows: usize,
    /// TCP connections accepted since the start.
    pub tcp_accepted: u64,
    /// Backend connections (or UDP sockets) that failed since the start.
    pub backend_failures: u64,
}

/// Live counters behind [`MeshStats`].
#[derive(Debug, Default)]
struct Counters {
    listeners: AtomicUsize,
    vip_sandboxes: AtomicUsize,
    tcp_relays: Arc<AtomicUsize>,
    udp_flows: Arc<AtomicUsize>,
    tcp_accepted: AtomicU64,
    backend_failures: AtomicU64,
}

/// Counts one live thing (a relay, a flow) while it exists.
#[derive(Debug)]
struct Gauge(Arc<AtomicUsize>);

impl Gauge {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(Arc::clone(counter))
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every task of the mesh shares.
#[derive(Debug)]
struct Ctx {
    /// The namespace the mesh started in; every runtime thread lives there.
    home: Arc<Netns>,
    cfg: UserspaceConfig,
    stats: Arc<Counters>,
}

/// Where backend sockets are made.
#[derive(Debug)]
struct EgressTarget {
    netns: Arc<Netns>,
    source: Option<Ipv4Addr>,
}

/// A published port being served.
#[derive(Debug)]
enum Published {
    Tcp {
        spec: Listener,
        port: Arc<PublishedTcp>,
        tasks: Vec<JoinHandle<()>>,
    },
    Udp {
        spec: Listener,
        port: Arc<PublishedUdp>,
        tasks: Vec<JoinHandle<()>>,
    },
}

impl Published {
    fn spec(&self) -> &Listener {
        match self {
            Published::Tcp { spec, .. } | Published::Udp { spec, .. } => spec,
        }
    }
}

fn listener_item(l: &Listener) -> String {
    format!("port {}/{} for service {}", l.port, l.proto, l.service)
}

fn sandbox_item(s: &VipSandbox) -> String {
    format!("VIPs of network {} in {}", s.network_id, s.netns.display())
}

fn backend_addrs(l: &Listener) -> Vec<SocketAddrV4> {
    l.backends.iter().map(|b| b.addr).collect()
}

enum Cmd {
    Apply(Box<MeshPlan>, mpsc::Sender<ApplyReport>),
    Shutdown(mpsc::Sender<()>),
}

/// The control thread's state: what is open, and the runtime it runs on.
struct Control {
    ctx: Arc<Ctx>,
    handle: Handle,
    listeners: BTreeMap<ListenerKey, Published>,
    sandboxes: BTreeMap<String, SandboxRuntime>,
}

impl Control {
    fn run(mut self, cmds: mpsc::Receiver<Cmd>) {
        let handle = self.handle.clone();
        let _rt = handle.enter();
        while let Ok(cmd) = cmds.recv() {
            match cmd {
                Cmd::Apply(plan, reply) => {
                    let report = self.apply(&plan);
                    let _ = reply.send(report);
                }
                Cmd::Shutdown(done) => {
                    let report = self.apply(&MeshPlan::default());
                    for f in &report.failures {
                        tracing::warn!(failure = %f, "cleanup at shutdown");
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
        // Every handle is gone without a shutdown: clean up all the same.
        let _ = self.apply(&MeshPlan::default());
    }

    /// Aborts tasks and waits until they are gone (so their sockets are closed).
    fn stop_tasks(&self, tasks: Vec<JoinHandle<()>>) {
        for t in &tasks {
            t.abort();
        }
        self.handle.block_on(async move {
            let wait = async {
                for t in tasks {
                    let _ = t.await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .is_err()
            {
                tracing::warn!("tasks of a closed listener did not stop within 5 s");
            }
        });
    }

    fn apply(&mut self, plan: &MeshPlan) -> ApplyReport {
        let mut report = ApplyReport::default();

        let have: BTreeMap<String, VipSandbox> = self
            .sandboxes
            .iter()
            .map(|(k, s)| (k.clone(), s.spec.clone()))
            .collect();
        let want = sandboxes_by_network(plan);
        let d = diff(&have, &want, sandbox_needs_reopen);
        for k in &d.close {
            if let Some(mut rt) = self.sandboxes.remove(k) {
                let item = sandbox_item(&rt.spec);
                self.stop_tasks(std::mem::take(&mut rt.tasks));
                match vip::close(rt) {
                    Ok(()) => report.closed.push(item),
                    Err(error) => report.failures.push(ApplyFailure { item, error }),
                }
            }
        }
        for k in &d.update {
            let (Some(rt), Some(spec)) = (self.sandboxes.get_mut(k), want.get(k)) else {
                continue;
            };
            match vip::update(&self.ctx, rt, spec) {
                Ok(()) => report.updated.push(sandbox_item(spec)),
                Err(error) => report.failures.push(ApplyFailure {
                    item: sandbox_item(spec),
                    error,
                }),
            }
        }
        for k in &d.open {
            let Some(spec) = want.get(k) else { continue };
            match vip::open(&self.ctx, spec) {
                Ok(rt) => {
                    self.sandboxes.insert(k.clone(), rt);
                    report.opened.push(sandbox_item(spec));
                }
                Err(error) => report.failures.push(ApplyFailure {
                    item: sandbox_item(spec),
                    error,
                }),
            }
        }

        let have: BTreeMap<ListenerKey, Listener> = self
            .listeners
            .iter()
            .map(|(k, p)| (*k, p.spec().clone()))
            .collect();
        let want = listeners_by_key(plan);
        let d = diff(&have, &want, listener_needs_reopen);
        for k in &d.close {
            if let Some(p) = self.listeners.remove(k) {
                report.closed.push(listener_item(p.spec()));
                self.close_published(p);
            }
        }
        for k in &d.update {
            let (Some(p), Some(l)) = (self.listeners.get_mut(k), want.get(k)) else {
                continue;
            };
            match update_published(p, l) {
                Ok(()) => report.updated.push(listener_item(l)),
                Err(error) => report.failures.push(ApplyFailure {
                    item: listener_item(l),
                    error,
                }),
            }
        }
        for k in &d.open {
            let Some(l) = want.get(k) else { continue };
            match self.open_published(l) {
                Ok(p) => {
                    self.listeners.insert(*k, p);
                    report.opened.push(listener_item(l));
                }
                Err(error) => report.failures.push(ApplyFailure {
                    item: listener_item(l),
                    error,
                }),
            }
        }

        let stats = &self.ctx.stats;
        stats
            .listeners
            .store(self.listeners.len(), Ordering::Relaxed);
        stats
            .vip_sandboxes
            .store(self.sandboxes.len(), Ordering::Relaxed);
        for f in &report.failures {
            tracing::warn!(failure = %f, "part of the mesh plan not applied");
        }
        if !(report.opened.is_empty() && report.closed.is_empty() && report.updated.is_empty()) {
            tracing::info!(
                opened = report.opened.len(),
                closed = report.closed.len(),
                updated = report.updated.len(),
                failed = report.failures.len(),
                "mesh plan applied"
            );
        }
        report
    }

    fn open_published(&self, l: &Listener) -> Result<Published, IngressError> {
        let ctx = &self.ctx;
        let egress = EgressTarget {
            netns: Arc::new(Netns::open(&l.egress.netns)?),
            source: l.egress.source,
        };
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, l.port);
        let rotation = Rotation::new(backend_addrs(l), ctx.cfg.eject_for);
        match l.proto {
            Proto::Tcp => {
                let listener = in_netns(&ctx.home, &ctx.home, || {
                    sock::tcp_listener(addr, ctx.cfg.backlog, false)
                })
                .and_then(TcpListener::from_std)
                .map_err(|e| IngressError::io(format!("listen on {addr}/tcp"), e))?;
                let port = Arc::new(PublishedTcp {
                    port: l.port,
                    target: ArcSwap::from_pointee(TcpTarget {
                        service: l.service.clone(),
                        egress,
                        proxy_protocol: l.proxy_protocol,
                    }),
                    rotation,
                });
                let (c, p) = (Arc::clone(ctx), Arc::clone(&port));
                let task = self.handle.spawn(accept_loop(
                    listener,
                    listener_item(l),
                    move |stream, peer| {
                        tcp::serve_published(Arc::clone(&c), Arc::clone(&p), stream, peer)
                    },
                ));
                tracing::info!(port = l.port, proto = "tcp", service = %l.service, backends = l.backends.len(), "published port open");
                Ok(Published::Tcp {
                    spec: l.clone(),
                    port,
                    tasks: vec![task],
                })
            }
            Proto::Udp => {
                let sock = in_netns(&ctx.home, &ctx.home, || sock::udp_listener(addr))
                    .and_then(UdpSocket::from_std)
                    .map_err(|e| IngressError::io(format!("bind {addr}/udp"), e))?;
                let flows = Arc::new(Mutex::new(FlowTable::new(
                    ctx.cfg.udp_idle,
                    ctx.cfg.max_udp_flows,
                )));
                let port = Arc::new(PublishedUdp {
                    port: l.port,
                    target: ArcSwap::from_pointee(UdpTarget {
                        service: l.service.clone(),
                        egress,
                    }),
                    rotation,
                    flows: Arc::clone(&flows),
                });
                let serve = self.handle.spawn(udp::serve_published(
                    Arc::clone(ctx),
                    Arc::clone(&port),
                    Arc::new(sock),
                ));
                let sweep = self.handle.spawn(udp::sweep(flows, ctx.cfg.udp_idle));
                tracing::info!(port = l.port, proto = "udp", service = %l.service, backends = l.backends.len(), "published port open");
                Ok(Published::Udp {
                    spec: l.clone(),
                    port,
                    tasks: vec![serve, sweep],
                })
            }
        }
    }

    fn close_published(&self, p: Published) {
        let spec = p.spec().clone();
        match p {
            Published::Tcp { tasks, .. } => self.stop_tasks(tasks),
            Published::Udp { port, tasks, .. } => {
                self.stop_tasks(tasks);
                let gone = match port.flows.lock() {
                    Ok(mut f) => f.drain(),
                    Err(poisoned) => poisoned.into_inner().drain(),
                };
                drop(gone);
            }
        }
        tracing::info!(port = spec.port, proto = %spec.proto, service = %spec.service, "published port closed");
    }
}

/// Applies new settings to an open published port: the socket stays, open connections keep
/// their backend. Nothing changes when the new egress namespace cannot be opened.
fn update_published(p: &mut Published, l: &Listener) -> Result<(), IngressError> {
    let egress = EgressTarget {
        netns: Arc::new(Netns::open(&l.egress.netns)?),
        source: l.egress.source,
    };
    match p {
        Published::Tcp { spec, port, .. } => {
            port.target.store(Arc::new(TcpTarget {
                service: l.service.clone(),
                egress,
                proxy_protocol: l.proxy_protocol,
            }));
            if spec.backends != l.backends {
                port.rotation.replace(backend_addrs(l));
            }
            *spec = l.clone();
        }
        Published::Udp { spec, port, .. } => {
            port.target.store(Arc::new(UdpTarget {
                service: l.service.clone(),
                egress,
            }));
            if spec.backends != l.backends {
                port.rotation.replace(backend_addrs(l));
            }
            *spec = l.clone();
        }
    }
    tracing::info!(port = l.port, proto = %l.proto, service = %l.service, backends = l.backends.len(), "published port updated");
    Ok(())
}

fn block_sigpipe() {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        tracing::warn!(error = %e, "cannot block SIGPIPE on a mesh thread");
    }
}

struct Inner {
    runtime: Runtime,
    cmds: mpsc::Sender<Cmd>,
    control: std::thread::JoinHandle<()>,
}

/// The userspace data path of the routing mesh, with its own runtime.
pub struct UserspaceMesh {
    inner: Option<Inner>,
    stats: Arc<Counters>,
}

impl fmt::Debug for UserspaceMesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserspaceMesh")
            .field("running", &self.inner.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

fn stopped() -> IngressError {
    IngressError::io(
        "apply the mesh plan",
        io::Error::other("the userspace mesh has been shut down"),
    )
}

impl UserspaceMesh {
    /// Starts the data path (serving nothing yet) with `cfg.workers` threads, in the calling
    /// thread's network namespace: published ports are opened there.
    pub fn start(cfg: UserspaceConfig) -> Result<Self, IngressError> {
        cfg.validate()?;
        let home = Arc::new(Netns::current()?);
        let thread_home = Arc::clone(&home);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.workers)
            .thread_name("mesh-ingress")
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) = enter_home(&thread_home) {
                    tracing::error!(error = %e, "a mesh thread cannot enter the mesh's network namespace");
                }
                block_sigpipe();
            })
            .build()
            .map_err(|e| IngressError::io("start the userspace mesh runtime", e))?;
        let stats = Arc::new(Counters::default());
        let ctx = Arc::new(Ctx {
            home,
            cfg: cfg.clone(),
            stats: Arc::clone(&stats),
        });
        let control = Control {
            ctx,
            handle: runtime.handle().clone(),
            listeners: BTreeMap::new(),
            sandboxes: BTreeMap::new(),
        };
        let (tx, rx) = mpsc::channel();
        let control = std::thread::Builder::new()
            .name("mesh-ingress-ctl".into())
            .spawn(move || control.run(rx))
            .map_err(|e| IngressError::io("start the userspace mesh control thread", e))?;
        tracing::info!(workers = cfg.workers, "userspace mesh started");
        Ok(UserspaceMesh {
            inner: Some(Inner {
                runtime,
                cmds: tx,
                control,
            }),
            stats,
        })
    }

    /// Validates `plan` (refusing it whole when it is invalid: nothing changes), then makes
    /// the mesh serve it: opens the new listeners and VIP sandboxes, closes those gone, swaps
    /// backend lists. Open connections are never cut. Items that fail are listed in the
    /// report; the rest is applied. Blocks the calling thread until done (it may be any
    /// thread, a runtime's worker included).
    pub fn apply(&self, plan: &MeshPlan) -> ApplyReport {
        if let Err(e) = plan.validate() {
            return ApplyReport::refused(e);
        }
        let Some(inner) = &self.inner else {
            return ApplyReport::refused(stopped());
        };
        let (tx, rx) = mpsc::channel();
        if inner
            .cmds
            .send(Cmd::Apply(Box::new(plan.clone()), tx))
            .is_err()
        {
            return ApplyReport::refused(stopped());
        }
        rx.recv()
            .unwrap_or_else(|_| ApplyReport::refused(stopped()))
    }

    /// The current figures.
    pub fn stats(&self) -> MeshStats {
        let s = &self.stats;
        MeshStats {
            listeners: s.listeners.load(Ordering::Relaxed),
            vip_sandboxes: s.vip_sandboxes.load(Ordering::Relaxed),
            tcp_relays: s.tcp_relays.load(Ordering::Relaxed),
            udp_flows: s.udp_flows.load(Ordering::Relaxed),
            tcp_accepted: s.tcp_accepted.load(Ordering::Relaxed),
            backend_failures: s.backend_failures.load(Ordering::Relaxed),
        }
    }

    /// Closes every listener, removes the VIP tables and addresses, and stops the runtime
    /// (the connections being relayed end).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        if inner.cmds.send(Cmd::Shutdown(tx)).is_ok() {
            let _ = rx.recv();
        }
        drop(inner.cmds);
        if inner.control.join().is_err() {
            tracing::error!("the userspace mesh control thread panicked");
        }
        if Handle::try_current().is_ok() {
            // Inside another runtime: blocking here is not allowed; the workers stop by
            // themselves.
            inner.runtime.shutdown_background();
        } else {
            inner.runtime.shutdown_timeout(Duration::from_secs(5));
        }
        tracing::info!("userspace mesh stopped");
    }
}

impl Drop for UserspaceMesh {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<UserspaceMesh>();
        shared::<ApplyReport>();
    }

    #[test]
    fn default_config_is_valid() {
        let c = UserspaceConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.eject_for, Duration::from_secs(2));
        assert_eq!(c.udp_idle, Duration::from_secs(30));
        assert_eq!(c.max_udp_flows, 65_536);
        assert!(c.workers >= 1);
    }

    #[test]
    fn bad_config_names_the_field() {
        let bad = |f: fn(&mut UserspaceConfig)| {
            let mut c = UserspaceConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.workers = 0).contains("invalid workers"));
        assert!(bad(|c| c.connect_timeout = Duration::ZERO).contains("invalid connect_timeout"));
        assert!(bad(|c| c.udp_idle = Duration::ZERO).contains("invalid udp_idle"));
        assert!(bad(|c| c.max_udp_flows = 0).contains("invalid max_udp_flows"));
        assert!(bad(|c| c.backlog = 0).contains("invalid backlog"));
    }

    #[test]
    fn failure_names_the_item() {
        let f = ApplyFailure {
            item: "port 22/tcp for service web".into(),
            error: IngressError::io(
                "listen on 0.0.0.0:22/tcp",
                io::Error::from(io::ErrorKind::AddrInUse),
            ),
        };
        let s = f.to_string();
        assert!(
            s.starts_with("port 22/tcp for service web: listen on 0.0.0.0:22/tcp"),
            "{s}"
        );
    }
}
