//! What the routing mesh must serve on this host (pure data, built by meshd from the
//! network map) and its validation. Both data paths take the same [`MeshPlan`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use crate::error::IngressError;

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP: each new connection goes to the next backend.
    Tcp,
    /// UDP: each new flow (client address and port) goes to the next backend.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Where the connections to a set of backends are opened from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Egress {
    /// Network namespace the backend-side sockets are made in (a network's sandbox for the
    /// ingress network, the task's own namespace for host-mode ports).
    pub netns: PathBuf,
    /// Source address of those sockets; `None` lets the kernel choose.
    pub source: Option<Ipv4Addr>,
}

/// A port published on this host (bound on `0.0.0.0` in the namespace meshd runs in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// TCP or UDP.
    pub proto: Proto,
    /// The published port.
    pub port: u16,
    /// Name of the service that publishes it (logs, errors).
    pub service: String,
    /// Where backend connections come from.
    pub egress: Egress,
    /// Backends in rotation order: healthy running tasks. Empty: new connections are
    /// refused (TCP reset) and datagrams dropped.
    pub backends: Vec<Backend>,
    /// Send a PROXY protocol v2 header carrying the client's address first (TCP only).
    pub proxy_protocol: bool,
}

/// A task behind a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The task's address (on the egress network) and target port.
    pub addr: SocketAddrV4,
    /// Underlay address of the node that runs the task; `None` when it runs on this host.
    /// The userspace path reaches every backend through `egress`; the eBPF path delivers
    /// to local backends itself and hands the others to their node.
    pub node: Option<Ipv4Addr>,
}

/// One network's sandbox on this host, with the VIPs of the services on that network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSandbox {
    /// Network ID (logs, map keys).
    pub network_id: String,
    /// The network's sandbox namespace on this host (holds the gateway on `br0`).
    pub netns: PathBuf,
    /// This host's load-balancer address on the network: the source of the connections
    /// the userspace path opens to backends (unique per host, so replies come back here).
    pub source: Ipv4Addr,
    /// Namespaces of this host's tasks on the network (the clients of the VIPs).
    pub clients: Vec<PathBuf>,
    /// The services with a VIP on this network.
    pub services: Vec<VipService>,
}

/// A service's virtual IP on one network. Every port of the VIP is served: a connection to
/// `vip:P` goes to `backend:P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipService {
    /// Service name (logs).
    pub name: String,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// Healthy running tasks' addresses on this network, in rotation order.
    pub backends: Vec<Ipv4Addr>,
}

/// Everything the routing mesh serves on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshPlan {
    /// Published ports (ingress mode and this host's host-mode ports).
    pub listeners: Vec<Listener>,
    /// Sandboxes with VIPs.
    pub vips: Vec<VipSandbox>,
}

impl MeshPlan {
    /// Checks the plan; nothing is applied from a plan that fails.
    pub fn validate(&self) -> Result<(), IngressError> {
        let mut ports: BTreeMap<(Proto, u16), &str> = BTreeMap::new();
        for l in &self.listeners {
            let field = format!("listeners[{}/{}]", l.port, l.proto);
            if l.port == 0 {
                return Err(IngressError::invalid(
                    format!("{field}.port"),
                    "0 is not a port",
                    "publish a port from 1 to 65535",
                ));
            }
            if let Some(other) = ports.insert((l.proto, l.port), &l.service) {
                return Err(IngressError::invalid(
                    format!("{field}.port"),
                    format!("published by both {other} and {}", l.service),
                    "publish each port once per protocol",
                ));
            }
            if l.proxy_protocol && l.proto == Proto::Udp {
                return Err(IngressError::invalid(
                    format!("{field}.proxy_protocol"),
                    "PROXY protocol is for TCP ports",
                    "drop proxy-protocol from the UDP port",
                ));
            }
            if l.backends.iter().any(|b| b.addr.port() == 0) {
                return Err(IngressError::invalid(
                    format!("{field}.backends"),
                    "a backend has port 0",
                    "give each backend its target port",
                ));
            }
        }
        let mut nets = BTreeSet::new();
        for s in &self.vips {
            let field = format!("vips[{}]", s.network_id);
            if !nets.insert(&s.network_id) {
                return Err(IngressError::invalid(
                    field,
                    "the network appears twice",
                    "list each network once",
                ));
            }
            let mut vips = BTreeSet::new();
            for v in &s.services {
                if !vips.insert(v.vip) {
                    return Err(IngressError::invalid(
                        format!("{field}.services[{}].vip", v.name),
                        format!("{} is the VIP of two services", v.vip),
                        "give each service its own VIP",
                    ));
                }
                if v.vip == s.source {
                    return Err(IngressError::invalid(
                        format!("{field}.services[{}].vip", v.name),
                        format!("{} is also the host's load-balancer address", v.vip),
                        "allocate VIPs and load-balancer addresses from the same pool",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(port: u16, proto: Proto, service: &str) -> Listener {
        Listener {
            proto,
            port,
            service: service.into(),
            egress: Egress {
                netns: "/var/run/netns/x".into(),
                source: None,
            },
            backends: vec![Backend {
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 80),
                node: None,
            }],
            proxy_protocol: false,
        }
    }

    #[test]
    fn a_port_once_per_protocol() {
        let mut p = MeshPlan {
            listeners: vec![
                listener(8080, Proto::Tcp, "a"),
                listener(8080, Proto::Udp, "b"),
            ],
            vips: vec![],
        };
        assert!(p.validate().is_ok());
        p.listeners.push(listener(8080, Proto::Tcp, "c"));
        let e = p.validate().unwrap_err().to_string();
        assert!(
            e.contains("listeners[8080/tcp].port") && e.contains("a and c"),
            "{e}"
        );
    }

    #[test]
    fn proxy_protocol_is_tcp_only() {
        let mut l = listener(53, Proto::Udp, "dns");
        l.proxy_protocol = true;
        let p = MeshPlan {
            listeners: vec![l],
            vips: vec![],
        };
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("proxy_protocol"), "{e}");
    }
}
