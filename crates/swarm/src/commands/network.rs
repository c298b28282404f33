//! `swarm network create | ls | inspect | rm | connect | disconnect`.
//!
//! Every check that needs no cluster state runs here first, with mesh-api's own
//! validators, so that a bad flag is named before anything is sent; the daemon checks
//! everything again.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use clap::{ArgGroup, Args, Subcommand};
use ipnet::Ipv4Net;
use mesh_api::api::{path, routes};
use mesh_api::network::{
    DRIVER_OVERLAY, MAX_PREFIX, MIN_PREFIX, validate_name, validate_subnet, validate_wg_key,
};
use mesh_api::node::{parse_label, validate_label_key};
use mesh_api::{
    ConnectRequest, ConnectResponse, DisconnectRequest, Network, NetworkSpec, NetworkView,
    ValidationError,
};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tracing::debug;

use super::{Ctx, Format, for_each, is_fatal, parse_format};
use crate::client::encode_segment;
use crate::error::{CliError, Result};
use crate::format::{
    NETWORK_SCOPE, endpoint_address, network_id, network_order, network_table, reformat_json,
    wg_peer_config,
};

/// Longest Linux interface name (`IFNAMSIZ` minus the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// The `swarm network` verbs.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create(CreateArgs),
    /// List the networks of the swarm.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show details of one or more networks, with their endpoints.
    Inspect(InspectArgs),
    /// Remove one or more networks.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Connect a network namespace, or a standard WireGuard peer, to a network.
    Connect(ConnectArgs),
    /// Disconnect a network namespace or an endpoint from a network.
    Disconnect(DisconnectArgs),
}

/// Parses an IPv4 CIDR given to `field` and checks it like a network subnet (prefix
/// from /8 to /29, no host bits, a unicast range).
pub fn parse_cidr(field: &str, s: &str) -> std::result::Result<Ipv4Net, ValidationError> {
    let example = "e.g. 10.20.0.0/24";
    let Some((addr, len)) = s.split_once('/') else {
        return Err(ValidationError::new(
            field,
            format!("{s:?} has no prefix length"),
            format!("write ADDRESS/LENGTH, {example}"),
        ));
    };
    let addr: Ipv4Addr = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a,
        Ok(IpAddr::V6(_)) => {
            return Err(ValidationError::new(
                field,
                format!("{s:?} is an IPv6 range"),
                format!("meshd overlays are IPv4; give an IPv4 range, {example}"),
            ));
        }
        Err(_) => {
            return Err(ValidationError::new(
                field,
                format!("{addr:?} is not an IPv4 address"),
                format!("write ADDRESS/LENGTH, {example}"),
            ));
        }
    };
    let net = len
        .parse::<u8>()
        .ok()
        .and_then(|len| Ipv4Net::new(addr, len).ok())
        .ok_or_else(|| {
            ValidationError::new(
                field,
                format!("{len:?} is not a prefix length"),
                format!("use a prefix length from /{MIN_PREFIX} to /{MAX_PREFIX}, {example}"),
            )
        })?;
    validate_subnet(&net).map_err(|mut e| {
        e.field = field.to_string();
        e
    })?;
    Ok(net)
}

fn parse_subnet(s: &str) -> std::result::Result<Ipv4Net, ValidationError> {
    parse_cidr("--subnet", s)
}

fn parse_ipv4(field: &str, s: &str) -> std::result::Result<Ipv4Addr, ValidationError> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => Err(ValidationError::new(
            field,
            format!("{s:?} is an IPv6 address"),
            "meshd overlays are IPv4; give an IPv4 address, e.g. 10.20.0.5",
        )),
        Err(_) => Err(ValidationError::new(
            field,
            format!("{s:?} is not an IPv4 address"),
            "give an address such as 10.20.0.5",
        )),
    }
}

fn parse_gateway(s: &str) -> std::result::Result<Ipv4Addr, ValidationError> {
    parse_ipv4("--gateway", s)
}

fn parse_ip(s: &str) -> std::result::Result<Ipv4Addr, ValidationError> {
    parse_ipv4("--ip", s)
}

fn parse_driver(s: &str) -> std::result::Result<String, ValidationError> {
    if s == DRIVER_OVERLAY {
        return Ok(s.to_string());
    }
    Err(ValidationError::new(
        "--driver",
        format!("unknown driver {s:?}"),
        "use `-d overlay` (every meshd network is an encrypted overlay)",
    ))
}

fn parse_name(s: &str) -> std::result::Result<String, ValidationError> {
    validate_name(s).map(|()| s.to_string())
}

fn parse_label_arg(s: &str) -> std::result::Result<(String, String), ValidationError> {
    parse_label("--label", s)
}

/// Checks a namespace path given to `--netns`: it names a file on the daemon's host,
/// so it must be absolute.
fn parse_netns(s: &str) -> std::result::Result<String, ValidationError> {
    if s.is_empty() || !Path::new(s).is_absolute() || s.contains('\0') {
        return Err(ValidationError::new(
            "--netns",
            format!("{s:?} is not an absolute path"),
            "give the namespace's path on the daemon's host, e.g. /run/netns/NAME for one made by `ip netns add NAME`",
        ));
    }
    Ok(s.to_string())
}

/// Checks an interface name like the Linux kernel does: 1 to 15 bytes, not `.` or `..`,
/// no `/`, `:` or white space.
pub fn parse_ifname(s: &str) -> std::result::Result<String, ValidationError> {
    let bad = s.is_empty()
        || s.len() > MAX_IFNAME
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(ValidationError::new(
            "--ifname",
            format!("{s:?} is not a valid interface name"),
            format!("use 1 to {MAX_IFNAME} characters without '/', ':' or spaces, e.g. eth1"),
        ));
    }
    Ok(s.to_string())
}

fn parse_wg_key(s: &str) -> std::result::Result<String, ValidationError> {
    validate_wg_key("--wg-public-key", s).map(|()| s.to_string())
}

fn parse_wg_endpoint(s: &str) -> std::result::Result<SocketAddr, ValidationError> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Ok(a),
        _ => Err(ValidationError::new(
            "--wg-endpoint",
            format!("{s:?} is not an IP:PORT"),
            "give the peer's UDP address, e.g. 198.51.100.7:51820 or [2001:db8::7]:51820",
        )),
    }
}

fn parse_endpoint_id(s: &str) -> std::result::Result<String, ValidationError> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::new(
            "--endpoint",
            format!("{s:?} is not an endpoint ID"),
            "copy the endpoint's ID from `swarm network inspect NETWORK` (Endpoints[].ID)",
        ));
    }
    Ok(s.to_string())
}

/// `swarm network create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver: overlay, the only one (every meshd network is an encrypted overlay).
    #[arg(
        short,
        long,
        value_name = "DRIVER",
        default_value = DRIVER_OVERLAY,
        value_parser = parse_driver
    )]
    pub driver: String,
    /// Subnet in CIDR notation (default: the next free one from the swarm's address pools).
    #[arg(long, value_name = "CIDR", value_parser = parse_subnet)]
    pub subnet: Option<Ipv4Net>,
    /// Gateway of the subnet (default: its first address).
    #[arg(long, value_name = "IP", value_parser = parse_gateway, requires = "subnet")]
    pub gateway: Option<Ipv4Addr>,
    /// Let standalone namespaces and WireGuard peers connect (`swarm network connect`).
    #[arg(long)]
    pub attachable: bool,
    /// Accept a subnet that overlaps another network's (they stay isolated).
    #[arg(long)]
    pub allow_overlap: bool,
    /// Set a label (KEY=VALUE); repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label_arg)]
    pub label: Vec<(String, String)>,
    /// Name of the network.
    #[arg(value_name = "NAME", value_parser = parse_name)]
    pub name: String,
}

impl CreateArgs {
    /// The spec to send, checked with [`NetworkSpec::validate`] (the gateway against the
    /// subnet).
    pub fn spec(&self) -> std::result::Result<NetworkSpec, ValidationError> {
        let spec = NetworkSpec {
            name: self.name.clone(),
            driver: self.driver.clone(),
            subnet: self.subnet,
            gateway: self.gateway,
            attachable: self.attachable,
            allow_overlap: self.allow_overlap,
            labels: self.label.iter().cloned().collect::<BTreeMap<_, _>>(),
            ingress: false,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// A `--filter` of `network ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkFilter {
    /// `id=TEXT`: the network ID contains it.
    Id(String),
    /// `name=TEXT`: the name contains it.
    Name(String),
    /// `driver=DRIVER`: exactly this driver.
    Driver(String),
    /// `scope=swarm|local|global`: every meshd network has the scope `swarm`.
    Scope(String),
    /// `label=KEY` or `label=KEY=VALUE`.
    Label {
        /// The label key.
        key: String,
        /// The value it must have, if given.
        value: Option<String>,
    },
}

impl NetworkFilter {
    /// Parses `KEY=VALUE` as given to `--filter`.
    pub fn parse(s: &str) -> std::result::Result<Self, ValidationError> {
        const FIELD: &str = "--filter";
        let keys = "use id=, name=, driver=, scope= or label=, e.g. --filter name=app";
        let Some((key, value)) = s.split_once('=') else {
            return Err(ValidationError::new(
                FIELD,
                format!("{s:?} is not KEY=VALUE"),
                keys,
            ));
        };
        match key {
            "id" => Ok(NetworkFilter::Id(value.to_string())),
            "name" => Ok(NetworkFilter::Name(value.to_string())),
            "driver" => Ok(NetworkFilter::Driver(value.to_string())),
            "scope" => match value {
                "swarm" | "local" | "global" => Ok(NetworkFilter::Scope(value.to_string())),
                other => Err(ValidationError::new(
                    FIELD,
                    format!("unknown scope {other:?}"),
                    "use scope=swarm, scope=local or scope=global",
                )),
            },
            "label" => {
                let (k, v) = match value.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (value, None),
                };
                validate_label_key(FIELD, k)?;
                Ok(NetworkFilter::Label {
                    key: k.to_string(),
                    value: v,
                })
            }
            other => Err(ValidationError::new(
                FIELD,
                format!("unknown filter {other:?}"),
                keys,
            )),
        }
    }

    fn key(&self) -> &'static str {
        match self {
            NetworkFilter::Id(_) => "id",
            NetworkFilter::Name(_) => "name",
            NetworkFilter::Driver(_) => "driver",
            NetworkFilter::Scope(_) => "scope",
            NetworkFilter::Label { .. } => "label",
        }
    }

    /// Whether `view` passes this filter.
    pub fn matches(&self, view: &NetworkView) -> bool {
        let n = &view.network;
        match self {
            NetworkFilter::Id(p) => n.id.contains(p.as_str()),
            NetworkFilter::Name(p) => n.spec.name.contains(p.as_str()),
            NetworkFilter::Driver(d) => n.spec.driver == *d,
            NetworkFilter::Scope(s) => s == NETWORK_SCOPE,
            NetworkFilter::Label { key, value } => match (n.spec.labels.get(key), value) {
                (Some(v), Some(want)) => v == want,
                (Some(_), None) => true,
                (None, _) => false,
            },
        }
    }
}

/// Whether `view` passes `filters`: filters with the same key are alternatives (OR),
/// different keys must all hold (AND), like docker.
pub fn passes(view: &NetworkView, filters: &[NetworkFilter]) -> bool {
    let mut keys: Vec<&str> = filters.iter().map(NetworkFilter::key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.iter().all(|k| {
        filters
            .iter()
            .filter(|f| f.key() == *k)
            .any(|f| f.matches(view))
    })
}

/// `swarm network ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print network IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print whole network IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// `json`: one network object per line, as the API returns it.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, default_value = "")]
    pub format: Format,
    /// Filter: id=TEXT, name=TEXT, driver=DRIVER, scope=swarm, label=KEY[=VALUE].
    #[arg(short, long, value_name = "FILTER", value_parser = NetworkFilter::parse)]
    pub filter: Vec<NetworkFilter>,
}

/// `swarm network inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// `json`: the networks as one compact JSON array.
    #[arg(short, long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<Format>,
    /// Network names, IDs or ID prefixes.
    #[arg(value_name = "NETWORK", required = true)]
    pub networks: Vec<String>,
}

/// `swarm network rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Do not fail for a network that does not exist.
    #[arg(short, long)]
    pub force: bool,
    /// Network names, IDs or ID prefixes.
    #[arg(value_name = "NETWORK", required = true)]
    pub networks: Vec<String>,
}

/// `swarm network connect`: exactly one of `--netns` and `--wg-public-key`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("peer")
        .required(true)
        .args(["netns", "wg_public_key"])
))]
pub struct ConnectArgs {
    /// Network namespace to connect, by path on the daemon's host (e.g. /run/netns/blue).
    #[arg(long, value_name = "PATH", value_parser = parse_netns)]
    pub netns: Option<String>,
    /// Interface name inside the namespace (default eth0, or the next free ethN).
    #[arg(
        long,
        value_name = "NAME",
        value_parser = parse_ifname,
        requires = "netns",
        conflicts_with = "wg_public_key"
    )]
    pub ifname: Option<String>,
    /// Address to take on the network (default: the next free one).
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    pub ip: Option<Ipv4Addr>,
    /// Connect a standard WireGuard peer with this public key (`wg pubkey`) instead of a
    /// namespace; prints its wg-quick configuration.
    #[arg(long, value_name = "KEY", value_parser = parse_wg_key)]
    pub wg_public_key: Option<String>,
    /// The WireGuard peer's fixed UDP address (IP:PORT), if it has one.
    #[arg(
        long,
        value_name = "IP:PORT",
        value_parser = parse_wg_endpoint,
        requires = "wg_public_key",
        conflicts_with = "netns"
    )]
    pub wg_endpoint: Option<SocketAddr>,
    /// Network name, ID or ID prefix.
    #[arg(value_name = "NETWORK")]
    pub network: String,
}

impl ConnectArgs {
    /// The request to send.
    pub fn request(&self) -> ConnectRequest {
        ConnectRequest {
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            ip: self.ip,
            wg_public_key: self.wg_public_key.clone(),
            wg_endpoint: self.wg_endpoint,
        }
    }
}

/// `swarm network disconnect`: exactly one of `--netns` and `--endpoint`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["netns", "endpoint"])
))]
pub struct DisconnectArgs {
    /// Network namespace to disconnect, by path on the daemon's host.
    #[arg(long, value_name = "PATH", value_parser = parse_netns)]
    pub netns: Option<String>,
    /// Endpoint ID to disconnect (e.g. a WireGuard peer's, from `swarm network inspect`).
    #[arg(long, value_name = "ID", value_parser = parse_endpoint_id)]
    pub endpoint: Option<String>,
    /// Network name, ID or ID prefix.
    #[arg(value_name = "NETWORK")]
    pub network: String,
}

/// Runs a `swarm network` verb.
pub async fn run(ctx: &mut Ctx<'_>, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create(a) => create(ctx, a).await,
        NetworkCommand::Ls(a) => ls(ctx, a).await,
        NetworkCommand::Inspect(a) => inspect(ctx, a).await,
        NetworkCommand::Rm(a) => rm(ctx, a).await,
        NetworkCommand::Connect(a) => connect(ctx, a).await,
        NetworkCommand::Disconnect(a) => disconnect(ctx, a).await,
    }
}

/// The route of a network as the user named it.
pub fn network_route(template: &str, reference: &str) -> String {
    path(template, &[("network", &encode_segment(reference))])
}

fn decode_view(route: &str, raw: &RawValue) -> Result<NetworkView> {
    serde_json::from_str(raw.get()).map_err(|e| CliError::Decode {
        route: route.to_string(),
        detail: e.to_string(),
    })
}

/// `swarm network create`: prints the new network's ID.
pub async fn create(ctx: &mut Ctx<'_>, args: CreateArgs) -> Result<()> {
    let spec = args.spec()?;
    let network: Network = ctx.client.post(routes::NETWORKS, &spec).await?;
    debug!(id = %network.id, subnet = %network.subnet, "network created");
    ctx.println(&network.id)
}

/// `swarm network ls`.
pub async fn ls(ctx: &mut Ctx<'_>, args: LsArgs) -> Result<()> {
    let raws: Vec<Box<RawValue>> = ctx.client.get(routes::NETWORKS).await?;
    let mut views = Vec::with_capacity(raws.len());
    for raw in raws {
        let view = decode_view(routes::NETWORKS, &raw)?;
        if passes(&view, &args.filter) {
            views.push((view, raw));
        }
    }
    views.sort_by(|a, b| network_order(&a.0, &b.0));
    if args.quiet {
        let ids: String = views
            .iter()
            .map(|(v, _)| format!("{}\n", network_id(&v.network.id, args.no_trunc)))
            .collect();
        return ctx.print(&ids);
    }
    match args.format {
        Format::Json => {
            let lines: String = views
                .iter()
                .map(|(_, raw)| reformat_json(raw.get(), None) + "\n")
                .collect();
            ctx.print(&lines)
        }
        Format::Human => {
            let views: Vec<NetworkView> = views.into_iter().map(|(v, _)| v).collect();
            ctx.print(&network_table(&views, args.no_trunc))
        }
    }
}

/// `swarm network inspect`: the networks found as one JSON array (docker's layout),
/// then a failure for each one that was not.
pub async fn inspect(ctx: &mut Ctx<'_>, args: InspectArgs) -> Result<()> {
    let mut found: Vec<Box<RawValue>> = Vec::new();
    let result = for_each(ctx, &args.networks, async |ctx, reference| {
        let raw: Box<RawValue> = ctx
            .client
            .get(&network_route(routes::NETWORK, reference))
            .await?;
        found.push(raw);
        Ok(())
    })
    .await;
    if let Err(e) = &result
        && is_fatal(e)
    {
        return result;
    }
    let array = format!(
        "[{}]",
        found.iter().map(|r| r.get()).collect::<Vec<_>>().join(",")
    );
    let indent = (args.format != Some(Format::Json)).then_some("    ");
    ctx.println(&reformat_json(&array, indent))?;
    result
}

/// `swarm network rm`: prints each network as it was named once removed.
pub async fn rm(ctx: &mut Ctx<'_>, args: RmArgs) -> Result<()> {
    let force = args.force;
    for_each(ctx, &args.networks, async |ctx, reference| {
        match ctx
            .client
            .delete(&network_route(routes::NETWORK, reference))
            .await
        {
            Ok(()) => ctx.println(reference),
            Err(CliError::Daemon { status: 404, .. }) if force => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
}

/// `swarm network connect`: prints the endpoint's address, and for a WireGuard peer the
/// wg-quick configuration that reaches the network.
pub async fn connect(ctx: &mut Ctx<'_>, args: ConnectArgs) -> Result<()> {
    let request = args.request();
    let route = network_route(routes::NETWORK_CONNECT, &args.network);
    let resp: ConnectResponse = ctx.client.post(&route, &request).await?;
    debug!(endpoint = %resp.endpoint.id, ip = %resp.endpoint.ip, "connected");
    let mut text = format!("{}\n", endpoint_address(&resp));
    if request.wg_public_key.is_some() {
        let config = wg_peer_config(&resp).ok_or_else(|| CliError::Decode {
            route: route.clone(),
            detail: "the answer to a WireGuard connection has no NodePublicKey".to_string(),
        })?;
        text.push('\n');
        text.push_str(&config);
    }
    ctx.print(&text)
}

/// `swarm network disconnect`: prints nothing on success, like docker.
pub async fn disconnect(ctx: &mut Ctx<'_>, args: DisconnectArgs) -> Result<()> {
    let request = DisconnectRequest {
        netns: args.netns,
        endpoint: args.endpoint,
    };
    let _: IgnoredAny = ctx
        .client
        .post(
            &network_route(routes::NETWORK_DISCONNECT, &args.network),
            &request,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::Network;

    fn view(id: &str, name: &str, labels: &[(&str, &str)]) -> NetworkView {
        NetworkView {
            network: Network {
                id: id.into(),
                version: 1,
                created_at: 0,
                updated_at: 0,
                spec: NetworkSpec {
                    name: name.into(),
                    driver: DRIVER_OVERLAY.into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                },
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                mtu: 1440,
            },
            endpoints: Vec::new(),
        }
    }

    fn f(s: &str) -> NetworkFilter {
        NetworkFilter::parse(s).unwrap()
    }

    fn create_args(name: &str) -> CreateArgs {
        CreateArgs {
            driver: DRIVER_OVERLAY.into(),
            subnet: None,
            gateway: None,
            attachable: false,
            allow_overlap: false,
            label: Vec::new(),
            name: name.into(),
        }
    }

    #[test]
    fn cidrs_are_checked_and_name_the_flag() {
        assert_eq!(
            parse_cidr("--subnet", "10.20.0.0/24").unwrap(),
            "10.20.0.0/24".parse::<Ipv4Net>().unwrap()
        );
        let e = parse_cidr("--subnet", "10.20.0.5/24").unwrap_err();
        assert_eq!(e.field, "--subnet");
        assert!(e.to_string().contains("did you mean 10.20.0.0/24"), "{e}");
        for (bad, words) in [
            ("10.20.0.0", "no prefix length"),
            ("fd00::/64", "IPv6"),
            ("10.20.0/24", "not an IPv4 address"),
            ("10.20.0.0/33", "not a prefix length"),
            ("10.20.0.0/x", "not a prefix length"),
            ("10.0.0.0/30", "out of range"),
            ("127.0.0.0/8", "not a unicast range"),
        ] {
            let e = parse_cidr("--default-addr-pool", bad).unwrap_err();
            assert_eq!(e.field, "--default-addr-pool", "{bad}");
            assert!(e.to_string().contains(words), "{bad}: {e}");
        }
    }

    #[test]
    fn single_values_are_checked() {
        assert_eq!(parse_driver("overlay").unwrap(), "overlay");
        assert_eq!(parse_driver("bridge").unwrap_err().field, "--driver");
        assert_eq!(parse_name("a b").unwrap_err().field, "NAME");
        assert_eq!(parse_gateway("10.0.0.x").unwrap_err().field, "--gateway");
        assert_eq!(parse_ip("fd00::1").unwrap_err().field, "--ip");
        assert_eq!(parse_label_arg("=v").unwrap_err().field, "--label");
        assert_eq!(
            parse_label_arg("zone=a").unwrap(),
            ("zone".to_string(), "a".to_string())
        );
        assert_eq!(parse_netns("/run/netns/blue").unwrap(), "/run/netns/blue");
        assert_eq!(parse_netns("blue").unwrap_err().field, "--netns");
        assert_eq!(parse_netns("").unwrap_err().field, "--netns");
        assert_eq!(parse_ifname("eth1").unwrap(), "eth1");
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert_eq!(parse_ifname(bad).unwrap_err().field, "--ifname", "{bad:?}");
        }
        assert!(parse_wg_key("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=").is_ok());
        assert_eq!(parse_wg_key("short").unwrap_err().field, "--wg-public-key");
        assert!(parse_wg_endpoint("198.51.100.7:51820").is_ok());
        assert!(parse_wg_endpoint("[2001:db8::7]:51820").is_ok());
        for bad in ["198.51.100.7", "host:51820", "198.51.100.7:0", "0.0.0.0:1"] {
            assert_eq!(
                parse_wg_endpoint(bad).unwrap_err().field,
                "--wg-endpoint",
                "{bad}"
            );
        }
        assert_eq!(parse_endpoint_id("").unwrap_err().field, "--endpoint");
    }

    #[test]
    fn create_builds_a_checked_spec() {
        let mut a = create_args("appnet");
        a.subnet = Some("10.20.0.0/24".parse().unwrap());
        a.gateway = Some("10.20.0.254".parse().unwrap());
        a.attachable = true;
        a.label = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        let spec = a.spec().unwrap();
        assert_eq!(spec.name, "appnet");
        assert_eq!(spec.driver, "overlay");
        assert_eq!(spec.gateway, Some("10.20.0.254".parse().unwrap()));
        assert!(spec.attachable && !spec.allow_overlap);
        // The last value of a repeated label wins, like docker.
        assert_eq!(spec.labels.get("a").map(String::as_str), Some("2"));

        a.gateway = Some("10.21.0.1".parse().unwrap());
        let e = a.spec().unwrap_err();
        assert_eq!(e.field, "--gateway");
        assert!(e.to_string().contains("10.20.0.1 and 10.20.0.254"), "{e}");
    }

    #[test]
    fn filters_parse() {
        assert_eq!(f("id=ab"), NetworkFilter::Id("ab".into()));
        assert_eq!(f("name=app"), NetworkFilter::Name("app".into()));
        assert_eq!(f("driver=overlay"), NetworkFilter::Driver("overlay".into()));
        assert_eq!(f("scope=swarm"), NetworkFilter::Scope("swarm".into()));
        assert_eq!(
            f("label=tier=db"),
            NetworkFilter::Label {
                key: "tier".into(),
                value: Some("db".into())
            }
        );
        for bad in ["name", "colour=red", "scope=planet", "label="] {
            assert_eq!(
                NetworkFilter::parse(bad).unwrap_err().field,
                "--filter",
                "{bad}"
            );
        }
    }

    #[test]
    fn filters_combine_like_docker() {
        let a = view("aaa111", "appnet", &[("tier", "web")]);
        let b = view("bbb222", "backend", &[("tier", "db")]);
        let c = view("ccc333", "cache", &[]);
        let pick = |filters: &[NetworkFilter]| -> Vec<&str> {
            [&a, &b, &c]
                .into_iter()
                .filter(|v| passes(v, filters))
                .map(|v| v.network.spec.name.as_str())
                .collect()
        };
        assert_eq!(pick(&[]), ["appnet", "backend", "cache"]);
        assert_eq!(pick(&[f("name=ack")]), ["backend"]);
        assert_eq!(pick(&[f("id=b22"), f("id=ccc")]), ["backend", "cache"]);
        assert_eq!(pick(&[f("driver=overlay")]), ["appnet", "backend", "cache"]);
        assert!(pick(&[f("driver=bridge")]).is_empty());
        assert!(pick(&[f("scope=local")]).is_empty());
        assert_eq!(pick(&[f("label=tier")]), ["appnet", "backend"]);
        assert_eq!(pick(&[f("label=tier=db"), f("name=a")]), ["backend"]);
    }

    #[test]
    fn connect_sends_what_was_given() {
        let a = ConnectArgs {
            netns: None,
            ifname: None,
            ip: Some("10.20.0.9".parse().unwrap()),
            wg_public_key: Some("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=".into()),
            wg_endpoint: Some("198.51.100.7:51820".parse().unwrap()),
            network: "appnet".into(),
        };
        let r = a.request();
        assert_eq!(r.netns, None);
        assert_eq!(r.ip, Some("10.20.0.9".parse().unwrap()));
        assert_eq!(r.wg_endpoint, Some("198.51.100.7:51820".parse().unwrap()));
    }

    #[test]
    fn network_references_are_encoded_in_routes() {
        assert_eq!(
            network_route(routes::NETWORK, "appnet"),
            "/v1/networks/appnet"
        );
        assert_eq!(
            network_route(routes::NETWORK_CONNECT, "a/b"),
            "/v1/networks/a%2Fb/connect"
        );
        assert_eq!(
            network_route(routes::NETWORK_DISCONNECT, "x y"),
            "/v1/networks/x%20y/disconnect"
        );
    }
}
