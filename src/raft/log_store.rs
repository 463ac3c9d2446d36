//! The durable Raft log on redb: entries, vote, committed id and last purged id, each write
//! committed with redb's immediate durability (fsync) before openraft is told it is done.
//! Blocking disk work runs on tokio's blocking pool so the Raft core keeps its thread.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

type StorageResult<T> = Result<T, StorageError<u64>>;

fn io_err(e: impl std::error::Error + Send + Sync + 'static, write: bool) -> StorageError<u64> {
    let e = openraft::AnyError::new(&e);
    if write {
        StorageIOError::write_logs(e).into()
    } else {
        StorageIOError::read_logs(e).into()
    }
}

fn encode<T: Serialize>(v: &T) -> StorageResult<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(|e| io_err(e, true))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> StorageResult<T> {
    rmp_serde::from_slice(b).map_err(|e| io_err(e, false))
}

/// The log store of one server. Cheap to clone: readers share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

/// Why the log cannot be opened. Never retryable: the data dir needs an operator.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    /// redb reported an error (I/O, corruption it detected, lock held by another process).
    #[error(transparent)]
    Redb(#[from] redb::Error),
    /// The file is damaged in a way redb only notices by panicking (e.g. truncated).
    #[error("the file is corrupt or truncated ({0}); refusing to start from it")]
    Corrupt(String),
}

/// Opens the database, turning a panic inside redb (which it raises on some damaged files,
/// such as a truncated one) into [`LogOpenError::Corrupt`] instead of a crash. The default
/// panic message is silenced for that call only; hook swaps are serialized.
fn open_guarded(path: &Path) -> Result<Database, LogOpenError> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| Database::create(path));
    std::panic::set_hook(previous);
    match result {
        Ok(db) => Ok(db.map_err(redb::Error::from)?),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb panicked".into());
            Err(LogOpenError::Corrupt(what))
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log at `path`. A file redb cannot open is an error: the server
    /// must not start from a log it cannot trust.
    pub fn open(path: &Path) -> Result<LogStore, LogOpenError> {
        let db = open_guarded(path)?;
        let tx = db.begin_write().map_err(redb::Error::from)?;
        {
            tx.open_table(LOGS).map_err(redb::Error::from)?;
            tx.open_table(META).map_err(redb::Error::from)?;
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| io_err(e, true))?
    }

    fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> StorageResult<Option<T>> {
        let tx = db.begin_read().map_err(|e| io_err(e, false))?;
        let t = tx.open_table(META).map_err(|e| io_err(e, false))?;
        match t.get(key).map_err(|e| io_err(e, false))? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    async fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> StorageResult<()> {
        let bytes = encode(value)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| io_err(e, true))?;
            tx.open_table(META)
                .map_err(|e| io_err(e, true))?
                .insert(key, bytes.as_slice())
                .map_err(|e| io_err(e, true))?;
            tx.commit().map_err(|e| io_err(e, true))
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(|e| io_err(e, false))?;
            let t = tx.open_table(LOGS).map_err(|e| io_err(e, false))?;
            t.range::<u64>((start, end))
                .map_err(|e| io_err(e, false))?
                .map(|r| {
                    let (_, v) = r.map_err(|e| io_err(e, false))?;
                    decode(v.value())
                })
                .collect()
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        self.blocking(|db| {
            let purged: Option<LogId<u64>> = Self::read_meta(db, PURGED)?;
            let tx = db.begin_read().map_err(|e| io_err(e, false))?;
            let t = tx.open_table(LOGS).map_err(|e| io_err(e, false))?;
            let last = match t.last().map_err(|e| io_err(e, false))? {
                Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value())?.log_id),
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.write_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.blocking(|db| Self::read_meta(db, VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.write_meta(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self
            .blocking(|db| Self::read_meta::<Option<LogId<u64>>>(db, COMMITTED))
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode(&e)?)))
            .collect::<StorageResult<_>>()?;
        let result = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(|e| io_err(e, true))?;
                {
                    let mut t = tx.open_table(LOGS).map_err(|e| io_err(e, true))?;
                    for (i, bytes) in &encoded {
                        t.insert(*i, bytes.as_slice())
                            .map_err(|e| io_err(e, true))?;
                    }
                }
                // Durability::Immediate (redb's default): fsync'd when commit returns.
                tx.commit().map_err(|e| io_err(e, true))
            })
            .await;
        // Only now, with the entries on disk, may openraft count them as persisted.
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| io_err(e, true))?;
            tx.open_table(LOGS)
                .map_err(|e| io_err(e, true))?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(|e| io_err(e, true))?;
            tx.commit().map_err(|e| io_err(e, true))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let purged = encode(&log_id)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| io_err(e, true))?;
            tx.open_table(META)
                .map_err(|e| io_err(e, true))?
                .insert(PURGED, purged.as_slice())
                .map_err(|e| io_err(e, true))?;
            tx.open_table(LOGS)
                .map_err(|e| io_err(e, true))?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| io_err(e, true))?;
            tx.commit().map_err(|e| io_err(e, true))
        })
        .await
    }
}
