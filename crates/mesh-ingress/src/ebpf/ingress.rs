//! Published ports: what the `mesh_ingress` maps must hold (a sans-IO table turning each new
//! plan into ordered map writes) and the writer of those maps.
//!
//! As for VIPs, a port's backends go into the slot its entry does not point at before the
//! entry flips to it. Local backends (how to reach a task behind a mesh link) are written
//! before any port points at them, and a local backend that leaves the plan keeps its entry
//! for a drain period so the flows pinned to it finish.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};

use super::sys::{absent_ok, map_err};
use crate::error::IngressError;

/// Port entries are indices into `mesh_ing_rr` (as in `ebpf/mesh_ingress.h`).
pub(crate) const MAX_PORTS: u32 = 8192;
/// Backends of one published port.
pub(crate) const MAX_BACKENDS_PER_PORT: usize = 4096;

pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// `struct mesh_ing_port_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortKey {
    proto: u8,
    pad: u8,
    port: u16,
}
// SAFETY: plain integers, explicit padding.
unsafe impl aya::Pod for PortKey {}

/// `struct mesh_ing_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortVal {
    service: u32,
    count: u16,
    slot: u16,
}
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for PortVal {}

/// `struct mesh_ing_backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackendKey {
    service: u32,
    slot: u16,
    index: u16,
}
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for BackendKey {}

/// `struct mesh_ing_backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackendVal {
    addr: u32,
    port: u16,
    pad: u16,
    node: u32,
}
// SAFETY: plain integers, explicit padding.
unsafe impl aya::Pod for BackendVal {}

/// `struct mesh_ing_local_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalKeyC {
    proto: u8,
    pad: u8,
    port: u16,
    addr: u32,
    target: u16,
    pad2: u16,
}
// SAFETY: plain integers, explicit padding.
unsafe impl aya::Pod for LocalKeyC {}

/// `struct mesh_ing_local`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalVal {
    ifindex: u32,
    nexthop: u32,
}
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for LocalVal {}

/// `struct mesh_ing_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConfigVal {
    encap_port: u16,
    mss: u16,
    pad: u32,
}
// SAFETY: plain integers, explicit padding.
unsafe impl aya::Pod for ConfigVal {}

/// A backend as the programs see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Be {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// `None`: on this host.
    pub node: Option<Ipv4Addr>,
}

/// A backend this host delivers to: (proto, published port, task address, target port).
pub(crate) type LocalKey = (u8, u16, Ipv4Addr, u16);

/// How a local backend is reached: out of mesh link `link` (ifindex) to `nexthop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalTarget {
    pub ifindex: u32,
    pub nexthop: Ipv4Addr,
    /// The link's name (a link stays while some entry uses it).
    pub link: String,
}

/// What the maps must serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DesiredIngress {
    /// (proto, published port) → backends in rotation order.
    pub ports: BTreeMap<(u8, u16), Vec<Be>>,
    /// Local backends and how to reach them.
    pub local: BTreeMap<LocalKey, LocalTarget>,
    /// This host's addresses on its external interfaces.
    pub addrs: BTreeSet<Ipv4Addr>,
    /// Underlay addresses of the cluster's nodes.
    pub nodes: BTreeSet<Ipv4Addr>,
    /// UDP port of encapsulated packets.
    pub encap_port: u16,
    /// The MSS a backend may announce to a client whose packets come encapsulated.
    pub mss: u16,
}

/// One write to the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Config {
        encap_port: u16,
        mss: u16,
    },
    PutAddr(Ipv4Addr),
    DelAddr(Ipv4Addr),
    PutNode(Ipv4Addr),
    DelNode(Ipv4Addr),
    PutLocal {
        key: LocalKey,
        ifindex: u32,
        nexthop: Ipv4Addr,
    },
    DelLocal {
        key: LocalKey,
    },
    PutBackend {
        service: u32,
        slot: u16,
        index: u16,
        backend: Be,
    },
    DelBackend {
        service: u32,
        slot: u16,
        index: u16,
    },
    ResetRr {
        service: u32,
    },
    PutPort {
        proto: u8,
        port: u16,
        service: u32,
        count: u16,
        slot: u16,
    },
    DelPort {
        proto: u8,
        port: u16,
    },
}

#[derive(Debug, Clone)]
struct PortState {
    id: u32,
    slot: u16,
    slot_len: [u16; 2],
    backends: Vec<Be>,
}

#[derive(Debug, Clone)]
struct LocalState {
    target: LocalTarget,
    /// Left the plan: removed once this passes.
    draining_until: Option<Instant>,
}

/// What the ingress maps hold, mirrored.
#[derive(Debug, Default)]
pub(crate) struct IngressTable {
    config: Option<(u16, u16)>,
    addrs: BTreeSet<Ipv4Addr>,
    nodes: BTreeSet<Ipv4Addr>,
    local: BTreeMap<LocalKey, LocalState>,
    ports: BTreeMap<(u8, u16), PortState>,
    free_ids: BTreeSet<u32>,
    next_id: u32,
}

impl IngressTable {
    /// The writes that take the maps to `want` at time `now`; local backends that left the
    /// plan keep their entries until `drain` has passed.
    pub(crate) fn update(
        &mut self,
        want: &DesiredIngress,
        now: Instant,
        drain: Duration,
    ) -> (Vec<Op>, Vec<String>) {
        let mut ops = Vec::new();
        let mut skipped = Vec::new();
        if self.config != Some((want.encap_port, want.mss)) {
            ops.push(Op::Config {
                encap_port: want.encap_port,
                mss: want.mss,
            });
            self.config = Some((want.encap_port, want.mss));
        }
        for a in want.addrs.difference(&self.addrs) {
            ops.push(Op::PutAddr(*a));
        }
        for n in want.nodes.difference(&self.nodes) {
            ops.push(Op::PutNode(*n));
        }
        // Local backends before the ports that lead to them.
        for (key, target) in &want.local {
            let same = self.local.get(key).map(|s| &s.target) == Some(target);
            if !same {
                ops.push(Op::PutLocal {
                    key: *key,
                    ifindex: target.ifindex,
                    nexthop: target.nexthop,
                });
            }
            self.local.insert(
                *key,
                LocalState {
                    target: target.clone(),
                    draining_until: None,
                },
            );
        }
        for (key, backends) in &want.ports {
            let (proto, port) = *key;
            if backends.len() > MAX_BACKENDS_PER_PORT {
                skipped.push(format!(
                    "listeners[{port}/{}].backends: {} backends, more than \
                     {MAX_BACKENDS_PER_PORT}; the port is not served: scale the service down",
                    proto_name(proto),
                    backends.len()
                ));
                continue;
            }
            let count = backends.len() as u16;
            match self.ports.get_mut(key) {
                Some(st) if st.backends == *backends => {}
                Some(st) => {
                    let slot = 1 - st.slot;
                    write_slot(&mut ops, st.id, slot, st.slot_len[slot as usize], backends);
                    st.slot_len[slot as usize] = count;
                    ops.push(Op::PutPort {
                        proto,
                        port,
                        service: st.id,
                        count,
                        slot,
                    });
                    st.slot = slot;
                    st.backends = backends.clone();
                }
                None => {
                    let Some(id) = self.alloc_id() else {
                        skipped.push(format!(
                            "listeners[{port}/{}]: more than {MAX_PORTS} published ports; \
                             it is not served",
                            proto_name(proto)
                        ));
                        continue;
                    };
                    write_slot(&mut ops, id, 0, 0, backends);
                    ops.push(Op::ResetRr { service: id });
                    ops.push(Op::PutPort {
                        proto,
                        port,
                        service: id,
                        count,
                        slot: 0,
                    });
                    self.ports.insert(
                        *key,
                        PortState {
                            id,
                            slot: 0,
                            slot_len: [count, 0],
                            backends: backends.clone(),
                        },
                    );
                }
            }
        }
        let gone: Vec<(u8, u16)> = self
            .ports
            .keys()
            .filter(|k| !want.ports.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            let Some(st) = self.ports.remove(&key) else {
                continue;
            };
            ops.push(Op::DelPort {
                proto: key.0,
                port: key.1,
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
            self.free_ids.insert(st.id);
        }
        // Local backends that left: drain, then remove.
        let mut expired = Vec::new();
        for (key, st) in self.local.iter_mut() {
            if want.local.contains_key(key) {
                continue;
            }
            match st.draining_until {
                None => st.draining_until = Some(now + drain),
                Some(t) if t <= now => expired.push(*key),
                Some(_) => {}
            }
        }
        for key in expired {
            ops.push(Op::DelLocal { key });
            self.local.remove(&key);
        }
        for n in self.nodes.difference(&want.nodes) {
            ops.push(Op::DelNode(*n));
        }
        for a in self.addrs.difference(&want.addrs) {
            ops.push(Op::DelAddr(*a));
        }
        self.nodes = want.nodes.clone();
        self.addrs = want.addrs.clone();
        (ops, skipped)
    }

    fn alloc_id(&mut self) -> Option<u32> {
        if let Some(id) = self.free_ids.pop_first() {
            return Some(id);
        }
        if self.next_id >= MAX_PORTS {
            return None;
        }
        self.next_id += 1;
        Some(self.next_id - 1)
    }

    /// Mesh links some local backend entry (serving or draining) goes through.
    pub(crate) fn links_in_use(&self) -> BTreeSet<String> {
        self.local.values().map(|s| s.target.link.clone()).collect()
    }

    /// Published ports served.
    pub(crate) fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Local backends draining (left the plan, pinned flows still delivered).
    pub(crate) fn draining_count(&self) -> usize {
        self.local
            .values()
            .filter(|s| s.draining_until.is_some())
            .count()
    }
}

fn proto_name(p: u8) -> &'static str {
    if p == IPPROTO_UDP { "udp" } else { "tcp" }
}

fn write_slot(ops: &mut Vec<Op>, service: u32, slot: u16, old_len: u16, backends: &[Be]) {
    for (index, b) in backends.iter().enumerate() {
        ops.push(Op::PutBackend {
            service,
            slot,
            index: index as u16,
            backend: *b,
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

/// Counters of `mesh_ing_stats`, in index order.
pub(crate) const STAT_LOCAL: u32 = 0;
pub(crate) const STAT_ENCAP: u32 = 1;
pub(crate) const STAT_DECAP: u32 = 2;
pub(crate) const STAT_REPLY: u32 = 3;
pub(crate) const STAT_NEW_FLOW: u32 = 4;
pub(crate) const STAT_NO_BACKEND: u32 = 5;
pub(crate) const STAT_DROP_LINK: u32 = 6;
pub(crate) const STAT_DROP_DECAP: u32 = 7;
pub(crate) const STAT_NO_ROUTE: u32 = 8;

/// The maps of `mesh_ingress.o` that userspace writes and reads.
pub(crate) struct IngressMaps {
    pub addrs: HashMap<MapData, u32, u8>,
    pub nodes: HashMap<MapData, u32, u8>,
    pub ports: HashMap<MapData, PortKey, PortVal>,
    pub backends: HashMap<MapData, BackendKey, BackendVal>,
    pub local: HashMap<MapData, LocalKeyC, LocalVal>,
    pub rr: Array<MapData, u64>,
    pub config: Array<MapData, ConfigVal>,
    pub stats: PerCpuArray<MapData, u64>,
}

fn local_key((proto, port, addr, target): LocalKey) -> LocalKeyC {
    LocalKeyC {
        proto,
        pad: 0,
        port: port.to_be(),
        addr: be(addr),
        target: target.to_be(),
        pad2: 0,
    }
}

impl IngressMaps {
    /// Performs one write.
    pub(crate) fn exec(&mut self, op: &Op) -> Result<(), IngressError> {
        match *op {
            Op::Config { encap_port, mss } => self
                .config
                .set(
                    0,
                    ConfigVal {
                        encap_port: encap_port.to_be(),
                        mss,
                        pad: 0,
                    },
                    0,
                )
                .map_err(|e| map_err("mesh_ing_config", e)),
            Op::PutAddr(a) => self
                .addrs
                .insert(be(a), 1, 0)
                .map_err(|e| map_err("mesh_ing_addrs", e)),
            Op::DelAddr(a) => {
                absent_ok(self.addrs.remove(&be(a))).map_err(|e| map_err("mesh_ing_addrs", e))
            }
            Op::PutNode(a) => self
                .nodes
                .insert(be(a), 1, 0)
                .map_err(|e| map_err("mesh_ing_nodes", e)),
            Op::DelNode(a) => {
                absent_ok(self.nodes.remove(&be(a))).map_err(|e| map_err("mesh_ing_nodes", e))
            }
            Op::PutLocal {
                key,
                ifindex,
                nexthop,
            } => self
                .local
                .insert(
                    local_key(key),
                    LocalVal {
                        ifindex,
                        nexthop: be(nexthop),
                    },
                    0,
                )
                .map_err(|e| map_err("mesh_ing_local", e)),
            Op::DelLocal { key } => absent_ok(self.local.remove(&local_key(key)))
                .map_err(|e| map_err("mesh_ing_local", e)),
            Op::PutBackend {
                service,
                slot,
                index,
                backend,
            } => self
                .backends
                .insert(
                    BackendKey {
                        service,
                        slot,
                        index,
                    },
                    BackendVal {
                        addr: be(backend.addr),
                        port: backend.port.to_be(),
                        pad: 0,
                        node: backend.node.map_or(0, be),
                    },
                    0,
                )
                .map_err(|e| map_err("mesh_ing_backends", e)),
            Op::DelBackend {
                service,
                slot,
                index,
            } => absent_ok(self.backends.remove(&BackendKey {
                service,
                slot,
                index,
            }))
            .map_err(|e| map_err("mesh_ing_backends", e)),
            Op::ResetRr { service } => self
                .rr
                .set(service, 0, 0)
                .map_err(|e| map_err("mesh_ing_rr", e)),
            Op::PutPort {
                proto,
                port,
                service,
                count,
                slot,
            } => self
                .ports
                .insert(
                    PortKey {
                        proto,
                        pad: 0,
                        port: port.to_be(),
                    },
                    PortVal {
                        service,
                        count,
                        slot,
                    },
                    0,
                )
                .map_err(|e| map_err("mesh_ing_ports", e)),
            Op::DelPort { proto, port } => absent_ok(self.ports.remove(&PortKey {
                proto,
                pad: 0,
                port: port.to_be(),
            }))
            .map_err(|e| map_err("mesh_ing_ports", e)),
        }
    }

    /// Empties the maps userspace writes (after a failed update, before writing all again).
    pub(crate) fn clear(&mut self) -> Result<(), IngressError> {
        fn clear_map<K: aya::Pod, V: aya::Pod>(
            m: &mut HashMap<MapData, K, V>,
            name: &str,
        ) -> Result<(), IngressError> {
            let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                absent_ok(m.remove(&k)).map_err(|e| map_err(name, e))?;
            }
            Ok(())
        }
        clear_map(&mut self.ports, "mesh_ing_ports")?;
        clear_map(&mut self.backends, "mesh_ing_backends")?;
        clear_map(&mut self.local, "mesh_ing_local")?;
        clear_map(&mut self.addrs, "mesh_ing_addrs")?;
        clear_map(&mut self.nodes, "mesh_ing_nodes")
    }

    /// The sum over CPUs of one counter.
    pub(crate) fn stat(&self, index: u32) -> Result<u64, IngressError> {
        let v = self
            .stats
            .get(&index, 0)
            .map_err(|e| IngressError::io("reading mesh_ing_stats", std::io::Error::other(e)))?;
        Ok(v.iter().copied().fold(0u64, u64::wrapping_add))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be_local(last: u8) -> Be {
        Be {
            addr: Ipv4Addr::new(172, 30, 0, last),
            port: 80,
            node: None,
        }
    }

    fn be_remote(last: u8, node: u8) -> Be {
        Be {
            addr: Ipv4Addr::new(172, 30, 0, last),
            port: 80,
            node: Some(Ipv4Addr::new(10, 88, 0, node)),
        }
    }

    fn target() -> LocalTarget {
        LocalTarget {
            ifindex: 9,
            nexthop: Ipv4Addr::new(169, 254, 192, 2),
            link: "mi-x".into(),
        }
    }

    fn want(backends: Vec<Be>) -> DesiredIngress {
        let local = backends
            .iter()
            .filter(|b| b.node.is_none())
            .map(|b| ((IPPROTO_TCP, 8080, b.addr, b.port), target()))
            .collect();
        DesiredIngress {
            ports: BTreeMap::from([((IPPROTO_TCP, 8080), backends)]),
            local,
            addrs: BTreeSet::from([Ipv4Addr::new(10, 88, 0, 1)]),
            nodes: BTreeSet::from([Ipv4Addr::new(10, 88, 0, 2)]),
            encap_port: 51821,
            mss: 1424,
        }
    }

    fn pos(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).unwrap_or(usize::MAX)
    }

    #[test]
    fn local_entries_and_backends_come_before_the_port() {
        let mut t = IngressTable::default();
        let now = Instant::now();
        let (ops, skipped) = t.update(
            &want(vec![be_local(11), be_remote(12, 2)]),
            now,
            Duration::ZERO,
        );
        assert!(skipped.is_empty());
        let port = pos(&ops, |o| matches!(o, Op::PutPort { .. }));
        let local = pos(&ops, |o| matches!(o, Op::PutLocal { .. }));
        let last_backend = ops
            .iter()
            .rposition(|o| matches!(o, Op::PutBackend { .. }))
            .unwrap_or(usize::MAX);
        assert!(local < port && last_backend < port, "{ops:?}");
        assert!(ops.contains(&Op::Config {
            encap_port: 51821,
            mss: 1424
        }));
        let (ops, _) = t.update(
            &want(vec![be_local(11), be_remote(12, 2)]),
            now,
            Duration::ZERO,
        );
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn a_local_backend_that_leaves_drains_first() {
        let mut t = IngressTable::default();
        let t0 = Instant::now();
        let drain = Duration::from_secs(30);
        t.update(&want(vec![be_local(11), be_local(12)]), t0, drain);
        let (ops, _) = t.update(&want(vec![be_local(11)]), t0, drain);
        assert!(
            !ops.iter().any(|o| matches!(o, Op::DelLocal { .. })),
            "{ops:?}"
        );
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::PutPort {
                count: 1,
                slot: 1,
                ..
            }
        )));
        assert_eq!(t.draining_count(), 1);
        assert!(t.links_in_use().contains("mi-x"));
        // Back before the drain ends: serving again, nothing deleted.
        let (ops, _) = t.update(&want(vec![be_local(11), be_local(12)]), t0, drain);
        assert!(!ops.iter().any(|o| matches!(o, Op::DelLocal { .. })));
        assert_eq!(t.draining_count(), 0);
        // Leaves again; removed once the drain has passed.
        t.update(&want(vec![be_local(11)]), t0, drain);
        let (ops, _) = t.update(&want(vec![be_local(11)]), t0 + drain, drain);
        assert_eq!(
            ops,
            vec![Op::DelLocal {
                key: (IPPROTO_TCP, 8080, Ipv4Addr::new(172, 30, 0, 12), 80)
            }]
        );
    }

    #[test]
    fn a_port_that_leaves_is_removed_before_its_backends() {
        let mut t = IngressTable::default();
        let now = Instant::now();
        t.update(&want(vec![be_remote(12, 2)]), now, Duration::ZERO);
        let mut w = want(vec![]);
        w.ports.clear();
        w.nodes.clear();
        let (ops, _) = t.update(&w, now, Duration::ZERO);
        let port = pos(&ops, |o| matches!(o, Op::DelPort { .. }));
        let backend = pos(&ops, |o| matches!(o, Op::DelBackend { .. }));
        assert!(port < backend, "{ops:?}");
        assert!(ops.contains(&Op::DelNode(Ipv4Addr::new(10, 88, 0, 2))));
        assert_eq!(t.port_count(), 0);
    }
}
