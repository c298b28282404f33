//! The in-memory state machine and its snapshot files.
//!
//! The state lives in memory; durability comes from the snapshot files plus the Raft log (the
//! log is replayed up to the committed index at start-up).
//!
//! Next to the application's state, the replicated state holds [`RecentRequests`]: the ids of
//! the last [`RECENT_REQUESTS`] writes and their outputs, so that a write sent twice (its
//! forward abandoned when the leader changed, then sent to the new leader) is applied once.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::io::Cursor;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use openraft::AnyError;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::Snapshot;
use openraft::StorageIOError;
use openraft::storage::RaftStateMachine;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::StateMachine;
use crate::StoreError;
use crate::StoreEvent;
use crate::types::Cfg;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::Request;
use crate::types::RequestId;
use crate::types::Response;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;

/// Directory of snapshot files inside a store directory.
pub(crate) const SNAP_DIR: &str = "snapshots";
const SNAP_PREFIX: &str = "snapshot-";
const SNAP_SUFFIX: &str = ".snap";
const TMP_PREFIX: &str = ".tmp-";
const MAGIC: &[u8; 8] = b"MESHSNAP";
/// Format of the snapshot data: 1 was the application state alone, 2 is [`SnapshotData`] (the
/// state and the recent requests). Files of version 1 are still read.
const VERSION: u32 = 2;
/// Capacity of the event channel; a slower subscriber gets `Lagged` and should re-read.
const EVENT_CAPACITY: usize = 4096;
/// How many of the latest writes the replicated state remembers, so that one sent twice is
/// applied once. Every member must use the same number: it is part of the state machine.
pub(crate) const RECENT_REQUESTS: usize = 10_000;

/// The ids of the most recently applied writes and what applying them returned, oldest first.
///
/// Part of the replicated state: every member updates it in log order, from the log alone,
/// and it travels in snapshots, so all members recognise the same duplicates and answer them
/// with the same output.
pub(crate) struct RecentRequests<O> {
    order: VecDeque<RequestId>,
    outputs: HashMap<RequestId, O>,
    capacity: usize,
}

impl<O> Default for RecentRequests<O> {
    fn default() -> Self {
        Self::with_capacity(RECENT_REQUESTS)
    }
}

impl<O> RecentRequests<O> {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            outputs: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// What applying `id` returned, if it is among the recent requests.
    pub(crate) fn get(&self, id: &RequestId) -> Option<&O> {
        self.outputs.get(id)
    }

    /// Remember that `id` was applied and returned `output`, forgetting the oldest request
    /// beyond the capacity. An id already known keeps its first output.
    fn insert(&mut self, id: RequestId, output: O) {
        match self.outputs.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => return,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(output);
            }
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.outputs.remove(&old);
            }
        }
    }

    fn clear(&mut self) {
        self.order.clear();
        self.outputs.clear();
    }

    /// How many requests are remembered.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// Serialized as a list of `[id, output]`, oldest first.
impl<O: Serialize> Serialize for RecentRequests<O> {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.collect_seq(
            self.order
                .iter()
                .filter_map(|id| self.outputs.get(id).map(|o| (id, o))),
        )
    }
}

impl<'de, O: Deserialize<'de>> Deserialize<'de> for RecentRequests<O> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<(RequestId, O)>::deserialize(d)?;
        let mut recent = Self::default();
        for (id, output) in list {
            recent.insert(id, output);
        }
        Ok(recent)
    }
}

/// What applying one normal log entry did.
pub(crate) enum Applied<O> {
    /// The command was applied and produced this output.
    Fresh(O),
    /// The request had been applied before; this is what it returned then.
    Duplicate(O),
    /// The whole state was replaced by a restore entry.
    Replaced,
    /// The commands of a batch entry, each applied now (`true`) or before, with its output.
    Batch(Vec<(bool, O)>),
}

/// Apply a normal log entry to the replicated state. Deterministic: the outcome depends only
/// on the state and the entry, so every member reaches the same state.
pub(crate) fn apply_request<S: StateMachine>(
    state: &mut S,
    recent: &mut RecentRequests<S::Output>,
    index: u64,
    req: Request<S::Command>,
) -> Result<Applied<S::Output>, String> {
    match req {
        Request::Cmd { id, cmd } => Ok(match apply_once(state, recent, index, id, cmd) {
            (true, output) => Applied::Fresh(output),
            (false, first) => Applied::Duplicate(first),
        }),
        Request::Batch(cmds) => Ok(Applied::Batch(
            cmds.into_iter()
                .map(|(id, cmd)| apply_once(state, recent, index, id, cmd))
                .collect(),
        )),
        Request::App(cmd) => Ok(Applied::Fresh(state.apply(index, cmd))),
        Request::Restore { state_json } => {
            *state = serde_json::from_str(&state_json)
                .map_err(|e| format!("cannot decode the restored state: {e}"))?;
            // A new history starts here; every member forgets the old requests alike.
            recent.clear();
            Ok(Applied::Replaced)
        }
    }
}

/// Apply the command of request `id` unless it was applied before: whether it was applied now,
/// and its (first) output.
fn apply_once<S: StateMachine>(
    state: &mut S,
    recent: &mut RecentRequests<S::Output>,
    index: u64,
    id: RequestId,
    cmd: S::Command,
) -> (bool, S::Output) {
    if let Some(first) = recent.get(&id) {
        return (false, first.clone());
    }
    let output = state.apply(index, cmd);
    recent.insert(id, output.clone());
    (true, output)
}

/// The snapshot data (format [`VERSION`] 2), as written.
#[derive(Serialize)]
#[serde(bound = "")]
struct SnapshotDataRef<'a, S: StateMachine> {
    state: &'a S,
    recent_requests: &'a RecentRequests<S::Output>,
}

/// The snapshot data (format [`VERSION`] 2), as read.
#[derive(Deserialize)]
#[serde(bound = "")]
struct SnapshotData<S: StateMachine> {
    state: S,
    recent_requests: RecentRequests<S::Output>,
}

fn encode_state<S: StateMachine>(
    state: &S,
    recent: &RecentRequests<S::Output>,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&SnapshotDataRef::<S> {
        state,
        recent_requests: recent,
    })
}

/// Decode snapshot data of format `version`.
fn decode_state<S: StateMachine>(
    version: u32,
    data: &[u8],
) -> Result<(S, RecentRequests<S::Output>), String> {
    match version {
        1 => serde_json::from_slice(data)
            .map(|state| (state, RecentRequests::default()))
            .map_err(|e| format!("cannot decode the snapshot's state: {e}")),
        VERSION => serde_json::from_slice::<SnapshotData<S>>(data)
            .map(|d| (d.state, d.recent_requests))
            .map_err(|e| format!("cannot decode the snapshot's state: {e}")),
        other => Err(format!("unsupported snapshot version {other}")),
    }
}

/// The applied state and what Raft needs to know about it.
pub(crate) struct SmData<S: StateMachine> {
    pub(crate) state: S,
    pub(crate) recent: RecentRequests<S::Output>,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

struct SnapFile {
    meta: SnapshotMeta,
    path: PathBuf,
}

/// State shared between the Raft state machine worker and the [`Store`](crate::Store).
pub(crate) struct SmShared<S: StateMachine> {
    pub(crate) data: RwLock<SmData<S>>,
    pub(crate) events: broadcast::Sender<StoreEvent<S::Output>>,
    snap_dir: PathBuf,
    current: Mutex<Option<SnapFile>>,
    seq: AtomicU64,
}

impl<S: StateMachine> SmShared<S> {
    /// Load the newest snapshot under `dir` (if any) as the initial state; remove leftovers.
    pub(crate) fn load(dir: &Path) -> Result<Self, StoreError> {
        let snap_dir = dir.join(SNAP_DIR);
        std::fs::create_dir_all(&snap_dir)
            .map_err(|e| StoreError::storage(&snap_dir, format!("cannot create: {e}")))?;
        let latest = latest_snapshot(&snap_dir)?;
        let (data, current) = match latest {
            None => (
                SmData {
                    state: S::default(),
                    recent: RecentRequests::default(),
                    last_applied: None,
                    membership: StoredMembership::default(),
                },
                None,
            ),
            Some(SnapshotOnDisk {
                meta,
                version,
                data,
                path,
            }) => {
                let (state, recent) =
                    decode_state::<S>(version, &data).map_err(|e| StoreError::storage(&path, e))?;
                tracing::info!(
                    snapshot = %path.display(),
                    last_log = ?meta.last_log_id,
                    recent_requests = recent.len(),
                    "state loaded from snapshot"
                );
                (
                    SmData {
                        state,
                        recent,
                        last_applied: meta.last_log_id,
                        membership: meta.last_membership.clone(),
                    },
                    Some(SnapFile { meta, path }),
                )
            }
        };
        remove_other_snapshots(&snap_dir, current.as_ref().map(|c| c.path.as_path()));
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Self {
            data: RwLock::new(data),
            events,
            snap_dir,
            current: Mutex::new(current),
            seq: AtomicU64::new(0),
        })
    }

    pub(crate) fn read_data<R>(&self, f: impl FnOnce(&SmData<S>) -> R) -> R {
        let guard = self.data.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    fn next_snapshot_id(&self, last: Option<LogId>) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        match last {
            Some(l) => format!("{}-{}-{nanos}-{seq}", l.leader_id.term, l.index),
            None => format!("0-0-{nanos}-{seq}"),
        }
    }

    /// Write a snapshot file and make it current, unless a newer one already is. Returns
    /// whether it became current.
    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<bool, String> {
        let path = write_snapshot_file(&self.snap_dir, meta, data)?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cur) = current.as_ref()
            && cur.meta.last_log_id > meta.last_log_id
        {
            // A newer snapshot was installed meanwhile: this one is obsolete.
            let _ = std::fs::remove_file(&path);
            return Ok(false);
        }
        *current = Some(SnapFile {
            meta: meta.clone(),
            path: path.clone(),
        });
        remove_other_snapshots(&self.snap_dir, Some(&path));
        Ok(true)
    }

    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
        let path = {
            let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            match current.as_ref() {
                None => return Ok(None),
                Some(c) => c.path.clone(),
            }
        };
        let (meta, version, data) = read_snapshot_file(&path)?;
        if version == VERSION {
            return Ok(Some((meta, data)));
        }
        // An older file: members receive the current format.
        let (state, recent) =
            decode_state::<S>(version, &data).map_err(|e| format!("{}: {e}", path.display()))?;
        let data = encode_state(&state, &recent).map_err(|e| e.to_string())?;
        Ok(Some((meta, data)))
    }
}

/// openraft's state machine over [`SmShared`].
pub(crate) struct SmStore<S: StateMachine> {
    pub(crate) shared: Arc<SmShared<S>>,
}

impl<S: StateMachine> Clone for SmStore<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, String> + Send + 'static,
) -> Result<R, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(format!("storage task failed: {e}")),
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<Cfg<S>> for SmStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Cfg<S>>, StorageError> {
        let (data, last_applied, membership) = {
            let guard = self.shared.data.read().unwrap_or_else(|e| e.into_inner());
            let data = encode_state(&guard.state, &guard.recent)
                .map_err(|e| StorageIOError::read_state_machine(AnyError::error(e)))?;
            (data, guard.last_applied, guard.membership.clone())
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: self.shared.next_snapshot_id(last_applied),
        };
        let shared = self.shared.clone();
        let (m, d) = (meta.clone(), data.clone());
        let signature = meta.signature();
        blocking(move || shared.save_snapshot(&m, &d))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), AnyError::error(e)))?;
        tracing::info!(last_log = ?meta.last_log_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<S: StateMachine> RaftStateMachine<Cfg<S>> for SmStore<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self
            .shared
            .read_data(|d| (d.last_applied, d.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response<S::Output>>, StorageError>
    where
        I: IntoIterator<Item = Entry<S>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut events = Vec::new();
        {
            let mut guard = self.shared.data.write().unwrap_or_else(|e| e.into_inner());
            let d = &mut *guard;
            for entry in entries {
                let log_id = entry.log_id;
                let index = log_id.index;
                match entry.payload {
                    EntryPayload::Blank => out.push(Response::None),
                    EntryPayload::Normal(req) => {
                        let applied = apply_request(&mut d.state, &mut d.recent, index, req)
                            .map_err(|e| StorageIOError::apply(log_id, AnyError::error(e)))?;
                        match applied {
                            Applied::Fresh(output) => {
                                events.push(StoreEvent::Applied {
                                    index,
                                    output: output.clone(),
                                });
                                out.push(Response::App(output));
                            }
                            Applied::Duplicate(first) => {
                                tracing::debug!(
                                    index,
                                    "request applied before; answering with its first output"
                                );
                                out.push(Response::App(first));
                            }
                            Applied::Replaced => {
                                tracing::info!(index, "state replaced by a restore entry");
                                events.push(StoreEvent::StateReplaced { index });
                                out.push(Response::None);
                            }
                            Applied::Batch(results) => {
                                let mut outputs = Vec::with_capacity(results.len());
                                for (fresh, output) in results {
                                    if fresh {
                                        events.push(StoreEvent::Applied {
                                            index,
                                            output: output.clone(),
                                        });
                                    }
                                    outputs.push(output);
                                }
                                out.push(Response::Batch(outputs));
                            }
                        }
                    }
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(log_id), m);
                        out.push(Response::None);
                    }
                }
                d.last_applied = Some(log_id);
            }
        }
        for ev in events {
            // No subscriber is fine.
            let _ = self.shared.events.send(ev);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let (state, recent) = decode_state::<S>(VERSION, &data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e))
        })?;
        let shared = self.shared.clone();
        let m = meta.clone();
        let signature = meta.signature();
        blocking(move || shared.save_snapshot(&m, &data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), AnyError::error(e)))?;
        {
            let mut d = self.shared.data.write().unwrap_or_else(|e| e.into_inner());
            d.state = state;
            d.recent = recent;
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership.clone();
        }
        let index = meta.last_log_id.map(|l| l.index).unwrap_or_default();
        tracing::info!(last_log = ?meta.last_log_id, "snapshot from the leader installed");
        let _ = self.shared.events.send(StoreEvent::StateReplaced { index });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Cfg<S>>>, StorageError> {
        let shared = self.shared.clone();
        let cur = blocking(move || shared.current_snapshot())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
        Ok(cur.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Rebuild the state of a stopped store from its snapshot and its whole log (committed or
/// not: an entry a majority acknowledged may be present here without this member knowing it
/// was committed).
pub(crate) fn recover_state<S: StateMachine>(dir: &Path) -> Result<S, StoreError> {
    let snap_dir = dir.join(SNAP_DIR);
    let (mut state, mut recent, mut last) = match latest_snapshot(&snap_dir)? {
        None => (S::default(), RecentRequests::default(), None),
        Some(snap) => {
            let (state, recent) = decode_state::<S>(snap.version, &snap.data)
                .map_err(|e| StoreError::storage(&snap.path, e))?;
            let meta = snap.meta;
            (state, recent, meta.last_log_id.map(|l| l.index))
        }
    };
    let db_path = dir.join(crate::log_store::DB_FILE);
    if db_path.exists() {
        let dump = crate::log_store::dump_log::<S>(&db_path)?;
        for entry in dump.entries {
            let index = entry.log_id.index;
            if let Some(l) = last {
                if index <= l {
                    continue;
                }
                if index != l + 1 {
                    tracing::warn!(
                        expected = l + 1,
                        found = index,
                        "gap in the raft log; recovery stops here"
                    );
                    break;
                }
            }
            match entry.payload {
                // Same rules as the live state machine: a request applied twice counts once.
                EntryPayload::Normal(req) => {
                    apply_request(&mut state, &mut recent, index, req).map_err(|e| {
                        StoreError::storage(&db_path, format!("log entry {index}: {e}"))
                    })?;
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => {}
            }
            last = Some(index);
        }
    }
    tracing::info!(last_index = ?last, "state recovered from disk");
    Ok(state)
}

/// Remove every snapshot file and leftover under `dir`.
pub(crate) fn wipe_snapshots(dir: &Path) -> Result<(), StoreError> {
    let snap_dir = dir.join(SNAP_DIR);
    if snap_dir.exists() {
        std::fs::remove_dir_all(&snap_dir)
            .map_err(|e| StoreError::storage(&snap_dir, format!("cannot remove: {e}")))?;
    }
    Ok(())
}

fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, String> {
    let meta_json = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(8 + 4 + 16 + meta_json.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(meta_json.len() as u64).to_be_bytes());
    out.extend_from_slice(&meta_json);
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err("truncated snapshot file".into());
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn take_u64(buf: &mut &[u8]) -> Result<u64, String> {
    let b = take(buf, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_be_bytes(a))
}

/// Split a snapshot file into its meta, its data format version and its data.
fn decode_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, u32, Vec<u8>), String> {
    let mut buf = bytes;
    if take(&mut buf, 8)? != MAGIC {
        return Err("not a snapshot file (bad magic)".into());
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(take(&mut buf, 4)?);
    let version = u32::from_be_bytes(v);
    if !(1..=VERSION).contains(&version) {
        return Err(format!(
            "unsupported snapshot version {version} (this build reads 1 to {VERSION})"
        ));
    }
    let meta_len = usize::try_from(take_u64(&mut buf)?).map_err(|e| e.to_string())?;
    let meta: SnapshotMeta = serde_json::from_slice(take(&mut buf, meta_len)?)
        .map_err(|e| format!("bad snapshot meta: {e}"))?;
    let data_len = usize::try_from(take_u64(&mut buf)?).map_err(|e| e.to_string())?;
    let data = take(&mut buf, data_len)?.to_vec();
    if !buf.is_empty() {
        return Err("trailing bytes after the snapshot data".into());
    }
    Ok((meta, version, data))
}

fn read_snapshot_file(path: &Path) -> Result<(SnapshotMeta, u32, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode_snapshot(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Write a snapshot atomically: temporary file, fsync, rename, fsync of the directory.
fn write_snapshot_file(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<PathBuf, String> {
    let index = meta.last_log_id.map(|l| l.index).unwrap_or_default();
    let id: String = meta
        .snapshot_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = format!("{SNAP_PREFIX}{index:020}-{id}{SNAP_SUFFIX}");
    let path = dir.join(&name);
    let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
    let bytes = encode_snapshot(meta, data)?;
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write snapshot {}: {e}", path.display()));
    }
    Ok(path)
}

/// A snapshot file as read from disk.
struct SnapshotOnDisk {
    meta: SnapshotMeta,
    /// Format of `data` (see [`VERSION`]).
    version: u32,
    data: Vec<u8>,
    path: PathBuf,
}

/// The snapshot with the highest last log id under `dir`. Unreadable files are skipped.
fn latest_snapshot(dir: &Path) -> Result<Option<SnapshotOnDisk>, StoreError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::storage(dir, format!("cannot list: {e}"))),
    };
    let mut best: Option<SnapshotOnDisk> = None;
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(SNAP_PREFIX) && name.ends_with(SNAP_SUFFIX)) {
            continue;
        }
        let path = ent.path();
        match read_snapshot_file(&path) {
            Ok((meta, version, data)) => {
                if best
                    .as_ref()
                    .is_none_or(|b| meta.last_log_id > b.meta.last_log_id)
                {
                    best = Some(SnapshotOnDisk {
                        meta,
                        version,
                        data,
                        path,
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "skipping unreadable snapshot file"),
        }
    }
    Ok(best)
}

fn remove_other_snapshots(dir: &Path, keep: Option<&Path>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let path = ent.path();
        if Some(path.as_path()) == keep {
            continue;
        }
        let name = ent.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(TMP_PREFIX)
            || (name.starts_with(SNAP_PREFIX) && name.ends_with(SNAP_SUFFIX));
        if ours {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(file = %path.display(), "old snapshot file removed"),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove old snapshot file")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn cmd(id: u128, add: u64) -> Request<u64> {
        Request::Cmd {
            id: RequestId(id),
            cmd: add,
        }
    }

    fn output(a: Applied<u64>) -> (bool, u64) {
        match a {
            Applied::Fresh(o) => (true, o),
            Applied::Duplicate(o) => (false, o),
            Applied::Replaced => panic!("unexpected restore"),
            Applied::Batch(_) => panic!("unexpected batch"),
        }
    }

    #[test]
    fn a_request_is_applied_once_and_answered_with_its_first_output() {
        let (mut st, mut recent) = (Sum::default(), RecentRequests::default());
        let mut apply = |i, r| output(apply_request(&mut st, &mut recent, i, r).unwrap());
        assert_eq!(apply(1, cmd(7, 5)), (true, 5));
        assert_eq!(apply(2, cmd(8, 1)), (true, 6));
        assert_eq!(apply(3, cmd(7, 5)), (false, 5));
        // Entries without an id are applied every time.
        assert_eq!(apply(4, Request::App(2)), (true, 8));
        assert_eq!(apply(5, Request::App(2)), (true, 10));
        assert_eq!(st.applied, 4);

        // A restore starts a new history: the state is replaced and the ids forgotten alike on
        // every member.
        let json = serde_json::to_string(&Sum::default()).unwrap();
        let r = apply_request(
            &mut st,
            &mut recent,
            6,
            Request::Restore { state_json: json },
        );
        assert!(matches!(r, Ok(Applied::Replaced)));
        assert_eq!(recent.len(), 0);
        assert_eq!(
            output(apply_request(&mut st, &mut recent, 7, cmd(7, 5)).unwrap()),
            (true, 5)
        );
        let bad = Request::Restore {
            state_json: "{".into(),
        };
        assert!(apply_request(&mut st, &mut recent, 8, bad).is_err());
    }

    #[test]
    fn a_batch_applies_each_request_once_in_order_at_its_index() {
        let (mut st, mut recent) = (Sum::default(), RecentRequests::default());
        apply_request(&mut st, &mut recent, 1, cmd(7, 5)).unwrap();
        let batch = Request::Batch(vec![
            (RequestId(8), 1),
            (RequestId(7), 5), // applied at index 1 already
            (RequestId(9), 10),
            (RequestId(8), 1), // twice in the same batch
        ]);
        match apply_request(&mut st, &mut recent, 2, batch).unwrap() {
            Applied::Batch(results) => {
                assert_eq!(results, vec![(true, 6), (false, 5), (true, 16), (false, 6)])
            }
            _ => panic!("expected a batch"),
        }
        assert_eq!(st.applied, 3);
        assert_eq!(st.total, 16);
        // The same ids arriving alone later are recognised too.
        assert_eq!(
            output(apply_request(&mut st, &mut recent, 3, cmd(9, 10)).unwrap()),
            (false, 16)
        );
    }

    #[test]
    fn recent_requests_are_bounded_and_keep_their_order_in_snapshots() {
        let mut recent = RecentRequests::with_capacity(3);
        for id in 1..=5u128 {
            recent.insert(RequestId(id), id as u64 * 10);
        }
        assert_eq!(recent.len(), 3);
        assert!(
            recent.get(&RequestId(2)).is_none(),
            "the oldest are forgotten"
        );
        assert_eq!(recent.get(&RequestId(3)), Some(&30));
        // Inserting a known id changes nothing.
        recent.insert(RequestId(3), 99);
        assert_eq!(recent.len(), 3);

        let json = serde_json::to_string(&recent).unwrap();
        assert_eq!(
            json,
            format!(
                "[[\"{:032x}\",30],[\"{:032x}\",40],[\"{:032x}\",50]]",
                3, 4, 5
            )
        );
        let back: RecentRequests<u64> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.order, recent.order);
        assert_eq!(back.outputs, recent.outputs);
        assert_eq!(back.capacity, RECENT_REQUESTS);

        let full = RecentRequests::<u64>::default();
        assert_eq!(full.capacity, RECENT_REQUESTS);
        let mut full = full;
        for id in 0..(RECENT_REQUESTS as u128 + 10) {
            full.insert(RequestId(id), 0);
        }
        assert_eq!(full.len(), RECENT_REQUESTS);
        assert!(full.get(&RequestId(9)).is_none());
        assert!(full.get(&RequestId(10)).is_some());
    }

    #[test]
    fn request_ids_travel_as_hex() {
        let id = RequestId(0xabc);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{:032x}\"", 0xabc));
        assert_eq!(serde_json::from_str::<RequestId>(&json).unwrap(), id);
        let err = serde_json::from_str::<RequestId>("\"abc\"").unwrap_err();
        assert!(err.to_string().contains("32 hexadecimal digits"), "{err}");
        let bad = format!("\"{}\"", "z".repeat(32));
        assert!(serde_json::from_str::<RequestId>(&bad).is_err());
        assert_ne!(RequestId::random(), RequestId::random());
    }

    #[test]
    fn snapshot_data_of_both_versions_decodes() {
        let state = Sum {
            total: 5,
            applied: 1,
        };
        let mut recent = RecentRequests::default();
        recent.insert(RequestId(7), 5u64);
        let v2 = encode_state(&state, &recent).unwrap();
        let (s, r) = decode_state::<Sum>(VERSION, &v2).unwrap();
        assert_eq!(s, state);
        assert_eq!(r.get(&RequestId(7)), Some(&5));
        // Version 1: the state alone.
        let v1 = serde_json::to_vec(&state).unwrap();
        let (s, r) = decode_state::<Sum>(1, &v1).unwrap();
        assert_eq!(s, state);
        assert_eq!(r.len(), 0);
        assert!(decode_state::<Sum>(VERSION, &v1).is_err());
        assert!(decode_state::<Sum>(3, &v2).is_err());
    }

    #[test]
    fn snapshot_file_roundtrip_and_truncation() {
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
            last_membership: StoredMembership::default(),
            snapshot_id: "3-42-x".into(),
        };
        let bytes = encode_snapshot(&meta, b"{\"a\":1}").unwrap();
        let (m, v, d) = decode_snapshot(&bytes).unwrap();
        assert_eq!(m, meta);
        assert_eq!(v, VERSION);
        assert_eq!(d, b"{\"a\":1}");
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_snapshot(b"garbage!garbage!").is_err());
    }
}
