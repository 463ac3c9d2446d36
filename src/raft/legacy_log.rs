//! Imports the Raft log of earlier versions, one redb file (`raft/log.redb`), into the
//! write-ahead log, once, when a server starts on such a data dir: its vote, committed id,
//! purged id and every entry (each checked against the CRC-32 it was stored with).
//!
//! The import is written to a directory of its own that is renamed into place only once
//! it is complete and on disk, and the old file is then renamed to `log.redb.imported`
//! (kept, never read again): a crash at any point leaves either the old file to import
//! again or the finished log.

use std::path::Path;

use openraft::storage::RaftLogStorage;
use openraft::{Entry, LogId, Vote};
use redb::{Database, TableDefinition};
use serde::de::DeserializeOwned;

use super::TypeConfig;
use super::log_store::{LogOpenError, LogStore};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Marks an entry stored with a checksum (a byte MessagePack never uses).
const CHECKSUMMED: u8 = 0xc1;

/// What an earlier version's log holds.
#[derive(Default)]
struct Legacy {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    entries: Vec<Entry<TypeConfig>>,
}

/// A stored entry read back, its checksum verified; what is wrong with it otherwise.
fn decode_entry(stored: &[u8]) -> Result<Entry<TypeConfig>, String> {
    let payload = match stored.split_first() {
        Some((&CHECKSUMMED, rest)) => {
            let (sum, payload) = rest
                .split_at_checked(4)
                .ok_or("it is shorter than its checksum")?;
            let stored = u32::from_be_bytes(sum.try_into().expect("four bytes"));
            if stored != crc32fast::hash(payload) {
                return Err("it fails its checksum".into());
            }
            payload
        }
        _ => stored,
    };
    rmp_serde::from_slice(payload).map_err(|e| format!("it does not decode: {e}"))
}

fn meta<T: DeserializeOwned>(
    t: &redb::ReadOnlyTable<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, String> {
    match t.get(key).map_err(|e| e.to_string())? {
        Some(v) => rmp_serde::from_slice(v.value())
            .map(Some)
            .map_err(|e| format!("its {key} does not decode: {e}")),
        None => Ok(None),
    }
}

/// Reads the whole old log (a panic inside redb on a damaged file is an error too).
fn read(file: &Path) -> Result<Legacy, String> {
    let read = || -> Result<Legacy, String> {
        let db = Database::open(file).map_err(|e| e.to_string())?;
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let mut legacy = Legacy::default();
        if let Ok(t) = tx.open_table(META) {
            legacy.vote = meta(&t, "vote")?;
            legacy.committed = meta::<Option<LogId<u64>>>(&t, "committed")?.flatten();
            legacy.purged = meta(&t, "last_purged")?;
        }
        if let Ok(t) = tx.open_table(LOGS) {
            let after = legacy.purged.map_or(0, |p| p.index + 1);
            for r in t.range(after..).map_err(|e| e.to_string())? {
                let (k, v) = r.map_err(|e| e.to_string())?;
                let entry = decode_entry(v.value())
                    .map_err(|what| format!("entry {} is damaged ({what})", k.value()))?;
                legacy.entries.push(entry);
            }
        }
        Ok(legacy)
    };
    std::panic::catch_unwind(read).unwrap_or_else(|_| Err("the file is corrupt".into()))
}

/// If `raft_dir` holds an earlier version's log and no write-ahead log at `log_dir`, imports
/// it; returns whether it did.
pub async fn import_if_present(raft_dir: &Path, log_dir: &Path) -> Result<bool, LogOpenError> {
    let file = raft_dir.join("log.redb");
    if !file.is_file() {
        return Ok(false);
    }
    let failed = |what: String| LogOpenError::Import {
        file: file.clone(),
        what,
    };
    if !log_dir.exists() {
        let staging = raft_dir.join("log.importing");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| failed(e.to_string()))?;
        }
        let legacy = read(&file).map_err(failed)?;
        write(&staging, legacy).await.map_err(failed)?;
        std::fs::rename(&staging, log_dir).map_err(|e| failed(e.to_string()))?;
    }
    std::fs::rename(&file, raft_dir.join("log.redb.imported"))
        .map_err(|e| failed(e.to_string()))?;
    std::fs::File::open(raft_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed(e.to_string()))?;
    Ok(true)
}

/// Writes what the old log held into a new log at `dir`, durably.
async fn write(dir: &Path, legacy: Legacy) -> Result<(), String> {
    let mut store = LogStore::open(dir).map_err(|e| e.to_string())?;
    let e = |e: openraft::StorageError<u64>| e.to_string();
    if let Some(vote) = legacy.vote {
        store.save_vote(&vote).await.map_err(e)?;
    }
    if let Some(purged) = legacy.purged {
        store.purge(purged).await.map_err(e)?;
    }
    store.save_committed(legacy.committed).await.map_err(e)?;
    // The last flush covers the committed id too.
    store.append_durably(legacy.entries).await.map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log_store::tests::entry;
    use openraft::RaftLogReader;

    /// An old log: entries 1..=10 (with checksums), 1..=4 purged, 8 committed, a vote.
    fn old_log(file: &Path) {
        let db = Database::create(file).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut logs = tx.open_table(LOGS).unwrap();
            for i in 1..=10 {
                let payload = rmp_serde::to_vec_named(&entry(i)).unwrap();
                let mut stored = vec![CHECKSUMMED];
                stored.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
                stored.extend_from_slice(&payload);
                logs.insert(i, stored.as_slice()).unwrap();
            }
            let mut meta = tx.open_table(META).unwrap();
            meta.insert(
                "vote",
                rmp_serde::to_vec_named(&Vote::new_committed(3, 1))
                    .unwrap()
                    .as_slice(),
            )
            .unwrap();
            meta.insert(
                "committed",
                rmp_serde::to_vec_named(&Some(entry(8).log_id))
                    .unwrap()
                    .as_slice(),
            )
            .unwrap();
            meta.insert(
                "last_purged",
                rmp_serde::to_vec_named(&entry(4).log_id)
                    .unwrap()
                    .as_slice(),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    #[tokio::test]
    async fn an_old_log_is_imported_once_whole_and_the_old_file_set_aside() {
        let raft = tempfile::tempdir().unwrap();
        let log_dir = raft.path().join("log");
        old_log(&raft.path().join("log.redb"));
        // A crash during an earlier attempt left a partial import behind.
        std::fs::create_dir(raft.path().join("log.importing")).unwrap();
        assert!(import_if_present(raft.path(), &log_dir).await.unwrap());
        assert!(!raft.path().join("log.redb").exists());
        assert!(raft.path().join("log.redb.imported").is_file());
        assert!(!raft.path().join("log.importing").exists());
        assert!(!import_if_present(raft.path(), &log_dir).await.unwrap());

        let mut store = LogStore::open(&log_dir).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(4).log_id));
        assert_eq!(state.last_log_id, Some(entry(10).log_id));
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 1))
        );
        assert_eq!(store.read_committed().await.unwrap(), Some(entry(8).log_id));
        let entries = store.try_get_log_entries(5..).await.unwrap();
        assert_eq!(
            entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (5..=10).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_damaged_old_log_is_refused_and_left_in_place() {
        let raft = tempfile::tempdir().unwrap();
        let file = raft.path().join("log.redb");
        std::fs::write(&file, vec![0x5a; 8192]).unwrap();
        let err = import_if_present(raft.path(), &raft.path().join("log"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.redb"), "{err}");
        assert!(file.is_file());
        assert!(!raft.path().join("log").exists());
    }
}
