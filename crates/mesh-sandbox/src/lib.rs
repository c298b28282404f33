//! Network plumbing of meshd's encrypted overlay: per overlay network and host, a *sandbox*
//! network namespace holding a bridge with the network's gateway address, one veth pair per
//! local endpoint, and /32 routes that send remote endpoints' traffic to the overlay's TUN device.
//!
//! Every function is synchronous and does its netlink work on a fresh OS thread that has entered
//! the namespace concerned, so it can be called from any thread (from async code, wrap it in
//! `tokio::task::spawn_blocking`). Everything is idempotent: calling again repairs what differs.
//!
//! Layout of a sandbox named `NAME` (at `/var/run/netns/NAME`):
//! - `lo` up; `br0` up, MTU = network MTU, MAC derived from the gateway address, holding
//!   `gateway/prefix` (so the subnet is a connected route on `br0`);
//! - `net.ipv4.ip_forward=1`, `rp_filter=0` (all, default, br0), `proxy_arp=1` and
//!   `proxy_delay=0` on br0 (so local endpoints get immediate ARP answers, with br0's MAC, for
//!   remote endpoint IPs routed via the TUN);
//! - per endpoint `ve-<first 12 chars of the endpoint id>`, a port of br0, whose veth peer lives
//!   in the endpoint's namespace as `ifname` with `ip/prefix` and a MAC derived from the IP;
//! - `<ip>/32 dev wg0` for each remote endpoint (see [`sync_routes`]); `wg0` itself is made by the
//!   overlay engine.

mod error;
mod local_addrs;
mod nft;
mod nl;
mod ns;
mod sysctl;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{LinkBridge, LinkVeth};

pub use crate::error::SandboxError;
pub use crate::local_addrs::sync_local_addrs;
pub use crate::nft::nft_in;
use crate::nl::{Nl, is_kind, with_netlink};
pub use crate::ns::{NETNS_DIR, netns_exists, netns_path};

/// Name of the bridge inside every sandbox.
pub const BRIDGE_NAME: &str = "br0";

/// Prefix of the sandbox-side veth of an endpoint: `ve-<first 12 chars of the endpoint id>`.
pub const VETH_PREFIX: &str = "ve-";

/// How many characters of the endpoint id name its veth.
pub const VETH_ID_CHARS: usize = 12;

/// Smallest MTU accepted for a sandbox or an endpoint.
pub const MIN_MTU: u16 = 576;

/// A sandbox: one overlay network's namespace on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Name of the namespace under /var/run/netns (e.g. `msb-1a2b3c4d-0123456789ab`).
    pub name: String,
    /// The network's gateway address, put on `br0`.
    pub gateway: Ipv4Addr,
    /// Prefix length of the network's subnet.
    pub prefix: u8,
    /// MTU of the overlay network (`br0` and, normally, every endpoint).
    pub mtu: u16,
}

/// An endpoint to plumb into a sandbox: a veth pair whose far end goes into `netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Endpoint id; its first 12 characters name the sandbox-side veth (`ve-<12>`), so they
    /// must be unique within a sandbox. ASCII letters, digits, `-` and `_`.
    pub id: String,
    /// The endpoint's network namespace: `/var/run/netns/NAME`, `/proc/PID/ns/net`, …
    pub netns: PathBuf,
    /// Interface name inside the endpoint's namespace (e.g. `eth0`).
    pub ifname: String,
    /// The endpoint's address, inside the sandbox's subnet.
    pub ip: Ipv4Addr,
    /// Prefix length (the sandbox's).
    pub prefix: u8,
    /// MTU of both ends of the veth.
    pub mtu: u16,
}

/// The deterministic MAC address of an interface holding `ip`: `02:42:<the 4 bytes of ip>`
/// (locally administered, unicast, as Docker does), so that neighbours' ARP caches stay right
/// when an endpoint is plumbed again.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// The sandbox-side veth name of the endpoint `endpoint_id`.
pub fn veth_name(endpoint_id: &str) -> String {
    let short: String = endpoint_id.chars().take(VETH_ID_CHARS).collect();
    format!("{VETH_PREFIX}{short}")
}

// ---------------------------------------------------------------------------------------------
// Validation

fn invalid(field: &'static str, value: impl ToString, fix: impl Into<String>) -> SandboxError {
    SandboxError::InvalidSpec {
        field,
        value: value.to_string(),
        fix: fix.into(),
    }
}

fn validate_sandbox_name(field: &'static str, name: &str) -> Result<(), SandboxError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 128 || !ok_chars || name.starts_with('.') {
        return Err(invalid(
            field,
            name,
            "use 1 to 128 ASCII letters, digits, '-', '_' or '.', not starting with '.'",
        ));
    }
    Ok(())
}

fn validate_endpoint_id(id: &str) -> Result<(), SandboxError> {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if id.is_empty() || id.len() > 256 || !ok_chars {
        return Err(invalid(
            "endpoint id",
            id,
            "use 1 to 256 ASCII letters, digits, '-' or '_' (the first 12 name the veth)",
        ));
    }
    Ok(())
}

fn validate_ifname(field: &'static str, name: &str) -> Result<(), SandboxError> {
    let bad_char = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control() || !c.is_ascii());
    if name.is_empty() || name.len() > 15 || bad_char || name == "." || name == ".." {
        return Err(invalid(
            field,
            name,
            "use 1 to 15 ASCII characters without '/', ':' or spaces (e.g. eth0)",
        ));
    }
    Ok(())
}

fn validate_mtu(field: &'static str, mtu: u16) -> Result<(), SandboxError> {
    if mtu < MIN_MTU {
        return Err(invalid(
            field,
            mtu,
            format!("use an MTU between {MIN_MTU} and 65535"),
        ));
    }
    Ok(())
}

/// Checks a host address and prefix: a unicast address that is neither the subnet's network
/// nor its broadcast address, in a subnet of /1 to /30.
fn validate_host_addr(
    ip_field: &'static str,
    prefix_field: &'static str,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), SandboxError> {
    if !(1..=30).contains(&prefix) {
        return Err(invalid(
            prefix_field,
            prefix,
            "use a prefix length from 1 to 30",
        ));
    }
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(invalid(
            ip_field,
            ip,
            "use a unicast address of the network's subnet",
        ));
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    let host = u32::from(ip) & !mask;
    if host == 0 || host == !mask {
        return Err(invalid(
            ip_field,
            format!("{ip}/{prefix}"),
            "use an address that is neither the subnet's network nor its broadcast address",
        ));
    }
    Ok(())
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX << (32 - u32::from(prefix.clamp(1, 32)));
    u32::from(a) & mask == u32::from(b) & mask
}

impl SandboxSpec {
    /// Checks every field, naming the wrong one and the fix.
    pub fn validate(&self) -> Result<(), SandboxError> {
        validate_sandbox_name("sandbox name", &self.name)?;
        validate_host_addr("gateway", "prefix", self.gateway, self.prefix)?;
        validate_mtu("mtu", self.mtu)
    }
}

impl EndpointSpec {
    /// Checks every field, naming the wrong one and the fix.
    pub fn validate(&self) -> Result<(), SandboxError> {
        validate_endpoint_id(&self.id)?;
        if !self.netns.is_absolute() {
            return Err(invalid(
                "endpoint netns",
                self.netns.display(),
                "give an absolute path such as /var/run/netns/NAME or /proc/PID/ns/net",
            ));
        }
        validate_ifname("endpoint ifname", &self.ifname)?;
        validate_host_addr("endpoint ip", "endpoint prefix", self.ip, self.prefix)?;
        validate_mtu("endpoint mtu", self.mtu)
    }
}

// ---------------------------------------------------------------------------------------------
// Sandboxes

/// Creates the sandbox `spec.name`, or repairs it to match `spec` (namespace, `lo` up, `br0` with
/// MTU, MAC and exactly `gateway/prefix`, sysctls). Leaves the endpoints, routes and `wg0` alone.
/// A sandbox this call created is removed again when a later step fails.
pub fn ensure_sandbox(spec: &SandboxSpec) -> Result<(), SandboxError> {
    spec.validate()?;
    let created = ns::create_named_netns(&spec.name)?;
    let path = netns_path(&spec.name);
    let s = spec.clone();
    let outcome = with_netlink(vec![Some(path.clone())], move |nls| async move {
        let nl = first(nls)?;
        setup_sandbox(&nl, &s).await
    });
    match outcome {
        Ok(()) => {
            tracing::info!(sandbox = %spec.name, gateway = %spec.gateway, prefix = spec.prefix, mtu = spec.mtu, created, "sandbox ready");
            Ok(())
        }
        Err(e) => {
            if created {
                let _ = ns::remove_named_netns(&spec.name);
            }
            Err(e)
        }
    }
}

fn first(nls: Vec<Nl>) -> Result<Nl, SandboxError> {
    nls.into_iter()
        .next()
        .ok_or_else(|| SandboxError::Panicked {
            netns: "current".into(),
            message: "no netlink handle was opened".into(),
        })
}

async fn setup_sandbox(nl: &Nl, s: &SandboxSpec) -> Result<(), SandboxError> {
    let lo = nl.require_link("lo").await?;
    nl.ensure_link_state(&lo, None, None, None).await?;

    let mtu = u32::from(s.mtu);
    let mac = mac_for_ip(s.gateway);
    let mut br = nl.link(BRIDGE_NAME).await?;
    if let Some(l) = &br
        && !is_kind(l, &InfoKind::Bridge)
    {
        tracing::warn!(netns = %nl.ns, "{BRIDGE_NAME} exists but is not a bridge; replacing it");
        nl.del_link(l.index, BRIDGE_NAME).await?;
        br = None;
    }
    let br = match br {
        Some(l) => l,
        None => {
            nl.add_link(
                &format!("create bridge {BRIDGE_NAME}"),
                LinkBridge::new(BRIDGE_NAME).address(mac.to_vec()).build(),
            )
            .await?;
            let l = nl.require_link(BRIDGE_NAME).await?;
            // An MTU given at creation is not "set by the user" for the bridge driver, which then
            // lowers it to the smallest port's MTU as ports join. Setting it afterwards (to a
            // value that differs from the current one, else the kernel skips it) pins it.
            let op = format!("set the MTU of {BRIDGE_NAME}");
            if l.mtu == mtu {
                nl.set_link(&op, nl::by_index(l.index).mtu(mtu - 1).build())
                    .await?;
            }
            nl.set_link(&op, nl::by_index(l.index).mtu(mtu).build())
                .await?;
            nl.require_link(BRIDGE_NAME).await?
        }
    };
    nl.ensure_link_state(&br, Some(mtu), Some(mac), None)
        .await?;
    nl.ensure_only_addr_v4(&br, s.gateway, s.prefix).await?;

    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
        ("net/ipv4/conf/br0/rp_filter", "0"),
        ("net/ipv4/conf/br0/proxy_arp", "1"),
        ("net/ipv4/neigh/br0/proxy_delay", "0"),
    ] {
        sysctl::set(&nl.ns, key, value)?;
    }
    Ok(())
}

/// Removes the sandbox `name`: deletes its links (so endpoints lose their veth at once, even
/// while something still holds the namespace open), then unmounts and removes the namespace
/// file. A missing sandbox is fine.
pub fn delete_sandbox(name: &str) -> Result<(), SandboxError> {
    validate_sandbox_name("sandbox name", name)?;
    let path = netns_path(name);
    if netns_exists(&path) {
        let cleared = with_netlink(vec![Some(path.clone())], |nls| async move {
            let nl = first(nls)?;
            let mut links = nl.links().await?;
            // Veths first (each takes its peer in the endpoint's namespace along), then the rest.
            links.sort_by_key(|l| !l.name.starts_with(VETH_PREFIX));
            for l in links.iter().filter(|l| l.name != "lo") {
                if let Err(e) = nl.del_link(l.index, &l.name).await {
                    tracing::warn!(netns = %nl.ns, link = %l.name, error = %e, "cannot delete link; it goes with the namespace");
                }
            }
            Ok(())
        });
        if let Err(e) = cleared {
            tracing::warn!(sandbox = name, error = %e, "cannot clear the sandbox's links before removing it");
        }
    }
    ns::remove_named_netns(name)
}

/// Creates the empty named network namespace `/var/run/netns/NAME` unless it exists (what
/// `ip netns add` does, without failing on an existing one), and returns its path. Useful for a
/// task's namespace before its container starts.
pub fn ensure_netns(name: &str) -> Result<PathBuf, SandboxError> {
    validate_sandbox_name("netns name", name)?;
    ns::create_named_netns(name)?;
    Ok(netns_path(name))
}

/// Unmounts and removes the named network namespace `name` (what `ip netns del` does), without
/// touching its links: they go when the last user of the namespace does. Missing = Ok.
pub fn delete_netns(name: &str) -> Result<(), SandboxError> {
    validate_sandbox_name("netns name", name)?;
    ns::remove_named_netns(name)
}

/// Names in /var/run/netns starting with `prefix`, sorted.
pub fn list_sandboxes(prefix: &str) -> Result<Vec<String>, SandboxError> {
    ns::list_named(prefix)
}

/// Runs `f` on a fresh OS thread that has entered the network namespace at `netns` (setns
/// CLONE_NEWNET only: the mount namespace, and so /sys, stay the caller's) and returns its result.
/// A TUN device opened or a socket created inside `f` belongs to that namespace for good, whatever
/// thread uses its file descriptor later.
pub fn run_in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    ns::run_on_thread(Some(netns), f)
}

/// Brings the link `ifname` of the sandbox up, with `mtu` when given (e.g. `wg0` once the
/// overlay engine has created it: a route via a link that is down is refused by the kernel).
pub fn set_link_up(sandbox: &str, ifname: &str, mtu: Option<u16>) -> Result<(), SandboxError> {
    validate_sandbox_name("sandbox name", sandbox)?;
    validate_ifname("ifname", ifname)?;
    if let Some(m) = mtu {
        validate_mtu("mtu", m)?;
    }
    let ifname = ifname.to_owned();
    with_netlink(vec![Some(netns_path(sandbox))], move |nls| async move {
        let nl = first(nls)?;
        let link = nl.require_link(&ifname).await?;
        nl.ensure_link_state(&link, mtu.map(u32::from), None, None)
            .await
    })
}

/// Makes `default via gateway dev ifname` the default route of the namespace at `netns`
/// (replacing another one). A task's replies to clients outside its networks (the routing
/// mesh delivers connections with the client's own address) leave through it.
pub fn set_default_route(
    netns: &Path,
    gateway: Ipv4Addr,
    ifname: &str,
) -> Result<(), SandboxError> {
    validate_ifname("ifname", ifname)?;
    let ifname = ifname.to_owned();
    with_netlink(vec![Some(netns.to_path_buf())], move |nls| async move {
        let nl = first(nls)?;
        let link = nl.require_link(&ifname).await?;
        nl.replace_default_route(gateway, link.index, &ifname).await
    })
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/// Plumbs the endpoint `ep` into the sandbox: a veth pair `ve-<id>` (port of `br0`, up, MTU) ⇄
/// `ep.ifname` in `ep.netns` (MAC from the IP, exactly `ip/prefix`, MTU, up), no default route.
///
/// Idempotent: when the pair is already there (`ve-<id>` in the sandbox and `ifname` in the
/// endpoint's namespace are each other's peers), only what differs is repaired. A `ve-<id>`
/// whose peer is not `ifname` is replaced. An `ifname` in the endpoint's namespace that is not
/// this endpoint's veth is an [`SandboxError::EndpointConflict`], and is left alone.
pub fn attach_endpoint(sandbox: &str, ep: &EndpointSpec) -> Result<(), SandboxError> {
    validate_sandbox_name("sandbox name", sandbox)?;
    ep.validate()?;
    let sb_path = netns_path(sandbox);
    let ep2 = ep.clone();
    with_netlink(
        vec![Some(sb_path), Some(ep.netns.clone())],
        move |nls| async move {
            let mut it = nls.into_iter();
            let (Some(sb), Some(en)) = (it.next(), it.next()) else {
                return Err(SandboxError::Panicked {
                    netns: "current".into(),
                    message: "netlink handles were not opened".into(),
                });
            };
            plumb_endpoint(&sb, &en, &ep2).await
        },
    )?;
    tracing::info!(sandbox, endpoint = %ep.id, netns = %ep.netns.display(), ifname = %ep.ifname, ip = %ep.ip, "endpoint attached");
    Ok(())
}

async fn plumb_endpoint(sb: &Nl, en: &Nl, ep: &EndpointSpec) -> Result<(), SandboxError> {
    let br = sb
        .link(BRIDGE_NAME)
        .await?
        .ok_or_else(|| SandboxError::NotReady {
            netns: sb.ns.clone(),
            what: format!("no {BRIDGE_NAME}"),
        })?;
    let (gw, plen) = sb
        .addrs_v4(br.index)
        .await?
        .first()
        .map(|(ip, plen, _)| (*ip, *plen))
        .ok_or_else(|| SandboxError::NotReady {
            netns: sb.ns.clone(),
            what: format!("{BRIDGE_NAME} has no IPv4 address"),
        })?;
    if plen != ep.prefix {
        return Err(invalid(
            "endpoint prefix",
            ep.prefix,
            format!("use the sandbox subnet's prefix length {plen}"),
        ));
    }
    if !same_subnet(ep.ip, gw, plen) || ep.ip == gw {
        return Err(invalid(
            "endpoint ip",
            ep.ip,
            format!("use an address of the sandbox subnet {gw}/{plen} other than its gateway {gw}"),
        ));
    }

    let ve_name = veth_name(&ep.id);
    let mtu = u32::from(ep.mtu);
    let mac = mac_for_ip(ep.ip);
    let ve = sb.link(&ve_name).await?;
    let target = en.link(&ep.ifname).await?;
    let paired = match (&ve, &target) {
        (Some(v), Some(t)) => {
            is_kind(t, &InfoKind::Veth) && v.peer == Some(t.index) && t.peer == Some(v.index)
        }
        _ => false,
    };
    if !paired {
        if let Some(v) = &ve {
            tracing::info!(netns = %sb.ns, link = %v.name, "replacing a veth whose peer is not the endpoint's {}", ep.ifname);
            sb.del_link(v.index, &v.name).await?;
        }
        // Deleting our veth removed its peer; whatever still holds the name is someone else's.
        if en.link(&ep.ifname).await?.is_some() {
            return Err(SandboxError::EndpointConflict {
                netns: en.ns.clone(),
                ifname: ep.ifname.clone(),
                endpoint: ep.id.clone(),
                fix: "detach whatever owns it or choose another ifname".into(),
            });
        }
        let target_ns = ns::open_netns(&ep.netns)?;
        let mut peer = LinkMessage::default();
        peer.attributes = vec![
            LinkAttribute::IfName(ep.ifname.clone()),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(target_ns.as_raw_fd()),
        ];
        let msg = LinkVeth::new(&ve_name, &ep.ifname)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        sb.add_link(
            &format!("create veth {ve_name} with peer {} in {}", ep.ifname, en.ns),
            msg,
        )
        .await?;
        drop(target_ns);
    }

    let ve = sb.require_link(&ve_name).await?;
    sb.ensure_link_state(&ve, Some(mtu), None, Some(br.index))
        .await?;
    let target = en.require_link(&ep.ifname).await?;
    en.ensure_only_addr_v4(&target, ep.ip, ep.prefix).await?;
    en.ensure_link_state(&target, Some(mtu), Some(mac), None)
        .await?;
    Ok(())
}

/// Removes the endpoint's veth pair from the sandbox (both ends go). A missing veth, or a
/// missing sandbox, is fine.
pub fn detach_endpoint(sandbox: &str, endpoint_id: &str) -> Result<(), SandboxError> {
    validate_sandbox_name("sandbox name", sandbox)?;
    validate_endpoint_id(endpoint_id)?;
    let path = netns_path(sandbox);
    if !netns_exists(&path) {
        return Ok(());
    }
    let ve_name = veth_name(endpoint_id);
    with_netlink(vec![Some(path)], move |nls| async move {
        let nl = first(nls)?;
        if let Some(l) = nl.link(&ve_name).await? {
            nl.del_link(l.index, &l.name).await?;
            tracing::info!(netns = %nl.ns, link = %ve_name, "endpoint detached");
        }
        Ok(())
    })
}

/// The endpoints plumbed into the sandbox, as the id prefixes (up to 12 characters) that name
/// their `ve-` veths, sorted.
pub fn list_endpoints(sandbox: &str) -> Result<Vec<String>, SandboxError> {
    validate_sandbox_name("sandbox name", sandbox)?;
    with_netlink(vec![Some(netns_path(sandbox))], |nls| async move {
        let nl = first(nls)?;
        let mut ids: Vec<String> = nl
            .links()
            .await?
            .into_iter()
            .filter_map(|l| l.name.strip_prefix(VETH_PREFIX).map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    })
}

// ---------------------------------------------------------------------------------------------
// Routes

/// Makes the sandbox's main table hold exactly one `<dest>/32 dev <dev> scope link` route per
/// address of `dests`: adds the missing ones (replacing a /32 to the same address via another
/// link), removes the /32s via `dev` that are not in `dests`. Other routes (the connected subnet
/// on `br0`, anything via another link) are left alone. `dev` must exist and be up.
pub fn sync_routes(sandbox: &str, dev: &str, dests: &[Ipv4Addr]) -> Result<(), SandboxError> {
    validate_sandbox_name("sandbox name", sandbox)?;
    validate_ifname("dev", dev)?;
    for d in dests {
        if d.is_unspecified() || d.is_multicast() || d.is_broadcast() || d.is_loopback() {
            return Err(invalid(
                "route destination",
                d,
                "use unicast endpoint addresses",
            ));
        }
    }
    let want: BTreeSet<Ipv4Addr> = dests.iter().copied().collect();
    let dev = dev.to_owned();
    with_netlink(vec![Some(netns_path(sandbox))], move |nls| async move {
        let nl = first(nls)?;
        let link = nl.require_link(&dev).await?;
        let have = nl.host_routes_via(link.index).await?;
        let have_set: BTreeSet<Ipv4Addr> = have.iter().map(|(d, _)| *d).collect();
        let mut added = 0usize;
        let mut removed = 0usize;
        for d in want.difference(&have_set) {
            nl.add_host_route(*d, link.index, &dev).await?;
            added += 1;
        }
        for (d, msg) in have {
            if !want.contains(&d) {
                nl.del_route(msg, &format!("{d}/32 dev {dev}")).await?;
                removed += 1;
            }
        }
        if added + removed > 0 {
            tracing::debug!(netns = %nl.ns, dev = %dev, added, removed, total = want.len(), "routes synced");
        }
        Ok(())
    })
}

/// In the calling thread's network namespace: the MTU of the interface that the route to `dst`
/// leaves by (the route's own MTU metric when smaller), capped at 65535. The overlay MTU is this
/// minus the WireGuard overhead (60 bytes over IPv4, 80 over IPv6).
pub fn interface_mtu_towards(dst: IpAddr) -> Result<u16, SandboxError> {
    with_netlink(vec![None], move |nls| async move {
        let nl = first(nls)?;
        let (oif, metric) = nl
            .route_to(dst)
            .await?
            .ok_or(SandboxError::NoRoute { dst })?;
        let link = nl
            .link_by_index(oif)
            .await?
            .ok_or(SandboxError::NoRoute { dst })?;
        let mtu = metric.map_or(link.mtu, |m| m.min(link.mtu));
        Ok(u16::try_from(mtu).unwrap_or(u16::MAX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_derived_from_ip() {
        assert_eq!(
            mac_for_ip(Ipv4Addr::new(10, 0, 0, 2)),
            [0x02, 0x42, 10, 0, 0, 2]
        );
    }

    #[test]
    fn veth_names_fit_ifnamsiz() {
        assert_eq!(veth_name("0123456789abcdef"), "ve-0123456789ab");
        assert_eq!(veth_name("abc"), "ve-abc");
        assert!(veth_name("0123456789abcdefgh").len() <= 15);
    }

    fn spec() -> SandboxSpec {
        SandboxSpec {
            name: "msb-test".into(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            prefix: 24,
            mtu: 1420,
        }
    }

    fn field_of(e: SandboxError) -> &'static str {
        match e {
            SandboxError::InvalidSpec { field, .. } => field,
            other => panic!("not an InvalidSpec: {other}"),
        }
    }

    #[test]
    fn sandbox_spec_validation_names_the_field() {
        assert!(spec().validate().is_ok());
        let bad = |f: fn(&mut SandboxSpec)| {
            let mut s = spec();
            f(&mut s);
            field_of(s.validate().unwrap_err())
        };
        assert_eq!(bad(|s| s.name = "a/b".into()), "sandbox name");
        assert_eq!(bad(|s| s.name = String::new()), "sandbox name");
        assert_eq!(bad(|s| s.name = "..".into()), "sandbox name");
        assert_eq!(bad(|s| s.gateway = Ipv4Addr::new(10, 0, 0, 0)), "gateway");
        assert_eq!(bad(|s| s.gateway = Ipv4Addr::new(10, 0, 0, 255)), "gateway");
        assert_eq!(bad(|s| s.gateway = Ipv4Addr::UNSPECIFIED), "gateway");
        assert_eq!(bad(|s| s.prefix = 31), "prefix");
        assert_eq!(bad(|s| s.prefix = 0), "prefix");
        assert_eq!(bad(|s| s.mtu = 100), "mtu");
        let msg = {
            let mut s = spec();
            s.mtu = 100;
            s.validate().unwrap_err().to_string()
        };
        assert!(msg.contains("mtu") && msg.contains("between"), "{msg}");
    }

    #[test]
    fn endpoint_spec_validation_names_the_field() {
        let ep = EndpointSpec {
            id: "0123456789abcdef".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix: 24,
            mtu: 1420,
        };
        assert!(ep.validate().is_ok());
        let bad = |f: fn(&mut EndpointSpec)| {
            let mut e = ep.clone();
            f(&mut e);
            field_of(e.validate().unwrap_err())
        };
        assert_eq!(bad(|e| e.id = "a b".into()), "endpoint id");
        assert_eq!(bad(|e| e.netns = "relative/x".into()), "endpoint netns");
        assert_eq!(
            bad(|e| e.ifname = "0123456789abcdef".into()),
            "endpoint ifname"
        );
        assert_eq!(bad(|e| e.ifname = "a:b".into()), "endpoint ifname");
        assert_eq!(bad(|e| e.ip = Ipv4Addr::new(224, 0, 0, 1)), "endpoint ip");
        assert_eq!(bad(|e| e.prefix = 32), "endpoint prefix");
        assert_eq!(bad(|e| e.mtu = 0), "endpoint mtu");
    }

    #[test]
    fn subnet_membership() {
        let gw = Ipv4Addr::new(10, 1, 2, 1);
        assert!(same_subnet(Ipv4Addr::new(10, 1, 2, 200), gw, 24));
        assert!(!same_subnet(Ipv4Addr::new(10, 1, 3, 2), gw, 24));
        assert!(same_subnet(Ipv4Addr::new(10, 1, 3, 2), gw, 16));
    }
}
