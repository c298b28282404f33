//! Overlay networks and their endpoints.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// The only driver meshd has: an encrypted (WireGuard) overlay.
pub const DRIVER_OVERLAY: &str = "overlay";
/// Smallest subnet prefix accepted (`/8`).
pub const MIN_PREFIX: u8 = 8;
/// Largest subnet prefix accepted (`/29`: gateway + 5 endpoints).
pub const MAX_PREFIX: u8 = 29;
/// WireGuard overhead on an IPv4 underlay: IPv4 20 + UDP 8 + WireGuard 32.
pub const WG_OVERHEAD_V4: u16 = 60;
/// WireGuard overhead on an IPv6 underlay: IPv6 40 + UDP 8 + WireGuard 32.
pub const WG_OVERHEAD_V6: u16 = 80;
/// MTU of overlay endpoints: a 1500-byte IPv4 underlay minus the WireGuard overhead.
pub const DEFAULT_MTU: u16 = 1500 - WG_OVERHEAD_V4;

/// What an operator asks for with `swarm network create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSpec {
    /// Unique name.
    pub name: String,
    /// Driver; only `overlay`.
    #[serde(default = "default_driver")]
    pub driver: String,
    /// Subnet; allocated from the cluster's default pool when absent.
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// Gateway; the subnet's first address when absent.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Whether standalone containers and namespaces may connect (`swarm network connect`).
    #[serde(default)]
    pub attachable: bool,
    /// Permit a subnet that overlaps another network's (they stay isolated).
    #[serde(default)]
    pub allow_overlap: bool,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The routing mesh's network (`ingress`): made by the cluster the first time a service
    /// publishes a port in ingress mode, never by a user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ingress: bool,
}

fn default_driver() -> String {
    DRIVER_OVERLAY.to_string()
}

/// A network as stored: the spec and what was allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    /// Network ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Raft index of the last change.
    pub version: u64,
    /// Creation time, Unix ms.
    pub created_at: u64,
    /// Last change, Unix ms.
    pub updated_at: u64,
    /// As requested.
    pub spec: NetworkSpec,
    /// Effective subnet.
    pub subnet: Ipv4Net,
    /// Effective gateway.
    pub gateway: Ipv4Addr,
    /// MTU of the endpoints' interfaces.
    #[serde(rename = "MTU")]
    pub mtu: u16,
}

/// Who holds an endpoint of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EndpointOwner {
    /// A network namespace on a node (`swarm network connect NET --netns PATH`).
    Netns {
        /// Path of the namespace, e.g. `/var/run/netns/foo`.
        path: String,
        /// Interface name inside it (e.g. `eth0`).
        #[serde(default)]
        ifname: String,
    },
    /// A task (or standalone container) of the node; its namespace is the node's business.
    Task {
        /// Task ID.
        task_id: String,
        /// Interface name inside the task (`eth0`, `eth1`, …).
        ifname: String,
    },
    /// The node's own address on the network: the routing mesh's connections to tasks come
    /// from it (one per node and network).
    LoadBalancer,
    /// A standard WireGuard peer outside the cluster, reached through one node.
    External {
        /// Its WireGuard public key (base64).
        public_key: String,
        /// Its UDP endpoint, if it has a fixed one.
        #[serde(default)]
        endpoint: Option<SocketAddr>,
    },
}

/// An address of a network held by someone on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    /// Endpoint ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Network ID.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Node that serves it.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Its address.
    #[serde(rename = "IP")]
    pub ip: Ipv4Addr,
    /// Who holds it.
    pub owner: EndpointOwner,
    /// Creation time, Unix ms.
    pub created_at: u64,
}

/// `swarm network connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConnectRequest {
    /// Namespace to connect (path).
    #[serde(default)]
    pub netns: Option<String>,
    /// Interface name inside the namespace (default `eth0`, or the next free `ethN`).
    #[serde(default)]
    pub ifname: Option<String>,
    /// Ask for this address.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Connect a standard WireGuard peer with this public key instead of a namespace.
    #[serde(default)]
    pub wg_public_key: Option<String>,
    /// That peer's UDP endpoint, if fixed.
    #[serde(default)]
    pub wg_endpoint: Option<SocketAddr>,
}

/// Answer to `swarm network connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectResponse {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Network subnet.
    pub subnet: Ipv4Net,
    /// Gateway.
    pub gateway: Ipv4Addr,
    /// MTU.
    #[serde(rename = "MTU")]
    pub mtu: u16,
    /// For external WireGuard peers: the serving node's public key for this network.
    #[serde(default)]
    pub node_public_key: Option<String>,
    /// For external WireGuard peers: the serving node's UDP endpoint.
    #[serde(default)]
    pub node_endpoint: Option<SocketAddr>,
}

/// `swarm network disconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DisconnectRequest {
    /// Namespace to disconnect (path).
    #[serde(default)]
    pub netns: Option<String>,
    /// Or an endpoint ID (e.g. an external peer's).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// A network as `swarm network inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkView {
    /// The network.
    #[serde(flatten)]
    pub network: Network,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// Checks a network name like docker: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters.
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || name.len() > 64 || !ok_first || !ok_rest {
        return Err(ValidationError::new(
            "NAME",
            format!("{name:?} is not a valid network name"),
            "use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks a subnet: IPv4 network address (no host bits) with a prefix from /8 to /29.
pub fn validate_subnet(subnet: &Ipv4Net) -> Result<(), ValidationError> {
    if subnet.prefix_len() < MIN_PREFIX || subnet.prefix_len() > MAX_PREFIX {
        return Err(ValidationError::new(
            "--subnet",
            format!("/{} is out of range", subnet.prefix_len()),
            format!("use a prefix length from /{MIN_PREFIX} to /{MAX_PREFIX}, e.g. 10.20.0.0/24"),
        ));
    }
    if subnet.addr() != subnet.network() {
        return Err(ValidationError::new(
            "--subnet",
            format!("{subnet} has host bits set"),
            format!("did you mean {}/{}?", subnet.network(), subnet.prefix_len()),
        ));
    }
    if subnet.addr().is_loopback() || subnet.addr().is_multicast() || subnet.addr().is_unspecified()
    {
        return Err(ValidationError::new(
            "--subnet",
            format!("{subnet} is not a unicast range"),
            "use a private range, e.g. 10.20.0.0/24",
        ));
    }
    Ok(())
}

/// Checks a gateway: inside the subnet, not its network or broadcast address.
pub fn validate_gateway(subnet: &Ipv4Net, gw: Ipv4Addr) -> Result<(), ValidationError> {
    if !subnet.contains(&gw) || gw == subnet.network() || gw == subnet.broadcast() {
        return Err(ValidationError::new(
            "--gateway",
            format!("{gw} is not a usable address of {subnet}"),
            format!(
                "give an address between {} and {}",
                Ipv4Addr::from(u32::from(subnet.network()) + 1),
                Ipv4Addr::from(u32::from(subnet.broadcast()) - 1)
            ),
        ));
    }
    Ok(())
}

impl NetworkSpec {
    /// Validates the parts that need no cluster state.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(&self.name)?;
        if self.driver != DRIVER_OVERLAY {
            return Err(ValidationError::new(
                "--driver",
                format!("unknown driver {:?}", self.driver),
                "use `-d overlay` (every meshd network is an encrypted overlay)",
            ));
        }
        if let Some(s) = &self.subnet {
            validate_subnet(s)?;
            if let Some(gw) = self.gateway {
                validate_gateway(s, gw)?;
            }
        } else if self.gateway.is_some() {
            return Err(ValidationError::new(
                "--gateway",
                "a gateway without a subnet",
                "give --subnet too, or leave both out",
            ));
        }
        for k in self.labels.keys() {
            crate::node::validate_label_key("--label", k)?;
        }
        Ok(())
    }
}

/// Checks a WireGuard public key: 32 bytes in standard base64 (44 characters).
pub fn validate_wg_key(field: &str, key: &str) -> Result<(), ValidationError> {
    let ok = key.len() == 44
        && key.ends_with('=')
        && key[..43]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
    if !ok {
        return Err(ValidationError::new(
            field,
            format!("{key:?} is not a WireGuard public key"),
            "give the 44-character base64 key printed by `wg pubkey`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn names() {
        validate_name("appnet").unwrap();
        validate_name("a.b_c-1").unwrap();
        assert!(validate_name("").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn subnets_and_gateways() {
        validate_subnet(&net("10.20.0.0/24")).unwrap();
        let e = validate_subnet(&net("10.20.0.5/24")).unwrap_err();
        assert!(e.to_string().contains("did you mean 10.20.0.0/24"), "{e}");
        assert!(validate_subnet(&net("10.0.0.0/30")).is_err());
        assert!(validate_subnet(&net("10.0.0.0/7")).is_err());
        assert!(validate_subnet(&net("127.0.0.0/8")).is_err());
        validate_gateway(&net("10.20.0.0/24"), "10.20.0.1".parse().unwrap()).unwrap();
        let e = validate_gateway(&net("10.20.0.0/24"), "10.20.0.255".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("10.20.0.1 and 10.20.0.254"), "{e}");
        assert!(validate_gateway(&net("10.20.0.0/24"), "10.21.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn spec_validation_names_fields() {
        let mut s = NetworkSpec {
            name: "n".into(),
            driver: "bridge".into(),
            ..Default::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "--driver");
        s.driver = DRIVER_OVERLAY.into();
        s.validate().unwrap();
        s.gateway = Some("10.0.0.1".parse().unwrap());
        assert_eq!(s.validate().unwrap_err().field, "--gateway");
    }

    #[test]
    fn wg_keys() {
        validate_wg_key(
            "--wg-public-key",
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
        )
        .unwrap();
        assert!(validate_wg_key("--wg-public-key", "short").is_err());
    }
}
