//! The overlay: starts the engine, reconciles sandboxes, TUN devices, endpoints, routes and
//! peers with a plan, reports status.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use boringtun::noise::rate_limiter::RateLimiter;

use crate::engine::{self, EngineCounters, HANDSHAKE_RATE_LIMIT, NetState, Peer, Shared, Snapshot};
use crate::error::OverlayError;
use crate::keys::{KeyPair, PublicKey};
use crate::plan::{
    HostPlan, LocalEndpoint, NetworkPlan, OverlayConfig, PeerPlan, TUN_NAME, sandbox_name,
    validate_config, validate_plan,
};
use crate::routing::RoutingTable;
use crate::sandbox::{self, EndpointSpec, SandboxSpec, VETH_ID_CHARS};
use crate::tun::{self, TunDevice};
use crate::udp;

/// The overlay data plane of this host.
pub struct Overlay {
    cfg: OverlayConfig,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    control: Mutex<Control>,
}

/// What [`Overlay::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayStatus {
    /// The UDP data port.
    pub data_port: u16,
    /// Whether the socket receives with UDP GRO.
    pub udp_gro: bool,
    /// What the packet engine did since it started.
    pub counters: EngineCounters,
    /// The networks, by ID.
    pub networks: Vec<NetworkStatus>,
}

/// One network in [`OverlayStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    /// Network ID.
    pub id: String,
    /// Sandbox namespace name.
    pub sandbox: String,
    /// This host's public key for the network.
    pub public_key: PublicKey,
    /// Whether the TUN device is up and served.
    pub tun_up: bool,
    /// Whether the TUN device has offloads (TSO/GRO) on.
    pub tun_offload: bool,
    /// IDs of the local endpoints attached.
    pub local: Vec<String>,
    /// The peers, by ID.
    pub peers: Vec<PeerStatus>,
}

/// One peer in [`NetworkStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Peer ID.
    pub id: String,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where its packets go (configured, or learnt from it).
    pub endpoint: Option<SocketAddr>,
    /// Time since its current session's handshake; none without a session.
    pub last_handshake: Option<Duration>,
    /// Payload bytes received from it.
    pub rx_bytes: u64,
    /// Payload bytes sent to it.
    pub tx_bytes: u64,
    /// Its addresses.
    pub allowed_ips: Vec<Ipv4Addr>,
}

struct TunHandle {
    dev: Arc<TunDevice>,
    thread: Option<JoinHandle<()>>,
}

impl TunHandle {
    fn stop(&mut self) {
        self.dev.stop.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct PeerEntry {
    peer: Arc<Peer>,
    plan: PeerPlan,
}

struct NetEntry {
    sandbox: String,
    keypair: KeyPair,
    mac1: Arc<RateLimiter>,
    limiter: Arc<RateLimiter>,
    tun: Option<TunHandle>,
    peers: HashMap<String, PeerEntry>,
    /// Endpoints attached by this process, with what they were attached as.
    endpoints: HashMap<String, EndpointRecord>,
}

#[derive(Clone, PartialEq, Eq)]
struct EndpointRecord {
    ep: LocalEndpoint,
    prefix: u8,
    mtu: u16,
}

struct Control {
    networks: HashMap<String, NetEntry>,
    used_indices: HashSet<u32>,
    next_index: u32,
}

impl Control {
    fn alloc_index(&mut self) -> u32 {
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if self.used_indices.insert(self.next_index) {
                return self.next_index;
            }
        }
    }
}

fn limiters(kp: &KeyPair) -> (Arc<RateLimiter>, Arc<RateLimiter>) {
    let public = kp.static_public();
    (
        Arc::new(RateLimiter::new(&public, u64::MAX)),
        Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
    )
}

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(v) => Some(v),
        SocketAddr::V6(_) => None,
    }
}

impl Overlay {
    /// Binds the UDP socket on `0.0.0.0:data_port` in the calling thread's network namespace
    /// and starts the engine, with no network yet.
    pub fn start(cfg: OverlayConfig) -> Result<Overlay, OverlayError> {
        validate_config(&cfg)?;
        let (socket, gro) = udp::bind(cfg.data_port).map_err(|source| OverlayError::Bind {
            port: cfg.data_port,
            source,
        })?;
        let shared = Arc::new(
            Shared::new(socket, gro).map_err(|source| OverlayError::Socket {
                what: "create the stop latch",
                source,
            })?,
        );
        let mut threads = Vec::new();
        let started = engine::spawn_rx(shared.clone())
            .and_then(|t| {
                threads.push(t);
                engine::spawn_timers(shared.clone())
            })
            .map(|t| threads.push(t));
        if let Err(e) = started {
            shared.stop.wake();
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        tracing::info!(
            port = cfg.data_port,
            udp_gro = gro,
            "overlay engine started"
        );
        Ok(Overlay {
            cfg,
            shared,
            threads,
            control: Mutex::new(Control {
                networks: HashMap::new(),
                used_indices: HashSet::new(),
                next_index: rand::random::<u32>() & 0x00ff_ffff,
            }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &OverlayConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the host match `plan`: sandboxes, TUN devices, endpoints, routes and peers;
    /// removes the sandboxes of this prefix that the plan does not name. Idempotent; peers
    /// whose key and keepalive are unchanged keep their sessions. An invalid plan changes
    /// nothing; a failure in one part does not stop the others, and is reported as
    /// [`OverlayError::Partial`].
    pub fn apply(&self, plan: &HostPlan) -> Result<(), OverlayError> {
        validate_plan(&self.cfg, plan)?;
        let mut ctl = self.lock();
        let mut errors = Vec::new();
        let wanted: HashMap<&str, &NetworkPlan> =
            plan.networks.iter().map(|n| (n.id.as_str(), n)).collect();

        // Networks that go: out of the engine first, then their devices, then their sandboxes.
        let gone: Vec<String> = ctl
            .networks
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for id in gone {
            if let Some(entry) = ctl.networks.remove(&id) {
                for p in entry.peers.values() {
                    ctl.used_indices.remove(&p.peer.index);
                }
                removed.push((id, entry));
            }
        }
        if !removed.is_empty() {
            self.shared.publish(build_snapshot(&ctl));
        }
        for (id, mut entry) in removed {
            if let Some(t) = entry.tun.as_mut() {
                t.stop();
            }
            drop(entry.tun.take());
            match sandbox::delete_sandbox(&entry.sandbox) {
                Ok(()) => {
                    tracing::info!(network = %id, sandbox = %entry.sandbox, "network removed")
                }
                Err(e) => errors.push(OverlayError::Sandbox {
                    what: format!("network {id}: delete sandbox {}", entry.sandbox),
                    source: e,
                }),
            }
        }

        // Leftover sandboxes of this prefix (e.g. from before a restart).
        let names: HashSet<String> = plan
            .networks
            .iter()
            .map(|n| sandbox_name(&self.cfg.sandbox_prefix, &n.id))
            .collect();
        let own = format!("{}-", self.cfg.sandbox_prefix);
        match sandbox::list_sandboxes(&own) {
            Ok(list) => {
                for sb in list {
                    if sb.starts_with(&own) && !names.contains(&sb) {
                        match sandbox::delete_sandbox(&sb) {
                            Ok(()) => {
                                tracing::info!(sandbox = %sb, "removed a sandbox no network needs")
                            }
                            Err(e) => errors.push(OverlayError::Sandbox {
                                what: format!("delete leftover sandbox {sb}"),
                                source: e,
                            }),
                        }
                    }
                }
            }
            Err(e) => errors.push(OverlayError::Sandbox {
                what: format!("list sandboxes {own}*"),
                source: e,
            }),
        }

        // Networks that stay or come.
        let mut routes = Vec::new();
        for n in &plan.networks {
            if let Some(r) = self.reconcile_network(&mut ctl, n, &mut errors) {
                routes.push(r);
            }
        }
        self.shared.publish(build_snapshot(&ctl));

        // Kernel routes towards wg0, once the engine knows the peers.
        for (id, sb, dests) in routes {
            if let Err(e) = sandbox::sync_routes(&sb, TUN_NAME, &dests) {
                errors.push(OverlayError::Sandbox {
                    what: format!("network {id}: routes via {TUN_NAME} in sandbox {sb}"),
                    source: e,
                });
            }
        }
        drop(ctl);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(OverlayError::Partial(errors))
        }
    }

    /// Brings one network in line; returns the routes to sync when its TUN device is up.
    fn reconcile_network(
        &self,
        ctl: &mut Control,
        n: &NetworkPlan,
        errors: &mut Vec<OverlayError>,
    ) -> Option<(String, String, Vec<Ipv4Addr>)> {
        let sb = sandbox_name(&self.cfg.sandbox_prefix, &n.id);
        let path = sandbox::netns_path(&sb);
        let prefix = n.subnet.prefix_len();

        // Entry, re-keyed if the key pair changed (every session goes with the old key).
        let rekey = ctl
            .networks
            .get(&n.id)
            .is_some_and(|e| e.keypair != n.keypair);
        if rekey && let Some(e) = ctl.networks.get_mut(&n.id) {
            let old: Vec<u32> = e.peers.values().map(|p| p.peer.index).collect();
            e.peers.clear();
            let (mac1, limiter) = limiters(&n.keypair);
            e.keypair = n.keypair.clone();
            e.mac1 = mac1;
            e.limiter = limiter;
            for i in old {
                ctl.used_indices.remove(&i);
            }
            tracing::info!(network = %n.id, "network key pair changed; sessions restart");
        }
        if !ctl.networks.contains_key(&n.id) {
            let (mac1, limiter) = limiters(&n.keypair);
            ctl.networks.insert(
                n.id.clone(),
                NetEntry {
                    sandbox: sb.clone(),
                    keypair: n.keypair.clone(),
                    mac1,
                    limiter,
                    tun: None,
                    peers: HashMap::new(),
                    endpoints: HashMap::new(),
                },
            );
        }

        // Peers: keep unchanged ones (and their sessions), replace changed ones, drop the rest.
        let wanted: HashSet<&str> = n.peers.iter().map(|p| p.id.as_str()).collect();
        let mut freed = Vec::new();
        let mut fresh = Vec::new();
        if let Some(entry) = ctl.networks.get_mut(&n.id) {
            entry.peers.retain(|id, p| {
                let keep = wanted.contains(id.as_str());
                if !keep {
                    freed.push(p.peer.index);
                }
                keep
            });
            for p in &n.peers {
                match entry.peers.get_mut(&p.id) {
                    Some(e)
                        if e.plan.public_key == p.public_key
                            && e.plan.keepalive_secs == p.keepalive_secs =>
                    {
                        if e.plan.endpoint != p.endpoint
                            && let Some(ep) = p.endpoint.and_then(v4)
                        {
                            e.peer.set_endpoint(ep);
                        }
                        e.plan = p.clone();
                    }
                    Some(e) => {
                        freed.push(e.peer.index);
                        fresh.push(p.clone());
                    }
                    None => fresh.push(p.clone()),
                }
            }
        }
        for i in freed {
            ctl.used_indices.remove(&i);
        }
        for p in fresh {
            let index = ctl.alloc_index();
            let Some(entry) = ctl.networks.get_mut(&n.id) else {
                continue;
            };
            let peer = Peer::new(
                &p.id,
                index,
                entry.keypair.static_secret(),
                p.public_key,
                p.keepalive_secs,
                p.endpoint.and_then(v4),
                entry.limiter.clone(),
            );
            tracing::debug!(network = %n.id, peer = %p.id, index, "peer added");
            entry.peers.insert(
                p.id.clone(),
                PeerEntry {
                    peer: Arc::new(peer),
                    plan: p,
                },
            );
        }
        let entry = ctl.networks.get_mut(&n.id)?;

        // Sandbox.
        let spec = SandboxSpec {
            name: sb.clone(),
            gateway: n.gateway,
            prefix,
            mtu: n.mtu,
        };
        if let Err(e) = sandbox::ensure_sandbox(&spec) {
            errors.push(OverlayError::Sandbox {
                what: format!("network {}: ensure sandbox {sb}", n.id),
                source: e,
            });
            return None;
        }

        // TUN device, recreated when it broke, vanished or must change MTU.
        let need_tun = match &entry.tun {
            None => true,
            Some(t) => t.dev.is_dead() || t.dev.mtu != n.mtu || !tun::exists_in(&path, TUN_NAME),
        };
        if need_tun {
            if let Some(mut old) = entry.tun.take() {
                old.stop();
            }
            match tun::create(&n.id, &sb, &path, TUN_NAME, n.mtu, true) {
                Ok(dev) => {
                    let dev = Arc::new(dev);
                    match engine::spawn_tun_reader(self.shared.clone(), n.id.clone(), dev.clone()) {
                        Ok(thread) => {
                            tracing::info!(network = %n.id, sandbox = %sb, offload = dev.offload,
                                "TUN device {TUN_NAME} up");
                            entry.tun = Some(TunHandle {
                                dev,
                                thread: Some(thread),
                            });
                        }
                        Err(e) => errors.push(e),
                    }
                }
                Err(e) => errors.push(e),
            }
        }

        // Endpoints. The sandbox names an endpoint's veth after the first characters of its ID.
        let short = |id: &str| id.chars().take(VETH_ID_CHARS).collect::<String>();
        let present: HashSet<String> = match sandbox::list_endpoints(&sb) {
            Ok(list) => list.into_iter().collect(),
            Err(e) => {
                errors.push(OverlayError::Sandbox {
                    what: format!("network {}: list endpoints of sandbox {sb}", n.id),
                    source: e,
                });
                HashSet::new()
            }
        };
        let wanted: HashSet<String> = n.local.iter().map(|e| short(&e.id)).collect();
        for id in present.difference(&wanted) {
            if let Err(e) = sandbox::detach_endpoint(&sb, id) {
                errors.push(OverlayError::Sandbox {
                    what: format!("network {}: detach endpoint {id}", n.id),
                    source: e,
                });
            }
        }
        entry.endpoints.retain(|id, _| wanted.contains(&short(id)));
        for ep in &n.local {
            let rec = EndpointRecord {
                ep: ep.clone(),
                prefix,
                mtu: n.mtu,
            };
            // Attach (which repairs) what is missing, changed, or not attached by this process.
            if present.contains(&short(&ep.id)) && entry.endpoints.get(&ep.id) == Some(&rec) {
                continue;
            }
            let spec = EndpointSpec {
                id: ep.id.clone(),
                netns: ep.netns.clone(),
                ifname: ep.ifname.clone(),
                ip: ep.ip,
                prefix,
                mtu: n.mtu,
            };
            match sandbox::attach_endpoint(&sb, &spec) {
                Ok(()) => {
                    entry.endpoints.insert(ep.id.clone(), rec);
                }
                Err(e) => {
                    entry.endpoints.remove(&ep.id);
                    errors.push(OverlayError::Sandbox {
                        what: format!(
                            "network {}: attach endpoint {} ({})",
                            n.id,
                            ep.id,
                            ep.netns.display()
                        ),
                        source: e,
                    });
                }
            }
        }

        let tun_up = entry.tun.as_ref().is_some_and(|t| !t.dev.is_dead());
        tun_up.then(|| {
            let mut dests: Vec<Ipv4Addr> = n
                .peers
                .iter()
                .flat_map(|p| p.allowed_ips.iter().copied())
                .collect();
            dests.sort();
            (n.id.clone(), sb, dests)
        })
    }

    /// Per network: the peers (endpoint, last handshake, traffic) and the local endpoints.
    pub fn status(&self) -> OverlayStatus {
        let ctl = self.lock();
        let mut networks: Vec<NetworkStatus> = ctl
            .networks
            .iter()
            .map(|(id, e)| {
                let mut peers: Vec<PeerStatus> = e
                    .peers
                    .values()
                    .map(|p| {
                        let (hs, rx, tx) = p.peer.stats();
                        PeerStatus {
                            id: p.plan.id.clone(),
                            public_key: p.plan.public_key,
                            endpoint: p.peer.endpoint().map(SocketAddr::V4),
                            last_handshake: hs,
                            rx_bytes: rx,
                            tx_bytes: tx,
                            allowed_ips: p.plan.allowed_ips.clone(),
                        }
                    })
                    .collect();
                peers.sort_by(|a, b| a.id.cmp(&b.id));
                let mut local: Vec<String> = e.endpoints.keys().cloned().collect();
                local.sort();
                NetworkStatus {
                    id: id.clone(),
                    sandbox: e.sandbox.clone(),
                    public_key: e.keypair.public(),
                    tun_up: e.tun.as_ref().is_some_and(|t| !t.dev.is_dead()),
                    tun_offload: e.tun.as_ref().is_some_and(|t| t.dev.offload),
                    local,
                    peers,
                }
            })
            .collect();
        networks.sort_by(|a, b| a.id.cmp(&b.id));
        OverlayStatus {
            data_port: self.cfg.data_port,
            udp_gro: self.shared.gro,
            counters: self.shared.counters.read(),
            networks,
        }
    }

    /// The namespace path of a network's sandbox.
    pub fn sandbox_path(&self, network_id: &str) -> PathBuf {
        sandbox::netns_path(&sandbox_name(&self.cfg.sandbox_prefix, network_id))
    }

    /// Stops the engine and closes the TUN devices (their routes go with them). Sandboxes and
    /// endpoints stay: applying the same plan after [`Overlay::start`] brings traffic back.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop(&mut self) {
        self.shared.stop.wake();
        let mut ctl = self.lock();
        for e in ctl.networks.values_mut() {
            if let Some(t) = e.tun.as_mut() {
                t.stop();
            }
            e.tun = None;
        }
        ctl.networks.clear();
        drop(ctl);
        self.shared.publish(Snapshot::default());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::info!(port = self.cfg.data_port, "overlay engine stopped");
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn build_snapshot(ctl: &Control) -> Snapshot {
    let mut ids: Vec<&String> = ctl.networks.keys().collect();
    ids.sort();
    let mut snap = Snapshot::default();
    for (ni, id) in ids.into_iter().enumerate() {
        let Some(e) = ctl.networks.get(id) else {
            continue;
        };
        let mut peers = Vec::with_capacity(e.peers.len());
        let mut by_key = HashMap::new();
        let mut routes = RoutingTable::new();
        let mut entries: Vec<&PeerEntry> = e.peers.values().collect();
        entries.sort_by(|a, b| a.plan.id.cmp(&b.plan.id));
        for (slot, p) in entries.into_iter().enumerate() {
            let slot = slot as u32;
            if let Err(c) = routes.insert_all(&p.plan.allowed_ips, slot) {
                // validate_plan refuses conflicts; keep the first holder if one slips through.
                tracing::warn!(network = %id, peer = %p.plan.id, ip = %c.ip, "address held by another peer");
            }
            by_key.insert(p.plan.public_key.0, slot);
            snap.by_index.insert(p.peer.index, (ni as u32, slot));
            peers.push(p.peer.clone());
        }
        snap.networks.push(Arc::new(NetState {
            id: id.clone(),
            secret: e.keypair.static_secret(),
            public: e.keypair.static_public(),
            mac1: e.mac1.clone(),
            limiter: e.limiter.clone(),
            peers,
            by_key,
            routes,
            tun: e.tun.as_ref().map(|t| t.dev.clone()),
        }));
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Overlay>();
        shareable::<OverlayStatus>();
    }
}
