//! Service VIPs in a network's sandbox: the VIPs and the load-balancer address on the
//! sandbox's `lo` (so it answers ARP for them on `br0`), an nftables TPROXY rule steering every
//! TCP and UDP packet to a VIP (any port) to one transparent listener per protocol, and the
//! listeners themselves.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use super::flows::FlowTable;
use super::netns::{Netns, in_netns};
use super::rotation::Rotation;
use super::sock::{tcp_listener, udp_transparent_listener};
use super::tcp::{VipBackends, VipTarget, accept_loop};
use super::udp::VipUdp;
use super::{Ctx, EgressTarget};
use crate::error::IngressError;
use crate::plan::VipSandbox;

/// The nftables table the mesh owns in each sandbox.
pub const NFT_TABLE: &str = "meshd_vip";

/// Label tag of the addresses the mesh puts on a sandbox's `lo` (`lo:meshdvip`).
pub const ADDR_TAG: &str = "meshdvip";

/// The nftables script that (re)defines the table, in one transaction: every TCP packet to one
/// of `vips` goes to `127.0.0.1:tcp_port`, every UDP one to `127.0.0.1:udp_port`.
pub fn nft_script(tcp_port: u16, udp_port: u16, vips: &[Ipv4Addr]) -> String {
    let set: BTreeSet<Ipv4Addr> = vips.iter().copied().collect();
    let elements = if set.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = set.iter().map(Ipv4Addr::to_string).collect();
        format!("\t\telements = {{ {} }}\n", list.join(", "))
    };
    format!(
        "table inet {NFT_TABLE}\n\
         delete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n\
         \tset vips {{\n\
         \t\ttype ipv4_addr\n\
         {elements}\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tmeta l4proto tcp ip daddr @vips tproxy ip to 127.0.0.1:{tcp_port}\n\
         \t\tmeta l4proto udp ip daddr @vips tproxy ip to 127.0.0.1:{udp_port}\n\
         \t}}\n\
         }}\n"
    )
}

/// The nftables script that removes the table (and succeeds when it is not there).
pub fn nft_delete_script() -> String {
    format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
}

/// Runs `nft -f -` with `script` inside the sandbox.
fn run_nft(netns: &Netns, script: &str) -> io::Result<()> {
    mesh_sandbox::nft_in(&netns.fd(), script)
}

fn sandbox_err(e: mesh_sandbox::SandboxError) -> io::Error {
    io::Error::other(e)
}

/// Where br_netfilter's switch lives (present only when br_netfilter is loaded).
const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Turns br_netfilter off for IPv4 in the sandbox: with it on, a packet entering `br0` from a
/// task goes through the prerouting hook at the bridge layer, where the TPROXY rule's socket
/// assignment is lost when the packet comes up to IP (whose own prerouting pass is then
/// skipped), and the connection is reset. The sysctl is per namespace.
fn bridge_netfilter_off(path: &std::path::Path) -> io::Result<()> {
    mesh_sandbox::run_in_netns(path, || {
        match std::fs::read_to_string(BRIDGE_NF_CALL_IPTABLES) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Ok(v) if v.trim() == "0" => Ok(()),
            _ => std::fs::write(BRIDGE_NF_CALL_IPTABLES, "0"),
        }
    })
    .map_err(sandbox_err)?
}

/// The addresses the mesh keeps on the sandbox's `lo`: the load-balancer address and the VIPs.
pub(crate) fn local_addrs(spec: &VipSandbox) -> Vec<Ipv4Addr> {
    let mut set = BTreeSet::new();
    set.insert(spec.source);
    set.extend(spec.services.iter().map(|s| s.vip));
    set.into_iter().collect()
}

fn vips(spec: &VipSandbox) -> Vec<Ipv4Addr> {
    spec.services.iter().map(|s| s.vip).collect()
}

/// A VIP sandbox being served.
#[derive(Debug)]
pub(crate) struct SandboxRuntime {
    /// The plan item it serves.
    pub(crate) spec: VipSandbox,
    netns: Arc<Netns>,
    target: Arc<ArcSwap<VipTarget>>,
    udp: Arc<VipUdp>,
    tcp_port: u16,
    udp_port: u16,
    /// The accept loop, the UDP listener and the sweeper.
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

fn services(
    spec: &VipSandbox,
    old: Option<&VipTarget>,
    ctx: &Ctx,
) -> HashMap<Ipv4Addr, Arc<VipBackends>> {
    spec.services
        .iter()
        .map(|s| {
            let kept = old
                .and_then(|o| o.services.get(&s.vip))
                .filter(|b| b.name == s.name);
            let backends = match kept {
                Some(b) => {
                    b.rotation.replace(s.backends.clone());
                    Arc::clone(b)
                }
                None => Arc::new(VipBackends {
                    name: s.name.clone(),
                    rotation: Rotation::new(s.backends.clone(), ctx.cfg.eject_for),
                }),
            };
            (s.vip, backends)
        })
        .collect()
}

fn target(spec: &VipSandbox, netns: &Arc<Netns>, old: Option<&VipTarget>, ctx: &Ctx) -> VipTarget {
    VipTarget {
        network_id: spec.network_id.clone(),
        egress: EgressTarget {
            netns: Arc::clone(netns),
            source: Some(spec.source),
        },
        services: services(spec, old, ctx),
    }
}

/// Undoes what [`open`] did in the namespace (table, addresses), logging what fails.
fn clean_namespace(netns: &Netns, path: &std::path::Path) -> Result<(), IngressError> {
    let mut first = None;
    if let Err(e) = run_nft(netns, &nft_delete_script()) {
        tracing::warn!(netns = %path.display(), error = %e, "cannot delete the VIP nftables table");
        first = Some(IngressError::io(
            format!("delete table inet {NFT_TABLE} in {}", path.display()),
            e,
        ));
    }
    if let Err(e) = mesh_sandbox::sync_local_addrs(path, ADDR_TAG, &[]) {
        tracing::warn!(netns = %path.display(), error = %e, "cannot remove the VIP addresses");
        first.get_or_insert(IngressError::io(
            format!("remove the VIP addresses from lo in {}", path.display()),
            sandbox_err(e),
        ));
    }
    first.map_or(Ok(()), Err)
}

/// Starts serving the VIPs of `spec`: addresses, transparent listeners, nftables table.
/// Nothing is left behind when it fails.
pub(crate) fn open(ctx: &Arc<Ctx>, spec: &VipSandbox) -> Result<SandboxRuntime, IngressError> {
    let path = spec.netns.as_path();
    let netns = Arc::new(Netns::open(path)?);
    mesh_sandbox::sync_local_addrs(path, ADDR_TAG, &local_addrs(spec)).map_err(|e| {
        IngressError::io(
            format!("put the VIPs on lo in {}", path.display()),
            sandbox_err(e),
        )
    })?;
    match start(ctx, spec, &netns) {
        Ok(rt) => Ok(rt),
        Err(e) => {
            let _ = clean_namespace(&netns, path);
            Err(e)
        }
    }
}

fn start(
    ctx: &Arc<Ctx>,
    spec: &VipSandbox,
    netns: &Arc<Netns>,
) -> Result<SandboxRuntime, IngressError> {
    let path = spec.netns.display();
    bridge_netfilter_off(&spec.netns).map_err(|e| {
        IngressError::io(
            format!("set net.bridge.bridge-nf-call-iptables=0 in {path}"),
            e,
        )
    })?;
    let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
    let tcp = in_netns(netns, &ctx.home, || tcp_listener(lo, ctx.cfg.backlog, true))
        .and_then(TcpListener::from_std)
        .map_err(|e| IngressError::io(format!("open the transparent TCP listener in {path}"), e))?;
    let udp = in_netns(netns, &ctx.home, || udp_transparent_listener(lo))
        .and_then(UdpSocket::from_std)
        .map_err(|e| IngressError::io(format!("open the transparent UDP listener in {path}"), e))?;
    let port_of = |a: io::Result<SocketAddr>, what: &str| {
        a.map(|a| a.port())
            .map_err(|e| IngressError::io(format!("read the {what} listener's port in {path}"), e))
    };
    let tcp_port = port_of(tcp.local_addr(), "TCP")?;
    let udp_port = port_of(udp.local_addr(), "UDP")?;
    run_nft(netns, &nft_script(tcp_port, udp_port, &vips(spec)))
        .map_err(|e| IngressError::io(format!("configure table inet {NFT_TABLE} in {path}"), e))?;

    let target = Arc::new(ArcSwap::from_pointee(target(spec, netns, None, ctx)));
    let flows = Arc::new(Mutex::new(FlowTable::new(
        ctx.cfg.udp_idle,
        ctx.cfg.max_udp_flows,
    )));
    let udp_state = Arc::new(VipUdp {
        target: Arc::clone(&target),
        flows: Arc::clone(&flows),
    });
    let what = format!("VIPs of network {}", spec.network_id);
    let (c, t) = (Arc::clone(ctx), Arc::clone(&target));
    let accept = tokio::spawn(accept_loop(tcp, what, move |stream, peer| {
        super::tcp::serve_vip(Arc::clone(&c), Arc::clone(&t), stream, peer)
    }));
    let udp_task = tokio::spawn(super::udp::serve_vip(
        Arc::clone(ctx),
        Arc::clone(&udp_state),
        udp,
    ));
    let sweeper = tokio::spawn(super::udp::sweep(flows, ctx.cfg.udp_idle));
    tracing::info!(network = %spec.network_id, netns = %path, vips = spec.services.len(), tcp_port, udp_port, "serving VIPs");
    Ok(SandboxRuntime {
        spec: spec.clone(),
        netns: Arc::clone(netns),
        target,
        udp: udp_state,
        tcp_port,
        udp_port,
        tasks: vec![accept, udp_task, sweeper],
    })
}

/// Applies a changed `spec` to a running sandbox (same namespace): addresses, the VIP set,
/// backends (open connections keep theirs). Nothing changes when it fails.
pub(crate) fn update(
    ctx: &Arc<Ctx>,
    rt: &mut SandboxRuntime,
    spec: &VipSandbox,
) -> Result<(), IngressError> {
    let path = spec.netns.as_path();
    if local_addrs(spec) != local_addrs(&rt.spec) {
        mesh_sandbox::sync_local_addrs(path, ADDR_TAG, &local_addrs(spec)).map_err(|e| {
            IngressError::io(
                format!("put the VIPs on lo in {}", path.display()),
                sandbox_err(e),
            )
        })?;
    }
    let old_vips: BTreeSet<Ipv4Addr> = vips(&rt.spec).into_iter().collect();
    let new_vips: BTreeSet<Ipv4Addr> = vips(spec).into_iter().collect();
    if old_vips != new_vips
        && let Err(e) = run_nft(
            &rt.netns,
            &nft_script(rt.tcp_port, rt.udp_port, &vips(spec)),
        )
    {
        // Put the addresses back as they were.
        let _ = mesh_sandbox::sync_local_addrs(path, ADDR_TAG, &local_addrs(&rt.spec));
        return Err(IngressError::io(
            format!("configure table inet {NFT_TABLE} in {}", path.display()),
            e,
        ));
    }
    let old = rt.target.load_full();
    rt.target
        .store(Arc::new(target(spec, &rt.netns, Some(&old), ctx)));
    rt.spec = spec.clone();
    tracing::info!(network = %spec.network_id, vips = spec.services.len(), "VIPs updated");
    Ok(())
}

/// Stops serving a sandbox whose tasks have been stopped: drops its UDP flows, deletes the
/// nftables table and the addresses (when the namespace still exists).
pub(crate) fn close(rt: SandboxRuntime) -> Result<(), IngressError> {
    let gone = match rt.udp.flows.lock() {
        Ok(mut f) => f.drain(),
        Err(p) => p.into_inner().drain(),
    };
    drop(gone);
    let path = rt.spec.netns.as_path();
    let outcome = if mesh_sandbox::netns_exists(path) {
        clean_namespace(&rt.netns, path)
    } else {
        Ok(())
    };
    tracing::info!(network = %rt.spec.network_id, netns = %path.display(), "stopped serving VIPs");
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_replaces_the_table_in_one_go() {
        let s = nft_script(
            40001,
            40002,
            &[Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(10, 0, 0, 2)],
        );
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        assert_eq!(lines[0], "table inet meshd_vip");
        assert_eq!(lines[1], "delete table inet meshd_vip");
        assert!(lines.contains(&"elements = { 10.0.0.2, 10.0.0.3 }"), "{s}");
        assert!(lines.contains(&"type filter hook prerouting priority mangle; policy accept;"));
        assert!(lines.contains(&"meta l4proto tcp ip daddr @vips tproxy ip to 127.0.0.1:40001"));
        assert!(lines.contains(&"meta l4proto udp ip daddr @vips tproxy ip to 127.0.0.1:40002"));
    }

    #[test]
    fn empty_set_has_no_elements_line() {
        let s = nft_script(1, 2, &[]);
        assert!(!s.contains("elements"), "{s}");
        assert!(s.contains("type ipv4_addr"));
    }

    #[test]
    fn addresses_are_the_source_and_the_vips_once() {
        let spec = VipSandbox {
            network_id: "n".into(),
            netns: "/var/run/netns/x".into(),
            source: Ipv4Addr::new(10, 0, 0, 9),
            clients: vec![],
            services: vec![
                crate::plan::VipService {
                    name: "a".into(),
                    vip: Ipv4Addr::new(10, 0, 0, 3),
                    backends: vec![],
                },
                crate::plan::VipService {
                    name: "b".into(),
                    vip: Ipv4Addr::new(10, 0, 0, 2),
                    backends: vec![],
                },
            ],
        };
        assert_eq!(
            local_addrs(&spec),
            vec![
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(10, 0, 0, 3),
                Ipv4Addr::new(10, 0, 0, 9)
            ]
        );
    }
}
