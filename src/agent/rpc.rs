//! The agent RPC protocol (ALPN `rpc`): the typed requests one agent sends another (client
//! to server, server to leader, server to a server of another DC), and the handler that
//! answers them by calling the [`Dispatcher`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::dispatch::{DispatchError, Dispatcher, RaftStatus, ReadOptions, ReadOutcome};
use crate::raft::ServerNode;
use crate::state::query::Query;
use crate::state::{Command, CommandResult};
use crate::transport::identity::{Identity, Role};
use crate::transport::rpc::Handler;

/// A request over the `rpc` ALPN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Liveness and identity probe; echoes the payload (also the transport benchmark).
    Ping {
        /// Returned unchanged.
        payload: Bytes,
    },
    /// Who are you, as a Raft server? (Used while bootstrapping.)
    ServerInfo,
    /// Apply a command through the DC's leader.
    Write {
        /// The DC it is for (`None`: the receiver's).
        dc: Option<String>,
        /// The command.
        cmd: Command,
        /// Set once a server has forwarded it to the leader: never forwarded again.
        forwarded: bool,
    },
    /// Answer a read (forwarded to the leader by a server that may not answer it).
    Read {
        /// The DC it is for (`None`: the receiver's).
        dc: Option<String>,
        /// The query.
        query: Query,
        /// Consistency and blocking.
        opts: ReadOptions,
        /// Set once forwarded: never forwarded again.
        forwarded: bool,
    },
    /// The DC's Raft leader and voters (asked by client agents and other DCs).
    RaftStatus {
        /// The DC it is for (`None`: the receiver's).
        dc: Option<String>,
    },
    /// The datacenters the server knows, nearest first (asked by client agents).
    Datacenters,
    /// Renew a session at the DC's leader (which keeps the TTL timers).
    SessionRenew {
        /// The DC it is for (`None`: the receiver's).
        dc: Option<String>,
        /// The session.
        id: String,
        /// Set once a server has forwarded it to the leader: never forwarded again.
        forwarded: bool,
    },
    /// Add the sending server to the cluster (sent to a member; the leader does it).
    JoinRaft {
        /// Its Raft id.
        id: u64,
        /// Its name and address.
        node: ServerNode,
    },
}

impl AgentRequest {
    /// The request's type, as a metric label.
    fn kind(&self) -> &'static str {
        match self {
            AgentRequest::Ping { .. } => "ping",
            AgentRequest::ServerInfo => "server_info",
            AgentRequest::Write { .. } => "write",
            AgentRequest::Read { .. } => "read",
            AgentRequest::RaftStatus { .. } => "raft_status",
            AgentRequest::Datacenters => "datacenters",
            AgentRequest::JoinRaft { .. } => "join",
            AgentRequest::SessionRenew { .. } => "session_renew",
        }
    }

    /// The datacenter a request names, if any.
    fn datacenter(&self) -> Option<&str> {
        match self {
            AgentRequest::Write { dc, .. }
            | AgentRequest::Read { dc, .. }
            | AgentRequest::RaftStatus { dc }
            | AgentRequest::SessionRenew { dc, .. } => dc.as_deref(),
            _ => None,
        }
    }

    /// Whether only the DC's leader answers it without another hop (writes, and reads in
    /// default or consistent mode): a router sends it to the leader when it knows one.
    pub fn wants_leader(&self) -> bool {
        match self {
            AgentRequest::Write { .. } | AgentRequest::SessionRenew { .. } => true,
            AgentRequest::Read { opts, .. } => opts.mode != crate::raft::ReadMode::Stale,
            _ => false,
        }
    }

    /// Whether answering it changes nothing, so that it may be sent to another server
    /// whatever happened to it on the first.
    pub fn is_read(&self) -> bool {
        !matches!(
            self,
            AgentRequest::Write { .. } | AgentRequest::JoinRaft { .. }
        )
    }
}

/// The answer to an [`AgentRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentResponse {
    /// Answer to [`AgentRequest::Ping`].
    Pong {
        /// The answering node.
        node: String,
        /// Its datacenter.
        datacenter: String,
        /// The request's payload.
        payload: Bytes,
    },
    /// Answer to [`AgentRequest::ServerInfo`]; `None` from a client agent.
    ServerInfo(Option<ServerInfo>),
    /// Answer to [`AgentRequest::Write`].
    Written(Result<CommandResult, DispatchError>),
    /// Answer to [`AgentRequest::Read`].
    Read(Result<ReadOutcome, DispatchError>),
    /// Answer to [`AgentRequest::RaftStatus`].
    RaftStatus(Result<RaftStatus, DispatchError>),
    /// Answer to [`AgentRequest::Datacenters`].
    Datacenters(Result<Vec<String>, DispatchError>),
    /// Answer to [`AgentRequest::JoinRaft`].
    Joined(Result<(), DispatchError>),
    /// Answer to [`AgentRequest::SessionRenew`]: the session, `None` if there is none.
    Renewed(Result<Option<crate::state::Session>, DispatchError>),
}

impl AgentResponse {
    /// Whether it carries an error.
    fn is_error(&self) -> bool {
        match self {
            AgentResponse::Written(r) => r.is_err(),
            AgentResponse::Read(r) => r.is_err(),
            AgentResponse::RaftStatus(r) => r.is_err(),
            AgentResponse::Datacenters(r) => r.is_err(),
            AgentResponse::Joined(r) => r.is_err(),
            AgentResponse::Renewed(r) => r.is_err(),
            AgentResponse::Pong { .. } | AgentResponse::ServerInfo(_) => false,
        }
    }
}

/// A server's Raft identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Its Raft id.
    pub id: u64,
    /// Its name and QUIC address.
    pub node: ServerNode,
    /// Whether it has Raft state.
    pub initialized: bool,
    /// The leader it knows of.
    pub leader: Option<ServerNode>,
    /// Its current Raft term.
    pub term: u64,
    /// The last log index it applied.
    pub applied: u64,
    /// The voting members of its cluster, by name.
    pub voters: Vec<String>,
    /// Its `bootstrap_expect`, if it is configured to bootstrap.
    pub bootstrap_expect: Option<u32>,
}

/// Answers agent RPCs for one agent.
pub struct AgentRpc {
    node: String,
    datacenter: String,
    self_node: Option<ServerNode>,
    bootstrap_expect: Option<u32>,
    dispatcher: Option<Dispatcher>,
}

impl AgentRpc {
    /// A handler that only answers pings (tests and benchmarks of the transport).
    pub fn new(node: &str, datacenter: &str) -> AgentRpc {
        AgentRpc {
            node: node.into(),
            datacenter: datacenter.into(),
            self_node: None,
            bootstrap_expect: None,
            dispatcher: None,
        }
    }

    /// The full handler of an agent; `self_node` is this server's Raft identity and
    /// `bootstrap_expect` its bootstrap setting (both `None` on clients).
    pub fn with_dispatcher(
        mut self,
        dispatcher: Dispatcher,
        self_node: Option<ServerNode>,
        bootstrap_expect: Option<u32>,
    ) -> AgentRpc {
        self.dispatcher = Some(dispatcher);
        self.self_node = self_node;
        self.bootstrap_expect = bootstrap_expect;
        self
    }

    fn dispatcher(&self) -> Result<&Dispatcher, DispatchError> {
        self.dispatcher
            .as_ref()
            .ok_or_else(|| DispatchError::NotServed("this agent serves no requests".into()))
    }

    async fn server_info(&self) -> Option<ServerInfo> {
        let raft = self.dispatcher.as_ref()?.raft()?;
        let (term, applied) = {
            let m = raft.raft().metrics();
            let m = m.borrow();
            (m.current_term, m.last_applied.map_or(0, |l| l.index))
        };
        Some(ServerInfo {
            id: raft.id(),
            node: self.self_node.clone()?,
            initialized: raft.is_initialized().await.unwrap_or(false),
            leader: raft.leader().map(|(_, n)| n),
            term,
            applied,
            voters: raft.voters().into_iter().map(|n| n.name).collect(),
            bootstrap_expect: self.bootstrap_expect,
        })
    }

    async fn join(&self, peer: &Identity, id: u64, node: ServerNode) -> Result<(), DispatchError> {
        if peer.role != Role::Server || peer.datacenter != self.datacenter {
            return Err(DispatchError::NotServed(
                "only servers of this DC may join its Raft".into(),
            ));
        }
        self.dispatcher()?.join(id, node).await
    }
}

impl Handler for AgentRpc {
    type Request = AgentRequest;
    type Response = AgentResponse;

    async fn handle(&self, peer: &Identity, request: AgentRequest) -> AgentResponse {
        let kind = request.kind();
        let response = self.answer(peer, request).await;
        if let Some(d) = &self.dispatcher {
            let outcome = if response.is_error() { "error" } else { "ok" };
            d.metrics()
                .requests
                .with_label_values(&[kind, outcome])
                .inc();
        }
        response
    }
}

impl AgentRpc {
    async fn answer(&self, peer: &Identity, request: AgentRequest) -> AgentResponse {
        // A request from another DC is answered here or not at all: never sent on to a
        // third DC (no forwarding loops, one WAN hop).
        let relay = peer.datacenter != self.datacenter
            && request.datacenter().is_some_and(|dc| dc != self.datacenter);
        let dispatcher = match self.dispatcher() {
            Ok(_) if relay => Err(DispatchError::NoPathToDatacenter),
            other => other,
        };
        match request {
            AgentRequest::Ping { payload } => AgentResponse::Pong {
                node: self.node.clone(),
                datacenter: self.datacenter.clone(),
                payload,
            },
            AgentRequest::ServerInfo => AgentResponse::ServerInfo(self.server_info().await),
            AgentRequest::Write { dc, cmd, forwarded } => {
                AgentResponse::Written(match dispatcher {
                    Ok(d) => d.write(dc.as_deref(), cmd, forwarded).await,
                    Err(e) => Err(e),
                })
            }
            AgentRequest::Read {
                dc,
                query,
                opts,
                forwarded,
            } => AgentResponse::Read(match dispatcher {
                Ok(d) => d.read(dc.as_deref(), query, opts, forwarded).await,
                Err(e) => Err(e),
            }),
            AgentRequest::RaftStatus { dc } => AgentResponse::RaftStatus(match dispatcher {
                Ok(d) if d.raft().is_some() => d.raft_status(dc.as_deref()).await,
                Ok(_) => Err(DispatchError::NotServed(
                    "a client agent holds no Raft state".into(),
                )),
                Err(e) => Err(e),
            }),
            AgentRequest::Datacenters => AgentResponse::Datacenters(match dispatcher {
                Ok(d) => d.datacenters().await,
                Err(e) => Err(e),
            }),
            AgentRequest::JoinRaft { id, node } => {
                AgentResponse::Joined(self.join(peer, id, node).await)
            }
            AgentRequest::SessionRenew { dc, id, forwarded } => {
                AgentResponse::Renewed(match dispatcher {
                    Ok(d) => d.renew_session(dc.as_deref(), id, forwarded).await,
                    Err(e) => Err(e),
                })
            }
        }
    }
}
