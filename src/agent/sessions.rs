//! Session TTLs, kept by the DC's leader as Consul keeps them: a timer per session with a
//! TTL, reset by each renewal (which reaches the leader but writes nothing to the log),
//! and a `SessionDestroy` written when one runs out. A new leader starts every timer afresh
//! from the replicated sessions, erring on the side of keeping a session.
//!
//! The timers themselves are pure ([`crate::state::session_ttl`]); [`run`] is the loop each
//! server runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::dispatch::Dispatcher;
use crate::rpc::Write;
use crate::state::session_ttl::SessionTimers;
use crate::state::{Command, Table};

/// Keeps the TTL timers while this server leads and ends the sessions whose time is up,
/// until `shutdown`.
pub async fn run(dispatcher: Dispatcher, timers: Arc<SessionTimers>, shutdown: CancellationToken) {
    let Some(raft) = dispatcher.raft().cloned() else {
        return;
    };
    let mut changes = raft.read().state.watch(Table::Sessions);
    let mut leading = false;
    let mut restored = raft.read().state.restored_at();
    loop {
        let now = Instant::now();
        let is_leader = raft.is_leader();
        let expired = {
            let mut t = timers.lock();
            if is_leader {
                let r = raft.read();
                if !leading || r.state.restored_at() != restored {
                    // A new leader, or a restored snapshot: every timer afresh.
                    t.clear();
                    restored = r.state.restored_at();
                }
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
            let end = Write {
                dc: None,
                cmd: Command::SessionDestroy { id: id.clone() },
                token: None, // leader-only work is not checked against ACLs
            };
            let Some(ended) = shutdown
                .run_until_cancelled(dispatcher.on_leader(end))
                .await
            else {
                return;
            };
            if let Err(e) = ended {
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
