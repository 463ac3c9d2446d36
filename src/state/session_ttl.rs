//! Session TTL timers, soft state the DC's leader keeps beside the replicated state (as
//! Consul does): a deadline per session with a TTL, reset by each renewal (which reaches
//! the leader but writes nothing to the log). A new leader starts every timer afresh from
//! the replicated sessions, erring on the side of keeping a session. Pure: the clock is
//! passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

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
    /// Restarts session `id`'s timer at `now` (a renewal reached this leader).
    pub fn renew(&self, id: &str, ttl: Duration, now: Instant) {
        self.lock().renew(id, ttl, now);
    }

    /// The timers, for the loop that keeps them.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, TtlTimers> {
        self.0.lock().expect("session timers poisoned")
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
