//! Sessions: creation (checked against the catalog), and their end (destroyed, TTL
//! lapsed, a check gone critical or removed, the node gone), which releases or deletes the
//! keys they hold and gives each its lock-delay on this server's clock.

use std::time::Instant;

use super::{CommandResult, HealthStatus, Session, SessionBehavior, State, Table};

impl State {
    pub(super) fn session_create(&mut self, index: u64, mut session: Session) -> CommandResult {
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
    pub(super) fn invalidate(&mut self, index: u64, id: &str, now: Instant) {
        let Some(session) = self.data.sessions.remove(id) else {
            return;
        };
        self.touch(Table::Sessions, index);
        self.prepared_queries_of_session_end(index, id);
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
            self.kv_watches.changed(&key, index);
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
    pub(super) fn invalidate_for(
        &mut self,
        index: u64,
        node: &str,
        checks: Option<&[String]>,
        now: Instant,
    ) {
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
}
