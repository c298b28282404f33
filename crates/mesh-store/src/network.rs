//! openraft's network over a [`RaftTransport`], and a record of which peers answer.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use openraft::OptionalSend;
use openraft::RPCTypes;
use openraft::Snapshot;
use openraft::error::Fatal;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Timeout;
use openraft::error::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;

use crate::MemberInfo;
use crate::RaftTransport;
use crate::StateMachine;
use crate::StoreError;
use crate::TransportError;
use crate::rpc;
use crate::rpc::RpcReply;
use crate::rpc::RpcRequest;
use crate::types::Cfg;
use crate::types::Vote;

/// When each peer was last heard from (a reply to our RPC, or an RPC from it).
#[derive(Default)]
pub(crate) struct PeerHealth {
    last_ok: Mutex<HashMap<u64, Instant>>,
}

impl PeerHealth {
    pub(crate) fn heard_from(&self, id: u64) {
        let mut m = self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(id, Instant::now());
    }

    pub(crate) fn heard_within(&self, id: u64, window: Duration) -> bool {
        let m = self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&id).is_some_and(|t| t.elapsed() <= window)
    }
}

/// Creates a [`NetConn`] per target for openraft.
pub(crate) struct NetFactory<S> {
    pub(crate) me: u64,
    pub(crate) transport: Arc<dyn RaftTransport>,
    pub(crate) health: Arc<PeerHealth>,
    pub(crate) _p: PhantomData<fn() -> S>,
}

impl<S: StateMachine> RaftNetworkFactory<Cfg<S>> for NetFactory<S> {
    type Network = NetConn<S>;

    async fn new_client(&mut self, target: u64, node: &MemberInfo) -> Self::Network {
        NetConn {
            me: self.me,
            target,
            member: node.clone(),
            transport: self.transport.clone(),
            health: self.health.clone(),
            _p: PhantomData,
        }
    }
}

/// openraft's view of one peer.
pub(crate) struct NetConn<S> {
    me: u64,
    target: u64,
    member: MemberInfo,
    transport: Arc<dyn RaftTransport>,
    health: Arc<PeerHealth>,
    _p: PhantomData<fn() -> S>,
}

/// Why an RPC got no usable reply.
enum CallError {
    Transport(TransportError),
    Codec(StoreError),
    Remote(StoreError),
}

impl<S: StateMachine> NetConn<S> {
    async fn call(
        &self,
        req: &RpcRequest<S>,
        tail: &[u8],
        timeout: Duration,
    ) -> Result<RpcReply<S>, CallError> {
        let payload = rpc::encode(req, tail).map_err(CallError::Codec)?;
        let reply = self
            .transport
            .call(self.target, &self.member, payload, timeout)
            .await
            .map_err(CallError::Transport)?;
        self.health.heard_from(self.target);
        let (reply, _): (RpcReply<S>, _) = rpc::decode(&reply).map_err(CallError::Codec)?;
        match reply {
            RpcReply::Failed(e) => Err(CallError::Remote(e)),
            r => Ok(r),
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        action: RPCTypes,
        timeout: Duration,
    ) -> RPCError<u64, MemberInfo, E> {
        match e {
            CallError::Transport(TransportError::Timeout { .. }) => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            }),
            CallError::Transport(e @ TransportError::Unreachable { .. }) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            CallError::Remote(e @ StoreError::ShutDown) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            CallError::Transport(e) => RPCError::Network(NetworkError::new(&e)),
            CallError::Codec(e) | CallError::Remote(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn unexpected<E: std::error::Error>(&self, what: &str) -> RPCError<u64, MemberInfo, E> {
        let e = StoreError::codec("raft rpc reply", format!("unexpected reply to {what}"));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl<S: StateMachine> RaftNetwork<Cfg<S>> for NetConn<S> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Cfg<S>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MemberInfo, RaftError<u64>>> {
        let timeout = option.hard_ttl();
        match self.call(&RpcRequest::Append(rpc), &[], timeout).await {
            Ok(RpcReply::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(self.unexpected("append_entries")),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries, timeout)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Cfg<S>>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, MemberInfo, RaftError<u64, InstallSnapshotError>>,
    > {
        let timeout = option.hard_ttl();
        match self
            .call(&RpcRequest::InstallSnapshot(rpc), &[], timeout)
            .await
        {
            Ok(RpcReply::InstallSnapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(self.unexpected("install_snapshot")),
            Err(e) => Err(self.rpc_error(e, RPCTypes::InstallSnapshot, timeout)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MemberInfo, RaftError<u64>>> {
        let timeout = option.hard_ttl();
        match self.call(&RpcRequest::Vote(rpc), &[], timeout).await {
            Ok(RpcReply::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(self.unexpected("vote")),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote, timeout)),
        }
    }

    /// Send the whole snapshot in one RPC, its data as the raw tail of the frame.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<Cfg<S>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<Cfg<S>, Fatal<u64>>> {
        let timeout = option.hard_ttl();
        let meta = snapshot.meta.clone();
        let data = snapshot.snapshot.into_inner();
        tracing::info!(
            target_id = self.target,
            last_log = ?meta.last_log_id,
            bytes = data.len(),
            "sending snapshot"
        );
        let req = RpcRequest::FullSnapshot { vote, meta };
        let res = tokio::select! {
            r = self.call(&req, &data, timeout) => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match res {
            Ok(RpcReply::FullSnapshot(r)) => {
                r.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => {
                let e = StoreError::codec("raft rpc reply", "unexpected reply to full_snapshot");
                Err(StreamingError::Network(NetworkError::new(&e)))
            }
            Err(e) => Err(
                match self.rpc_error::<Fatal<u64>>(e, RPCTypes::InstallSnapshot, timeout) {
                    RPCError::Timeout(t) => StreamingError::Timeout(t),
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    RPCError::PayloadTooLarge(p) => StreamingError::Network(NetworkError::new(&p)),
                    RPCError::RemoteError(r) => StreamingError::RemoteError(r),
                },
            ),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
