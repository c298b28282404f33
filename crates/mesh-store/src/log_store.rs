//! The Raft log, vote and committed pointer in a redb database.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
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

/// openraft's log storage (and log reader) over a [`DbHandle`].
pub(crate) struct LogStore<S> {
    db: Arc<DbHandle>,
    _p: PhantomData<fn() -> S>,
}

impl<S> Clone for LogStore<S> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            _p: PhantomData,
        }
    }
}

impl<S: StateMachine> LogStore<S> {
    pub(crate) fn new(db: Arc<DbHandle>) -> Self {
        Self {
            db,
            _p: PhantomData,
        }
    }

    fn decode(index: u64, bytes: &[u8]) -> Result<Entry<S>, (u64, String)> {
        serde_json::from_slice(bytes).map_err(|e| (index, format!("corrupt entry: {e}")))
    }

    /// Run a blocking database write off the async threads.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&DbHandle) -> Result<R, String> + Send + 'static,
    ) -> Result<R, String> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => r,
            Err(e) => Err(format!("storage task failed: {e}")),
        }
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
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
        let raw = self.db.log_range(bounds(&range)).map_err(read_logs_err)?;
        raw.iter()
            .map(|(i, b)| Self::decode(*i, b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(index, e)| {
                StorageIOError::read_log_at_index(index, AnyError::error(e)).into()
            })
    }
}

impl<S: StateMachine> RaftLogStorage<Cfg<S>> for LogStore<S> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Cfg<S>>, StorageError> {
        let last_purged: Option<LogId> = self.db.get_meta(KEY_PURGED).map_err(read_logs_err)?;
        let last = match self.db.last_log().map_err(read_logs_err)? {
            Some(bytes) => {
                let entry: Entry<S> = serde_json::from_slice(&bytes)
                    .map_err(|e| read_logs_err(format!("corrupt last entry: {e}")))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |db| db.put_meta(KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.db
            .read_vote()
            .map_err(|e| StorageIOError::read_vote(AnyError::error(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: the next durable write (every append is one) persists it. A
        // committed pointer lost in a crash only means replaying a little less at start-up.
        self.blocking(move |db| db.put_meta(KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(write_logs_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let c: Option<Option<LogId>> = self.db.get_meta(KEY_COMMITTED).map_err(read_logs_err)?;
        Ok(c.flatten())
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
        let mut batch = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::error(e)))?;
            batch.push((entry.log_id.index, bytes));
        }
        let n = batch.len();
        // One transaction for the whole batch, fsynced before the callback fires.
        let res = self
            .blocking(move |db| {
                db.write(Durability::Immediate, |txn| {
                    let mut t = txn.open_table(LOGS)?;
                    for (index, bytes) in &batch {
                        t.insert(*index, bytes.as_slice())?;
                    }
                    Ok(())
                })
            })
            .await;
        match res {
            Ok(()) => {
                tracing::trace!(entries = n, "log entries appended and flushed");
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(write_logs_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(from = log_id.index, "truncating conflicting log entries");
        let from = log_id.index;
        self.blocking(move |db| {
            db.write(Durability::Immediate, |txn| {
                let mut t = txn.open_table(LOGS)?;
                t.retain_in(from.., |_, _| false)?;
                Ok(())
            })
        })
        .await
        .map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(
            upto = log_id.index,
            "purging log entries behind the snapshot"
        );
        let bytes = serde_json::to_vec(&log_id).map_err(|e| write_logs_err(e.to_string()))?;
        let upto = log_id.index;
        self.blocking(move |db| {
            db.write(Durability::Immediate, |txn| {
                {
                    let mut m = txn.open_table(META)?;
                    m.insert(KEY_PURGED, bytes.as_slice())?;
                }
                let mut t = txn.open_table(LOGS)?;
                t.retain_in(..=upto, |_, _| false)?;
                Ok(())
            })
        })
        .await
        .map_err(write_logs_err)
    }
}
