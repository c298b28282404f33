//! The names the resolver answers for, keyed by network: built once per cluster change and
//! swapped in whole.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire;

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A name or network the table cannot hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// The name is not a DNS name.
    #[error(
        "name `{name}` on network `{network}` is not a DNS name: {problem}; use labels of 1 to 63 \
         printable characters (letters, digits, `-`, `_`) separated by dots"
    )]
    BadName {
        /// The network the name was added to.
        network: String,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The network ID is empty.
    #[error("network ID for name `{name}` is empty; pass the ID of the network the name is on")]
    EmptyNetwork {
        /// The name being added.
        name: String,
    },
}

/// The addresses one name has on one network.
#[derive(Debug)]
pub(crate) struct Binding {
    pub(crate) network: u32,
    pub(crate) v4: Box<[Ipv4Addr]>,
    pub(crate) v6: Box<[Ipv6Addr]>,
}

/// Names visible to tasks, keyed by network ID: built once per cluster change with
/// [`TableBuilder`]; lookups by (network, lowercase name) cost one hash of the name.
#[derive(Debug)]
pub struct Table {
    generation: u64,
    networks: HashMap<Box<str>, u32>,
    names: HashMap<Box<[u8]>, Box<[Binding]>>,
}

impl Default for Table {
    fn default() -> Self {
        TableBuilder::new().build()
    }
}

impl Table {
    /// A table with no names.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A builder for a new table.
    pub fn builder() -> TableBuilder {
        TableBuilder::new()
    }

    /// Number of distinct names (over all networks).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// Number of networks that have at least one name.
    pub fn network_count(&self) -> usize {
        self.networks.len()
    }

    /// A number no other table built by this process has.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Indices of those of `networks` this table knows.
    pub(crate) fn view<S: AsRef<str>>(&self, networks: &[S]) -> Vec<u32> {
        let mut view: Vec<u32> = networks
            .iter()
            .filter_map(|n| self.networks.get(n.as_ref()).copied())
            .collect();
        view.sort_unstable();
        view.dedup();
        view
    }

    /// The bindings of a lowercase wire-format name, on every network.
    pub(crate) fn lookup(&self, wire_lower: &[u8]) -> Option<&[Binding]> {
        self.names.get(wire_lower).map(|b| &b[..])
    }

    /// The addresses `name` has on `networks`, or `None` if the name is on none of them.
    pub fn lookup_ips<S: AsRef<str>>(&self, networks: &[S], name: &str) -> Option<Vec<IpAddr>> {
        let wire = wire::name_to_wire(name).ok()?;
        let view = self.view(networks);
        let mut found = false;
        let mut ips = Vec::new();
        for b in self
            .lookup(&wire)?
            .iter()
            .filter(|b| view.contains(&b.network))
        {
            found = true;
            ips.extend(b.v4.iter().map(|&ip| IpAddr::V4(ip)));
            ips.extend(b.v6.iter().map(|&ip| IpAddr::V6(ip)));
        }
        found.then_some(ips)
    }
}

#[derive(Default)]
struct PendingBinding {
    network: u32,
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

/// Collects names for a [`Table`]. Names are case-insensitive, a trailing dot is optional.
#[derive(Default)]
pub struct TableBuilder {
    networks: HashMap<Box<str>, u32>,
    names: HashMap<Vec<u8>, Vec<PendingBinding>>,
}

impl TableBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn binding(&mut self, network: &str, name: &str) -> Result<&mut PendingBinding, TableError> {
        if network.is_empty() {
            return Err(TableError::EmptyNetwork { name: name.into() });
        }
        let wire = wire::name_to_wire(name).map_err(|problem| TableError::BadName {
            network: network.into(),
            name: name.into(),
            problem,
        })?;
        let next = self.networks.len() as u32;
        let net = *self.networks.entry(network.into()).or_insert(next);
        let bindings = self.names.entry(wire).or_default();
        let at = match bindings.iter().position(|b| b.network == net) {
            Some(at) => at,
            None => {
                bindings.push(PendingBinding {
                    network: net,
                    ..PendingBinding::default()
                });
                bindings.len() - 1
            }
        };
        Ok(&mut bindings[at])
    }

    /// Declares that `name` exists on `network`, with no address yet: a query for it gets
    /// NOERROR with no records rather than NXDOMAIN (e.g. `tasks.NAME` of a service with no
    /// running task).
    pub fn add_name(&mut self, network: &str, name: &str) -> Result<&mut Self, TableError> {
        self.binding(network, name)?;
        Ok(self)
    }

    /// Adds an address to `name` on `network` (A for IPv4, AAAA for IPv6).
    pub fn add_ip(
        &mut self,
        network: &str,
        name: &str,
        ip: IpAddr,
    ) -> Result<&mut Self, TableError> {
        let b = self.binding(network, name)?;
        match ip {
            IpAddr::V4(ip) => b.v4.push(ip),
            IpAddr::V6(ip) => b.v6.push(ip),
        }
        Ok(self)
    }

    /// Adds the names of one service (or one network alias of it) on `network`: `name` answers
    /// the VIP, or with no VIP (endpoint mode dnsrr) the task addresses; `tasks.name` answers
    /// the task addresses. Pass only the tasks that are running and healthy.
    pub fn add_service(
        &mut self,
        network: &str,
        name: &str,
        vip: Option<IpAddr>,
        task_ips: &[IpAddr],
    ) -> Result<&mut Self, TableError> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let tasks = format!("tasks.{name}");
        self.add_name(network, name)?.add_name(network, &tasks)?;
        match vip {
            Some(vip) => {
                self.add_ip(network, name, vip)?;
            }
            None => {
                for &ip in task_ips {
                    self.add_ip(network, name, ip)?;
                }
            }
        }
        for &ip in task_ips {
            self.add_ip(network, &tasks, ip)?;
        }
        Ok(self)
    }

    /// The table. Duplicate addresses of a name on a network are kept once.
    pub fn build(self) -> Table {
        let names = self
            .names
            .into_iter()
            .map(|(name, bindings)| {
                let bindings: Box<[Binding]> = bindings
                    .into_iter()
                    .map(|mut b| {
                        b.v4.sort_unstable();
                        b.v4.dedup();
                        b.v6.sort_unstable();
                        b.v6.dedup();
                        Binding {
                            network: b.network,
                            v4: b.v4.into_boxed_slice(),
                            v6: b.v6.into_boxed_slice(),
                        }
                    })
                    .collect();
                (name.into_boxed_slice(), bindings)
            })
            .collect();
        Table {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            networks: self.networks,
            names,
        }
    }
}
