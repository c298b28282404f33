//! meshd replicated store: openraft with an on-disk log and snapshots.
//!
//! A [`Store`] replicates the commands of an application [`StateMachine`] through Raft. The
//! Raft log, the vote and the committed pointer live in a redb database inside the store's
//! directory; snapshots of the state machine are files in the same directory, written
//! atomically. The network is abstracted by [`RaftTransport`], so meshd can carry the Raft RPCs
//! over its own QUIC connections; [`mem::MemNetwork`] is an in-process transport for tests.
//!
//! Layout of a store directory:
//!
//! | path | content |
//! | --- | --- |
//! | `raft.redb` | log entries, vote, committed and purged log ids |
//! | `snapshots/snapshot-<index>-<id>.snap` | the latest snapshot (older ones are deleted) |
//! | `force-new-cluster.state.json` | present only while a `force_new_cluster` is in progress |
//!
//! ```
//! use mesh_store::{MemberInfo, StateMachine, Store, StoreConfig, mem::MemNetwork};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Clone, Serialize, Deserialize)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Command = u64;
//!     type Output = u64;
//!     fn apply(&mut self, _index: u64, add: u64) -> u64 {
//!         self.0 += add;
//!         self.0
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_store::StoreError> {
//! # let tmp = tempfile::tempdir().map_err(|e| mesh_store::StoreError::Raft { reason: e.to_string() })?;
//! # let dir = tmp.path();
//! // meshd passes its QUIC transport; tests use the in-process one.
//! let net = MemNetwork::new();
//! let store = Store::<Counter>::open(dir, 1, StoreConfig::default(), net.transport(1)).await?;
//! net.register(1, store.rpc_handler()); // the transport's server side calls `handle_rpc`
//! store.bootstrap(MemberInfo::new("10.0.0.1:2377", "node-a")).await?;
//! assert_eq!(store.write(5).await?, 5);
//! assert_eq!(store.read(|c| c.0), 5);
//! store.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod log_store;
pub mod mem;
mod network;
mod rpc;
mod sm;
mod store;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Debug;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use config::StoreConfig;
pub use error::StoreError;
pub use error::TransportError;
pub use store::Store;

/// The application's deterministic state machine, replicated by a [`Store`].
///
/// The whole state is serialized (with serde_json) into snapshots, so keep it to what must be
/// replicated.
pub trait StateMachine:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// A command that changes the state; it travels through the Raft log.
    type Command: Serialize + DeserializeOwned + Clone + Send + Sync + Debug + 'static;
    /// What applying a command returns to the writer (and to subscribers).
    type Output: Serialize + DeserializeOwned + Clone + Send + Sync + Debug + 'static;
    /// Deterministic. `index` is the Raft log index of the entry. With
    /// [`StoreConfig::batch_writes`], the commands gathered into one entry are applied one after
    /// the other with the same index.
    fn apply(&mut self, index: u64, cmd: Self::Command) -> Self::Output;
}

/// A Raft member as the cluster knows it (openraft's `Node` type).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Control address of the member, `ip:port`.
    pub addr: String,
    /// The member's node id (the orchestrator's id, not the Raft id).
    pub name: String,
}

impl MemberInfo {
    /// A member reachable at `addr` whose node id is `name`.
    pub fn new(addr: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for MemberInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// Carries opaque Raft RPCs between members; meshd implements it on its QUIC transport.
pub trait RaftTransport: Send + Sync + 'static {
    /// Send an opaque Raft RPC to `target` at `member.addr`, return its opaque reply.
    ///
    /// The receiving side hands the payload to [`Store::handle_rpc`] (or an [`RpcHandler`]) and
    /// returns its reply unchanged. Give up after `timeout`.
    fn call(
        &self,
        target: u64,
        member: &MemberInfo,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>>;
}

/// The server side of the Raft RPCs, as a transport sees it. See [`Store::rpc_handler`].
pub trait RpcHandler: Send + Sync + 'static {
    /// Handle one opaque RPC payload and return the opaque reply (errors are encoded in it).
    fn handle_rpc(&self, payload: Vec<u8>) -> BoxFuture<'static, Vec<u8>>;
}

/// Something that happened to the applied state, in log order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoreEvent<O> {
    /// A command was applied at `index` and produced `output`.
    Applied {
        /// Raft log index of the entry (shared by the commands of one entry with
        /// [`StoreConfig::batch_writes`]).
        index: u64,
        /// What the state machine returned.
        output: O,
    },
    /// The whole state was replaced (a snapshot from the leader was installed, or a recovered
    /// state was restored by `force_new_cluster`); re-read everything.
    StateReplaced {
        /// Raft log index the new state corresponds to.
        index: u64,
    },
}

/// Role of a member in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRole {
    /// Accepts writes and replicates them.
    Leader,
    /// A voter following a leader.
    Follower,
    /// A voter running an election.
    Candidate,
    /// A non-voting member receiving the log.
    Learner,
    /// The Raft task has stopped.
    Shutdown,
}

impl fmt::Display for RaftRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RaftRole::Leader => "leader",
            RaftRole::Follower => "follower",
            RaftRole::Candidate => "candidate",
            RaftRole::Learner => "learner",
            RaftRole::Shutdown => "shutdown",
        };
        f.write_str(s)
    }
}

/// A point-in-time view of this member's Raft state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This member's Raft id.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Current role.
    pub role: RaftRole,
    /// Raft id of the leader this member knows of.
    pub leader_id: Option<u64>,
    /// The leader's member info, when known.
    pub leader: Option<MemberInfo>,
    /// Voting members (of the newest configuration when a joint change is in progress).
    pub voters: BTreeMap<u64, MemberInfo>,
    /// Non-voting members.
    pub learners: BTreeMap<u64, MemberInfo>,
    /// True while a joint-consensus membership change is in progress.
    pub joint: bool,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state machine.
    pub last_applied: Option<u64>,
    /// Index covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log has been purged.
    pub purged_index: Option<u64>,
    /// Leader: a majority acknowledged recently; others: a leader is known.
    pub has_quorum: bool,
    /// Leader only: milliseconds since a majority last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Leader only: per member, the highest log index known to be replicated to it.
    pub replication: BTreeMap<u64, Option<u64>>,
}
