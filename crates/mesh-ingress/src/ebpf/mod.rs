//! The eBPF data path.
//!
//! [`EbpfMesh::load`] loads the programs of `ebpf/` (compiled by `build.rs`, embedded in the
//! binary) and attaches them; [`EbpfMesh::apply`] writes a [`MeshPlan`] into their maps;
//! dropping the [`EbpfMesh`] detaches everything (every attachment is a `bpf_link` owned by
//! this process, so a killed daemon's programs go away with its file descriptors too).
//!
//! Service VIPs are served by socket-level load balancing (`ebpf/mesh_vip.c`): programs on
//! the cgroup2 root hook `connect`, `sendmsg`, `recvmsg` and `getpeername` of the sockets of
//! registered client namespaces (matched by network namespace cookie, so several daemons on
//! one kernel each serve only their own tasks) and swap a VIP for a backend and back.
//!
//! Published ports are served by TC programs (`ebpf/mesh_ingress.c`) on the host's external
//! interfaces, with direct server return so backends see the client's real address: a local
//! backend gets the packet DNATed and sent down a *mesh link* (a veth pair this module makes
//! between the host namespace and the listener's egress namespace); a remote backend gets it
//! encapsulated to its node, which delivers it the same way; replies come back up the mesh
//! link, get their source restored and leave straight to the client.

mod ingress;
mod links;
mod sys;
mod vip;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use aya::{Ebpf, include_bytes_aligned};

use crate::error::IngressError;
use crate::plan::{MeshPlan, Proto};
use ingress::{Be, DesiredIngress, IngressMaps, IngressTable, LocalTarget};
use links::MeshLink;
use vip::{DesiredVips, VipMaps, VipTable};

/// The compiled `ebpf/mesh_vip.c`.
static MESH_VIP_OBJ: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh_vip.o"));

/// The compiled `ebpf/mesh_ingress.c`.
static MESH_INGRESS_OBJ: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh_ingress.o"));

/// Bytes the encapsulation adds (outer IPv4, UDP, mesh header).
const ENCAP_LEN: u32 = 36;

/// TC program on the external interfaces.
const ING_EXT: &str = "mesh_ing_ext";
/// TC program on the host side of each mesh link.
const ING_LINK: &str = "mesh_ing_link";

/// The programs of `mesh_vip.o`, all attached to the cgroup2 root.
const VIP_PROGRAMS: &[&str] = &[
    "mesh_vip_connect4",
    "mesh_vip_sendmsg4",
    "mesh_vip_recvmsg4",
    "mesh_vip_getpeername4",
];

/// Where and how the eBPF path attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    /// A cgroup2 hierarchy; mounted here (`mount -t cgroup2 none DIR`) when nothing is. The
    /// VIP programs attach to its root and so see every socket of the machine.
    pub cgroup2_dir: PathBuf,
    /// The network namespace of the host's networking (its external interfaces, where mesh
    /// links are made); `None`: the daemon's own.
    pub netns: Option<PathBuf>,
    /// External interfaces: published ports are served on their IPv4 addresses, and
    /// encapsulated packets from other nodes arrive by them. Empty: no published ports.
    /// IPv4 forwarding is turned on for each (the programs' route lookups need it).
    pub interfaces: Vec<String>,
    /// UDP port of the packets carrying published-port traffic between nodes; the same on
    /// every node.
    pub encap_port: u16,
    /// How long a local backend that left the plan still receives the flows pinned to it.
    pub drain: Duration,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            cgroup2_dir: PathBuf::from("/run/meshd-cgroup2"),
            netns: None,
            interfaces: Vec::new(),
            encap_port: crate::MESH_PORT,
            drain: Duration::from_secs(120),
        }
    }
}

impl EbpfConfig {
    fn validate(&self) -> Result<(), IngressError> {
        if self.encap_port == 0 {
            return Err(IngressError::invalid(
                "encap_port",
                "0 is not a port",
                "give the UDP port nodes exchange published-port traffic on, e.g. 51821",
            ));
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(IngressError::invalid(
                    format!("interfaces[{i}]"),
                    format!("{name:?} is not an interface name"),
                    "give the names of the external interfaces, e.g. eth0",
                ));
            }
        }
        Ok(())
    }
}

/// What one [`EbpfMesh::apply`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Client namespaces registered for VIPs.
    pub vip_clients: usize,
    /// VIPs served, counted once per distinct set of networks their clients are on.
    pub vip_services: usize,
    /// Backends over those VIPs.
    pub vip_backends: usize,
    /// Published ports served.
    pub ports: usize,
    /// Mesh links (one per egress namespace with local backends).
    pub links: usize,
    /// Local backends out of the plan still receiving their pinned flows.
    pub draining: usize,
    /// Map writes made by this apply.
    pub writes: usize,
    /// Parts of the plan left out, each naming the field, the problem and the fix (e.g. a
    /// client namespace that no longer exists). The rest of the plan is applied.
    pub skipped: Vec<String>,
}

/// Counters of the programs since they were loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EbpfStats {
    /// `connect` calls to a VIP sent to a backend (TCP and connected UDP).
    pub vip_connects: u64,
    /// Datagrams to a VIP sent to a backend (unconnected UDP).
    pub vip_sendmsgs: u64,
    /// Datagrams from a backend shown as coming from the VIP.
    pub vip_recvmsgs: u64,
    /// `getpeername` calls answered with the VIP.
    pub vip_getpeernames: u64,
    /// Connects and datagrams to a VIP refused because it has no backend.
    pub vip_refused: u64,
    /// Published-port packets delivered to a backend of this host.
    pub ingress_local: u64,
    /// Published-port packets sent to another node.
    pub ingress_encap: u64,
    /// Packets from another node delivered to a backend of this host.
    pub ingress_decap: u64,
    /// Replies sent straight to the client.
    pub ingress_replies: u64,
    /// Flows given a backend.
    pub ingress_new_flows: u64,
    /// New flows to a published port with no backend (the host's stack answers them).
    pub ingress_no_backend: u64,
    /// Packets dropped: on a mesh link but matching no flow.
    pub ingress_dropped_link: u64,
    /// Encapsulated packets refused (unknown node, or a backend this host does not have).
    pub ingress_dropped_decap: u64,
    /// Packets dropped for want of a route.
    pub ingress_no_route: u64,
}

/// Checks that the eBPF path can be loaded and attached here (the programs pass the
/// verifier, the cgroup2 hierarchy can be mounted and attached to), then detaches again.
/// meshd calls it to choose its default data path.
pub fn probe(cfg: &EbpfConfig) -> Result<(), IngressError> {
    EbpfMesh::load(cfg.clone()).map(drop)
}

/// The loaded and attached eBPF data path of this host.
pub struct EbpfMesh {
    cfg: EbpfConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Owns the programs and their links: dropping it detaches them.
    vip_obj: Ebpf,
    ing: IngressPart,
    vip_maps: VipMaps,
    vip_table: VipTable,
    /// The maps may differ from `vip_table` after a failed write: clear and rewrite.
    vip_dirty: bool,
}

impl std::fmt::Debug for EbpfMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfMesh").field("cfg", &self.cfg).finish()
    }
}

/// The published-port half.
struct IngressPart {
    obj: Ebpf,
    maps: IngressMaps,
    table: IngressTable,
    dirty: bool,
    /// Node addresses given by [`EbpfMesh::set_nodes`].
    nodes: BTreeSet<Ipv4Addr>,
    /// Mesh links by egress namespace.
    links: BTreeMap<PathBuf, LinkState>,
    /// Mesh links left by an earlier run were looked for (at the first apply).
    swept: bool,
}

struct LinkState {
    link: MeshLink,
    slot: u16,
    routes: Vec<Ipv4Addr>,
    tc: Option<SchedClassifierLinkId>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> IngressError {
    IngressError::EbpfUnavailable(format!("{what}: {e}"))
}

impl EbpfMesh {
    /// Mounts the cgroup2 hierarchy if needed, loads the programs and attaches them.
    /// [`IngressError::EbpfUnavailable`] when the kernel refuses (meshd then uses the
    /// userspace path).
    pub fn load(cfg: EbpfConfig) -> Result<Self, IngressError> {
        cfg.validate()?;
        let cgroup = sys::ensure_cgroup2(&cfg.cgroup2_dir)?;
        let (vip_obj, vip_maps) = load_vip(&cgroup)?;
        let ing = load_ingress(&cfg)?;
        tracing::info!(
            cgroup2 = %cfg.cgroup2_dir.display(),
            netns = %links::ns_label(cfg.netns.as_deref()),
            interfaces = ?cfg.interfaces,
            "eBPF data path loaded"
        );
        Ok(EbpfMesh {
            cfg,
            inner: Mutex::new(Inner {
                vip_obj,
                ing,
                vip_maps,
                vip_table: VipTable::default(),
                vip_dirty: false,
            }),
        })
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &EbpfConfig {
        &self.cfg
    }

    /// Makes the maps serve `plan`: an invalid plan changes nothing; parts that cannot be
    /// served (a client namespace gone) are listed in [`ApplyReport::skipped`].
    pub fn apply(&self, plan: &MeshPlan) -> Result<ApplyReport, IngressError> {
        plan.validate()?;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let mut report = ApplyReport::default();

        // Resolve client namespaces to cookies (never cached: a namespace's inode number is
        // reused once it dies, its cookie never is).
        let mut want = DesiredVips::default();
        let paths: Vec<PathBuf> = plan
            .vips
            .iter()
            .flat_map(|sb| sb.clients.iter().cloned())
            .collect();
        let mut cookies = sys::netns_cookies(&paths).into_iter();
        for sb in &plan.vips {
            let vips = sb
                .services
                .iter()
                .map(|s| (s.vip, (s.name.clone(), s.backends.clone())))
                .collect();
            want.networks.insert(sb.network_id.clone(), vips);
            for (i, path) in sb.clients.iter().enumerate() {
                match cookies.next() {
                    Some(Ok(c)) => {
                        want.netns
                            .entry(c)
                            .or_default()
                            .insert(sb.network_id.clone());
                    }
                    Some(Err(e)) => report.skipped.push(format!(
                        "vips[{}].clients[{i}]: {} cannot be entered ({e}); its task gets no \
                         VIPs: list only namespaces of running tasks",
                        sb.network_id,
                        path.display()
                    )),
                    None => {}
                }
            }
        }

        if inner.vip_dirty {
            inner.vip_maps.clear()?;
            inner.vip_table = VipTable::default();
            inner.vip_dirty = false;
        }
        let (ops, skipped) = inner.vip_table.update(&want);
        report.skipped.extend(skipped);
        for op in &ops {
            if let Err(e) = inner.vip_maps.exec(op) {
                inner.vip_dirty = true;
                tracing::warn!(error = %e, ?op, "VIP map write failed; rewriting all next time");
                return Err(e);
            }
        }
        report.writes = ops.len();
        self.apply_listeners(&mut inner.ing, plan, &mut report)?;
        report.vip_clients = inner.vip_table.netns_count();
        report.vip_services = inner.vip_table.service_count();
        report.vip_backends = inner.vip_table.backend_count();
        for s in &report.skipped {
            tracing::warn!("{s}");
        }
        tracing::debug!(
            writes = report.writes,
            clients = report.vip_clients,
            services = report.vip_services,
            "mesh plan applied to the eBPF maps"
        );
        Ok(report)
    }

    /// The programs' counters since load.
    pub fn stats(&self) -> Result<EbpfStats, IngressError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let m = &inner.vip_maps;
        let g = &inner.ing.maps;
        Ok(EbpfStats {
            vip_connects: m.stat(vip::STAT_CONNECT)?,
            vip_sendmsgs: m.stat(vip::STAT_SENDMSG)?,
            vip_recvmsgs: m.stat(vip::STAT_RECVMSG)?,
            vip_getpeernames: m.stat(vip::STAT_GETPEERNAME)?,
            vip_refused: m.stat(vip::STAT_REFUSED)?,
            ingress_local: g.stat(ingress::STAT_LOCAL)?,
            ingress_encap: g.stat(ingress::STAT_ENCAP)?,
            ingress_decap: g.stat(ingress::STAT_DECAP)?,
            ingress_replies: g.stat(ingress::STAT_REPLY)?,
            ingress_new_flows: g.stat(ingress::STAT_NEW_FLOW)?,
            ingress_no_backend: g.stat(ingress::STAT_NO_BACKEND)?,
            ingress_dropped_link: g.stat(ingress::STAT_DROP_LINK)?,
            ingress_dropped_decap: g.stat(ingress::STAT_DROP_DECAP)?,
            ingress_no_route: g.stat(ingress::STAT_NO_ROUTE)?,
        })
    }

    /// Sets the underlay addresses of the cluster's nodes: encapsulated published-port
    /// packets are accepted from these only (the nodes of the plan's remote backends are
    /// always accepted too). Takes effect at the next [`EbpfMesh::apply`].
    pub fn set_nodes(&self, nodes: &[Ipv4Addr]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ing.nodes = nodes.iter().copied().collect();
    }

    /// The mesh links made, as (egress namespace, host-side interface name).
    pub fn mesh_links(&self) -> Vec<(PathBuf, String)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .ing
            .links
            .iter()
            .map(|(p, l)| (p.clone(), l.link.name.clone()))
            .collect()
    }

    fn host(&self) -> Option<&Path> {
        self.cfg.netns.as_deref()
    }

    /// The published-port part of [`EbpfMesh::apply`].
    fn apply_listeners(
        &self,
        ing: &mut IngressPart,
        plan: &MeshPlan,
        report: &mut ApplyReport,
    ) -> Result<(), IngressError> {
        let host = self.host();
        let mut want = DesiredIngress {
            encap_port: self.cfg.encap_port,
            nodes: ing.nodes.clone(),
            ..DesiredIngress::default()
        };
        if !self.cfg.interfaces.is_empty() {
            let addrs = links::interface_addrs(host, &self.cfg.interfaces)
                .map_err(|e| IngressError::io("reading the external interfaces' addresses", e))?;
            want.addrs = addrs.into_iter().map(|(_, a)| a).collect();
            let mtu = links::min_mtu(host, &self.cfg.interfaces)
                .map_err(|e| IngressError::io("reading the external interfaces' MTU", e))?;
            // Room for IPv4 and TCP headers and the encapsulation.
            want.mss = u16::try_from(mtu.saturating_sub(40 + ENCAP_LEN)).unwrap_or(u16::MAX);
        }

        // Mesh links for the egress namespaces with local backends.
        let mut link_ok: BTreeMap<PathBuf, Option<(u32, Ipv4Addr, String)>> = BTreeMap::new();
        let mut routes: BTreeMap<PathBuf, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for l in &plan.listeners {
            if self.cfg.interfaces.is_empty()
                || l.proxy_protocol
                || !l.backends.iter().any(|b| b.node.is_none())
            {
                continue;
            }
            let egress = l.egress.netns.clone();
            if !link_ok.contains_key(&egress) {
                let made = self.ensure_link(ing, &egress).map_err(|e| {
                    report.skipped.push(format!(
                        "listeners[{}/{}].egress.netns: no mesh link into {} ({e}); its                          local backends are left out: give the namespace of a running                          sandbox",
                        l.port,
                        l.proto,
                        egress.display()
                    ));
                });
                link_ok.insert(egress.clone(), made.ok());
            }
            for b in l.backends.iter().filter(|b| b.node.is_none()) {
                routes
                    .entry(egress.clone())
                    .or_default()
                    .insert(*b.addr.ip());
            }
        }

        for l in &plan.listeners {
            let field = format!("listeners[{}/{}]", l.port, l.proto);
            if l.proxy_protocol {
                report.skipped.push(format!(
                    "{field}.proxy_protocol: the eBPF path sends no PROXY header (backends                      see the client's address itself); the port is not served here: drop                      proxy-protocol or use the userspace data path"
                ));
                continue;
            }
            if self.cfg.interfaces.is_empty() {
                report.skipped.push(format!(
                    "{field}: no external interface configured; the port is not served:                      list the host's interfaces in the eBPF config"
                ));
                continue;
            }
            let proto = match l.proto {
                Proto::Tcp => ingress::IPPROTO_TCP,
                Proto::Udp => ingress::IPPROTO_UDP,
            };
            let mut bes = Vec::new();
            for b in &l.backends {
                match b.node {
                    Some(node) => {
                        want.nodes.insert(node);
                        bes.push(Be {
                            addr: *b.addr.ip(),
                            port: b.addr.port(),
                            node: Some(node),
                        });
                    }
                    None => {
                        let Some(Some((ifindex, nexthop, link))) = link_ok.get(&l.egress.netns)
                        else {
                            continue;
                        };
                        bes.push(Be {
                            addr: *b.addr.ip(),
                            port: b.addr.port(),
                            node: None,
                        });
                        want.local.insert(
                            (proto, l.port, *b.addr.ip(), b.addr.port()),
                            LocalTarget {
                                ifindex: *ifindex,
                                nexthop: *nexthop,
                                link: link.clone(),
                            },
                        );
                    }
                }
            }
            want.ports.insert((proto, l.port), bes);
        }

        // Host routes to local backends through their link.
        for (egress, st) in ing.links.iter_mut() {
            let want_routes: Vec<Ipv4Addr> = routes
                .get(egress)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            if want_routes == st.routes {
                continue;
            }
            match links::sync_routes(host, &st.link, &st.routes, &want_routes) {
                Ok(()) => st.routes = want_routes,
                Err(e) => report.skipped.push(format!(
                    "routes to the backends behind {} ({}): {e}",
                    st.link.name,
                    egress.display()
                )),
            }
        }

        if ing.dirty {
            ing.maps.clear()?;
            ing.table = IngressTable::default();
            ing.dirty = false;
        }
        let (ops, skipped) = ing.table.update(&want, Instant::now(), self.cfg.drain);
        report.skipped.extend(skipped);
        for op in &ops {
            if let Err(e) = ing.maps.exec(op) {
                ing.dirty = true;
                tracing::warn!(error = %e, ?op, "ingress map write failed; rewriting all next time");
                return Err(e);
            }
        }
        report.writes += ops.len();

        // Links nothing uses any more (no listener, no draining backend) go.
        let in_use = ing.table.links_in_use();
        let unused: Vec<PathBuf> = ing
            .links
            .iter()
            .filter(|(p, l)| !link_ok.contains_key(*p) && !in_use.contains(&l.link.name))
            .map(|(p, _)| p.clone())
            .collect();
        for p in unused {
            if let Some(st) = ing.links.remove(&p) {
                remove_link(&mut ing.obj, host, st);
            }
        }
        if !ing.swept {
            // A daemon that was killed left its links; those this plan does not use go.
            let ours: BTreeSet<&str> = ing.links.values().map(|l| l.link.name.as_str()).collect();
            match links::list(host) {
                Ok(found) => {
                    for name in found.iter().filter(|n| !ours.contains(n.as_str())) {
                        match links::remove(host, name) {
                            Ok(()) => tracing::info!(link = %name, "removed a stale mesh link"),
                            Err(e) => {
                                tracing::warn!(link = %name, error = %e, "removing a stale mesh link")
                            }
                        }
                    }
                    ing.swept = true;
                }
                Err(e) => tracing::warn!(error = %e, "listing mesh links"),
            }
        }
        report.ports = ing.table.port_count();
        report.links = ing.links.len();
        report.draining = ing.table.draining_count();
        Ok(())
    }

    /// The mesh link into `egress`, made (and its TC program attached) if needed.
    fn ensure_link(
        &self,
        ing: &mut IngressPart,
        egress: &Path,
    ) -> io::Result<(u32, Ipv4Addr, String)> {
        let host = self.host();
        if let Some(st) = ing.links.get(egress) {
            // Still there with the same index: nothing to do.
            if links::ifindex(host, &st.link.name)? == Some(st.link.ifindex) {
                return Ok((st.link.ifindex, st.link.peer_addr, st.link.name.clone()));
            }
        }
        let slot = match ing.links.get(egress) {
            Some(st) => st.slot,
            None => {
                let used: BTreeSet<u16> = ing.links.values().map(|l| l.slot).collect();
                (0..4096u16)
                    .find(|s| !used.contains(s))
                    .ok_or_else(|| io::Error::other("4096 mesh links already"))?
            }
        };
        if let Some(old) = ing.links.remove(egress) {
            remove_link(&mut ing.obj, host, old);
        }
        let link = links::ensure(host, egress, slot)?;
        let tc = attach_tc(&mut ing.obj, ING_LINK, host, &link.name)?;
        tracing::info!(
            link = %link.name,
            egress = %egress.display(),
            host_addr = %link.host_addr,
            peer_addr = %link.peer_addr,
            "mesh link ready"
        );
        let out = (link.ifindex, link.peer_addr, link.name.clone());
        ing.links.insert(
            egress.to_path_buf(),
            LinkState {
                link,
                slot,
                routes: Vec::new(),
                tc: Some(tc),
            },
        );
        Ok(out)
    }

    /// The kernel IDs of the programs this mesh attached (for `bpftool prog show id N`).
    pub fn program_ids(&self) -> Result<Vec<u32>, IngressError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids = Vec::new();
        for (_, prog) in inner.vip_obj.programs().chain(inner.ing.obj.programs()) {
            let info = prog
                .info()
                .map_err(|e| IngressError::io("reading program info", std::io::Error::other(e)))?;
            ids.push(info.id());
        }
        Ok(ids)
    }
}

impl Drop for EbpfMesh {
    fn drop(&mut self) {
        let host = self.cfg.netns.clone();
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let links = std::mem::take(&mut inner.ing.links);
        for (_, st) in links {
            remove_link(&mut inner.ing.obj, host.as_deref(), st);
        }
        tracing::info!("eBPF data path detached");
    }
}

/// Detaches the link's TC program and deletes the link (best effort, logged).
fn remove_link(obj: &mut Ebpf, host: Option<&Path>, st: LinkState) {
    if let Some(id) = st.tc
        && let Some(prog) = obj.program_mut(ING_LINK)
        && let Ok(prog) = <&mut SchedClassifier>::try_from(prog)
        && let Err(e) = prog.detach(id)
    {
        tracing::debug!(link = %st.link.name, error = %e, "detaching (the link may be gone)");
    }
    match links::remove(host, &st.link.name) {
        Ok(()) => tracing::info!(link = %st.link.name, "mesh link removed"),
        Err(e) => tracing::warn!(link = %st.link.name, error = %e, "removing the mesh link"),
    }
}

/// Attaches TC program `name` on the ingress of `ifname` in `host`.
fn attach_tc(
    obj: &mut Ebpf,
    name: &str,
    host: Option<&Path>,
    ifname: &str,
) -> io::Result<SchedClassifierLinkId> {
    let prog: &mut SchedClassifier = obj
        .program_mut(name)
        .ok_or_else(|| io::Error::other(format!("no program {name}")))?
        .try_into()
        .map_err(io::Error::other)?;
    links::in_ns(host, || {
        prog.attach(ifname, TcAttachType::Ingress)
            .map_err(|e| io::Error::other(format!("attaching {name} to {ifname}: {e}")))
    })
}

/// Loads `mesh_ingress.o` and attaches its external program to the configured interfaces.
fn load_ingress(cfg: &EbpfConfig) -> Result<IngressPart, IngressError> {
    let mut obj =
        Ebpf::load(MESH_INGRESS_OBJ).map_err(|e| unavailable("loading mesh_ingress.o", e))?;
    for name in [ING_EXT, ING_LINK] {
        let prog: &mut SchedClassifier = obj
            .program_mut(name)
            .ok_or_else(|| unavailable("mesh_ingress.o", format!("no program {name}")))?
            .try_into()
            .map_err(|e| unavailable(name, e))?;
        prog.load()
            .map_err(|e| unavailable(&format!("loading {name}"), e))?;
    }
    let host = cfg.netns.as_deref();
    for (i, ifname) in cfg.interfaces.iter().enumerate() {
        let found = links::ifindex(host, ifname).map_err(|e| {
            IngressError::io(
                format!("looking up {ifname} in {}", links::ns_label(host)),
                e,
            )
        })?;
        if found.is_none() {
            return Err(IngressError::invalid(
                format!("interfaces[{i}]"),
                format!(
                    "no interface {ifname} in the {} network namespace",
                    links::ns_label(host)
                ),
                "name the host's external interfaces (ip -br link)",
            ));
        }
    }
    if !cfg.interfaces.is_empty() {
        links::enable_forwarding(host, &cfg.interfaces).map_err(|e| {
            IngressError::io("turning on IPv4 forwarding on the external interfaces", e)
        })?;
    }
    for ifname in &cfg.interfaces {
        attach_tc(&mut obj, ING_EXT, host, ifname)
            .map_err(|e| unavailable(&format!("interfaces[{ifname}]"), e))?;
    }
    let maps = IngressMaps {
        addrs: take(&mut obj, "mesh_ing_addrs")?,
        nodes: take(&mut obj, "mesh_ing_nodes")?,
        ports: take(&mut obj, "mesh_ing_ports")?,
        backends: take(&mut obj, "mesh_ing_backends")?,
        local: take(&mut obj, "mesh_ing_local")?,
        rr: take(&mut obj, "mesh_ing_rr")?,
        config: take(&mut obj, "mesh_ing_config")?,
        stats: take(&mut obj, "mesh_ing_stats")?,
    };
    Ok(IngressPart {
        obj,
        maps,
        table: IngressTable::default(),
        dirty: false,
        nodes: BTreeSet::new(),
        links: BTreeMap::new(),
        swept: false,
    })
}

/// Loads `mesh_vip.o` and attaches its programs to the cgroup2 root.
fn load_vip(cgroup: &File) -> Result<(Ebpf, VipMaps), IngressError> {
    let mut obj = Ebpf::load(MESH_VIP_OBJ).map_err(|e| unavailable("loading mesh_vip.o", e))?;
    for name in VIP_PROGRAMS {
        let prog: &mut CgroupSockAddr = obj
            .program_mut(name)
            .ok_or_else(|| unavailable("mesh_vip.o", format!("no program {name}")))?
            .try_into()
            .map_err(|e| unavailable(name, e))?;
        prog.load()
            .map_err(|e| unavailable(&format!("loading {name}"), e))?;
        // A cgroup bpf_link always lets other programs run on the same hook.
        prog.attach(cgroup, CgroupAttachMode::Single)
            .map_err(|e| unavailable(&format!("attaching {name} to the cgroup2 root"), e))?;
    }
    let maps = VipMaps {
        netns: take(&mut obj, "mesh_vip_netns")?,
        services: take(&mut obj, "mesh_vip_services")?,
        backends: take(&mut obj, "mesh_vip_backends")?,
        live: take(&mut obj, "mesh_vip_live")?,
        rr: take(&mut obj, "mesh_vip_rr")?,
        stats: take(&mut obj, "mesh_vip_stats")?,
    };
    Ok((obj, maps))
}

/// Takes a map out of the object as its typed form.
fn take<M>(obj: &mut Ebpf, name: &str) -> Result<M, IngressError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = obj
        .take_map(name)
        .ok_or_else(|| unavailable("eBPF object", format!("no map {name}")))?;
    M::try_from(map).map_err(|e| unavailable(&format!("map {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<EbpfMesh>();
    }

    #[test]
    fn bad_config_names_the_field() {
        let e = EbpfConfig {
            interfaces: vec!["a/b".into()],
            ..EbpfConfig::default()
        }
        .validate()
        .map_err(|e| e.to_string());
        assert!(matches!(&e, Err(m) if m.contains("interfaces[0]")), "{e:?}");
        let e = EbpfConfig {
            encap_port: 0,
            ..EbpfConfig::default()
        }
        .validate()
        .map_err(|e| e.to_string());
        assert!(matches!(&e, Err(m) if m.contains("encap_port")), "{e:?}");
    }
}
