//! Anti-entropy: keeps the catalog's view of this agent's node equal to its local state
//! ([`super::local`]). It syncs at once after every local change, and fully every
//! `interval` (with jitter), which re-asserts what a server failover or a catalog wipe
//! lost and removes what the agent no longer has. Failed syncs are retried with backoff.
//!
//! Changes are coalesced: a change syncs at once unless a sync started less than
//! [`COALESCE`] ago, in which case it waits for that much to have passed and carries every
//! change made meanwhile. However many checks flap, an agent writes the catalog at most
//! once per [`COALESCE`] for them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::local::{LocalAgent, sync_plan};
use crate::dispatch::Dispatcher;
use crate::rpc::{ReadOptions, RpcError};
use crate::state::Command;
use crate::state::query::{Query, QueryResult};
use crate::vocab::ReadMode;

/// First retry delay after a failed sync; doubles up to the sync interval.
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The shortest time between the starts of two change-triggered syncs.
pub const COALESCE: Duration = Duration::from_millis(500);

/// Runs until `shutdown` fires (a sync in flight then is abandoned: the next start redoes
/// it).
pub async fn run(
    local: Arc<LocalAgent>,
    dispatcher: Dispatcher,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut retry = RETRY_FIRST;
    loop {
        let started = tokio::time::Instant::now();
        let Some(synced) = shutdown
            .run_until_cancelled(sync_once(&local, &dispatcher))
            .await
        else {
            return;
        };
        let wait = match synced {
            Ok(0) => interval + interval.mul_f64(rand::random::<f64>() / 4.0),
            Ok(writes) => {
                debug!(writes, "anti-entropy synced the catalog");
                retry = RETRY_FIRST;
                interval
            }
            Err(e) => {
                warn!(error = %e, "anti-entropy sync failed; retrying");
                let wait = retry;
                retry = (retry * 2).min(interval);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = local.changed() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(started + COALESCE) => {}
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One sync: read this node's catalog entries at the leader, write the difference in one
/// Raft entry. Returns how many changes were written.
pub async fn sync_once(local: &LocalAgent, dispatcher: &Dispatcher) -> Result<usize, RpcError> {
    let opts = ReadOptions::now(ReadMode::Leader);
    let name = local.node.name.clone();
    // The agent's own token (`acl.tokens.agent`) syncs what was registered with it.
    let token = || dispatcher.agent_token();
    let services = dispatcher
        .read(
            token(),
            None,
            Query::NodeServices { node: name.clone() },
            opts,
        )
        .await?;
    let checks = dispatcher
        .read(token(), None, Query::NodeChecks { node: name }, opts)
        .await?;
    let (QueryResult::NodeServices(node), QueryResult::Checks(checks)) =
        (services.result, checks.result)
    else {
        return Err(RpcError::Protocol("unexpected query result shape".into()));
    };
    let (node, services) = match node {
        Some((n, s)) => (Some(n), s),
        None => (None, Vec::new()),
    };
    let plan = sync_plan(
        &local.node,
        &local.snapshot(),
        node.as_ref(),
        &services,
        &checks,
    );
    let n = plan.len();
    if n > 0 {
        dispatcher
            .write(token(), None, Command::Batch(plan))
            .await?;
    }
    Ok(n)
}
