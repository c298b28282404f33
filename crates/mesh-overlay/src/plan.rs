//! The desired state meshd hands the overlay, and its validation (pure).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::error::OverlayError;
use crate::keys::{KeyPair, PublicKey};

/// Name of the TUN device inside every sandbox.
pub const TUN_NAME: &str = "wg0";
/// Length of the network-ID part of a sandbox name.
pub const SANDBOX_ID_LEN: usize = 12;
/// Length of the endpoint-ID part of an endpoint's veth name in the sandbox.
pub const ENDPOINT_ID_CHARS: usize = mesh_sandbox::VETH_ID_CHARS;
/// Smallest accepted network MTU.
pub const MIN_MTU: u16 = 576;
/// Largest accepted network MTU.
pub const MAX_MTU: u16 = 9000;

/// How the overlay runs on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    /// UDP port of the encrypted data plane (WireGuard), bound on 0.0.0.0.
    pub data_port: u16,
    /// Prefix of the sandbox namespaces this overlay owns, e.g. `msb`; sandboxes are named
    /// `<prefix>-<first 12 characters of the network ID>`.
    pub sandbox_prefix: String,
}

/// Everything this host should have of the overlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPlan {
    /// The networks this host takes part in.
    pub networks: Vec<NetworkPlan>,
}

/// One overlay network as seen from this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Network ID.
    pub id: String,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Gateway address (held by the sandbox's bridge).
    pub gateway: Ipv4Addr,
    /// MTU of the endpoints and of the TUN device.
    pub mtu: u16,
    /// This host's WireGuard key pair for this network.
    pub keypair: KeyPair,
    /// Endpoints of this network on this host.
    pub local: Vec<LocalEndpoint>,
    /// The other hosts (and external WireGuard peers) of this network.
    pub peers: Vec<PeerPlan>,
}

/// A network namespace on this host joined to a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// Endpoint ID.
    pub id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Path of its network namespace.
    pub netns: PathBuf,
    /// Interface name inside that namespace.
    pub ifname: String,
}

/// A WireGuard peer of a network: another host, or an external WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    /// Node ID, or the endpoint ID of an external WireGuard peer.
    pub id: String,
    /// Its public key for this network.
    pub public_key: PublicKey,
    /// Its UDP address, if known (peers without one are reached once they have spoken).
    pub endpoint: Option<SocketAddr>,
    /// The overlay addresses it serves.
    pub allowed_ips: Vec<Ipv4Addr>,
    /// Persistent keepalive interval in seconds (0 or none: off).
    pub keepalive_secs: Option<u16>,
}

/// The sandbox namespace name of a network.
pub fn sandbox_name(prefix: &str, network_id: &str) -> String {
    let short: String = network_id.chars().take(SANDBOX_ID_LEN).collect();
    format!("{prefix}-{short}")
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks the configuration.
pub fn validate_config(cfg: &OverlayConfig) -> Result<(), OverlayError> {
    if cfg.data_port == 0 {
        return Err(OverlayError::invalid(
            "data_port",
            "0 is not a port",
            "give the overlay UDP port, e.g. 51820",
        ));
    }
    let p = &cfg.sandbox_prefix;
    if p.is_empty()
        || p.len() > 16
        || !p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(OverlayError::invalid(
            "sandbox_prefix",
            format!("{p:?} is not a usable namespace prefix"),
            "use 1 to 16 lowercase letters or digits, e.g. msb",
        ));
    }
    Ok(())
}

/// Checks a plan: everything that can be refused without touching the system is refused here,
/// before anything changes.
pub fn validate_plan(cfg: &OverlayConfig, plan: &HostPlan) -> Result<(), OverlayError> {
    let mut ids = HashSet::new();
    let mut sandboxes: HashMap<String, &str> = HashMap::new();
    let mut keys: HashMap<PublicKey, &str> = HashMap::new();
    for n in &plan.networks {
        let f = format!("networks[{}]", n.id);
        if !name_ok(&n.id) {
            return Err(OverlayError::invalid(
                format!("{f}.id"),
                format!("{:?} is not a usable network ID", n.id),
                "use letters, digits, '-', '_' or '.'",
            ));
        }
        if !ids.insert(n.id.as_str()) {
            return Err(OverlayError::invalid(
                format!("{f}.id"),
                "the network appears twice",
                "list each network once",
            ));
        }
        let sb = sandbox_name(&cfg.sandbox_prefix, &n.id);
        if let Some(other) = sandboxes.insert(sb.clone(), n.id.as_str()) {
            return Err(OverlayError::invalid(
                format!("{f}.id"),
                format!("its sandbox name {sb} is the same as network {other}'s"),
                format!("network IDs must differ in their first {SANDBOX_ID_LEN} characters"),
            ));
        }
        if let Some(other) = keys.insert(n.keypair.public(), n.id.as_str()) {
            return Err(OverlayError::invalid(
                format!("{f}.keypair"),
                format!("the same key pair as network {other}"),
                "generate a key pair per network (KeyPair::generate)",
            ));
        }
        validate_network(n, &f)?;
    }
    Ok(())
}

fn usable_host(subnet: &Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

fn validate_network(n: &NetworkPlan, f: &str) -> Result<(), OverlayError> {
    let s = n.subnet;
    if s.prefix_len() < 8 || s.prefix_len() > 30 || s.addr() != s.network() {
        return Err(OverlayError::invalid(
            format!("{f}.subnet"),
            format!("{s} is not a network address with a prefix from /8 to /30"),
            format!("e.g. {}/{}", s.network(), s.prefix_len().clamp(8, 30)),
        ));
    }
    if !usable_host(&s, n.gateway) {
        return Err(OverlayError::invalid(
            format!("{f}.gateway"),
            format!("{} is not a usable address of {s}", n.gateway),
            "give an address inside the subnet, e.g. its first one",
        ));
    }
    if n.mtu < MIN_MTU || n.mtu > MAX_MTU {
        return Err(OverlayError::invalid(
            format!("{f}.mtu"),
            format!("{} is out of range", n.mtu),
            format!("give an MTU from {MIN_MTU} to {MAX_MTU} (underlay MTU minus 60)"),
        ));
    }
    // Every overlay address of the network on this host: local endpoints and peers' IPs.
    let mut owners: HashMap<Ipv4Addr, String> = HashMap::new();
    let mut claim = |ip: Ipv4Addr, who: String, field: String| -> Result<(), OverlayError> {
        if !usable_host(&s, ip) || ip == n.gateway {
            return Err(OverlayError::invalid(
                field,
                format!("{ip} is not an endpoint address of {s}"),
                "give an address inside the subnet other than the gateway",
            ));
        }
        if let Some(prev) = owners.insert(ip, who.clone()) {
            return Err(OverlayError::invalid(
                field,
                format!("{ip} is held by {prev} already"),
                "give every endpoint its own address",
            ));
        }
        Ok(())
    };
    let mut ep_ids = HashSet::new();
    for e in &n.local {
        let ef = format!("{f}.local[{}]", e.id);
        if e.id.is_empty()
            || e.id.len() > 256
            || !e
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(OverlayError::invalid(
                format!("{ef}.id"),
                format!("{:?} is not a usable endpoint ID", e.id),
                "use 1 to 256 letters, digits, '-' or '_'",
            ));
        }
        let short: String = e.id.chars().take(ENDPOINT_ID_CHARS).collect();
        if !ep_ids.insert(short) {
            return Err(OverlayError::invalid(
                format!("{ef}.id"),
                "another endpoint of the network on this host has the same ID or the same \
                 first 12 characters",
                format!("endpoint IDs must differ in their first {ENDPOINT_ID_CHARS} characters"),
            ));
        }
        if !e.netns.is_absolute() {
            return Err(OverlayError::invalid(
                format!("{ef}.netns"),
                format!("{} is not an absolute path", e.netns.display()),
                "give the namespace's path, e.g. /var/run/netns/NAME or /proc/PID/ns/net",
            ));
        }
        if e.ifname.is_empty()
            || e.ifname.len() > 15
            || e.ifname.contains(['/', ' ', ':'])
            || e.ifname == "."
            || e.ifname == ".."
        {
            return Err(OverlayError::invalid(
                format!("{ef}.ifname"),
                format!("{:?} is not an interface name", e.ifname),
                "use 1 to 15 characters without '/', ':' or spaces, e.g. eth0",
            ));
        }
        claim(e.ip, format!("local endpoint {}", e.id), format!("{ef}.ip"))?;
    }
    let mut peer_ids = HashSet::new();
    let mut peer_keys = HashSet::new();
    for p in &n.peers {
        let pf = format!("{f}.peers[{}]", p.id);
        if p.id.is_empty() {
            return Err(OverlayError::invalid(
                format!("{pf}.id"),
                "empty",
                "give the node ID or endpoint ID",
            ));
        }
        if !peer_ids.insert(p.id.as_str()) {
            return Err(OverlayError::invalid(
                format!("{pf}.id"),
                "the peer appears twice",
                "list each peer once",
            ));
        }
        if p.public_key == n.keypair.public() {
            return Err(OverlayError::invalid(
                format!("{pf}.public_key"),
                "is this host's own public key",
                "give the peer's public key for this network",
            ));
        }
        if !peer_keys.insert(p.public_key) {
            return Err(OverlayError::invalid(
                format!("{pf}.public_key"),
                "another peer of the network has the same key",
                "give every peer its own key",
            ));
        }
        if let Some(ep) = p.endpoint {
            let ok = match ep {
                SocketAddr::V4(v4) => {
                    v4.port() != 0 && !v4.ip().is_unspecified() && !v4.ip().is_broadcast()
                }
                SocketAddr::V6(_) => false,
            };
            if !ok {
                return Err(OverlayError::invalid(
                    format!("{pf}.endpoint"),
                    format!("{ep} is not a usable IPv4 UDP address"),
                    "give the peer's IPv4 address and data port, e.g. 192.0.2.10:51820, or none",
                ));
            }
        }
        for ip in &p.allowed_ips {
            claim(*ip, format!("peer {}", p.id), format!("{pf}.allowed_ips"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OverlayConfig {
        OverlayConfig {
            data_port: 51820,
            sandbox_prefix: "msb".into(),
        }
    }

    fn net(id: &str) -> NetworkPlan {
        NetworkPlan {
            id: id.into(),
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            mtu: 1420,
            keypair: KeyPair::generate(),
            local: vec![LocalEndpoint {
                id: "e1".into(),
                ip: "10.1.0.2".parse().unwrap(),
                netns: "/var/run/netns/c1".into(),
                ifname: "eth0".into(),
            }],
            peers: vec![PeerPlan {
                id: "node2".into(),
                public_key: KeyPair::generate().public(),
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                allowed_ips: vec!["10.1.0.3".parse().unwrap()],
                keepalive_secs: None,
            }],
        }
    }

    fn field_of(r: Result<(), OverlayError>) -> String {
        match r {
            Err(OverlayError::InvalidPlan { field, .. }) => field,
            other => panic!("expected an invalid plan, got {other:?}"),
        }
    }

    #[test]
    fn sandbox_names_use_twelve_characters() {
        assert_eq!(
            sandbox_name("msb", "1a2b3c4d5e6f7a8b9c"),
            "msb-1a2b3c4d5e6f"
        );
        assert_eq!(sandbox_name("msb", "short"), "msb-short");
    }

    #[test]
    fn good_plans_pass() {
        validate_config(&cfg()).unwrap();
        let plan = HostPlan {
            networks: vec![net("aaaaaaaaaaaa1"), net("bbbb")],
        };
        validate_plan(&cfg(), &plan).unwrap();
        validate_plan(&cfg(), &HostPlan::default()).unwrap();
    }

    #[test]
    fn config_errors_name_fields() {
        let mut c = cfg();
        c.data_port = 0;
        assert_eq!(field_of(validate_config(&c)), "data_port");
        let mut c = cfg();
        c.sandbox_prefix = "Bad-Prefix".into();
        assert_eq!(field_of(validate_config(&c)), "sandbox_prefix");
    }

    #[test]
    fn network_errors_name_fields() {
        let check = |f: &dyn Fn(&mut NetworkPlan)| {
            let mut n = net("n1");
            f(&mut n);
            field_of(validate_plan(&cfg(), &HostPlan { networks: vec![n] }))
        };
        assert_eq!(check(&|n| n.id = "a/b".into()), "networks[a/b].id");
        assert_eq!(
            check(&|n| n.subnet = "10.1.0.5/24".parse().unwrap()),
            "networks[n1].subnet"
        );
        assert_eq!(
            check(&|n| n.gateway = "10.2.0.1".parse().unwrap()),
            "networks[n1].gateway"
        );
        assert_eq!(check(&|n| n.mtu = 100), "networks[n1].mtu");
        assert_eq!(
            check(&|n| n.local[0].ip = "10.1.0.1".parse().unwrap()),
            "networks[n1].local[e1].ip"
        );
        assert_eq!(
            check(&|n| n.local[0].netns = "relative".into()),
            "networks[n1].local[e1].netns"
        );
        assert_eq!(
            check(&|n| n.local[0].ifname = "a-very-long-interface".into()),
            "networks[n1].local[e1].ifname"
        );
        assert_eq!(
            check(&|n| n.peers[0].allowed_ips = vec!["10.1.0.2".parse().unwrap()]),
            "networks[n1].peers[node2].allowed_ips"
        );
        assert_eq!(
            check(&|n| n.peers[0].allowed_ips = vec!["10.9.0.2".parse().unwrap()]),
            "networks[n1].peers[node2].allowed_ips"
        );
        assert_eq!(
            check(&|n| n.peers[0].endpoint = Some("[::1]:51820".parse().unwrap())),
            "networks[n1].peers[node2].endpoint"
        );
        assert_eq!(
            check(&|n| n.peers[0].public_key = n.keypair.public()),
            "networks[n1].peers[node2].public_key"
        );
        assert_eq!(
            check(&|n| {
                let mut p = n.peers[0].clone();
                p.id = "node3".into();
                p.allowed_ips = vec![];
                n.peers.push(p);
            }),
            "networks[n1].peers[node3].public_key"
        );
        assert_eq!(
            check(&|n| n.peers.push(n.peers[0].clone())),
            "networks[n1].peers[node2].id"
        );
        assert_eq!(
            check(&|n| n.local.push(n.local[0].clone())),
            "networks[n1].local[e1].id"
        );
        assert_eq!(
            check(&|n| {
                n.local[0].id = "0123456789ab-one".into();
                let mut e = n.local[0].clone();
                e.id = "0123456789ab-two".into();
                e.ip = "10.1.0.9".parse().unwrap();
                n.local.push(e);
            }),
            "networks[n1].local[0123456789ab-two].id"
        );
        assert_eq!(
            check(&|n| n.local[0].id = "a.b".into()),
            "networks[n1].local[a.b].id"
        );
    }

    #[test]
    fn networks_must_differ() {
        let a = net("sameprefix12-a");
        let b = net("sameprefix12-b");
        let e = validate_plan(
            &cfg(),
            &HostPlan {
                networks: vec![a.clone(), b],
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("first 12 characters"), "{e}");
        let mut c = net("other");
        c.keypair = a.keypair.clone();
        assert_eq!(
            field_of(validate_plan(
                &cfg(),
                &HostPlan {
                    networks: vec![a.clone(), c],
                },
            )),
            "networks[other].keypair"
        );
        assert_eq!(
            field_of(validate_plan(
                &cfg(),
                &HostPlan {
                    networks: vec![a.clone(), a],
                },
            )),
            "networks[sameprefix12-a].id"
        );
    }

    #[test]
    fn overlapping_subnets_in_different_networks_are_fine() {
        let mut b = net("n2");
        b.local[0].netns = "/var/run/netns/c2".into();
        validate_plan(
            &cfg(),
            &HostPlan {
                networks: vec![net("n1"), b],
            },
        )
        .unwrap();
    }
}
