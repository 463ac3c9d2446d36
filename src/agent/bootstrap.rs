//! The probing loop around [`crate::raft::bootstrap::decide`]: until this server has Raft
//! state, ask the DC's other servers who they are, then initialize, wait, or ask to be
//! added. Peers are the LAN join addresses on the QUIC port (a server bootstraps before
//! gossip could tell it more).

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::raft::bootstrap::{Decision, SeenServer, decide};
use crate::raft::{RaftNode, ServerNode};
use crate::rpc::client::AgentClient;
use crate::rpc::{GetServerInfo, JoinRaft};
use crate::transport::Transport;

const PROBE_EVERY: Duration = Duration::from_millis(300);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs until this server belongs to a cluster or `shutdown` fires.
pub async fn run(
    raft: RaftNode,
    me: ServerNode,
    expect: Option<u32>,
    peers: Vec<SocketAddr>,
    transport: Transport,
    shutdown: CancellationToken,
) {
    let client = AgentClient::new(transport);
    let myself = SeenServer {
        id: raft.id(),
        node: me.clone(),
        initialized: false,
        expect,
    };
    loop {
        if raft.is_initialized().await.unwrap_or(true) {
            debug!("raft state present: no bootstrap");
            return;
        }
        let probes = peers.iter().map(|addr| {
            let client = client.clone();
            async move {
                match client.call(*addr, None, GetServerInfo, PROBE_TIMEOUT).await {
                    Ok(Some(info)) => Some(SeenServer {
                        id: info.id,
                        node: info.node,
                        initialized: info.initialized,
                        expect: info.bootstrap_expect,
                    }),
                    _ => None,
                }
            }
        });
        let seen: Vec<SeenServer> = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        match decide(&myself, expect, &seen) {
            Decision::Wait => {}
            Decision::Initialize(members) => {
                info!(servers = members.len(), "bootstrapping the cluster");
                if let Err(e) = raft.initialize(members).await {
                    warn!(error = %e, "bootstrap failed");
                }
            }
            Decision::Join(_) => {
                for member in seen.iter().filter(|s| s.initialized) {
                    let Ok(addr) = member.node.addr.parse() else {
                        continue;
                    };
                    let join = JoinRaft {
                        id: myself.id,
                        node: me.clone(),
                    };
                    if let Ok(()) = client.call(addr, None, join, Duration::from_secs(10)).await {
                        info!(via = %member.node, "joined the cluster");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
