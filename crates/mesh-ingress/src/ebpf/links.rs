//! Mesh links: one veth pair per egress namespace, host side `mi-<12 hex>` in the host's
//! namespace, the peer (same name) in the egress namespace, a /30 of 169.254.192.0/18 on
//! them, the egress namespace's default route back through the link, and a /32 route on the
//! host for each local backend behind it. Plumbing goes through iproute2 (`ip`), run on a
//! thread inside the namespace concerned.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use super::sys;

/// A mesh link as made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MeshLink {
    /// Interface name on both sides.
    pub name: String,
    /// Host side ifindex (in the host namespace).
    pub ifindex: u32,
    /// Host side address (the egress namespace's default gateway).
    pub host_addr: Ipv4Addr,
    /// Egress side address (the next hop towards the backends).
    pub peer_addr: Ipv4Addr,
}

/// The link name for an egress namespace path: `mi-` and 12 hex digits of its FNV-1a hash.
pub(crate) fn link_name(egress: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in egress.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mi-{:012x}", h & 0xffff_ffff_ffff)
}

/// The /30 number `slot` (0..4096) of 169.254.192.0/18: (host side, egress side).
pub(crate) fn link_addrs(slot: u16) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(169, 254, 192, 0)) + u32::from(slot % 4096) * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// Runs `ip ARGS` in the calling thread's namespace.
fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("running ip (install iproute2: apt-get install iproute2): {e}"),
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// Runs `f` in `netns` (`None`: the caller's namespace).
pub(crate) fn in_ns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    match netns {
        Some(p) => sys::in_netns(p, f),
        None => f(),
    }
}

/// The ifindex of `name` in `netns`, if it exists.
pub(crate) fn ifindex(netns: Option<&Path>, name: &str) -> io::Result<Option<u32>> {
    let name = name.to_string();
    in_ns(netns, move || {
        Ok(nix::net::if_::if_nametoindex(name.as_str()).ok())
    })
}

/// Makes (or repairs) the link between the host namespace and `egress` using /30 `slot`.
pub(crate) fn ensure(host: Option<&Path>, egress: &Path, slot: u16) -> io::Result<MeshLink> {
    let name = link_name(egress);
    let (host_addr, peer_addr) = link_addrs(slot);
    let egress_s = egress.to_string_lossy().into_owned();
    let ifindex = in_ns(host, || {
        if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
            ip(&[
                "link", "add", &name, "type", "veth", "peer", "name", &name, "netns", &egress_s,
            ])?;
        }
        ip(&["addr", "replace", &format!("{host_addr}/30"), "dev", &name])?;
        ip(&["link", "set", &name, "up"])?;
        sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1")?;
        // Replies for a client on this host come up the stack through the link with the
        // source address of the node the client reached.
        sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "0")?;
        nix::net::if_::if_nametoindex(name.as_str()).map_err(io::Error::from)
    })?;
    sys::in_netns(egress, || {
        if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
            return Err(io::Error::other(format!(
                "{name} has no peer in {}: delete it on the host and apply again",
                egress.display()
            )));
        }
        ip(&["addr", "replace", &format!("{peer_addr}/30"), "dev", &name])?;
        ip(&["link", "set", &name, "up"])?;
        sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1")?;
        sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "0")?;
        ip(&[
            "route",
            "replace",
            "default",
            "via",
            &host_addr.to_string(),
            "dev",
            &name,
        ])
    })?;
    Ok(MeshLink {
        name,
        ifindex,
        host_addr,
        peer_addr,
    })
}

/// Sets the host's /32 routes through `link` to exactly `want` (given what was set before).
pub(crate) fn sync_routes(
    host: Option<&Path>,
    link: &MeshLink,
    had: &[Ipv4Addr],
    want: &[Ipv4Addr],
) -> io::Result<()> {
    in_ns(host, || {
        for b in want {
            ip(&[
                "route",
                "replace",
                &format!("{b}/32"),
                "via",
                &link.peer_addr.to_string(),
                "dev",
                &link.name,
            ])?;
        }
        for b in had.iter().filter(|b| !want.contains(b)) {
            // Already gone (the link was remade) is fine.
            let _ = ip(&["route", "del", &format!("{b}/32"), "dev", &link.name]);
        }
        Ok(())
    })
}

/// Deletes the link (both ends, and the routes through it).
pub(crate) fn remove(host: Option<&Path>, name: &str) -> io::Result<()> {
    in_ns(host, || {
        if nix::net::if_::if_nametoindex(name).is_ok() {
            ip(&["link", "del", name])?;
        }
        Ok(())
    })
}

/// Names of the mesh links in `netns` (`mi-` and 12 hex digits), whoever made them.
pub(crate) fn list(netns: Option<&Path>) -> io::Result<Vec<String>> {
    in_ns(netns, || {
        let mut out: Vec<String> = nix::ifaddrs::getifaddrs()
            .map_err(io::Error::from)?
            .map(|i| i.interface_name)
            .filter(|n| is_link_name(n))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    })
}

fn is_link_name(n: &str) -> bool {
    n.len() == 15
        && n.starts_with("mi-")
        && n[3..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The IPv4 addresses on `interfaces` in `netns`.
pub(crate) fn interface_addrs(
    netns: Option<&Path>,
    interfaces: &[String],
) -> io::Result<Vec<(String, Ipv4Addr)>> {
    in_ns(netns, || {
        let mut out = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            if !interfaces.contains(&ifa.interface_name) {
                continue;
            }
            if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                out.push((ifa.interface_name.clone(), sin.ip()));
            }
        }
        Ok(out)
    })
}

/// The smallest MTU of `interfaces` in `netns`.
pub(crate) fn min_mtu(netns: Option<&Path>, interfaces: &[String]) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    in_ns(netns, || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        let mut min = u32::MAX;
        for name in interfaces {
            // SAFETY: ifreq is plain old data; all zeroes is a valid value.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes().iter().take(15)) {
                *d = *s as libc::c_char;
            }
            // SAFETY: SIOCGIFMTU reads the name and writes the MTU into `req`.
            let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("MTU of {name}: {e}")));
            }
            // SAFETY: the kernel filled the MTU member.
            let mtu = unsafe { req.ifr_ifru.ifru_mtu };
            min = min.min(u32::try_from(mtu).unwrap_or(0));
        }
        Ok(min)
    })
}

/// Turns on IPv4 forwarding on `interfaces` in `netns` (the FIB lookups of the programs
/// need it on the interface a packet came in by).
pub(crate) fn enable_forwarding(netns: Option<&Path>, interfaces: &[String]) -> io::Result<()> {
    in_ns(netns, || {
        for i in interfaces {
            sysctl(&format!("/proc/sys/net/ipv4/conf/{i}/forwarding"), "1")?;
        }
        Ok(())
    })
}

/// For logs: the namespace a path names, or "the daemon's own".
pub(crate) fn ns_label(netns: Option<&Path>) -> String {
    netns.map_or_else(|| "own".into(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_addresses_pair_up() {
        let n = link_name(Path::new(
            "/var/run/netns/some-long-sandbox-name-0123456789",
        ));
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("mi-"));
        assert_ne!(n, link_name(Path::new("/var/run/netns/other")));
        assert!(is_link_name(&n));
        assert!(!is_link_name("mi-short") && !is_link_name("eth0"));
        assert_eq!(
            link_addrs(0),
            (
                Ipv4Addr::new(169, 254, 192, 1),
                Ipv4Addr::new(169, 254, 192, 2)
            )
        );
        assert_eq!(
            link_addrs(4095),
            (
                Ipv4Addr::new(169, 254, 255, 253),
                Ipv4Addr::new(169, 254, 255, 254)
            )
        );
    }
}
