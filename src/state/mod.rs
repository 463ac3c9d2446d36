//! The replicated state of one datacenter: the catalog (nodes, services, health checks) and
//! the KV store. Pure and deterministic: [`State::apply`] takes a typed [`Command`] and the
//! Raft log index that carries it, and every entry it writes records that index as its
//! `CreateIndex`/`ModifyIndex`. Knows nothing of Raft, disks or networks, so it is unit-
//! tested directly; the raft module drives it, the HTTP API reads it.
//!
//! Each table has its own index (the log index of its last change), published on a watch
//! channel, so that a blocking query waits on one channel instead of a timer or task each.

pub mod query;
pub mod session_ttl;
pub mod types;

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
}

impl Table {
    const ALL: [Table; 5] = [
        Table::Nodes,
        Table::Services,
        Table::Checks,
        Table::Kv,
        Table::Sessions,
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
    /// Several commands written as one log entry (group commit), applied in order at the
    /// same index; each gets its own result.
    Batch(Vec<Command>),
}

impl Command {
    /// Roughly how many bytes the command carries (values and keys), for batching limits.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::KvSet { key, value, .. }
            | Command::KvCas { key, value, .. }
            | Command::KvAcquire { key, value, .. }
            | Command::KvRelease { key, value, .. } => key.len() + value.len(),
            Command::Batch(cmds) => cmds.iter().map(Command::approx_size).sum(),
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

/// The serializable content of [`State`]; also the snapshot format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<(String, String), Service>,
    checks: BTreeMap<(String, String), Check>,
    kv: BTreeMap<String, KvEntry>,
    #[serde(default)]
    sessions: BTreeMap<String, Session>,
    /// Per table, the log index of its last change (snapshots of older versions hold
    /// fewer; the missing ones start at 0).
    indexes: Vec<u64>,
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
        State {
            data,
            by_name,
            watches,
            lock_delays: Default::default(),
        }
    }

    /// Replaces the whole content (snapshot install); every watcher is woken.
    pub fn restore(&mut self, mut data: Tables) {
        data.indexes.resize(Table::ALL.len(), 0);
        self.by_name = name_index(&data);
        self.data = data;
        for t in Table::ALL {
            let i = self.data.indexes[t.slot()];
            self.watches[t.slot()].send_replace(i);
        }
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

    fn touch(&mut self, table: Table, index: u64) {
        self.data.indexes[table.slot()] = index;
        self.watches[table.slot()].send_replace(index);
    }

    /// Applies `cmd` written at log `index`, on this server's clock at `now` (which only
    /// the soft state, lock-delays, depends on).
    pub fn apply(&mut self, index: u64, cmd: Command, now: Instant) -> CommandResult {
        match cmd {
            Command::Batch(cmds) => CommandResult::Batch(
                cmds.into_iter()
                    .map(|c| self.apply(index, c, now))
                    .collect(),
            ),
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
            } => {
                let current = self.data.kv.get(&key).map_or(0, |e| e.modify_index);
                if current != expected {
                    return CommandResult::Bool(false);
                }
                self.kv_put(index, key, value, flags);
                CommandResult::Bool(true)
            }
            Command::KvDelete { key } => {
                if self.data.kv.remove(&key).is_some() {
                    self.touch(Table::Kv, index);
                }
                CommandResult::Bool(true)
            }
            Command::KvDeleteCas {
                key,
                index: expected,
            } => {
                match self.data.kv.get(&key) {
                    Some(e) if e.modify_index == expected => {
                        self.data.kv.remove(&key);
                        self.touch(Table::Kv, index);
                        CommandResult::Bool(true)
                    }
                    // Deleting an absent key with index 0 is not a match in Consul either.
                    _ => CommandResult::Bool(false),
                }
            }
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
            Command::KvDeleteTree { prefix } => {
                let doomed: Vec<String> = self.kv_prefix(&prefix).map(|e| e.key.clone()).collect();
                for k in &doomed {
                    self.data.kv.remove(k);
                }
                if !doomed.is_empty() {
                    self.touch(Table::Kv, index);
                }
                CommandResult::Bool(true)
            }
        }
    }

    fn kv_acquire(
        &mut self,
        index: u64,
        key: String,
        value: bytes::Bytes,
        flags: u64,
        session: String,
    ) -> CommandResult {
        if !self.data.sessions.contains_key(&session) {
            return CommandResult::Rejected(format!("invalid session \"{session}\""));
        }
        if let Some(e) = self.data.kv.get(&key)
            && let Some(holder) = &e.session
            && *holder != session
        {
            return CommandResult::Bool(false);
        }
        let held = self.held_by(&key, &session);
        self.kv_put(index, key.clone(), value, flags);
        let entry = self.data.kv.get_mut(&key).expect("just written");
        if !held {
            entry.lock_index += 1;
            entry.session = Some(session);
        }
        CommandResult::Bool(true)
    }

    fn kv_release(
        &mut self,
        index: u64,
        key: String,
        value: bytes::Bytes,
        flags: u64,
        session: String,
    ) -> CommandResult {
        if !self.held_by(&key, &session) {
            return CommandResult::Bool(false);
        }
        self.kv_put(index, key.clone(), value, flags);
        if let Some(e) = self.data.kv.get_mut(&key) {
            e.session = None;
        }
        CommandResult::Bool(true)
    }

    /// Whether `session` holds the lock on `key`.
    fn held_by(&self, key: &str, session: &str) -> bool {
        self.data
            .kv
            .get(key)
            .is_some_and(|e| e.session.as_deref() == Some(session))
    }

    fn session_create(&mut self, index: u64, mut session: Session) -> CommandResult {
        if session.id.is_empty() || self.data.sessions.contains_key(&session.id) {
            return CommandResult::Rejected("Session ID must be new".into());
        }
        if !self.data.nodes.contains_key(&session.node) {
            return CommandResult::Rejected(format!(
                "Missing node registration for \"{}\"",
                session.node
            ));
        }
        for check in session.node_checks.iter().chain(&session.service_checks) {
            match self.data.checks.get(&(session.node.clone(), check.clone())) {
                None => {
                    return CommandResult::Rejected(format!(
                        "Missing check '{check}' registration"
                    ));
                }
                Some(c) if c.status == HealthStatus::Critical => {
                    return CommandResult::Rejected(format!(
                        "Check '{check}' is in critical state"
                    ));
                }
                Some(_) => {}
            }
        }
        session.create_index = index;
        session.modify_index = index;
        self.data.sessions.insert(session.id.clone(), session);
        self.touch(Table::Sessions, index);
        CommandResult::Ok
    }

    /// Ends session `id` (if it exists): its keys are released or deleted as its behavior
    /// says, and each gets the session's lock-delay.
    fn invalidate(&mut self, index: u64, id: &str, now: Instant) {
        let Some(session) = self.data.sessions.remove(id) else {
            return;
        };
        self.touch(Table::Sessions, index);
        let held: Vec<String> = self
            .data
            .kv
            .values()
            .filter(|e| e.session.as_deref() == Some(id))
            .map(|e| e.key.clone())
            .collect();
        if held.is_empty() {
            return;
        }
        let until = now + session.lock_delay;
        for key in held {
            match session.behavior {
                SessionBehavior::Release => {
                    if let Some(e) = self.data.kv.get_mut(&key) {
                        e.session = None;
                        e.modify_index = index;
                    }
                }
                SessionBehavior::Delete => {
                    self.data.kv.remove(&key);
                }
            }
            if !session.lock_delay.is_zero() {
                self.lock_delays.insert(key, until);
            }
        }
        self.touch(Table::Kv, index);
    }

    /// Ends the sessions on `node` that use any of `checks` (`None`: every session on the
    /// node), after those checks went critical or were removed.
    fn invalidate_for(&mut self, index: u64, node: &str, checks: Option<&[String]>, now: Instant) {
        let doomed: Vec<String> = self
            .data
            .sessions
            .values()
            .filter(|s| s.node == node)
            .filter(|s| checks.is_none_or(|cs| cs.iter().any(|c| s.uses_check(c))))
            .map(|s| s.id.clone())
            .collect();
        for id in doomed {
            self.invalidate(index, &id, now);
        }
    }

    /// Whether `key` is, at `now`, within the lock-delay of a session that ended (acquires
    /// refused).
    pub fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delays.get(key).is_some_and(|until| *until > now)
    }

    /// One session.
    pub fn session(&self, id: &str) -> Option<&Session> {
        self.data.sessions.get(id)
    }

    /// Every session, by ID.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.data.sessions.values()
    }

    fn kv_put(&mut self, index: u64, key: String, value: bytes::Bytes, flags: u64) {
        let entry = self.data.kv.entry(key.clone()).or_insert_with(|| KvEntry {
            key,
            create_index: index,
            ..KvEntry::default()
        });
        entry.value = value;
        entry.flags = flags;
        entry.modify_index = index;
        self.touch(Table::Kv, index);
    }

    fn register(&mut self, index: u64, req: RegisterRequest, now: Instant) -> CommandResult {
        if req.node.is_empty() {
            return CommandResult::Rejected("Must provide node".into());
        }
        if let Some(svc) = &req.service
            && svc.service.is_empty()
        {
            return CommandResult::Rejected("Must provide service name".into());
        }
        for c in &req.checks {
            if let Some(sid) = c.service_id.as_deref().filter(|s| !s.is_empty()) {
                let known = req
                    .service
                    .as_ref()
                    .is_some_and(|s| s.effective_id() == sid)
                    || self
                        .data
                        .services
                        .contains_key(&(req.node.clone(), sid.to_string()));
                if !known {
                    return CommandResult::Rejected(format!(
                        "Unknown service ID '{sid}' for check"
                    ));
                }
            }
        }
        // Each entry is written only if something about it changed, so that anti-entropy
        // re-asserting the same registration moves no index.
        let node = Node {
            id: req.id.clone(),
            node: req.node.clone(),
            address: req.address.clone(),
            datacenter: req.datacenter.clone(),
            tagged_addresses: req.tagged_addresses.clone(),
            meta: req.node_meta.clone(),
            create_index: 0,
            modify_index: 0,
        };
        if upsert(&mut self.data.nodes, req.node.clone(), node, index) {
            self.touch(Table::Nodes, index);
        }
        if let Some(def) = req.service {
            let key = (req.node.clone(), def.effective_id().to_string());
            let service = def.into_service(req.node.clone());
            if let Some(old) = self.data.services.get(&key)
                && old.service != service.service
            {
                self.unindex_service(&key, &old.service.clone());
            }
            self.by_name
                .entry(service.service.clone())
                .or_default()
                .insert(key.clone());
            if upsert(&mut self.data.services, key, service, index) {
                self.touch(Table::Services, index);
            }
        }
        let mut gone_critical = Vec::new();
        for def in req.checks {
            let key = (req.node.clone(), def.check_id.clone());
            if def.status == HealthStatus::Critical
                && self
                    .data
                    .checks
                    .get(&key)
                    .is_none_or(|c| c.status != HealthStatus::Critical)
            {
                gone_critical.push(def.check_id.clone());
            }
            let service_id = def.service_id.unwrap_or_default();
            let (service_name, service_tags) = self
                .data
                .services
                .get(&(req.node.clone(), service_id.clone()))
                .map_or((String::new(), Vec::new()), |s| {
                    (s.service.clone(), s.tags.clone())
                });
            let check = Check {
                node: req.node.clone(),
                check_id: def.check_id,
                name: def.name,
                status: def.status,
                notes: def.notes,
                output: def.output,
                service_id,
                service_name,
                service_tags,
                kind: def.kind,
                create_index: 0,
                modify_index: 0,
            };
            if upsert(&mut self.data.checks, key, check, index) {
                self.touch(Table::Checks, index);
            }
        }
        if !gone_critical.is_empty() {
            self.invalidate_for(index, &req.node, Some(&gone_critical), now);
        }
        CommandResult::Ok
    }

    fn deregister(&mut self, index: u64, req: DeregisterRequest, now: Instant) -> CommandResult {
        if let Some(check_id) = req.check_id {
            if self
                .data
                .checks
                .remove(&(req.node.clone(), check_id.clone()))
                .is_some()
            {
                self.touch(Table::Checks, index);
                self.invalidate_for(index, &req.node, Some(&[check_id]), now);
            }
            return CommandResult::Ok;
        }
        let range = node_range(&req.node);
        if let Some(service_id) = req.service_id {
            let key = (req.node.clone(), service_id.clone());
            if let Some(old) = self.data.services.remove(&key) {
                self.unindex_service(&key, &old.service);
                self.touch(Table::Services, index);
            }
            let removed: Vec<String> = self
                .data
                .checks
                .range(range.clone())
                .filter(|(_, c)| c.service_id == service_id)
                .map(|(_, c)| c.check_id.clone())
                .collect();
            if remove_in(&mut self.data.checks, range, |c| c.service_id == service_id) {
                self.touch(Table::Checks, index);
                self.invalidate_for(index, &req.node, Some(&removed), now);
            }
            return CommandResult::Ok;
        }
        if self.data.nodes.remove(&req.node).is_some() {
            self.touch(Table::Nodes, index);
        }
        let gone: Vec<(NodeKey, String)> = self
            .data
            .services
            .range(range.clone())
            .map(|(k, s)| (k.clone(), s.service.clone()))
            .collect();
        for (key, name) in &gone {
            self.data.services.remove(key);
            self.unindex_service(key, name);
        }
        if !gone.is_empty() {
            self.touch(Table::Services, index);
        }
        if remove_in(&mut self.data.checks, range, |_| true) {
            self.touch(Table::Checks, index);
        }
        self.invalidate_for(index, &req.node, None, now);
        CommandResult::Ok
    }

    fn unindex_service(&mut self, key: &NodeKey, name: &str) {
        if let Some(keys) = self.by_name.get_mut(name) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// A KV entry.
    pub fn kv_get(&self, key: &str) -> Option<&KvEntry> {
        self.data.kv.get(key)
    }

    /// Every KV entry whose key starts with `prefix`, in key order.
    pub fn kv_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.data
            .kv
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    /// What the catalog and KV store hold, counted (for the metrics a scrape reads).
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            nodes: self.data.nodes.len(),
            services: self.by_name.len(),
            instances: self.data.services.len(),
            kv_keys: self.data.kv.len(),
            ..Counts::default()
        };
        for check in self.data.checks.values() {
            match check.status {
                HealthStatus::Passing => c.passing += 1,
                HealthStatus::Warning => c.warning += 1,
                HealthStatus::Critical => c.critical += 1,
            }
        }
        c
    }

    /// Number of KV keys.
    pub fn kv_len(&self) -> usize {
        self.data.kv.len()
    }

    /// All nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.data.nodes.values()
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.data.nodes.get(name)
    }

    /// Every service instance, ordered by (node, service ID).
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.data.services.values()
    }

    /// The service instances registered on `node`.
    pub fn node_services<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Service> + 'a {
        self.data.services.range(node_range(node)).map(|(_, s)| s)
    }

    /// The instances of the service called `name`, ordered by (node, service ID). Names
    /// match case-insensitively, as in Consul (and DNS): the exact name first, else every
    /// name equal but for case.
    pub fn service_instances<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        let exact = self.by_name.get(name);
        let others = exact
            .is_none()
            .then(|| {
                self.by_name
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, keys)| keys)
            })
            .into_iter()
            .flatten();
        exact
            .into_iter()
            .chain(others)
            .flatten()
            .filter_map(|k| self.data.services.get(k))
    }

    /// The node called `name`, matched as [`State::service_instances`] matches names.
    pub fn node_named(&self, name: &str) -> Option<&Node> {
        self.data.nodes.get(name).or_else(|| {
            self.data
                .nodes
                .values()
                .find(|n| n.node.eq_ignore_ascii_case(name))
        })
    }

    /// Every service name with its instances, in name order.
    pub fn service_names(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &Service>)> {
        self.by_name.iter().map(|(name, keys)| {
            (
                name.as_str(),
                keys.iter().filter_map(|k| self.data.services.get(k)),
            )
        })
    }

    /// Every check, ordered by (node, check ID).
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.data.checks.values()
    }

    /// The checks registered on `node`.
    pub fn node_checks<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Check> + 'a {
        self.data.checks.range(node_range(node)).map(|(_, c)| c)
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
fn upsert<K: Ord, V: Indexed>(map: &mut BTreeMap<K, V>, key: K, mut entry: V, index: u64) -> bool {
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
fn remove_in<K: Ord + Clone, V>(
    map: &mut BTreeMap<K, V>,
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
