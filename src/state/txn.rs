//! Transactions (Consul's `/v1/txn`, KV operations): up to [`MAX_OPS`] operations applied
//! in order in one log entry, all or nothing. A failing operation undoes the ones before it
//! (the tables are persistent maps: keeping the state before the transaction costs a
//! pointer copy) and the transaction answers which operation failed and why. A
//! transaction of reads and checks only runs on any server's state without Raft.

use serde::{Deserialize, Serialize};

use super::{CommandResult, KvEntry, State};

/// The most operations one transaction holds (Consul's limit).
pub const MAX_OPS: usize = 128;

/// A KV operation's verb (Consul's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvVerb {
    /// Sets the key.
    Set,
    /// Sets the key if its ModifyIndex is `index` (0: if absent).
    Cas,
    /// Sets the key and takes its lock for `session`.
    Lock,
    /// Sets the key and releases the lock `session` holds.
    Unlock,
    /// Reads the key (fails if absent).
    Get,
    /// Reads every key under the prefix.
    GetTree,
    /// Fails unless the key's ModifyIndex is `index`.
    CheckIndex,
    /// Fails unless `session` holds the key's lock.
    CheckSession,
    /// Fails if the key exists.
    CheckNotExists,
    /// Deletes the key.
    Delete,
    /// Deletes every key under the prefix.
    DeleteTree,
    /// Deletes the key if its ModifyIndex is `index`.
    DeleteCas,
}

impl KvVerb {
    /// The verb as Consul spells it.
    pub fn parse(text: &str) -> Option<KvVerb> {
        Some(match text {
            "set" => KvVerb::Set,
            "cas" => KvVerb::Cas,
            "lock" => KvVerb::Lock,
            "unlock" => KvVerb::Unlock,
            "get" => KvVerb::Get,
            "get-tree" => KvVerb::GetTree,
            "check-index" => KvVerb::CheckIndex,
            "check-session" => KvVerb::CheckSession,
            "check-not-exists" => KvVerb::CheckNotExists,
            "delete" => KvVerb::Delete,
            "delete-tree" => KvVerb::DeleteTree,
            "delete-cas" => KvVerb::DeleteCas,
            _ => return None,
        })
    }

    /// Whether it changes nothing (a transaction of such operations needs no Raft).
    pub fn is_read(self) -> bool {
        matches!(
            self,
            KvVerb::Get
                | KvVerb::GetTree
                | KvVerb::CheckIndex
                | KvVerb::CheckSession
                | KvVerb::CheckNotExists
        )
    }

    /// Whether it writes the key (else it reads it).
    pub fn writes(self) -> bool {
        !self.is_read()
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvOp {
    /// What to do.
    pub verb: KvVerb,
    /// The key (or prefix, for the tree verbs).
    pub key: String,
    /// The value written.
    pub value: bytes::Bytes,
    /// The flags written.
    pub flags: u64,
    /// The ModifyIndex compared.
    pub index: u64,
    /// The session locking, unlocking or checked.
    pub session: String,
}

/// What a transaction answered: the result of each operation (entries read or written;
/// nothing for deletes), or the operations that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// Every operation applied; their results in order.
    Applied(Vec<KvEntry>),
    /// Nothing applied: which operation failed and why.
    Failed(Vec<TxnError>),
}

/// Why an operation failed (Consul's `OpIndex` and `What`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    /// Its position in the transaction.
    pub op_index: usize,
    /// What went wrong.
    pub what: String,
}

impl State {
    /// Applies `ops` at log `index`: all of them, or none (the state is put back as it was
    /// when one fails).
    pub(super) fn txn(&mut self, index: u64, ops: &[KvOp]) -> CommandResult {
        let before = self.data.clone();
        let mut results = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match self.txn_op(index, op) {
                Ok(found) => results.extend(found),
                Err(what) => {
                    self.data = before;
                    return CommandResult::Txn(TxnOutcome::Failed(vec![TxnError {
                        op_index: i,
                        what,
                    }]));
                }
            }
        }
        CommandResult::Txn(TxnOutcome::Applied(results))
    }

    /// Runs a transaction of reads and checks only, changing nothing.
    pub fn txn_read(&self, ops: &[KvOp]) -> TxnOutcome {
        let mut results = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match self.txn_check(op) {
                Ok(found) => results.extend(found),
                Err(what) => return TxnOutcome::Failed(vec![TxnError { op_index: i, what }]),
            }
        }
        TxnOutcome::Applied(results)
    }

    /// A read or check: the entries it returns, or why it fails.
    fn txn_check(&self, op: &KvOp) -> Result<Vec<KvEntry>, String> {
        let key = &op.key;
        let current = self.kv_get(key);
        match op.verb {
            KvVerb::Get => current
                .cloned()
                .map(|e| vec![e])
                .ok_or_else(|| format!("key {key:?} doesn't exist")),
            KvVerb::GetTree => Ok(self.kv_prefix(key).cloned().collect()),
            KvVerb::CheckIndex => match current {
                Some(e) if e.modify_index == op.index => Ok(vec![meta(e)]),
                Some(e) => Err(format!(
                    "current modify index {} != {}",
                    e.modify_index, op.index
                )),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            KvVerb::CheckSession => match current {
                Some(e) if e.session.as_deref() == Some(op.session.as_str()) => Ok(vec![meta(e)]),
                Some(_) => Err(format!("lock not held by session {:?}", op.session)),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            KvVerb::CheckNotExists => match current {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(Vec::new()),
            },
            _ => Err("not a read".into()),
        }
    }

    /// One operation at log `index`: the entries it returns, or why it fails.
    fn txn_op(&mut self, index: u64, op: &KvOp) -> Result<Vec<KvEntry>, String> {
        if op.verb.is_read() {
            return self.txn_check(op);
        }
        let key = op.key.clone();
        let refused = |r: CommandResult, what: String| match r {
            CommandResult::Bool(true) | CommandResult::Ok => Ok(()),
            CommandResult::Rejected(why) => Err(why),
            _ => Err(what),
        };
        match op.verb {
            KvVerb::Set => self.kv_put(index, key.clone(), op.value.clone(), op.flags),
            KvVerb::Cas => refused(
                self.kv_cas(index, key.clone(), op.value.clone(), op.flags, op.index),
                format!("failed to set key {key:?}, index is stale"),
            )?,
            KvVerb::Lock => refused(
                self.kv_acquire(
                    index,
                    key.clone(),
                    op.value.clone(),
                    op.flags,
                    op.session.clone(),
                ),
                format!("failed to lock key {key:?}, lock is already held"),
            )?,
            KvVerb::Unlock => refused(
                self.kv_release(
                    index,
                    key.clone(),
                    op.value.clone(),
                    op.flags,
                    op.session.clone(),
                ),
                format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                ),
            )?,
            KvVerb::Delete => {
                self.kv_delete(index, &key);
                return Ok(Vec::new());
            }
            KvVerb::DeleteTree => {
                self.kv_delete_tree(index, &key);
                return Ok(Vec::new());
            }
            KvVerb::DeleteCas => {
                refused(
                    self.kv_delete_cas(index, &key, op.index),
                    format!("failed to delete key {key:?}, index is stale"),
                )?;
                return Ok(Vec::new());
            }
            _ => unreachable!("reads are answered above"),
        }
        Ok(self.kv_get(&key).map(meta).into_iter().collect())
    }
}

/// An entry without its value: what a write returns (as Consul's).
fn meta(e: &KvEntry) -> KvEntry {
    KvEntry {
        value: bytes::Bytes::new(),
        ..e.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Table};

    fn op(verb: KvVerb, key: &str, value: &str, index: u64) -> KvOp {
        KvOp {
            verb,
            key: key.into(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            flags: 0,
            index,
            session: String::new(),
        }
    }

    fn now() -> std::time::Instant {
        std::time::Instant::now()
    }

    #[test]
    fn all_or_nothing() {
        let mut s = State::default();
        let ok = s.apply(
            3,
            Command::Txn(vec![
                op(KvVerb::Set, "a", "1", 0),
                op(KvVerb::Set, "b", "2", 0),
            ]),
            now(),
        );
        let CommandResult::Txn(TxnOutcome::Applied(results)) = ok else {
            panic!("{ok:?}");
        };
        assert_eq!(results.len(), 2);
        assert!(results[0].value.is_empty(), "writes return no value");
        // The third op fails: the first two are undone, the index untouched.
        let failed = s.apply(
            4,
            Command::Txn(vec![
                op(KvVerb::Set, "c", "3", 0),
                op(KvVerb::Delete, "a", "", 0),
                op(KvVerb::Cas, "b", "x", 99),
            ]),
            now(),
        );
        assert_eq!(
            failed,
            CommandResult::Txn(TxnOutcome::Failed(vec![TxnError {
                op_index: 2,
                what: "failed to set key \"b\", index is stale".into()
            }]))
        );
        assert!(s.kv_get("c").is_none());
        assert_eq!(&s.kv_get("a").unwrap().value[..], b"1");
        assert_eq!(s.max_index(&[Table::Kv]), 3);
    }

    #[test]
    fn reads_and_checks_without_raft() {
        let mut s = State::default();
        s.apply(
            5,
            Command::Txn(vec![
                op(KvVerb::Set, "app/a", "1", 0),
                op(KvVerb::Set, "app/b", "2", 0),
            ]),
            now(),
        );
        let read = s.txn_read(&[
            op(KvVerb::Get, "app/a", "", 0),
            op(KvVerb::GetTree, "app/", "", 0),
            op(KvVerb::CheckIndex, "app/b", "", 5),
            op(KvVerb::CheckNotExists, "app/c", "", 0),
        ]);
        let TxnOutcome::Applied(entries) = read else {
            panic!("{read:?}");
        };
        assert_eq!(entries.len(), 4);
        assert_eq!(&entries[0].value[..], b"1");
        let failed = s.txn_read(&[
            op(KvVerb::Get, "app/a", "", 0),
            op(KvVerb::CheckIndex, "app/a", "", 4),
        ]);
        assert_eq!(
            failed,
            TxnOutcome::Failed(vec![TxnError {
                op_index: 1,
                what: "current modify index 5 != 4".into()
            }])
        );
        assert!(matches!(
            s.txn_read(&[op(KvVerb::Get, "nope", "", 0)]),
            TxnOutcome::Failed(_)
        ));
        assert_eq!(KvVerb::parse("get-tree"), Some(KvVerb::GetTree));
        assert_eq!(KvVerb::parse("nope"), None);
    }
}
