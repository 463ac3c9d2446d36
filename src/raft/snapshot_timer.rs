//! When a server snapshots its state: as Consul (hashicorp/raft's `runSnapshots`), each
//! server checks on its own timer, at a random moment between one and two
//! `raft_snapshot_interval`s, whether `raft_snapshot_threshold` entries were applied since
//! its last snapshot, and snapshots only then.
//!
//! openraft's own policy snapshots the moment the count is reached, which is the same log
//! index on every server: under a steady write load all servers of a DC then encode and
//! fsync their whole state at once, every few seconds, and the quorum's writes wait on it.
//! With the timer a busy DC snapshots at most about once an interval per server, and the
//! servers at different moments.

use std::time::Duration;

use openraft::Raft;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::TypeConfig;

/// Whether a snapshot is due: at least `threshold` entries applied past the last one.
pub fn due(applied: Option<u64>, snapshot: Option<u64>, threshold: u64) -> bool {
    let applied = applied.map_or(0, |i| i + 1);
    let snapshot = snapshot.map_or(0, |i| i + 1);
    applied.saturating_sub(snapshot) >= threshold
}

/// The next check's delay: `fraction` (in [0, 1)) of the way from `interval` to twice it.
pub fn delay(interval: Duration, fraction: f64) -> Duration {
    interval + interval.mul_f64(fraction.clamp(0.0, 1.0))
}

/// Checks on the timer until `stop` is cancelled or Raft stops, and asks Raft for a
/// snapshot when one is due.
pub async fn run(
    raft: Raft<TypeConfig>,
    threshold: u64,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay(interval, rand::random::<f64>())) => {}
        }
        let (applied, snapshot) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        if due(applied, snapshot, threshold) {
            debug!(?applied, ?snapshot, "snapshot due");
            if raft.trigger().snapshot().await.is_err() {
                return; // Raft stopped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_once_threshold_entries_were_applied_past_the_last() {
        assert!(!due(None, None, 1));
        assert!(due(Some(0), None, 1), "entry 0 applied, no snapshot yet");
        assert!(!due(Some(99), None, 101));
        assert!(due(Some(99), None, 100));
        assert!(!due(Some(1_099), Some(100), 1_000));
        assert!(due(Some(1_100), Some(100), 1_000));
        assert!(!due(Some(100), Some(100), 1), "nothing new");
        assert!(
            !due(Some(50), Some(100), 1),
            "a snapshot installed ahead of the applied index"
        );
    }

    #[test]
    fn checks_are_spread_between_one_and_two_intervals() {
        let i = Duration::from_secs(30);
        assert_eq!(delay(i, 0.0), i);
        assert_eq!(delay(i, 0.5), Duration::from_secs(45));
        assert!(delay(i, 0.999_999) < 2 * i);
        assert_eq!(delay(i, 7.0), 2 * i, "clamped");
    }
}
