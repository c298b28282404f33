//! The cluster object: identity, root CA, join tokens and cluster-wide settings.

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Default interval between a node's heartbeats.
pub const DEFAULT_HEARTBEAT_PERIOD_MS: u64 = 500;
/// Default silence after which a node is marked down.
pub const DEFAULT_NODE_DOWN_AFTER_MS: u64 = 1_500;
/// Default validity of node certificates (90 days, like Swarm).
pub const DEFAULT_NODE_CERT_EXPIRY_MS: u64 = 90 * 24 * 3600 * 1000;

/// Heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DispatcherConfig {
    /// How often each node sends a heartbeat, in milliseconds.
    pub heartbeat_period_ms: u64,
    /// A node silent for this long is marked down, in milliseconds.
    pub node_down_after_ms: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            heartbeat_period_ms: DEFAULT_HEARTBEAT_PERIOD_MS,
            node_down_after_ms: DEFAULT_NODE_DOWN_AFTER_MS,
        }
    }
}

impl DispatcherConfig {
    /// Checks that the timings make sense.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(50..=60_000).contains(&self.heartbeat_period_ms) {
            return Err(ValidationError::new(
                "--heartbeat-period",
                format!("{} ms is out of range", self.heartbeat_period_ms),
                "use a value between 50ms and 60s",
            ));
        }
        if self.node_down_after_ms < 2 * self.heartbeat_period_ms {
            return Err(ValidationError::new(
                "--node-down-after",
                format!(
                    "{} ms is shorter than two heartbeat periods ({} ms)",
                    self.node_down_after_ms,
                    2 * self.heartbeat_period_ms
                ),
                "make it at least twice the heartbeat period",
            ));
        }
        Ok(())
    }
}

/// Cluster-wide settings chosen at `swarm init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterSpec {
    /// Heartbeats and down detection.
    pub dispatcher: DispatcherConfig,
    /// Validity of node certificates in milliseconds.
    pub node_cert_expiry_ms: u64,
    /// Pools overlay subnets are allocated from (empty: 10.0.0.0/8).
    #[serde(default)]
    pub default_addr_pool: Vec<ipnet::Ipv4Net>,
    /// Prefix length of allocated subnets (0: 24).
    #[serde(default)]
    pub default_addr_pool_mask_len: u8,
}

/// The cluster's root certificate authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootCa {
    /// Root certificate, PEM.
    pub cert_pem: String,
    /// Root private key, PEM. Replicated to managers only; never returned by the API.
    pub key_pem: String,
    /// Digest of the root certificate as it appears in join tokens.
    pub digest: String,
}

/// The current join tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinTokens {
    /// Token that joins a node as a worker.
    pub worker: String,
    /// Token that joins a node as a manager.
    pub manager: String,
}

/// The cluster object (exactly one per cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cluster {
    /// Cluster ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Raft index of the last change.
    pub version: u64,
    /// Creation time, Unix milliseconds.
    pub created_at: u64,
    /// Last change, Unix milliseconds.
    pub updated_at: u64,
    /// Settings.
    pub spec: ClusterSpec,
    /// Root CA (with its key: managers only).
    pub root_ca: RootCa,
    /// Join tokens.
    pub join_tokens: JoinTokens,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatcher_defaults_are_valid_and_bounds_hold() {
        let d = DispatcherConfig::default();
        d.validate().unwrap();
        assert!(d.node_down_after_ms <= 3_000);
        let bad = DispatcherConfig {
            heartbeat_period_ms: 1_000,
            node_down_after_ms: 1_500,
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field, "--node-down-after");
        let bad = DispatcherConfig {
            heartbeat_period_ms: 10,
            node_down_after_ms: 1_500,
        };
        assert_eq!(bad.validate().unwrap_err().field, "--heartbeat-period");
    }
}
