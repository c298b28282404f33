//! The manager runtime: the store, the CA, the dispatcher and the role manager, wired
//! to the transport. Decisions are made by the pure modules; this file does the I/O.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::api::{Info, RaftInfo, RemoteManager, SwarmView};
use mesh_api::node::{NodeUpdate, resolve_node};
use mesh_api::{
    Cluster, ClusterSpec, JoinTokens, ManagerStatus, Node, NodeDescription, NodeRole, NodeSpec,
    NodeState, NodeStatus, Reachability, RootCa, new_id,
};
use mesh_pki::{CaMaterial, JoinToken};
use mesh_store::{MemberInfo, Store};
use mesh_transport::{Peer, RemoteError, Transport};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::dispatcher::{HeartbeatTracker, needs_ready};
use crate::error::ManagerError;
use crate::roles::{RoleAction, next_action};
use crate::rpc::{self, Heartbeat, HeartbeatResponse, JoinRequest, JoinResponse, RenewRequest};
use crate::state::{ClusterState, Command, NodeReport, StatusUpdate};

mod services;
pub use services::{resolve_task, service_view};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Identity of the local manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Node ID of this manager.
    pub node_id: String,
    /// Cluster ID, from this node's certificate (known before the store has caught up).
    pub cluster_id: String,
    /// Raft member ID of this manager.
    pub raft_id: u64,
    /// This manager's control address `IP:PORT`.
    pub control_addr: String,
    /// How often the leader checks heartbeats and membership.
    pub tick: Duration,
}

/// The manager plane of one manager node.
pub struct Manager {
    store: Store<ClusterState>,
    transport: Arc<Transport>,
    cfg: ManagerConfig,
    tracker: Mutex<Option<HeartbeatTracker>>,
    stop: watch::Sender<bool>,
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ManagerError> {
    serde_json::from_slice(body).map_err(|e| ManagerError::Decode(e.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ManagerError> {
    serde_json::to_vec(v).map_err(|e| ManagerError::Decode(e.to_string()))
}

/// Everything `swarm init` creates, before it is written to the store.
pub struct NewCluster {
    /// The cluster object (with the CA key).
    pub cluster: Cluster,
    /// The first manager.
    pub node: Node,
    /// The CA, to sign the first node's certificate.
    pub ca: CaMaterial,
}

/// Inputs of [`new_cluster`].
pub struct InitParams {
    /// ID of the first node.
    pub node_id: String,
    /// Its Raft ID.
    pub raft_id: u64,
    /// Host facts.
    pub description: NodeDescription,
    /// Advertised IP.
    pub addr: String,
    /// Control address.
    pub control_addr: String,
    /// Overlay data port.
    pub data_port: u16,
    /// Cluster settings.
    pub spec: ClusterSpec,
    /// Now, Unix ms.
    pub now: u64,
}

/// Creates a root CA, join tokens and the first node for `swarm init`.
pub fn new_cluster(p: InitParams) -> Result<NewCluster, ManagerError> {
    p.spec.dispatcher.validate()?;
    let cluster_id = new_id();
    let ca =
        mesh_pki::generate_root_ca(&cluster_id).map_err(|e| ManagerError::Pki(e.to_string()))?;
    let tokens = JoinTokens {
        worker: JoinToken::generate(&ca.digest).to_string(),
        manager: JoinToken::generate(&ca.digest).to_string(),
    };
    let cluster = Cluster {
        id: cluster_id,
        version: 0,
        created_at: p.now,
        updated_at: p.now,
        spec: p.spec,
        root_ca: RootCa {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
            digest: ca.digest.clone(),
        },
        join_tokens: tokens,
    };
    let node = Node {
        id: p.node_id,
        version: 0,
        created_at: p.now,
        updated_at: p.now,
        spec: NodeSpec {
            labels: Default::default(),
            role: NodeRole::Manager,
            availability: Default::default(),
        },
        description: p.description,
        status: NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: p.addr,
        },
        role: NodeRole::Manager,
        raft_id: p.raft_id,
        control_addr: p.control_addr,
        data_port: p.data_port,
        manager_status: None,
        cert_expiry: 0,
        network_keys: Default::default(),
    };
    Ok(NewCluster { cluster, node, ca })
}

fn ca_of(cluster: &Cluster) -> CaMaterial {
    CaMaterial {
        cert_pem: cluster.root_ca.cert_pem.clone(),
        key_pem: cluster.root_ca.key_pem.clone(),
        digest: cluster.root_ca.digest.clone(),
    }
}

/// The validity window of a certificate issued at `now` for `validity` ms: it starts a
/// little in the past (tolerating clock skew between nodes, at most a minute and at most a
/// tenth of the lifetime) and still lasts `validity` from now. Returns (not_before, length).
pub fn cert_window(now: u64, validity: u64) -> (u64, u64) {
    let skew = (validity / 10).min(60_000);
    (now.saturating_sub(skew), validity + skew)
}

fn cert_validity(cluster: &Cluster) -> u64 {
    if cluster.spec.node_cert_expiry_ms == 0 {
        mesh_api::cluster::DEFAULT_NODE_CERT_EXPIRY_MS
    } else {
        cluster.spec.node_cert_expiry_ms
    }
}

impl Manager {
    /// A manager over `store`, answering over `transport`.
    pub fn new(
        store: Store<ClusterState>,
        transport: Arc<Transport>,
        cfg: ManagerConfig,
    ) -> Arc<Self> {
        let (stop, _) = watch::channel(false);
        Arc::new(Self {
            store,
            transport,
            cfg,
            tracker: Mutex::new(None),
            stop,
        })
    }

    /// The replicated store.
    pub fn store(&self) -> &Store<ClusterState> {
        &self.store
    }

    /// This manager's node ID.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// Writes a command and turns a refusal into an error. The store returns once the
    /// change is applied locally too, so a follower reads its own write.
    pub async fn write(&self, cmd: Command) -> Result<crate::state::Applied, ManagerError> {
        Ok(self.store.write(cmd).await??)
    }

    fn is_leader(&self) -> bool {
        self.store.status().role == mesh_store::RaftRole::Leader
    }

    fn leader_addr(&self) -> String {
        self.store
            .status()
            .leader
            .map(|m| m.addr)
            .unwrap_or_default()
    }

    fn cluster(&self) -> Result<Cluster, ManagerError> {
        self.store
            .read(|s| s.cluster.clone())
            .ok_or(ManagerError::NoCluster)
    }

    /// Control addresses of the current Raft voters.
    pub fn manager_addrs(&self) -> Vec<String> {
        let voters: BTreeSet<u64> = self.store.status().voters.keys().copied().collect();
        self.store.read(|s| {
            s.nodes
                .values()
                .filter(|n| voters.contains(&n.raft_id))
                .map(|n| n.control_addr.clone())
                .collect()
        })
    }

    /// Stops the background loop.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Runs the leader duties (down detection, membership) until [`Manager::stop`].
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        let mut stop = self.stop.subscribe();
        let orch = Arc::clone(self);
        tokio::spawn(async move { orch.orchestrate_loop().await });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.cfg.tick);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                if *stop.borrow() {
                    break;
                }
                me.leader_tick().await;
            }
            debug!("manager loop stopped");
        })
    }

    async fn leader_tick(&self) {
        if !self.is_leader() {
            if let Ok(mut t) = self.tracker.lock() {
                *t = None;
            }
            return;
        }
        let Some(down_after) = self.store.read(|s| {
            s.cluster
                .as_ref()
                .map(|c| c.spec.dispatcher.node_down_after_ms)
        }) else {
            return;
        };
        let now = now_ms();
        let expired = {
            let Ok(mut guard) = self.tracker.lock() else {
                return;
            };
            let tracker = guard.get_or_insert_with(|| {
                info!("became leader: starting heartbeat tracking");
                self.store.read(|s| HeartbeatTracker::starting_at(s, now))
            });
            self.store.read(|s| tracker.expired(s, now, down_after))
        };
        if !expired.is_empty() {
            for u in &expired {
                warn!(node = %u.id, "node missed its heartbeats: marking it down");
            }
            if let Err(e) = self
                .write(Command::SetNodeStatus {
                    updates: expired,
                    now,
                })
                .await
            {
                warn!(error = %e, "could not mark nodes down");
            }
        }
        self.reconcile_roles().await;
    }

    async fn reconcile_roles(&self) {
        let status = self.store.status();
        if status.joint {
            return;
        }
        let voters: BTreeSet<u64> = status.voters.keys().copied().collect();
        let learners: BTreeSet<u64> = status.learners.keys().copied().collect();
        let action = self.store.read(|s| next_action(s, &voters, &learners));
        let Some(action) = action else { return };
        info!(?action, "changing manager membership");
        let res = match action {
            RoleAction::AddLearner {
                raft_id,
                node_id,
                addr,
            } => {
                self.store
                    .add_learner(
                        raft_id,
                        MemberInfo {
                            addr,
                            name: node_id,
                        },
                    )
                    .await
            }
            RoleAction::SetVoters(v) => self.store.change_voters(v).await,
            RoleAction::RemoveLearner(id) => self.store.remove_member(id).await,
        };
        if let Err(e) = res {
            warn!(error = %e, "membership change failed; will retry");
        }
    }

    // ---------------------------------------------------------------- RPC

    /// Answers an RPC from another node.
    pub async fn handle_rpc(
        &self,
        peer: Peer,
        method: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, RemoteError> {
        let res = match method {
            rpc::CA => self.cluster().map(|c| c.root_ca.cert_pem.into_bytes()),
            rpc::JOIN => self.rpc_join(&body).await,
            rpc::HEARTBEAT => self.rpc_heartbeat(&peer, &body).await,
            rpc::RENEW => self.rpc_renew(&peer, &body).await,
            rpc::LEAVE => self.rpc_leave(&peer).await,
            rpc::PING => self.authorize(&peer, false).and_then(|_| encode(&"pong")),
            rpc::NETWORK_MAP => self.rpc_network_map(&peer),
            rpc::ATTACH => self.rpc_attach(&peer, &body).await,
            rpc::DETACH => self.rpc_detach(&peer, &body).await,
            rpc::ASSIGNMENTS => self.rpc_assignments(&peer, &body).await,
            rpc::TASK_STATUS => self.rpc_task_status(&peer, &body).await,
            rpc::RUN => self.rpc_run(&peer, &body).await,
            rpc::CONTAINER_DESIRED => self.rpc_container_desired(&peer, &body).await,
            rpc::RAFT => match self.authorize(&peer, true) {
                Ok(_) => Ok(self.store.handle_rpc(body).await),
                Err(e) => Err(e),
            },
            other => Err(ManagerError::Decode(format!("unknown method {other:?}"))),
        };
        res.map_err(RemoteError::from)
    }

    /// Checks that `peer` holds a certificate of this cluster for a node that still
    /// exists (and is a manager when `manager` is set). Returns its node ID.
    fn authorize(&self, peer: &Peer, manager: bool) -> Result<String, ManagerError> {
        let Peer::Node {
            node_id,
            role,
            cluster_id,
        } = peer
        else {
            return Err(ManagerError::Unauthenticated);
        };
        let removed = self.store.read(|s| s.removed_nodes.contains(node_id));
        if *cluster_id != self.cfg.cluster_id {
            return Err(ManagerError::Unauthenticated);
        }
        if removed {
            return Err(ManagerError::Removed(node_id.clone()));
        }
        if manager && *role != NodeRole::Manager {
            return Err(ManagerError::PermissionDenied(format!(
                "node {node_id} holds a {role} certificate; this call is for managers"
            )));
        }
        Ok(node_id.clone())
    }

    async fn rpc_join(&self, body: &[u8]) -> Result<Vec<u8>, ManagerError> {
        let req: JoinRequest = decode(body)?;
        let cluster = self.cluster()?;
        let token = JoinToken::from_str(req.token.trim())?;
        if token.digest != cluster.root_ca.digest {
            return Err(ManagerError::BadToken(
                "invalid --token: it was made for a different cluster (its CA digest does not match); run `swarm join-token worker` on a manager of this cluster".into(),
            ));
        }
        let matches = |current: &str| {
            JoinToken::from_str(current)
                .map(|t| token.secret_matches(&t.secret))
                .unwrap_or(false)
        };
        let role = if matches(&cluster.join_tokens.manager) {
            NodeRole::Manager
        } else if matches(&cluster.join_tokens.worker) {
            NodeRole::Worker
        } else {
            return Err(ManagerError::BadToken(
                "invalid --token: it was rotated or is wrong; run `swarm join-token worker` (or `manager`) on a manager to print the current one".into(),
            ));
        };
        let addr: std::net::IpAddr = req.addr.parse().map_err(|_| {
            mesh_api::ValidationError::new(
                "--advertise-addr",
                format!("{:?} is not an IP address", req.addr),
                "give the IP address other nodes reach this node at",
            )
        })?;
        req.control_addr.parse::<SocketAddr>().map_err(|_| {
            mesh_api::ValidationError::new(
                "--listen-addr",
                format!("{:?} is not IP:PORT", req.control_addr),
                "give IP:PORT, e.g. 192.0.2.2:2377",
            )
        })?;
        if req.raft_id == 0 {
            return Err(ManagerError::Decode("raft_id must not be 0".into()));
        }
        let now = now_ms();
        let node_id = new_id();
        let (not_before, validity) = cert_window(now, cert_validity(&cluster));
        let cert_pem = mesh_pki::sign_node_cert(
            &ca_of(&cluster),
            &req.csr_pem,
            &node_id,
            role,
            &cluster.id,
            not_before,
            validity,
        )
        .map_err(|e| ManagerError::Pki(e.to_string()))?;
        let node = Node {
            id: node_id.clone(),
            version: 0,
            created_at: now,
            updated_at: now,
            spec: NodeSpec {
                labels: Default::default(),
                role,
                availability: Default::default(),
            },
            description: req.description,
            status: NodeStatus {
                state: NodeState::Unknown,
                message: "joining".into(),
                addr: addr.to_string(),
            },
            role,
            raft_id: req.raft_id,
            control_addr: req.control_addr,
            data_port: req.data_port,
            manager_status: None,
            cert_expiry: 0,
            network_keys: Default::default(),
        };
        self.write(Command::CreateNode {
            node: Box::new(node),
        })
        .await?;
        info!(node = %node_id, %role, "node joined");
        encode(&JoinResponse {
            node_id,
            cluster_id: cluster.id,
            role,
            cert_pem,
            managers: self.manager_addrs(),
        })
    }

    async fn rpc_heartbeat(&self, peer: &Peer, body: &[u8]) -> Result<Vec<u8>, ManagerError> {
        let id = self.authorize(peer, false)?;
        let hb: Heartbeat = decode(body)?;
        if !self.is_leader() {
            return Err(ManagerError::NotLeader(self.leader_addr()));
        }
        let Peer::Node { role, .. } = peer else {
            return Err(ManagerError::Unauthenticated);
        };
        let now = now_ms();
        if let Ok(mut t) = self.tracker.lock()
            && let Some(t) = t.as_mut()
        {
            t.heartbeat(&id, now);
        }
        let report = NodeReport {
            id: id.clone(),
            description: hb.description,
            addr: hb.addr,
            control_addr: hb.control_addr,
            data_port: hb.data_port,
            raft_id: hb.raft_id,
            cert_role: *role,
            cert_expiry: hb.cert_expiry,
        };
        let (node, period) = self.store.read(|s| {
            (
                s.nodes.get(&id).cloned(),
                s.cluster
                    .as_ref()
                    .map(|c| c.spec.dispatcher.heartbeat_period_ms)
                    .unwrap_or(mesh_api::cluster::DEFAULT_HEARTBEAT_PERIOD_MS),
            )
        });
        let Some(node) = node else {
            return Err(ManagerError::Removed(id));
        };
        if node.network_keys != hb.network_keys {
            for (net, key) in &hb.network_keys {
                mesh_api::network::validate_wg_key("network key", key)
                    .map_err(|e| ManagerError::Decode(format!("network {net}: {e}")))?;
            }
            if let Err(e) = self
                .write(Command::SetNetworkKeys {
                    node_id: id.clone(),
                    keys: hb.network_keys.clone(),
                })
                .await
            {
                debug!(error = %e, node = %id, "could not record network keys");
            }
        }
        let changed = node.description != report.description
            || node.status.addr != report.addr
            || node.control_addr != report.control_addr
            || node.data_port != report.data_port
            || node.raft_id != report.raft_id
            || node.role != report.cert_role
            || node.cert_expiry != report.cert_expiry;
        if changed
            && let Err(e) = self
                .write(Command::ReportNode {
                    report: Box::new(report),
                    now,
                })
                .await
        {
            debug!(error = %e, node = %id, "could not record node report");
        }
        if let Some(up) = self.store.read(|s| needs_ready(s, &id)) {
            info!(node = %id, "node is ready");
            if let Err(e) = self
                .write(Command::SetNodeStatus {
                    updates: vec![up],
                    now,
                })
                .await
            {
                debug!(error = %e, node = %id, "could not mark node ready");
            }
        }
        let status = self.store.status();
        let member = status.voters.contains_key(&node.raft_id)
            || status.learners.contains_key(&node.raft_id);
        encode(&HeartbeatResponse {
            desired_role: node.spec.role,
            raft_member: member,
            managers: self.manager_addrs(),
            heartbeat_period_ms: period,
            network_version: self.store.read(|s| s.network_version),
        })
    }

    async fn rpc_renew(&self, peer: &Peer, body: &[u8]) -> Result<Vec<u8>, ManagerError> {
        let id = self.authorize(peer, false)?;
        let req: RenewRequest = decode(body)?;
        let cluster = self.cluster()?;
        let Some(node) = self.store.read(|s| s.nodes.get(&id).cloned()) else {
            return Err(ManagerError::Removed(id));
        };
        let status = self.store.status();
        let still_member = status.voters.contains_key(&node.raft_id)
            || status.learners.contains_key(&node.raft_id);
        // A demoted manager keeps its manager certificate until it has left Raft.
        let role = if node.spec.role == NodeRole::Worker && still_member {
            NodeRole::Manager
        } else {
            node.spec.role
        };
        let (not_before, validity) = cert_window(now_ms(), cert_validity(&cluster));
        let cert_pem = mesh_pki::sign_node_cert(
            &ca_of(&cluster),
            &req.csr_pem,
            &id,
            role,
            &cluster.id,
            not_before,
            validity,
        )
        .map_err(|e| ManagerError::Pki(e.to_string()))?;
        info!(node = %id, %role, "issued node certificate");
        encode(&rpc::RenewResponse { cert_pem, role })
    }

    async fn rpc_leave(&self, peer: &Peer) -> Result<Vec<u8>, ManagerError> {
        let id = self.authorize(peer, false)?;
        let now = now_ms();
        let node = self.store.read(|s| s.nodes.get(&id).cloned());
        if let Some(node) = node
            && node.spec.role == NodeRole::Manager
            && self.store.read(|s| s.desired_managers()) > 1
        {
            let mut spec = node.spec.clone();
            spec.role = NodeRole::Worker;
            self.write(Command::UpdateNodeSpec {
                id: id.clone(),
                spec,
                expect_version: None,
                now,
            })
            .await?;
        }
        self.write(Command::SetNodeStatus {
            updates: vec![StatusUpdate {
                id: id.clone(),
                state: NodeState::Down,
                message: "node left the swarm".into(),
            }],
            now,
        })
        .await?;
        if let Ok(mut t) = self.tracker.lock()
            && let Some(t) = t.as_mut()
        {
            t.forget(&id);
        }
        info!(node = %id, "node left the swarm");
        encode(&"ok")
    }

    fn rpc_network_map(&self, peer: &Peer) -> Result<Vec<u8>, ManagerError> {
        let id = self.authorize(peer, false)?;
        encode(&self.store.read(|s| network_map(s, &id)))
    }

    async fn rpc_attach(&self, peer: &Peer, body: &[u8]) -> Result<Vec<u8>, ManagerError> {
        let node_id = self.authorize(peer, false)?;
        let req: rpc::AttachRequest = decode(body)?;
        let (endpoint, network) = self.attach(&node_id, &req).await?;
        encode(&rpc::AttachResponse { endpoint, network })
    }

    /// Creates (or finds) the endpoint of `req.owner` on `node_id`.
    pub async fn attach(
        &self,
        node_id: &str,
        req: &rpc::AttachRequest,
    ) -> Result<(mesh_api::Endpoint, mesh_api::Network), ManagerError> {
        let net = self
            .store
            .read(|s| s.resolve_network(&req.network).cloned())
            .ok_or_else(|| no_such_network(&req.network))?;
        if let mesh_api::EndpointOwner::External { public_key, .. } = &req.owner {
            mesh_api::network::validate_wg_key("--wg-public-key", public_key)?;
        }
        let applied = self
            .write(Command::CreateEndpoint {
                id: new_id(),
                network_id: net.id.clone(),
                node_id: node_id.to_string(),
                owner: req.owner.clone(),
                ip: req.ip,
                now: now_ms(),
            })
            .await?;
        let ep_id = applied.object.unwrap_or_default();
        let ep = self
            .store
            .read(|s| s.endpoints.get(&ep_id).cloned())
            .ok_or_else(|| ManagerError::NotFound(format!("endpoint {ep_id} vanished")))?;
        Ok((ep, net))
    }

    async fn rpc_detach(&self, peer: &Peer, body: &[u8]) -> Result<Vec<u8>, ManagerError> {
        let node_id = self.authorize(peer, false)?;
        let req: rpc::DetachRequest = decode(body)?;
        let net = self
            .store
            .read(|s| s.resolve_network(&req.network).cloned())
            .ok_or_else(|| no_such_network(&req.network))?;
        let found = self.store.read(|s| {
            s.endpoints
                .values()
                .find(|e| {
                    e.network_id == net.id
                        && match (&req.endpoint, &req.netns) {
                            (Some(id), _) => {
                                e.id == *id || (id.len() >= 6 && e.id.starts_with(id.as_str()))
                            }
                            (None, Some(path)) => {
                                e.node_id == node_id
                                    && matches!(&e.owner, mesh_api::EndpointOwner::Netns { path: p, .. } if p == path)
                            }
                            (None, None) => false,
                        }
                })
                .cloned()
        });
        let Some(ep) = found else {
            return Err(ManagerError::NotFound(format!(
                "no such endpoint on network {}: {}",
                net.spec.name,
                req.endpoint.or(req.netns).unwrap_or_default()
            )));
        };
        self.write(Command::RemoveEndpoint { id: ep.id.clone() })
            .await?;
        encode(&ep)
    }

    /// `swarm network create`.
    pub async fn create_network(
        &self,
        spec: mesh_api::NetworkSpec,
    ) -> Result<mesh_api::Network, ManagerError> {
        spec.validate()?;
        let id = new_id();
        self.write(Command::CreateNetwork {
            id: id.clone(),
            spec,
            now: now_ms(),
        })
        .await?;
        self.store
            .read(|s| s.networks.get(&id).cloned())
            .ok_or_else(|| ManagerError::NotFound(format!("network {id} vanished")))
    }

    /// `swarm network rm`.
    pub async fn remove_network(&self, reference: &str) -> Result<(), ManagerError> {
        let net = self
            .store
            .read(|s| s.resolve_network(reference).cloned())
            .ok_or_else(|| no_such_network(reference))?;
        self.write(Command::RemoveNetwork { id: net.id }).await?;
        Ok(())
    }

    /// `swarm network ls`.
    pub fn list_networks(&self) -> Vec<mesh_api::NetworkView> {
        self.store.read(|s| {
            let mut v: Vec<_> = s.networks.values().map(|n| network_view(s, n)).collect();
            v.sort_by(|a, b| a.network.spec.name.cmp(&b.network.spec.name));
            v
        })
    }

    /// `swarm network inspect`.
    pub fn get_network(&self, reference: &str) -> Result<mesh_api::NetworkView, ManagerError> {
        self.store
            .read(|s| s.resolve_network(reference).map(|n| network_view(s, n)))
            .ok_or_else(|| no_such_network(reference))
    }

    // ---------------------------------------------------------------- API

    /// Nodes with their manager status filled in. With `probe`, other managers are
    /// pinged (bounded) so reachability is first-hand, also without quorum.
    pub async fn list_nodes(&self, probe: bool) -> Vec<Node> {
        let status = self.store.status();
        let mut nodes: Vec<Node> = self
            .store
            .read(|s| s.nodes_sorted().into_iter().cloned().collect());
        for n in nodes.iter_mut() {
            self.fill_manager_status(n, &status);
        }
        if probe {
            let probes = nodes.iter().enumerate().filter_map(|(i, n)| {
                let addr = n.control_addr.parse::<SocketAddr>().ok()?;
                (n.manager_status.is_some() && n.id != self.cfg.node_id).then(|| {
                    let t = Arc::clone(&self.transport);
                    async move {
                        let ok = t
                            .call(addr, rpc::PING, Vec::new(), Duration::from_millis(700))
                            .await
                            .is_ok();
                        (i, ok)
                    }
                })
            });
            for (i, ok) in futures::future::join_all(probes).await {
                if let Some(ms) = nodes.get_mut(i).and_then(|n| n.manager_status.as_mut()) {
                    ms.reachability = if ok {
                        Reachability::Reachable
                    } else {
                        Reachability::Unreachable
                    };
                    ms.leader &= ok;
                }
            }
        }
        nodes
    }

    /// Sets `n.manager_status` from the Raft membership: present for voters and
    /// learners, reachability from the node's state (this manager is always reachable).
    fn fill_manager_status(&self, n: &mut Node, status: &mesh_store::RaftStatus) {
        let member = n.raft_id != 0
            && (status.voters.contains_key(&n.raft_id) || status.learners.contains_key(&n.raft_id));
        n.manager_status = member.then(|| ManagerStatus {
            leader: status.leader_id == Some(n.raft_id),
            reachability: if n.id == self.cfg.node_id || n.status.state == NodeState::Ready {
                Reachability::Reachable
            } else {
                Reachability::Unreachable
            },
            addr: n.control_addr.clone(),
        });
    }

    /// One node by ID, ID prefix or hostname.
    pub async fn get_node(&self, reference: &str) -> Result<Node, ManagerError> {
        let mut node = self.resolve(reference)?;
        self.fill_manager_status(&mut node, &self.store.status());
        Ok(node)
    }

    /// The stored node a user means by `reference` (ID, ID prefix, hostname or `self`),
    /// without manager status: what updates and removals work from.
    fn resolve(&self, reference: &str) -> Result<Node, ManagerError> {
        self.store.read(|s| {
            if reference == "self" {
                return s
                    .nodes
                    .get(&self.cfg.node_id)
                    .cloned()
                    .ok_or_else(|| ManagerError::NotFound(format!("no such node: {reference}")));
            }
            resolve_node(s.nodes.values(), reference)
                .cloned()
                .map_err(|e| ManagerError::NotFound(e.to_string()))
        })
    }

    /// `swarm node update|promote|demote`. Validated here first (so bad input never
    /// reaches the log), and applied as a delta at apply time.
    pub async fn update_node(
        &self,
        reference: &str,
        upd: &NodeUpdate,
    ) -> Result<Node, ManagerError> {
        let node = self.resolve(reference)?;
        if upd.apply(&node.spec)? != node.spec {
            self.write(Command::UpdateNode {
                id: node.id.clone(),
                update: upd.clone(),
                now: now_ms(),
            })
            .await?;
        }
        self.get_node(&node.id).await
    }

    /// `swarm node rm`.
    pub async fn remove_node(&self, reference: &str, force: bool) -> Result<(), ManagerError> {
        let node = self.resolve(reference)?;
        if node.id == self.cfg.node_id {
            return Err(mesh_api::ValidationError::new(
                "NODE",
                "a node cannot remove itself",
                "run `swarm leave` on it, or remove it from another manager",
            )
            .into());
        }
        self.write(Command::RemoveNode {
            id: node.id.clone(),
            force,
        })
        .await?;
        if let Ok(mut t) = self.tracker.lock()
            && let Some(t) = t.as_mut()
        {
            t.forget(&node.id);
        }
        Ok(())
    }

    /// The current join token for `role`.
    pub fn join_token(&self, role: NodeRole) -> Result<String, ManagerError> {
        let c = self.cluster()?;
        Ok(match role {
            NodeRole::Worker => c.join_tokens.worker,
            NodeRole::Manager => c.join_tokens.manager,
        })
    }

    /// `swarm join-token --rotate`: a new secret; the old token stops working at once.
    pub async fn rotate_token(&self, role: NodeRole) -> Result<String, ManagerError> {
        let c = self.cluster()?;
        let token = JoinToken::generate(&c.root_ca.digest).to_string();
        self.write(Command::RotateToken {
            role,
            token: token.clone(),
            now: now_ms(),
        })
        .await?;
        Ok(token)
    }

    /// The cluster without secrets.
    pub fn swarm_view(&self) -> Result<SwarmView, ManagerError> {
        let c = self.cluster()?;
        Ok(SwarmView {
            id: c.id,
            version: c.version,
            created_at: c.created_at,
            spec: c.spec,
            root_ca_cert: c.root_ca.cert_pem,
            root_ca_digest: c.root_ca.digest,
        })
    }

    /// Fills the manager parts of `swarm info`.
    pub fn fill_info(&self, info: &mut Info) {
        let status = self.store.status();
        let (cluster, nodes, leader_node) = self.store.read(|s| {
            (
                s.cluster.clone(),
                s.nodes.len(),
                status.leader_id.and_then(|l| {
                    s.nodes
                        .values()
                        .find(|n| n.raft_id == l)
                        .map(|n| n.id.clone())
                }),
            )
        });
        if let Some(c) = cluster {
            info.cluster_id = c.id;
            info.heartbeat_period_ms = c.spec.dispatcher.heartbeat_period_ms;
            info.node_down_after_ms = c.spec.dispatcher.node_down_after_ms;
        }
        info.control_available = true;
        info.nodes = nodes;
        info.managers = status.voters.len();
        let voters: BTreeSet<u64> = status.voters.keys().copied().collect();
        info.remote_managers = self.store.read(|s| {
            s.nodes
                .values()
                .filter(|n| voters.contains(&n.raft_id))
                .map(|n| RemoteManager {
                    node_id: n.id.clone(),
                    addr: n.control_addr.clone(),
                })
                .collect()
        });
        info.raft = Some(RaftInfo {
            id: status.id,
            term: status.term,
            leader: status.leader_id,
            leader_node_id: leader_node,
            last_log_index: status.last_log_index.unwrap_or(0),
            last_applied: status.last_applied.unwrap_or(0),
            snapshot_index: status.snapshot_index.unwrap_or(0),
            has_quorum: status.has_quorum,
        });
    }
}

fn no_such_network(reference: &str) -> ManagerError {
    ManagerError::NotFound(format!(
        "no such network: {reference}; list them with `swarm network ls`"
    ))
}

fn network_view(s: &ClusterState, n: &mesh_api::Network) -> mesh_api::NetworkView {
    let mut endpoints: Vec<_> = s
        .endpoints
        .values()
        .filter(|e| e.network_id == n.id)
        .cloned()
        .collect();
    endpoints.sort_by_key(|e| e.ip);
    mesh_api::NetworkView {
        network: n.clone(),
        endpoints,
    }
}

/// The networks node `node_id` serves an endpoint of, with everything it needs to
/// plumb them (pure).
pub fn network_map(s: &ClusterState, node_id: &str) -> rpc::NetworkMap {
    let mut networks = Vec::new();
    for n in s.networks.values() {
        let endpoints: Vec<_> = s
            .endpoints
            .values()
            .filter(|e| e.network_id == n.id)
            .cloned()
            .collect();
        if !endpoints.iter().any(|e| e.node_id == node_id) {
            continue;
        }
        let node_ids: BTreeSet<&str> = endpoints.iter().map(|e| e.node_id.as_str()).collect();
        let nodes = node_ids
            .into_iter()
            .filter_map(|id| s.nodes.get(id))
            .map(|node| rpc::PeerNode {
                node_id: node.id.clone(),
                addr: node.status.addr.clone(),
                data_port: node.data_port,
                public_key: node.network_keys.get(&n.id).cloned(),
            })
            .collect();
        networks.push(rpc::NetworkAssignment {
            network: n.clone(),
            endpoints,
            nodes,
            dns: dns_entries(s, &n.id),
        });
    }
    rpc::NetworkMap {
        version: s.network_version,
        networks,
        mesh: s.mesh_services(),
    }
}

/// The names tasks on network `network_id` resolve: services (and their aliases) with their
/// VIP and serving tasks, task names, standalone containers.
pub fn dns_entries(s: &ClusterState, network_id: &str) -> Vec<rpc::DnsEntry> {
    use mesh_api::EndpointMode;
    let mut out = Vec::new();
    if s.networks.get(network_id).is_some_and(|n| n.spec.ingress) {
        // The ingress network carries the routing mesh only; nothing resolves on it.
        return out;
    }
    for svc in s.services.values() {
        let Some(att) = svc
            .spec
            .task_template
            .networks
            .iter()
            .find(|n| n.target == network_id)
        else {
            continue;
        };
        let vip = match svc.spec.endpoint_spec.mode {
            EndpointMode::Vip => svc
                .virtual_ips
                .iter()
                .find(|v| v.network_id == network_id)
                .map(|v| v.addr),
            EndpointMode::Dnsrr => None,
        };
        let mut tasks: Vec<std::net::Ipv4Addr> = s
            .tasks
            .values()
            .filter(|t| t.service_id == svc.id && t.is_serving())
            .filter_map(|t| t.networks.iter().find(|a| a.network_id == network_id))
            .map(|a| a.ip)
            .collect();
        tasks.sort();
        for name in std::iter::once(&svc.spec.name).chain(att.aliases.iter()) {
            out.push(rpc::DnsEntry::Service {
                name: name.clone(),
                vip,
                tasks: tasks.clone(),
            });
        }
    }
    for t in s.tasks.values().filter(|t| {
        t.desired_state == mesh_api::TaskState::Running && !t.status.state.is_terminal()
    }) {
        let Some(a) = t.networks.iter().find(|a| a.network_id == network_id) else {
            continue;
        };
        out.push(rpc::DnsEntry::Host {
            name: t.container_name(),
            ip: a.ip,
        });
        if t.service_id.is_empty() {
            for alias in &a.aliases {
                out.push(rpc::DnsEntry::Host {
                    name: alias.clone(),
                    ip: a.ip,
                });
            }
        }
    }
    out
}
