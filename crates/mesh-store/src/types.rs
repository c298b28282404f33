//! The openraft type configuration for a given state machine, and the log entry payloads.

use std::cmp::Ordering;
use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::Serialize;

use crate::MemberInfo;
use crate::StateMachine;

/// openraft type configuration of a store over the state machine `S`.
pub(crate) struct Cfg<S>(PhantomData<fn() -> S>);

impl<S> Clone for Cfg<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Cfg<S> {}
impl<S> Default for Cfg<S> {
    fn default() -> Self {
        Cfg(PhantomData)
    }
}
impl<S> PartialEq for Cfg<S> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<S> Eq for Cfg<S> {}
impl<S> PartialOrd for Cfg<S> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<S> Ord for Cfg<S> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}
impl<S> fmt::Debug for Cfg<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cfg")
    }
}

impl<S: StateMachine> openraft::RaftTypeConfig for Cfg<S> {
    type D = Request<S::Command>;
    type R = Response<S::Output>;
    type NodeId = u64;
    type Node = MemberInfo;
    type Entry = openraft::Entry<Self>;
    type SnapshotData = Cursor<Vec<u8>>;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<Self>;
}

/// Identifies one [`Store::write`](crate::Store::write) call across the members it is sent to.
///
/// Random, so members never need to agree on how ids are made; travels as 32 hexadecimal
/// digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RequestId(pub(crate) u128);

impl RequestId {
    /// A fresh random id.
    pub(crate) fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for RequestId {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 32 {
            return Err(serde::de::Error::custom(format!(
                "request id `{s}` is not 32 hexadecimal digits"
            )));
        }
        u128::from_str_radix(&s, 16).map(RequestId).map_err(|e| {
            serde::de::Error::custom(format!("request id `{s}` is not hexadecimal: {e}"))
        })
    }
}

/// Payload of a normal log entry. The application only ever sees the commands of `Cmd` and
/// `App` entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(
    serialize = "C: Serialize",
    deserialize = "C: serde::de::DeserializeOwned"
))]
pub(crate) enum Request<C> {
    /// An application command, tagged with the id of the `write` that submitted it. The state
    /// machine applies a given id once (see `sm::RecentRequests`), however many times the
    /// entry was sent.
    Cmd {
        /// Id of the `write` call.
        id: RequestId,
        /// The application command.
        cmd: C,
    },
    /// An application command without a request id (entries written before request ids
    /// existed); applied every time it appears.
    App(C),
    /// Replace the whole state with this serialized state (written by `force_new_cluster`).
    Restore {
        /// The state, serialized with serde_json.
        state_json: String,
    },
    /// Application commands of several `write` calls gathered into one entry (see
    /// `StoreConfig::batch_writes`): applied in order, at the entry's index, each request id
    /// once as for `Cmd`.
    Batch(Vec<(RequestId, C)>),
}

/// What applying an entry produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(
    serialize = "O: Serialize",
    deserialize = "O: serde::de::DeserializeOwned"
))]
pub(crate) enum Response<O> {
    /// Output of an application command.
    App(O),
    /// Entries without an application output (blank, membership, restore).
    None,
    /// Outputs of the commands of a `Batch` entry, in order.
    Batch(Vec<O>),
}

pub(crate) type Entry<S> = openraft::Entry<Cfg<S>>;
pub(crate) type LogId = openraft::LogId<u64>;
pub(crate) type Vote = openraft::Vote<u64>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, MemberInfo>;
pub(crate) type StoredMembership = openraft::StoredMembership<u64, MemberInfo>;
pub(crate) type StorageError = openraft::StorageError<u64>;
pub(crate) type Raft<S> = openraft::Raft<Cfg<S>>;
pub(crate) type Metrics = openraft::RaftMetrics<u64, MemberInfo>;
