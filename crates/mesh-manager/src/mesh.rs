//! The routing mesh's part of the replicated state (pure): the `ingress` network, the
//! nodes' load-balancer addresses, and what each node's mesh serves.
//!
//! Like Swarm, the cluster makes one `ingress` overlay network the first time a service
//! publishes a port in ingress mode. Every node gets a load-balancer address on it, and
//! every task of a service with ingress ports an interface on it: a connection to a
//! published port on any node is relayed (or, on the eBPF path, delivered) to a task over
//! that network. A node also gets a load-balancer address on each network it runs tasks of:
//! the source of the VIP connections its userspace path opens for those tasks.

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::{Endpoint, EndpointOwner, Network, NetworkSpec, PublishMode, Service, Task};

use crate::ipam;
use crate::rpc;
use crate::state::{ClusterState, DEFAULT_MTU, RejectKind, Rejected};

/// Name of the routing mesh's network.
pub const INGRESS_NETWORK: &str = "ingress";

/// ID of a node's load-balancer endpoint on a network (deterministic).
pub fn lb_endpoint_id(network_id: &str, node_id: &str) -> String {
    let net: String = network_id.chars().take(12).collect();
    format!("lb-{net}-{node_id}")
}

/// Whether a service publishes a port in ingress mode.
pub fn publishes_ingress(svc: &Service) -> bool {
    svc.ports
        .iter()
        .chain(svc.spec.endpoint_spec.ports.iter())
        .any(|p| p.publish_mode == PublishMode::Ingress)
}

impl ClusterState {
    /// The ingress network, if the cluster has made it.
    pub fn ingress_network(&self) -> Option<&Network> {
        self.networks.values().find(|n| n.spec.ingress)
    }

    /// Whether task `t` takes part in the routing mesh or in DNS: it has networks, or its
    /// service publishes ports. Its serving state then matters to every node's map.
    pub(crate) fn task_in_mesh(&self, t: &Task) -> bool {
        !t.networks.is_empty()
            || self
                .services
                .get(&t.service_id)
                .is_some_and(|s| !s.ports.is_empty())
    }

    /// Makes the ingress network (and every node's load-balancer address on it) unless it
    /// exists. Its ID is derived from the Raft index, so every manager makes the same one.
    pub(crate) fn ensure_ingress_network(
        &mut self,
        index: u64,
        now: u64,
    ) -> Result<String, Rejected> {
        if let Some(n) = self.ingress_network() {
            return Ok(n.id.clone());
        }
        let used: Vec<_> = self.networks.values().map(|n| n.subnet).collect();
        let (pools, prefix) = self.address_pools();
        let Some(subnet) = ipam::allocate_subnet(&pools, prefix, &used) else {
            return Err(Rejected {
                kind: RejectKind::FailedPrecondition,
                message: "the default address pools have no room for the ingress network; remove unused networks or publish no ports in ingress mode (mode=host)".into(),
            });
        };
        let id = format!("ingress{index:018x}");
        let name = if self
            .networks
            .values()
            .any(|n| n.spec.name == INGRESS_NETWORK)
        {
            format!("{INGRESS_NETWORK}-{index}")
        } else {
            INGRESS_NETWORK.to_string()
        };
        self.networks.insert(
            id.clone(),
            Network {
                id: id.clone(),
                version: index,
                created_at: now,
                updated_at: now,
                spec: NetworkSpec {
                    name,
                    driver: mesh_api::network::DRIVER_OVERLAY.to_string(),
                    subnet: None,
                    gateway: None,
                    attachable: false,
                    allow_overlap: false,
                    labels: Default::default(),
                    ingress: true,
                },
                subnet,
                gateway: ipam::default_gateway(&subnet),
                mtu: DEFAULT_MTU,
            },
        );
        let nodes: Vec<String> = self.nodes.keys().cloned().collect();
        for node in nodes {
            if let Err(e) = self.ensure_lb_endpoint(&id, &node, now) {
                tracing::warn!(node = %node, error = %e, "no load-balancer address on the ingress network");
            }
        }
        self.network_version += 1;
        Ok(id)
    }

    /// Gives `node_id` its load-balancer address on `network_id`, once.
    pub(crate) fn ensure_lb_endpoint(
        &mut self,
        network_id: &str,
        node_id: &str,
        now: u64,
    ) -> Result<(), String> {
        let id = lb_endpoint_id(network_id, node_id);
        if self.endpoints.contains_key(&id) {
            return Ok(());
        }
        let Some(net) = self.networks.get(network_id) else {
            return Err(format!("network {network_id} no longer exists"));
        };
        let used = self.used_ips(network_id);
        let Some(ip) = ipam::allocate_ip(&net.subnet, net.gateway, &used) else {
            return Err(format!(
                "network {} has no free address left in {} for node {node_id}'s load balancer",
                net.spec.name, net.subnet
            ));
        };
        self.endpoints.insert(
            id.clone(),
            Endpoint {
                id,
                network_id: network_id.to_string(),
                node_id: node_id.to_string(),
                ip,
                owner: EndpointOwner::LoadBalancer,
                created_at: now,
            },
        );
        self.network_version += 1;
        Ok(())
    }

    /// Releases the load-balancer addresses of nodes that no longer run anything on a
    /// network (the ingress network keeps every node's).
    pub(crate) fn release_idle_lb_endpoints(&mut self) {
        let busy: BTreeSet<(String, String)> = self
            .endpoints
            .values()
            .filter(|e| e.owner != EndpointOwner::LoadBalancer)
            .map(|e| (e.network_id.clone(), e.node_id.clone()))
            .collect();
        let ingress = self.ingress_network().map(|n| n.id.clone());
        let before = self.endpoints.len();
        self.endpoints.retain(|_, e| {
            e.owner != EndpointOwner::LoadBalancer
                || Some(&e.network_id) == ingress.as_ref()
                || busy.contains(&(e.network_id.clone(), e.node_id.clone()))
        });
        if self.endpoints.len() != before {
            self.network_version += 1;
        }
    }

    /// Every service with published ports, with its serving tasks: what the routing mesh of
    /// every node serves (ingress ports everywhere, host-mode ports on the tasks' nodes).
    pub fn mesh_services(&self) -> Vec<rpc::MeshService> {
        let ingress = self.ingress_network().map(|n| n.id.as_str());
        // One pass over the tasks; `tasks` is ordered by ID, so every node gets the same
        // rotation order.
        let mut backends: BTreeMap<&str, Vec<rpc::MeshBackend>> = self
            .services
            .values()
            .filter(|s| !s.ports.is_empty())
            .map(|s| (s.id.as_str(), Vec::new()))
            .collect();
        for t in self.tasks.values().filter(|t| t.is_serving()) {
            let (Some(list), Some(node)) = (
                backends.get_mut(t.service_id.as_str()),
                self.nodes.get(&t.node_id),
            ) else {
                continue;
            };
            list.push(rpc::MeshBackend {
                task_id: t.id.clone(),
                node_id: t.node_id.clone(),
                node_addr: node.status.addr.clone(),
                ingress_ip: t
                    .networks
                    .iter()
                    .find(|a| Some(a.network_id.as_str()) == ingress)
                    .map(|a| a.ip),
            });
        }
        backends
            .into_iter()
            .filter_map(|(id, backends)| {
                let svc = self.services.get(id)?;
                Some(rpc::MeshService {
                    service_id: svc.id.clone(),
                    name: svc.spec.name.clone(),
                    ports: svc.ports.clone(),
                    backends,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::service::parse_port;
    use mesh_api::{
        ContainerSpec, NodeRole, ServiceSpec, TaskSpec, TaskState, TaskStatus, TaskStatusUpdate,
    };

    use super::*;
    use crate::state::Command;
    use crate::state::tests::{cluster, node};
    use crate::tasks::{TaskChange, TaskPlan};

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(
            1,
            Command::CreateCluster {
                cluster: Box::new(cluster()),
                node: Box::new(node("n1", "host1", NodeRole::Manager)),
            },
        )
        .unwrap();
        s.apply(
            2,
            Command::CreateNode {
                node: Box::new(node("n2", "host2", NodeRole::Worker)),
            },
        )
        .unwrap();
        s
    }

    fn published(name: &str, port: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            task_template: TaskSpec {
                container: ContainerSpec {
                    image: "meshd-test".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            endpoint_spec: mesh_api::EndpointSpec {
                ports: vec![parse_port(port).unwrap()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn lbs(s: &ClusterState, net: &str) -> Vec<String> {
        s.endpoints
            .values()
            .filter(|e| e.network_id == net && e.owner == EndpointOwner::LoadBalancer)
            .map(|e| e.node_id.clone())
            .collect()
    }

    #[test]
    fn the_first_published_port_makes_the_ingress_network() {
        let mut s = state();
        // Host mode needs no ingress network.
        s.apply(
            3,
            Command::CreateService {
                id: "h1".into(),
                spec: Box::new(published("edge", "mode=host,published=80,target=80")),
                now: 3,
            },
        )
        .unwrap();
        assert!(s.ingress_network().is_none());
        let v = s.network_version;
        s.apply(
            4,
            Command::CreateService {
                id: "s1".into(),
                spec: Box::new(published("web", "8080:80")),
                now: 4,
            },
        )
        .unwrap();
        let ingress = s.ingress_network().unwrap().clone();
        assert_eq!(ingress.spec.name, INGRESS_NETWORK);
        assert!(!ingress.spec.attachable);
        assert!(s.network_version > v);
        // Every node has its load-balancer address there; a node that joins later too.
        assert_eq!(lbs(&s, &ingress.id), ["n1", "n2"]);
        s.apply(
            5,
            Command::CreateNode {
                node: Box::new(node("n3", "host3", NodeRole::Worker)),
            },
        )
        .unwrap();
        assert_eq!(lbs(&s, &ingress.id), ["n1", "n2", "n3"]);

        // A task of the service gets an interface on the ingress network when assigned...
        let mut t = mesh_api::Task {
            id: "t1".into(),
            version: 0,
            created_at: 0,
            updated_at: 0,
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: String::new(),
            spec: published("web", "8080:80").task_template,
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            networks: vec![],
            host_ports: vec![],
        };
        t.status.state = TaskState::Pending;
        s.apply(
            6,
            Command::ApplyPlan {
                plan: Box::new(TaskPlan {
                    create: vec![t],
                    tasks: vec![TaskChange::Assign {
                        task_id: "t1".into(),
                        node_id: "n2".into(),
                    }],
                    ..Default::default()
                }),
                now: 6,
            },
        )
        .unwrap();
        let t = s.tasks["t1"].clone();
        assert_eq!(t.networks.len(), 1);
        assert_eq!(t.networks[0].network_id, ingress.id);
        assert_eq!(t.networks[0].ifname, "eth0");
        // ... and is a backend of every node's mesh once it runs.
        assert!(s.mesh_services().iter().all(|m| m.backends.is_empty()));
        let v = s.network_version;
        s.apply(
            7,
            Command::UpdateTaskStatus {
                node_id: "n2".into(),
                updates: vec![TaskStatusUpdate {
                    task_id: "t1".into(),
                    status: TaskStatus {
                        state: TaskState::Running,
                        timestamp: 7,
                        ..Default::default()
                    },
                }],
            },
        )
        .unwrap();
        assert!(s.network_version > v, "serving changes reach the nodes");
        let mesh = s.mesh_services();
        let web = mesh.iter().find(|m| m.name == "web").unwrap();
        assert_eq!(web.ports[0].published_port, 8080);
        assert_eq!(web.backends.len(), 1);
        assert_eq!(web.backends[0].node_id, "n2");
        assert_eq!(web.backends[0].ingress_ip, Some(t.networks[0].ip));
        // Nothing resolves on the ingress network.
        assert!(crate::manager::dns_entries(&s, &ingress.id).is_empty());

        // The ingress network stays while a service publishes; users can't make one.
        let e = s
            .apply(
                8,
                Command::RemoveNetwork {
                    id: ingress.id.clone(),
                },
            )
            .unwrap_err();
        assert!(e.message.contains("web"), "{}", e.message);
        let e = s
            .apply(
                9,
                Command::CreateNetwork {
                    id: "x".into(),
                    spec: NetworkSpec {
                        name: "ingress".into(),
                        driver: "overlay".into(),
                        ..Default::default()
                    },
                    now: 9,
                },
            )
            .unwrap_err();
        assert!(e.message.contains("invalid NAME"), "{}", e.message);
    }
}
