//! The daemon's lifecycle: inactive → (init | join) → active → (leave) → inactive.
//!
//! An active node always runs the transport and the node agent (heartbeats, certificate
//! renewal, role changes). A manager also runs its Raft store and the manager plane.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use mesh_api::api::{
    ErrorBody, ErrorKind, Info, InitRequest, InitResponse, JoinRequest, JoinResponse,
};
use mesh_api::{ClusterSpec, DispatcherConfig, NodeDescription, NodeRole};
use mesh_manager::manager::{InitParams, new_cluster, now_ms};
use mesh_manager::rpc::{self, codes};
use mesh_manager::{ClusterState, Command, Manager, ManagerConfig};
use mesh_pki::{JoinToken, NodeCredentials, NodeKey};
use mesh_store::{MemberInfo, RaftTransport, Store, StoreConfig, TransportError};
use mesh_transport::{Handler, Identity, Peer, RemoteError, Transport};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, parse_advertise, parse_listen};
use crate::engine::Engine;
use crate::local::{DataDir, LocalState};
use crate::network::NetRuntime;

/// Timeout of control-plane calls made on behalf of a user command.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

type ManagerSlot = RwLock<Option<Arc<Manager>>>;

/// The Raft store's settings: concurrent writes that arrive while entries are in flight share
/// one log entry (one fsync on every manager). `ClusterState` only uses the index as an object
/// version, and an entry is applied as one atomic step, so commands sharing it are fine.
fn store_config() -> StoreConfig {
    StoreConfig {
        batch_writes: true,
        ..StoreConfig::default()
    }
}

/// Routes RPCs arriving over QUIC to the manager plane, if this node runs one.
struct Router {
    slot: Arc<ManagerSlot>,
    engine: Arc<Engine>,
}

impl Handler for Router {
    fn handle(
        &self,
        peer: Peer,
        method: String,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, RemoteError>> {
        let manager = self.slot.read().ok().and_then(|g| g.clone());
        let engine = Arc::clone(&self.engine);
        Box::pin(async move {
            if method == rpc::TASK_LOGS {
                return task_logs_rpc(&engine, &peer, &body).await;
            }
            match manager {
                Some(m) => m.handle_rpc(peer, &method, body).await,
                None if method == rpc::PING => Ok(b"\"pong\"".to_vec()),
                None => Err(RemoteError {
                    code: codes::NOT_MANAGER.into(),
                    message: "this node is not a manager".into(),
                }),
            }
        })
    }
}

/// Answers a manager's request for a piece of a local task's output.
async fn task_logs_rpc(engine: &Engine, peer: &Peer, body: &[u8]) -> Result<Vec<u8>, RemoteError> {
    let invalid = |m: String| RemoteError {
        code: codes::INVALID.into(),
        message: m,
    };
    match peer {
        Peer::Node {
            role: NodeRole::Manager,
            ..
        } => {}
        _ => {
            return Err(RemoteError {
                code: codes::PERMISSION_DENIED.into(),
                message: "task logs are served to managers only".into(),
            });
        }
    }
    let req: mesh_manager::rpc::TaskLogsRequest =
        serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let chunk = engine
        .read_logs(&req.task_id, req.query)
        .await
        .map_err(|e| RemoteError {
            code: codes::NOT_FOUND.into(),
            message: format!("{e:#}"),
        })?;
    serde_json::to_vec(&chunk).map_err(|e| invalid(e.to_string()))
}

/// Carries Raft traffic over the node transport.
struct RaftNet {
    transport: Arc<Transport>,
}

impl RaftTransport for RaftNet {
    fn call(
        &self,
        target: u64,
        member: &MemberInfo,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let t = Arc::clone(&self.transport);
        let addr = member.addr.clone();
        Box::pin(async move {
            let addr: SocketAddr = addr.parse().map_err(|e| TransportError::Other {
                target,
                reason: format!("bad member address {addr:?}: {e}"),
            })?;
            t.call(addr, rpc::RAFT, payload, timeout)
                .await
                .map_err(|e| match e {
                    // Never reached the store (no connection, or refused by the
                    // receiving node before its store saw it): safe to retry.
                    mesh_transport::CallError::Connect(reason) => {
                        TransportError::Unreachable { target, reason }
                    }
                    mesh_transport::CallError::Remote(r) => TransportError::Unreachable {
                        target,
                        reason: format!("{}: {}", r.code, r.message),
                    },
                    mesh_transport::CallError::Timeout => TransportError::Timeout {
                        target,
                        after: timeout,
                    },
                    // May have been delivered.
                    other => TransportError::Other {
                        target,
                        reason: other.to_string(),
                    },
                })
        })
    }
}

/// A node that is part of a cluster.
pub struct Active {
    state: Mutex<LocalState>,
    creds: RwLock<NodeCredentials>,
    transport: Arc<Transport>,
    slot: Arc<ManagerSlot>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    net: Arc<NetRuntime>,
}

impl Active {
    fn manager(&self) -> Option<Arc<Manager>> {
        self.slot.read().ok().and_then(|g| g.clone())
    }

    fn local(&self) -> LocalState {
        match self.state.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn creds(&self) -> NodeCredentials {
        match self.creds.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// The daemon.
pub struct Daemon {
    cfg: Config,
    dir: DataDir,
    /// Serialises init, join and leave.
    lifecycle: tokio::sync::Mutex<()>,
    active: RwLock<Option<Arc<Active>>>,
    last_error: Mutex<String>,
    engine: Arc<Engine>,
}

fn identity(c: &NodeCredentials) -> Identity {
    Identity {
        ca_cert_pem: c.ca_cert_pem.clone(),
        cert_pem: c.cert_pem.clone(),
        key_pem: c.key_pem.clone(),
    }
}

fn api_err(kind: ErrorKind, msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(kind, msg)
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    api_err(ErrorKind::Internal, e.to_string())
}

pub(crate) fn description(cfg: &Config) -> NodeDescription {
    NodeDescription {
        hostname: cfg.hostname.clone(),
        os: std::env::consts::OS.to_string(),
        architecture: std::env::consts::ARCH.to_string(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        nano_cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u64 * 1_000_000_000)
            .unwrap_or(0),
        memory_bytes: nix::sys::sysinfo::sysinfo()
            .map(|s| s.ram_total())
            .unwrap_or(0),
    }
}

const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"swarm init\" or \"swarm join\" to connect this node to swarm and try again.";
const WORKER_NODE: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

impl Daemon {
    /// A daemon with `cfg`; call [`Daemon::resume`] next.
    pub fn new(cfg: Config) -> anyhow::Result<Arc<Self>> {
        let dir = DataDir::new(&cfg.data_dir);
        let engine = Arc::new(
            Engine::open(&cfg.data_dir.join("runtime"))
                .context("opening the image store and container runtime")?,
        );
        Ok(Arc::new(Self {
            cfg,
            dir,
            lifecycle: tokio::sync::Mutex::new(()),
            active: RwLock::new(None),
            last_error: Mutex::new(String::new()),
            engine,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The image store and container runtime.
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) fn active(&self) -> Option<Arc<Active>> {
        self.active.read().ok().and_then(|g| g.clone())
    }

    /// The manager plane, or the error a client should see.
    pub fn manager(&self) -> Result<Arc<Manager>, ErrorBody> {
        let Some(a) = self.active() else {
            return Err(api_err(ErrorKind::NotManager, NOT_IN_SWARM));
        };
        a.manager()
            .ok_or_else(|| api_err(ErrorKind::NotManager, WORKER_NODE))
    }

    /// This node's TLS identity, when it is part of a cluster.
    pub fn identity(&self) -> Option<Identity> {
        self.active().map(|a| identity(&a.creds()))
    }

    /// This node's cluster ID, when it is part of a cluster.
    pub fn cluster_id(&self) -> Option<String> {
        self.active().map(|a| a.local().cluster_id)
    }

    /// Picks up a cluster membership saved in the data dir (after a restart).
    pub async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        let _g = self.lifecycle.lock().await;
        let Some(state) = self.dir.load_state()? else {
            info!("not part of a cluster yet: waiting for `swarm init` or `swarm join`");
            return Ok(());
        };
        let creds = NodeCredentials::load(&self.dir.certs())
            .with_context(|| format!("reading certificates in {}", self.dir.certs().display()))?
            .with_context(|| {
                format!(
                    "{} says this node is in cluster {} but {} holds no certificates; remove the data dir to start afresh",
                    self.dir.state_file().display(),
                    state.cluster_id,
                    self.dir.certs().display()
                )
            })?;
        info!(node = %state.node_id, cluster = %state.cluster_id, "resuming cluster membership");
        let run_manager = self.dir.raft().exists();
        self.activate(state, creds, run_manager).await?;
        Ok(())
    }

    async fn activate(
        self: &Arc<Self>,
        state: LocalState,
        creds: NodeCredentials,
        run_manager: bool,
    ) -> anyhow::Result<Arc<Active>> {
        let listen = parse_listen("--listen-addr", &state.listen_addr, 2377)?;
        let slot: Arc<ManagerSlot> = Arc::new(RwLock::new(None));
        let transport = Arc::new(
            Transport::bind(
                listen,
                identity(&creds),
                Arc::new(Router {
                    slot: Arc::clone(&slot),
                    engine: Arc::clone(&self.engine),
                }),
            )
            .with_context(|| format!("listening on {listen} (--listen-addr)"))?,
        );
        let (stop, _) = watch::channel(false);
        let net = Arc::new(
            NetRuntime::start(
                &state.node_id,
                &self.cfg.data_dir,
                self.cfg.data_port,
                self.cfg.sandbox_prefix.as_deref(),
                &self.cfg.dns_upstreams,
                self.cfg.dataplane,
            )
            .context("starting the overlay data plane")?,
        );
        let active = Arc::new(Active {
            state: Mutex::new(state),
            creds: RwLock::new(creds),
            transport,
            slot,
            stop,
            tasks: Mutex::new(Vec::new()),
            net,
        });
        if run_manager {
            self.start_manager(&active).await?;
        }
        if let Ok(mut g) = self.active.write() {
            *g = Some(Arc::clone(&active));
        }
        let handle = tokio::spawn(crate::agent::run(Arc::clone(self), Arc::clone(&active)));
        let prober = tokio::spawn(crate::peers::run(
            Arc::clone(&active.net),
            mesh_ingress::MESH_PORT,
            active.local().advertise_addr.parse().ok(),
        ));
        let executor = crate::executor::Executor::start(
            Arc::clone(&self.engine),
            Arc::clone(&active),
            self.cfg.hostname.clone(),
        );
        if let Ok(mut t) = active.tasks.lock() {
            t.push(handle);
            t.push(prober);
            t.extend(executor);
        }
        Ok(active)
    }

    pub(crate) async fn start_manager(&self, active: &Arc<Active>) -> anyhow::Result<Arc<Manager>> {
        if let Some(m) = active.manager() {
            return Ok(m);
        }
        let st = active.local();
        let store: Store<ClusterState> = Store::open(
            &self.dir.raft(),
            st.raft_id,
            store_config(),
            Arc::new(RaftNet {
                transport: Arc::clone(&active.transport),
            }),
        )
        .await
        .with_context(|| format!("opening the Raft store in {}", self.dir.raft().display()))?;
        Ok(self.install_manager(active, store))
    }

    fn install_manager(&self, active: &Arc<Active>, store: Store<ClusterState>) -> Arc<Manager> {
        let st = active.local();
        let control_addr = format!("{}:{}", st.advertise_addr, self.listen_port(&st));
        let m = Manager::new(
            store,
            Arc::clone(&active.transport),
            ManagerConfig {
                node_id: st.node_id.clone(),
                cluster_id: st.cluster_id.clone(),
                raft_id: st.raft_id,
                control_addr,
                tick: Duration::from_millis(100),
            },
        );
        let h = m.spawn();
        if let Ok(mut t) = active.tasks.lock() {
            t.push(h);
        }
        if let Ok(mut g) = active.slot.write() {
            *g = Some(Arc::clone(&m));
        }
        info!("manager plane started");
        m
    }

    pub(crate) async fn stop_manager(&self, active: &Arc<Active>, wipe: bool) {
        let m = active.slot.write().ok().and_then(|mut g| g.take());
        if let Some(m) = m {
            m.stop();
            if let Err(e) = m.store().shutdown().await {
                warn!(error = %e, "Raft store did not shut down cleanly");
            }
            info!("manager plane stopped");
        }
        if wipe
            && let Err(e) = std::fs::remove_dir_all(self.dir.raft())
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(error = %e, "could not remove the Raft directory");
        }
    }

    fn listen_port(&self, st: &LocalState) -> u16 {
        st.listen_addr
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .unwrap_or(self.cfg.listen_addr.port())
    }

    pub(crate) fn data_dir(&self) -> &DataDir {
        &self.dir
    }

    pub(crate) fn set_error(&self, e: impl Into<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e.into();
        }
    }

    fn advertise(&self, given: Option<&str>) -> Result<IpAddr, ErrorBody> {
        match given {
            Some(s) if !s.is_empty() => parse_advertise(s).map_err(|e| {
                api_err(ErrorKind::InvalidArgument, e.to_string())
            }),
            _ => self.cfg.advertise_addr.ok_or_else(|| {
                api_err(
                    ErrorKind::InvalidArgument,
                    "missing --advertise-addr: this node does not know which of its addresses other nodes can reach; pass --advertise-addr IP to `swarm init`/`swarm join` or to meshd",
                )
            }),
        }
    }

    fn listen(&self, given: Option<&str>) -> Result<SocketAddr, ErrorBody> {
        match given {
            Some(s) if !s.is_empty() => parse_listen("--listen-addr", s, 2377)
                .map_err(|e| api_err(ErrorKind::InvalidArgument, e.to_string())),
            _ => Ok(self.cfg.listen_addr),
        }
    }

    /// `swarm init`.
    pub async fn init(self: &Arc<Self>, req: InitRequest) -> Result<InitResponse, ErrorBody> {
        let _g = self.lifecycle.lock().await;
        if req.force_new_cluster {
            return self.force_new_cluster().await;
        }
        if let Some(a) = self.active() {
            let st = a.local();
            return Err(api_err(
                ErrorKind::Conflict,
                format!(
                    "This node is already part of a swarm (cluster {}). Use \"swarm leave\" to leave this swarm and join another one.",
                    st.cluster_id
                ),
            ));
        }
        let advertise = self.advertise(req.advertise_addr.as_deref())?;
        let listen = self.listen(req.listen_addr.as_deref())?;
        let dispatcher = DispatcherConfig {
            heartbeat_period_ms: req
                .heartbeat_period_ms
                .unwrap_or(mesh_api::cluster::DEFAULT_HEARTBEAT_PERIOD_MS),
            node_down_after_ms: req
                .node_down_after_ms
                .unwrap_or(mesh_api::cluster::DEFAULT_NODE_DOWN_AFTER_MS),
        };
        dispatcher.validate()?;
        let expiry = req
            .cert_expiry_ms
            .unwrap_or(mesh_api::cluster::DEFAULT_NODE_CERT_EXPIRY_MS);
        if expiry < 10_000 {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                "invalid --cert-expiry: shorter than 10 seconds; use at least 10s (default 90d)",
            ));
        }
        let (pools, mask_len) = address_pools(&req)?;
        let node_id = mesh_api::new_id();
        let raft_id = new_raft_id();
        let now = now_ms();
        let control_addr = SocketAddr::new(advertise, listen.port()).to_string();
        let nc = new_cluster(InitParams {
            node_id: node_id.clone(),
            raft_id,
            description: description(&self.cfg),
            addr: advertise.to_string(),
            control_addr: control_addr.clone(),
            data_port: self.cfg.data_port,
            spec: ClusterSpec {
                dispatcher,
                node_cert_expiry_ms: expiry,
                default_addr_pool: pools,
                default_addr_pool_mask_len: mask_len,
            },
            now,
        })
        .map_err(ErrorBody::from)?;
        let key = NodeKey::generate().map_err(internal)?;
        let csr = key.csr_pem().map_err(internal)?;
        let (not_before, validity) = mesh_manager::manager::cert_window(now, expiry);
        let cert_pem = mesh_pki::sign_node_cert(
            &nc.ca,
            &csr,
            &node_id,
            NodeRole::Manager,
            &nc.cluster.id,
            not_before,
            validity,
        )
        .map_err(internal)?;
        let creds = NodeCredentials {
            ca_cert_pem: nc.ca.cert_pem.clone(),
            cert_pem,
            key_pem: key.key_pem(),
        };
        let state = LocalState {
            node_id: node_id.clone(),
            cluster_id: nc.cluster.id.clone(),
            raft_id,
            role: NodeRole::Manager,
            managers: vec![control_addr.clone()],
            advertise_addr: advertise.to_string(),
            listen_addr: listen.to_string(),
        };
        let worker_token = nc.cluster.join_tokens.worker.clone();
        let cluster_id = nc.cluster.id.clone();
        let result: anyhow::Result<()> = async {
            creds.save(&self.dir.certs()).with_context(|| {
                format!("saving certificates in {}", self.dir.certs().display())
            })?;
            let active = self.activate(state.clone(), creds, true).await?;
            let m = active.manager().context("manager plane did not start")?;
            m.store()
                .bootstrap(MemberInfo {
                    addr: control_addr.clone(),
                    name: node_id.clone(),
                })
                .await
                .context("bootstrapping Raft")?;
            m.write(Command::CreateCluster {
                cluster: Box::new(nc.cluster),
                node: Box::new(nc.node),
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("storing the new cluster")?;
            self.dir.save_state(&state)?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            error!(error = format!("{e:#}"), "swarm init failed; undoing");
            self.deactivate(true).await;
            let _ = self.dir.wipe();
            return Err(internal(format!("swarm init failed: {e:#}")));
        }
        info!(node = %node_id, cluster = %cluster_id, "initialised a new cluster");
        Ok(InitResponse {
            node_id,
            cluster_id,
            worker_token,
            manager_addr: control_addr,
        })
    }

    async fn force_new_cluster(self: &Arc<Self>) -> Result<InitResponse, ErrorBody> {
        let Some(active) = self.active() else {
            return Err(api_err(
                ErrorKind::FailedPrecondition,
                "--force-new-cluster needs a node that was a manager of a cluster; this node holds no cluster state",
            ));
        };
        if active.manager().is_none() {
            return Err(api_err(
                ErrorKind::FailedPrecondition,
                "--force-new-cluster must run on a manager; this node is a worker",
            ));
        }
        let st = active.local();
        self.stop_manager(&active, false).await;
        let control_addr = format!("{}:{}", st.advertise_addr, self.listen_port(&st));
        let store: Store<ClusterState> = Store::force_new_cluster(
            &self.dir.raft(),
            st.raft_id,
            MemberInfo {
                addr: control_addr.clone(),
                name: st.node_id.clone(),
            },
            store_config(),
            Arc::new(RaftNet {
                transport: Arc::clone(&active.transport),
            }),
        )
        .await
        .map_err(|e| internal(format!("recovering the cluster state: {e}")))?;
        let m = self.install_manager(&active, store);
        m.write(Command::ForceNewCluster {
            keep: st.node_id.clone(),
            now: now_ms(),
        })
        .await
        .map_err(ErrorBody::from)?;
        let token = m.join_token(NodeRole::Worker).map_err(ErrorBody::from)?;
        warn!("forced a new single-manager cluster from this node's state");
        Ok(InitResponse {
            node_id: st.node_id,
            cluster_id: st.cluster_id,
            worker_token: token,
            manager_addr: control_addr,
        })
    }

    /// `swarm join`.
    pub async fn join(self: &Arc<Self>, req: JoinRequest) -> Result<JoinResponse, ErrorBody> {
        let _g = self.lifecycle.lock().await;
        if self.active().is_some() {
            return Err(api_err(
                ErrorKind::Conflict,
                "This node is already part of a swarm. Use \"swarm leave\" to leave this swarm and join another one.",
            ));
        }
        let token = JoinToken::from_str(req.token.trim())
            .map_err(|e| api_err(ErrorKind::InvalidArgument, e.to_string()))?;
        let remote = resolve_remote(&req.remote_addr)?;
        let advertise = self.advertise(req.advertise_addr.as_deref())?;
        let listen = self.listen(req.listen_addr.as_deref())?;

        // Pin the cluster's root CA by the digest in the token before trusting anything.
        let ca_pem = mesh_transport::fetch_ca_insecure(remote, CALL_TIMEOUT)
            .await
            .map_err(|e| {
                api_err(
                    ErrorKind::FailedPrecondition,
                    format!("cannot reach a manager at {remote}: {e}; check the address and that UDP port {} is open", remote.port()),
                )
            })?;
        let digest = mesh_pki::ca_digest(&ca_pem).map_err(internal)?;
        if digest != token.digest {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "invalid --token: the manager at {remote} presents a root CA whose digest ({digest}) does not match the token's ({}); refusing to join. Check the address, or get a token from this cluster with `swarm join-token worker`",
                    token.digest
                ),
            ));
        }
        let key = NodeKey::generate().map_err(internal)?;
        let raft_id = new_raft_id();
        let control_addr = SocketAddr::new(advertise, listen.port()).to_string();
        let body = serde_json::to_vec(&rpc::JoinRequest {
            token: req.token.trim().to_string(),
            csr_pem: key.csr_pem().map_err(internal)?,
            description: description(&self.cfg),
            addr: advertise.to_string(),
            control_addr: control_addr.clone(),
            data_port: self.cfg.data_port,
            raft_id,
        })
        .map_err(internal)?;
        let reply =
            mesh_transport::call_anonymous(remote, &ca_pem, rpc::JOIN, body, CALL_TIMEOUT * 2)
                .await
                .map_err(|e| match e {
                    mesh_transport::CallError::Remote(r)
                        if r.code == codes::BAD_TOKEN || r.code == codes::INVALID =>
                    {
                        api_err(ErrorKind::InvalidArgument, r.message)
                    }
                    mesh_transport::CallError::Remote(r) if r.code == codes::NO_QUORUM => {
                        api_err(ErrorKind::NoQuorum, r.message)
                    }
                    other => api_err(
                        ErrorKind::FailedPrecondition,
                        format!("joining through {remote}: {other}"),
                    ),
                })?;
        let resp: rpc::JoinResponse = serde_json::from_slice(&reply).map_err(internal)?;
        let creds = NodeCredentials {
            ca_cert_pem: ca_pem,
            cert_pem: resp.cert_pem,
            key_pem: key.key_pem(),
        };
        let mut managers = resp.managers;
        if managers.is_empty() {
            managers.push(remote.to_string());
        }
        let state = LocalState {
            node_id: resp.node_id.clone(),
            cluster_id: resp.cluster_id.clone(),
            raft_id,
            role: resp.role,
            managers,
            advertise_addr: advertise.to_string(),
            listen_addr: listen.to_string(),
        };
        let res: anyhow::Result<()> = async {
            creds
                .save(&self.dir.certs())
                .context("saving certificates")?;
            self.dir.save_state(&state)?;
            self.activate(state.clone(), creds, resp.role == NodeRole::Manager)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = res {
            self.deactivate(true).await;
            let _ = self.dir.wipe();
            return Err(internal(format!("joined, but could not start: {e:#}")));
        }
        info!(node = %resp.node_id, role = %resp.role, "joined the cluster");
        Ok(JoinResponse {
            node_id: resp.node_id,
            role: resp.role,
        })
    }

    /// `swarm leave`.
    pub async fn leave(self: &Arc<Self>, force: bool) -> Result<(), ErrorBody> {
        let _g = self.lifecycle.lock().await;
        let Some(active) = self.active() else {
            return Err(api_err(
                ErrorKind::FailedPrecondition,
                "This node is not part of a swarm",
            ));
        };
        if let Some(m) = active.manager()
            && !force
        {
            let managers = m.store().status().voters.len();
            return Err(api_err(
                ErrorKind::FailedPrecondition,
                format!(
                    "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {} managers out of {managers}. Demote it first with `swarm node demote`, or use `swarm leave --force` to ignore this message.",
                    managers.saturating_sub(1)
                ),
            ));
        }
        // Tell the managers, best effort: the node shows down at once instead of after
        // the heartbeat timeout.
        for addr in active.local().managers {
            if let Ok(a) = addr.parse::<SocketAddr>()
                && active
                    .transport
                    .call(a, rpc::LEAVE, Vec::new(), Duration::from_secs(2))
                    .await
                    .is_ok()
            {
                break;
            }
        }
        self.deactivate(true).await;
        self.dir.wipe().map_err(internal)?;
        info!("left the swarm");
        Ok(())
    }

    /// Stops everything of the active phase (transport, agent, manager, overlay).
    /// With `remove`, the overlay's sandboxes go too (leaving the cluster).
    pub async fn deactivate(&self, remove: bool) {
        let active = self.active.write().ok().and_then(|mut g| g.take());
        let Some(active) = active else { return };
        let _ = active.stop.send(true);
        if remove {
            // Leaving the cluster: this node's containers go with it.
            self.engine.destroy_all().await;
        }
        let net = Arc::clone(&active.net);
        let _ = tokio::task::spawn_blocking(move || net.stop(remove)).await;
        self.stop_manager(&active, false).await;
        let tasks: Vec<_> = active
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            t.abort();
        }
        active.transport.close().await;
    }

    /// `swarm network connect`: an endpoint of `network` on this node.
    pub async fn connect(
        &self,
        network: &str,
        req: mesh_api::ConnectRequest,
    ) -> Result<mesh_api::ConnectResponse, ErrorBody> {
        let Some(active) = self.active() else {
            return Err(api_err(ErrorKind::NotManager, NOT_IN_SWARM));
        };
        let owner = match (&req.netns, &req.wg_public_key) {
            (Some(path), None) => {
                let p = std::path::Path::new(path);
                if !mesh_sandbox::netns_exists(p) {
                    return Err(api_err(
                        ErrorKind::InvalidArgument,
                        format!(
                            "invalid --netns: {path} is not a network namespace; create one with `ip netns add NAME` and pass /var/run/netns/NAME"
                        ),
                    ));
                }
                let ifname = match &req.ifname {
                    Some(n) => {
                        validate_ifname(n)?;
                        n.clone()
                    }
                    None => free_ifname(p).await,
                };
                mesh_api::EndpointOwner::Netns {
                    path: path.clone(),
                    ifname,
                }
            }
            (None, Some(key)) => {
                mesh_api::network::validate_wg_key("--wg-public-key", key)?;
                mesh_api::EndpointOwner::External {
                    public_key: key.clone(),
                    endpoint: req.wg_endpoint,
                }
            }
            _ => {
                return Err(api_err(
                    ErrorKind::InvalidArgument,
                    "give exactly one of --netns PATH or --wg-public-key KEY",
                ));
            }
        };
        let body = serde_json::to_vec(&mesh_manager::rpc::AttachRequest {
            network: network.to_string(),
            owner,
            ip: req.ip,
        })
        .map_err(internal)?;
        let reply = active
            .call_manager(rpc::ATTACH, body, CALL_TIMEOUT)
            .await
            .map_err(remote_err)?;
        let att: mesh_manager::rpc::AttachResponse =
            serde_json::from_slice(&reply).map_err(internal)?;
        if let Err(e) = active.sync_network().await {
            // Undo: the address goes back to the pool.
            let body = serde_json::to_vec(&mesh_manager::rpc::DetachRequest {
                network: att.network.id.clone(),
                netns: None,
                endpoint: Some(att.endpoint.id.clone()),
            })
            .map_err(internal)?;
            let _ = active.call_manager(rpc::DETACH, body, CALL_TIMEOUT).await;
            return Err(internal(format!("plumbing the endpoint failed: {e:#}")));
        }
        let st = active.local();
        Ok(mesh_api::ConnectResponse {
            subnet: att.network.subnet,
            gateway: att.network.gateway,
            mtu: att.network.mtu,
            node_public_key: active.net.public_key(&att.network.id),
            node_endpoint: crate::network::data_endpoint(&st.advertise_addr, self.cfg.data_port),
            endpoint: att.endpoint,
        })
    }

    /// `swarm network disconnect`.
    pub async fn disconnect(
        &self,
        network: &str,
        req: mesh_api::DisconnectRequest,
    ) -> Result<(), ErrorBody> {
        let Some(active) = self.active() else {
            return Err(api_err(ErrorKind::NotManager, NOT_IN_SWARM));
        };
        if req.netns.is_none() == req.endpoint.is_none() {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                "give exactly one of --netns PATH or --endpoint ID",
            ));
        }
        let body = serde_json::to_vec(&mesh_manager::rpc::DetachRequest {
            network: network.to_string(),
            netns: req.netns,
            endpoint: req.endpoint,
        })
        .map_err(internal)?;
        active
            .call_manager(rpc::DETACH, body, CALL_TIMEOUT)
            .await
            .map_err(remote_err)?;
        active
            .sync_network()
            .await
            .map_err(|e| internal(format!("unplumbing the endpoint: {e:#}")))?;
        Ok(())
    }

    /// `swarm info`.
    pub async fn info(&self) -> Info {
        let mut info = Info {
            version: env!("CARGO_PKG_VERSION").to_string(),
            local_node_state: "inactive".into(),
            hostname: self.cfg.hostname.clone(),
            data_port: self.cfg.data_port,
            ..Default::default()
        };
        if let Ok(e) = self.last_error.lock() {
            info.error = e.clone();
        }
        let Some(active) = self.active() else {
            return info;
        };
        let st = active.local();
        info.local_node_state = "active".into();
        info.node_id = st.node_id.clone();
        info.cluster_id = st.cluster_id.clone();
        info.node_addr = st.advertise_addr.clone();
        if let Ok(id) = mesh_pki::parse_node_cert(&active.creds().cert_pem) {
            info.cert_expiry = id.not_after_ms;
        }
        info.remote_managers = st
            .managers
            .iter()
            .map(|a| mesh_api::api::RemoteManager {
                node_id: String::new(),
                addr: a.clone(),
            })
            .collect();
        let net = active.net();
        let stats = net.mesh_stats().unwrap_or_default();
        info.routing_mesh = Some(mesh_api::api::RoutingMeshInfo {
            dataplane: net.dataplane().to_string(),
            published_ports: stats.listeners,
            vip_networks: stats.vip_sandboxes,
            tcp_relays: stats.tcp_relays,
            udp_flows: stats.udp_flows,
        });
        if let Some(m) = active.manager() {
            m.fill_info(&mut info);
        }
        info
    }

    /// Clean shutdown (SIGTERM): the node stays in its cluster and resumes on restart.
    pub async fn shutdown(&self) {
        self.deactivate(false).await;
    }
}

/// `--default-addr-pool` and `--default-addr-pool-mask-length`, validated.
fn address_pools(req: &InitRequest) -> Result<(Vec<ipnet::Ipv4Net>, u8), ErrorBody> {
    let mut pools = Vec::new();
    for p in &req.default_addr_pool {
        let net: ipnet::Ipv4Net = p.parse().map_err(|_| {
            api_err(
                ErrorKind::InvalidArgument,
                format!("invalid --default-addr-pool: {p:?} is not an IPv4 CIDR; write e.g. 10.10.0.0/16"),
            )
        })?;
        mesh_api::network::validate_subnet(&net).map_err(|e| {
            api_err(
                ErrorKind::InvalidArgument,
                e.to_string().replace("--subnet", "--default-addr-pool"),
            )
        })?;
        if pools.iter().any(|q| mesh_manager::ipam::overlaps(q, &net)) {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "invalid --default-addr-pool: {net} overlaps another pool given; give disjoint pools"
                ),
            ));
        }
        pools.push(net);
    }
    let mask = req.default_addr_pool_mask_len.unwrap_or(0);
    if mask != 0 {
        if !(mesh_api::network::MIN_PREFIX..=mesh_api::network::MAX_PREFIX).contains(&mask) {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "invalid --default-addr-pool-mask-length: {mask}; use 8 to 29 (default 24)"
                ),
            ));
        }
        if let Some(p) = pools.iter().find(|p| p.prefix_len() > mask) {
            return Err(api_err(
                ErrorKind::InvalidArgument,
                format!(
                    "invalid --default-addr-pool-mask-length: /{mask} subnets don't fit in pool {p}; use at least /{}",
                    p.prefix_len()
                ),
            ));
        }
    }
    Ok((pools, mask))
}

/// Maps an error of a manager call to an API error.
pub(crate) fn remote_err(e: mesh_transport::CallError) -> ErrorBody {
    match e {
        mesh_transport::CallError::Remote(r) => {
            let kind = match r.code.as_str() {
                codes::INVALID | codes::BAD_TOKEN => ErrorKind::InvalidArgument,
                codes::NO_QUORUM | codes::NOT_LEADER => ErrorKind::NoQuorum,
                codes::NOT_FOUND => ErrorKind::NotFound,
                codes::CONFLICT => ErrorKind::Conflict,
                codes::FAILED_PRECONDITION | codes::PERMISSION_DENIED => {
                    ErrorKind::FailedPrecondition
                }
                _ => ErrorKind::Internal,
            };
            api_err(kind, r.message)
        }
        other => api_err(
            ErrorKind::NoQuorum,
            format!("no manager reachable: {other}"),
        ),
    }
}

fn validate_ifname(n: &str) -> Result<(), ErrorBody> {
    if n.is_empty()
        || n.len() > 15
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(api_err(
            ErrorKind::InvalidArgument,
            format!("invalid --ifname: {n:?}; use 1 to 15 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

/// The first `ethN` not present in the namespace at `path`.
async fn free_ifname(path: &std::path::Path) -> String {
    let p = path.to_path_buf();
    let names = tokio::task::spawn_blocking(move || {
        mesh_sandbox::run_in_netns(&p, || {
            nix::ifaddrs::getifaddrs()
                .map(|i| i.map(|a| a.interface_name).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !names.contains(n))
        .unwrap_or_else(|| "eth0".into())
}

/// A random non-zero Raft member ID.
fn new_raft_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// Resolves `HOST[:PORT]` (default port 2377).
fn resolve_remote(s: &str) -> Result<SocketAddr, ErrorBody> {
    use std::net::ToSocketAddrs;
    let bad = || {
        api_err(
            ErrorKind::InvalidArgument,
            format!(
                "invalid manager address {s:?}: give HOST[:PORT] of a manager, e.g. 192.0.2.1:2377"
            ),
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, mesh_api::api::DEFAULT_CONTROL_PORT));
    }
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{}", mesh_api::api::DEFAULT_CONTROL_PORT)
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut i| i.next())
        .ok_or_else(bad)
}

// Accessors used by the agent.
impl Active {
    pub(crate) fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
    pub(crate) fn local_state(&self) -> LocalState {
        self.local()
    }
    pub(crate) fn update_local(&self, f: impl FnOnce(&mut LocalState)) -> LocalState {
        match self.state.lock() {
            Ok(mut g) => {
                f(&mut g);
                g.clone()
            }
            Err(p) => {
                let mut g = p.into_inner();
                f(&mut g);
                g.clone()
            }
        }
    }
    pub(crate) fn credentials(&self) -> NodeCredentials {
        self.creds()
    }
    pub(crate) fn set_credentials(&self, c: NodeCredentials) -> anyhow::Result<()> {
        self.transport
            .set_identity(identity(&c))
            .context("installing the renewed certificate in the transport")?;
        if let Ok(mut g) = self.creds.write() {
            *g = c;
        }
        Ok(())
    }
    pub(crate) fn current_manager(&self) -> Option<Arc<Manager>> {
        self.manager()
    }
    pub(crate) fn net(&self) -> &Arc<NetRuntime> {
        &self.net
    }

    /// Calls `method` on the managers, trying each known one until one answers.
    pub(crate) async fn call_manager(
        &self,
        method: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, mesh_transport::CallError> {
        let mut last = mesh_transport::CallError::Connect("no manager address known".into());
        for target in self.local().managers {
            let Ok(addr) = target.parse::<SocketAddr>() else {
                continue;
            };
            match self
                .transport
                .call(addr, method, body.clone(), timeout)
                .await
            {
                Ok(r) => return Ok(r),
                Err(e @ mesh_transport::CallError::Remote(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Fetches the network map and brings the overlay in line with it; releases the
    /// addresses of endpoints whose namespace is gone.
    pub(crate) async fn sync_network(self: &Arc<Self>) -> anyhow::Result<()> {
        let _g = self.net.sync_lock.lock().await;
        let reply = self
            .call_manager(rpc::NETWORK_MAP, Vec::new(), CALL_TIMEOUT)
            .await
            .context("fetching the network map")?;
        let map: mesh_manager::rpc::NetworkMap = serde_json::from_slice(&reply)?;
        let net = Arc::clone(&self.net);
        let stale = tokio::task::spawn_blocking(move || net.apply_map(&map))
            .await
            .context("overlay task")??;
        for (network, endpoint) in stale {
            warn!(%network, %endpoint, "endpoint's namespace is gone: releasing its address");
            let body = serde_json::to_vec(&mesh_manager::rpc::DetachRequest {
                network,
                netns: None,
                endpoint: Some(endpoint),
            })?;
            if let Err(e) = self.call_manager(rpc::DETACH, body, CALL_TIMEOUT).await {
                warn!(error = %e, "could not release a stale endpoint");
            }
            self.net.invalidate();
        }
        Ok(())
    }
}
