//! Resolver settings and the host's upstream resolvers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How a [`Resolver`](crate::Resolver) answers and forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    /// The host's resolvers, tried in order, for every name that is not the cluster's
    /// (see [`upstreams_from_resolv_conf`]). Empty: such names get SERVFAIL.
    pub upstreams: Vec<SocketAddr>,
    /// How long a forwarded query may take over all upstreams before the task gets SERVFAIL.
    pub upstream_timeout: Duration,
    /// TTL of the cluster's own records, in seconds: 0 (the default) means a change is seen by
    /// the very next query.
    pub ttl: u32,
    /// Forwarded answers kept, at most (0 turns the cache off).
    pub cache_size: usize,
    /// Threads that serve the endpoints, each a single-threaded event loop; endpoints (or the
    /// sockets of one endpoint, see [`Resolver::serve_sockets`](crate::Resolver::serve_sockets))
    /// are spread over them.
    pub threads: usize,
    /// Largest UDP answer sent, whatever a query's EDNS payload size offers (at least 512).
    pub max_udp_payload: u16,
    /// Forwarded queries waiting on an upstream at once, at most; past that, SERVFAIL.
    pub max_forwards: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_millis(1800),
            ttl: 0,
            cache_size: 10_000,
            threads: 1,
            max_udp_payload: 4096,
            max_forwards: 1024,
        }
    }
}

/// A setting a [`Resolver`](crate::Resolver) cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `threads` is out of range.
    #[error("threads is {0}; set it between 1 and 64")]
    Threads(usize),
    /// `upstream_timeout` is out of range.
    #[error("upstream_timeout is {0:?}; set it between 10 ms and 60 s")]
    UpstreamTimeout(Duration),
    /// `max_udp_payload` is too small.
    #[error("max_udp_payload is {0}; set it to 512 or more")]
    MaxUdpPayload(u16),
    /// `max_forwards` is zero.
    #[error("max_forwards is 0; set it to 1 or more (e.g. 1024)")]
    MaxForwards,
    /// An upstream is unusable.
    #[error(
        "upstreams[{index}] is {addr}, which cannot be sent to; give a unicast address and a port other than 0"
    )]
    Upstream {
        /// Its position in `upstreams`.
        index: usize,
        /// The address given.
        addr: SocketAddr,
    },
}

impl ResolverConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.threads) {
            return Err(ConfigError::Threads(self.threads));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.upstream_timeout) {
            return Err(ConfigError::UpstreamTimeout(self.upstream_timeout));
        }
        if self.max_udp_payload < 512 {
            return Err(ConfigError::MaxUdpPayload(self.max_udp_payload));
        }
        if self.max_forwards == 0 {
            return Err(ConfigError::MaxForwards);
        }
        for (index, &addr) in self.upstreams.iter().enumerate() {
            if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
                return Err(ConfigError::Upstream { index, addr });
            }
        }
        Ok(())
    }
}

/// The `nameserver` entries of a resolv.conf, on port 53, in order. Lines that are not
/// `nameserver ADDRESS` are skipped; an entry whose address cannot be read, or that names an
/// IPv6 zone (`fe80::1%eth0`), is skipped with a warning.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else {
            tracing::warn!(
                line,
                "resolv.conf: nameserver line without an address; skipped"
            );
            continue;
        };
        match addr.parse::<IpAddr>() {
            Ok(ip) => {
                let sa = SocketAddr::new(ip, 53);
                if !out.contains(&sa) {
                    out.push(sa);
                }
            }
            Err(_) => {
                tracing::warn!(
                    addr,
                    "resolv.conf: nameserver address is not an IP address (or has a zone); skipped"
                );
            }
        }
    }
    out
}
