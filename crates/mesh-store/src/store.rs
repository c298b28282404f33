//! [`Store`]: the replicated store handle.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::io::Cursor;
use std::io::Write;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use futures::future::BoxFuture;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::Snapshot;
use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use tokio::sync::broadcast;

use crate::MemberInfo;
use crate::RaftRole;
use crate::RaftStatus;
use crate::RaftTransport;
use crate::RpcHandler;
use crate::StateMachine;
use crate::StoreConfig;
use crate::StoreError;
use crate::StoreEvent;
use crate::TransportError;
use crate::log_store::DB_FILE;
use crate::log_store::DbHandle;
use crate::log_store::LogStore;
use crate::network::NetFactory;
use crate::network::PeerHealth;
use crate::rpc;
use crate::rpc::ForwardOp;
use crate::rpc::ForwardOutput;
use crate::rpc::RpcReply;
use crate::rpc::RpcRequest;
use crate::sm::SmShared;
use crate::sm::SmStore;
use crate::types::Metrics;
use crate::types::Raft;
use crate::types::Request;
use crate::types::RequestId;
use crate::types::Response;

/// Application writes proposed to the Raft core at once; more wait in the store.
///
/// openraft's core takes in up to a thousand proposals, each with its own log flush, before it
/// looks at the followers' replies and its timers again; bounding the proposals keeps that
/// pause short under a flood of writes, so the leader's quorum acknowledgements stay fresh.
/// Writes are serialised by the core anyway: this costs no throughput.
const MAX_PROPOSALS: usize = 64;

/// With `batch_writes`: application writes proposed to the Raft core at once. The writes that
/// arrive meanwhile wait in the store and go together, as one entry, into the next free slot.
const BATCHED_PROPOSALS: usize = 2;

/// With `batch_writes`: most writes gathered into one entry.
const MAX_BATCH: usize = 1024;

/// A write waiting to be proposed with others in one entry.
struct QueuedWrite<S: StateMachine> {
    id: RequestId,
    cmd: S::Command,
    reply: tokio::sync::oneshot::Sender<Result<ForwardOutput<S>, StoreError>>,
}

/// Opens a store's raft database, given the database file's path.
type OpenDb = Box<dyn FnOnce(&Path) -> Result<DbHandle, StoreError> + Send>;

/// Left in the store directory while `force_new_cluster` runs: the recovered state.
const RECOVERY_FILE: &str = "force-new-cluster.state.json";

/// A replicated store of the state machine `S`. Cheap to clone.
pub struct Store<S: StateMachine> {
    inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for Store<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S: StateMachine> {
    id: u64,
    dir: PathBuf,
    cfg: StoreConfig,
    raft: Raft<S>,
    sm: Arc<SmShared<S>>,
    log: LogStore<S>,
    transport: Arc<dyn RaftTransport>,
    health: Arc<PeerHealth>,
    shut_down: AtomicBool,
    /// Set once the store is known to be part of a cluster (metrics can lag behind).
    initialized: AtomicBool,
    /// Admits application writes into the Raft core, [`MAX_PROPOSALS`] at a time
    /// ([`BATCHED_PROPOSALS`] with `batch_writes`).
    proposals: Arc<tokio::sync::Semaphore>,
    /// With `batch_writes`: writes waiting for a proposal slot, oldest first.
    queued: std::sync::Mutex<std::collections::VecDeque<QueuedWrite<S>>>,
}

impl<S: StateMachine> Drop for Inner<S> {
    fn drop(&mut self) {
        if self.shut_down.load(Ordering::SeqCst) {
            return;
        }
        // Dropped without `shutdown()`: stop Raft in the background if a runtime is there.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let raft = self.raft.clone();
            let log = self.log.clone();
            handle.spawn(async move {
                let _ = raft.shutdown().await;
                let _ = tokio::task::spawn_blocking(move || log.close()).await;
            });
        }
    }
}

/// Why forwarding to the leader failed.
enum Forward {
    /// The leader did not receive the request (or refused it unseen): safe to retry.
    NotDelivered(StoreError),
    /// The request or its reply was lost: the leader may or may not have carried it out.
    Lost(StoreError),
    /// The leader could not handle the request at all; sending it again would not help.
    Rejected(StoreError),
}

/// Resolves when the Raft metrics change; never, once they can no longer change.
async fn metrics_changed(rx: &mut tokio::sync::watch::Receiver<Metrics>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// When an operation must be finished, and the budget it was given.
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    fn new(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
        }
    }

    fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    fn timeout(&self) -> StoreError {
        StoreError::Timeout { after: self.budget }
    }
}

fn validate_member(field: &str, member: &MemberInfo) -> Result<(), StoreError> {
    if member.addr.parse::<SocketAddr>().is_err() {
        return Err(StoreError::InvalidArgument {
            field: format!("{field}.addr"),
            reason: format!(
                "`{}` is not an ip:port address; give the member's control address, e.g. 10.0.0.1:2377",
                member.addr
            ),
        });
    }
    if member.name.trim().is_empty() {
        return Err(StoreError::InvalidArgument {
            field: format!("{field}.name"),
            reason: "is empty; give the member's node id".to_string(),
        });
    }
    Ok(())
}

fn map_write_error(e: RaftError<u64, ClientWriteError<u64, MemberInfo>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => StoreError::Membership {
            reason: c.to_string(),
        },
        RaftError::Fatal(f) => map_fatal(f),
    }
}

fn map_fatal(f: Fatal<u64>) -> StoreError {
    match f {
        Fatal::Stopped => StoreError::ShutDown,
        other => StoreError::raft(other),
    }
}

/// The membership change that removes member `id`: `None` if it is not a member.
fn removal_change(
    m: &Metrics,
    id: u64,
) -> Result<Option<ChangeMembers<u64, MemberInfo>>, StoreError> {
    let membership = m.membership_config.membership();
    if membership.voter_ids().any(|v| v == id) {
        if membership.voter_ids().all(|v| v == id) {
            return Err(StoreError::InvalidArgument {
                field: "id".to_string(),
                reason: format!("{id} is the last voter; a cluster needs at least one"),
            });
        }
        Ok(Some(ChangeMembers::RemoveVoters(BTreeSet::from([id]))))
    } else if membership.get_node(&id).is_some() {
        Ok(Some(ChangeMembers::RemoveNodes(BTreeSet::from([id]))))
    } else {
        Ok(None)
    }
}

fn is_initialized(m: &Metrics) -> bool {
    m.membership_config.membership().nodes().next().is_some() || m.last_log_index.is_some()
}

/// openraft decides on a snapshot when the commit index moves, and skips the decision while a
/// snapshot is being built: writes that end during a build would leave the log uncompacted
/// until the next write. Each time a snapshot is done, ask again if the log has grown past
/// `every` entries since. Ends when Raft stops.
fn spawn_snapshot_catch_up<S: StateMachine>(raft: Raft<S>, every: u64) {
    tokio::spawn(async move {
        let mut rx = raft.data_metrics();
        let mut done = rx.borrow_and_update().snapshot;
        while rx.changed().await.is_ok() {
            let (snapshot, applied) = {
                let m = rx.borrow_and_update();
                (m.snapshot, m.last_applied)
            };
            if snapshot == done {
                continue;
            }
            done = snapshot;
            let next = |l: Option<crate::types::LogId>| l.map_or(0, |l| l.index + 1);
            if next(applied).saturating_sub(next(snapshot)) >= every {
                tracing::debug!(
                    ?snapshot,
                    ?applied,
                    "log grew during the snapshot; another one"
                );
                if raft.trigger().snapshot().await.is_err() {
                    return;
                }
            }
        }
    });
}

fn blocking_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::raft(format!("storage task failed: {e}"))
}

impl<S: StateMachine> Store<S> {
    /// Open the store in `dir` (created if missing) as Raft member `raft_id`.
    ///
    /// Resumes from disk when the directory holds a store: vote, log and snapshot are loaded
    /// and the state is rebuilt from the snapshot plus the committed log.
    pub async fn open(
        dir: &Path,
        raft_id: u64,
        cfg: StoreConfig,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Self, StoreError> {
        let recovery = dir.join(RECOVERY_FILE);
        if recovery.exists() {
            return Err(StoreError::InvalidArgument {
                field: "dir".to_string(),
                reason: format!(
                    "an interrupted force_new_cluster left {}; run force_new_cluster again to finish the recovery",
                    recovery.display()
                ),
            });
        }
        Self::open_unchecked(dir, raft_id, cfg, transport).await
    }

    async fn open_unchecked(
        dir: &Path,
        raft_id: u64,
        cfg: StoreConfig,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Self, StoreError> {
        Self::open_with(dir, raft_id, cfg, transport, Box::new(DbHandle::open)).await
    }

    /// Open the store, its database opened by `open_db` (given the database file's path).
    async fn open_with(
        dir: &Path,
        raft_id: u64,
        cfg: StoreConfig,
        transport: Arc<dyn RaftTransport>,
        open_db: OpenDb,
    ) -> Result<Self, StoreError> {
        cfg.validate()?;
        let raft_cfg = Arc::new(cfg.raft_config()?);
        let dir = dir.to_path_buf();
        let d = dir.clone();
        let (log, sm, has_state) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            std::fs::create_dir_all(&d).map_err(|e| {
                StoreError::storage(&d, format!("cannot create the store directory: {e}"))
            })?;
            let db = Arc::new(open_db(&d.join(DB_FILE))?);
            if let Err(e) = db.claim_raft_id(raft_id) {
                db.close();
                return Err(e);
            }
            let loaded = db.has_raft_state().and_then(|has_state| {
                let sm = SmShared::<S>::load(&d)?;
                let log = LogStore::<S>::open(db.clone(), raft_id)?;
                Ok((log, sm, has_state))
            });
            if loaded.is_err() {
                db.close();
            }
            loaded
        })
        .await
        .map_err(blocking_err)??;
        let sm = Arc::new(sm);
        let health = Arc::new(PeerHealth::default());
        let net = NetFactory::<S> {
            me: raft_id,
            transport: transport.clone(),
            health: health.clone(),
            _p: PhantomData,
        };
        let raft = match Raft::<S>::new(
            raft_id,
            raft_cfg,
            net,
            log.clone(),
            SmStore { shared: sm.clone() },
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || log.close()).await;
                return Err(StoreError::raft(format!("cannot start raft: {e}")));
            }
        };
        spawn_snapshot_catch_up(raft.clone(), cfg.snapshot_every_logs);
        let proposals = if cfg.batch_writes {
            BATCHED_PROPOSALS
        } else {
            MAX_PROPOSALS
        };
        tracing::info!(raft_id, dir = %dir.display(), "store opened");
        Ok(Self {
            inner: Arc::new(Inner {
                id: raft_id,
                dir,
                cfg,
                raft,
                sm,
                log,
                transport,
                health,
                shut_down: AtomicBool::new(false),
                initialized: AtomicBool::new(has_state),
                proposals: Arc::new(tokio::sync::Semaphore::new(proposals)),
                queued: Default::default(),
            }),
        })
    }

    /// Make this store the first manager: a single-member cluster with `me` as its voter.
    ///
    /// Does nothing if the store is already part of a cluster.
    pub async fn bootstrap(&self, me: MemberInfo) -> Result<(), StoreError> {
        validate_member("me", &me)?;
        self.ensure_running()?;
        let mut members = BTreeMap::new();
        members.insert(self.inner.id, me);
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                self.inner.initialized.store(true, Ordering::SeqCst);
                tracing::info!(raft_id = self.inner.id, "cluster bootstrapped");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                self.inner.initialized.store(true, Ordering::SeqCst);
                tracing::info!(
                    raft_id = self.inner.id,
                    "already part of a cluster; bootstrap skipped"
                );
                Ok(())
            }
            Err(RaftError::APIError(e)) => Err(StoreError::Membership {
                reason: e.to_string(),
            }),
            Err(RaftError::Fatal(f)) => Err(map_fatal(f)),
        }
    }

    /// Whether this store belongs to a cluster (bootstrapped, or added by a leader).
    pub fn is_initialized(&self) -> bool {
        self.initialized_now(&self.inner.raft.metrics().borrow())
    }

    /// This member's Raft id.
    pub fn raft_id(&self) -> u64 {
        self.inner.id
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Apply `cmd` through Raft and return the state machine's output.
    ///
    /// Works on any member: the leader applies; a follower forwards to the leader over the
    /// transport and returns the leader's answer. Without a majority it fails fast with
    /// [`StoreError::NoQuorum`]; the whole call is bounded by `write_timeout`.
    ///
    /// On a follower it returns once the entry is applied locally as well (read-your-writes),
    /// unless that takes longer than an election would.
    ///
    /// Forwarding follows leadership: a follower sends the write only to a leader it heard from
    /// within the election timeout (otherwise it waits for a new leader), and abandons a
    /// forwarded write as soon as that leader is deposed or goes silent (a dead peer may never
    /// answer), then sends it to the new leader or applies it itself if it now leads. A write
    /// whose outcome is unknown (reply lost) is sent again the same way, until `write_timeout`.
    ///
    /// # Commands are applied once per call, and should be idempotent anyway
    ///
    /// An abandoned forward may still be committed by the old leader (a Raft leader's log
    /// survives into the next term), so the same write can reach the log twice. Each call
    /// therefore carries a random request id, and the replicated state remembers the ids and
    /// outputs of the last 10,000 applied writes (in snapshots too, so every member, restarted
    /// or not, decides alike): a write arriving again is not applied again and its first output
    /// is returned. Within one call a command is thus applied exactly once.
    ///
    /// Across calls nothing is deduplicated: a call that failed with `NoQuorum`, `Timeout` or
    /// `ForwardFailed` after the leader logged the command may still be applied later, once a
    /// majority is back (as with any Raft store), and calling `write` again with the same
    /// command then applies it twice. Make commands idempotent (applying the same command twice
    /// leaves the same state as applying it once), so that such retries are harmless.
    pub async fn write(&self, cmd: S::Command) -> Result<S::Output, StoreError> {
        let req = Request::Cmd {
            id: RequestId::random(),
            cmd,
        };
        match self
            .submit(ForwardOp::Write(req), self.inner.cfg.write_timeout)
            .await?
        {
            ForwardOutput::Write {
                response: Response::App(out),
                ..
            } => Ok(out),
            _ => Err(StoreError::raft(
                "the leader returned no output for an application command",
            )),
        }
    }

    /// Local read of the applied state (may be slightly stale on followers; always served,
    /// even without quorum). Keep `f` short: applying waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        self.inner.sm.read_data(|d| f(&d.state))
    }

    /// Every applied entry, in order: (index, output); and an event whenever the whole state is
    /// replaced. A receiver that falls behind gets `Lagged` and should re-read the state.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent<S::Output>> {
        self.inner.sm.events.subscribe()
    }

    /// Add a non-voting member and wait until it has caught up with the log as of its addition
    /// (bounded by `membership_timeout`).
    pub async fn add_learner(&self, id: u64, member: MemberInfo) -> Result<(), StoreError> {
        validate_member("member", &member)?;
        self.submit(
            ForwardOp::AddLearner { id, member },
            self.inner.cfg.membership_timeout,
        )
        .await
        .map(|_| ())
    }

    /// Make `voters` the set of voting members (joint consensus). Each must already be a
    /// member (added with [`Store::add_learner`]); voters left out are removed from the cluster.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), StoreError> {
        if voters.is_empty() {
            return Err(StoreError::InvalidArgument {
                field: "voters".to_string(),
                reason: "is empty; a cluster needs at least one voter".to_string(),
            });
        }
        self.submit(
            ForwardOp::ChangeVoters { voters },
            self.inner.cfg.membership_timeout,
        )
        .await
        .map(|_| ())
    }

    /// Remove a member (voter or learner) from the cluster. Removing a non-member is a no-op.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        self.submit(
            ForwardOp::RemoveMember { id },
            self.inner.cfg.membership_timeout,
        )
        .await
        .map(|_| ())
    }

    /// A point-in-time view of this member's Raft state.
    pub fn status(&self) -> RaftStatus {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow();
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
        let mut voters = BTreeMap::new();
        let mut learners = BTreeMap::new();
        for (id, node) in membership.nodes() {
            if voter_ids.contains(id) {
                voters.insert(*id, node.clone());
            } else {
                learners.insert(*id, node.clone());
            }
        }
        let role = match m.state {
            ServerState::Leader => RaftRole::Leader,
            ServerState::Follower => RaftRole::Follower,
            ServerState::Candidate => RaftRole::Candidate,
            ServerState::Learner => RaftRole::Learner,
            ServerState::Shutdown => RaftRole::Shutdown,
        };
        let role = if self.inner.shut_down.load(Ordering::SeqCst) {
            RaftRole::Shutdown
        } else {
            role
        };
        let has_quorum = match role {
            RaftRole::Leader => m
                .millis_since_quorum_ack
                .is_some_and(|ms| Duration::from_millis(ms) <= self.inner.cfg.quorum_lease()),
            RaftRole::Follower | RaftRole::Learner => {
                m.current_leader.is_some_and(|l| l != self.inner.id)
            }
            RaftRole::Candidate | RaftRole::Shutdown => false,
        };
        let replication = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        RaftStatus {
            id: self.inner.id,
            term: m.current_term,
            role,
            leader_id: m.current_leader,
            leader: m
                .current_leader
                .and_then(|l| membership.get_node(&l).cloned()),
            voters,
            learners,
            joint: membership.get_joint_config().len() > 1,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            has_quorum,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            replication,
        }
    }

    /// Server side of the transport: dispatch an RPC (append, vote, snapshot, forwarded
    /// request) and encode the reply; errors are encoded in the reply too.
    pub async fn handle_rpc(&self, payload: Vec<u8>) -> Vec<u8> {
        let reply = self.dispatch(&payload).await;
        match rpc::encode(&reply, &[]) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a raft rpc reply");
                rpc::encode(&RpcReply::<S>::Failed(e), &[]).unwrap_or_default()
            }
        }
    }

    /// An [`RpcHandler`] for transports that does not keep the store alive: once the store is
    /// dropped it answers "shut down".
    pub fn rpc_handler(&self) -> Arc<dyn RpcHandler> {
        Arc::new(WeakHandler {
            inner: Arc::downgrade(&self.inner),
        })
    }

    /// Stop Raft and close the database. Later calls fail with [`StoreError::ShutDown`].
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let res = self.inner.raft.shutdown().await;
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || log.close())
            .await
            .map_err(blocking_err)?;
        tracing::info!(raft_id = self.inner.id, "store shut down");
        res.map_err(|e| StoreError::raft(format!("raft task ended abnormally: {e}")))
    }

    /// Recovery: rebuild a single-member cluster from this member's state (like `docker swarm
    /// init --force-new-cluster`).
    ///
    /// Reads the state from disk (snapshot plus every log entry, so that writes a majority
    /// acknowledged are kept), wipes the Raft log, vote and snapshots, starts a fresh
    /// single-member Raft with the same id and writes the recovered state through Raft as its
    /// first entry, so every member added later receives it. Log indexes restart from zero;
    /// subscribers see a [`StoreEvent::StateReplaced`]. The store in `dir` must not be open.
    pub async fn force_new_cluster(
        dir: &Path,
        raft_id: u64,
        me: MemberInfo,
        cfg: StoreConfig,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Self, StoreError> {
        cfg.validate()?;
        validate_member("me", &me)?;
        let d = dir.to_path_buf();
        let state_json = tokio::task::spawn_blocking(move || -> Result<String, StoreError> {
            let recovery = d.join(RECOVERY_FILE);
            let state_json = if recovery.exists() {
                // An earlier force_new_cluster stopped before its restore entry committed.
                tracing::warn!(file = %recovery.display(), "resuming an interrupted force-new-cluster");
                std::fs::read_to_string(&recovery)
                    .map_err(|e| StoreError::storage(&recovery, format!("cannot read: {e}")))?
            } else {
                let db_path = d.join(DB_FILE);
                if !db_path.exists() && !d.join(crate::sm::SNAP_DIR).exists() {
                    return Err(StoreError::InvalidArgument {
                        field: "dir".to_string(),
                        reason: format!(
                            "no store found at {}; force_new_cluster recovers the state of an existing manager, give its store directory",
                            d.display()
                        ),
                    });
                }
                if db_path.exists() {
                    let db = DbHandle::open(&db_path)?;
                    let claim = db.claim_raft_id(raft_id);
                    db.close();
                    claim?;
                }
                let state: S = crate::sm::recover_state(&d)?;
                let json = serde_json::to_string(&state).map_err(|e| StoreError::codec("recovered state", e))?;
                write_atomic(&recovery, json.as_bytes())?;
                json
            };
            let db_path = d.join(DB_FILE);
            if db_path.exists() {
                std::fs::remove_file(&db_path)
                    .map_err(|e| StoreError::storage(&db_path, format!("cannot remove: {e}")))?;
            }
            crate::sm::wipe_snapshots(&d)?;
            Ok(state_json)
        })
        .await
        .map_err(blocking_err)??;

        let store = Self::open_unchecked(dir, raft_id, cfg, transport).await?;
        store.bootstrap(me).await?;
        let budget = store.inner.cfg.write_timeout;
        store
            .submit(ForwardOp::Write(Request::Restore { state_json }), budget)
            .await?;
        let recovery = dir.join(RECOVERY_FILE);
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            std::fs::remove_file(&recovery)
                .map_err(|e| StoreError::storage(&recovery, format!("cannot remove: {e}")))?;
            if let Some(parent) = recovery.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        })
        .await
        .map_err(blocking_err)??;
        tracing::warn!(
            raft_id,
            "new single-member cluster formed from the local state"
        );
        Ok(store)
    }

    // ----- internals -----

    fn initialized_now(&self, m: &Metrics) -> bool {
        if self.inner.initialized.load(Ordering::SeqCst) {
            return true;
        }
        let yes = is_initialized(m);
        if yes {
            self.inner.initialized.store(true, Ordering::SeqCst);
        }
        yes
    }

    fn ensure_running(&self) -> Result<(), StoreError> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(StoreError::ShutDown);
        }
        Ok(())
    }

    /// The error for a write refused for lack of a majority, counting whom we heard from.
    fn no_quorum(&self, m: &Metrics) -> StoreError {
        let window = if m.state == ServerState::Leader {
            self.inner.cfg.quorum_lease()
        } else {
            Duration::from_millis(self.inner.cfg.election_max_ms)
        };
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let reachable = voters
            .iter()
            .filter(|v| **v == self.inner.id || self.inner.health.heard_within(**v, window))
            .count();
        StoreError::NoQuorum {
            reachable,
            voters: voters.len(),
        }
    }

    /// Whether a majority of voters was heard from lately (within two election timeouts, so
    /// that an election round or two among them counts).
    fn majority_heard(&self, m: &Metrics) -> bool {
        self.majority_heard_within(m, Duration::from_millis(2 * self.inner.cfg.election_max_ms))
    }

    /// Whether a majority of voters (this member included) was heard from within `window`.
    fn majority_heard_within(&self, m: &Metrics, window: Duration) -> bool {
        let membership = m.membership_config.membership();
        let (mut voters, mut heard) = (0usize, 0usize);
        for v in membership.voter_ids() {
            voters += 1;
            if v == self.inner.id || self.inner.health.heard_within(v, window) {
                heard += 1;
            }
        }
        heard * 2 > voters
    }

    /// Leader lease: a leader that has not heard from a majority recently refuses writes.
    ///
    /// openraft's acknowledgement time lags while its core is busy (it takes in the replies of
    /// the followers only between batches of proposals), so an old acknowledgement counts as
    /// lost only if the transport has not heard from a majority within the lease either.
    fn check_lease(&self, m: &Metrics) -> Result<(), StoreError> {
        let lease = self.inner.cfg.quorum_lease();
        match m.millis_since_quorum_ack {
            Some(ms)
                if Duration::from_millis(ms) > lease && !self.majority_heard_within(m, lease) =>
            {
                Err(self.no_quorum(m))
            }
            _ => Ok(()),
        }
    }

    /// Run a leader-only operation wherever the leader is, retrying across leader changes.
    ///
    /// Forwarding follows leadership: the operation goes only to a leader heard from within
    /// the election timeout, and a forwarded write ([`ForwardOp::resendable`]) is abandoned as
    /// soon as that leader is deposed or goes quiet, then sent to the new leader (or applied
    /// here if this member now leads).
    async fn submit(
        &self,
        op: ForwardOp<S>,
        budget: Duration,
    ) -> Result<ForwardOutput<S>, StoreError> {
        let start = Instant::now();
        let deadline = Deadline::new(budget);
        let cfg = &self.inner.cfg;
        let resendable = op.resendable();
        let mut rx = self.inner.raft.metrics();
        let mut last_err: Option<StoreError> = None;
        loop {
            self.ensure_running()?;
            // Only what is needed, read under the borrow (never held across an await).
            let (leader, term, leader_member) = {
                let m = rx.borrow_and_update();
                if let Err(f) = &m.running_state {
                    return Err(map_fatal(f.clone()));
                }
                if !self.initialized_now(&m) {
                    return Err(StoreError::NotInitialized);
                }
                let member = match m.current_leader {
                    Some(l) if l != self.inner.id => {
                        m.membership_config.membership().get_node(&l).cloned()
                    }
                    _ => None,
                };
                (m.current_leader, m.current_term, member)
            };
            if deadline.passed() {
                return Err(match last_err {
                    Some(e @ StoreError::ForwardFailed { .. }) => e,
                    _ => deadline.timeout(),
                });
            }
            match leader {
                Some(l) if l == self.inner.id => {
                    match self.execute_local(op.clone(), deadline).await {
                        Err(e @ StoreError::NotLeader { .. }) => last_err = Some(e),
                        r => return r,
                    }
                }
                Some(l) if !self.heard_from_recently(l) => {
                    // A leader that stopped talking may be dead: do not send it anything, wait
                    // for it to speak again or for a new leader.
                    tracing::debug!(leader = l, "no word from the leader lately; waiting");
                }
                Some(l) => {
                    if let Some(member) = leader_member {
                        let attempt = self.forward(l, &member, op.clone(), deadline);
                        let result = if resendable {
                            tokio::select! {
                                r = attempt => Some(r),
                                why = self.leader_lost(l, term) => {
                                    tracing::info!(
                                        leader = l,
                                        term,
                                        reason = %why,
                                        "abandoning the write forwarded to the leader; sending it again"
                                    );
                                    last_err = Some(StoreError::ForwardFailed {
                                        leader: l,
                                        addr: member.addr.clone(),
                                        reason: format!("abandoned: {why}"),
                                    });
                                    None
                                }
                            }
                        } else {
                            Some(attempt.await)
                        };
                        match result {
                            // Leadership moved on: go where it is now, without waiting.
                            None => continue,
                            // Not carried out by the leader: safe to try again.
                            Some(
                                Err(Forward::NotDelivered(e))
                                | Ok(Err(e @ (StoreError::NotLeader { .. } | StoreError::ShutDown))),
                            ) => {
                                tracing::debug!(leader = l, error = %e, "forwarding failed; retrying");
                                last_err = Some(e);
                            }
                            // Fate unknown, but the state machine applies a write once.
                            Some(Err(Forward::Lost(e))) if resendable => {
                                tracing::debug!(leader = l, error = %e, "forwarded write lost; sending it again");
                                last_err = Some(e);
                            }
                            Some(Ok(Ok(out))) => {
                                if let ForwardOutput::Write { index, .. } = &out {
                                    self.wait_applied(*index, deadline).await;
                                }
                                return Ok(out);
                            }
                            Some(Ok(Err(e)) | Err(Forward::Lost(e) | Forward::Rejected(e))) => {
                                return Err(e);
                            }
                        }
                    }
                }
                None => {}
            }
            // No usable leader right now: an election may be under way, or we are cut off.
            // Past the grace period, keep waiting only while a majority still answers (an
            // election among reachable members is then under way).
            let refusal = {
                let m = rx.borrow_and_update();
                // A leader gone silent counts as none.
                let leaderless = m
                    .current_leader
                    .is_none_or(|l| l != self.inner.id && !self.heard_from_recently(l));
                (start.elapsed() >= cfg.leader_grace() && !self.majority_heard(&m)).then(|| {
                    match last_err.take() {
                        Some(e @ StoreError::ForwardFailed { .. }) if !leaderless => e,
                        _ => self.no_quorum(&m),
                    }
                })
            };
            if let Some(e) = refusal {
                return Err(e);
            }
            // Wake up on the next change of the Raft state, or after a poll interval.
            let pause = cfg.poll_interval().min(deadline.remaining());
            tokio::select! {
                _ = metrics_changed(&mut rx) => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Whether this member heard from `leader` (an RPC from it, or a reply) within the
    /// election timeout, i.e. as recently as a live leader's heartbeats guarantee.
    fn heard_from_recently(&self, leader: u64) -> bool {
        self.inner
            .health
            .heard_within(leader, self.inner.cfg.election_timeout())
    }

    /// Resolves, with the reason, once `leader`, which led in `term` when a request was sent to
    /// it, cannot be counted on to answer: another member (or none yet) leads a newer term,
    /// this member became the leader, or `leader` has been silent for longer than the election
    /// timeout. Pending forever otherwise.
    async fn leader_lost(&self, leader: u64, term: u64) -> String {
        let mut rx = self.inner.raft.metrics();
        let mut ticker = tokio::time::interval(self.inner.cfg.poll_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            {
                let m = rx.borrow_and_update();
                if m.current_term > term && m.current_leader != Some(leader) {
                    return match m.current_leader {
                        Some(l) if l == self.inner.id => {
                            format!("this member became the leader in term {}", m.current_term)
                        }
                        Some(l) => {
                            format!("member {l} became the leader in term {}", m.current_term)
                        }
                        None => format!("a new election started (term {})", m.current_term),
                    };
                }
            }
            if !self.heard_from_recently(leader) {
                return format!(
                    "no word from leader {leader} for more than {:?}",
                    self.inner.cfg.election_timeout()
                );
            }
            tokio::select! {
                _ = metrics_changed(&mut rx) => {}
                _ = ticker.tick() => {}
            }
        }
    }

    /// Send a leader-only operation to the leader `l`; `Ok` carries the leader's answer.
    async fn forward(
        &self,
        l: u64,
        member: &MemberInfo,
        op: ForwardOp<S>,
        deadline: Deadline,
    ) -> Result<Result<ForwardOutput<S>, StoreError>, Forward> {
        let failed = |reason: String| StoreError::ForwardFailed {
            leader: l,
            addr: member.addr.clone(),
            reason,
        };
        let payload =
            rpc::encode(&RpcRequest::<S>::Forward(op), &[]).map_err(Forward::NotDelivered)?;
        let reply = match self
            .inner
            .transport
            .call(l, member, payload, deadline.remaining())
            .await
        {
            Ok(r) => r,
            Err(e @ TransportError::Unreachable { .. }) => {
                return Err(Forward::NotDelivered(failed(e.to_string())));
            }
            // Delivered or not, nobody knows.
            Err(e) => return Err(Forward::Lost(failed(e.to_string()))),
        };
        self.inner.health.heard_from(l);
        let (reply, _) =
            rpc::decode::<RpcReply<S>>(&reply).map_err(|e| Forward::Lost(failed(e.to_string())))?;
        match reply {
            RpcReply::Forward(r) => Ok(r),
            RpcReply::Failed(e @ StoreError::ShutDown) => Err(Forward::NotDelivered(e)),
            RpcReply::Failed(e) => Err(Forward::Rejected(e)),
            _ => Err(Forward::Lost(failed(
                "unexpected reply to a forwarded request".to_string(),
            ))),
        }
    }

    /// Carry out a leader-only operation on this member, which must be the leader.
    async fn execute_local(
        &self,
        op: ForwardOp<S>,
        deadline: Deadline,
    ) -> Result<ForwardOutput<S>, StoreError> {
        // Read under the borrow what the operation needs; nothing is cloned on the write path.
        let removal = {
            let rx = self.inner.raft.metrics();
            let m = rx.borrow();
            if m.state != ServerState::Leader {
                return Err(StoreError::NotLeader {
                    leader: m.current_leader.filter(|l| *l != self.inner.id),
                });
            }
            self.check_lease(&m)?;
            match &op {
                ForwardOp::RemoveMember { id } => Some(removal_change(&m, *id)?),
                _ => None,
            }
        };
        let raft = &self.inner.raft;
        match op {
            ForwardOp::Write(req) => self.propose_write(req, deadline).await,
            ForwardOp::AddLearner { id, member } => {
                let resp = self
                    .guarded(raft.add_learner(id, member, false), deadline)
                    .await?;
                self.wait_caught_up(id, resp.log_id.index, deadline).await?;
                tracing::info!(learner = id, "learner added and caught up");
                Ok(ForwardOutput::Done)
            }
            ForwardOp::ChangeVoters { voters } => {
                self.guarded(raft.change_membership(voters.clone(), false), deadline)
                    .await?;
                tracing::info!(?voters, "voters changed");
                Ok(ForwardOutput::Done)
            }
            ForwardOp::RemoveMember { id } => {
                let Some(Some(change)) = removal else {
                    // Not a member: nothing to do.
                    return Ok(ForwardOutput::Done);
                };
                self.guarded(raft.change_membership(change, false), deadline)
                    .await?;
                tracing::info!(member = id, "member removed");
                Ok(ForwardOutput::Done)
            }
        }
    }

    /// Propose an application write on this member, the leader: alone, or (with
    /// `batch_writes`, while proposal slots are taken) gathered with others into one entry.
    async fn propose_write(
        &self,
        req: Request<S::Command>,
        deadline: Deadline,
    ) -> Result<ForwardOutput<S>, StoreError> {
        let (id, cmd) = match req {
            Request::Cmd { id, cmd } if self.inner.cfg.batch_writes => (id, cmd),
            req => {
                let permit =
                    tokio::time::timeout(deadline.remaining(), self.inner.proposals.acquire())
                        .await
                        .map_err(|_| deadline.timeout())?
                        .map_err(|_| StoreError::ShutDown)?;
                let r = self.propose(req, deadline).await;
                drop(permit);
                return r;
            }
        };
        // A free slot and nobody waiting: no reason to wait for company.
        let waiting = {
            let mut queue = self.inner.queued.lock().unwrap_or_else(|e| e.into_inner());
            match self.inner.proposals.clone().try_acquire_owned() {
                Ok(permit) if queue.is_empty() => Err((permit, id, cmd)),
                _ => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    queue.push_back(QueuedWrite { id, cmd, reply: tx });
                    Ok(rx)
                }
            }
        };
        let rx = match waiting {
            Ok(rx) => rx,
            Err((permit, id, cmd)) => {
                let r = self.propose(Request::Cmd { id, cmd }, deadline).await;
                drop(permit);
                self.propose_queued();
                return r;
            }
        };
        self.propose_queued();
        match tokio::time::timeout(deadline.remaining(), rx).await {
            Err(_) => Err(deadline.timeout()),
            Ok(Err(_)) => Err(StoreError::ShutDown),
            Ok(Ok(r)) => r,
        }
    }

    /// Propose one entry and wait until it is applied here.
    async fn propose(
        &self,
        req: Request<S::Command>,
        deadline: Deadline,
    ) -> Result<ForwardOutput<S>, StoreError> {
        let resp = self
            .guarded(self.inner.raft.client_write(req), deadline)
            .await?;
        Ok(ForwardOutput::Write {
            index: resp.log_id.index,
            response: resp.data,
        })
    }

    /// While proposal slots are free and writes wait, propose the waiting writes, gathered
    /// into entries (in tasks of their own).
    fn propose_queued(&self) {
        while let Ok(permit) = self.inner.proposals.clone().try_acquire_owned() {
            let batch: Vec<QueuedWrite<S>> = {
                let mut queue = self.inner.queued.lock().unwrap_or_else(|e| e.into_inner());
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            let store = self.clone();
            tokio::spawn(async move {
                store.propose_batch(batch).await;
                drop(permit);
                store.propose_queued();
            });
        }
    }

    /// Propose the writes of `batch` as one entry and answer each writer.
    async fn propose_batch(&self, batch: Vec<QueuedWrite<S>>) {
        // Writers that gave up meanwhile are left out.
        let mut batch: Vec<QueuedWrite<S>> =
            batch.into_iter().filter(|w| !w.reply.is_closed()).collect();
        let deadline = Deadline::new(self.inner.cfg.write_timeout);
        if batch.len() <= 1 {
            if let Some(w) = batch.pop() {
                let r = self
                    .propose(
                        Request::Cmd {
                            id: w.id,
                            cmd: w.cmd,
                        },
                        deadline,
                    )
                    .await;
                let _ = w.reply.send(r);
            }
            return;
        }
        let n = batch.len();
        let (cmds, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|w| ((w.id, w.cmd), w.reply)).unzip();
        tracing::trace!(writes = n, "proposing a batch of writes");
        match self.propose(Request::Batch(cmds), deadline).await {
            Ok(ForwardOutput::Write {
                index,
                response: Response::Batch(outputs),
            }) if outputs.len() == n => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(ForwardOutput::Write {
                        index,
                        response: Response::App(output),
                    }));
                }
            }
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(_) => {
                        StoreError::raft("the state machine gave no output per write of a batch")
                    }
                };
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Await a Raft proposal, giving up when the leader loses its majority or the deadline
    /// passes.
    async fn guarded<T>(
        &self,
        fut: impl Future<Output = Result<T, RaftError<u64, ClientWriteError<u64, MemberInfo>>>>,
        deadline: Deadline,
    ) -> Result<T, StoreError> {
        let fut = std::pin::pin!(fut);
        let mut fut = fut;
        let lease = self.inner.cfg.quorum_lease();
        // The caller checked the lease just now: the first check is one poll interval away.
        let poll = self.inner.cfg.poll_interval();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let metrics = self.inner.raft.metrics();
        let mut unacked_since: Option<Instant> = None;
        loop {
            tokio::select! {
                r = &mut fut => return r.map_err(map_write_error),
                _ = ticker.tick() => {
                    if deadline.passed() {
                        return Err(deadline.timeout());
                    }
                    let m = metrics.borrow();
                    if m.state == ServerState::Leader {
                        self.check_lease(&m)?;
                        // A new leader that never heard back from a majority.
                        if m.millis_since_quorum_ack.is_none() {
                            let since = *unacked_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > lease && !self.majority_heard_within(&m, lease) {
                                return Err(self.no_quorum(&m));
                            }
                        } else {
                            unacked_since = None;
                        }
                    }
                    // Not leader any more: openraft answers the pending proposal itself.
                }
            }
        }
    }

    /// Read-your-writes: wait (briefly) until this member has applied `index` too.
    async fn wait_applied(&self, index: u64, deadline: Deadline) {
        let limit = deadline.remaining().min(self.inner.cfg.leader_grace());
        let mut rx = self.inner.raft.metrics();
        let reached = tokio::time::timeout(limit, async {
            loop {
                if rx
                    .borrow_and_update()
                    .last_applied
                    .is_some_and(|l| l.index >= index)
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if reached.is_err() {
            tracing::debug!(index, "write applied on the leader but not yet here");
        }
    }

    /// Wait until member `id` has replicated the log up to `index`.
    async fn wait_caught_up(
        &self,
        id: u64,
        index: u64,
        deadline: Deadline,
    ) -> Result<(), StoreError> {
        let mut rx = self.inner.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if m.state != ServerState::Leader {
                    tracing::warn!(
                        learner = id,
                        "lost leadership while the learner was catching up"
                    );
                    return Ok(());
                }
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                if matched.is_some_and(|i| i >= index) {
                    return Ok(());
                }
            }
            match tokio::time::timeout(deadline.remaining(), rx.changed()).await {
                Err(_) => return Err(deadline.timeout()),
                Ok(Err(_)) => return Err(StoreError::ShutDown),
                Ok(Ok(())) => {}
            }
        }
    }

    async fn dispatch(&self, payload: &[u8]) -> RpcReply<S> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return RpcReply::Failed(StoreError::ShutDown);
        }
        let (req, tail) = match rpc::decode::<RpcRequest<S>>(payload) {
            Ok(x) => x,
            Err(e) => return RpcReply::Failed(e),
        };
        let raft = &self.inner.raft;
        match req {
            RpcRequest::Append(r) => {
                if let Some(from) = r.vote.leader_id().voted_for() {
                    self.inner.health.heard_from(from);
                }
                RpcReply::Append(raft.append_entries(r).await)
            }
            RpcRequest::Vote(r) => {
                if let Some(from) = r.vote.leader_id().voted_for() {
                    self.inner.health.heard_from(from);
                }
                RpcReply::Vote(raft.vote(r).await)
            }
            RpcRequest::InstallSnapshot(r) => {
                if let Some(from) = r.vote.leader_id().voted_for() {
                    self.inner.health.heard_from(from);
                }
                RpcReply::InstallSnapshot(raft.install_snapshot(r).await)
            }
            RpcRequest::FullSnapshot { vote, meta } => {
                if let Some(from) = vote.leader_id().voted_for() {
                    self.inner.health.heard_from(from);
                }
                tracing::info!(last_log = ?meta.last_log_id, bytes = tail.len(), "receiving snapshot");
                let snapshot = Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(tail.to_vec())),
                };
                RpcReply::FullSnapshot(raft.install_full_snapshot(vote, snapshot).await)
            }
            RpcRequest::Forward(op) => {
                let budget = match op {
                    ForwardOp::Write(_) => self.inner.cfg.write_timeout,
                    _ => self.inner.cfg.membership_timeout,
                };
                RpcReply::Forward(self.execute_local(op, Deadline::new(budget)).await)
            }
        }
    }
}

impl<S: StateMachine> RpcHandler for Store<S> {
    fn handle_rpc(&self, payload: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        let store = self.clone();
        Box::pin(async move { store.handle_rpc(payload).await })
    }
}

struct WeakHandler<S: StateMachine> {
    inner: Weak<Inner<S>>,
}

impl<S: StateMachine> RpcHandler for WeakHandler<S> {
    fn handle_rpc(&self, payload: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        let inner = self.inner.upgrade();
        Box::pin(async move {
            match inner {
                Some(inner) => Store { inner }.handle_rpc(payload).await,
                None => rpc::encode(&RpcReply::<S>::Failed(StoreError::ShutDown), &[])
                    .unwrap_or_default(),
            }
        })
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::storage(dir, format!("cannot sync: {e}")))
}

/// Write `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::storage(path, format!("cannot write: {e}")));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

    use serde::Deserialize;
    use serde::Serialize;

    use super::*;
    use crate::mem::MemNetwork;

    /// Sums what it is given; counts the applications.
    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    struct Sum {
        total: u64,
        applied: u64,
    }

    impl StateMachine for Sum {
        type Command = u64;
        type Output = u64;
        fn apply(&mut self, _index: u64, add: u64) -> u64 {
            self.total += add;
            self.applied += 1;
            self.total
        }
    }

    /// What `write` does, with a chosen request id: as if the same call were sent again.
    async fn write_as(s: &Store<Sum>, id: u128, add: u64) -> u64 {
        let req = Request::Cmd {
            id: RequestId(id),
            cmd: add,
        };
        match s
            .submit(ForwardOp::Write(req), Duration::from_secs(10))
            .await
        {
            Ok(ForwardOutput::Write {
                response: Response::App(out),
                ..
            }) => out,
            other => panic!("unexpected answer: {:?}", other.err()),
        }
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    struct Node {
        net: MemNetwork,
        dir: tempfile::TempDir,
        cfg: StoreConfig,
    }

    impl Node {
        async fn open(&self, id: u64) -> Store<Sum> {
            let dir = self.dir.path().join(format!("node-{id}"));
            let s = Store::<Sum>::open(&dir, id, self.cfg.clone(), self.net.transport(id))
                .await
                .unwrap();
            self.net.register(id, s.rpc_handler());
            s
        }
    }

    fn member(id: u64) -> MemberInfo {
        MemberInfo::new(format!("127.0.0.{id}:2377"), format!("node-{id}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_is_applied_once_across_restarts_snapshots_and_members() {
        let n = Node {
            net: MemNetwork::new(),
            dir: tempfile::tempdir().unwrap(),
            cfg: StoreConfig {
                snapshot_every_logs: 10,
                keep_logs: 2,
                ..Default::default()
            },
        };
        let s = n.open(1).await;
        s.bootstrap(member(1)).await.unwrap();
        assert_eq!(write_as(&s, 7, 5).await, 5);
        assert_eq!(write_as(&s, 7, 5).await, 5, "sent again: the first output");
        assert_eq!(
            s.read(|c| c.clone()),
            Sum {
                total: 5,
                applied: 1
            }
        );

        // Restarted, the state is rebuilt from the log, duplicates included.
        s.shutdown().await.unwrap();
        let s = n.open(1).await;
        wait_until("leader again", || s.status().role == RaftRole::Leader).await;
        assert_eq!(s.read(|c| c.applied), 1);
        assert_eq!(write_as(&s, 7, 5).await, 5);

        // Enough other writes for snapshots that cover the request, and a purged log.
        for _ in 0..30 {
            s.write(1).await.unwrap();
        }
        wait_until("snapshot and purge past the request", || {
            let st = s.status();
            st.snapshot_index.is_some_and(|i| i >= 20) && st.purged_index.is_some_and(|i| i >= 10)
        })
        .await;
        s.shutdown().await.unwrap();
        let s = n.open(1).await;
        wait_until("leader again", || s.status().role == RaftRole::Leader).await;
        assert_eq!(
            s.read(|c| c.clone()),
            Sum {
                total: 35,
                applied: 31
            }
        );
        // Only the snapshot remembers the request now.
        assert_eq!(write_as(&s, 7, 5).await, 5);
        assert_eq!(s.read(|c| c.applied), 31);

        // A new member receives the state by snapshot, the recent requests with it: it too
        // recognises the request when it comes through the log again.
        let s2 = n.open(2).await;
        s.add_learner(2, member(2)).await.unwrap();
        assert_eq!(write_as(&s, 7, 5).await, 5);
        assert_eq!(write_as(&s, 8, 1).await, 36);
        // 31 applications from the snapshot, then the duplicate (skipped) and request 8.
        wait_until("the learner applies everything", || {
            s2.read(|c| c.applied) >= 32
        })
        .await;
        assert!(
            s2.status().snapshot_index.is_some(),
            "state came by snapshot"
        );
        assert_eq!(s2.read(|c| c.clone()), s.read(|c| c.clone()));
        assert_eq!(s2.read(|c| c.applied), 32);
        s.shutdown().await.unwrap();
        s2.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_disk_fails_writes_instead_of_hanging() {
        use crate::log_store::tests::Faults;
        use crate::log_store::tests::open_faulty;

        let tmp = tempfile::tempdir().unwrap();
        let net = MemNetwork::new();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        // A long write timeout: the failure must come from the disk, not the backstop.
        let cfg = StoreConfig {
            write_timeout: Duration::from_secs(120),
            ..Default::default()
        };
        let s = Store::<Sum>::open_with(
            tmp.path(),
            1,
            cfg,
            net.transport(1),
            Box::new(move |p| open_faulty(p, f)),
        )
        .await
        .unwrap();
        net.register(1, s.rpc_handler());
        s.bootstrap(member(1)).await.unwrap();
        assert_eq!(s.write(5).await.unwrap(), 5);

        faults.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = s.write(1).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Raft { .. } | StoreError::ShutDown),
            "{err}"
        );
        // Raft stopped on the storage error; the store says so instead of waiting.
        let err = s.write(1).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Raft { .. } | StoreError::ShutDown),
            "{err}"
        );
        assert_eq!(s.read(|c| c.total), 5);
        let _ = s.shutdown().await;
    }
}
