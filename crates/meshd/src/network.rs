//! This node's part of the overlay networks: its WireGuard keys, the overlay engine,
//! and keeping the engine in line with the managers' network map.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use mesh_manager::rpc::NetworkMap;
use mesh_overlay::{HostPlan, KeyPair, Overlay, OverlayConfig};
use tracing::{info, warn};

use crate::netplan;

/// The overlay side of an active node.
pub struct NetRuntime {
    node_id: String,
    prefix: String,
    /// The tasks' embedded DNS resolver (its threads live in the host's namespace, so
    /// forwarded queries leave from here).
    resolver: mesh_dns::Resolver,
    overlay: Mutex<Option<Overlay>>,
    /// The routing mesh (published ports, VIPs).
    mesh: Mutex<Option<crate::mesh::Mesh>>,
    dataplane: &'static str,
    /// The ingress network's ID and gateway, from the last map.
    ingress: Mutex<Option<(String, std::net::Ipv4Addr)>>,
    /// The last map applied: the mesh plan is made again from it when nodes die or revive.
    /// Held while the mesh applies a plan, so that plans are applied in order.
    last_map: Mutex<Option<Arc<NetworkMap>>>,
    /// Nodes the mesh's probes found dead (underlay addresses).
    dead_nodes: Mutex<BTreeSet<Ipv4Addr>>,
    /// The nodes the mesh's probes watch (every node of the last map).
    mesh_nodes: tokio::sync::watch::Sender<Vec<Ipv4Addr>>,
    keys: Mutex<BTreeMap<String, KeyPair>>,
    keys_path: PathBuf,
    applied_version: AtomicU64,
    background: std::sync::atomic::AtomicBool,
    /// Serialises syncs.
    pub(crate) sync_lock: tokio::sync::Mutex<()>,
}

/// Prefix of this node's sandbox namespaces: `msb<first 8 characters of the node ID>`.
pub fn sandbox_prefix(node_id: &str) -> String {
    format!("msb{}", node_id.get(..8).unwrap_or(node_id))
}

impl NetRuntime {
    /// Starts the engine on `data_port` and loads the keys kept in `data_dir`.
    pub fn start(
        node_id: &str,
        data_dir: &Path,
        data_port: u16,
        prefix: Option<&str>,
        dns_upstreams: &[SocketAddr],
        dataplane: crate::config::DataplaneChoice,
    ) -> anyhow::Result<Self> {
        let keys_path = data_dir.join("overlay-keys.json");
        let keys = load_keys(&keys_path)?;
        let prefix = prefix.map_or_else(|| sandbox_prefix(node_id), str::to_string);
        let overlay = Overlay::start(OverlayConfig {
            data_port,
            sandbox_prefix: prefix.clone(),
        })
        .with_context(|| format!("starting the overlay on UDP port {data_port} (--data-port)"))?;
        let upstreams = if dns_upstreams.is_empty() {
            std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| mesh_dns::upstreams_from_resolv_conf(&t))
                .unwrap_or_default()
        } else {
            dns_upstreams.to_vec()
        };
        let resolver = mesh_dns::Resolver::new(mesh_dns::ResolverConfig {
            upstreams,
            ..mesh_dns::ResolverConfig::default()
        })
        .context("starting the embedded DNS resolver")?;
        let mesh = crate::mesh::Mesh::start(dataplane)?;
        Ok(Self {
            node_id: node_id.to_string(),
            prefix,
            resolver,
            overlay: Mutex::new(Some(overlay)),
            dataplane: mesh.kind(),
            mesh: Mutex::new(Some(mesh)),
            ingress: Mutex::new(None),
            last_map: Mutex::new(None),
            dead_nodes: Mutex::new(BTreeSet::new()),
            mesh_nodes: tokio::sync::watch::channel(Vec::new()).0,
            keys: Mutex::new(keys),
            keys_path,
            applied_version: AtomicU64::new(u64::MAX),
            background: std::sync::atomic::AtomicBool::new(false),
            sync_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Name of the network namespace of task `task_id` on this node: the sandbox prefix, `t`,
    /// and the task ID's first 12 characters (never `PREFIX-…`, which names sandboxes).
    pub fn task_netns_name(&self, task_id: &str) -> String {
        format!("{}t{}", self.prefix, task_id.get(..12).unwrap_or(task_id))
    }

    /// The embedded DNS resolver.
    pub fn resolver(&self) -> &mesh_dns::Resolver {
        &self.resolver
    }

    /// The routing mesh's data path: `ebpf` or `userspace`.
    pub fn dataplane(&self) -> &'static str {
        self.dataplane
    }

    /// The ingress network's ID and gateway, once a map had it.
    pub fn ingress_gateway(&self) -> Option<(String, std::net::Ipv4Addr)> {
        self.ingress.lock().ok()?.clone()
    }

    /// The routing mesh's live figures.
    pub fn mesh_stats(&self) -> Option<mesh_ingress::userspace::MeshStats> {
        self.mesh.lock().ok()?.as_ref().map(|m| m.stats())
    }

    /// The map version last applied.
    pub fn applied_version(&self) -> u64 {
        self.applied_version.load(Ordering::SeqCst)
    }

    /// Claims the right to run a background sync; false if one is running.
    pub fn begin_sync(&self) -> bool {
        !self.background.swap(true, Ordering::SeqCst)
    }

    /// Releases what [`NetRuntime::begin_sync`] claimed.
    pub fn end_sync(&self) {
        self.background.store(false, Ordering::SeqCst);
    }

    /// Forgets the applied version, so the next heartbeat triggers a sync.
    pub fn invalidate(&self) {
        self.applied_version.store(u64::MAX, Ordering::SeqCst);
    }

    /// Public keys to publish: network ID → base64.
    pub fn public_keys(&self) -> BTreeMap<String, String> {
        self.keys
            .lock()
            .map(|k| {
                k.iter()
                    .map(|(n, kp)| (n.clone(), kp.public_b64()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// This node's public key for `network`, if it has one.
    pub fn public_key(&self, network: &str) -> Option<String> {
        self.keys
            .lock()
            .ok()
            .and_then(|k| k.get(network).map(KeyPair::public_b64))
    }

    /// Makes sure this node holds a key for `network` (generated here, never sent).
    pub fn ensure_key(&self, network: &str) -> anyhow::Result<bool> {
        let mut keys = self
            .keys
            .lock()
            .map_err(|_| anyhow::anyhow!("key store lock poisoned"))?;
        if keys.contains_key(network) {
            return Ok(false);
        }
        keys.insert(network.to_string(), KeyPair::generate());
        save_keys(&self.keys_path, &keys)?;
        Ok(true)
    }

    /// Applies `map`: keys for new networks, the plan, and returns endpoints whose
    /// namespace is gone (network ID, endpoint ID) for the caller to release.
    pub fn apply_map(&self, map: &NetworkMap) -> anyhow::Result<Vec<(String, String)>> {
        for a in &map.networks {
            if self.ensure_key(&a.network.id)? {
                info!(network = %a.network.spec.name, "made this node's WireGuard key for the network");
            }
        }
        let planned = {
            let mut keys = self
                .keys
                .lock()
                .map_err(|_| anyhow::anyhow!("key store lock poisoned"))?;
            // Keys of networks this node left are dropped.
            let before = keys.len();
            keys.retain(|id, _| map.networks.iter().any(|a| a.network.id == *id));
            if keys.len() != before {
                save_keys(&self.keys_path, &keys)?;
            }
            netplan::plan(&self.node_id, map, &keys, mesh_sandbox::netns_exists, |t| {
                mesh_sandbox::netns_path(&self.task_netns_name(t))
            })
        };
        self.resolver.set_table(Arc::new(dns_table(map)));
        if let Ok(mut g) = self.ingress.lock() {
            *g = map
                .networks
                .iter()
                .find(|a| a.network.spec.ingress)
                .map(|a| (a.network.id.clone(), a.network.gateway));
        }
        self.apply_plan(&planned.plan)?;
        // After the overlay: the mesh works in the sandboxes it made.
        let nodes = mesh_nodes(map);
        self.mesh_nodes.send_if_modified(|n| {
            let changed = *n != nodes;
            *n = nodes.clone();
            changed
        });
        match self.last_map.lock() {
            Ok(mut last) => {
                let map = Arc::new(map.clone());
                self.apply_mesh(&map, &nodes);
                *last = Some(map);
            }
            Err(_) => warn!("mesh map lock poisoned: the routing mesh keeps its last plan"),
        }
        self.applied_version.store(map.version, Ordering::SeqCst);
        Ok(planned.stale)
    }

    /// Builds the mesh plan of `map` without the dead nodes' tasks and serves it. Called with
    /// `last_map` held.
    fn apply_mesh(&self, map: &NetworkMap, nodes: &[Ipv4Addr]) {
        let mut mesh_plan = crate::meshplan::plan(
            &self.node_id,
            map,
            |net| mesh_sandbox::netns_path(&mesh_overlay::sandbox_name(&self.prefix, net)),
            |t| mesh_sandbox::netns_path(&self.task_netns_name(t)),
            mesh_sandbox::netns_exists,
        );
        if let Ok(dead) = self.dead_nodes.lock() {
            crate::meshplan::drop_dead(&mut mesh_plan, map, &dead);
        }
        if let Ok(guard) = self.mesh.lock()
            && let Some(mesh) = guard.as_ref()
        {
            mesh.apply(&mesh_plan, nodes);
        }
    }

    /// The nodes the routing mesh's probes must watch: every node of the last map.
    pub fn mesh_peers(&self) -> tokio::sync::watch::Receiver<Vec<Ipv4Addr>> {
        self.mesh_nodes.subscribe()
    }

    /// Takes the tasks of `dead` nodes out of the routing mesh (and puts back those of
    /// nodes no longer in it) at once, from the last map.
    pub fn set_dead_nodes(&self, dead: BTreeSet<Ipv4Addr>) {
        if let Ok(mut d) = self.dead_nodes.lock() {
            *d = dead;
        }
        let Ok(last) = self.last_map.lock() else {
            warn!("mesh map lock poisoned: the routing mesh keeps its last plan");
            return;
        };
        if let Some(map) = last.as_ref() {
            self.apply_mesh(map, &mesh_nodes(map));
        }
    }

    fn apply_plan(&self, plan: &HostPlan) -> anyhow::Result<()> {
        let guard = self
            .overlay
            .lock()
            .map_err(|_| anyhow::anyhow!("overlay lock poisoned"))?;
        let Some(overlay) = guard.as_ref() else {
            anyhow::bail!("the overlay is stopped");
        };
        overlay.apply(plan).context("applying the overlay plan")?;
        Ok(())
    }

    /// Stops the engine. With `remove`, everything it built goes too (leaving the
    /// cluster); without, sandboxes and veths stay for a restarted meshd to re-adopt.
    pub fn stop(&self, remove: bool) {
        if let Some(mesh) = self.mesh.lock().ok().and_then(|mut g| g.take()) {
            mesh.shutdown();
        }
        let overlay = self.overlay.lock().ok().and_then(|mut g| g.take());
        if let Some(o) = overlay {
            if remove && let Err(e) = o.apply(&HostPlan::default()) {
                warn!(error = %e, "could not remove every overlay sandbox");
            }
            o.shutdown();
        }
        if remove {
            match std::fs::remove_file(&self.keys_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(error = %e, "could not remove the overlay keys"),
            }
        }
    }
}

fn load_keys(path: &Path) -> anyhow::Result<BTreeMap<String, KeyPair>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    };
    let raw: BTreeMap<String, String> = serde_json::from_str(&text)
        .with_context(|| format!("{} is corrupt; remove it to make new keys", path.display()))?;
    raw.into_iter()
        .map(|(net, private)| {
            KeyPair::from_private_b64(&private)
                .map(|k| (net.clone(), k))
                .map_err(|e| anyhow::anyhow!("{}: key of network {net}: {e}", path.display()))
        })
        .collect()
}

fn save_keys(path: &Path, keys: &BTreeMap<String, KeyPair>) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let raw: BTreeMap<&String, String> = keys.iter().map(|(n, k)| (n, k.private_b64())).collect();
    let body = serde_json::to_vec_pretty(&raw)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Every node's underlay address in `map` (networks' nodes and the mesh's backends).
fn mesh_nodes(map: &NetworkMap) -> Vec<Ipv4Addr> {
    let mut nodes: Vec<Ipv4Addr> = map
        .networks
        .iter()
        .flat_map(|a| a.nodes.iter().map(|n| n.addr.as_str()))
        .chain(
            map.mesh
                .iter()
                .flat_map(|m| m.backends.iter().map(|b| b.node_addr.as_str())),
        )
        .filter_map(|a| a.parse().ok())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// The UDP endpoint other nodes and WireGuard peers reach this node's overlay at.
pub fn data_endpoint(advertise: &str, data_port: u16) -> Option<SocketAddr> {
    advertise
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, data_port))
}

/// The embedded DNS table of a network map: each network's services, tasks and containers.
pub fn dns_table(map: &NetworkMap) -> mesh_dns::Table {
    use mesh_manager::rpc::DnsEntry;
    use std::net::IpAddr;
    let mut b = mesh_dns::Table::builder();
    for a in &map.networks {
        let net = &a.network.id;
        for e in &a.dns {
            let res = match e {
                DnsEntry::Service { name, vip, tasks } => {
                    let ips: Vec<IpAddr> = tasks.iter().map(|ip| IpAddr::V4(*ip)).collect();
                    b.add_service(net, name, vip.map(IpAddr::V4), &ips)
                        .map(|_| ())
                }
                DnsEntry::Host { name, ip } => b.add_ip(net, name, IpAddr::V4(*ip)).map(|_| ()),
            };
            if let Err(e) = res {
                tracing::debug!(network = %net, error = %e, "a name the DNS table cannot hold");
            }
        }
    }
    b.build()
}
