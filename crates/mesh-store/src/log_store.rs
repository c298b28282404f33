//! The Raft log, vote and committed pointer in a redb database, written with group commit.
//!
//! One writer thread per store owns the write side. [`LogStore::append`] serializes the
//! entries, keeps them in memory (so the log reader sees them at once) and queues them; the
//! writer drains everything queued, writes it in one redb transaction flushed to disk
//! (`Durability::Immediate`), then reports the appends durable to openraft, in order.
//! Truncate, purge and vote travel through the same queue, so the disk sees every change in
//! the order openraft made it; they return once durable. The committed pointer is written with
//! the next transaction (or on its own after a short idle time, and when the store closes).
//!
//! Entries stay in memory until they are durable, and the most recent durable ones a while
//! longer, so that replication and the state machine rarely read the database.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::RwLock;
use std::sync::Weak;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use openraft::AnyError;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::StorageIOError;
use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use redb::Database;
use redb::Durability;
use redb::ReadableDatabase;
use redb::ReadableTable;
use redb::TableDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::StateMachine;
use crate::StoreError;
use crate::types::Cfg;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::StorageError;
use crate::types::Vote;

/// Log entries by index, each serialized with serde_json.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small records: vote, committed and purged log ids.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_RAFT_ID: &str = "raft_id";

/// File name of the database inside a store directory.
pub(crate) const DB_FILE: &str = "raft.redb";

/// Durable entries kept in memory behind the newest one (at most).
const CACHE_ENTRIES: usize = 4096;
/// Serialized size of the durable entries kept in memory (at most).
const CACHE_BYTES: usize = 32 << 20;
/// Most queued operations written in one transaction.
const MAX_BATCH_OPS: usize = 4096;
/// A committed pointer waiting this long for another write is written on its own.
const COMMITTED_IDLE: Duration = Duration::from_millis(100);

/// The redb database of a store, closable while other handles still exist.
pub(crate) struct DbHandle {
    path: PathBuf,
    db: RwLock<Option<Database>>,
}

impl DbHandle {
    /// Open (or create) the database at `path`, creating its tables.
    ///
    /// A database still held by a store that is shutting down in this process is waited for a
    /// short while.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(StoreError::storage(
                        path,
                        format!("cannot open the raft database: {e}"),
                    ));
                }
            }
        };
        Self::with_database(path, db)
    }

    /// A handle on an open database, its tables created.
    pub(crate) fn with_database(path: &Path, db: Database) -> Result<Self, StoreError> {
        let handle = Self {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
        };
        handle
            .write(Durability::Immediate, |txn| {
                txn.open_table(LOGS)?;
                txn.open_table(META)?;
                Ok(())
            })
            .map_err(|e| StoreError::storage(path, format!("cannot create tables: {e}")))?;
        Ok(handle)
    }

    /// Close the database file; later operations fail.
    pub(crate) fn close(&self) {
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        if guard.take().is_some() {
            tracing::debug!(path = %self.path.display(), "raft database closed");
        }
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, String> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard
            .as_ref()
            .ok_or_else(|| "the raft database is closed".to_string())?;
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        f(&txn).map_err(|e| e.to_string())
    }

    fn write<R>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, String> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard
            .as_ref()
            .ok_or_else(|| "the raft database is closed".to_string())?;
        let mut txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(durability).map_err(|e| e.to_string())?;
        let r = f(&txn).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        Ok(r)
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        let bytes = self.read(|txn| {
            let t = txn.open_table(META)?;
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })?;
        match bytes {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("corrupt `{key}` record: {e}")),
        }
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), String> {
        let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        self.write(durability, |txn| {
            let mut t = txn.open_table(META)?;
            t.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Carry out `actions` in order in one transaction, flushed to disk before it returns.
    fn apply(&self, actions: &[DbAction<'_>]) -> Result<(), String> {
        self.write(Durability::Immediate, |txn| {
            let mut logs = txn.open_table(LOGS)?;
            let mut meta = txn.open_table(META)?;
            for action in actions {
                match action {
                    DbAction::Insert(index, bytes) => {
                        logs.insert(*index, *bytes)?;
                    }
                    DbAction::TruncateFrom(from) => logs.retain_in(*from.., |_, _| false)?,
                    DbAction::PurgeUpto(upto) => logs.retain_in(..=*upto, |_, _| false)?,
                    DbAction::Meta(key, bytes) => {
                        meta.insert(*key, bytes.as_slice())?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Raw log entries with index in `range`, in order.
    fn log_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<(u64, Vec<u8>)>, String> {
        self.read(|txn| {
            let t = txn.open_table(LOGS)?;
            let mut out = Vec::new();
            for item in t.range::<u64>(range)? {
                let (k, v) = item?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn last_log(&self) -> Result<Option<Vec<u8>>, String> {
        self.read(|txn| {
            let t = txn.open_table(LOGS)?;
            Ok(t.last()?.map(|(_, v)| v.value().to_vec()))
        })
    }

    /// Record `id` as the owner of this database, or check it is the recorded owner.
    pub(crate) fn claim_raft_id(&self, id: u64) -> Result<(), StoreError> {
        let owner: Option<u64> = self
            .get_meta(KEY_RAFT_ID)
            .map_err(|e| StoreError::storage(&self.path, e))?;
        match owner {
            Some(o) if o == id => Ok(()),
            Some(o) => Err(StoreError::InvalidArgument {
                field: "raft_id".to_string(),
                reason: format!(
                    "the store at {} belongs to raft id {o}, not {id}; open it with raft id {o} or use an empty directory",
                    self.path.display()
                ),
            }),
            None => self
                .put_meta(KEY_RAFT_ID, &id, Durability::Immediate)
                .map_err(|e| StoreError::storage(&self.path, e)),
        }
    }

    /// Whether the database holds any Raft state (a vote, log entries or a purge mark).
    pub(crate) fn has_raft_state(&self) -> Result<bool, StoreError> {
        let err = |e: String| StoreError::storage(&self.path, e);
        let vote = self.read_vote().map_err(err)?;
        let purged: Option<LogId> = self.get_meta(KEY_PURGED).map_err(err)?;
        let last = self.last_log().map_err(err)?;
        Ok(vote.is_some() || purged.is_some() || last.is_some())
    }

    /// The vote as stored.
    pub(crate) fn read_vote(&self) -> Result<Option<Vote>, String> {
        self.get_meta(KEY_VOTE)
    }
}

/// One change to the database, in a writer's transaction.
enum DbAction<'a> {
    Insert(u64, &'a [u8]),
    TruncateFrom(u64),
    PurgeUpto(u64),
    Meta(&'static str, Vec<u8>),
}

/// Everything force_new_cluster needs from a stopped store's log.
pub(crate) struct LogDump<S: StateMachine> {
    pub(crate) entries: Vec<Entry<S>>,
}

/// Read every log entry of the database at `path` (which must not be open elsewhere).
pub(crate) fn dump_log<S: StateMachine>(path: &Path) -> Result<LogDump<S>, StoreError> {
    let db = DbHandle::open(path)?;
    let raw = db
        .log_range((Bound::Unbounded, Bound::Unbounded))
        .map_err(|e| StoreError::storage(path, format!("cannot read the raft log: {e}")))?;
    db.close();
    let mut entries = Vec::with_capacity(raw.len());
    for (index, bytes) in raw {
        let entry: Entry<S> = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::storage(path, format!("corrupt log entry {index}: {e}")))?;
        entries.push(entry);
    }
    Ok(LogDump { entries })
}

/// Where an operation that waits for the writer learns how it went.
type Done = oneshot::Sender<Result<(), String>>;

/// An operation queued for the writer thread.
enum Op<S: StateMachine> {
    /// Serialized entries, in index order, and openraft's callback for when they are durable.
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: LogFlushed<Cfg<S>>,
    },
    /// Delete the entries from this index on.
    Truncate { from: u64, done: Done },
    /// Delete the entries up to this log id and record it as purged.
    Purge { upto: LogId, done: Done },
    /// Record the vote.
    Vote { vote: Vote, done: Done },
}

impl<S: StateMachine> Op<S> {
    /// Report the outcome of the operation to whoever waits for it.
    fn complete(self, result: Result<(), String>) {
        match self {
            Op::Append { flushed, .. } => {
                flushed.log_io_completed(result.map_err(std::io::Error::other));
            }
            Op::Truncate { done, .. } | Op::Purge { done, .. } | Op::Vote { done, .. } => {
                // The caller may have given up waiting; nothing to tell then.
                let _ = done.send(result);
            }
        }
    }
}

/// An entry kept in memory.
struct Cached<S: StateMachine> {
    entry: Entry<S>,
    /// Size of the serialized entry.
    bytes: usize,
    /// Written to disk (it may leave memory).
    durable: bool,
}

/// The log as openraft sees it: the database plus what is queued for the writer.
struct LogMem<S: StateMachine> {
    /// The newest entries, contiguous: `cache[0]` has index `first`. Every entry that is not
    /// durable yet is here; entries below `first` are read from the database.
    cache: VecDeque<Cached<S>>,
    /// Index of `cache[0]`, or where the next entry goes when the cache is empty.
    first: u64,
    /// Serialized size of the cached entries.
    cache_bytes: usize,
    /// Id of the last entry, or the last purged id when there is no entry.
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
    /// The writer's queue; `None` once the log is closed.
    queue: Option<mpsc::Sender<Op<S>>>,
    /// Why the writer stopped accepting work: after a failed write the disk may lack queued
    /// entries, so nothing more is written.
    failed: Option<String>,
}

impl<S: StateMachine> LogMem<S> {
    fn end(&self) -> u64 {
        self.first + self.cache.len() as u64
    }

    /// Why no operation can be queued, if none can.
    fn refusal(&self) -> Option<String> {
        if let Some(e) = &self.failed {
            return Some(format!("an earlier write to the raft log failed: {e}"));
        }
        if self.queue.is_none() {
            return Some("the raft log is closed".to_string());
        }
        None
    }

    /// Queue `op` for the writer; on failure the operation is completed with the error.
    fn send(&mut self, op: Op<S>) -> Result<(), String> {
        let err = match &self.queue {
            Some(q) => match q.send(op) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(op)) => {
                    let e = "the raft log writer has stopped".to_string();
                    self.failed.get_or_insert_with(|| e.clone());
                    op.complete(Err(e.clone()));
                    e
                }
            },
            None => {
                let e = "the raft log is closed".to_string();
                op.complete(Err(e.clone()));
                e
            }
        };
        Err(err)
    }

    /// Drop the cached entries from `index` on.
    fn cut_from(&mut self, index: u64) {
        if index <= self.first {
            self.cache.clear();
            self.cache_bytes = 0;
            self.first = index;
            return;
        }
        let keep = usize::try_from(index - self.first).unwrap_or(usize::MAX);
        while self.cache.len() > keep {
            if let Some(c) = self.cache.pop_back() {
                self.cache_bytes = self.cache_bytes.saturating_sub(c.bytes);
            }
        }
    }

    /// Add entries (in index order) after the cached ones.
    fn push(&mut self, entries: Vec<(Entry<S>, usize)>) {
        let Some(start) = entries.first().map(|(e, _)| e.log_id.index) else {
            return;
        };
        if self.cache.is_empty() {
            self.first = start;
        } else if start < self.end() {
            // openraft truncates before it overwrites; replacing the tail is what it means.
            self.cut_from(start);
            if self.cache.is_empty() {
                self.first = start;
            }
        } else if start > self.end() {
            tracing::warn!(
                expected = self.end(),
                got = start,
                "raft log append leaves a gap; older entries are read from disk"
            );
            self.cache.clear();
            self.cache_bytes = 0;
            self.first = start;
        }
        for (entry, bytes) in entries {
            self.last_log_id = Some(entry.log_id);
            self.cache_bytes += bytes;
            self.cache.push_back(Cached {
                entry,
                bytes,
                durable: false,
            });
        }
    }

    /// The cached entry at `index`, if any.
    fn cached(&self, index: u64) -> Option<&Cached<S>> {
        let pos = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.cache.get(pos)
    }

    /// Mark the entries written by a transaction durable, then let old ones go.
    fn written(&mut self, batch: &[Op<S>]) {
        let ids = batch.iter().flat_map(|op| match op {
            Op::Append { entries, .. } => entries.as_slice(),
            _ => &[],
        });
        for &(id, _) in ids {
            if let Some(pos) = id
                .index
                .checked_sub(self.first)
                .and_then(|p| usize::try_from(p).ok())
                && let Some(c) = self.cache.get_mut(pos)
                && c.entry.log_id == id
            {
                c.durable = true;
            }
        }
        while self.cache.len() > CACHE_ENTRIES || self.cache_bytes > CACHE_BYTES {
            match self.cache.front() {
                Some(c) if c.durable => {
                    self.cache_bytes = self.cache_bytes.saturating_sub(c.bytes);
                    self.cache.pop_front();
                    self.first += 1;
                }
                _ => break,
            }
        }
    }
}

/// What the [`LogStore`] handles share with each other and with the writer thread.
struct Shared<S: StateMachine> {
    db: Arc<DbHandle>,
    mem: Mutex<LogMem<S>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl<S: StateMachine> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, LogMem<S>> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer thread: drains the queue and writes each batch in one flushed transaction.
struct Writer<S: StateMachine> {
    db: Arc<DbHandle>,
    shared: Weak<Shared<S>>,
    queue: mpsc::Receiver<Op<S>>,
    /// Set by the first failed write; every later operation fails with it.
    failed: Option<String>,
    /// The committed pointer as on disk.
    committed_on_disk: Option<LogId>,
}

impl<S: StateMachine> Writer<S> {
    fn run(mut self) {
        loop {
            match self.queue.recv_timeout(COMMITTED_IDLE) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH_OPS {
                        match self.queue.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.write(batch);
                }
                // Idle: a committed pointer that moved goes to disk on its own.
                Err(mpsc::RecvTimeoutError::Timeout) => self.write(Vec::new()),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Closed: the last committed pointer goes to disk too.
        self.write(Vec::new());
        tracing::debug!("raft log writer stopped");
    }

    /// Write `batch` (and the committed pointer, if it moved) in one transaction, then
    /// complete its operations in order.
    fn write(&mut self, batch: Vec<Op<S>>) {
        if let Some(e) = &self.failed {
            let e = format!("an earlier write to the raft log failed: {e}");
            for op in batch {
                op.complete(Err(e.clone()));
            }
            return;
        }
        let committed = self
            .shared
            .upgrade()
            .map(|shared| shared.lock().committed)
            .filter(|c| *c != self.committed_on_disk);
        if batch.is_empty() && committed.is_none() {
            return;
        }
        let result = self.write_ops(&batch, committed);
        let entries: usize = batch
            .iter()
            .map(|op| match op {
                Op::Append { entries, .. } => entries.len(),
                _ => 0,
            })
            .sum();
        match &result {
            Ok(()) => {
                tracing::trace!(
                    ops = batch.len(),
                    entries,
                    "raft log batch written and flushed"
                );
                if let Some(c) = committed {
                    self.committed_on_disk = c;
                }
                if let Some(shared) = self.shared.upgrade() {
                    shared.lock().written(&batch);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), entries, "writing the raft log failed; it accepts no more writes");
                self.failed = Some(e.clone());
                if let Some(shared) = self.shared.upgrade() {
                    shared.lock().failed.get_or_insert_with(|| e.clone());
                }
            }
        }
        for op in batch {
            op.complete(result.clone());
        }
    }

    fn write_ops(&self, batch: &[Op<S>], committed: Option<Option<LogId>>) -> Result<(), String> {
        let mut actions = Vec::with_capacity(batch.len() + 1);
        for op in batch {
            match op {
                Op::Append { entries, .. } => {
                    for (id, bytes) in entries {
                        actions.push(DbAction::Insert(id.index, bytes.as_slice()));
                    }
                }
                Op::Truncate { from, .. } => actions.push(DbAction::TruncateFrom(*from)),
                Op::Purge { upto, .. } => {
                    actions.push(DbAction::Meta(KEY_PURGED, encode("purged log id", upto)?));
                    actions.push(DbAction::PurgeUpto(upto.index));
                }
                Op::Vote { vote, .. } => {
                    actions.push(DbAction::Meta(KEY_VOTE, encode("vote", vote)?));
                }
            }
        }
        if let Some(c) = committed {
            actions.push(DbAction::Meta(
                KEY_COMMITTED,
                encode("committed log id", &c)?,
            ));
        }
        self.db.apply(&actions)
    }
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("cannot encode the {what}: {e}"))
}

/// openraft's log storage (and log reader): a handle on the log of one store.
pub(crate) struct LogStore<S: StateMachine> {
    shared: Arc<Shared<S>>,
}

impl<S: StateMachine> Clone for LogStore<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S: StateMachine> LogStore<S> {
    /// Load the log's state from `db` and start its writer thread (named after `raft_id`).
    /// Blocking.
    pub(crate) fn open(db: Arc<DbHandle>, raft_id: u64) -> Result<Self, StoreError> {
        let err = |e: String| StoreError::storage(&db.path, e);
        let last_purged: Option<LogId> = db.get_meta(KEY_PURGED).map_err(err)?;
        let committed: Option<Option<LogId>> = db.get_meta(KEY_COMMITTED).map_err(err)?;
        let last = match db.last_log().map_err(err)? {
            Some(bytes) => {
                let entry: Entry<S> = serde_json::from_slice(&bytes)
                    .map_err(|e| err(format!("corrupt last log entry: {e}")))?;
                Some(entry.log_id)
            }
            None => None,
        };
        let last_log_id = last.or(last_purged);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            db: db.clone(),
            mem: Mutex::new(LogMem {
                cache: VecDeque::new(),
                first: last_log_id.map_or(0, |l| l.index + 1),
                cache_bytes: 0,
                last_log_id,
                last_purged,
                committed: committed.flatten(),
                queue: Some(tx),
                failed: None,
            }),
            writer: Mutex::new(None),
        });
        let writer = Writer {
            db: db.clone(),
            shared: Arc::downgrade(&shared),
            queue: rx,
            failed: None,
            committed_on_disk: committed.flatten(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("raft-log-{raft_id}"))
            .spawn(move || writer.run())
            .map_err(|e| err(format!("cannot start the raft log writer thread: {e}")))?;
        *shared.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(Self { shared })
    }

    /// Write what is queued (the committed pointer included), stop the writer and close the
    /// database. Blocking. Later operations fail.
    pub(crate) fn close(&self) {
        // Dropping the queue's sender lets the writer drain it and stop.
        drop(self.shared.lock().queue.take());
        let handle = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the raft log writer thread panicked");
        }
        self.shared.db.close();
    }

    fn decode(index: u64, bytes: &[u8]) -> Result<Entry<S>, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("corrupt log entry {index}: {e}"))
    }

    /// The id of the entry at `index` (which must not be past the last entry).
    fn log_id_at(&self, index: u64) -> Result<Option<LogId>, String> {
        {
            let mem = self.shared.lock();
            if let Some(c) = mem.cached(index) {
                return Ok(Some(c.entry.log_id));
            }
            if let Some(p) = mem.last_purged
                && p.index >= index
            {
                return Ok((p.index == index).then_some(p));
            }
        }
        // Not in memory, so durable: on disk.
        let raw = self
            .shared
            .db
            .log_range((Bound::Included(index), Bound::Included(index)))?;
        match raw.first() {
            Some((i, b)) => Self::decode(*i, b).map(|e| Some(e.log_id)),
            None => Ok(None),
        }
    }

    /// Queue an operation that waits for the writer, and wait for it.
    async fn queue_and_wait(
        &self,
        op: impl FnOnce(Done) -> Op<S>,
        before: impl FnOnce(&mut LogMem<S>),
    ) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        {
            let mut mem = self.shared.lock();
            if let Some(e) = mem.refusal() {
                return Err(e);
            }
            before(&mut mem);
            mem.send(op(tx))?;
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err("the raft log writer stopped before answering".to_string()),
        }
    }
}

/// `range` as `[start, end)`.
fn span<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

fn read_logs_err(e: String) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e)).into()
}

fn write_logs_err(e: String) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e)).into()
}

impl<S: StateMachine> RaftLogReader<Cfg<S>> for LogStore<S> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<S>>, StorageError> {
        let (start, end) = span(&range);
        if start >= end {
            return Ok(Vec::new());
        }
        // Newest entries from memory; older ones, all durable, from the database.
        let (cached, disk_end) = {
            let mem = self.shared.lock();
            let from = start.max(mem.first);
            let cached: Vec<Entry<S>> = if from < end.min(mem.end()) {
                let skip = usize::try_from(from - mem.first).unwrap_or(usize::MAX);
                let take = usize::try_from(end.min(mem.end()) - from).unwrap_or(usize::MAX);
                mem.cache
                    .iter()
                    .skip(skip)
                    .take(take)
                    .map(|c| c.entry.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (cached, end.min(mem.first))
        };
        if start >= disk_end {
            return Ok(cached);
        }
        let raw = self
            .shared
            .db
            .log_range((Bound::Included(start), Bound::Excluded(disk_end)))
            .map_err(read_logs_err)?;
        let mut out = Vec::with_capacity(raw.len() + cached.len());
        for (i, b) in &raw {
            let entry = Self::decode(*i, b).map_err(|e| {
                StorageError::from(StorageIOError::read_log_at_index(*i, AnyError::error(e)))
            })?;
            out.push(entry);
        }
        out.extend(cached);
        Ok(out)
    }
}

impl<S: StateMachine> RaftLogStorage<Cfg<S>> for LogStore<S> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Cfg<S>>, StorageError> {
        let mem = self.shared.lock();
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: mem.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.queue_and_wait(|done| Op::Vote { vote, done }, |_| {})
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        // Every vote is on disk before save_vote returns.
        self.shared
            .db
            .read_vote()
            .map_err(|e| StorageIOError::read_vote(AnyError::error(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written with the next transaction, not flushed on its own: a committed pointer lost
        // in a crash only means replaying a little less at start-up.
        let mut mem = self.shared.lock();
        if let Some(e) = mem.refusal() {
            return Err(write_logs_err(e));
        }
        // The writer takes it from here with its next transaction.
        mem.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.shared.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Cfg<S>>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<S>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        let mut cached = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::error(e)))?;
            let id = entry.log_id;
            cached.push((entry, bytes.len()));
            encoded.push((id, bytes));
        }
        if encoded.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let mut mem = self.shared.lock();
        if let Some(e) = mem.refusal() {
            drop(mem);
            callback.log_io_completed(Err(std::io::Error::other(e.clone())));
            return Err(write_logs_err(e));
        }
        // Readable at once; durable once the writer calls back.
        mem.push(cached);
        mem.send(Op::Append {
            entries: encoded,
            flushed: callback,
        })
        .map_err(write_logs_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(from = log_id.index, "truncating conflicting log entries");
        let from = log_id.index;
        let new_last = match from.checked_sub(1) {
            None => None,
            Some(prev) => self.log_id_at(prev).map_err(write_logs_err)?,
        };
        self.queue_and_wait(
            |done| Op::Truncate { from, done },
            |mem| {
                if mem.last_log_id.is_some_and(|l| l.index >= from) {
                    mem.last_log_id = new_last.or(mem.last_purged);
                }
                mem.cut_from(from);
            },
        )
        .await
        .map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(
            upto = log_id.index,
            "purging log entries behind the snapshot"
        );
        self.queue_and_wait(
            |done| Op::Purge { upto: log_id, done },
            |mem| {
                if mem.last_purged < Some(log_id) {
                    mem.last_purged = Some(log_id);
                }
                if mem.last_log_id < Some(log_id) {
                    mem.last_log_id = Some(log_id);
                }
                while mem.first <= log_id.index {
                    match mem.cache.pop_front() {
                        Some(c) => {
                            mem.cache_bytes = mem.cache_bytes.saturating_sub(c.bytes);
                            mem.first += 1;
                        }
                        None => {
                            mem.first = log_id.index + 1;
                            break;
                        }
                    }
                }
            },
        )
        .await
        .map_err(write_logs_err)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

    use std::collections::BTreeMap;
    use std::sync::Condvar;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;

    use openraft::CommittedLeaderId;
    use openraft::EntryPayload;
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::StoreBuilder;
    use openraft::testing::Suite;
    use redb::backends::FileBackend;
    use serde::Deserialize;

    use super::*;
    use crate::sm::SmShared;
    use crate::sm::SmStore;
    use crate::types::Request;
    use crate::types::RequestId;

    #[derive(Debug, Default, Clone, Serialize, Deserialize)]
    struct Sum(u64);

    impl StateMachine for Sum {
        type Command = u64;
        type Output = u64;
        fn apply(&mut self, _index: u64, add: u64) -> u64 {
            self.0 += add;
            self.0
        }
    }

    /// A disk that can be made to fail (every write and flush returns EIO) or to stall its
    /// flushes until released.
    #[derive(Debug, Default)]
    pub(crate) struct Faults {
        /// Every write and flush fails with EIO while set.
        pub(crate) fail: AtomicBool,
        stalled: Mutex<bool>,
        released: Condvar,
    }

    impl Faults {
        fn stall(&self) {
            *self.stalled.lock().unwrap() = true;
        }

        fn release(&self) {
            *self.stalled.lock().unwrap() = false;
            self.released.notify_all();
        }

        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(5)); // EIO
            }
            Ok(())
        }
    }

    #[derive(Debug)]
    struct FaultyDisk {
        file: FileBackend,
        faults: Arc<Faults>,
    }

    impl redb::StorageBackend for FaultyDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.faults.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            let mut stalled = self.faults.stalled.lock().unwrap();
            while *stalled {
                stalled = self.faults.released.wait(stalled).unwrap();
            }
            drop(stalled);
            self.faults.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.faults.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.file.close()
        }
        fn try_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_shared_range(start, end)
        }
        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
            self.file.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.lock_shared_range(start, end)
        }
        fn unlock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.query_lock_range(start, end)
        }
    }

    /// Open the database at `path` on a disk with the given faults.
    pub(crate) fn open_faulty(path: &Path, faults: Arc<Faults>) -> Result<DbHandle, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::storage(path, e))?;
        let file = FileBackend::new(file).map_err(|e| StoreError::storage(path, e))?;
        let db = Database::builder()
            .create_with_backend(FaultyDisk { file, faults })
            .map_err(|e| StoreError::storage(path, e))?;
        DbHandle::with_database(path, db)
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64, add: u64) -> Entry<Sum> {
        Entry::<Sum> {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Request::Cmd {
                id: RequestId(u128::from(index) << 32 | u128::from(term)),
                cmd: add,
            }),
        }
    }

    /// (index, term, command) of each entry.
    fn summary(entries: &[Entry<Sum>]) -> Vec<(u64, u64, u64)> {
        entries
            .iter()
            .map(|e| {
                let cmd = match &e.payload {
                    EntryPayload::Normal(Request::Cmd { cmd, .. }) => *cmd,
                    other => panic!("unexpected payload {other:?}"),
                };
                (e.log_id.index, e.log_id.leader_id.term, cmd)
            })
            .collect()
    }

    struct Disk {
        dir: tempfile::TempDir,
        faults: Arc<Faults>,
    }

    impl Disk {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                faults: Arc::default(),
            }
        }

        fn open(&self) -> LogStore<Sum> {
            let db = open_faulty(&self.dir.path().join(DB_FILE), self.faults.clone()).unwrap();
            LogStore::open(Arc::new(db), 1).unwrap()
        }
    }

    /// Wait (without timing the code under test) for a condition another task brings about.
    async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
        for _ in 0..3000 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    /// Guard against a hang: the operation must finish (succeed or fail) eventually.
    async fn finishes<T>(what: &str, f: impl Future<Output = T>) -> T {
        match tokio::time::timeout(Duration::from_secs(60), f).await {
            Ok(r) => r,
            Err(_) => panic!("{what} hangs"),
        }
    }

    struct Builder;

    impl StoreBuilder<Cfg<Sum>, LogStore<Sum>, SmStore<Sum>, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore<Sum>, SmStore<Sum>), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let db = DbHandle::open(&dir.path().join(DB_FILE)).unwrap();
            let log = LogStore::open(Arc::new(db), 1).unwrap();
            let sm = SmStore {
                shared: Arc::new(SmShared::<Sum>::load(dir.path()).unwrap()),
            };
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn passes_the_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appended_entries_are_readable_before_they_are_durable() {
        let disk = Disk::new();
        let log = disk.open();
        disk.faults.stall();
        let mut appender = log.clone();
        let append = tokio::spawn(async move {
            appender
                .blocking_append([entry(1, 1, 10), entry(1, 2, 20), entry(1, 3, 30)])
                .await
        });
        // As soon as `append` returned, the entries are the log's, while the flush still hangs.
        let mut l = log.clone();
        eventually("the append is taken", async || {
            l.get_log_state().await.unwrap().last_log_id == Some(log_id(1, 3))
        })
        .await;
        let mut reader = log.clone().get_log_reader().await;
        let read = reader.try_get_log_entries(1..=3).await.unwrap();
        assert_eq!(summary(&read), vec![(1, 1, 10), (2, 1, 20), (3, 1, 30)]);
        assert_eq!(
            summary(&reader.try_get_log_entries(2..).await.unwrap()).len(),
            2
        );
        assert!(!append.is_finished(), "reported durable before the flush");

        disk.faults.release();
        finishes("the append", append).await.unwrap().unwrap();
        log.close();

        // On disk, read back by a fresh store.
        let mut log = disk.open();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 3)));
        let read = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(summary(&read), vec![(1, 1, 10), (2, 1, 20), (3, 1, 30)]);
        log.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncate_and_vote_stay_ordered_behind_queued_appends() {
        let disk = Disk::new();
        let mut log = disk.open();
        log.blocking_append([entry(1, 0, 0)]).await.unwrap();
        disk.faults.stall();
        // Five entries queued, their flush stalled; then a new leader replaces 3.. .
        let mut a = log.clone();
        let first =
            tokio::spawn(async move { a.blocking_append((1..=5).map(|i| entry(1, i, i))).await });
        let mut l = log.clone();
        eventually("the first append is taken", async || {
            l.get_log_state().await.unwrap().last_log_id == Some(log_id(1, 5))
        })
        .await;
        let mut t = log.clone();
        let truncate = tokio::spawn(async move { t.truncate(log_id(1, 3)).await });
        eventually("the truncation is taken", async || {
            l.get_log_state().await.unwrap().last_log_id == Some(log_id(1, 2))
        })
        .await;
        let mut v = log.clone();
        let vote = tokio::spawn(async move { v.save_vote(&Vote::new(2, 2)).await });
        let mut b = log.clone();
        let second = tokio::spawn(async move {
            b.blocking_append([entry(2, 3, 300), entry(2, 4, 400)])
                .await
        });
        eventually("the second append is taken", async || {
            l.get_log_state().await.unwrap().last_log_id == Some(log_id(2, 4))
        })
        .await;
        // Readers see the log as queued: the replaced entries are gone already.
        let read = log.try_get_log_entries(1..).await.unwrap();
        assert_eq!(
            summary(&read),
            vec![(1, 1, 1), (2, 1, 2), (3, 2, 300), (4, 2, 400)]
        );
        assert!(!truncate.is_finished() && !vote.is_finished() && !second.is_finished());

        disk.faults.release();
        finishes("the first append", first).await.unwrap().unwrap();
        finishes("the truncation", truncate).await.unwrap().unwrap();
        finishes("the vote", vote).await.unwrap().unwrap();
        finishes("the second append", second)
            .await
            .unwrap()
            .unwrap();
        log.close();

        let mut log = disk.open();
        let read = log.try_get_log_entries(1..).await.unwrap();
        assert_eq!(
            summary(&read),
            vec![(1, 1, 1), (2, 1, 2), (3, 2, 300), (4, 2, 400)]
        );
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 2)));
        log.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_appends_and_a_purge_survive_a_reopen() {
        let disk = Disk::new();
        let mut log = disk.open();
        // More entries than the memory keeps, so reads mix disk and memory.
        let n = CACHE_ENTRIES as u64 + 500;
        for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
            log.blocking_append(chunk.iter().map(|i| entry(1, *i, *i)))
                .await
                .unwrap();
        }
        log.save_committed(Some(log_id(1, n - 1))).await.unwrap();
        let all = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(all.len() as u64, n);
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, e)| e.log_id.index == i as u64)
        );
        log.purge(log_id(1, 99)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 99)));
        assert_eq!(state.last_log_id, Some(log_id(1, n - 1)));
        log.close();

        let mut log = disk.open();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 99)));
        assert_eq!(state.last_log_id, Some(log_id(1, n - 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, n - 1)));
        let rest = log.try_get_log_entries(..).await.unwrap();
        let expected: BTreeMap<u64, u64> = (100..n).map(|i| (i, i)).collect();
        let got: BTreeMap<u64, u64> = summary(&rest).into_iter().map(|(i, _, c)| (i, c)).collect();
        assert_eq!(got, expected);
        log.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_reaches_every_caller() {
        let disk = Disk::new();
        let mut log = disk.open();
        log.blocking_append([entry(1, 0, 0)]).await.unwrap();
        disk.faults.fail.store(true, Ordering::SeqCst);
        let err = finishes(
            "an append on a failing disk",
            log.blocking_append([entry(1, 1, 1)]),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("Input/output error"), "{err}");
        // The disk may now lack entries the log has taken: nothing more is accepted, even once
        // the disk works again.
        disk.faults.fail.store(false, Ordering::SeqCst);
        let err = finishes("a later append", log.blocking_append([entry(1, 2, 2)]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("earlier write"), "{err}");
        assert!(
            finishes("a vote", log.save_vote(&Vote::new(2, 2)))
                .await
                .is_err()
        );
        assert!(
            finishes("a truncation", log.truncate(log_id(1, 1)))
                .await
                .is_err()
        );
        assert!(finishes("a purge", log.purge(log_id(1, 0))).await.is_err());
        // Reads keep working.
        assert_eq!(log.try_get_log_entries(0..1).await.unwrap().len(), 1);
        log.close();
        assert!(log.blocking_append([entry(1, 2, 2)]).await.is_err());

        // What was durable is still there.
        let mut log = disk.open();
        assert_eq!(
            summary(&log.try_get_log_entries(..).await.unwrap()),
            vec![(0, 1, 0)]
        );
        log.close();
    }
}
