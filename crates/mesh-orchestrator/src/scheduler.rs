//! The scheduler: places unassigned tasks on nodes.
//!
//! Filters, in the order a pending task's reason lists them: the node is ready and active
//! (not paused or drained); the task's placement constraints hold; the node did not reject
//! an earlier task of the same slot; the reservations of the tasks on the node plus this
//! one fit the node's CPUs and memory; fewer than `max_replicas` tasks of the service run
//! there; no other task on the node publishes the same host-mode port.
//!
//! Among the nodes that pass, the task goes to the node with the fewest active tasks of its
//! service, then the fewest active tasks overall, then the smallest node ID. A batch is
//! placed one task at a time, each placement counting for the next.
//!
//! Tasks of one service with the same spec are placed together: the candidate nodes are
//! filtered once and kept in a heap ordered by that spread key, so a batch of `T` tasks over
//! `N` nodes costs about `N + T log N`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use mesh_api::constraint::{Constraint, parse_all};
use mesh_api::{
    Availability, Node, NodeState, Protocol, PublishMode, ResourceAmounts, Service, Task, TaskSpec,
    TaskState,
};
use serde::{Deserialize, Serialize};

/// A host-mode published port: a node can't run two active tasks publishing the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port on the node.
    pub port: u16,
}

/// The host-mode ports a service's tasks publish, sorted.
pub fn service_host_ports(service: &Service) -> Vec<HostPort> {
    let mut ports: Vec<HostPort> = service
        .spec
        .endpoint_spec
        .ports
        .iter()
        .filter(|p| p.publish_mode == PublishMode::Host && p.published_port != 0)
        .map(|p| HostPort {
            protocol: p.protocol,
            port: p.published_port,
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// The host-mode ports an existing task holds: the ports in its `host_ports`, with the
/// protocol its service publishes them with (both protocols when that is unknown), or the
/// service's host-mode ports when the task lists none.
pub fn task_host_ports(task: &Task, service: Option<&Service>) -> Vec<HostPort> {
    let svc_ports = service.map(service_host_ports).unwrap_or_default();
    if task.host_ports.is_empty() {
        return svc_ports;
    }
    let mut out = Vec::new();
    for &port in &task.host_ports {
        let known: Vec<HostPort> = svc_ports
            .iter()
            .copied()
            .filter(|p| p.port == port)
            .collect();
        if known.is_empty() {
            out.push(HostPort {
                protocol: Protocol::Tcp,
                port,
            });
            out.push(HostPort {
                protocol: Protocol::Udp,
                port,
            });
        } else {
            out.extend(known);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// One task to place.
#[derive(Debug, Clone)]
pub struct Request<'r> {
    /// Its service.
    pub service_id: &'r str,
    /// Its spec (resources, constraints, max replicas per node).
    pub spec: &'r TaskSpec,
    /// Host-mode ports it publishes.
    pub host_ports: &'r [HostPort],
    /// The only node it may go to (a global service's task).
    pub node_id: Option<&'r str>,
    /// Nodes it must not go to (they rejected an earlier task of its slot).
    pub avoid: Vec<&'r str>,
}

/// Where a task goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// To this node.
    Assign {
        /// Node ID.
        node_id: String,
    },
    /// Nowhere yet.
    Pending {
        /// Why, e.g. `no suitable node (insufficient resources on 2 nodes)`.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Avail {
    Ok,
    NotReady,
    Paused,
    Drained,
}

#[derive(Debug)]
struct NodeInfo<'a> {
    node: &'a Node,
    avail: Avail,
    cpu_used: u64,
    mem_used: u64,
    /// Active tasks (desired running, observed at most running) of every service.
    active: u32,
    ports: Vec<HostPort>,
}

/// What a group of identical requests needs from a node.
struct Need<'r> {
    res: ResourceAmounts,
    max_replicas: u64,
    ports: &'r [HostPort],
}

/// Places tasks on nodes, keeping the per-node accounting between batches.
#[derive(Debug)]
pub struct Scheduler<'a> {
    nodes: Vec<NodeInfo<'a>>,
    index: HashMap<&'a str, u32>,
    /// Service ID → node index → active tasks of the service there.
    per_service: HashMap<String, HashMap<u32, u32>>,
}

impl<'a> Scheduler<'a> {
    /// A scheduler over `nodes` with nothing running yet: add the tasks that already hold
    /// resources with [`Scheduler::add_task`].
    pub fn new(nodes: &'a [Node]) -> Self {
        let mut sorted: Vec<&'a Node> = nodes.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.dedup_by(|a, b| a.id == b.id);
        let nodes: Vec<NodeInfo<'a>> = sorted
            .into_iter()
            .map(|node| NodeInfo {
                node,
                avail: availability(node),
                cpu_used: 0,
                mem_used: 0,
                active: 0,
                ports: Vec::new(),
            })
            .collect();
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node.id.as_str(), i as u32))
            .collect();
        Self {
            nodes,
            index,
            per_service: HashMap::new(),
        }
    }

    /// Accounts a task that holds resources on `node_id`: its reservations and host ports,
    /// and, when `active` (desired running), its weight in the spread. Unknown nodes are
    /// ignored.
    pub fn add_task(
        &mut self,
        node_id: &str,
        service_id: &str,
        reservations: ResourceAmounts,
        host_ports: &[HostPort],
        active: bool,
    ) {
        let Some(&ni) = self.index.get(node_id) else {
            return;
        };
        let n = &mut self.nodes[ni as usize];
        n.cpu_used = n.cpu_used.saturating_add(reservations.nano_cpus);
        n.mem_used = n.mem_used.saturating_add(reservations.memory_bytes);
        n.ports.extend_from_slice(host_ports);
        if active {
            n.active += 1;
            if !service_id.is_empty() {
                let per_node = match self.per_service.get_mut(service_id) {
                    Some(m) => m,
                    None => self.per_service.entry(service_id.to_string()).or_default(),
                };
                *per_node.entry(ni).or_default() += 1;
            }
        }
    }

    /// Accounts every task of `tasks` that is on a node and not finished (observed from
    /// `assigned` to `running`).
    pub fn add_tasks(&mut self, services: &[Service], tasks: &[Task]) {
        let by_id: HashMap<&str, &Service> = services.iter().map(|s| (s.id.as_str(), s)).collect();
        for t in tasks {
            if t.node_id.is_empty()
                || t.status.state < TaskState::Assigned
                || t.status.state > TaskState::Running
            {
                continue;
            }
            let svc = by_id.get(t.service_id.as_str()).copied();
            let ports = task_host_ports(t, svc);
            self.add_task(
                &t.node_id,
                &t.service_id,
                t.spec.resources.reservations,
                &ports,
                t.desired_state == TaskState::Running,
            );
        }
    }

    /// Places `requests`, in order (tasks of one service and spec together), and returns one
    /// decision per request. Placed tasks count for the next calls.
    pub fn schedule(&mut self, requests: &[Request<'_>]) -> Vec<Decision> {
        let mut out: Vec<Option<Decision>> = vec![None; requests.len()];
        // Group requests of one service with the same spec and ports.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
        for (ri, r) in requests.iter().enumerate() {
            let candidates = by_service.entry(r.service_id).or_default();
            let found = candidates.iter().copied().find(|&g| {
                let rep = &requests[groups[g][0]];
                (std::ptr::eq(rep.spec, r.spec) || rep.spec == r.spec)
                    && rep.host_ports == r.host_ports
            });
            match found {
                Some(g) => groups[g].push(ri),
                None => {
                    candidates.push(groups.len());
                    groups.push(vec![ri]);
                }
            }
        }
        let mut unplaced: Vec<(usize, Vec<usize>)> = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let failed = self.place_group(requests, g, &mut out);
            if !failed.is_empty() {
                unplaced.push((gi, failed));
            }
        }
        // Reasons are given against the state after the whole batch, which is the state
        // the next call starts from: the same request gets the same reason then.
        for (gi, failed) in unplaced {
            self.explain_group(requests, &groups[gi], &failed, &mut out);
        }
        out.into_iter()
            .map(|d| {
                d.unwrap_or_else(|| Decision::Pending {
                    reason: "not scheduled".to_string(),
                })
            })
            .collect()
    }

    /// Places a group of identical requests; returns those that fit nowhere.
    fn place_group(
        &mut self,
        requests: &[Request<'_>],
        group: &[usize],
        out: &mut [Option<Decision>],
    ) -> Vec<usize> {
        let mut failed = Vec::new();
        let Some(&first) = group.first() else {
            return failed;
        };
        let rep = &requests[first];
        let constraints = match parse_all(&rep.spec.placement.constraints) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("invalid placement constraint: {e}");
                for &ri in group {
                    out[ri] = Some(Decision::Pending {
                        reason: reason.clone(),
                    });
                }
                return failed;
            }
        };
        let need = Need {
            res: rep.spec.resources.reservations,
            max_replicas: rep.spec.placement.max_replicas,
            ports: rep.host_ports,
        };
        // Dense per-node counts of this service, written back at the end.
        let mut counts = vec![0u32; self.nodes.len()];
        if let Some(m) = self.per_service.get(rep.service_id) {
            for (&ni, &c) in m {
                counts[ni as usize] = c;
            }
        }
        let mut placed_on: Vec<u32> = Vec::new();
        let mut heap: Option<BinaryHeap<Reverse<(u32, u32, u32)>>> = None;
        for &ri in group {
            let r = &requests[ri];
            if let Some(node_id) = r.node_id {
                match self.index.get(node_id).copied() {
                    Some(ni) if self.fits_fixed(ni, &constraints, &need, counts[ni as usize]) => {
                        self.take(ni, &need);
                        counts[ni as usize] += 1;
                        placed_on.push(ni);
                        out[ri] = Some(Decision::Assign {
                            node_id: node_id.to_string(),
                        });
                    }
                    _ => failed.push(ri),
                }
                continue;
            }
            let heap = heap.get_or_insert_with(|| {
                let mut h = BinaryHeap::with_capacity(self.nodes.len());
                for (ni, n) in self.nodes.iter().enumerate() {
                    let ni = ni as u32;
                    if n.avail == Avail::Ok
                        && constraints.iter().all(|c| c.matches(n.node))
                        && self.fits(ni, &need, counts[ni as usize])
                    {
                        h.push(Reverse((counts[ni as usize], n.active, ni)));
                    }
                }
                h
            });
            let avoid: Vec<u32> = r
                .avoid
                .iter()
                .filter_map(|id| self.index.get(id).copied())
                .collect();
            let mut aside = Vec::new();
            let chosen = loop {
                let Some(Reverse((c, a, ni))) = heap.pop() else {
                    break None;
                };
                let (cur_c, cur_a) = (counts[ni as usize], self.nodes[ni as usize].active);
                if (c, a) != (cur_c, cur_a) {
                    heap.push(Reverse((cur_c, cur_a, ni)));
                    continue;
                }
                // Within a group, a node that stops fitting never fits again: drop it.
                if !self.fits(ni, &need, cur_c) {
                    continue;
                }
                if avoid.contains(&ni) {
                    aside.push(Reverse((c, a, ni)));
                    continue;
                }
                break Some(ni);
            };
            heap.extend(aside);
            match chosen {
                Some(ni) => {
                    self.take(ni, &need);
                    counts[ni as usize] += 1;
                    placed_on.push(ni);
                    heap.push(Reverse((
                        counts[ni as usize],
                        self.nodes[ni as usize].active,
                        ni,
                    )));
                    out[ri] = Some(Decision::Assign {
                        node_id: self.nodes[ni as usize].node.id.clone(),
                    });
                }
                None => failed.push(ri),
            }
        }
        if !placed_on.is_empty() {
            let m = self
                .per_service
                .entry(rep.service_id.to_string())
                .or_default();
            for ni in placed_on {
                m.insert(ni, counts[ni as usize]);
            }
        }
        failed
    }

    fn fits_fixed(&self, ni: u32, constraints: &[Constraint], need: &Need<'_>, count: u32) -> bool {
        let n = &self.nodes[ni as usize];
        n.avail == Avail::Ok
            && constraints.iter().all(|c| c.matches(n.node))
            && self.fits(ni, need, count)
    }

    /// The pending reason of each `failed` request of `group`.
    fn explain_group(
        &self,
        requests: &[Request<'_>],
        group: &[usize],
        failed: &[usize],
        out: &mut [Option<Decision>],
    ) {
        let Some(&first) = group.first() else {
            return;
        };
        let rep = &requests[first];
        let constraints = parse_all(&rep.spec.placement.constraints).unwrap_or_default();
        let need = Need {
            res: rep.spec.resources.reservations,
            max_replicas: rep.spec.placement.max_replicas,
            ports: rep.host_ports,
        };
        let mut counts = vec![0u32; self.nodes.len()];
        if let Some(m) = self.per_service.get(rep.service_id) {
            for (&ni, &c) in m {
                counts[ni as usize] = c;
            }
        }
        let mut cached: Option<String> = None;
        for &ri in failed {
            let r = &requests[ri];
            let reason = if let Some(node_id) = r.node_id {
                match self.index.get(node_id) {
                    None => format!("no suitable node (node {node_id} is not in the cluster)"),
                    Some(&ni) => {
                        let mut why = Why::default();
                        self.classify(ni, &constraints, &need, counts[ni as usize], &[], &mut why);
                        why.reason()
                    }
                }
            } else if r.avoid.is_empty() {
                cached
                    .get_or_insert_with(|| self.explain(&constraints, &need, &counts, &[]))
                    .clone()
            } else {
                let avoid: Vec<u32> = r
                    .avoid
                    .iter()
                    .filter_map(|id| self.index.get(id).copied())
                    .collect();
                self.explain(&constraints, &need, &counts, &avoid)
            };
            out[ri] = Some(Decision::Pending { reason });
        }
    }

    fn fits(&self, ni: u32, need: &Need<'_>, count: u32) -> bool {
        let n = &self.nodes[ni as usize];
        let d = &n.node.description;
        (need.res.nano_cpus == 0 || n.cpu_used.saturating_add(need.res.nano_cpus) <= d.nano_cpus)
            && (need.res.memory_bytes == 0
                || n.mem_used.saturating_add(need.res.memory_bytes) <= d.memory_bytes)
            && (need.max_replicas == 0 || u64::from(count) < need.max_replicas)
            && need.ports.iter().all(|p| !n.ports.contains(p))
    }

    fn take(&mut self, ni: u32, need: &Need<'_>) {
        let n = &mut self.nodes[ni as usize];
        n.cpu_used = n.cpu_used.saturating_add(need.res.nano_cpus);
        n.mem_used = n.mem_used.saturating_add(need.res.memory_bytes);
        n.active += 1;
        n.ports.extend_from_slice(need.ports);
    }

    fn explain(
        &self,
        constraints: &[Constraint],
        need: &Need<'_>,
        counts: &[u32],
        avoid: &[u32],
    ) -> String {
        let mut why = Why::default();
        for ni in 0..self.nodes.len() as u32 {
            self.classify(ni, constraints, need, counts[ni as usize], avoid, &mut why);
        }
        why.reason()
    }

    /// Counts the first filter node `ni` fails.
    fn classify(
        &self,
        ni: u32,
        constraints: &[Constraint],
        need: &Need<'_>,
        count: u32,
        avoid: &[u32],
        why: &mut Why,
    ) {
        let n = &self.nodes[ni as usize];
        let d = &n.node.description;
        why.nodes += 1;
        let slot = match n.avail {
            Avail::NotReady => &mut why.not_ready,
            Avail::Paused => &mut why.paused,
            Avail::Drained => &mut why.drained,
            Avail::Ok => {
                if !constraints.iter().all(|c| c.matches(n.node)) {
                    &mut why.constraints
                } else if avoid.contains(&ni) {
                    &mut why.rejected
                } else if (need.res.nano_cpus != 0
                    && n.cpu_used.saturating_add(need.res.nano_cpus) > d.nano_cpus)
                    || (need.res.memory_bytes != 0
                        && n.mem_used.saturating_add(need.res.memory_bytes) > d.memory_bytes)
                {
                    &mut why.resources
                } else if need.max_replicas != 0 && u64::from(count) >= need.max_replicas {
                    &mut why.max_replicas
                } else if need.ports.iter().any(|p| n.ports.contains(p)) {
                    &mut why.ports
                } else {
                    &mut why.other
                }
            }
        };
        *slot += 1;
    }
}

fn availability(node: &Node) -> Avail {
    if node.status.state != NodeState::Ready {
        return Avail::NotReady;
    }
    match node.spec.availability {
        Availability::Active => Avail::Ok,
        Availability::Pause => Avail::Paused,
        Availability::Drain => Avail::Drained,
    }
}

/// Why no node fits: how many nodes each filter turned away.
#[derive(Debug, Default)]
struct Why {
    nodes: u32,
    not_ready: u32,
    paused: u32,
    drained: u32,
    constraints: u32,
    rejected: u32,
    resources: u32,
    max_replicas: u32,
    ports: u32,
    other: u32,
}

impl Why {
    fn reason(&self) -> String {
        if self.nodes == 0 {
            return "no suitable node (no nodes in the cluster)".to_string();
        }
        fn nodes(n: u32) -> String {
            if n == 1 {
                "1 node".to_string()
            } else {
                format!("{n} nodes")
            }
        }
        let mut parts = Vec::new();
        for (n, text) in [
            (self.not_ready, "not ready"),
            (self.paused, "paused"),
            (self.drained, "drained"),
        ] {
            if n > 0 {
                parts.push(format!("{} {text}", nodes(n)));
            }
        }
        for (n, text) in [
            (self.constraints, "scheduling constraints not satisfied on"),
            (self.rejected, "task of this slot rejected earlier on"),
            (self.resources, "insufficient resources on"),
            (self.max_replicas, "max replicas per node reached on"),
            (self.ports, "host-mode port already in use on"),
            (self.other, "no room on"),
        ] {
            if n > 0 {
                parts.push(format!("{text} {}", nodes(n)));
            }
        }
        format!("no suitable node ({})", parts.join("; "))
    }
}

/// Places `batch` (tasks of `services`, unassigned or with a fixed `node_id`) on `nodes`,
/// given the `existing` tasks that already hold resources. One decision per task of `batch`.
pub fn schedule(
    nodes: &[Node],
    services: &[Service],
    existing: &[Task],
    batch: &[Task],
) -> Vec<Decision> {
    let mut s = Scheduler::new(nodes);
    s.add_tasks(services, existing);
    let by_id: HashMap<&str, &Service> = services.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut ports: HashMap<&str, Vec<HostPort>> = HashMap::new();
    for t in batch {
        ports.entry(t.service_id.as_str()).or_insert_with(|| {
            by_id
                .get(t.service_id.as_str())
                .map(|s| service_host_ports(s))
                .unwrap_or_default()
        });
    }
    let requests: Vec<Request<'_>> = batch
        .iter()
        .map(|t| Request {
            service_id: &t.service_id,
            spec: &t.spec,
            host_ports: ports
                .get(t.service_id.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            node_id: (!t.node_id.is_empty()).then_some(t.node_id.as_str()),
            avoid: Vec::new(),
        })
        .collect();
    s.schedule(&requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_each_filter_once_with_counts() {
        let w = Why {
            nodes: 7,
            not_ready: 1,
            paused: 0,
            drained: 2,
            constraints: 3,
            resources: 1,
            ..Default::default()
        };
        assert_eq!(
            w.reason(),
            "no suitable node (1 node not ready; 2 nodes drained; \
             scheduling constraints not satisfied on 3 nodes; insufficient resources on 1 node)"
        );
        assert_eq!(
            Why::default().reason(),
            "no suitable node (no nodes in the cluster)"
        );
    }
}
