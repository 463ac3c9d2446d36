//! The durable Raft log: a write-ahead log of checksummed records in append-only chunk
//! files (the `raft-log` crate, by openraft's author), adapted to openraft's storage API.
//!
//! An append writes its entries' records and asks for a flush; the crate's flush thread
//! writes whatever has queued up since its last flush and `fdatasync`s once for all of it
//! (group commit: under load many appends share one sync, alone an append costs one), then
//! completes each caller: openraft's flush callback for appends, a reply for a vote, a
//! truncation or a purge. The committed id is a record without a flush of its own: it is
//! written with the next flush. The log's whole index (every entry's id and position) and
//! the entries of the newest chunk are held in memory, so replication and the state
//! machine read what was just appended without touching the disk; older entries are read
//! from their chunk, through a bounded cache.
//!
//! Every record carries a CRC-32 checked when it is read and, for the whole log, when it is
//! opened. A damaged record stops the server with a message naming the log and what is
//! wrong; a record cut short at the very end (a crash in the middle of a write, never
//! acknowledged) is dropped, as etcd's WAL does. A purge removes whole chunk files once every
//! entry in them is purged, after the purge record itself is on disk.
//!
//! A data dir written by an earlier version holds its log in one redb file; it is imported
//! once, before the log is opened, by the `legacy_log` module.

use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq::{Decode, Encode};
use raft_log::{Config, RaftLog};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;

type StorageResult<T> = Result<T, StorageError<u64>>;

fn io_err(e: impl std::error::Error + Send + Sync + 'static, write: bool) -> StorageError<u64> {
    let e = openraft::AnyError::new(&e);
    if write {
        StorageIOError::write_logs(e).into()
    } else {
        StorageIOError::read_logs(e).into()
    }
}

/// The largest value one record may declare: a bound on what a damaged length can make the
/// reader allocate. Entries are at most a few MiB (a restored snapshot's archive is the
/// largest command).
const MAX_VALUE: u32 = 1 << 30;

/// A value stored in the log in MessagePack, after its length: the record format the crate
/// asks of its log ids, payloads and votes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rmp<T>(pub T);

impl<T: Serialize> Encode for Rmp<T> {
    fn encode<W: Write>(&self, mut w: W) -> io::Result<usize> {
        let bytes = rmp_serde::to_vec_named(&self.0).map_err(io::Error::other)?;
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|l| *l <= MAX_VALUE)
            .ok_or_else(|| io::Error::other("a log value over 1 GiB"))?;
        w.write_all(&len.to_be_bytes())?;
        w.write_all(&bytes)?;
        Ok(4 + bytes.len())
    }
}

impl<T: DeserializeOwned> Decode for Rmp<T> {
    fn decode<R: Read>(mut r: R) -> io::Result<Self> {
        let mut len = [0; 4];
        r.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_VALUE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a value declares {len} bytes"),
            ));
        }
        let mut bytes = vec![0; len as usize];
        r.read_exact(&mut bytes)?;
        rmp_serde::from_slice(&bytes)
            .map(Rmp)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// The types the log stores: openraft's own, each in MessagePack.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wal;

impl raft_log::Types for Wal {
    type LogId = Rmp<LogId<u64>>;
    type LogPayload = Rmp<EntryPayload<TypeConfig>>;
    type Vote = Rmp<Vote<u64>>;
    type Callback = Done;
    type UserData = ();

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.0.index
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        match &payload.0 {
            EntryPayload::Normal(c) => c.approx_size() as u64,
            _ => 256,
        }
    }
}

/// Who waits for a flush: openraft (for appended entries) or an awaited reply; and, for the
/// commit-time histogram, when it was asked for.
pub struct Done {
    waiter: Waiter,
    since: Instant,
    times: Option<prometheus::Histogram>,
}

enum Waiter {
    Appended(LogFlushed<TypeConfig>),
    Reply(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for Done {
    fn send(self, res: io::Result<()>) {
        if let Some(h) = &self.times {
            h.observe(self.since.elapsed().as_secs_f64());
        }
        match self.waiter {
            Waiter::Appended(flushed) => flushed.log_io_completed(res),
            Waiter::Reply(tx) => {
                let _ = tx.send(res);
            }
        }
    }
}

/// Chunk files are closed at this size: the newest chunk's entries are all held in memory,
/// and only whole chunks are removed by a purge.
const CHUNK_BYTES: usize = 16 << 20;
/// ... or at this many records.
const CHUNK_RECORDS: usize = 64 * 1024;
/// Entries of older chunks kept in memory, at most (count and bytes).
const CACHE_ITEMS: usize = 64 * 1024;
const CACHE_BYTES: usize = 64 << 20;

/// Why the log cannot be opened. Never retryable: the data dir needs an operator.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    /// A record is damaged, a chunk missing, the directory locked by another process or
    /// unreadable.
    #[error(
        "{}; refusing to start from it: if a record is damaged, move the data dir away and let the server rejoin",
        one_line(.0)
    )]
    Wal(io::Error),
    /// The log of an earlier version could not be imported.
    #[error("{}: {what}; refusing to start from it", file.display())]
    Import {
        /// The earlier version's log file.
        file: PathBuf,
        /// What is wrong with it.
        what: String,
    },
}

/// An error's message on one line (the crate's errors nest their context over lines).
fn one_line(e: &io::Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The log store of one server. Cheap to clone: clones share the log.
#[derive(Clone)]
pub struct LogStore {
    log: Arc<Mutex<RaftLog<Wal>>>,
    /// The commit-time histogram, once set.
    times: Arc<std::sync::OnceLock<prometheus::Histogram>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    /// Opens (or creates) the log in the directory `dir`, reading and checking every record.
    /// A log that cannot be read whole is an error: the server must not start from a log it
    /// cannot trust.
    pub fn open(dir: &Path) -> Result<LogStore, LogOpenError> {
        std::fs::create_dir_all(dir).map_err(LogOpenError::Wal)?;
        let config = Config {
            dir: dir.to_string_lossy().into_owned(),
            chunk_max_size: Some(CHUNK_BYTES),
            chunk_max_records: Some(CHUNK_RECORDS),
            log_cache_max_items: Some(CACHE_ITEMS),
            log_cache_capacity: Some(CACHE_BYTES),
            ..Config::default()
        };
        let log = RaftLog::open(Arc::new(config)).map_err(LogOpenError::Wal)?;
        Ok(LogStore {
            log: Arc::new(Mutex::new(log)),
            times: Arc::default(),
        })
    }

    /// Reports every flush's duration (from the request to its fsync's end) to `histogram`
    /// from now on.
    pub fn observe_commits(&self, histogram: prometheus::Histogram) {
        let _ = self.times.set(histogram);
    }

    fn lock(&self) -> MutexGuard<'_, RaftLog<Wal>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn done(&self, waiter: Waiter) -> Done {
        Done {
            waiter,
            since: Instant::now(),
            times: self.times.get().cloned(),
        }
    }

    /// Appends `entries` and asks for a flush that completes `waiter`.
    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        waiter: Waiter,
    ) -> StorageResult<()> {
        let mut log = self.lock();
        log.append(entries.into_iter().map(|e| (Rmp(e.log_id), Rmp(e.payload))))
            .map_err(|e| io_err(e, true))?;
        log.flush(self.done(waiter)).map_err(|e| io_err(e, true))
    }

    /// Appends `entries` and waits until they are on disk.
    pub(super) async fn append_durably(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> StorageResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write_entries(entries, Waiter::Reply(tx))?;
        Self::flushed(rx).await
    }

    async fn flushed(rx: tokio::sync::oneshot::Receiver<io::Result<()>>) -> StorageResult<()> {
        rx.await
            .map_err(|_| io_err(io::Error::other("the log's flush thread stopped"), true))?
            .map_err(|e| io_err(e, true))
    }

    /// Waits until everything written so far is on disk (the newest committed id too).
    pub async fn sync(&self) -> StorageResult<()> {
        self.durably(|_| Ok(())).await
    }

    /// Writes a record with `write` and waits until it is on disk.
    async fn durably(
        &self,
        write: impl FnOnce(&mut RaftLog<Wal>) -> io::Result<()>,
    ) -> StorageResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut log = self.lock();
            write(&mut log).map_err(|e| io_err(e, true))?;
            log.flush(self.done(Waiter::Reply(tx)))
                .map_err(|e| io_err(e, true))?;
        }
        Self::flushed(rx).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// Entries of the newest chunk (and recent ones of older chunks) come from memory; others
    /// are read from their chunk file while the log is locked, which only a follower far
    /// behind, or a restart's re-apply, asks for.
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i + 1,
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if from >= to {
            return Ok(Vec::new());
        }
        self.lock()
            .read(from, to)
            .map(|r| {
                let (id, payload) = r.map_err(|e| io_err(e, false))?;
                Ok(Entry {
                    log_id: id.0,
                    payload: payload.0,
                })
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let log = self.lock();
        let state = log.log_state();
        Ok(LogState {
            last_purged_log_id: state.purged().map(|l| l.0),
            last_log_id: state.last().map(|l| l.0),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        let vote = Rmp(*vote);
        self.durably(|log| log.save_vote(vote).map(drop)).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        Ok(self.lock().log_state().vote().map(|v| v.0))
    }

    /// A record written with the next flush: the committed id only lets a restarted server
    /// re-apply its log before it hears from a leader. Whatever value is on disk was
    /// committed, and the entries up to it were flushed with or before it, so losing the
    /// newest in a crash costs nothing but a later catch-up. (Flushed on its own, every
    /// write would cost every server two syncs.)
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        if let Some(id) = committed {
            self.lock().commit(Rmp(id)).map_err(|e| io_err(e, true))?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.lock().log_state().committed().map(|l| l.0))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Returns at once; the flush thread calls `callback` when the entries are on disk,
        // and only then may openraft count them as persisted.
        self.write_entries(entries, Waiter::Appended(callback))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.durably(|log| log.truncate(log_id.index).map(drop))
            .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.durably(|log| log.purge(Rmp(log_id)).map(drop)).await
    }
}

#[cfg(test)]
pub(in crate::raft) mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    /// A KV write at `index` of term 3 (also the old-log import's tests' entry).
    pub(in crate::raft) fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload: EntryPayload::Normal(Arc::new(crate::state::Command::KvSet {
                key: "k".into(),
                value: bytes::Bytes::from_static(b"a value worth keeping"),
                flags: 0,
            })),
        }
    }

    #[test]
    fn a_value_reads_back_and_a_damaged_length_is_refused_without_allocating_it() {
        let mut buf = Vec::new();
        let n = Rmp(entry(7).payload).encode(&mut buf).unwrap();
        assert_eq!(n, buf.len());
        let back = Rmp::<EntryPayload<TypeConfig>>::decode(&buf[..]).unwrap();
        assert_eq!(format!("{:?}", back.0), format!("{:?}", entry(7).payload));
        let mut bad = buf.clone();
        bad[0] = 0xff;
        let err = Rmp::<EntryPayload<TypeConfig>>::decode(&bad[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Cut short: the reader says so (the log drops such a record only at its end).
        let err = Rmp::<EntryPayload<TypeConfig>>::decode(&buf[..buf.len() - 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    async fn appended(store: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
        store.append_durably(entries).await.unwrap();
    }

    #[tokio::test]
    async fn a_purge_removes_whole_chunk_files_once_their_entries_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let big = |index| Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload: EntryPayload::Normal(Arc::new(crate::state::Command::KvSet {
                key: "k".into(),
                value: bytes::Bytes::from(vec![7u8; 1 << 20]),
                flags: 0,
            })),
        };
        for i in 1..=40 {
            appended(&mut store, vec![big(i)]).await;
        }
        let chunks = || std::fs::read_dir(dir.path()).unwrap().count();
        let before = chunks();
        assert!(before >= 3, "16 MiB chunks: {before} files");
        store.purge(big(38).log_id).await.unwrap();
        // The removal rides on the next flush.
        appended(&mut store, vec![big(41)]).await;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while chunks() >= before {
            assert!(Instant::now() < deadline, "purged chunks never removed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(big(38).log_id));
        assert_eq!(state.last_log_id, Some(big(41).log_id));
        let read = store.try_get_log_entries(39..=41).await.unwrap();
        assert_eq!(read.len(), 3);
    }

    #[tokio::test]
    async fn the_committed_id_rides_with_the_next_flush_or_a_sync_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        appended(&mut store, vec![entry(1), entry(2)]).await;
        store.save_committed(Some(entry(2).log_id)).await.unwrap();
        appended(&mut store, vec![entry(3)]).await;
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(entry(2).log_id));
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(entry(3).log_id)
        );
        // With no append after it, `sync` (at shutdown) writes it.
        store.save_committed(Some(entry(3).log_id)).await.unwrap();
        store.sync().await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(entry(3).log_id));
    }
}
