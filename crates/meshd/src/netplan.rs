//! From the managers' network map to this host's overlay plan (pure).
//!
//! The map lists, for each network this node serves an endpoint of, every endpoint and
//! every node serving one. The plan says what the overlay engine must build here: the
//! local endpoints to plumb, and one WireGuard peer per other node (its allowed IPs are
//! the addresses it serves) plus the standard WireGuard peers this node serves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use mesh_api::EndpointOwner;
use mesh_manager::rpc::NetworkMap;
use mesh_overlay::{HostPlan, KeyPair, LocalEndpoint, NetworkPlan, PeerPlan, PublicKey};

/// Keepalive for standard WireGuard peers behind NAT.
pub const EXTERNAL_KEEPALIVE_SECS: u16 = 25;

/// What [`plan`] decided.
#[derive(Debug, Default)]
pub struct Planned {
    /// The overlay plan.
    pub plan: HostPlan,
    /// Local endpoints whose namespace is gone: their addresses should be released.
    pub stale: Vec<(String, String)>,
    /// Networks of the map this node has no key for yet (it must make and publish one).
    pub missing_keys: Vec<String>,
}

/// Builds this node's plan.
pub fn plan(
    node_id: &str,
    map: &NetworkMap,
    keys: &BTreeMap<String, KeyPair>,
    netns_exists: impl Fn(&Path) -> bool,
    task_netns: impl Fn(&str) -> PathBuf,
) -> Planned {
    let mut out = Planned::default();
    for a in &map.networks {
        let net = &a.network;
        let Some(keypair) = keys.get(&net.id) else {
            out.missing_keys.push(net.id.clone());
            continue;
        };
        let mut local = Vec::new();
        let mut peers = Vec::new();
        for e in a.endpoints.iter().filter(|e| e.node_id == node_id) {
            match &e.owner {
                EndpointOwner::Netns { path, ifname } => {
                    if netns_exists(Path::new(path)) {
                        local.push(LocalEndpoint {
                            id: e.id.clone(),
                            ip: e.ip,
                            netns: PathBuf::from(path),
                            ifname: if ifname.is_empty() {
                                "eth0".to_string()
                            } else {
                                ifname.clone()
                            },
                        });
                    } else {
                        out.stale.push((net.id.clone(), e.id.clone()));
                    }
                }
                // A task's namespace appears when the node prepares the task; until then (and
                // after it is gone) its endpoint waits: the manager releases it when the task ends.
                EndpointOwner::Task { task_id, ifname } => {
                    let path = task_netns(task_id);
                    if netns_exists(&path) {
                        local.push(LocalEndpoint {
                            id: e.id.clone(),
                            ip: e.ip,
                            netns: path,
                            ifname: ifname.clone(),
                        });
                    }
                }
                // This host's own address on the network: the routing mesh puts it on the
                // sandbox's loopback; peers route it here like any endpoint of this node.
                EndpointOwner::LoadBalancer => {}
                EndpointOwner::External {
                    public_key,
                    endpoint,
                } => {
                    let Ok(pk) = PublicKey::from_b64("--wg-public-key", public_key) else {
                        continue;
                    };
                    peers.push(PeerPlan {
                        id: e.id.clone(),
                        public_key: pk,
                        endpoint: *endpoint,
                        allowed_ips: vec![e.ip],
                        keepalive_secs: Some(EXTERNAL_KEEPALIVE_SECS),
                    });
                }
            }
        }
        for n in a.nodes.iter().filter(|n| n.node_id != node_id) {
            let Some(pk) = n
                .public_key
                .as_deref()
                .and_then(|k| PublicKey::from_b64("network key", k).ok())
            else {
                continue;
            };
            let Ok(ip) = n.addr.parse::<IpAddr>() else {
                continue;
            };
            let mut allowed: Vec<_> = a
                .endpoints
                .iter()
                .filter(|e| e.node_id == n.node_id)
                .map(|e| e.ip)
                .collect();
            allowed.sort();
            peers.push(PeerPlan {
                id: n.node_id.clone(),
                public_key: pk,
                endpoint: Some(SocketAddr::new(ip, n.data_port)),
                allowed_ips: allowed,
                keepalive_secs: None,
            });
        }
        local.sort_by(|x, y| x.id.cmp(&y.id));
        peers.sort_by(|x, y| x.id.cmp(&y.id));
        out.plan.networks.push(NetworkPlan {
            id: net.id.clone(),
            subnet: net.subnet,
            gateway: net.gateway,
            mtu: net.mtu,
            keypair: keypair.clone(),
            local,
            peers,
        });
    }
    out
}
