//! Service VIPs: what the `mesh_vip` maps must hold (a sans-IO table that turns each new plan
//! into an ordered list of map writes) and the writer of those maps.
//!
//! Ordering makes every lookup by the programs consistent: a service's backends are written
//! into the slot the service entry does not point at, then the service entry is flipped to
//! that slot in one update; the previous slot stays intact until the service changes again.
//! Client namespaces are registered after their services exist and removed before them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};

use super::sys::{absent_ok, map_err};
use crate::error::IngressError;

/// Map capacities, as in `ebpf/mesh_vip.h`.
pub(crate) const MAX_NETNS: usize = 4096;
/// Service IDs are indices into `mesh_vip_rr`.
pub(crate) const MAX_SERVICES: u32 = 16384;
/// Backends of one service (the count is a u16 in the map; both slots must fit).
pub(crate) const MAX_BACKENDS_PER_SERVICE: usize = 4096;

/// `struct mesh_vip_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct VipKey {
    scope: u32,
    vip: u32,
}
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for VipKey {}

/// `struct mesh_vip_service`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServiceVal {
    service: u32,
    count: u16,
    slot: u16,
}
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for ServiceVal {}

/// `struct mesh_vip_backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackendKey {
    service: u32,
    slot: u16,
    index: u16,
}
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for BackendKey {}

/// `struct mesh_vip_live_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct LiveKey {
    service: u32,
    addr: u32,
}
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for LiveKey {}

/// An IPv4 address as the programs hold it (network byte order in memory).
fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// One write to the maps, in the order they must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// `mesh_vip_backends[{service, slot, index}] = addr`.
    PutBackend {
        service: u32,
        slot: u16,
        index: u16,
        addr: Ipv4Addr,
    },
    /// Remove `mesh_vip_backends[{service, slot, index}]`.
    DelBackend { service: u32, slot: u16, index: u16 },
    /// `mesh_vip_live[{service, addr}] = 1`.
    PutLive { service: u32, addr: Ipv4Addr },
    /// Remove `mesh_vip_live[{service, addr}]`.
    DelLive { service: u32, addr: Ipv4Addr },
    /// `mesh_vip_rr[service] = 0`.
    ResetRr { service: u32 },
    /// `mesh_vip_services[{scope, vip}] = {service, count, slot}`.
    PutService {
        scope: u32,
        vip: Ipv4Addr,
        service: u32,
        count: u16,
        slot: u16,
    },
    /// Remove `mesh_vip_services[{scope, vip}]`.
    DelService { scope: u32, vip: Ipv4Addr },
    /// `mesh_vip_netns[cookie] = scope`.
    PutNetns { cookie: u64, scope: u32 },
    /// Remove `mesh_vip_netns[cookie]`.
    DelNetns { cookie: u64 },
}

/// What the VIP maps must serve, built from the plan once client namespaces are resolved
/// to their cookies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DesiredVips {
    /// Client namespace cookie → the networks (IDs) it is a client on.
    pub netns: BTreeMap<u64, BTreeSet<String>>,
    /// Network ID → VIP → (service name, backends in rotation order).
    pub networks: BTreeMap<String, BTreeMap<Ipv4Addr, (String, Vec<Ipv4Addr>)>>,
}

/// A service as written in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceState {
    id: u32,
    /// The slot the service entry points at.
    slot: u16,
    /// How many entries each slot holds in `mesh_vip_backends`.
    slot_len: [u16; 2],
    backends: Vec<Ipv4Addr>,
}

/// What the VIP maps hold, mirrored in userspace. A scope is one set of networks (the
/// networks a client namespace is on), so a task on two networks sees the VIPs of both.
#[derive(Debug, Default)]
pub(crate) struct VipTable {
    scopes: BTreeMap<BTreeSet<String>, u32>,
    next_scope: u32,
    netns: BTreeMap<u64, u32>,
    services: BTreeMap<(u32, Ipv4Addr), ServiceState>,
    free_ids: BTreeSet<u32>,
    next_id: u32,
}

impl VipTable {
    /// The writes that take the maps from what they hold to `want`, in a safe order, and
    /// the problems that kept parts of `want` out (already phrased for the report).
    pub(crate) fn update(&mut self, want: &DesiredVips) -> (Vec<Op>, Vec<String>) {
        let mut ops = Vec::new();
        let mut skipped = Vec::new();

        // Scopes: one per distinct set of networks of a client namespace.
        let mut netns_want: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for (cookie, nets) in &want.netns {
            if netns_want.len() >= MAX_NETNS {
                skipped.push(format!(
                    "client namespace with cookie {cookie}: more than {MAX_NETNS} client \
                     namespaces on this host; the rest are not served by VIPs"
                ));
                continue;
            }
            netns_want.insert(*cookie, nets.clone());
        }
        let sets: BTreeSet<&BTreeSet<String>> = netns_want.values().collect();
        for set in &sets {
            if !self.scopes.contains_key(*set) {
                self.next_scope = self.next_scope.wrapping_add(1).max(1);
                while self.scopes.values().any(|s| *s == self.next_scope) {
                    self.next_scope = self.next_scope.wrapping_add(1).max(1);
                }
                self.scopes.insert((*set).clone(), self.next_scope);
            }
        }

        // Services wanted per scope.
        let mut svc_want: BTreeMap<(u32, Ipv4Addr), &Vec<Ipv4Addr>> = BTreeMap::new();
        let mut owner: BTreeMap<(u32, Ipv4Addr), (&str, &str)> = BTreeMap::new();
        for set in &sets {
            let Some(&scope) = self.scopes.get(*set) else {
                continue;
            };
            for net in set.iter() {
                let Some(vips) = want.networks.get(net) else {
                    continue;
                };
                for (vip, (name, backends)) in vips {
                    let key = (scope, *vip);
                    if let Some((other_net, other)) = owner.get(&key) {
                        if *other_net != net.as_str() {
                            skipped.push(format!(
                                "vips[{net}].services[{name}].vip: {vip} is also the VIP of \
                                 {other} on network {other_net}, and some task is on both \
                                 networks; it keeps reaching {other}: give the networks \
                                 distinct subnets"
                            ));
                        }
                        continue;
                    }
                    if backends.len() > MAX_BACKENDS_PER_SERVICE {
                        skipped.push(format!(
                            "vips[{net}].services[{name}].backends: {} backends, more than \
                             {MAX_BACKENDS_PER_SERVICE}; the VIP is not served: scale the \
                             service down",
                            backends.len()
                        ));
                        continue;
                    }
                    owner.insert(key, (net.as_str(), name.as_str()));
                    svc_want.insert(key, backends);
                }
            }
        }

        // 1. New and changed services: backends first, then the service entry.
        for (key, backends) in &svc_want {
            let (scope, vip) = *key;
            match self.services.get_mut(key) {
                Some(st) if st.backends == **backends => {}
                Some(st) => {
                    let slot = 1 - st.slot;
                    write_slot(&mut ops, st.id, slot, st.slot_len[slot as usize], backends);
                    st.slot_len[slot as usize] = backends.len() as u16;
                    let old: BTreeSet<Ipv4Addr> = st.backends.iter().copied().collect();
                    let new: BTreeSet<Ipv4Addr> = backends.iter().copied().collect();
                    for addr in new.difference(&old) {
                        ops.push(Op::PutLive {
                            service: st.id,
                            addr: *addr,
                        });
                    }
                    ops.push(Op::PutService {
                        scope,
                        vip,
                        service: st.id,
                        count: backends.len() as u16,
                        slot,
                    });
                    for addr in old.difference(&new) {
                        ops.push(Op::DelLive {
                            service: st.id,
                            addr: *addr,
                        });
                    }
                    st.slot = slot;
                    st.backends = (*backends).clone();
                }
                None => {
                    let Some(id) = self.alloc_id() else {
                        skipped.push(format!(
                            "VIP {vip}: more than {MAX_SERVICES} VIPs on this host; it is \
                             not served"
                        ));
                        continue;
                    };
                    write_slot(&mut ops, id, 0, 0, backends);
                    let live: BTreeSet<Ipv4Addr> = backends.iter().copied().collect();
                    for addr in live {
                        ops.push(Op::PutLive { service: id, addr });
                    }
                    ops.push(Op::ResetRr { service: id });
                    ops.push(Op::PutService {
                        scope,
                        vip,
                        service: id,
                        count: backends.len() as u16,
                        slot: 0,
                    });
                    self.services.insert(
                        *key,
                        ServiceState {
                            id,
                            slot: 0,
                            slot_len: [backends.len() as u16, 0],
                            backends: (*backends).clone(),
                        },
                    );
                }
            }
        }

        // 2. Client namespaces in (their services exist) and out.
        for (cookie, set) in &netns_want {
            let Some(&scope) = self.scopes.get(set) else {
                continue;
            };
            if self.netns.get(cookie) != Some(&scope) {
                ops.push(Op::PutNetns {
                    cookie: *cookie,
                    scope,
                });
                self.netns.insert(*cookie, scope);
            }
        }
        let gone: Vec<u64> = self
            .netns
            .keys()
            .filter(|c| !netns_want.contains_key(c))
            .copied()
            .collect();
        for cookie in gone {
            ops.push(Op::DelNetns { cookie });
            self.netns.remove(&cookie);
        }

        // 3. Services no longer wanted: the entry first, then what it pointed at.
        let gone: Vec<(u32, Ipv4Addr)> = self
            .services
            .keys()
            .filter(|k| !svc_want.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            let Some(st) = self.services.remove(&key) else {
                continue;
            };
            ops.push(Op::DelService {
                scope: key.0,
                vip: key.1,
            });
            for slot in 0..2u16 {
                for index in 0..st.slot_len[slot as usize] {
                    ops.push(Op::DelBackend {
                        service: st.id,
                        slot,
                        index,
                    });
                }
            }
            let live: BTreeSet<Ipv4Addr> = st.backends.iter().copied().collect();
            for addr in live {
                ops.push(Op::DelLive {
                    service: st.id,
                    addr,
                });
            }
            self.free_ids.insert(st.id);
        }

        // 4. Scopes nobody uses any more.
        self.scopes.retain(|set, _| sets.contains(set));
        (ops, skipped)
    }

    fn alloc_id(&mut self) -> Option<u32> {
        if let Some(id) = self.free_ids.pop_first() {
            return Some(id);
        }
        if self.next_id >= MAX_SERVICES {
            return None;
        }
        self.next_id += 1;
        Some(self.next_id - 1)
    }

    /// Services written (scope, VIP) and their backend count.
    pub(crate) fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Client namespaces registered.
    pub(crate) fn netns_count(&self) -> usize {
        self.netns.len()
    }

    /// Backends over all services.
    pub(crate) fn backend_count(&self) -> usize {
        self.services.values().map(|s| s.backends.len()).sum()
    }
}

/// Writes `backends` into `slot` (which held `old_len` entries) and deletes the entries
/// beyond the new length.
fn write_slot(ops: &mut Vec<Op>, service: u32, slot: u16, old_len: u16, backends: &[Ipv4Addr]) {
    for (index, addr) in backends.iter().enumerate() {
        ops.push(Op::PutBackend {
            service,
            slot,
            index: index as u16,
            addr: *addr,
        });
    }
    for index in backends.len() as u16..old_len {
        ops.push(Op::DelBackend {
            service,
            slot,
            index,
        });
    }
}

/// Per-CPU counters of `mesh_vip_stats`, in index order.
pub(crate) const STAT_CONNECT: u32 = 0;
pub(crate) const STAT_SENDMSG: u32 = 1;
pub(crate) const STAT_RECVMSG: u32 = 2;
pub(crate) const STAT_GETPEERNAME: u32 = 3;
pub(crate) const STAT_REFUSED: u32 = 4;

/// The maps of `mesh_vip.o` that userspace writes and reads.
pub(crate) struct VipMaps {
    pub netns: HashMap<MapData, u64, u32>,
    pub services: HashMap<MapData, VipKey, ServiceVal>,
    pub backends: HashMap<MapData, BackendKey, u32>,
    pub live: HashMap<MapData, LiveKey, u8>,
    pub rr: Array<MapData, u64>,
    pub stats: PerCpuArray<MapData, u64>,
}

impl VipMaps {
    /// Performs one write.
    pub(crate) fn exec(&mut self, op: &Op) -> Result<(), IngressError> {
        match *op {
            Op::PutBackend {
                service,
                slot,
                index,
                addr,
            } => self
                .backends
                .insert(
                    BackendKey {
                        service,
                        slot,
                        index,
                    },
                    be(addr),
                    0,
                )
                .map_err(|e| map_err("mesh_vip_backends", e)),
            Op::DelBackend {
                service,
                slot,
                index,
            } => absent_ok(self.backends.remove(&BackendKey {
                service,
                slot,
                index,
            }))
            .map_err(|e| map_err("mesh_vip_backends", e)),
            Op::PutLive { service, addr } => self
                .live
                .insert(
                    LiveKey {
                        service,
                        addr: be(addr),
                    },
                    1,
                    0,
                )
                .map_err(|e| map_err("mesh_vip_live", e)),
            Op::DelLive { service, addr } => absent_ok(self.live.remove(&LiveKey {
                service,
                addr: be(addr),
            }))
            .map_err(|e| map_err("mesh_vip_live", e)),
            Op::ResetRr { service } => self
                .rr
                .set(service, 0, 0)
                .map_err(|e| map_err("mesh_vip_rr", e)),
            Op::PutService {
                scope,
                vip,
                service,
                count,
                slot,
            } => self
                .services
                .insert(
                    VipKey {
                        scope,
                        vip: be(vip),
                    },
                    ServiceVal {
                        service,
                        count,
                        slot,
                    },
                    0,
                )
                .map_err(|e| map_err("mesh_vip_services", e)),
            Op::DelService { scope, vip } => absent_ok(self.services.remove(&VipKey {
                scope,
                vip: be(vip),
            }))
            .map_err(|e| map_err("mesh_vip_services", e)),
            Op::PutNetns { cookie, scope } => self
                .netns
                .insert(cookie, scope, 0)
                .map_err(|e| map_err("mesh_vip_netns", e)),
            Op::DelNetns { cookie } => {
                absent_ok(self.netns.remove(&cookie)).map_err(|e| map_err("mesh_vip_netns", e))
            }
        }
    }

    /// Empties the maps userspace writes (after a failed update, before writing all again).
    pub(crate) fn clear(&mut self) -> Result<(), IngressError> {
        let keys: Vec<u64> = self.netns.keys().filter_map(Result::ok).collect();
        for k in keys {
            absent_ok(self.netns.remove(&k)).map_err(|e| map_err("mesh_vip_netns", e))?;
        }
        let keys: Vec<VipKey> = self.services.keys().filter_map(Result::ok).collect();
        for k in keys {
            absent_ok(self.services.remove(&k)).map_err(|e| map_err("mesh_vip_services", e))?;
        }
        let keys: Vec<BackendKey> = self.backends.keys().filter_map(Result::ok).collect();
        for k in keys {
            absent_ok(self.backends.remove(&k)).map_err(|e| map_err("mesh_vip_backends", e))?;
        }
        let keys: Vec<LiveKey> = self.live.keys().filter_map(Result::ok).collect();
        for k in keys {
            absent_ok(self.live.remove(&k)).map_err(|e| map_err("mesh_vip_live", e))?;
        }
        Ok(())
    }

    /// The sum over CPUs of one counter.
    pub(crate) fn stat(&self, index: u32) -> Result<u64, IngressError> {
        let v = self
            .stats
            .get(&index, 0)
            .map_err(|e| IngressError::io("reading mesh_vip_stats", std::io::Error::other(e)))?;
        Ok(v.iter().copied().fold(0u64, u64::wrapping_add))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    /// A network's services: (last byte of the VIP, last bytes of the backends).
    type Services<'a> = &'a [(u8, &'a [u8])];

    fn want(clients: &[(u64, &[&str])], nets: &[(&str, Services)]) -> DesiredVips {
        DesiredVips {
            netns: clients
                .iter()
                .map(|(c, n)| (*c, n.iter().map(|s| s.to_string()).collect()))
                .collect(),
            networks: nets
                .iter()
                .map(|(net, svcs)| {
                    (
                        net.to_string(),
                        svcs.iter()
                            .map(|(vip, bs)| {
                                (
                                    Ipv4Addr::new(10, 255, 0, *vip),
                                    (format!("s{vip}"), bs.iter().map(|b| ip(*b)).collect()),
                                )
                            })
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    fn pos(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).unwrap_or(usize::MAX)
    }

    #[test]
    fn a_new_service_is_complete_before_it_is_visible() {
        let mut t = VipTable::default();
        let (ops, skipped) = t.update(&want(&[(7, &["n"])], &[("n", &[(1, &[2, 3])])]));
        assert!(skipped.is_empty());
        let svc = pos(&ops, |o| matches!(o, Op::PutService { .. }));
        let netns = pos(&ops, |o| matches!(o, Op::PutNetns { cookie: 7, .. }));
        let last_backend = ops
            .iter()
            .rposition(|o| matches!(o, Op::PutBackend { .. }))
            .unwrap_or(usize::MAX);
        let rr = pos(&ops, |o| matches!(o, Op::ResetRr { .. }));
        assert!(last_backend < svc && rr < svc && svc < netns, "{ops:?}");
        assert!(matches!(
            ops[svc],
            Op::PutService {
                count: 2,
                slot: 0,
                ..
            }
        ));
        // Same plan again: nothing to write.
        let (ops, _) = t.update(&want(&[(7, &["n"])], &[("n", &[(1, &[2, 3])])]));
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn a_change_writes_the_other_slot_then_flips() {
        let mut t = VipTable::default();
        t.update(&want(&[(7, &["n"])], &[("n", &[(1, &[2, 3, 4])])]));
        let (ops, _) = t.update(&want(&[(7, &["n"])], &[("n", &[(1, &[3, 5])])]));
        let flip = pos(&ops, |o| matches!(o, Op::PutService { .. }));
        assert!(
            matches!(
                ops[flip],
                Op::PutService {
                    count: 2,
                    slot: 1,
                    ..
                }
            ),
            "{ops:?}"
        );
        for (i, o) in ops.iter().enumerate() {
            match o {
                Op::PutBackend { slot, .. } => assert!(*slot == 1 && i < flip, "{ops:?}"),
                Op::PutLive { addr, .. } => assert!(*addr == ip(5) && i < flip),
                Op::DelLive { addr, .. } => {
                    assert!(i > flip && (*addr == ip(2) || *addr == ip(4)))
                }
                // The slot in use before stays whole until the next change.
                Op::DelBackend { .. } => panic!("nothing deleted on the first change: {ops:?}"),
                _ => {}
            }
        }
        // Next change goes back to slot 0 and trims its extra entry.
        let (ops, _) = t.update(&want(&[(7, &["n"])], &[("n", &[(1, &[6])])]));
        assert!(ops.contains(&Op::DelBackend {
            service: 0,
            slot: 0,
            index: 2
        }));
        assert!(ops.contains(&Op::DelBackend {
            service: 0,
            slot: 0,
            index: 1
        }));
        assert!(
            !ops.iter()
                .any(|o| matches!(o, Op::DelBackend { slot: 1, .. }))
        );
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::PutService {
                count: 1,
                slot: 0,
                ..
            }
        )));
    }

    #[test]
    fn removals_unregister_clients_before_services() {
        let mut t = VipTable::default();
        t.update(&want(&[(7, &["n"])], &[("n", &[(1, &[2]), (9, &[3])])]));
        let (ops, _) = t.update(&want(&[], &[("n", &[(1, &[2]), (9, &[3])])]));
        let netns = pos(&ops, |o| matches!(o, Op::DelNetns { cookie: 7 }));
        let svc = pos(&ops, |o| matches!(o, Op::DelService { .. }));
        assert!(netns < svc, "{ops:?}");
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::DelService { .. }))
                .count(),
            2
        );
        assert_eq!(t.service_count(), 0);
        // IDs are reused.
        let (ops, _) = t.update(&want(&[(8, &["n"])], &[("n", &[(1, &[2])])]));
        assert!(
            ops.contains(&Op::ResetRr { service: 0 }) || ops.contains(&Op::ResetRr { service: 1 })
        );
    }

    #[test]
    fn a_task_on_two_networks_sees_both_and_a_clash_is_reported() {
        let mut t = VipTable::default();
        let (ops, skipped) = t.update(&want(
            &[(7, &["a", "b"]), (8, &["a"])],
            &[("a", &[(1, &[2])]), ("b", &[(1, &[3]), (5, &[4])])],
        ));
        // Scope {a,b}: VIP .1 (from a; b's clashes) and .5; scope {a}: VIP .1.
        let services: Vec<_> = ops
            .iter()
            .filter(|o| matches!(o, Op::PutService { .. }))
            .collect();
        assert_eq!(services.len(), 3, "{ops:?}");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(
            skipped[0].contains("vips[b].services[s1].vip"),
            "{skipped:?}"
        );
        let scopes: BTreeSet<u32> = ops
            .iter()
            .filter_map(|o| match o {
                Op::PutNetns { scope, .. } => Some(*scope),
                _ => None,
            })
            .collect();
        assert_eq!(scopes.len(), 2);
    }

    #[test]
    fn an_empty_service_is_written_with_no_backends() {
        let mut t = VipTable::default();
        let (ops, _) = t.update(&want(&[(7, &["n"])], &[("n", &[(1, &[])])]));
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::PutService { count: 0, .. }))
        );
    }
}
