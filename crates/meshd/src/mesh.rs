//! The routing mesh on this node: the data path chosen at start, fed with the plan made
//! from every network map ([`crate::meshplan`]).
//!
//! On the eBPF path, eBPF serves the VIPs (socket-level balancing for the registered task
//! namespaces) and the ingress-mode published ports (TC, direct server return). The
//! userspace path still serves what eBPF does not: host-mode ports, ports with
//! `proxy-protocol=v2`, connections to a published port from this host itself, and the VIPs
//! for a task whose namespace is not registered yet (its packets to a VIP reach the
//! sandbox, where the userspace relay takes them).

use std::net::Ipv4Addr;

use mesh_ingress::MeshPlan;
use mesh_ingress::ebpf::{EbpfConfig, EbpfMesh};
use mesh_ingress::userspace::{MeshStats, UserspaceConfig, UserspaceMesh};
use tracing::{info, warn};

use crate::config::DataplaneChoice;

/// The routing mesh's data path.
pub struct Mesh {
    userspace: UserspaceMesh,
    ebpf: Option<EbpfMesh>,
}

impl Mesh {
    /// Starts the data path `choice` asks for, in the calling thread's namespace (the
    /// host's). `auto` falls back to userspace when the kernel refuses the eBPF programs.
    pub fn start(choice: DataplaneChoice) -> anyhow::Result<Self> {
        let ebpf = match choice {
            DataplaneChoice::Userspace => None,
            DataplaneChoice::Auto | DataplaneChoice::Ebpf => {
                let cfg = EbpfConfig {
                    interfaces: external_interfaces(),
                    ..EbpfConfig::default()
                };
                match EbpfMesh::load(cfg) {
                    Ok(m) => Some(m),
                    Err(e) if choice == DataplaneChoice::Auto => {
                        warn!(error = %e, "the eBPF data path is not available; the routing mesh runs in userspace");
                        None
                    }
                    Err(e) => {
                        return Err(anyhow::anyhow!(
                            "--dataplane ebpf: {e}; use --dataplane userspace (or auto) on this host"
                        ));
                    }
                }
            }
        };
        let userspace = UserspaceMesh::start(UserspaceConfig::default())
            .map_err(|e| anyhow::anyhow!("starting the routing mesh's userspace path: {e}"))?;
        let mesh = Self { userspace, ebpf };
        info!(dataplane = mesh.kind(), "routing mesh started");
        Ok(mesh)
    }

    /// `ebpf` or `userspace`.
    pub fn kind(&self) -> &'static str {
        if self.ebpf.is_some() {
            "ebpf"
        } else {
            "userspace"
        }
    }

    /// Serves `plan`; `nodes` are the cluster's nodes' addresses (the eBPF path accepts
    /// published-port traffic handed over by them). What cannot be applied is logged, the
    /// rest is served.
    pub fn apply(&self, plan: &MeshPlan, nodes: &[Ipv4Addr]) {
        let userspace_plan = match &self.ebpf {
            None => plan.clone(),
            Some(ebpf) => {
                let (kernel, user) = split(plan);
                ebpf.set_nodes(nodes);
                match ebpf.apply(&kernel) {
                    Ok(r) => {
                        for s in &r.skipped {
                            warn!(item = %s, "routing mesh (eBPF) left out");
                        }
                    }
                    Err(e) => warn!(error = %e, "the routing mesh's eBPF path refused the plan"),
                }
                user
            }
        };
        let report = self.userspace.apply(&userspace_plan);
        if let Some(e) = &report.refused {
            warn!(error = %e, "the routing mesh refused the plan");
        }
        for f in &report.failures {
            warn!(item = %f.item, error = %f.error, "routing mesh");
        }
        for o in &report.opened {
            info!(item = %o, "routing mesh: opened");
        }
        for c in &report.closed {
            info!(item = %c, "routing mesh: closed");
        }
    }

    /// Live figures: published ports and VIP networks served, relayed connections and UDP
    /// flows of the userspace path.
    pub fn stats(&self) -> MeshStats {
        // Every published port has its listener in userspace (on the eBPF path, for this
        // host's own clients), so the userspace count is the number of ports served.
        self.userspace.stats()
    }

    /// Closes every listener; open relays end; eBPF programs are detached.
    pub fn shutdown(self) {
        drop(self.ebpf);
        self.userspace.shutdown();
    }
}

/// The part of `plan` the eBPF path serves, and the part the userspace path serves.
///
/// Userspace serves every published port: those eBPF cannot (host mode, whose backend is
/// the task's own namespace; PROXY protocol, which needs a relay), and the others for the
/// clients TC never sees, those on this host itself (`127.0.0.1:P`, the host's own address).
/// A connection from elsewhere is taken by TC before it reaches the listening socket.
pub fn split(plan: &MeshPlan) -> (MeshPlan, MeshPlan) {
    let kernel = plan
        .listeners
        .iter()
        .filter(|l| l.egress.source.is_some() && !l.proxy_protocol)
        .cloned()
        .collect();
    (
        MeshPlan {
            listeners: kernel,
            vips: plan.vips.clone(),
        },
        plan.clone(),
    )
}

/// The host's interfaces with an IPv4 address, but loopback and the mesh's own links.
fn external_interfaces() -> Vec<String> {
    let mut out: Vec<String> = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter(|a| {
                a.address
                    .as_ref()
                    .and_then(|s| s.as_sockaddr_in())
                    .is_some()
            })
            .map(|a| a.interface_name)
            .filter(|n| n != "lo" && !n.starts_with("mi-"))
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot list the host's interfaces; no published port on the eBPF path");
            Vec::new()
        }
    };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_ingress::{Backend, Egress, Listener, Proto};

    fn listener(port: u16, source: Option<Ipv4Addr>, proxy: bool) -> Listener {
        Listener {
            proto: Proto::Tcp,
            port,
            service: "s".into(),
            egress: Egress {
                netns: "/x".into(),
                source,
            },
            backends: vec![Backend {
                addr: "10.0.0.5:80".parse().unwrap(),
                node: None,
            }],
            proxy_protocol: proxy,
        }
    }

    #[test]
    fn ebpf_takes_plain_ingress_ports_and_userspace_serves_every_port() {
        let lb = Some(Ipv4Addr::new(10, 0, 0, 2));
        let plan = MeshPlan {
            listeners: vec![
                listener(8080, lb, false),
                listener(8081, None, false),
                listener(8443, lb, true),
            ],
            vips: vec![],
        };
        let (k, u) = split(&plan);
        assert_eq!(
            k.listeners.iter().map(|l| l.port).collect::<Vec<_>>(),
            [8080]
        );
        assert_eq!(
            u.listeners.iter().map(|l| l.port).collect::<Vec<_>>(),
            [8080, 8081, 8443],
            "userspace also serves 8080, for clients on this host"
        );
    }
}
