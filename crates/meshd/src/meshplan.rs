//! From the managers' network map to this host's routing-mesh plan (pure).
//!
//! - Every port a service publishes in ingress mode is served here, whatever runs here:
//!   backends are the service's serving tasks on the ingress network, reached from this
//!   host's ingress sandbox with this host's load-balancer address as source.
//! - A host-mode port is served only where a task of the service runs, by that task.
//! - Every network this host has a load-balancer address on gets its services' VIPs in its
//!   sandbox, for the tasks of this host on that network (the ingress network has none, but
//!   its sandbox gets the load-balancer address all the same).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use mesh_api::{EndpointOwner, Protocol, PublishMode};
use mesh_ingress::{Backend, Egress, Listener, MeshPlan, Proto, VipSandbox, VipService};
use mesh_manager::rpc::{DnsEntry, NetworkMap};

/// Builds this host's mesh plan. `sandbox` names a network's sandbox namespace path,
/// `task_netns` a task's namespace path.
pub fn plan(
    node_id: &str,
    map: &NetworkMap,
    sandbox: impl Fn(&str) -> PathBuf,
    task_netns: impl Fn(&str) -> PathBuf,
    netns_exists: impl Fn(&Path) -> bool,
) -> MeshPlan {
    let mut out = MeshPlan::default();
    let my_lb = |network_id: &str| -> Option<Ipv4Addr> {
        map.networks
            .iter()
            .find(|a| a.network.id == network_id)?
            .endpoints
            .iter()
            .find(|e| e.node_id == node_id && e.owner == EndpointOwner::LoadBalancer)
            .map(|e| e.ip)
    };
    let ingress = map
        .networks
        .iter()
        .find(|a| a.network.spec.ingress)
        .and_then(|a| Some((a.network.id.as_str(), my_lb(&a.network.id)?)));

    let mut seen: BTreeSet<(Proto, u16)> = BTreeSet::new();
    for svc in &map.mesh {
        for port in &svc.ports {
            let proto = match port.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
            };
            if port.published_port == 0 || seen.contains(&(proto, port.published_port)) {
                continue;
            }
            let listener = match port.publish_mode {
                PublishMode::Ingress => {
                    let Some((net, lb)) = ingress else { continue };
                    let backends = svc
                        .backends
                        .iter()
                        .filter_map(|b| {
                            let ip = b.ingress_ip?;
                            let node = if b.node_id == node_id {
                                None
                            } else {
                                Some(b.node_addr.parse::<Ipv4Addr>().ok()?)
                            };
                            Some(Backend {
                                addr: SocketAddrV4::new(ip, port.target_port),
                                node,
                            })
                        })
                        .collect();
                    Listener {
                        proto,
                        port: port.published_port,
                        service: svc.name.clone(),
                        egress: Egress {
                            netns: sandbox(net),
                            source: Some(lb),
                        },
                        backends,
                        proxy_protocol: port.proxy_protocol,
                    }
                }
                PublishMode::Host => {
                    // The scheduler puts at most one task publishing a host port per node.
                    let Some(b) = svc.backends.iter().find(|b| b.node_id == node_id) else {
                        continue;
                    };
                    let netns = task_netns(&b.task_id);
                    if !netns_exists(&netns) {
                        continue;
                    }
                    Listener {
                        proto,
                        port: port.published_port,
                        service: svc.name.clone(),
                        egress: Egress {
                            netns,
                            source: None,
                        },
                        backends: vec![Backend {
                            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port.target_port),
                            node: None,
                        }],
                        proxy_protocol: port.proxy_protocol,
                    }
                }
            };
            seen.insert((proto, port.published_port));
            out.listeners.push(listener);
        }
    }

    // Every network this host has a load-balancer address on, the ingress network too: the
    // address must be local in its sandbox for the connections that come from it.
    for a in &map.networks {
        let Some(source) = my_lb(&a.network.id) else {
            continue;
        };
        let mut clients: Vec<PathBuf> = a
            .endpoints
            .iter()
            .filter(|e| e.node_id == node_id)
            .filter_map(|e| match &e.owner {
                EndpointOwner::Task { task_id, .. } => Some(task_netns(task_id)),
                EndpointOwner::Netns { path, .. } => Some(PathBuf::from(path)),
                EndpointOwner::LoadBalancer | EndpointOwner::External { .. } => None,
            })
            .filter(|p| netns_exists(p))
            .collect();
        clients.sort();
        clients.dedup();
        let mut services: Vec<VipService> = Vec::new();
        for e in &a.dns {
            if let DnsEntry::Service {
                name,
                vip: Some(vip),
                tasks,
            } = e
            {
                // Aliases repeat the service's VIP: the first name (the service's) is kept.
                if services.iter().any(|s| s.vip == *vip) {
                    continue;
                }
                services.push(VipService {
                    name: name.clone(),
                    vip: *vip,
                    backends: tasks.clone(),
                });
            }
        }
        out.vips.push(VipSandbox {
            network_id: a.network.id.clone(),
            netns: sandbox(&a.network.id),
            source,
            clients,
            services,
        });
    }
    out
}

/// Takes the tasks of nodes this node found dead (`dead`: their underlay addresses, from
/// [`mesh_ingress::peers`]) out of `plan`: published ports' remote backends and VIP backends
/// running there. When a port or a VIP would be left with no backend at all, it keeps them
/// all: then this node is more likely the one cut off, and the managers' view decides.
pub fn drop_dead(plan: &mut MeshPlan, map: &NetworkMap, dead: &BTreeSet<Ipv4Addr>) {
    if dead.is_empty() {
        return;
    }
    fn keep_live<T: Clone>(all: &mut Vec<T>, live: impl Fn(&T) -> bool) {
        let kept: Vec<T> = all.iter().filter(|b| live(b)).cloned().collect();
        if !kept.is_empty() {
            *all = kept;
        }
    }
    for l in &mut plan.listeners {
        keep_live(&mut l.backends, |b| {
            b.node.is_none_or(|n| !dead.contains(&n))
        });
    }
    for v in &mut plan.vips {
        let Some(a) = map.networks.iter().find(|a| a.network.id == v.network_id) else {
            continue;
        };
        let dead_nodes: BTreeSet<&str> = a
            .nodes
            .iter()
            .filter(|n| n.addr.parse().is_ok_and(|ip| dead.contains(&ip)))
            .map(|n| n.node_id.as_str())
            .collect();
        if dead_nodes.is_empty() {
            continue;
        }
        let dead_tasks: BTreeSet<Ipv4Addr> = a
            .endpoints
            .iter()
            .filter(|e| matches!(e.owner, EndpointOwner::Task { .. }))
            .filter(|e| dead_nodes.contains(e.node_id.as_str()))
            .map(|e| e.ip)
            .collect();
        for s in &mut v.services {
            keep_live(&mut s.backends, |ip| !dead_tasks.contains(ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::{Endpoint, Network, NetworkSpec, PortConfig};
    use mesh_manager::rpc::{MeshBackend, MeshService, NetworkAssignment};

    fn net(id: &str, ingress: bool) -> Network {
        Network {
            id: id.into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            spec: NetworkSpec {
                name: id.into(),
                ingress,
                ..Default::default()
            },
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1440,
        }
    }

    fn ep(id: &str, node: &str, ip: &str, owner: EndpointOwner) -> Endpoint {
        Endpoint {
            id: id.into(),
            network_id: String::new(),
            node_id: node.into(),
            ip: ip.parse().unwrap(),
            owner,
            created_at: 0,
        }
    }

    fn task_owner(t: &str) -> EndpointOwner {
        EndpointOwner::Task {
            task_id: t.into(),
            ifname: "eth0".into(),
        }
    }

    fn map() -> NetworkMap {
        NetworkMap {
            version: 7,
            networks: vec![
                NetworkAssignment {
                    network: net("ing", true),
                    endpoints: vec![
                        ep("lb1", "me", "10.0.0.2", EndpointOwner::LoadBalancer),
                        ep("lb2", "other", "10.0.0.3", EndpointOwner::LoadBalancer),
                    ],
                    nodes: vec![],
                    dns: vec![],
                },
                NetworkAssignment {
                    network: net("app", false),
                    endpoints: vec![
                        ep("lb3", "me", "10.1.0.9", EndpointOwner::LoadBalancer),
                        ep("e1", "me", "10.1.0.5", task_owner("t1")),
                        ep("e2", "other", "10.1.0.6", task_owner("t2")),
                    ],
                    nodes: vec![],
                    dns: vec![
                        DnsEntry::Service {
                            name: "web".into(),
                            vip: Some("10.1.0.2".parse().unwrap()),
                            tasks: vec!["10.1.0.5".parse().unwrap(), "10.1.0.6".parse().unwrap()],
                        },
                        DnsEntry::Service {
                            name: "www".into(),
                            vip: Some("10.1.0.2".parse().unwrap()),
                            tasks: vec![],
                        },
                        DnsEntry::Service {
                            name: "rr".into(),
                            vip: None,
                            tasks: vec![],
                        },
                    ],
                },
            ],
            mesh: vec![
                MeshService {
                    service_id: "s1".into(),
                    name: "web".into(),
                    ports: vec![
                        mesh_api::service::parse_port("8080:80").unwrap(),
                        mesh_api::service::parse_port("5353:53/udp").unwrap(),
                    ],
                    backends: vec![
                        MeshBackend {
                            task_id: "t1".into(),
                            node_id: "me".into(),
                            node_addr: "192.0.2.1".into(),
                            ingress_ip: Some("10.0.0.5".parse().unwrap()),
                        },
                        MeshBackend {
                            task_id: "t2".into(),
                            node_id: "other".into(),
                            node_addr: "192.0.2.2".into(),
                            ingress_ip: Some("10.0.0.6".parse().unwrap()),
                        },
                    ],
                },
                MeshService {
                    service_id: "s2".into(),
                    name: "edge".into(),
                    ports: vec![PortConfig {
                        publish_mode: PublishMode::Host,
                        ..mesh_api::service::parse_port("81:80").unwrap()
                    }],
                    backends: vec![MeshBackend {
                        task_id: "t3".into(),
                        node_id: "other".into(),
                        node_addr: "192.0.2.2".into(),
                        ingress_ip: None,
                    }],
                },
            ],
        }
    }

    fn build(node: &str) -> MeshPlan {
        plan(
            node,
            &map(),
            |n| PathBuf::from(format!("/sb/{n}")),
            |t| PathBuf::from(format!("/t/{t}")),
            |_| true,
        )
    }

    #[test]
    fn ingress_ports_everywhere_through_the_ingress_sandbox() {
        let p = build("me");
        assert!(p.validate().is_ok());
        let tcp = &p.listeners[0];
        assert_eq!((tcp.proto, tcp.port), (Proto::Tcp, 8080));
        assert_eq!(tcp.egress.netns, PathBuf::from("/sb/ing"));
        assert_eq!(tcp.egress.source, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(
            tcp.backends,
            [
                Backend {
                    addr: "10.0.0.5:80".parse().unwrap(),
                    node: None
                },
                Backend {
                    addr: "10.0.0.6:80".parse().unwrap(),
                    node: Some("192.0.2.2".parse().unwrap())
                },
            ]
        );
        assert_eq!(
            (p.listeners[1].proto, p.listeners[1].port),
            (Proto::Udp, 5353)
        );
        // The host-mode port is not here: its task runs on the other node.
        assert_eq!(p.listeners.len(), 2);
    }

    #[test]
    fn host_ports_only_where_the_task_runs() {
        let p = build("other");
        let edge = p.listeners.iter().find(|l| l.port == 81).unwrap();
        assert_eq!(edge.egress.netns, PathBuf::from("/t/t3"));
        assert_eq!(edge.backends[0].addr, "127.0.0.1:80".parse().unwrap());
        // "other" has no load-balancer address on app: no VIPs there.
        assert_eq!(p.vips.len(), 1);
        assert_eq!(p.vips[0].network_id, "ing");
    }

    #[test]
    fn vips_for_the_networks_with_a_load_balancer_here() {
        let p = build("me");
        assert_eq!(p.vips.len(), 2);
        // The ingress sandbox: the load-balancer address, no VIPs.
        assert_eq!(p.vips[0].netns, PathBuf::from("/sb/ing"));
        assert!(p.vips[0].services.is_empty());
        let v = &p.vips[1];
        assert_eq!(v.netns, PathBuf::from("/sb/app"));
        assert_eq!(v.source, "10.1.0.9".parse::<Ipv4Addr>().unwrap());
        assert_eq!(v.clients, [PathBuf::from("/t/t1")]);
        // One entry per VIP (the alias shares web's); dnsrr services have none.
        assert_eq!(v.services.len(), 1);
        assert_eq!(v.services[0].name, "web");
        assert_eq!(v.services[0].backends.len(), 2);
    }

    #[test]
    fn no_ingress_address_yet_means_no_ingress_listener() {
        let mut m = map();
        m.networks[0].endpoints.retain(|e| e.node_id != "me");
        let p = plan(
            "me",
            &m,
            |n| PathBuf::from(n),
            |t| PathBuf::from(t),
            |_| true,
        );
        assert!(p.listeners.is_empty());
    }

    #[test]
    fn dead_nodes_tasks_leave_rotation_unless_nothing_would_be_left() {
        let mut m = map();
        m.networks[1].nodes = vec![mesh_manager::rpc::PeerNode {
            node_id: "other".into(),
            addr: "192.0.2.2".into(),
            data_port: 51820,
            public_key: None,
        }];
        let dead = BTreeSet::from(["192.0.2.2".parse::<Ipv4Addr>().unwrap()]);
        let mut p = build("me");
        drop_dead(&mut p, &m, &dead);
        let tcp = &p.listeners[0];
        assert_eq!(tcp.backends.len(), 1, "only the local task is left");
        assert_eq!(tcp.backends[0].node, None);
        assert_eq!(
            p.vips[1].services[0].backends,
            ["10.1.0.5".parse::<Ipv4Addr>().unwrap()],
            "the VIP keeps the live node's task"
        );
        // Seen from "other", whose only remote backend node is "me": were "me" dead, the
        // port would keep its backends rather than have none.
        let mut m2 = map();
        m2.mesh[0].backends.retain(|b| b.node_id == "me");
        let mut p2 = plan(
            "other",
            &m2,
            |n| PathBuf::from(n),
            |t| PathBuf::from(t),
            |_| true,
        );
        let before = p2.listeners[0].backends.clone();
        drop_dead(
            &mut p2,
            &m2,
            &BTreeSet::from(["192.0.2.1".parse::<Ipv4Addr>().unwrap()]),
        );
        assert_eq!(p2.listeners[0].backends, before);
    }
}
