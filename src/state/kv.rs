//! The KV store's commands and reads: sets, CAS, deletes, and the lock rules of
//! `?acquire`/`?release` (Consul's: a lock index per acquisition, held by one session).

use std::ops::Bound;

use super::{CommandResult, KvEntry, State, Table};

impl State {
    pub(super) fn kv_cas(
        &mut self,
        index: u64,
        key: String,
        value: bytes::Bytes,
        flags: u64,
        expected: u64,
    ) -> CommandResult {
        let current = self.data.kv.get(&key).map_or(0, |e| e.modify_index);
        if current != expected {
            return CommandResult::Bool(false);
        }
        self.kv_put(index, key, value, flags);
        CommandResult::Bool(true)
    }

    pub(super) fn kv_delete(&mut self, index: u64, key: &str) -> CommandResult {
        if self.data.kv.remove(key).is_some() {
            self.touch(Table::Kv, index);
            self.kv_watches.changed(key, index);
        }
        CommandResult::Bool(true)
    }

    pub(super) fn kv_delete_cas(&mut self, index: u64, key: &str, expected: u64) -> CommandResult {
        match self.data.kv.get(key) {
            Some(e) if e.modify_index == expected => {
                self.data.kv.remove(key);
                self.touch(Table::Kv, index);
                self.kv_watches.changed(key, index);
                CommandResult::Bool(true)
            }
            // Deleting an absent key with index 0 is not a match in Consul either.
            _ => CommandResult::Bool(false),
        }
    }

    pub(super) fn kv_delete_tree(&mut self, index: u64, prefix: &str) -> CommandResult {
        let doomed: Vec<String> = self.kv_prefix(prefix).map(|e| e.key.clone()).collect();
        for k in &doomed {
            self.data.kv.remove(k);
        }
        if !doomed.is_empty() {
            self.touch(Table::Kv, index);
            self.kv_watches.tree_changed(prefix, index);
        }
        CommandResult::Bool(true)
    }

    pub(super) fn kv_acquire(
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
        let entry = self.kv_put(index, key, value, flags);
        if !held {
            entry.lock_index += 1;
            entry.session = Some(session);
        }
        CommandResult::Bool(true)
    }

    pub(super) fn kv_release(
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
        self.kv_put(index, key, value, flags).session = None;
        CommandResult::Bool(true)
    }

    /// Whether `session` holds the lock on `key`.
    pub(super) fn held_by(&self, key: &str, session: &str) -> bool {
        self.data
            .kv
            .get(key)
            .is_some_and(|e| e.session.as_deref() == Some(session))
    }

    /// Writes a key; the entry as written, for the caller to finish or report.
    pub(super) fn kv_put(
        &mut self,
        index: u64,
        key: String,
        value: bytes::Bytes,
        flags: u64,
    ) -> &mut KvEntry {
        // Waiters read once this apply has released the state: the order is free.
        self.kv_watches.changed(&key, index);
        self.touch(Table::Kv, index);
        let entry = self.data.kv.entry(key.clone()).or_insert_with(|| KvEntry {
            key,
            create_index: index,
            ..KvEntry::default()
        });
        entry.value = value;
        entry.flags = flags;
        entry.modify_index = index;
        entry
    }

    /// A KV entry.
    pub fn kv_get(&self, key: &str) -> Option<&KvEntry> {
        self.data.kv.get(key)
    }

    /// Every KV entry whose key starts with `prefix`, in key order.
    pub fn kv_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.data
            .kv
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    /// Number of KV keys.
    pub fn kv_len(&self) -> usize {
        self.data.kv.len()
    }
}
