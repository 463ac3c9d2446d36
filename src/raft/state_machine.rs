//! The Raft state machine: applies committed [`Command`]s to the DC's [`State`] and takes,
//! stores and installs snapshots. The state lives in memory behind a lock that the read
//! paths share; the latest snapshot lives on disk (written to a temporary file, fsync'd,
//! renamed), with a SHA-256 digest so a corrupt file is refused instead of served.
//!
//! Taking a snapshot holds the lock only to clone the tables, which are persistent maps (a
//! constant-time clone sharing structure with the live state, as Consul's go-memdb trees):
//! encoding and writing happen on a blocking thread while applies and reads go on.

use crate::metrics::RaftMetrics;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{ServerNode, TypeConfig};
use crate::state::{CommandResult, State, Tables};

type StorageResult<T> = Result<T, StorageError<u64>>;

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file could not be read.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is truncated or its digest does not match.
    #[error("{path} is corrupt ({reason}); refusing to start from it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What a snapshot holds: the state and where in the log it was taken.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    meta: SnapshotMeta<u64, ServerNode>,
    tables: Tables,
}

/// The replicated state as the read paths see it.
#[derive(Debug, Default)]
pub struct Replicated {
    /// The catalog and KV store.
    pub state: State,
    /// The last log id applied to `state`.
    pub last_applied: Option<LogId<u64>>,
    /// The last membership applied.
    pub membership: StoredMembership<u64, ServerNode>,
}

/// The state machine handed to openraft; clones share the same state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<RwLock<Replicated>>,
    dir: PathBuf,
    snapshot_idx: Arc<std::sync::atomic::AtomicU64>,
    metrics: RaftMetrics,
}

const SNAPSHOT_FILE: &str = "snapshot.bin";
const DIGEST_LEN: usize = 32;

fn io(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, openraft::AnyError::new(&e)).into()
}

fn seal(body: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = Vec::with_capacity(body.len() + DIGEST_LEN);
    out.extend_from_slice(digest.as_ref());
    out.extend_from_slice(body);
    out
}

fn unseal(path: &Path, data: &[u8]) -> Result<SnapshotBody, SnapshotFileError> {
    let corrupt = |reason: String| SnapshotFileError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if data.len() < DIGEST_LEN {
        return Err(corrupt("truncated".into()));
    }
    let (digest, body) = data.split_at(DIGEST_LEN);
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != digest {
        return Err(corrupt("digest mismatch".into()));
    }
    rmp_serde::from_slice(body).map_err(|e| corrupt(e.to_string()))
}

/// Writes `data` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl StateMachine {
    /// Counts into `metrics` (an agent's registered handles) from now on.
    pub fn with_metrics(mut self, metrics: RaftMetrics) -> StateMachine {
        self.metrics = metrics;
        self
    }

    /// Opens the state machine in `dir`, restoring the last snapshot if there is one.
    pub fn open(dir: &Path) -> Result<StateMachine, SnapshotFileError> {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotFileError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(SNAPSHOT_FILE);
        let mut replicated = Replicated::default();
        match std::fs::read(&path) {
            Ok(data) => {
                let body = unseal(&path, &data)?;
                replicated.state = State::from_tables(body.tables);
                replicated.last_applied = body.meta.last_log_id;
                replicated.membership = body.meta.last_membership;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SnapshotFileError::Io { path, source }),
        }
        Ok(StateMachine {
            shared: Arc::new(RwLock::new(replicated)),
            dir: dir.to_path_buf(),
            snapshot_idx: Arc::default(),
            metrics: RaftMetrics::unregistered(),
        })
    }

    /// The shared state, for readers.
    pub fn shared(&self) -> Arc<RwLock<Replicated>> {
        self.shared.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// Makes the sealed snapshot that `sealed` produces the one on disk, durably, all on a
    /// blocking thread (encoding a large state takes a while too); hands the bytes back.
    async fn persist(
        &self,
        sealed: impl FnOnce() -> std::io::Result<Vec<u8>> + Send + 'static,
    ) -> StorageResult<Vec<u8>> {
        let path = self.snapshot_path();
        tokio::task::spawn_blocking(move || {
            let sealed = sealed()?;
            write_durably(&path, &sealed).map(|()| sealed)
        })
        .await
        .map_err(io)?
        .map_err(io)
    }

    fn read_snapshot(&self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let path = self.snapshot_path();
        match std::fs::read(&path) {
            Ok(data) => {
                let body = unseal(&path, &data).map_err(io)?;
                Ok(Some(Snapshot {
                    meta: body.meta,
                    snapshot: Box::new(Cursor::new(data)),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// The state lock is held only to take the tables, which share their structure with
    /// the live ones (a constant-time clone): applies go on while the copy is encoded and
    /// written.
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let body = {
            let r = self.shared.read().expect("state lock poisoned");
            let n = self
                .snapshot_idx
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            SnapshotBody {
                meta: SnapshotMeta {
                    last_log_id: r.last_applied,
                    last_membership: r.membership.clone(),
                    snapshot_id: format!("{}-{}", r.last_applied.map_or(0, |l| l.index), n),
                },
                tables: r.state.tables().clone(),
            }
        };
        let meta = body.meta.clone();
        let sealed = self
            .persist(move || {
                let encoded = rmp_serde::to_vec_named(&body).map_err(std::io::Error::other)?;
                Ok(seal(&encoded))
            })
            .await?;
        self.metrics.snapshots.with_label_values(&["taken"]).inc();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(sealed)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, ServerNode>)> {
        let r = self.shared.read().expect("state lock poisoned");
        Ok((r.last_applied, r.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let _timer = self.metrics.apply_seconds.start_timer();
        let mut r = self.shared.write().expect("state lock poisoned");
        // The state is pure: the clock it keeps soft state by (lock-delays) is read here.
        let now = std::time::Instant::now();
        let mut out = Vec::new();
        for entry in entries {
            r.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => CommandResult::Ok,
                EntryPayload::Normal(cmd) => r.state.apply(
                    entry.log_id.index,
                    std::sync::Arc::unwrap_or_clone(cmd),
                    now,
                ),
                EntryPayload::Membership(m) => {
                    r.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResult::Ok
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, ServerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let path = self.snapshot_path();
        let body = unseal(&path, &data).map_err(io)?;
        self.persist(move || Ok(data)).await?;
        let mut r = self.shared.write().expect("state lock poisoned");
        r.state.restore(body.tables);
        r.last_applied = meta.last_log_id;
        r.membership = meta.last_membership.clone();
        self.metrics
            .snapshots
            .with_label_values(&["installed"])
            .inc();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.read_snapshot()
    }
}
