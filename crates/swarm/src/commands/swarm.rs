//! `swarm init | join | join-token | leave | info`.

use clap::Args;
use ipnet::Ipv4Net;
use mesh_api::api::{
    Info, InitRequest, InitResponse, JoinRequest, JoinResponse, JoinTokenResponse, LeaveRequest,
    path, routes,
};
use mesh_api::network::{MAX_PREFIX, MIN_PREFIX};
use mesh_api::{DispatcherConfig, NodeRole, ValidationError};
use serde::de::IgnoredAny;
use tracing::debug;

use super::network::parse_cidr;
use super::{Ctx, Format, parse_format};
use crate::error::{CliError, Result};
use crate::format::{
    info_block, init_message, join_instructions, parse_duration_ms, reformat_json,
};

/// Parses a duration flag; zero is refused (clap adds the flag's name to the message).
fn positive_duration(s: &str) -> std::result::Result<u64, String> {
    match parse_duration_ms(s) {
        Ok(0) => Err(format!(
            "{s:?} is zero; give a positive duration, e.g. 500ms, 2s or 90d"
        )),
        Ok(ms) => Ok(ms),
        Err(e) => Err(e.to_string()),
    }
}

/// Prefix length of the subnets allocated from the address pools when
/// `--default-addr-pool-mask-length` is not given (the daemon's default).
pub const DEFAULT_POOL_MASK_LEN: u8 = 24;

/// Parses one `--default-addr-pool`: an IPv4 CIDR without host bits, /8 to /29.
fn parse_pool(s: &str) -> std::result::Result<Ipv4Net, ValidationError> {
    parse_cidr("--default-addr-pool", s)
}

/// Parses `--default-addr-pool-mask-length`: a prefix length from /8 to /29.
fn parse_mask_len(s: &str) -> std::result::Result<u8, ValidationError> {
    let s = s.trim();
    match s.trim_start_matches('/').parse::<u8>() {
        Ok(n) if (MIN_PREFIX..=MAX_PREFIX).contains(&n) => Ok(n),
        _ => Err(ValidationError::new(
            "--default-addr-pool-mask-length",
            format!("{s:?} is not a prefix length from {MIN_PREFIX} to {MAX_PREFIX}"),
            format!(
                "give the prefix length of the subnets networks get, from {MIN_PREFIX} to {MAX_PREFIX}, e.g. 24"
            ),
        )),
    }
}

/// Checks the address pools against the mask length (given, or the daemon's default)
/// and against each other.
fn check_pools(pools: &[Ipv4Net], mask: Option<u8>) -> std::result::Result<(), ValidationError> {
    let effective = mask.unwrap_or(DEFAULT_POOL_MASK_LEN);
    for pool in pools {
        if pool.prefix_len() <= effective {
            continue;
        }
        return Err(match mask {
            Some(m) => ValidationError::new(
                "--default-addr-pool-mask-length",
                format!("/{m} subnets do not fit in the pool {pool}"),
                format!(
                    "use a mask length of at least {} (and at most {MAX_PREFIX}), or a larger pool",
                    pool.prefix_len()
                ),
            ),
            None => ValidationError::new(
                "--default-addr-pool",
                format!(
                    "{pool} is smaller than the /{DEFAULT_POOL_MASK_LEN} subnets allocated by default"
                ),
                format!(
                    "give a pool of /{DEFAULT_POOL_MASK_LEN} or larger, or --default-addr-pool-mask-length {}",
                    pool.prefix_len()
                ),
            ),
        });
    }
    for (i, a) in pools.iter().enumerate() {
        for b in &pools[i + 1..] {
            if a.contains(b) || b.contains(a) {
                return Err(ValidationError::new(
                    "--default-addr-pool",
                    format!("{a} and {b} overlap"),
                    "give pools that do not overlap",
                ));
            }
        }
    }
    Ok(())
}

/// Checks that a token has the shape of a join token.
fn token_arg(s: &str) -> std::result::Result<String, ValidationError> {
    let t = s.trim();
    if t.starts_with("SWMTKN-") && t.len() > "SWMTKN-1-".len() {
        Ok(t.to_string())
    } else {
        Err(ValidationError::new(
            "--token",
            "this is not a join token",
            "copy the token printed by `swarm join-token worker` (or `manager`) on a manager; it starts with SWMTKN-1-",
        ))
    }
}

/// Parses the ROLE argument of `join-token`.
pub fn role_arg(s: &str) -> std::result::Result<NodeRole, ValidationError> {
    match s {
        "worker" => Ok(NodeRole::Worker),
        "manager" => Ok(NodeRole::Manager),
        other => Err(ValidationError::new(
            "ROLE",
            format!("unknown role {other:?}"),
            "use `worker` or `manager`, e.g. `swarm join-token worker`",
        )),
    }
}

/// `swarm init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Address other nodes reach this node at (IP or IP:PORT).
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Option<String>,
    /// Control-plane listen address (IP:PORT).
    #[arg(long, value_name = "ADDR")]
    pub listen_addr: Option<String>,
    /// Recover a single-manager cluster from this manager's state.
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Interval between node heartbeats (e.g. 500ms, 2s).
    #[arg(long, value_name = "DUR", value_parser = positive_duration)]
    pub heartbeat_period: Option<u64>,
    /// Silence after which a node is marked down (e.g. 2s).
    #[arg(long, value_name = "DUR", value_parser = positive_duration)]
    pub node_down_after: Option<u64>,
    /// Validity of node certificates (e.g. 90d, 2160h).
    #[arg(long, value_name = "DUR", value_parser = positive_duration)]
    pub cert_expiry: Option<u64>,
    /// Address pool overlay subnets are allocated from (CIDR, e.g. 10.20.0.0/16);
    /// repeatable. Default 10.0.0.0/8.
    #[arg(long, value_name = "CIDR", value_parser = parse_pool)]
    pub default_addr_pool: Vec<Ipv4Net>,
    /// Prefix length of the subnets allocated from the pools (8 to 29). Default 24.
    #[arg(long, value_name = "N", value_parser = parse_mask_len)]
    pub default_addr_pool_mask_length: Option<u8>,
}

impl InitArgs {
    /// Checks the timings that were given against each other, then builds the request.
    pub fn request(&self) -> Result<InitRequest, ValidationError> {
        let defaults = DispatcherConfig::default();
        let config = DispatcherConfig {
            heartbeat_period_ms: self
                .heartbeat_period
                .unwrap_or(defaults.heartbeat_period_ms),
            // Without --node-down-after the daemon picks one that fits the heartbeat.
            node_down_after_ms: self.node_down_after.unwrap_or(u64::MAX),
        };
        config.validate()?;
        check_pools(&self.default_addr_pool, self.default_addr_pool_mask_length)?;
        Ok(InitRequest {
            advertise_addr: self.advertise_addr.clone(),
            listen_addr: self.listen_addr.clone(),
            force_new_cluster: self.force_new_cluster,
            heartbeat_period_ms: self.heartbeat_period,
            node_down_after_ms: self.node_down_after,
            cert_expiry_ms: self.cert_expiry,
            default_addr_pool: self
                .default_addr_pool
                .iter()
                .map(ToString::to_string)
                .collect(),
            default_addr_pool_mask_len: self.default_addr_pool_mask_length,
        })
    }
}

/// `swarm init`.
pub async fn init(ctx: &mut Ctx<'_>, args: InitArgs) -> Result<()> {
    let request = args.request()?;
    let resp: InitResponse = ctx.client.post(routes::SWARM_INIT, &request).await?;
    debug!(node = %resp.node_id, cluster = %resp.cluster_id, "swarm initialized");
    ctx.print(&init_message(&resp))
}

/// `swarm join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Join token (SWMTKN-1-…), from `swarm join-token` on a manager.
    #[arg(long, value_name = "TOKEN", value_parser = token_arg)]
    pub token: String,
    /// Address other nodes reach this node at (IP or IP:PORT).
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Option<String>,
    /// Control-plane listen address (IP:PORT).
    #[arg(long, value_name = "ADDR")]
    pub listen_addr: Option<String>,
    /// A manager's control address.
    #[arg(value_name = "HOST[:PORT]")]
    pub remote_addr: String,
}

/// `swarm join`.
pub async fn join(ctx: &mut Ctx<'_>, args: JoinArgs) -> Result<()> {
    if args.remote_addr.trim().is_empty() {
        return Err(ValidationError::new(
            "HOST[:PORT]",
            "the manager address is empty",
            "give a manager's address, e.g. 192.0.2.1:2377",
        )
        .into());
    }
    let request = JoinRequest {
        token: args.token,
        remote_addr: args.remote_addr,
        advertise_addr: args.advertise_addr,
        listen_addr: args.listen_addr,
    };
    let resp: JoinResponse = ctx.client.post(routes::SWARM_JOIN, &request).await?;
    debug!(node = %resp.node_id, "joined");
    ctx.println(&format!("This node joined a swarm as a {}.", resp.role))
}

/// `swarm join-token`.
#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Only print the token.
    #[arg(short, long)]
    pub quiet: bool,
    /// Replace the token with a new one (nodes that already joined are not affected).
    #[arg(long)]
    pub rotate: bool,
    /// Which token: worker or manager.
    #[arg(value_name = "worker|manager", value_parser = role_arg)]
    pub role: NodeRole,
}

/// `swarm join-token`.
pub async fn join_token(ctx: &mut Ctx<'_>, args: JoinTokenArgs) -> Result<()> {
    let role = args.role.as_str();
    let resp: JoinTokenResponse = if args.rotate {
        let resp = ctx
            .client
            .post_empty(&path(routes::JOIN_TOKEN_ROTATE, &[("role", role)]))
            .await?;
        if !args.quiet {
            ctx.print(&format!("Successfully rotated {role} join token.\n\n"))?;
        }
        resp
    } else {
        ctx.client
            .get(&path(routes::JOIN_TOKEN, &[("role", role)]))
            .await?
    };
    if args.quiet {
        return ctx.println(&resp.token);
    }
    ctx.print(&join_instructions(
        args.role,
        &resp.token,
        &resp.manager_addr,
    ))
}

/// `swarm leave`.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Leave even if this node is a manager (the cluster may lose its quorum).
    #[arg(short, long)]
    pub force: bool,
}

/// `swarm leave`.
pub async fn leave(ctx: &mut Ctx<'_>, args: LeaveArgs) -> Result<()> {
    let _: IgnoredAny = ctx
        .client
        .post(routes::SWARM_LEAVE, &LeaveRequest { force: args.force })
        .await?;
    ctx.println("Node left the swarm.")
}

/// `swarm info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// `json` for the API's JSON; the human-readable block otherwise.
    #[arg(short, long, value_name = "FORMAT", value_parser = parse_format, default_value = "")]
    pub format: Format,
}

/// `swarm info`.
pub async fn info(ctx: &mut Ctx<'_>, args: InfoArgs) -> Result<()> {
    let raw: Box<serde_json::value::RawValue> = ctx.client.get(routes::INFO).await?;
    match args.format {
        Format::Json => ctx.println(&reformat_json(raw.get(), None)),
        Format::Human => {
            let info: Info = serde_json::from_str(raw.get()).map_err(|e| CliError::Decode {
                route: routes::INFO.to_string(),
                detail: e.to_string(),
            })?;
            ctx.print(&info_block(&info))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_args() -> InitArgs {
        InitArgs {
            advertise_addr: None,
            listen_addr: None,
            force_new_cluster: false,
            heartbeat_period: None,
            node_down_after: None,
            cert_expiry: None,
            default_addr_pool: Vec::new(),
            default_addr_pool_mask_length: None,
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn address_pools_are_checked_locally() {
        let mut a = init_args();
        a.default_addr_pool = vec![net("10.20.0.0/16"), net("172.30.0.0/16")];
        a.default_addr_pool_mask_length = Some(26);
        let r = a.request().unwrap();
        assert_eq!(r.default_addr_pool, ["10.20.0.0/16", "172.30.0.0/16"]);
        assert_eq!(r.default_addr_pool_mask_len, Some(26));

        // Subnets larger than the pool.
        a.default_addr_pool_mask_length = Some(12);
        let e = a.request().unwrap_err();
        assert_eq!(e.field, "--default-addr-pool-mask-length");
        assert!(e.to_string().contains("at least 16"), "{e}");
        // The default /24 does not fit in a /26 pool.
        a.default_addr_pool = vec![net("10.20.0.0/26")];
        a.default_addr_pool_mask_length = None;
        let e = a.request().unwrap_err();
        assert_eq!(e.field, "--default-addr-pool");
        assert!(
            e.to_string().contains("--default-addr-pool-mask-length 26"),
            "{e}"
        );
        a.default_addr_pool_mask_length = Some(26);
        assert!(a.request().is_ok());
        // Overlapping pools.
        a.default_addr_pool = vec![net("10.0.0.0/8"), net("10.20.0.0/16")];
        a.default_addr_pool_mask_length = None;
        let e = a.request().unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        // A mask length alone is fine (the default pool is a /8).
        a.default_addr_pool.clear();
        a.default_addr_pool_mask_length = Some(8);
        assert_eq!(a.request().unwrap().default_addr_pool_mask_len, Some(8));
    }

    #[test]
    fn pool_flags_parse() {
        assert_eq!(parse_pool("10.20.0.0/16").unwrap(), net("10.20.0.0/16"));
        let e = parse_pool("10.20.1.0/16").unwrap_err();
        assert_eq!(e.field, "--default-addr-pool");
        assert!(e.to_string().contains("did you mean 10.20.0.0/16"), "{e}");
        assert_eq!(parse_mask_len("24"), Ok(24));
        assert_eq!(parse_mask_len("/24"), Ok(24));
        for bad in ["7", "30", "x", "-1", ""] {
            assert_eq!(
                parse_mask_len(bad).unwrap_err().field,
                "--default-addr-pool-mask-length",
                "{bad}"
            );
        }
    }

    #[test]
    fn init_timings_are_checked_locally() {
        let mut a = init_args();
        assert_eq!(a.request().unwrap(), InitRequest::default());
        a.heartbeat_period = Some(10);
        assert_eq!(a.request().unwrap_err().field, "--heartbeat-period");
        a.heartbeat_period = Some(1_000);
        a.node_down_after = Some(1_500);
        assert_eq!(a.request().unwrap_err().field, "--node-down-after");
        a.node_down_after = Some(3_000);
        a.cert_expiry = Some(3_600_000);
        let r = a.request().unwrap();
        assert_eq!(r.heartbeat_period_ms, Some(1_000));
        assert_eq!(r.node_down_after_ms, Some(3_000));
        assert_eq!(r.cert_expiry_ms, Some(3_600_000));
    }

    #[test]
    fn duration_flags_refuse_zero_and_garbage() {
        assert_eq!(positive_duration("2s"), Ok(2_000));
        assert!(positive_duration("0s").unwrap_err().contains("positive"));
        assert!(
            positive_duration("2x")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn tokens_and_roles_are_checked() {
        assert!(token_arg("SWMTKN-1-abc-def").is_ok());
        assert_eq!(token_arg("hello").unwrap_err().field, "--token");
        assert_eq!(role_arg("manager"), Ok(NodeRole::Manager));
        let e = role_arg("boss").unwrap_err();
        assert!(e.to_string().contains("use `worker` or `manager`"), "{e}");
    }
}
