//! Session TTLs, kept by the DC's leader as Consul keeps them: a timer per session with a
//! TTL, reset by each renewal (which reaches the leader but writes nothing to the log),
//! and a `SessionDestroy` written when one runs out. A new leader starts every timer afresh
//! from the replicated sessions, erring on the side of keeping a session.
//!
//! [`TtlTimers`] is the pure core; [`run`] is the loop each server runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::dispatch::Dispatcher;
use crate::state::{Command, Table};

/// How long after its last renewal a session with `ttl` ends: Consul's guarantee is no
/// sooner than the TTL and no later than twice it, so twice it less a margin for writing
/// the end through Raft (TTLs are at least 10 s).
pub fn expiry(ttl: Duration) -> Duration {
    (ttl * 2).saturating_sub(Duration::from_secs(1)).max(ttl)
}

/// The deadline of every session with a TTL, on the leader.
#[derive(Debug, Default)]
pub struct TtlTimers {
    deadlines: HashMap<String, (Instant, Duration)>,
}

impl TtlTimers {
    /// Makes the timers match `sessions` (ID, TTL): new ones start at `now`, ended ones go.
    pub fn sync<'a>(&mut self, sessions: impl Iterator<Item = (&'a str, Duration)>, now: Instant) {
        let mut keep: HashMap<String, (Instant, Duration)> = HashMap::new();
        for (id, ttl) in sessions {
            let entry = self
                .deadlines
                .remove(id)
                .unwrap_or((now + expiry(ttl), ttl));
            keep.insert(id.to_string(), entry);
        }
        self.deadlines = keep;
    }

    /// Restarts the timer of session `id` with `ttl` from `now`.
    pub fn renew(&mut self, id: &str, ttl: Duration, now: Instant) {
        self.deadlines
            .insert(id.to_string(), (now + expiry(ttl), ttl));
    }

    /// The sessions whose time is up at `now`; their timers are dropped.
    pub fn expired(&mut self, now: Instant) -> Vec<String> {
        let ids: Vec<String> = self
            .deadlines
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.deadlines.remove(id);
        }
        ids
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.deadlines.values().map(|(d, _)| *d).min()
    }

    /// Forgets every timer (leadership lost).
    pub fn clear(&mut self) {
        self.deadlines.clear();
    }
}

/// The timers a server shares between its loop and the requests that renew sessions.
#[derive(Debug, Default)]
pub struct SessionTimers(Mutex<TtlTimers>);

impl SessionTimers {
    /// Restarts session `id`'s timer (a renewal reached this leader).
    pub fn renew(&self, id: &str, ttl: Duration) {
        self.lock().renew(id, ttl, Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TtlTimers> {
        self.0.lock().expect("session timers poisoned")
    }
}

/// Keeps the TTL timers while this server leads and ends the sessions whose time is up,
/// until `shutdown`.
pub async fn run(dispatcher: Dispatcher, timers: Arc<SessionTimers>, shutdown: CancellationToken) {
    let Some(raft) = dispatcher.raft().cloned() else {
        return;
    };
    let mut changes = raft.read().state.watch(Table::Sessions);
    let mut leading = false;
    loop {
        let now = Instant::now();
        let is_leader = raft.is_leader();
        let expired = {
            let mut t = timers.lock();
            if is_leader {
                if !leading {
                    // A new leader: every timer afresh.
                    t.clear();
                }
                let r = raft.read();
                t.sync(
                    r.state
                        .sessions()
                        .filter_map(|s| Some((s.id.as_str(), s.ttl?))),
                    now,
                );
                t.expired(now)
            } else {
                t.clear();
                Vec::new()
            }
        };
        leading = is_leader;
        for id in expired {
            if let Err(e) = dispatcher
                .write(None, Command::SessionDestroy { id: id.clone() }, false)
                .await
            {
                warn!(session = %id, error = %e, "cannot end an expired session; retrying");
                timers
                    .lock()
                    .renew(&id, Duration::from_secs(1), Instant::now());
            }
        }
        let next = timers.lock().next();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.changed() => {}
            _ = raft.leadership_change(is_leader) => {}
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn sessions_end_between_one_and_two_ttls_after_their_last_renewal() {
        assert_eq!(expiry(TTL), Duration::from_secs(19));
        assert!(expiry(TTL) >= TTL && expiry(TTL) <= TTL * 2);
        let t0 = Instant::now();
        let mut timers = TtlTimers::default();
        timers.sync([("a", TTL), ("b", TTL)].into_iter(), t0);
        assert_eq!(timers.next(), Some(t0 + expiry(TTL)));
        timers.renew("a", TTL, t0 + Duration::from_secs(5));
        assert!(timers.expired(t0 + Duration::from_secs(18)).is_empty());
        assert_eq!(timers.expired(t0 + expiry(TTL)), ["b"]);
        assert_eq!(
            timers.next(),
            Some(t0 + Duration::from_secs(5) + expiry(TTL))
        );
        // A sync keeps running timers and drops sessions that ended.
        timers.sync(
            [("a", TTL), ("c", TTL)].into_iter(),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(24)));
        assert_eq!(timers.expired(t0 + Duration::from_secs(24)), ["a"]);
        timers.clear();
        assert_eq!(timers.next(), None);
    }
}
