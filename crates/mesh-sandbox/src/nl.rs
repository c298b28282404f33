//! A thin layer over rtnetlink: one route-netlink socket per namespace, opened on a thread that
//! has entered it, and the few link/address/route operations the sandbox needs.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::SandboxError;
use crate::ns::{open_netns, run_on_thread};

/// A route-netlink handle bound to one namespace, with that namespace's name for errors.
pub(crate) struct Nl {
    handle: Handle,
    /// The namespace, as shown in errors and logs.
    pub(crate) ns: String,
}

/// What this crate reads of a link.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) kind: Option<InfoKind>,
    pub(crate) mtu: u32,
    pub(crate) up: bool,
    pub(crate) controller: Option<u32>,
    pub(crate) mac: Option<Vec<u8>>,
    /// For a veth: the ifindex of its peer (in the peer's namespace).
    pub(crate) peer: Option<u32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            mac: None,
            peer: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(c) if *c != 0 => link.controller = Some(*c),
                LinkAttribute::Address(a) => link.mac = Some(a.clone()),
                LinkAttribute::Link(l) if *l != 0 => link.peer = Some(*l),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn label(netns: Option<&Path>) -> String {
    netns.map_or_else(|| "current".to_owned(), |p| p.display().to_string())
}

fn errno_of(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

/// Runs `f` with route-netlink handles opened in each of `namespaces` (in that order; `None`
/// is the caller's own namespace), on a fresh thread with a single-threaded runtime. The thread
/// ends inside the last namespace, so /proc/sys/net writes made by `f` land there.
pub(crate) fn with_netlink<T, F, Fut>(
    namespaces: Vec<Option<PathBuf>>,
    f: F,
) -> Result<T, SandboxError>
where
    T: Send + 'static,
    F: FnOnce(Vec<Nl>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, SandboxError>>,
{
    // Open every namespace up front: a missing one is reported before any work starts.
    let mut files = Vec::new();
    for ns in &namespaces {
        files.push(match ns {
            Some(p) => Some((open_netns(p)?, p.clone())),
            None => None,
        });
    }
    let first_label = label(namespaces.first().and_then(|n| n.as_deref()));
    run_on_thread(None, move || -> Result<T, SandboxError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| SandboxError::Thread {
                netns: first_label,
                source: e,
            })?;
        rt.block_on(async move {
            let mut handles = Vec::new();
            let mut tasks = Vec::new();
            for ns in files {
                let ns_label = match ns {
                    Some((file, path)) => {
                        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                            SandboxError::Netns {
                                path: path.clone(),
                                op: "enter (setns) the namespace",
                                source: std::io::Error::from_raw_os_error(e as i32),
                            }
                        })?;
                        path.display().to_string()
                    }
                    None => "current".to_owned(),
                };
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(|e| SandboxError::Netlink {
                        netns: ns_label.clone(),
                        op: "open a route-netlink socket".into(),
                        errno: e.raw_os_error().map(Errno::from_raw),
                        detail: e.to_string(),
                    })?;
                tasks.push(tokio::spawn(conn));
                handles.push(Nl {
                    handle,
                    ns: ns_label,
                });
            }
            let out = f(handles).await;
            for t in tasks {
                t.abort();
            }
            out
        })
    })?
}

/// Builds a link message addressing an existing link by index.
pub(crate) fn by_index(index: u32) -> rtnetlink::LinkMessageBuilder<LinkUnspec> {
    LinkUnspec::new_with_index(index)
}

impl Nl {
    pub(crate) fn err(&self, op: impl Into<String>, e: rtnetlink::Error) -> SandboxError {
        SandboxError::Netlink {
            netns: self.ns.clone(),
            op: op.into(),
            errno: errno_of(&e),
            detail: e.to_string(),
        }
    }

    /// The link named `name`, if there is one.
    pub(crate) async fn link(&self, name: &str) -> Result<Option<Link>, SandboxError> {
        let mut stream = self.handle.link().get().match_name(name).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(self.err(format!("look up link {name}"), e)),
        }
    }

    /// The link named `name`; an error naming it when there is none.
    pub(crate) async fn require_link(&self, name: &str) -> Result<Link, SandboxError> {
        self.link(name)
            .await?
            .ok_or_else(|| SandboxError::LinkMissing {
                netns: self.ns.clone(),
                link: name.to_owned(),
            })
    }

    /// The link with ifindex `index`, if there is one.
    pub(crate) async fn link_by_index(&self, index: u32) -> Result<Option<Link>, SandboxError> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(self.err(format!("look up link #{index}"), e)),
        }
    }

    /// Every link of the namespace.
    pub(crate) async fn links(&self) -> Result<Vec<Link>, SandboxError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("list links", e))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    pub(crate) async fn add_link(&self, op: &str, msg: LinkMessage) -> Result<(), SandboxError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.err(op, e))
    }

    pub(crate) async fn set_link(&self, op: &str, msg: LinkMessage) -> Result<(), SandboxError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.err(op, e))
    }

    /// Deletes the link with ifindex `index`; one already gone is fine.
    pub(crate) async fn del_link(&self, index: u32, name: &str) -> Result<(), SandboxError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(()),
            Err(e) => Err(self.err(format!("delete link {name}"), e)),
        }
    }

    /// Brings `link` up with `mtu` (and `mac` when given), touching only what differs.
    pub(crate) async fn ensure_link_state(
        &self,
        link: &Link,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        controller: Option<u32>,
    ) -> Result<(), SandboxError> {
        let mut msg = by_index(link.index);
        let mut change = false;
        if let Some(mtu) = mtu
            && link.mtu != mtu
        {
            tracing::debug!(netns = %self.ns, link = %link.name, from = link.mtu, to = mtu, "setting MTU");
            msg = msg.mtu(mtu);
            change = true;
        }
        if let Some(mac) = mac
            && link.mac.as_deref() != Some(&mac[..])
        {
            msg = msg.address(mac.to_vec());
            change = true;
        }
        if let Some(c) = controller
            && link.controller != Some(c)
        {
            msg = msg.controller(c);
            change = true;
        }
        if change {
            self.set_link(&format!("configure link {}", link.name), msg.build())
                .await?;
        }
        if !link.up {
            self.set_link(
                &format!("bring link {} up", link.name),
                by_index(link.index).up().build(),
            )
            .await?;
        }
        Ok(())
    }

    /// The IPv4 addresses on the link with ifindex `index`, with their prefix lengths.
    pub(crate) async fn addrs_v4(
        &self,
        index: u32,
    ) -> Result<Vec<(Ipv4Addr, u8, AddressMessage)>, SandboxError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err(format!("list addresses of link #{index}"), e))?;
        let mut out = Vec::new();
        for msg in msgs {
            if msg.header.family != AddressFamily::Inet || msg.header.index != index {
                continue;
            }
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push((ip, msg.header.prefix_len, msg));
            }
        }
        Ok(out)
    }

    /// Makes `ip/prefix` the only IPv4 address of `link`.
    pub(crate) async fn ensure_only_addr_v4(
        &self,
        link: &Link,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), SandboxError> {
        let mut present = false;
        for (have, plen, msg) in self.addrs_v4(link.index).await? {
            if have == ip && plen == prefix {
                present = true;
                continue;
            }
            tracing::info!(netns = %self.ns, link = %link.name, addr = %format!("{have}/{plen}"), "removing stray address");
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno_of(&e) == Some(Errno::EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(self.err(
                        format!("remove address {have}/{plen} from {}", link.name),
                        e,
                    ));
                }
            }
        }
        if !present {
            self.handle
                .address()
                .add(link.index, IpAddr::V4(ip), prefix)
                .execute()
                .await
                .map_err(|e| self.err(format!("add address {ip}/{prefix} to {}", link.name), e))?;
        }
        Ok(())
    }

    /// The /32 unicast routes of the main table that go out of ifindex `oif`.
    pub(crate) async fn host_routes_via(
        &self,
        oif: u32,
    ) -> Result<Vec<(Ipv4Addr, RouteMessage)>, SandboxError> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("list routes", e))?;
        let mut out = Vec::new();
        for msg in msgs {
            let table = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(msg.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || msg.header.destination_prefix_length != 32
                || msg.header.kind != RouteType::Unicast
                || !msg.attributes.contains(&RouteAttribute::Oif(oif))
            {
                continue;
            }
            let dst = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(dst) = dst {
                out.push((dst, msg));
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) the route `dst/32 dev <oif> scope link`.
    pub(crate) async fn add_host_route(
        &self,
        dst: Ipv4Addr,
        oif: u32,
        dev: &str,
    ) -> Result<(), SandboxError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .output_interface(oif)
            .scope(RouteScope::Link)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| self.err(format!("add route {dst}/32 dev {dev}"), e))
    }

    pub(crate) async fn replace_default_route(
        &self,
        gateway: Ipv4Addr,
        oif: u32,
        dev: &str,
    ) -> Result<(), SandboxError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(oif)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| self.err(format!("add route default via {gateway} dev {dev}"), e))
    }

    pub(crate) async fn del_route(
        &self,
        msg: RouteMessage,
        what: &str,
    ) -> Result<(), SandboxError> {
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(Errno::ESRCH) => Ok(()),
            Err(e) => Err(self.err(format!("remove route {what}"), e)),
        }
    }

    /// `ip route get dst`: the output interface and the route's MTU metric, if any.
    pub(crate) async fn route_to(
        &self,
        dst: IpAddr,
    ) -> Result<Option<(u32, Option<u32>)>, SandboxError> {
        let msg = match dst {
            IpAddr::V4(ip) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(ip, 32)
                .build(),
            IpAddr::V6(ip) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(ip, 128)
                .build(),
        };
        let mut stream = self.handle.route().get(msg).execute();
        let found = match stream.try_next().await {
            Ok(found) => found,
            Err(e) if matches!(errno_of(&e), Some(Errno::ENETUNREACH | Errno::EHOSTUNREACH)) => {
                None
            }
            Err(e) => return Err(self.err(format!("look up the route to {dst}"), e)),
        };
        Ok(found.and_then(|m| {
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(o) => Some(*o),
                _ => None,
            })?;
            let mtu = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Metrics(ms) => ms.iter().find_map(|x| match x {
                    RouteMetric::Mtu(v) if *v != 0 => Some(*v),
                    _ => None,
                }),
                _ => None,
            });
            Some((oif, mtu))
        }))
    }
}

/// Whether a link is of the given kind.
pub(crate) fn is_kind(link: &Link, kind: &InfoKind) -> bool {
    link.kind.as_ref() == Some(kind)
}
