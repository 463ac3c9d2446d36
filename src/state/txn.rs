//! Transactions (Consul's `/v1/txn`: KV operations and catalog node, service and check
//! operations): up to [`MAX_OPS`] operations applied in order in one log entry, all or
//! nothing. A failing operation undoes the ones before it (from an undo journal of the
//! keys written, or for catalog operations a copy of the state) and the transaction
//! answers which operation failed and why. A
//! transaction of reads and checks only runs on any server's state without Raft.

use serde::{Deserialize, Serialize};

use super::{
    Check, CommandResult, DeregisterRequest, KvEntry, Node, RegisterRequest, Service, State,
};

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

    /// Whether it can fail (and so make the transaction undo the operations before it).
    pub fn can_fail(self) -> bool {
        !matches!(
            self,
            KvVerb::Set | KvVerb::Delete | KvVerb::DeleteTree | KvVerb::GetTree
        )
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

/// One operation of a transaction: on the KV store or the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// A KV operation.
    Kv(KvOp),
    /// A catalog node, service or check operation.
    Catalog(Box<CatalogOp>),
}

impl TxnOp {
    /// Whether it changes nothing (a transaction of such operations needs no Raft).
    pub fn is_read(&self) -> bool {
        match self {
            TxnOp::Kv(op) => op.verb.is_read(),
            TxnOp::Catalog(op) => op.verb == CatalogVerb::Get,
        }
    }
}

/// What a catalog operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogTarget {
    /// A node (`req`'s node fields).
    Node,
    /// A service of `req.node` (`req.service`).
    Service,
    /// A check of `req.node` (`req.checks[0]`).
    Check,
}

/// A catalog operation's verb (Consul's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogVerb {
    /// Registers (or updates) it.
    Set,
    /// Sets it if its ModifyIndex is `index` (0: if absent).
    Cas,
    /// Reads it (fails if absent).
    Get,
    /// Deregisters it.
    Delete,
    /// Deregisters it if its ModifyIndex is `index`.
    DeleteCas,
}

impl CatalogVerb {
    /// The verb as Consul spells it.
    pub fn parse(text: &str) -> Option<CatalogVerb> {
        Some(match text {
            "set" => CatalogVerb::Set,
            "cas" => CatalogVerb::Cas,
            "get" => CatalogVerb::Get,
            "delete" => CatalogVerb::Delete,
            "delete-cas" => CatalogVerb::DeleteCas,
            _ => return None,
        })
    }
}

/// A catalog operation: what it is about, described as the registration that would make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogOp {
    /// Node, service or check.
    pub target: CatalogTarget,
    /// What to do.
    pub verb: CatalogVerb,
    /// The node and, for a service or check, the one definition.
    pub req: RegisterRequest,
    /// The ModifyIndex compared.
    pub index: u64,
}

impl CatalogOp {
    /// The service's or check's ID (empty for a node).
    pub fn id(&self) -> &str {
        match self.target {
            CatalogTarget::Node => "",
            CatalogTarget::Service => self.req.service.as_ref().map_or("", |s| s.id.as_str()),
            CatalogTarget::Check => self.req.checks.first().map_or("", |c| c.check_id.as_str()),
        }
    }
}

/// What one operation returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    /// A KV entry (without its value for writes, as Consul).
    Kv(KvEntry),
    /// A node.
    Node(Node),
    /// A service instance.
    Service(Service),
    /// A check.
    Check(Check),
}

/// What a transaction answered: the result of each operation (entries read or written;
/// nothing for deletes), or the operations that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// Every operation applied; their results in order.
    Applied(Vec<TxnResult>),
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
    ///
    /// Only the operations before the last one that can fail need undoing. A transaction
    /// of KV operations keeps an undo journal of those (each written key's previous
    /// entry) rather than a copy of the state: a copy would share every node of the
    /// persistent maps, and each write after it would then copy the nodes on its path
    /// (dozens of keys per leaf), which made a 10-key transaction on a large tree cost ten
    /// such copies. Catalog operations touch several tables and the name index: a
    /// transaction with one keeps a copy of the whole state instead.
    pub(super) fn txn(
        &mut self,
        index: u64,
        ops: &[TxnOp],
        now: std::time::Instant,
    ) -> CommandResult {
        let kv_only = ops.iter().all(|op| matches!(op, TxnOp::Kv(_)));
        let last_fallible = ops.iter().rposition(|op| match op {
            TxnOp::Kv(op) => op.verb.can_fail(),
            TxnOp::Catalog(_) => true,
        });
        let before = (!kv_only && last_fallible.is_some()).then(|| self.data.clone());
        let indexes = self.data.indexes.clone();
        let mut undo: Vec<(String, Option<KvEntry>)> = Vec::new();
        let mut results = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let done = match op {
                TxnOp::Kv(op) => {
                    if kv_only && last_fallible.is_some_and(|last| i < last) {
                        self.journal(op, &mut undo);
                    }
                    self.txn_op(index, op)
                        .map(|found| found.into_iter().map(TxnResult::Kv).collect())
                }
                TxnOp::Catalog(op) => self.catalog_op(index, op, now),
            };
            match done {
                Ok(found) => results.extend(found),
                Err(what) => {
                    match before {
                        Some(before) => {
                            self.data = before;
                            self.by_name = super::name_index(&self.data);
                        }
                        None => {
                            for (key, previous) in undo.into_iter().rev() {
                                match previous {
                                    Some(entry) => self.data.kv.insert(key, entry),
                                    None => self.data.kv.remove(&key),
                                };
                            }
                            self.data.indexes = indexes;
                        }
                    }
                    return CommandResult::Txn(TxnOutcome::Failed(vec![TxnError {
                        op_index: i,
                        what,
                    }]));
                }
            }
        }
        CommandResult::Txn(TxnOutcome::Applied(results))
    }

    /// Records in `undo` the entries KV operation `op` may change, as they are before it.
    fn journal(&self, op: &KvOp, undo: &mut Vec<(String, Option<KvEntry>)>) {
        match op.verb {
            verb if verb.is_read() => {}
            KvVerb::DeleteTree => undo.extend(
                self.kv_prefix(&op.key)
                    .map(|e| (e.key.clone(), Some(e.clone()))),
            ),
            _ => undo.push((op.key.clone(), self.data.kv.get(&op.key).cloned())),
        }
    }

    /// Runs a transaction of reads and checks only, changing nothing.
    pub fn txn_read(&self, ops: &[TxnOp]) -> TxnOutcome {
        let mut results = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let found = match op {
                TxnOp::Kv(op) => self
                    .txn_check(op)
                    .map(|found| found.into_iter().map(TxnResult::Kv).collect()),
                TxnOp::Catalog(op) => self.catalog_get(op).map(|r| vec![r]),
            };
            match found {
                Ok(found) => results.extend(found),
                Err(what) => return TxnOutcome::Failed(vec![TxnError { op_index: i, what }]),
            }
        }
        TxnOutcome::Applied(results)
    }

    /// What a catalog operation is about, as it stands (`None`: absent).
    fn catalog_current(&self, op: &CatalogOp) -> Option<TxnResult> {
        let node = op.req.node.clone();
        match op.target {
            CatalogTarget::Node => self.data.nodes.get(&node).cloned().map(TxnResult::Node),
            CatalogTarget::Service => self
                .data
                .services
                .get(&(node, op.id().to_string()))
                .cloned()
                .map(TxnResult::Service),
            CatalogTarget::Check => self
                .data
                .checks
                .get(&(node, op.id().to_string()))
                .cloned()
                .map(TxnResult::Check),
        }
    }

    fn catalog_get(&self, op: &CatalogOp) -> Result<TxnResult, String> {
        self.catalog_current(op).ok_or_else(|| match op.target {
            CatalogTarget::Node => format!("node {:?} doesn't exist", op.req.node),
            CatalogTarget::Service => format!(
                "service {:?} on node {:?} doesn't exist",
                op.id(),
                op.req.node
            ),
            CatalogTarget::Check => format!(
                "check {:?} on node {:?} doesn't exist",
                op.id(),
                op.req.node
            ),
        })
    }

    /// One catalog operation at log `index`: what it returns, or why it fails.
    fn catalog_op(
        &mut self,
        index: u64,
        op: &CatalogOp,
        now: std::time::Instant,
    ) -> Result<Vec<TxnResult>, String> {
        let modify_index = |r: &TxnResult| match r {
            TxnResult::Node(n) => n.modify_index,
            TxnResult::Service(s) => s.modify_index,
            TxnResult::Check(c) => c.modify_index,
            TxnResult::Kv(e) => e.modify_index,
        };
        let current = self.catalog_current(op);
        if matches!(op.verb, CatalogVerb::Cas | CatalogVerb::DeleteCas)
            && current.as_ref().map_or(0, modify_index) != op.index
        {
            return Err(format!(
                "failed to {} {:?}, index is stale",
                if op.verb == CatalogVerb::Cas {
                    "set"
                } else {
                    "delete"
                },
                if op.target == CatalogTarget::Node {
                    op.req.node.as_str()
                } else {
                    op.id()
                }
            ));
        }
        match op.verb {
            CatalogVerb::Get => self.catalog_get(op).map(|r| vec![r]),
            CatalogVerb::Set | CatalogVerb::Cas => {
                let mut req = op.req.clone();
                if op.target != CatalogTarget::Node {
                    let Some(node) = self.data.nodes.get(&req.node) else {
                        return Err(format!("node {:?} doesn't exist", req.node));
                    };
                    req.address = node.address.clone();
                    req.id = node.id.clone();
                    req.tagged_addresses = node.tagged_addresses.clone();
                    req.node_meta = node.meta.clone();
                }
                match self.register(index, req, now) {
                    CommandResult::Rejected(why) => Err(why),
                    _ => Ok(self.catalog_current(op).into_iter().collect()),
                }
            }
            CatalogVerb::Delete | CatalogVerb::DeleteCas => {
                let id = (!op.id().is_empty()).then(|| op.id().to_string());
                let req = DeregisterRequest {
                    node: op.req.node.clone(),
                    service_id: id.clone().filter(|_| op.target == CatalogTarget::Service),
                    check_id: id.filter(|_| op.target == CatalogTarget::Check),
                };
                match self.deregister(index, req, now) {
                    CommandResult::Rejected(why) => Err(why),
                    _ => Ok(Vec::new()),
                }
            }
        }
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
        let key = &op.key;
        let refused = |r: CommandResult, what: String| match r {
            CommandResult::Bool(true) | CommandResult::Ok => Ok(()),
            CommandResult::Rejected(why) => Err(why),
            _ => Err(what),
        };
        match op.verb {
            KvVerb::Set => {
                let written = self.kv_put(index, key.clone(), op.value.clone(), op.flags);
                return Ok(vec![meta(written)]);
            }
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
                self.kv_delete(index, key);
                return Ok(Vec::new());
            }
            KvVerb::DeleteTree => {
                self.kv_delete_tree(index, key);
                return Ok(Vec::new());
            }
            KvVerb::DeleteCas => {
                refused(
                    self.kv_delete_cas(index, key, op.index),
                    format!("failed to delete key {key:?}, index is stale"),
                )?;
                return Ok(Vec::new());
            }
            _ => unreachable!("reads are answered above"),
        }
        Ok(self.kv_get(key).map(meta).into_iter().collect())
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

    fn op(verb: KvVerb, key: &str, value: &str, index: u64) -> TxnOp {
        TxnOp::Kv(KvOp {
            verb,
            key: key.into(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            flags: 0,
            index,
            session: String::new(),
        })
    }

    fn value(r: &TxnResult) -> &[u8] {
        match r {
            TxnResult::Kv(e) => &e.value,
            other => panic!("not a KV result: {other:?}"),
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
        assert!(value(&results[0]).is_empty(), "writes return no value");
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
    fn a_failed_kv_transaction_leaves_every_table_as_it_was() {
        let mut s = State::default();
        let keys = ["a", "dir/x", "dir/y", "dir/z", "b"];
        let sets = keys.iter().map(|k| op(KvVerb::Set, k, "old", 0)).collect();
        s.apply(3, Command::Txn(sets), now());
        let before = s.data.clone();
        // Every kind of write, the same key twice, then a failing CAS: all undone.
        let failed = s.apply(
            4,
            Command::Txn(vec![
                op(KvVerb::Set, "new", "1", 0),
                op(KvVerb::Set, "a", "2", 0),
                op(KvVerb::Set, "a", "3", 0),
                op(KvVerb::Delete, "b", "", 0),
                op(KvVerb::DeleteTree, "dir/", "", 0),
                op(KvVerb::Set, "dir/y", "4", 0),
                op(KvVerb::DeleteCas, "new", "", 4),
                op(KvVerb::Cas, "a", "5", 99),
            ]),
            now(),
        );
        assert!(matches!(failed, CommandResult::Txn(TxnOutcome::Failed(_))));
        assert_eq!(s.data, before);
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
        assert_eq!(value(&entries[0]), b"1");
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

    fn catalog(
        target: CatalogTarget,
        verb: CatalogVerb,
        req: RegisterRequest,
        index: u64,
    ) -> TxnOp {
        TxnOp::Catalog(Box::new(CatalogOp {
            target,
            verb,
            req,
            index,
        }))
    }

    #[test]
    fn catalog_operations_apply_with_kv_all_or_nothing() {
        use crate::state::{CheckDefinition, ServiceDefinition};
        let mut s = State::default();
        let node = RegisterRequest {
            node: "n1".into(),
            address: "10.0.0.1".into(),
            ..Default::default()
        };
        let service = RegisterRequest {
            node: "n1".into(),
            service: Some(ServiceDefinition {
                id: "web1".into(),
                service: "web".into(),
                port: 80,
                ..Default::default()
            }),
            ..Default::default()
        };
        let check = RegisterRequest {
            node: "n1".into(),
            checks: vec![CheckDefinition {
                check_id: "web-up".into(),
                name: "up".into(),
                service_id: Some("web1".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = s.apply(
            7,
            Command::Txn(vec![
                catalog(CatalogTarget::Node, CatalogVerb::Set, node.clone(), 0),
                catalog(CatalogTarget::Service, CatalogVerb::Set, service.clone(), 0),
                catalog(CatalogTarget::Check, CatalogVerb::Cas, check.clone(), 0),
                op(KvVerb::Set, "k", "v", 0),
            ]),
            now(),
        );
        let CommandResult::Txn(TxnOutcome::Applied(results)) = r else {
            panic!("{r:?}");
        };
        assert!(matches!(&results[0], TxnResult::Node(n) if n.address == "10.0.0.1"));
        assert!(
            matches!(&results[1], TxnResult::Service(sv) if sv.port == 80 && sv.modify_index == 7)
        );
        assert!(matches!(&results[2], TxnResult::Check(c) if c.service_name == "web"));
        // A stale CAS in the middle undoes the node's deletion before it.
        let r = s.apply(
            8,
            Command::Txn(vec![
                catalog(CatalogTarget::Node, CatalogVerb::Delete, node.clone(), 0),
                catalog(CatalogTarget::Service, CatalogVerb::Cas, service.clone(), 3),
            ]),
            now(),
        );
        assert!(
            matches!(r, CommandResult::Txn(TxnOutcome::Failed(ref e)) if e[0].op_index == 1),
            "{r:?}"
        );
        assert!(matches!(
            s.txn_read(&[catalog(CatalogTarget::Service, CatalogVerb::Get, service.clone(), 0)]),
            TxnOutcome::Applied(ref v) if v.len() == 1
        ));
        // A service for a node that does not exist is refused.
        let mut orphan = service.clone();
        orphan.node = "n2".into();
        let r = s.apply(
            9,
            Command::Txn(vec![catalog(
                CatalogTarget::Service,
                CatalogVerb::Set,
                orphan,
                0,
            )]),
            now(),
        );
        assert!(
            matches!(r, CommandResult::Txn(TxnOutcome::Failed(ref e)) if e[0].what.contains("doesn't exist")),
            "{r:?}"
        );
        // Deleting the service takes its check with it.
        let r = s.apply(
            10,
            Command::Txn(vec![catalog(
                CatalogTarget::Service,
                CatalogVerb::DeleteCas,
                service,
                7,
            )]),
            now(),
        );
        assert!(
            matches!(r, CommandResult::Txn(TxnOutcome::Applied(_))),
            "{r:?}"
        );
        assert!(matches!(
            s.txn_read(&[catalog(CatalogTarget::Check, CatalogVerb::Get, check, 0)]),
            TxnOutcome::Failed(_)
        ));
    }
}
