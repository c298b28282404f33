//! Local /32 addresses on a namespace's `lo`, owned by a caller through an address label.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use nix::errno::Errno;
use rtnetlink::packet_route::address::AddressAttribute;

use crate::SandboxError;
use crate::nl::with_netlink;

/// Longest tag: `lo:` plus the tag must fit in an interface label (15 bytes).
const MAX_TAG: usize = 12;

fn errno_of(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

/// Makes `lo` in the network namespace at `netns` up and holding exactly `addrs` among the
/// /32 addresses labelled `lo:<tag>`: the missing ones are added with that label, the labelled
/// ones not in `addrs` are removed. Addresses without the label (127.0.0.1, anything another
/// owner put there) are never removed; one of `addrs` already present without the label is left
/// as it is. An empty `addrs` removes every address of the tag.
///
/// A local address makes the namespace answer ARP for it on its other interfaces, which is how
/// a service VIP or a load-balancer address becomes reachable on a bridge. Idempotent.
pub fn sync_local_addrs(netns: &Path, tag: &str, addrs: &[Ipv4Addr]) -> Result<(), SandboxError> {
    let tag_ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !tag_ok {
        return Err(SandboxError::InvalidSpec {
            field: "address tag",
            value: tag.to_owned(),
            fix: format!("use 1 to {MAX_TAG} ASCII letters, digits, '-' or '_'"),
        });
    }
    for a in addrs {
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
            return Err(SandboxError::InvalidSpec {
                field: "local address",
                value: a.to_string(),
                fix: "use unicast addresses outside 127.0.0.0/8".into(),
            });
        }
    }
    let label = format!("lo:{tag}");
    let want: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
    with_netlink(vec![Some(netns.to_path_buf())], move |nls| async move {
        let Some(nl) = nls.into_iter().next() else {
            return Err(SandboxError::Panicked {
                netns: "current".into(),
                message: "no netlink handle was opened".into(),
            });
        };
        let lo = nl.require_link("lo").await?;
        nl.ensure_link_state(&lo, None, None, None).await?;
        // The thread is inside the namespace: a second connection of our own adds and removes.
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| SandboxError::Netlink {
            netns: nl.ns.clone(),
            op: "open a route-netlink socket".into(),
            errno: e.raw_os_error().map(Errno::from_raw),
            detail: e.to_string(),
        })?;
        let conn = tokio::spawn(conn);
        let outcome = async {
            let mut present = BTreeSet::new();
            for (ip, plen, msg) in nl.addrs_v4(lo.index).await? {
                let ours = msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Label(l) if *l == label));
                if plen == 32 && want.contains(&ip) {
                    present.insert(ip);
                    continue;
                }
                if !ours || ip.is_loopback() {
                    continue;
                }
                match handle.address().del(msg).execute().await {
                    Ok(()) => {
                        tracing::info!(netns = %nl.ns, addr = %format!("{ip}/{plen}"), label = %label, "removed local address");
                    }
                    Err(e) if errno_of(&e) == Some(Errno::EADDRNOTAVAIL) => {}
                    Err(e) => return Err(nl.err(format!("remove address {ip}/{plen} from lo"), e)),
                }
            }
            for ip in want.difference(&present) {
                let mut req = handle.address().add(lo.index, IpAddr::V4(*ip), 32);
                req.message_mut()
                    .attributes
                    .push(AddressAttribute::Label(label.clone()));
                match req.execute().await {
                    Ok(()) => {
                        tracing::info!(netns = %nl.ns, addr = %format!("{ip}/32"), label = %label, "added local address");
                    }
                    Err(e) if errno_of(&e) == Some(Errno::EEXIST) => {}
                    Err(e) => return Err(nl.err(format!("add address {ip}/32 to lo"), e)),
                }
            }
            Ok(())
        }
        .await;
        conn.abort();
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: SandboxError) -> &'static str {
        match e {
            SandboxError::InvalidSpec { field, .. } => field,
            other => panic!("not an InvalidSpec: {other}"),
        }
    }

    #[test]
    fn bad_tags_and_addresses_are_refused_before_any_work() {
        let ns = Path::new("/var/run/netns/does-not-matter");
        let ip = [Ipv4Addr::new(10, 0, 0, 5)];
        for tag in ["", "with space", "lo:x", "thirteen-char"] {
            assert_eq!(
                field_of(sync_local_addrs(ns, tag, &ip).unwrap_err()),
                "address tag",
                "{tag:?}"
            );
        }
        for bad in [
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
        ] {
            let e = sync_local_addrs(ns, "vip", &[bad]).unwrap_err();
            let msg = e.to_string();
            assert_eq!(field_of(e), "local address", "{bad}");
            assert!(msg.contains(&bad.to_string()), "{msg}");
        }
    }
}
