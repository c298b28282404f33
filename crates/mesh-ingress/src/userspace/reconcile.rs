//! What a new plan changes: which listeners (or VIP sandboxes) to open, close or update.
//! Pure.

use std::collections::BTreeMap;

use crate::plan::{Listener, MeshPlan, Proto, VipSandbox};

/// Key of a published port: one listener per protocol and port.
pub type ListenerKey = (Proto, u16);

/// The changes that take a set of running items to a desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<K> {
    /// Items to open (new ones, and ones that must be opened again after a close).
    pub open: Vec<K>,
    /// Items to close (gone from the plan, or to be opened again).
    pub close: Vec<K>,
    /// Items that stay open with new settings (backends, egress, …).
    pub update: Vec<K>,
    /// Items that stay as they are.
    pub unchanged: Vec<K>,
}

impl<K> Default for Diff<K> {
    fn default() -> Self {
        Diff {
            open: Vec::new(),
            close: Vec::new(),
            update: Vec::new(),
            unchanged: Vec::new(),
        }
    }
}

impl<K> Diff<K> {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.close.is_empty() && self.update.is_empty()
    }
}

/// Compares the running items with the desired ones. An item whose settings differ is
/// updated in place, unless `reopen(running, desired)` says it must be closed and opened
/// again (then its key is in both `close` and `open`; close first).
pub fn diff<K: Ord + Clone, V: PartialEq>(
    running: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    reopen: impl Fn(&V, &V) -> bool,
) -> Diff<K> {
    let mut d = Diff::default();
    for (k, have) in running {
        match desired.get(k) {
            None => d.close.push(k.clone()),
            Some(want) if want == have => d.unchanged.push(k.clone()),
            Some(want) if reopen(have, want) => {
                d.close.push(k.clone());
                d.open.push(k.clone());
            }
            Some(_) => d.update.push(k.clone()),
        }
    }
    for k in desired.keys() {
        if !running.contains_key(k) {
            d.open.push(k.clone());
        }
    }
    d
}

/// The published ports of a plan by key (a valid plan has each key once).
pub fn listeners_by_key(plan: &MeshPlan) -> BTreeMap<ListenerKey, Listener> {
    plan.listeners
        .iter()
        .map(|l| ((l.proto, l.port), l.clone()))
        .collect()
}

/// The VIP sandboxes of a plan by network ID (a valid plan has each network once).
pub fn sandboxes_by_network(plan: &MeshPlan) -> BTreeMap<String, VipSandbox> {
    plan.vips
        .iter()
        .map(|s| (s.network_id.clone(), s.clone()))
        .collect()
}

/// A published port keeps its socket whatever else changes: never reopened.
pub fn listener_needs_reopen(_running: &Listener, _desired: &Listener) -> bool {
    false
}

/// A VIP sandbox in another namespace is a different sandbox: closed and opened again.
pub fn sandbox_needs_reopen(running: &VipSandbox, desired: &VipSandbox) -> bool {
    running.netns != desired.netns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Backend, Egress, VipService};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn l(proto: Proto, port: u16, backends: &[u8]) -> Listener {
        Listener {
            proto,
            port,
            service: "web".into(),
            egress: Egress {
                netns: "/var/run/netns/ingress".into(),
                source: Some(Ipv4Addr::new(10, 255, 0, 2)),
            },
            backends: backends
                .iter()
                .map(|b| Backend {
                    addr: SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, *b), 80),
                    node: None,
                })
                .collect(),
            proxy_protocol: false,
        }
    }

    fn plan(ls: Vec<Listener>) -> MeshPlan {
        MeshPlan {
            listeners: ls,
            vips: vec![],
        }
    }

    #[test]
    fn nothing_running_opens_everything() {
        let want = listeners_by_key(&plan(vec![
            l(Proto::Tcp, 80, &[3]),
            l(Proto::Udp, 53, &[4]),
        ]));
        let d = diff(&BTreeMap::new(), &want, listener_needs_reopen);
        assert_eq!(d.open, vec![(Proto::Tcp, 80), (Proto::Udp, 53)]);
        assert!(d.close.is_empty() && d.update.is_empty() && d.unchanged.is_empty());
        assert!(!d.is_empty());
    }

    #[test]
    fn same_plan_changes_nothing() {
        let p = plan(vec![l(Proto::Tcp, 80, &[3, 4])]);
        let d = diff(
            &listeners_by_key(&p),
            &listeners_by_key(&p),
            listener_needs_reopen,
        );
        assert!(d.is_empty());
        assert_eq!(d.unchanged, vec![(Proto::Tcp, 80)]);
    }

    #[test]
    fn open_close_update() {
        let have = listeners_by_key(&plan(vec![
            l(Proto::Tcp, 80, &[3, 4]),
            l(Proto::Tcp, 443, &[3]),
            l(Proto::Udp, 53, &[5]),
        ]));
        let mut changed = l(Proto::Tcp, 80, &[3]);
        changed.proxy_protocol = true;
        let want = listeners_by_key(&plan(vec![
            changed,
            l(Proto::Udp, 53, &[5]),
            l(Proto::Udp, 443, &[3]),
        ]));
        let d = diff(&have, &want, listener_needs_reopen);
        assert_eq!(d.open, vec![(Proto::Udp, 443)]);
        assert_eq!(d.close, vec![(Proto::Tcp, 443)]);
        assert_eq!(d.update, vec![(Proto::Tcp, 80)]);
        assert_eq!(d.unchanged, vec![(Proto::Udp, 53)]);
    }

    #[test]
    fn same_port_other_protocol_is_another_listener() {
        let have = listeners_by_key(&plan(vec![l(Proto::Tcp, 53, &[3])]));
        let want = listeners_by_key(&plan(vec![l(Proto::Udp, 53, &[3])]));
        let d = diff(&have, &want, listener_needs_reopen);
        assert_eq!(d.open, vec![(Proto::Udp, 53)]);
        assert_eq!(d.close, vec![(Proto::Tcp, 53)]);
    }

    fn sb(id: &str, netns: &str, vips: &[u8]) -> VipSandbox {
        VipSandbox {
            network_id: id.into(),
            netns: netns.into(),
            source: Ipv4Addr::new(10, 0, 0, 250),
            clients: vec![],
            services: vips
                .iter()
                .map(|v| VipService {
                    name: format!("s{v}"),
                    vip: Ipv4Addr::new(10, 0, 0, *v),
                    backends: vec![Ipv4Addr::new(10, 0, 0, 100 + *v)],
                })
                .collect(),
        }
    }

    #[test]
    fn sandbox_in_another_namespace_is_reopened() {
        let have = sandboxes_by_network(&MeshPlan {
            listeners: vec![],
            vips: vec![
                sb("n1", "/run/netns/a", &[2]),
                sb("n2", "/run/netns/b", &[2]),
            ],
        });
        let want = sandboxes_by_network(&MeshPlan {
            listeners: vec![],
            vips: vec![
                sb("n1", "/run/netns/a2", &[2]),
                sb("n2", "/run/netns/b", &[2, 3]),
                sb("n3", "/run/netns/c", &[]),
            ],
        });
        let d = diff(&have, &want, sandbox_needs_reopen);
        assert_eq!(d.close, vec!["n1".to_owned()]);
        assert_eq!(d.open, vec!["n1".to_owned(), "n3".to_owned()]);
        assert_eq!(d.update, vec!["n2".to_owned()]);
    }

    #[test]
    fn empty_plan_closes_everything() {
        let have = sandboxes_by_network(&MeshPlan {
            listeners: vec![],
            vips: vec![sb("n1", "/run/netns/a", &[2])],
        });
        let d = diff(&have, &BTreeMap::new(), sandbox_needs_reopen);
        assert_eq!(d.close, vec!["n1".to_owned()]);
        assert!(d.open.is_empty());
    }
}
