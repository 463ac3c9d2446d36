//! Raft messages over the `raft` ALPN: the client side openraft uses to reach peers
//! (append-entries, votes, snapshot chunks, each a framed RPC), and the handler that feeds
//! incoming messages to the local Raft. Only servers of the same DC can reach it: the
//! transport's authorization guarantees that before a message is decoded.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::lease::QuorumAcks;
use super::{LeaderContact, ServerNode, TypeConfig};
use crate::transport::identity::{Alpn, Identity};
use crate::transport::rpc::{Handler, RpcClient};
use crate::transport::{Transport, TransportError};

/// A Raft message between servers.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Leader election.
    Vote(VoteRequest<u64>),
    /// A vote asked by a candidate that the leader asked to take over (leadership
    /// transfer): granted although the leader's lease has not expired.
    VoteTransfer(VoteRequest<u64>),
    /// From the leader: campaign now, to take over (Raft's `TimeoutNow`).
    TimeoutNow,
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

impl RaftRequest {
    /// The RPC's name, as a metric label.
    fn kind(&self) -> &'static str {
        match self {
            RaftRequest::AppendEntries(_) => "append_entries",
            RaftRequest::Vote(_) | RaftRequest::VoteTransfer(_) => "vote",
            RaftRequest::TimeoutNow => "timeout_now",
            RaftRequest::InstallSnapshot(_) => "install_snapshot",
        }
    }
}

/// The answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    /// To AppendEntries.
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// To Vote.
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// To InstallSnapshot.
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// To TimeoutNow: whether this server won the election it started.
    TimeoutNow(Result<(), String>),
}

/// Feeds incoming Raft messages to the local Raft instance, and notes when a leader was
/// last heard from (Consul's `X-Consul-LastContact`).
pub struct RaftHandler {
    raft: openraft::Raft<TypeConfig>,
    contact: Arc<LeaderContact>,
    transfer: TransferTerm,
}

/// The term of an election this server started because the leader asked it to take over:
/// its vote requests for that term go out as [`RaftRequest::VoteTransfer`].
pub type TransferTerm = Arc<std::sync::atomic::AtomicU64>;

/// How long a server the leader asked to take over campaigns before it reports failure.
const TAKE_OVER_WITHIN: Duration = Duration::from_secs(2);

impl RaftHandler {
    /// Serves `raft`, recording leader contact in `contact`; an election asked by the
    /// leader is marked in `transfer`, which this server's [`RaftNetworkClient`] reads.
    pub fn new(
        raft: openraft::Raft<TypeConfig>,
        contact: Arc<LeaderContact>,
        transfer: TransferTerm,
    ) -> RaftHandler {
        RaftHandler {
            raft,
            contact,
            transfer,
        }
    }

    /// Campaigns at once in the next term, its votes marked as a transfer's; waits until it
    /// leads (or a later term began, or [`TAKE_OVER_WITHIN`] passed).
    async fn take_over(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let mut metrics = self.raft.metrics();
        let term = metrics.borrow().current_term + 1;
        self.transfer.store(term, Ordering::SeqCst);
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| e.to_string())?;
        let leading =
            |m: &openraft::RaftMetrics<u64, ServerNode>| m.state == openraft::ServerState::Leader;
        let won = matches!(
            tokio::time::timeout(
                TAKE_OVER_WITHIN,
                metrics.wait_for(|m| m.current_term > term || leading(m)),
            )
            .await,
            Ok(Ok(ref m)) if leading(m)
        );
        if won {
            return Ok(());
        }
        let m = metrics.borrow();
        Err(format!(
            "the election of term {term} was not won (now term {}, {:?})",
            m.current_term, m.state
        ))
    }
}

impl Handler for RaftHandler {
    type Request = RaftRequest;
    type Response = RaftResponse;

    async fn handle(&self, _peer: &Identity, request: RaftRequest) -> RaftResponse {
        match request {
            RaftRequest::AppendEntries(r) => {
                let leader_commit = r.leader_commit.map(|l| l.index);
                let resp = self.raft.append_entries(r).await;
                if matches!(resp, Ok(AppendEntriesResponse::Success)) {
                    self.contact.touch(leader_commit);
                }
                RaftResponse::AppendEntries(resp)
            }
            RaftRequest::Vote(r) => RaftResponse::Vote(self.raft.vote(r).await),
            RaftRequest::VoteTransfer(r) => {
                RaftResponse::Vote(self.raft.vote_ignoring_lease(r).await)
            }
            RaftRequest::TimeoutNow => RaftResponse::TimeoutNow(self.take_over().await),
            RaftRequest::InstallSnapshot(r) => {
                RaftResponse::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
        }
    }
}

/// Creates one [`RaftPeer`] per target for openraft.
#[derive(Clone)]
pub struct RaftNetworkClient {
    client: RpcClient<RaftRequest, RaftResponse>,
    acks: Arc<QuorumAcks>,
    failures: prometheus::IntCounterVec,
    transfer: TransferTerm,
}

impl RaftNetworkClient {
    /// Raft messages go over `transport`'s `raft` ALPN; followers' answers to
    /// AppendEntries are recorded in `acks` (the leader's lease); RPCs that fail are
    /// counted in `failures` (by RPC and reason).
    pub fn new(
        transport: Transport,
        acks: Arc<QuorumAcks>,
        failures: prometheus::IntCounterVec,
        transfer: TransferTerm,
    ) -> RaftNetworkClient {
        RaftNetworkClient {
            client: RpcClient::new(transport, Alpn::Raft),
            acks,
            failures,
            transfer,
        }
    }

    /// The client the leader asks another server to take over with.
    pub fn rpc(&self) -> RpcClient<RaftRequest, RaftResponse> {
        self.client.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftNetworkClient {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: u64, node: &ServerNode) -> RaftPeer {
        RaftPeer {
            target,
            client: self.client.clone(),
            addr: node.addr.parse().ok(),
            acks: self.acks.clone(),
            failures: self.failures.clone(),
            transfer: self.transfer.clone(),
        }
    }
}

/// The connection to one peer, as openraft sees it.
pub struct RaftPeer {
    target: u64,
    client: RpcClient<RaftRequest, RaftResponse>,
    addr: Option<std::net::SocketAddr>,
    acks: Arc<QuorumAcks>,
    failures: prometheus::IntCounterVec,
    transfer: TransferTerm,
}

/// One Raft RPC on its way: if it is dropped before it ends (openraft stopped waiting, at
/// its own timeout), it is counted as a timeout.
struct Attempt<'a> {
    failures: &'a prometheus::IntCounterVec,
    rpc: &'static str,
    ended: bool,
}

impl Attempt<'_> {
    fn failed(&mut self, reason: &str) {
        self.ended = true;
        self.failures.with_label_values(&[self.rpc, reason]).inc();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.failures
                .with_label_values(&[self.rpc, "timeout"])
                .inc();
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, ServerNode, RaftError<u64, E>>>;

impl RaftPeer {
    /// Wraps an error the peer's Raft answered with.
    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<u64, E>,
    ) -> RPCError<u64, ServerNode, RaftError<u64, E>> {
        RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
    }

    async fn send<E: std::error::Error>(
        &self,
        req: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftResponse, RPCError<u64, ServerNode, RaftError<u64, E>>> {
        let addr = self.addr.ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                "peer has no valid address",
            )))
        })?;
        let timeout = option.hard_ttl().max(Duration::from_millis(50));
        let mut attempt = Attempt {
            failures: &self.failures,
            rpc: req.kind(),
            ended: false,
        };
        match self.client.call(addr, None, &req, timeout).await {
            Ok(r) => {
                attempt.ended = true;
                Ok(r)
            }
            Err(e @ (TransportError::Unreachable { .. } | TransportError::Refused { .. })) => {
                attempt.failed("unreachable");
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ TransportError::Timeout { .. }) => {
                attempt.failed("timeout");
                Err(RPCError::Network(NetworkError::new(&e)))
            }
            Err(other) => {
                attempt.failed("network");
                Err(RPCError::Network(NetworkError::new(&other)))
            }
        }
    }
}

fn unexpected<E: std::error::Error>(
    got: &RaftResponse,
) -> RPCError<u64, ServerNode, RaftError<u64, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "unexpected raft response {got:?}"
    ))))
}

/// The first wait after a peer is found unreachable; each next one doubles, up to
/// [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
/// The longest wait between attempts to reach an unreachable peer (openraft's constant
/// default for every attempt).
const BACKOFF_MAX: Duration = Duration::from_millis(500);

impl RaftNetwork<TypeConfig> for RaftPeer {
    /// Exponential from 20 ms instead of openraft's constant 500 ms: "unreachable" includes
    /// a connection not obtained within the RPC's own short timeout (a heartbeat interval)
    /// on a busy machine, and a 500 ms pause of replication to a live follower stalled
    /// every write that long.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(
            (0..).map(|i: u32| BACKOFF_FIRST.saturating_mul(1 << i.min(8)).min(BACKOFF_MAX)),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let (vote, sent) = (rpc.vote, std::time::Instant::now());
        match self.send(RaftRequest::AppendEntries(rpc), &option).await? {
            RaftResponse::AppendEntries(r) => {
                if let Ok(
                    AppendEntriesResponse::Success
                    | AppendEntriesResponse::PartialSuccess(_)
                    | AppendEntriesResponse::Conflict,
                ) = &r
                {
                    // The follower took this leader's term as of `sent`.
                    self.acks.acked(self.target, vote, sent);
                }
                r.map_err(|e| self.remote(e))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        match self
            .send(RaftRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            RaftResponse::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        // Our own election of the term the leader asked us to take over in.
        let transfer =
            rpc.vote.leader_id.term == self.transfer.load(std::sync::atomic::Ordering::SeqCst);
        let req = if transfer {
            RaftRequest::VoteTransfer(rpc)
        } else {
            RaftRequest::Vote(rpc)
        };
        match self.send(req, &option).await? {
            RaftResponse::Vote(r) => r.map_err(|e| self.remote(e)),
            other => Err(unexpected(&other)),
        }
    }
}
