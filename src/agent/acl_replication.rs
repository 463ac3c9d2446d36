//! ACL replication: the leader of a non-primary DC keeps its copy of the primary's global
//! policies, roles and (with `enable_token_replication`) tokens, with one blocking query to
//! the primary per change and one Raft entry per change batch, so tokens made in the
//! primary work here and deleted ones stop working.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::acl::{ReplicationStatus, Secret};
use crate::dispatch::Dispatcher;
use crate::metrics::AclMetrics;
use crate::raft::RaftNode;
use crate::rpc::{ReadOptions, Write};
use crate::state::Command;
use crate::state::query::{Query, QueryResult};
use crate::vocab::ReadMode;

/// How long one blocking query to the primary waits for a change (then it asks again,
/// which also notices a lost leadership).
const WAIT: Duration = Duration::from_secs(30);
/// The pause after a failed round.
const RETRY: Duration = Duration::from_secs(1);

/// What a replication loop is given.
pub struct Replication {
    /// The primary DC.
    pub primary: String,
    /// The replication token (`acl.tokens.replication`).
    pub token: Option<Secret>,
    /// Whether tokens are replicated too (`acl.enable_token_replication`).
    pub tokens_too: bool,
    /// Where it reports.
    pub metrics: AclMetrics,
    /// What `/v1/acl/replication` shows.
    pub status: Arc<Mutex<ReplicationStatus>>,
}

/// Replicates from the primary while this server leads its DC, until `shutdown`.
pub async fn run(
    raft: RaftNode,
    dispatcher: Dispatcher,
    r: Replication,
    shutdown: CancellationToken,
) {
    let Replication {
        primary,
        token,
        tokens_too,
        metrics,
        status,
    } = r;
    let report = |f: &dyn Fn(&mut ReplicationStatus)| {
        f(&mut status.lock().expect("replication status lock"))
    };
    report(&|s| {
        s.enabled = true;
        s.source_datacenter = primary.clone();
        s.replication_type = if tokens_too { "tokens" } else { "policies" }.into();
    });
    let now = || {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut leadership = raft.raft().metrics();
    let mut index = 0;
    loop {
        report(&|s| s.running = raft.is_leader());
        if !raft.is_leader() {
            index = 0;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = leadership.changed() => if r.is_err() { return },
            }
            continue;
        }
        let opts = ReadOptions {
            min_index: index,
            wait: WAIT,
            ..ReadOptions::now(ReadMode::Stale)
        };
        let read = dispatcher.read(token.clone(), Some(&primary), Query::AclReplication, opts);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = read => r,
        };
        let round = match outcome {
            Ok(out) => match out.result {
                QueryResult::AclSet(mut set) => {
                    if !tokens_too {
                        set.tokens.clear();
                    }
                    let plan = raft.read().state.acl_replication_plan(&set);
                    let changes = plan.len();
                    let applied = if plan.is_empty() {
                        Ok(())
                    } else {
                        let write = Write {
                            dc: None,
                            cmd: Command::Batch(plan),
                            token: None,
                        };
                        dispatcher.on_leader(write).await.map(|_| ())
                    };
                    applied.map(|()| (out.index, changes))
                }
                _ => Err(crate::rpc::RpcError::Protocol(
                    "unexpected ACL replication answer".into(),
                )),
            },
            Err(e) => Err(e),
        };
        match round {
            Ok((at, changes)) => {
                if changes > 0 {
                    info!(%primary, index = at, changes, "ACLs replicated");
                }
                index = at;
                report(&|s| {
                    s.replicated_index = at;
                    s.replicated_token_index = if tokens_too { at } else { 0 };
                    s.last_success = now();
                });
                metrics.replicated_index.set(at as i64);
                metrics
                    .last_success
                    .set((crate::acl::model::now_ms() / 1000) as i64);
            }
            Err(e) => {
                metrics.errors.inc();
                let message = e.to_string();
                report(&|s| {
                    s.last_error = now();
                    s.last_error_message = message.clone();
                });
                warn!(%primary, error = %e, "ACL replication failed; will retry");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}
