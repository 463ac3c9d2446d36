//! The one place that decides where a request is answered: here, at this DC's Raft leader,
//! through one of the DC's servers (on client agents), or in another datacenter (servers
//! forward through the [`Router`]; client agents send such requests to a local server).
//! Every entry point (agent RPC, HTTP API, DNS) calls it instead of deciding for itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::rpc::{AgentRequest, AgentResponse};
use crate::agent::sessions::SessionTimers;
use crate::federation::Router;
use crate::gossip::Member;
use crate::metrics::{InFlight, RpcMetrics};
use crate::raft::{RaftNode, RaftNodeError, ReadMeta, ReadMode, ServerNode};
use crate::state::query::{Query, QueryResult};
use crate::state::{Command, CommandResult, Session};
use crate::transport::identity::Alpn;
use crate::transport::rpc::RpcClient;
use crate::transport::{Transport, TransportError};

/// How long a forwarded request may take in all (beyond a blocking read's wait).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a blocking read waits, whoever asks (Consul: 10 minutes plus jitter).
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(660);
/// How long a server holds a request while its DC has no reachable leader (an election
/// after the leader died), retrying as leadership changes, before it answers `No cluster
/// leader` (Consul's `rpc_hold_timeout`).
const LEADER_HOLD: Duration = Duration::from_secs(7);
/// How long a server of this DC may take to accept and acknowledge a request (dial
/// included) before the sender moves on: far above a LAN round trip, far below the
/// handshake timeout a dead server would otherwise cost.
const IN_DC_REACH: Duration = Duration::from_secs(1);
/// The longest a held request waits for leadership to change before it is tried again
/// (about two election timeouts: a new leader normally shows up well within it).
const HOLD_RETRY: Duration = Duration::from_secs(1);

/// How a read is to be answered (from Consul's query parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Consistency mode.
    pub mode: ReadMode,
    /// For stale reads: if this server has not heard from the leader for longer, the read
    /// goes to the leader instead (`?max_stale=`).
    pub max_stale: Option<Duration>,
    /// Blocking query: answer once the index exceeds this (0: answer now).
    pub min_index: u64,
    /// Blocking query: the longest wait.
    pub wait: Duration,
}

/// A read's answer and what Consul's headers say about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOutcome {
    /// The data.
    pub result: QueryResult,
    /// `X-Consul-Index`: the highest index of the tables read, never below 1.
    pub index: u64,
    /// `X-Consul-KnownLeader` and `X-Consul-LastContact`.
    pub meta: ReadMeta,
    /// `X-Consul-Effective-Consistency`.
    pub mode: ReadMode,
}

/// Why a request could not be answered, as carried between agents and mapped to HTTP by the
/// http module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DispatchError {
    /// The datacenter asked for is not known (Consul's message).
    #[error("No path to datacenter")]
    NoPathToDatacenter,
    /// The datacenter is known but none of its servers could be reached (Consul's message).
    #[error("Remote DC has no server currently reachable")]
    NoReachableServer,
    /// No leader is known in the DC (Consul: `No cluster leader`).
    #[error("No cluster leader")]
    NoLeader,
    /// This agent cannot serve the request (e.g. a client asked for Raft state).
    #[error("{0}")]
    NotServed(String),
    /// Forwarding failed; `retry_safe` says whether the request surely did not apply.
    #[error("forwarding failed: {reason}")]
    Forward {
        /// What went wrong.
        reason: String,
        /// Whether sending it again cannot apply it twice.
        retry_safe: bool,
    },
    /// Raft failed locally.
    #[error("raft: {0}")]
    Raft(String),
}

impl DispatchError {
    /// Whether the request certainly was not applied.
    pub fn is_retry_safe(&self) -> bool {
        match self {
            DispatchError::NoLeader
            | DispatchError::NotServed(_)
            | DispatchError::NoPathToDatacenter
            | DispatchError::NoReachableServer => true,
            DispatchError::Forward { retry_safe, .. } => *retry_safe,
            DispatchError::Raft(_) => false,
        }
    }
}

impl From<RaftNodeError> for DispatchError {
    fn from(e: RaftNodeError) -> Self {
        match e {
            RaftNodeError::NotLeader { .. } | RaftNodeError::NoLeader => DispatchError::NoLeader,
            other => DispatchError::Raft(other.to_string()),
        }
    }
}

impl From<TransportError> for DispatchError {
    fn from(e: TransportError) -> Self {
        DispatchError::Forward {
            retry_safe: e.is_retry_safe(),
            reason: e.to_string(),
        }
    }
}

/// The DC's servers as a client agent knows them, and which one it uses now. A server
/// that fails a request is skipped, so the next request starts at the one that answered.
#[derive(Default)]
pub struct ServerList {
    addrs: RwLock<Vec<SocketAddr>>,
    current: AtomicUsize,
}

impl ServerList {
    /// A list holding `addrs`.
    pub fn new(addrs: Vec<SocketAddr>) -> ServerList {
        ServerList {
            addrs: RwLock::new(addrs),
            current: AtomicUsize::new(0),
        }
    }

    /// Replaces the list (membership changed).
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        *self.addrs.write().expect("server list lock") = addrs;
    }

    /// The servers in the order to try them: the current one first.
    fn rotation(&self) -> (usize, Vec<SocketAddr>) {
        let addrs = self.addrs.read().expect("server list lock").clone();
        let start = self.current.load(Ordering::Relaxed);
        let n = addrs.len().max(1);
        let order = (0..addrs.len())
            .map(|i| addrs[(start + i) % n])
            .collect::<Vec<_>>();
        (start, order)
    }

    fn settle(&self, start: usize, skipped: usize) {
        if skipped > 0 {
            let _ = self.current.compare_exchange(
                start,
                start.wrapping_add(skipped),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// Routes requests for one agent.
#[derive(Clone)]
pub struct Dispatcher {
    datacenter: String,
    metrics: RpcMetrics,
    raft: Option<RaftNode>,
    servers: Arc<ServerList>,
    client: RpcClient<AgentRequest, AgentResponse>,
    router: Option<Arc<Router>>,
    /// Servers: the session TTL timers, reset here when a renewal reaches the leader.
    session_timers: Option<Arc<SessionTimers>>,
}

/// The DC's Raft leader and voters, as `status/leader` and `status/peers` report them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// The leader, if one is known.
    pub leader: Option<ServerNode>,
    /// The voting servers.
    pub voters: Vec<ServerNode>,
}

impl Dispatcher {
    /// A dispatcher for an agent with (server) or without (client) a Raft node. A client
    /// sends everything to one of `servers`; a server sends requests for other DCs through
    /// `router`.
    pub fn new(
        datacenter: &str,
        raft: Option<RaftNode>,
        servers: Arc<ServerList>,
        transport: Transport,
        metrics: RpcMetrics,
        router: Option<Arc<Router>>,
    ) -> Dispatcher {
        Dispatcher {
            datacenter: datacenter.to_string(),
            metrics,
            raft,
            servers,
            client: RpcClient::new(transport, Alpn::Rpc).fail_fast(),
            router,
            session_timers: None,
        }
    }

    /// On servers: the session TTL timers that renewals reaching this server, when it
    /// leads, reset.
    pub fn with_session_timers(mut self, timers: Arc<SessionTimers>) -> Dispatcher {
        self.session_timers = Some(timers);
        self
    }

    /// The routing metrics (also counted by the agent RPC handler).
    pub fn metrics(&self) -> &RpcMetrics {
        &self.metrics
    }

    /// The local datacenter's name.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// Sends `req` from a client agent to the DC's servers, the current one first, moving
    /// on while a server cannot be reached (and, for writes, while it surely did not apply
    /// the request). The first answer is returned, whatever it says.
    async fn via_server(
        &self,
        req: &AgentRequest,
        timeout: Duration,
    ) -> Result<AgentResponse, DispatchError> {
        let (start, order) = self.servers.rotation();
        let mut last = DispatchError::NotServed("no server of this datacenter is known".into());
        for (i, addr) in order.into_iter().enumerate() {
            match self
                .client
                .call_reaching(addr, None, req, timeout, IN_DC_REACH)
                .await
            {
                Ok(resp) => {
                    self.servers.settle(start, i);
                    return Ok(resp);
                }
                Err(e) => {
                    let safe = e.is_retry_safe() || req.is_read();
                    last = e.into();
                    if !safe {
                        self.servers.settle(start, i);
                        return Err(last);
                    }
                }
            }
        }
        self.servers.settle(start, 1);
        Err(last)
    }

    /// This agent's Raft node, on servers.
    pub fn raft(&self) -> Option<&RaftNode> {
        self.raft.as_ref()
    }

    /// The datacenter a request naming `dc` must be answered in, when that is not this one.
    fn remote<'a>(&self, dc: Option<&'a str>) -> Option<&'a str> {
        dc.filter(|dc| *dc != self.datacenter)
    }

    /// Sends `req` towards datacenter `dc`: through the router on servers, to a local
    /// server on client agents (which never talk to another DC themselves).
    async fn cross_dc(
        &self,
        dc: &str,
        req: AgentRequest,
        timeout: Duration,
    ) -> Result<AgentResponse, DispatchError> {
        match &self.router {
            Some(router) => router.forward(dc, &req, timeout).await,
            None if self.raft.is_none() => self.via_server(&req, timeout).await,
            None => Err(DispatchError::NoPathToDatacenter),
        }
    }

    /// Every datacenter known, this one first, then nearest first (a client agent asks a
    /// server).
    pub async fn datacenters(&self) -> Result<Vec<String>, DispatchError> {
        match (&self.router, &self.raft) {
            (Some(router), _) => Ok(router.datacenters()),
            (None, Some(_)) => Ok(vec![self.datacenter.clone()]),
            (None, None) => match self
                .via_server(&AgentRequest::Datacenters, FORWARD_TIMEOUT)
                .await?
            {
                AgentResponse::Datacenters(r) => r,
                other => Err(unexpected(other)),
            },
        }
    }

    /// The WAN pool as this server sees it (`None` on client agents).
    pub fn wan_members(&self) -> Option<Vec<Member>> {
        self.router.as_ref().map(|r| r.members())
    }

    fn server(&self) -> Result<&RaftNode, DispatchError> {
        self.raft
            .as_ref()
            .ok_or_else(|| DispatchError::NotServed("client agents hold no Raft state".into()))
    }

    /// The leader and voting servers of `dc` (default: this one), as a server of it sees
    /// them.
    pub async fn raft_status(&self, dc: Option<&str>) -> Result<RaftStatus, DispatchError> {
        if let Some(dc) = self.remote(dc) {
            let req = AgentRequest::RaftStatus {
                dc: Some(dc.to_string()),
            };
            return match self.cross_dc(dc, req, FORWARD_TIMEOUT).await? {
                AgentResponse::RaftStatus(r) => r,
                other => Err(unexpected(other)),
            };
        }
        match &self.raft {
            Some(raft) => Ok(RaftStatus {
                leader: raft.leader().map(|(_, node)| node),
                voters: raft.voters(),
            }),
            None => match self
                .via_server(&AgentRequest::RaftStatus { dc: None }, FORWARD_TIMEOUT)
                .await?
            {
                AgentResponse::RaftStatus(r) => r,
                other => Err(unexpected(other)),
            },
        }
    }

    /// Applies `cmd` through the leader of `dc` (default: this one): locally if this server
    /// leads, else forwarded once to the leader (`forwarded` marks a request that already
    /// took that hop), or to the other DC.
    pub async fn write(
        &self,
        dc: Option<&str>,
        cmd: Command,
        forwarded: bool,
    ) -> Result<CommandResult, DispatchError> {
        if let Some(dc) = self.remote(dc) {
            let req = AgentRequest::Write {
                dc: Some(dc.to_string()),
                cmd,
                forwarded: false,
            };
            return match self.cross_dc(dc, req, FORWARD_TIMEOUT).await? {
                AgentResponse::Written(r) => r,
                other => Err(unexpected(other)),
            };
        }
        let Some(raft) = &self.raft else {
            let req = AgentRequest::Write {
                dc: None,
                cmd,
                forwarded,
            };
            return match self.via_server(&req, FORWARD_TIMEOUT).await? {
                AgentResponse::Written(r) => r,
                other => Err(unexpected(other)),
            };
        };
        self.held(raft, forwarded, false, || {
            self.write_here(raft, cmd.clone(), forwarded)
        })
        .await
    }

    /// Runs `attempt` (a request of this DC) until it is answered, holding it while the DC
    /// has no reachable leader for at most [`LEADER_HOLD`]: an election after a leader died
    /// delays requests instead of failing them. A request forwarded here by another server
    /// is not held (its sender holds it). Only failures that leave the request unapplied
    /// (any, for reads) are retried.
    async fn held<T, F, Fut>(
        &self,
        raft: &RaftNode,
        forwarded: bool,
        read: bool,
        mut attempt: F,
    ) -> Result<T, DispatchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DispatchError>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_HOLD;
        loop {
            let leader = raft.leader().map(|(id, _)| id);
            match attempt().await {
                Err(e)
                    if !forwarded
                        && leaderless(&e, read)
                        && tokio::time::Instant::now() < deadline =>
                {
                    let left = deadline - tokio::time::Instant::now();
                    raft.leader_change(leader, left.min(HOLD_RETRY)).await;
                }
                answer => return answer,
            }
        }
    }

    /// One attempt at a write of this DC: applied here if this server leads, else sent to
    /// the leader.
    async fn write_here(
        &self,
        raft: &RaftNode,
        cmd: Command,
        forwarded: bool,
    ) -> Result<CommandResult, DispatchError> {
        if raft.is_leader() {
            // The lock-delay is the leader's to check, before proposing (as Consul): it
            // is soft state, which the log's deterministic apply cannot consult.
            if let Command::KvAcquire { key, .. } = &cmd
                && raft.read().state.lock_delayed(key)
            {
                return Ok(CommandResult::Bool(false));
            }
            return Ok(raft.write(cmd).await?);
        }
        if forwarded {
            return Err(DispatchError::NoLeader);
        }
        let req = AgentRequest::Write {
            dc: None,
            cmd,
            forwarded: true,
        };
        match self.to_leader(raft, &req, FORWARD_TIMEOUT).await? {
            AgentResponse::Written(r) => r,
            other => Err(unexpected(other)),
        }
    }

    /// Sends `req` (marked forwarded) to this DC's leader as this server knows it.
    async fn to_leader(
        &self,
        raft: &RaftNode,
        req: &AgentRequest,
        timeout: Duration,
    ) -> Result<AgentResponse, DispatchError> {
        let (_, leader) = raft.leader().ok_or(DispatchError::NoLeader)?;
        let addr = leader.addr.parse().map_err(|_| {
            DispatchError::Raft(format!("leader address {:?} is invalid", leader.addr))
        })?;
        Ok(self
            .client
            .call_reaching(addr, None, req, timeout, IN_DC_REACH)
            .await?)
    }

    /// Answers `query` as `opts` asks, in `dc` (default: this one): here if the mode allows
    /// this server to (stale, or this server leads), else at the leader (one forwarding
    /// hop), or in the other DC, where the mode applies. Blocking reads wait on the watch
    /// channels of the query's tables, not on a timer per change.
    pub async fn read(
        &self,
        dc: Option<&str>,
        query: Query,
        mut opts: ReadOptions,
        forwarded: bool,
    ) -> Result<ReadOutcome, DispatchError> {
        opts.wait = opts.wait.min(MAX_BLOCKING_WAIT);
        if let Some(dc) = self.remote(dc) {
            let req = AgentRequest::Read {
                dc: Some(dc.to_string()),
                query,
                opts,
                forwarded: false,
            };
            return match self.cross_dc(dc, req, opts.wait + FORWARD_TIMEOUT).await? {
                AgentResponse::Read(r) => r,
                other => Err(unexpected(other)),
            };
        }
        let Some(raft) = &self.raft else {
            let req = AgentRequest::Read {
                dc: None,
                query,
                opts,
                forwarded,
            };
            return match self.via_server(&req, opts.wait + FORWARD_TIMEOUT).await? {
                AgentResponse::Read(r) => r,
                other => Err(unexpected(other)),
            };
        };
        self.held(raft, forwarded, true, || {
            self.read_here(raft, query.clone(), opts, forwarded)
        })
        .await
    }

    /// One attempt at a read of this DC: answered here if `opts` allows this server to,
    /// else at the leader.
    async fn read_here(
        &self,
        raft: &RaftNode,
        query: Query,
        opts: ReadOptions,
        forwarded: bool,
    ) -> Result<ReadOutcome, DispatchError> {
        let local = match raft.read_barrier(opts.mode).await {
            Ok(meta) => match opts.max_stale {
                Some(max)
                    if opts.mode == ReadMode::Stale
                        && !forwarded
                        && meta.last_contact_ms > max.as_millis() as u64 =>
                {
                    None
                }
                _ => Some(meta),
            },
            Err(RaftNodeError::NotLeader { .. }) if !forwarded => None,
            Err(e) => return Err(e.into()),
        };
        let Some(meta) = local else {
            let req = AgentRequest::Read {
                dc: None,
                query,
                opts,
                forwarded: true,
            };
            return match self
                .to_leader(raft, &req, opts.wait + FORWARD_TIMEOUT)
                .await?
            {
                AgentResponse::Read(r) => r,
                other => Err(unexpected(other)),
            };
        };
        let deadline = tokio::time::Instant::now() + opts.wait;
        loop {
            // Subscribe before reading, so that a change between the two is not missed. The
            // query runs only when it answers: a waiting request holds no result.
            let mut watches: Vec<_> = {
                let r = raft.read();
                let watches = query.tables().iter().map(|t| r.state.watch(*t)).collect();
                let index = r.state.max_index(query.tables());
                if opts.min_index == 0
                    || index > opts.min_index
                    || tokio::time::Instant::now() >= deadline
                {
                    return Ok(ReadOutcome {
                        result: query.run(&r.state),
                        index,
                        meta,
                        mode: opts.mode,
                    });
                }
                watches
            };
            let changed =
                futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            let _waiting = InFlight::new(&self.metrics.queries_blocking);
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                continue; // deadline: answer with what is there now
            }
        }
    }

    /// Renews session `id` of `dc` (default: this one) at that DC's leader, which keeps
    /// the TTL timers: nothing is written to the log. `None` if there is no such session.
    pub async fn renew_session(
        &self,
        dc: Option<&str>,
        id: String,
        forwarded: bool,
    ) -> Result<Option<Session>, DispatchError> {
        let req = |dc: Option<&str>, id: String, forwarded| AgentRequest::SessionRenew {
            dc: dc.map(str::to_string),
            id,
            forwarded,
        };
        let reply = if let Some(remote) = self.remote(dc) {
            self.cross_dc(remote, req(Some(remote), id, false), FORWARD_TIMEOUT)
                .await?
        } else if let Some(raft) = &self.raft {
            return self
                .held(raft, forwarded, true, || {
                    self.renew_here(raft, id.clone(), forwarded)
                })
                .await;
        } else {
            self.via_server(&req(None, id, forwarded), FORWARD_TIMEOUT)
                .await?
        };
        match reply {
            AgentResponse::Renewed(r) => r,
            other => Err(unexpected(other)),
        }
    }

    /// One attempt at a renewal in this DC: done here if this server leads, else sent to
    /// the leader.
    async fn renew_here(
        &self,
        raft: &RaftNode,
        id: String,
        forwarded: bool,
    ) -> Result<Option<Session>, DispatchError> {
        if raft.is_leader() {
            let session = raft.read().state.session(&id).cloned();
            if let (Some(s), Some(timers)) = (&session, &self.session_timers)
                && let Some(ttl) = s.ttl
            {
                timers.renew(&s.id, ttl);
            }
            return Ok(session);
        }
        if forwarded {
            return Err(DispatchError::NoLeader);
        }
        let req = AgentRequest::SessionRenew {
            dc: None,
            id,
            forwarded: true,
        };
        match self.to_leader(raft, &req, FORWARD_TIMEOUT).await? {
            AgentResponse::Renewed(r) => r,
            other => Err(unexpected(other)),
        }
    }

    /// Adds server `id` to this DC's Raft (answered by the leader; others say there is none
    /// here, and the joiner tries another member).
    pub async fn join(&self, id: u64, node: ServerNode) -> Result<(), DispatchError> {
        Ok(self.server()?.add_server(id, node).await?)
    }
}

/// Whether `e` says the DC's leader is unknown or could not be reached, so that the same
/// request may be tried again once leadership settles (writes only when surely unapplied).
fn leaderless(e: &DispatchError, read: bool) -> bool {
    match e {
        DispatchError::NoLeader => true,
        DispatchError::Forward { retry_safe, .. } => read || *retry_safe,
        _ => false,
    }
}

fn unexpected(reply: AgentResponse) -> DispatchError {
    DispatchError::Raft(format!("unexpected reply {reply:?}"))
}
