//! Tunables of a [`Store`](crate::Store).

use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::StoreError;

/// Timing and compaction settings of a store. The defaults suit managers on one LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Interval between leader heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout, in milliseconds.
    ///
    /// A follower that stops hearing from its leader first honours the leader's lease
    /// (`election_max_ms`), then waits a random election timeout, so a new leader is elected
    /// `election_max_ms + [election_min_ms, election_max_ms]` after the last heartbeat: 0.7 to
    /// 0.9 s with the defaults.
    pub election_min_ms: u64,
    /// Upper bound of the randomized election timeout, in milliseconds. A leader that has not
    /// heard from a majority for this long refuses writes.
    pub election_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_logs: u64,
    /// Log entries kept behind the snapshot (the rest is purged), so slightly lagging members
    /// catch up from the log instead of a snapshot.
    pub keep_logs: u64,
    /// Upper bound for one `write` (including forwarding to the leader).
    pub write_timeout: Duration,
    /// Upper bound for a membership change, including a new learner catching up.
    pub membership_timeout: Duration,
    /// Upper bound for sending one snapshot to a member.
    pub snapshot_timeout: Duration,
    /// Group commit of application writes on the leader: the writes that arrive while a few
    /// are already being replicated are gathered into one log entry, so that one log flush on
    /// every member carries them all. Each is still applied once, in order, and answered with
    /// its own output; the commands of one entry share its log index (the `index` given to
    /// [`StateMachine::apply`](crate::StateMachine::apply) and in
    /// [`StoreEvent::Applied`](crate::StoreEvent::Applied)), so an index no longer names a
    /// single command. A lone write is never delayed. Every member must run a version that
    /// reads such entries.
    pub batch_writes: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 250,
            election_max_ms: 450,
            snapshot_every_logs: 5000,
            keep_logs: 1000,
            write_timeout: Duration::from_secs(5),
            membership_timeout: Duration::from_secs(60),
            snapshot_timeout: Duration::from_secs(30),
            batch_writes: false,
        }
    }
}

impl StoreConfig {
    /// Check the settings; the error names the field and how to fix it.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |field: &'static str, reason: String| {
            Err(StoreError::InvalidConfig {
                field: field.to_string(),
                reason,
            })
        };
        if self.heartbeat_ms == 0 {
            return bad(
                "heartbeat_ms",
                "must be at least 1 (milliseconds); 100 suits a LAN".into(),
            );
        }
        if self.election_min_ms < self.heartbeat_ms.saturating_mul(2) {
            return bad(
                "election_min_ms",
                format!(
                    "must be at least twice heartbeat_ms ({} ms), got {}; use e.g. 4 x heartbeat_ms",
                    self.heartbeat_ms, self.election_min_ms
                ),
            );
        }
        if self.election_max_ms <= self.election_min_ms {
            return bad(
                "election_max_ms",
                format!(
                    "must be greater than election_min_ms ({}), got {}; use e.g. 2 x election_min_ms",
                    self.election_min_ms, self.election_max_ms
                ),
            );
        }
        if self.snapshot_every_logs == 0 {
            return bad(
                "snapshot_every_logs",
                "must be at least 1; 5000 is a good default".into(),
            );
        }
        for (field, d) in [
            ("write_timeout", self.write_timeout),
            ("membership_timeout", self.membership_timeout),
            ("snapshot_timeout", self.snapshot_timeout),
        ] {
            if d.is_zero() {
                return bad(field, "must be greater than zero".into());
            }
        }
        Ok(())
    }

    /// How long a leader may go without a majority's acknowledgement and still accept writes.
    pub(crate) fn quorum_lease(&self) -> Duration {
        Duration::from_millis(self.election_max_ms)
    }

    /// The longest a follower waits for a heartbeat before it may start an election; a
    /// leader not heard from for this long is presumed gone.
    pub(crate) fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_max_ms)
    }

    /// How long a write waits for a reachable leader before answering "no quorum": long
    /// enough for followers to notice a dead leader and elect a new one.
    pub(crate) fn leader_grace(&self) -> Duration {
        Duration::from_millis(2 * self.election_max_ms + 3 * self.heartbeat_ms)
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        Duration::from_millis((self.heartbeat_ms / 2).clamp(5, 50))
    }

    pub(crate) fn raft_config(&self) -> Result<openraft::Config, StoreError> {
        let cfg = openraft::Config {
            cluster_name: "meshd".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: u64::try_from(self.snapshot_timeout.as_millis())
                .unwrap_or(u64::MAX),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_logs),
            max_in_snapshot_log_to_keep: self.keep_logs,
            purge_batch_size: 1,
            ..Default::default()
        };
        cfg.validate().map_err(|e| StoreError::InvalidConfig {
            field: "store config".to_string(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        StoreConfig::default().validate().unwrap();
        StoreConfig::default().raft_config().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let cfg = StoreConfig {
            election_max_ms: 100,
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("election_max_ms"), "{err}");

        let cfg = StoreConfig {
            heartbeat_ms: 0,
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("heartbeat_ms")
        );

        let cfg = StoreConfig {
            write_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("write_timeout")
        );
    }
}
