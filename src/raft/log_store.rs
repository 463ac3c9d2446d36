//! The durable Raft log on redb: entries, vote, committed id and last purged id, each write
//! committed with redb's immediate durability (fsync) before openraft is told it is done.
//!
//! Group commit: every write goes, in order, to one writer thread, which takes whatever has
//! queued up since its last commit and writes it in a single fsync'd transaction, then
//! completes each caller (openraft's flush callback for appends). Under load many appends
//! share one fsync; alone, an append costs one. Appended entries stay readable from memory
//! until their transaction has committed.
//!
//! A purge (after each snapshot, thousands of entries at once on every server) records the
//! purged id in the next transaction and deletes the entries a small chunk per transaction
//! afterwards, so that it never holds up the appends behind it: deleting a snapshot's worth
//! in one transaction took ~200 ms, long enough for the leader to give up on
//! AppendEntries to every follower.
//!
//! Every entry is stored with a CRC-32 of its bytes (as etcd's WAL records are), checked
//! whenever it is read and for the whole log when it is opened: a damaged entry stops the
//! server with a message naming the file and the index, and is never served.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

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

/// Marks a stored entry that carries a checksum: a byte MessagePack never uses, so entries
/// written before checksums (plain MessagePack) still read.
const CHECKSUMMED: u8 = 0xc1;

/// An entry as stored: the marker, the CRC-32 of the encoded entry, the encoded entry.
fn encode_entry(e: &Entry<TypeConfig>) -> StorageResult<Vec<u8>> {
    let payload = encode(e)?;
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(CHECKSUMMED);
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A stored entry read back, its checksum verified; what is wrong with it otherwise.
fn decode_entry(stored: &[u8]) -> Result<Entry<TypeConfig>, String> {
    let payload = match stored.split_first() {
        Some((&CHECKSUMMED, rest)) => {
            let (sum, payload) = rest
                .split_at_checked(4)
                .ok_or("it is shorter than its checksum")?;
            let stored = u32::from_be_bytes(sum.try_into().expect("four bytes"));
            let computed = crc32fast::hash(payload);
            if stored != computed {
                return Err(format!(
                    "it fails its checksum (stored {stored:08x}, computed {computed:08x})"
                ));
            }
            payload
        }
        _ => stored,
    };
    rmp_serde::from_slice(payload).map_err(|e| format!("it does not decode: {e}"))
}

/// A damaged entry: says which file and index, and what an operator does about it.
fn damaged(path: &Path, index: u64, what: &str) -> String {
    format!(
        "raft log {}: entry {index} is damaged ({what}); this server's copy cannot be \
         trusted: stop it, move its data dir away and let it rejoin from the other servers",
        path.display()
    )
}

/// One write, as queued for the writer thread.
enum Op {
    Append(Vec<(u64, u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    Truncate(u64, Reply),
    Purge(u64, Vec<u8>, Reply),
    Meta(&'static str, Vec<u8>, Reply),
    /// A metadata value nobody waits for and that may be lost in a crash (the committed
    /// id): never a transaction of its own, written with the next one (and durable with the
    /// next that has an fsync).
    Hint(&'static str, Vec<u8>),
}

type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The newest appended entries, by index, with the sequence number of the append that
/// wrote them: an entry is on disk once a commit has covered its append's sequence number
/// (the writer commits appends in order). Unflushed entries are always here; flushed ones
/// stay until more than [`RECENT`] are held, so that replication and the state machine
/// read what was just appended from memory instead of a read transaction on a blocking
/// thread. The entries held are consecutive and end at the newest: appends extend the
/// log, a truncation cuts its end, a purge and eviction its start.
type Pending = Arc<Mutex<BTreeMap<u64, (u64, Entry<TypeConfig>)>>>;

/// Flushed entries kept in memory behind the newest.
const RECENT: usize = 256;

/// The log store of one server. Cheap to clone: clones share the database and the writer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The commit-time histogram, once set.
    times: CommitTimes,
    /// The file, named in errors.
    path: Arc<PathBuf>,
    writer: mpsc::Sender<Op>,
    pending: Pending,
    seq: Arc<AtomicU64>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

/// Most operations one transaction takes, to bound the latency of the first in a batch.
const MAX_BATCH: usize = 4096;

/// Where the writer reports how long each commit (write and fsync) took, once the agent has
/// said (`LogStore::observe_commits`).
type CommitTimes = Arc<std::sync::OnceLock<prometheus::Histogram>>;

/// The writer thread: batches queued operations into one transaction each.
fn writer_loop(
    db: Arc<Database>,
    rx: mpsc::Receiver<Op>,
    pending: Pending,
    times: CommitTimes,
    mut doomed: Option<u64>,
) {
    // The sequence number of the newest append on disk.
    let mut flushed = None;
    // Hints not yet written, by key (the newest value of each): a hint alone is not worth
    // a transaction, and one of its own would hold up the appends queued behind it; it
    // rides along with the next one.
    let mut hints: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    loop {
        // With purged entries left to delete, an idle writer deletes a chunk instead of
        // waiting; otherwise it waits for the next operation.
        let first = match rx.try_recv() {
            Ok(op) => Some(op),
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) if doomed.is_none() => match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            },
            Err(mpsc::TryRecvError::Empty) => None,
        };
        let mut batch: Vec<Op> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        batch.retain_mut(|op| match op {
            Op::Hint(key, bytes) => {
                hints.insert(*key, std::mem::take(bytes));
                false
            }
            _ => true,
        });
        if batch.is_empty() && doomed.is_none() {
            continue;
        }
        batch.extend(hint_ops(&mut hints));
        let started = std::time::Instant::now();
        let result = write_batch(&db, &batch, &mut doomed).map_err(|e| e.to_string());
        if let Some(h) = times.get() {
            h.observe(started.elapsed().as_secs_f64());
        }
        if result.is_ok() {
            let newest = batch.iter().filter_map(|op| match op {
                Op::Append(entries, _) => entries.first().map(|(_, seq, _)| *seq),
                _ => None,
            });
            flushed = flushed.max(newest.max());
            let mut p = pending.lock().expect("pending lock poisoned");
            while p.len() > RECENT
                && p.first_key_value()
                    .is_some_and(|(_, (s, _))| Some(*s) <= flushed)
            {
                p.pop_first();
            }
        }
        for op in batch {
            match op {
                Op::Append(_, callback) => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other))
                }
                Op::Truncate(_, reply) | Op::Purge(_, _, reply) | Op::Meta(_, _, reply) => {
                    let _ = reply.send(result.clone());
                }
                Op::Hint(..) => {}
            }
        }
    }
    // The last hints go with the writer (without an fsync: a hint may be lost).
    if !hints.is_empty() {
        let _ = write_batch(&db, &hint_ops(&mut hints).collect::<Vec<_>>(), &mut None);
    }
}

/// The hints held back, as operations to write (and no longer held).
fn hint_ops(hints: &mut BTreeMap<&'static str, Vec<u8>>) -> impl Iterator<Item = Op> {
    std::mem::take(hints)
        .into_iter()
        .map(|(key, bytes)| Op::Hint(key, bytes))
}

/// Most purged entries one transaction deletes. A purge only records how far the log is
/// purged; the entries go a chunk per transaction, so that deleting thousands of them
/// (one snapshot's worth) never holds up the appends queued behind it.
const PURGE_CHUNK: u64 = 128;

/// Writes `batch` in one transaction, deleting the next chunk of purged entries (up to
/// `doomed`, inclusive) with it; `doomed` becomes `None` once none are left. The
/// transaction is fsync'd unless all it holds is hints and purged entries (which a restart
/// deletes again).
fn write_batch(db: &Database, batch: &[Op], doomed: &mut Option<u64>) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    if batch.iter().all(|op| matches!(op, Op::Hint(..))) {
        // Not persisted until the next durable commit, whose fsync then covers it.
        tx.set_durability(redb::Durability::None);
    }
    let mut left = *doomed;
    {
        let mut logs = tx.open_table(LOGS)?;
        let mut meta = tx.open_table(META)?;
        for op in batch {
            match op {
                Op::Append(entries, _) => {
                    for (index, _, bytes) in entries {
                        logs.insert(*index, bytes.as_slice())?;
                    }
                }
                Op::Truncate(from, _) => logs.retain_in(*from.., |_, _| false)?,
                Op::Purge(upto, purged, _) => {
                    meta.insert(PURGED, purged.as_slice())?;
                    left = left.max(Some(*upto));
                }
                Op::Meta(key, bytes, _) | Op::Hint(key, bytes) => {
                    meta.insert(*key, bytes.as_slice())?;
                }
            }
        }
        if let Some(upto) = left {
            let first = logs.first()?.map(|(k, _)| k.value());
            match first {
                Some(first) if first <= upto => {
                    let last = upto.min(first + PURGE_CHUNK - 1);
                    logs.retain_in(first..=last, |_, _| false)?;
                    if last == upto {
                        left = None;
                    }
                }
                _ => left = None,
            }
        }
    }
    // Otherwise Durability::Immediate (redb's default): fsync'd when commit returns.
    tx.commit()?;
    *doomed = left;
    Ok(())
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
    /// An entry fails its checksum or does not decode.
    #[error(
        "entry {index} is damaged ({what}); refusing to start from it: move the data dir away and let the server rejoin"
    )]
    Entry {
        /// Its log index.
        index: u64,
        /// What is wrong.
        what: String,
    },
}

/// Opens the database, turning a panic inside redb (which it raises on some damaged files,
/// such as a truncated one) into [`LogOpenError::Corrupt`] instead of a crash. The default
/// panic message is silenced for that call only; hook swaps are serialized.
fn open_guarded(path: &Path) -> Result<Database, LogOpenError> {
    guarded(|| Ok(Database::create(path).map_err(redb::Error::from)?))
}

/// Runs `f`, turning a panic inside redb into [`LogOpenError::Corrupt`].
fn guarded<T>(f: impl FnOnce() -> Result<T, LogOpenError>) -> Result<T, LogOpenError> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    match result {
        Ok(r) => r,
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

/// Reads every stored entry once, checking its checksum and that it decodes: a log with a
/// damaged entry is refused at start, before any of it could be served.
fn verify_all(db: &Database) -> Result<(), LogOpenError> {
    let tx = db.begin_read().map_err(redb::Error::from)?;
    let t = tx.open_table(LOGS).map_err(redb::Error::from)?;
    for r in t.iter().map_err(redb::Error::from)? {
        let (k, v) = r.map_err(redb::Error::from)?;
        decode_entry(v.value()).map_err(|what| LogOpenError::Entry {
            index: k.value(),
            what,
        })?;
    }
    Ok(())
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
        guarded(|| verify_all(&db))?;
        // Purged entries a stop left undeleted go first.
        let doomed = Self::read_meta::<LogId<u64>>(&db, PURGED)
            .map_err(|e| LogOpenError::Corrupt(format!("cannot read the purged id: {e}")))?
            .map(|l| l.index);
        let db = Arc::new(db);
        let pending = Pending::default();
        let (writer, rx) = mpsc::channel();
        let times = CommitTimes::default();
        let (d, p, t) = (db.clone(), pending.clone(), times.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(d, rx, p, t, doomed))
            .map_err(|e| LogOpenError::Corrupt(format!("cannot start the log writer: {e}")))?;
        Ok(LogStore {
            db,
            times,
            path: Arc::new(path.to_path_buf()),
            writer,
            pending,
            seq: Arc::default(),
        })
    }

    /// Reports every commit's duration (write and fsync) to `histogram` from now on.
    pub fn observe_commits(&self, histogram: prometheus::Histogram) {
        let _ = self.times.set(histogram);
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

    /// Queues `op` (built around its reply channel) and waits until it is on disk.
    async fn submit(&self, op: impl FnOnce(Reply) -> Op) -> StorageResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || io_err(std::io::Error::other("the log writer stopped"), true);
        self.writer.send(op(tx)).map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| io_err(std::io::Error::other(e), true))
    }

    async fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> StorageResult<()> {
        let bytes = encode(value)?;
        self.submit(|reply| Op::Meta(key, bytes, reply)).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let first = match range.start_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(i) => Some(i + 1),
            Bound::Unbounded => None,
        };
        let mut found = {
            let p = self.pending.lock().expect("pending lock poisoned");
            let held: BTreeMap<u64, Entry<TypeConfig>> = p
                .range(range.clone())
                .map(|(i, (_, e))| (*i, e.clone()))
                .collect();
            // The entries in memory are consecutive and end at the newest: a range that
            // starts among them is all there.
            if first.is_some_and(|f| p.first_key_value().is_some_and(|(i, _)| *i <= f)) {
                return Ok(held.into_values().collect());
            }
            held
        };
        // Otherwise memory and disk: an entry leaves memory only after its commit, so
        // whatever is missed in one is found in the other.
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        let path = self.path.clone();
        let stored = self
            .blocking(move |db| {
                let tx = db.begin_read().map_err(|e| io_err(e, false))?;
                let t = tx.open_table(LOGS).map_err(|e| io_err(e, false))?;
                t.range::<u64>((start, end))
                    .map_err(|e| io_err(e, false))?
                    .map(|r| {
                        let (k, v) = r.map_err(|e| io_err(e, false))?;
                        decode_entry(v.value()).map_err(|what| {
                            io_err(
                                std::io::Error::other(damaged(&path, k.value(), &what)),
                                false,
                            )
                        })
                    })
                    .collect::<StorageResult<Vec<_>>>()
            })
            .await?;
        for e in stored {
            found.entry(e.log_id.index).or_insert(e);
        }
        Ok(found.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let newest_pending = self
            .pending
            .lock()
            .expect("pending lock poisoned")
            .last_key_value()
            .map(|(_, (_, e))| e.log_id);
        let path = self.path.clone();
        let mut state = self
            .blocking(move |db| {
                let purged: Option<LogId<u64>> = Self::read_meta(db, PURGED)?;
                let tx = db.begin_read().map_err(|e| io_err(e, false))?;
                let t = tx.open_table(LOGS).map_err(|e| io_err(e, false))?;
                // Purged entries may still be on disk (they are deleted a chunk at a
                // time): the log ends at the newest stored entry above the purged id.
                let last = match t.last().map_err(|e| io_err(e, false))? {
                    Some((k, v)) if Some(k.value()) > purged.map(|p| p.index) => Some(
                        decode_entry(v.value())
                            .map_err(|what| {
                                io_err(
                                    std::io::Error::other(damaged(&path, k.value(), &what)),
                                    false,
                                )
                            })?
                            .log_id,
                    ),
                    _ => purged,
                };
                Ok(LogState {
                    last_purged_log_id: purged,
                    last_log_id: last,
                })
            })
            .await?;
        if newest_pending > state.last_log_id {
            state.last_log_id = newest_pending;
        }
        Ok(state)
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

    /// Queued as a hint, written with the next transaction the log makes: the committed id
    /// only lets a restarted server re-apply its log before it hears from a leader.
    /// Whatever value is on disk was committed, and the entries up to it were flushed in
    /// the same or an earlier transaction, so losing the newest hint in a crash costs
    /// nothing but a later catch-up. (In a transaction of its own, with an fsync, every
    /// write cost every server two; without one, the next write's append still waited
    /// behind it.)
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        let bytes = encode(&committed)?;
        self.writer
            .send(Op::Hint(COMMITTED, bytes))
            .map_err(|_| io_err(std::io::Error::other("the log writer stopped"), true))
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
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut encoded = Vec::new();
        {
            let mut pending = self.pending.lock().expect("pending lock poisoned");
            for e in entries {
                encoded.push((e.log_id.index, seq, encode_entry(&e)?));
                pending.insert(e.log_id.index, (seq, e));
            }
        }
        // Returns at once; the writer calls `callback` when the entries are on disk, and
        // only then may openraft count them as persisted.
        self.writer
            .send(Op::Append(encoded, callback))
            .map_err(|_| io_err(std::io::Error::other("the log writer stopped"), true))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.pending
            .lock()
            .expect("pending lock poisoned")
            .retain(|i, _| *i < log_id.index);
        self.submit(|reply| Op::Truncate(log_id.index, reply)).await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let purged = encode(&log_id)?;
        self.pending
            .lock()
            .expect("pending lock poisoned")
            .retain(|i, _| *i > log_id.index);
        self.submit(|reply| Op::Purge(log_id.index, purged, reply))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};
    use redb::ReadableTableMetadata;

    fn entry(index: u64) -> Entry<TypeConfig> {
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
    fn a_stored_entry_carries_a_checksum_that_catches_any_flipped_byte() {
        let stored = encode_entry(&entry(7)).unwrap();
        assert_eq!(stored[0], CHECKSUMMED);
        assert_eq!(decode_entry(&stored).unwrap().log_id.index, 7);
        for i in 1..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x01;
            let err = decode_entry(&bad).unwrap_err();
            assert!(
                err.contains("checksum") || err.contains("decode"),
                "byte {i}: {err}"
            );
        }
        assert!(decode_entry(&stored[..3]).unwrap_err().contains("shorter"));
        // Entries stored before checksums still read.
        let plain = encode(&entry(8)).unwrap();
        assert_eq!(decode_entry(&plain).unwrap().log_id.index, 8);
        assert!(
            damaged(Path::new("/d/raft/log.redb"), 7, "it fails its checksum")
                .contains("/d/raft/log.redb: entry 7")
        );
    }

    /// A file holding entries `1..=n` and, if given, a purged id at `purged`.
    fn prepared(path: &Path, n: u64, purged: Option<u64>) {
        let db = Database::create(path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut logs = tx.open_table(LOGS).unwrap();
            for i in 1..=n {
                logs.insert(i, encode_entry(&entry(i)).unwrap().as_slice())
                    .unwrap();
            }
            let mut meta = tx.open_table(META).unwrap();
            if let Some(p) = purged {
                meta.insert(PURGED, encode(&entry(p).log_id).unwrap().as_slice())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn stored(db: &Database) -> (Option<u64>, usize) {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(LOGS).unwrap();
        let first = t.first().unwrap().map(|(k, _)| k.value());
        (first, t.len().unwrap() as usize)
    }

    #[test]
    fn a_purge_records_its_id_at_once_and_deletes_the_entries_a_chunk_per_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        prepared(&path, 1000, None);
        let db = Database::create(&path).unwrap();
        let (reply, _rx) = tokio::sync::oneshot::channel();
        let purged = encode(&entry(900).log_id).unwrap();
        let mut doomed = None;
        write_batch(&db, &[Op::Purge(900, purged, reply)], &mut doomed).unwrap();
        assert_eq!(doomed, Some(900));
        assert_eq!(
            stored(&db),
            (Some(PURGE_CHUNK + 1), 1000 - PURGE_CHUNK as usize)
        );
        let mut transactions = 1;
        while doomed.is_some() {
            write_batch(&db, &[], &mut doomed).unwrap();
            transactions += 1;
        }
        assert_eq!(transactions, 900_u64.div_ceil(PURGE_CHUNK));
        assert_eq!(stored(&db), (Some(901), 100));
    }

    #[tokio::test]
    async fn purged_entries_a_stop_left_behind_are_not_in_the_log_and_go_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        // Purged past its last entry, as after installing a newer snapshot.
        prepared(&path, 1000, Some(1200));
        let mut store = LogStore::open(&path).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(1200).log_id));
        assert_eq!(state.last_log_id, Some(entry(1200).log_id));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stored(&store.db).1 > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "purged entries never deleted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
