//! The replicated state of one datacenter: the catalog (nodes, services, health checks),
//! the KV store, sessions and the ACL system's tokens, policies and roles. Pure and deterministic: [`State::apply`] takes a typed
//! [`Command`], the Raft log index that carries it and the clock of the server applying
//! it (read by the caller, used only for soft state: lock-delays), and every entry it
//! writes records that index as its `CreateIndex`/`ModifyIndex`. Knows nothing of Raft,
//! disks or networks, so it is unit-tested directly; the raft module drives it, the HTTP
//! API reads it.
//!
//! This file holds the tables, their indexes and `apply`; each table family's commands and
//! reads are in its own file (`catalog`, `kv`, `sessions`, `acl`). Each table has its own index
//! (the log index of its last change), published on a watch channel, so that a blocking
//! query waits on one channel instead of a timer or task each.

mod acl;
pub mod archive;
pub mod authorize;
mod catalog;
pub mod coordinates;
pub mod filter;
mod kv;
mod kv_watch;
pub mod prepared_query;
pub mod query;
pub mod session_ttl;
mod sessions;
pub mod txn;
pub mod types;

use imbl::OrdMap;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use types::*;

/// The tables whose indexes readers can wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Catalog nodes.
    Nodes,
    /// Service instances.
    Services,
    /// Health checks.
    Checks,
    /// The KV store.
    Kv,
    /// Sessions.
    Sessions,
    /// ACL tokens, policies and roles.
    Acl,
    /// Network coordinates of the nodes.
    Coordinates,
    /// Prepared queries.
    PreparedQueries,
}

impl Table {
    const ALL: [Table; 8] = [
        Table::Nodes,
        Table::Services,
        Table::Checks,
        Table::Kv,
        Table::Sessions,
        Table::Acl,
        Table::Coordinates,
        Table::PreparedQueries,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

/// A write to the state, as carried in the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Consul's catalog register: a node, optionally a service on it, and checks.
    Register(Box<RegisterRequest>),
    /// Consul's catalog deregister: a check, a service (with its checks), or a whole node.
    Deregister(DeregisterRequest),
    /// Sets a key unconditionally.
    KvSet {
        /// The key.
        key: String,
        /// The value bytes.
        value: bytes::Bytes,
        /// Opaque flags stored with the value.
        flags: u64,
    },
    /// Sets a key if its ModifyIndex equals `index` (0: only if absent).
    KvCas {
        /// The key.
        key: String,
        /// The value bytes.
        value: bytes::Bytes,
        /// Opaque flags.
        flags: u64,
        /// The expected ModifyIndex.
        index: u64,
    },
    /// Deletes a key (no error if absent).
    KvDelete {
        /// The key.
        key: String,
    },
    /// Deletes a key if its ModifyIndex equals `index`.
    KvDeleteCas {
        /// The key.
        key: String,
        /// The expected ModifyIndex.
        index: u64,
    },
    /// Deletes every key with this prefix.
    KvDeleteTree {
        /// The prefix.
        prefix: String,
    },
    /// Takes the lock on a key for `session` and writes the value (`?acquire=`): fails if
    /// another session holds it. The lock-delay is checked by the leader before proposing.
    KvAcquire {
        /// The key.
        key: String,
        /// The value bytes.
        value: bytes::Bytes,
        /// Opaque flags.
        flags: u64,
        /// The session taking the lock.
        session: String,
    },
    /// Releases the lock `session` holds on a key and writes the value (`?release=`).
    KvRelease {
        /// The key.
        key: String,
        /// The value bytes.
        value: bytes::Bytes,
        /// Opaque flags.
        flags: u64,
        /// The session holding the lock.
        session: String,
    },
    /// Creates a session (its ID chosen by the proposer).
    SessionCreate(Box<Session>),
    /// Ends a session: destroyed by its owner, or its TTL lapsed (written by the leader).
    SessionDestroy {
        /// The session.
        id: String,
    },
    /// The ACL system's one-time bootstrap: the token becomes a management token.
    AclBootstrap(Box<crate::acl::model::Token>),
    /// Creates or updates a policy (by ID).
    AclPolicySet(Box<crate::acl::model::Policy>),
    /// Deletes a policy.
    AclPolicyDelete {
        /// Its ID.
        id: String,
    },
    /// Creates or updates a role (by ID).
    AclRoleSet(Box<crate::acl::model::Role>),
    /// Deletes a role.
    AclRoleDelete {
        /// Its ID.
        id: String,
    },
    /// Creates or updates a token (by AccessorID).
    AclTokenSet(Box<crate::acl::model::Token>),
    /// Deletes a token.
    AclTokenDelete {
        /// Its AccessorID.
        accessor: String,
    },
    /// This DC's ACL tables are replicated from the primary: bootstrap is closed here.
    AclReplicated,
    /// Nodes' network coordinates, as their agents report them.
    CoordinatesUpdate(Vec<coordinates::NodeCoordinate>),
    /// Creates a prepared query (its ID chosen by the proposer).
    PreparedQueryCreate(Box<prepared_query::PreparedQuery>),
    /// Replaces an existing prepared query's definition (by ID).
    PreparedQueryUpdate(Box<prepared_query::PreparedQuery>),
    /// Deletes a prepared query.
    PreparedQueryDelete {
        /// Its ID.
        id: String,
    },
    /// A transaction: KV operations applied in order, all or none.
    Txn(Vec<txn::TxnOp>),
    /// Replaces the whole state with a snapshot archive's ([`archive`]; `PUT /v1/snapshot`):
    /// one entry, so every server switches at once and no reader sees half of it.
    Restore {
        /// The archive as the operator sent it (verified again by every server).
        archive: bytes::Bytes,
    },
    /// Several commands written as one log entry (group commit), applied in order at the
    /// same index; each gets its own result.
    Batch(Vec<Command>),
}

impl Command {
    /// Whether it changes the ACL system (refused where ACLs are disabled).
    pub fn is_acl(&self) -> bool {
        match self {
            Command::AclBootstrap(_)
            | Command::AclPolicySet(_)
            | Command::AclPolicyDelete { .. }
            | Command::AclRoleSet(_)
            | Command::AclRoleDelete { .. }
            | Command::AclTokenSet(_)
            | Command::AclTokenDelete { .. }
            | Command::AclReplicated => true,
            Command::Batch(cmds) => cmds.iter().any(Command::is_acl),
            _ => false,
        }
    }

    /// Roughly how many bytes the command carries (values and keys), for batching limits.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::KvSet { key, value, .. }
            | Command::KvCas { key, value, .. }
            | Command::KvAcquire { key, value, .. }
            | Command::KvRelease { key, value, .. } => key.len() + value.len(),
            Command::Batch(cmds) => cmds.iter().map(Command::approx_size).sum(),
            Command::Restore { archive } => archive.len(),
            _ => 256,
        }
    }
}

/// The outcome of a [`Command`]. A failed CAS is an answer, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied.
    Ok,
    /// For KV writes: whether the write happened (`false` for a failed CAS).
    Bool(bool),
    /// The command was refused by validation (e.g. a check for a service not registered).
    Rejected(String),
    /// The results of a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
    /// What a [`Command::Txn`] did.
    Txn(txn::TxnOutcome),
}

/// The catalog and KV store of one datacenter.
#[derive(Debug)]
pub struct State {
    data: Tables,
    /// Service name -> the (node, id) keys of its instances: a catalog lookup by name walks
    /// only that service's instances. Derived from `data`, never serialized.
    by_name: BTreeMap<String, BTreeSet<NodeKey>>,
    watches: Vec<watch::Sender<u64>>,
    /// Keys whose lock cannot be acquired until the instant, after the session holding
    /// them ended (Consul's lock-delay). Soft state, as in Consul: each server sets it when
    /// it applies the end of a session, and only the leader consults it, before proposing
    /// an acquire; never serialized.
    lock_delays: std::collections::HashMap<String, Instant>,
    /// What blocking KV queries wait on: keys and prefixes, woken only by writes to them.
    kv_watches: kv_watch::KvWatches,
    /// SHA-256 of each stored token's SecretID -> its AccessorID. Derived from `data`,
    /// never serialized.
    acl_secrets: BTreeMap<[u8; 32], String>,
    /// Each stored policy's rules, parsed. Derived from `data`, never serialized.
    acl_compiled: BTreeMap<String, crate::acl::Rules>,
    /// Tokens resolved since the ACL tables last changed (emptied by every change).
    acl_resolved: acl::ResolvedTokens,
}

/// Sizes of the catalog and KV store ([`State::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Nodes.
    pub nodes: usize,
    /// Distinct service names.
    pub services: usize,
    /// Service instances.
    pub instances: usize,
    /// Checks passing.
    pub passing: usize,
    /// Checks warning.
    pub warning: usize,
    /// Checks critical.
    pub critical: usize,
    /// KV keys.
    pub kv_keys: usize,
}

/// The serializable content of [`State`]; also the snapshot format. Persistent maps, so
/// that a snapshot copies it in constant time under the state lock (and writes share
/// unchanged nodes with the copy instead of waiting for it to be encoded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    nodes: OrdMap<String, Node>,
    services: OrdMap<(String, String), Service>,
    checks: OrdMap<(String, String), Check>,
    kv: OrdMap<String, KvEntry>,
    #[serde(default)]
    sessions: OrdMap<String, Session>,
    /// ACL policies by ID.
    #[serde(default)]
    acl_policies: OrdMap<String, crate::acl::model::Policy>,
    /// ACL roles by ID.
    #[serde(default)]
    acl_roles: OrdMap<String, crate::acl::model::Role>,
    /// ACL tokens by AccessorID.
    #[serde(default)]
    acl_tokens: OrdMap<String, crate::acl::model::Token>,
    /// The index at which the ACL system was bootstrapped.
    #[serde(default)]
    acl_bootstrap: Option<u64>,
    /// Network coordinates by node name.
    #[serde(default)]
    coordinates: OrdMap<String, crate::coordinate::Coordinate>,
    /// Prepared queries by ID.
    #[serde(default)]
    prepared_queries: OrdMap<String, prepared_query::PreparedQuery>,
    /// Per table, the log index of its last change (snapshots of older versions hold
    /// fewer; the missing ones start at 0).
    indexes: Vec<u64>,
    /// What is added to a Raft log index to give the state's index: 0 until an archive
    /// with a higher index than the log's was restored, so that indexes never go back.
    #[serde(default)]
    index_offset: u64,
    /// The state index at which an archive was last restored.
    #[serde(default)]
    restored_at: Option<u64>,
}

impl Tables {
    /// Entries per table, as `consulate snapshot inspect` lists them.
    pub fn counts(&self) -> archive::TableCounts {
        vec![
            ("Nodes", self.nodes.len()),
            ("Services", self.services.len()),
            ("Checks", self.checks.len()),
            ("KV", self.kv.len()),
            ("Sessions", self.sessions.len()),
            ("ACL policies", self.acl_policies.len()),
            ("ACL roles", self.acl_roles.len()),
            ("ACL tokens", self.acl_tokens.len()),
            ("Prepared queries", self.prepared_queries.len()),
            ("Coordinates", self.coordinates.len()),
        ]
    }
}

impl Default for State {
    fn default() -> Self {
        State::from_tables(Tables::default())
    }
}

impl State {
    /// A state holding `data` (e.g. restored from a snapshot).
    pub fn from_tables(mut data: Tables) -> State {
        data.indexes.resize(Table::ALL.len(), 0);
        let watches = Table::ALL
            .iter()
            .map(|t| watch::channel(data.indexes[t.slot()]).0)
            .collect();
        let by_name = name_index(&data);
        let acl_secrets = secret_index(&data);
        let acl_compiled = acl::compile_policies(&data.acl_policies);
        State {
            data,
            by_name,
            watches,
            lock_delays: Default::default(),
            kv_watches: Default::default(),
            acl_secrets,
            acl_compiled,
            acl_resolved: Default::default(),
        }
    }

    /// Replaces the whole content (snapshot install); every watcher is woken.
    pub fn restore(&mut self, mut data: Tables) {
        data.indexes.resize(Table::ALL.len(), 0);
        self.by_name = name_index(&data);
        self.acl_secrets = secret_index(&data);
        self.acl_compiled = acl::compile_policies(&data.acl_policies);
        self.acl_resolved.clear();
        self.data = data;
        for t in Table::ALL {
            let i = self.data.indexes[t.slot()];
            self.watches[t.slot()].send_replace(i);
        }
        self.kv_watches.all_changed(self.index(Table::Kv));
    }

    /// Replaces the whole content with an archive's (`PUT /v1/snapshot`), as one change at
    /// an index above both the archive's and the current one: every table's index moves
    /// there, so every blocking query wakes, and later writes continue from it.
    fn restore_archive(&mut self, log_index: u64, archive: &[u8]) -> CommandResult {
        let (meta, mut tables) = match archive::read(archive) {
            Ok(read) => read,
            Err(e) => return CommandResult::Rejected(e.to_string()),
        };
        let at = self.index_of_log(log_index).max(meta.index + 1);
        tables.index_offset = at - log_index;
        tables.restored_at = Some(at);
        tables.indexes = vec![at; Table::ALL.len()];
        self.restore(tables);
        CommandResult::Ok
    }

    /// The state index a write carried by Raft log entry `log_index` gets.
    pub fn index_of_log(&self, log_index: u64) -> u64 {
        log_index + self.data.index_offset
    }

    /// The state index at which an archive was last restored (session timers restart).
    pub fn restored_at(&self) -> Option<u64> {
        self.data.restored_at
    }

    /// The content, for a snapshot.
    pub fn tables(&self) -> &Tables {
        &self.data
    }

    /// The log index of the last change to `table` (0 if never changed).
    pub fn index(&self, table: Table) -> u64 {
        self.data.indexes[table.slot()]
    }

    /// The highest index over `tables`, never below 1 (as Consul's `X-Consul-Index`).
    pub fn max_index(&self, tables: &[Table]) -> u64 {
        tables
            .iter()
            .map(|t| self.index(*t))
            .max()
            .unwrap_or(0)
            .max(1)
    }

    /// A receiver that changes whenever `table` does.
    pub fn watch(&self, table: Table) -> watch::Receiver<u64> {
        self.watches[table.slot()].subscribe()
    }

    /// A receiver that changes when KV `key` is written or deleted (and no other write).
    pub fn watch_kv_key(&self, key: &str) -> watch::Receiver<u64> {
        self.kv_watches.key(key)
    }

    /// A receiver that changes when a KV key under `prefix` is written or deleted.
    pub fn watch_kv_prefix(&self, prefix: &str) -> watch::Receiver<u64> {
        self.kv_watches.prefix(prefix)
    }

    /// How many waiting KV queries writes have woken in all.
    pub fn kv_waiters_woken(&self) -> u64 {
        self.kv_watches.woken()
    }

    fn touch(&mut self, table: Table, index: u64) {
        if table == Table::Acl {
            self.acl_resolved.clear();
        }
        // Many changes at one index (a transaction's keys, a batch) wake the table's
        // waiters once: they read only after the whole apply anyway.
        if self.data.indexes[table.slot()] == index {
            return;
        }
        self.data.indexes[table.slot()] = index;
        self.watches[table.slot()].send_replace(index);
    }

    /// Applies `cmd` written at log `index`, on this server's clock at `now` (which only
    /// the soft state, lock-delays, depends on). Each table family applies its own
    /// commands (`catalog`, `kv`, `sessions`).
    pub fn apply(&mut self, log_index: u64, cmd: Command, now: Instant) -> CommandResult {
        let index = self.index_of_log(log_index);
        match cmd {
            Command::Batch(cmds) => CommandResult::Batch(
                cmds.into_iter()
                    .map(|c| self.apply(log_index, c, now))
                    .collect(),
            ),
            Command::Restore { archive } => self.restore_archive(log_index, &archive),
            Command::Register(req) => self.register(index, *req, now),
            Command::Deregister(req) => self.deregister(index, req, now),
            Command::KvSet { key, value, flags } => {
                self.kv_put(index, key, value, flags);
                CommandResult::Bool(true)
            }
            Command::KvCas {
                key,
                value,
                flags,
                index: expected,
            } => self.kv_cas(index, key, value, flags, expected),
            Command::KvDelete { key } => self.kv_delete(index, &key),
            Command::KvDeleteCas {
                key,
                index: expected,
            } => self.kv_delete_cas(index, &key, expected),
            Command::KvDeleteTree { prefix } => self.kv_delete_tree(index, &prefix),
            Command::KvAcquire {
                key,
                value,
                flags,
                session,
            } => self.kv_acquire(index, key, value, flags, session),
            Command::KvRelease {
                key,
                value,
                flags,
                session,
            } => self.kv_release(index, key, value, flags, session),
            Command::SessionCreate(session) => self.session_create(index, *session),
            Command::SessionDestroy { id } => {
                self.invalidate(index, &id, now);
                CommandResult::Bool(true)
            }
            Command::AclBootstrap(token) => self.acl_bootstrap(index, *token),
            Command::AclPolicySet(policy) => self.acl_policy_set(index, *policy),
            Command::AclPolicyDelete { id } => self.acl_policy_delete(index, &id),
            Command::AclRoleSet(role) => self.acl_role_set(index, *role),
            Command::AclRoleDelete { id } => self.acl_role_delete(index, &id),
            Command::AclTokenSet(token) => self.acl_token_set(index, *token),
            Command::AclTokenDelete { accessor } => self.acl_token_delete(index, &accessor),
            Command::AclReplicated => self.acl_replicated(index),
            Command::CoordinatesUpdate(updates) => self.coordinates_update(index, updates),
            Command::PreparedQueryCreate(q) => self.prepared_query_set(index, *q, true),
            Command::PreparedQueryUpdate(q) => self.prepared_query_set(index, *q, false),
            Command::PreparedQueryDelete { id } => self.prepared_query_delete(index, &id),
            Command::Txn(ops) => self.txn(index, &ops, now),
        }
    }
}

/// An entry that records the log indexes that created and last changed it.
trait Indexed: PartialEq {
    fn indexes(&self) -> (u64, u64);
    fn set_indexes(&mut self, create: u64, modify: u64);
}

macro_rules! indexed {
    ($($t:ty),*) => {$(
        impl Indexed for $t {
            fn indexes(&self) -> (u64, u64) {
                (self.create_index, self.modify_index)
            }
            fn set_indexes(&mut self, create: u64, modify: u64) {
                self.create_index = create;
                self.modify_index = modify;
            }
        }
    )*};
}
indexed!(Node, Service, Check);

/// Inserts `entry` at `key` written at log `index`, unless an equal entry is there already
/// (then nothing changes). Keeps CreateIndex across updates. True if it wrote.
fn upsert<K: Ord + Clone, V: Indexed + Clone>(
    map: &mut OrdMap<K, V>,
    key: K,
    mut entry: V,
    index: u64,
) -> bool {
    match map.get(&key) {
        Some(old) => {
            let (create, modify) = old.indexes();
            entry.set_indexes(create, modify);
            if *old == entry {
                return false;
            }
            entry.set_indexes(create, index);
        }
        None => entry.set_indexes(index, index),
    }
    map.insert(key, entry);
    true
}

/// Removes the entries of `map` within `range` that match `doomed`; true if any was.
/// Walks only the range (a node's entries, a key prefix), never the whole table.
fn remove_in<K: Ord + Clone, V: Clone>(
    map: &mut OrdMap<K, V>,
    range: (Bound<K>, Bound<K>),
    mut doomed: impl FnMut(&V) -> bool,
) -> bool {
    let keys: Vec<K> = map
        .range(range)
        .filter(|(_, v)| doomed(v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &keys {
        map.remove(k);
    }
    !keys.is_empty()
}

/// Builds the service-name index of `data`.
fn name_index(data: &Tables) -> BTreeMap<String, BTreeSet<NodeKey>> {
    let mut index: BTreeMap<String, BTreeSet<NodeKey>> = BTreeMap::new();
    for (key, s) in &data.services {
        index
            .entry(s.service.clone())
            .or_default()
            .insert(key.clone());
    }
    index
}

/// Builds the SecretID index of `data`'s tokens.
fn secret_index(data: &Tables) -> BTreeMap<[u8; 32], String> {
    data.acl_tokens
        .values()
        .map(|t| {
            (
                crate::acl::model::secret_digest(&t.secret_id),
                t.accessor_id.clone(),
            )
        })
        .collect()
}

/// A (node, id) key: the primary key of services and checks.
type NodeKey = (String, String);

/// The key range of every (node, *) entry.
fn node_range(node: &str) -> (Bound<NodeKey>, Bound<NodeKey>) {
    (
        Bound::Included((node.to_string(), String::new())),
        Bound::Excluded((format!("{node}\0"), String::new())),
    )
}

#[cfg(test)]
mod tests;
