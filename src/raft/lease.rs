//! The leader's lease, measured from when it sent what a quorum acknowledged: a follower's
//! answer to an AppendEntries proves it followed this leader's term at the moment the
//! request was sent, so while a quorum's answers are to requests sent within the lease
//! (the minimum election timeout), no other leader can have been elected. Times are taken
//! before sending and compared with the clock at the read, never with a value computed
//! earlier: a leader paused (SIGSTOP, a VM stall) wakes up outside its lease.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::Vote;

/// The latest acknowledged send of each follower, for the leader's term it was sent in.
#[derive(Debug, Default)]
pub struct QuorumAcks(Mutex<HashMap<u64, (Vote<u64>, Instant)>>);

impl QuorumAcks {
    /// Follower `target` answered, without refusing the leader's `vote`, a request sent at
    /// `sent`.
    pub fn acked(&self, target: u64, vote: Vote<u64>, sent: Instant) {
        let mut acks = self.0.lock().expect("quorum acks poisoned");
        let newer = acks
            .get(&target)
            .is_none_or(|(v, at)| *v != vote || *at < sent);
        if newer {
            acks.insert(target, (vote, sent));
        }
    }

    /// How long before `now` follower `target` last acknowledged a request of the leader
    /// holding `vote` (`None`: never, in this term).
    pub fn last_contact(&self, vote: &Vote<u64>, target: u64, now: Instant) -> Option<Duration> {
        let acks = self.0.lock().expect("quorum acks poisoned");
        acks.get(&target)
            .filter(|(v, _)| v == vote)
            .map(|(_, sent)| now.saturating_duration_since(*sent))
    }

    /// Whether the leader holding `vote`, with `followers` voters besides itself, is within
    /// `lease` at `now`: a quorum (itself included) acknowledged requests of this term sent
    /// less than `lease` ago.
    pub fn within(
        &self,
        vote: &Vote<u64>,
        followers: impl Iterator<Item = u64>,
        lease: Duration,
        now: Instant,
    ) -> bool {
        let acks = self.0.lock().expect("quorum acks poisoned");
        let mut voters = 1;
        let mut fresh = 1;
        for f in followers {
            voters += 1;
            if acks
                .get(&f)
                .is_some_and(|(v, sent)| v == vote && now.saturating_duration_since(*sent) < lease)
            {
                fresh += 1;
            }
        }
        fresh > voters / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_needs_a_quorum_of_fresh_acks_of_this_term() {
        let acks = QuorumAcks::default();
        let lease = Duration::from_millis(200);
        let t0 = Instant::now();
        let vote = Vote::new_committed(3, 1);
        let followers = || [2u64, 3].into_iter();
        assert!(!acks.within(&vote, followers(), lease, t0), "no ack yet");
        acks.acked(2, vote, t0);
        assert!(acks.within(&vote, followers(), lease, t0 + Duration::from_millis(100)));
        assert!(
            !acks.within(&vote, followers(), lease, t0 + Duration::from_secs(3)),
            "a pause puts the leader out of its lease"
        );
        let older = Vote::new_committed(2, 1);
        assert!(!acks.within(&older, followers(), lease, t0), "another term");
        // An older send answered late does not move the lease back.
        acks.acked(2, vote, t0 - Duration::from_millis(50));
        assert!(acks.within(&vote, followers(), lease, t0 + Duration::from_millis(190)));
        // Alone, a leader is its own quorum; with four followers it needs two of them.
        assert!(acks.within(&vote, std::iter::empty(), lease, t0));
        assert!(!acks.within(&vote, [2, 3, 4, 5].into_iter(), lease, t0));
        acks.acked(4, vote, t0);
        assert!(acks.within(&vote, [2, 3, 4, 5].into_iter(), lease, t0));
    }
}
