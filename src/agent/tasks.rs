//! The agent's background loops (anti-entropy, checks, reconciliation, session timers,
//! bootstrap, WAN flood-join, leadership publishing, server tracking), spawned in one set
//! so that shutdown awaits them all, in order, before Raft and the transport close.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{debug, error, warn};

/// Every background loop of one agent. Each loop stops by itself once the agent's
/// cancellation token fires; [`Loops::stop`] waits for that, and aborts what is still
/// running past its bound, so that nothing of the agent's own writes to Raft after it
/// stopped.
#[derive(Default)]
pub struct Loops {
    set: JoinSet<()>,
}

impl Loops {
    /// Spawns `task`, known in logs as `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(async move {
            task.await;
            debug!(task = name, "background task stopped");
        });
    }

    /// How many loops are running.
    pub(super) fn len(&self) -> usize {
        self.set.len()
    }

    /// Waits up to `bound` for every loop to end, then aborts the rest and waits for them
    /// to be gone. A loop that panicked is logged.
    pub async fn stop(mut self, bound: Duration) {
        let drained = tokio::time::timeout(bound, async {
            while let Some(r) = self.set.join_next().await {
                if let Err(e) = r
                    && e.is_panic()
                {
                    error!(error = %e, "a background task panicked");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                running = self.set.len(),
                "background tasks still running at shutdown: aborted"
            );
            self.set.abort_all();
            while self.set.join_next().await.is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Sets its flag when dropped: shows a task's future is gone.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn stop_waits_for_loops_and_aborts_those_past_the_bound() {
        let finished = Arc::new(AtomicBool::new(false));
        let mut loops = Loops::default();
        let f = finished.clone();
        loops.spawn("quick", async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            f.store(true, Ordering::SeqCst);
        });
        let gone = Arc::new(AtomicBool::new(false));
        let guard = Dropped(gone.clone());
        loops.spawn("stuck", async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        assert_eq!(loops.len(), 2);
        loops.stop(Duration::from_millis(200)).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "the quick loop ran to its end"
        );
        assert!(
            gone.load(Ordering::SeqCst),
            "the stuck loop was aborted and dropped"
        );
    }
}
