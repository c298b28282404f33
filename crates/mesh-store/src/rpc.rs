//! The messages carried by a [`RaftTransport`](crate::RaftTransport), and their framing.
//!
//! Frame: one version byte, a big-endian u32 header length, the header (serde_json), then an
//! optional raw tail (snapshot data travels there, unencoded).

use std::collections::BTreeSet;

use openraft::error::Fatal;
use openraft::error::InstallSnapshotError;
use openraft::error::RaftError;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::MemberInfo;
use crate::StateMachine;
use crate::StoreError;
use crate::types::Cfg;
use crate::types::Request;
use crate::types::Response;
use crate::types::SnapshotMeta;
use crate::types::Vote;

const FRAME_VERSION: u8 = 1;

/// An RPC from one member to another.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum RpcRequest<S: StateMachine> {
    Append(AppendEntriesRequest<Cfg<S>>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<Cfg<S>>),
    /// A whole snapshot; its data is the frame's tail.
    FullSnapshot {
        vote: Vote,
        meta: SnapshotMeta,
    },
    /// A request a follower forwards to the leader.
    Forward(ForwardOp<S>),
}

/// An operation only the leader can carry out.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum ForwardOp<S: StateMachine> {
    Write(Request<S::Command>),
    AddLearner { id: u64, member: MemberInfo },
    ChangeVoters { voters: BTreeSet<u64> },
    RemoveMember { id: u64 },
}

impl<S: StateMachine> ForwardOp<S> {
    /// Whether the operation may be sent again while an earlier sending may still be carried
    /// out: true for application writes with a request id, which the state machine applies
    /// once however many times they reach the log.
    pub(crate) fn resendable(&self) -> bool {
        matches!(self, ForwardOp::Write(Request::Cmd { .. }))
    }
}

impl<S: StateMachine> Clone for ForwardOp<S> {
    fn clone(&self) -> Self {
        match self {
            ForwardOp::Write(r) => ForwardOp::Write(r.clone()),
            ForwardOp::AddLearner { id, member } => ForwardOp::AddLearner {
                id: *id,
                member: member.clone(),
            },
            ForwardOp::ChangeVoters { voters } => ForwardOp::ChangeVoters {
                voters: voters.clone(),
            },
            ForwardOp::RemoveMember { id } => ForwardOp::RemoveMember { id: *id },
        }
    }
}

/// What a leader-only operation produced.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum ForwardOutput<S: StateMachine> {
    /// The entry's log index and what applying it produced.
    Write {
        index: u64,
        response: Response<S::Output>,
    },
    Done,
}

/// The reply to an [`RpcRequest`].
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum RpcReply<S: StateMachine> {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    FullSnapshot(Result<SnapshotResponse<u64>, Fatal<u64>>),
    Forward(Result<ForwardOutput<S>, StoreError>),
    /// The request could not be handled at all (undecodable, store shut down).
    Failed(StoreError),
}

/// Frame a header and a raw tail.
pub(crate) fn encode<T: Serialize>(header: &T, tail: &[u8]) -> Result<Vec<u8>, StoreError> {
    let h = serde_json::to_vec(header).map_err(|e| StoreError::codec("raft rpc", e))?;
    let len = u32::try_from(h.len())
        .map_err(|_| StoreError::codec("raft rpc", "header larger than 4 GiB"))?;
    let mut out = Vec::with_capacity(5 + h.len() + tail.len());
    out.push(FRAME_VERSION);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(tail);
    Ok(out)
}

/// Split a frame into its decoded header and its raw tail.
pub(crate) fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<(T, &[u8]), StoreError> {
    let Some((&version, rest)) = frame.split_first() else {
        return Err(StoreError::codec("raft rpc", "empty frame"));
    };
    if version != FRAME_VERSION {
        return Err(StoreError::codec(
            "raft rpc",
            format!("unsupported frame version {version} (expected {FRAME_VERSION})"),
        ));
    }
    if rest.len() < 4 {
        return Err(StoreError::codec("raft rpc", "truncated frame"));
    }
    let (len, rest) = rest.split_at(4);
    let mut l = [0u8; 4];
    l.copy_from_slice(len);
    let len = u32::from_be_bytes(l) as usize;
    if rest.len() < len {
        return Err(StoreError::codec("raft rpc", "truncated frame header"));
    }
    let (h, tail) = rest.split_at(len);
    let header = serde_json::from_slice(h).map_err(|e| StoreError::codec("raft rpc", e))?;
    Ok((header, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip() {
        let f = encode(&vec![1u32, 2, 3], b"tail").unwrap();
        let (h, tail): (Vec<u32>, _) = decode(&f).unwrap();
        assert_eq!(h, vec![1, 2, 3]);
        assert_eq!(tail, b"tail");
        assert!(decode::<Vec<u32>>(&f[..3]).is_err());
        assert!(decode::<Vec<u32>>(&[]).is_err());
        let mut bad = f.clone();
        bad[0] = 9;
        assert!(decode::<Vec<u32>>(&bad).is_err());
    }
}
