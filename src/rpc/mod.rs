//! The agent RPC protocol (ALPN `rpc`): the typed calls one agent makes of another (client
//! to server, server to its DC's leader, server to a server of another DC), their replies,
//! the error carried between agents, the [`Hop`] a call arrived by, and a typed client
//! ([`client::AgentClient`]). The transport carries these; the dispatcher decides where
//! they are answered and answers them.
//!
//! Each call is a struct implementing [`Call`], which names its reply type, so a caller
//! gets `Result<Reply, RpcError>` with the type known at compile time; the wire enums
//! [`AgentRequest`] and [`AgentResponse`] and the conversions between them are generated
//! once, by the `calls!` table below.

pub mod client;

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::acl::{AclError, Secret};
use crate::config::GossipKey;
use crate::gossip::keyring::{KeyVerb, KeyringError, KeyringReport};
use crate::raft::{ReadMeta, ServerNode};
use crate::state::query::{Query, QueryResult};
use crate::state::{Command, CommandResult, Session};
use crate::transport::TransportError;
use crate::transport::identity::Identity;
use crate::vocab::{MAX_WAIT_WITH_JITTER, ReadMode, Role};

/// How long a forwarded request may take in all (beyond a blocking read's wait).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not be answered, as carried between agents and mapped to HTTP by the
/// http module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcError {
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
    /// A write was delivered to a server that was lost before it answered: it may or may
    /// not have been applied, and sending it again could apply it twice.
    #[error(
        "forwarding failed after the request was delivered ({reason}): it may have been applied"
    )]
    Indeterminate {
        /// What went wrong.
        reason: String,
    },
    /// The request's token is unknown, or does not grant what the request needs.
    #[error(transparent)]
    Acl(#[from] AclError),
    /// Raft failed locally.
    #[error("raft: {0}")]
    Raft(String),
    /// The peer answered with something that is not a reply to the call (a version or
    /// programming mismatch).
    #[error("protocol mismatch: {0}")]
    Protocol(String),
    /// What the request names does not exist (e.g. `Query not found`): a 404.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done as it stands (e.g. removing the primary gossip key): a
    /// 400 saying why.
    #[error("{0}")]
    Refused(String),
}

impl From<KeyringError> for RpcError {
    fn from(e: KeyringError) -> RpcError {
        match e {
            KeyringError::File { .. } => RpcError::NotServed(e.to_string()),
            KeyringError::NotEnabled | KeyringError::NotInstalled | KeyringError::RemovePrimary => {
                RpcError::Refused(e.to_string())
            }
        }
    }
}

impl RpcError {
    /// Whether the request certainly was not applied.
    pub fn is_retry_safe(&self) -> bool {
        match self {
            RpcError::NoLeader
            | RpcError::NotServed(_)
            | RpcError::NoPathToDatacenter
            | RpcError::NoReachableServer
            | RpcError::NotFound(_)
            | RpcError::Refused(_)
            | RpcError::Acl(_) => true,
            RpcError::Forward { retry_safe, .. } => *retry_safe,
            RpcError::Indeterminate { .. } | RpcError::Raft(_) | RpcError::Protocol(_) => false,
        }
    }

    /// Whether the servers (or another DC) could not be reached or could not serve, which
    /// `stale-if-error` covers; a refused request (ACL, not found, no such DC) is not.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RpcError::NoReachableServer
                | RpcError::NoLeader
                | RpcError::NotServed(_)
                | RpcError::Forward { .. }
                | RpcError::Indeterminate { .. }
                | RpcError::Raft(_)
        )
    }
}

impl From<crate::raft::RaftNodeError> for RpcError {
    fn from(e: crate::raft::RaftNodeError) -> Self {
        use crate::raft::RaftNodeError;
        match e {
            RaftNodeError::NotLeader { .. } | RaftNodeError::NoLeader => RpcError::NoLeader,
            RaftNodeError::Refused(why) => RpcError::NotServed(why),
            other => RpcError::Raft(other.to_string()),
        }
    }
}

impl From<crate::transport::TransportError> for RpcError {
    fn from(e: crate::transport::TransportError) -> Self {
        RpcError::Forward {
            retry_safe: e.is_retry_safe(),
            reason: e.to_string(),
        }
    }
}

/// How a call reached the agent answering it. Set only where a call enters an agent: by
/// the RPC handler from the authenticated peer ([`Hop::of`]), and as [`Hop::Origin`] by
/// the agent's own entry points (HTTP, DNS, its loops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Starts here, or was handed over by a client agent of this DC: may be sent to the
    /// DC's leader or another DC, and is held through an election.
    Origin,
    /// Sent by a server of this DC, which only ever sends a call on to its leader: the
    /// DC's one hop is taken, so it is answered here or refused, never sent on or held.
    Forwarded,
    /// Arrived from another DC: answered in this DC (at its leader if need be), never sent
    /// on to a third DC (one WAN hop).
    FromDc,
}

impl Hop {
    /// The hop of a call from `peer` to an agent of `local_dc`.
    pub fn of(peer: &Identity, local_dc: &str) -> Hop {
        if peer.datacenter != local_dc {
            Hop::FromDc
        } else if peer.role == Role::Server {
            Hop::Forwarded
        } else {
            Hop::Origin
        }
    }
}

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
    /// `Cache-Control: stale-if-error`: for another DC that cannot be reached, the server
    /// that forwards may answer with its last answer to the same query up to this old.
    #[serde(default)]
    pub stale_if_error: Option<Duration>,
}

impl ReadOptions {
    /// A read in `mode` answered at once.
    pub fn now(mode: ReadMode) -> ReadOptions {
        ReadOptions {
            mode,
            max_stale: None,
            min_index: 0,
            wait: Duration::ZERO,
            stale_if_error: None,
        }
    }
}

/// An answer a server gave from memory because the DC it was for could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleAnswer {
    /// The DC that could not be reached.
    pub datacenter: String,
    /// How old the answer is.
    pub age: Duration,
}

/// A read's answer and what Consul's headers say about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadOutcome {
    /// The data.
    pub result: QueryResult,
    /// `X-Consul-Index`: the highest index of the tables read, never below 1.
    pub index: u64,
    /// `X-Consul-KnownLeader` and `X-Consul-LastContact`.
    pub meta: ReadMeta,
    /// `X-Consul-Effective-Consistency`.
    pub mode: ReadMode,
    /// Whether ACLs removed part of the answer (`X-Consul-Results-Filtered-By-ACLs`).
    #[serde(default)]
    pub filtered: bool,
    /// Set when this is a server's last-known answer for a DC it could not reach.
    #[serde(default)]
    pub stale_from: Option<StaleAnswer>,
}

/// The DC's Raft leader and voters, as `status/leader` and `status/peers` report them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// The leader, if one is known.
    pub leader: Option<ServerNode>,
    /// The voting servers.
    pub voters: Vec<ServerNode>,
    /// Every server of the Raft configuration (`/v1/operator/raft/configuration`).
    #[serde(default)]
    pub servers: Vec<RaftServer>,
}

/// One server of the Raft configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftServer {
    /// Its Raft id.
    pub id: u64,
    /// Its name and address.
    pub node: ServerNode,
    /// Whether it votes (else it is a learner catching up).
    pub voter: bool,
}

/// Every server's health as the DC's leader sees it (`/v1/operator/autopilot/health`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutopilotHealth {
    /// The DC (`None`: the receiver's).
    pub dc: Option<String>,
}

/// Removes a server from its DC's Raft configuration (`DELETE /v1/operator/raft/peer`),
/// at the leader; needs `operator:write`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRaftPeer {
    /// The DC (`None`: the receiver's).
    pub dc: Option<String>,
    /// The server's QUIC address (`ip:port`) or name.
    pub peer: String,
    /// The request's ACL token.
    pub token: Option<Secret>,
}

/// Saves a snapshot archive of the DC's whole state (`GET /v1/snapshot`): by the leader,
/// or by any server in stale mode; needs a management token (`acl:write`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveSnapshot {
    /// The DC (`None`: the receiver's).
    pub dc: Option<String>,
    /// The consistency mode (default: the leader's state).
    pub mode: ReadMode,
    /// The request's ACL token.
    pub token: Option<Secret>,
}

/// A saved snapshot archive and the state index it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotArchive {
    /// The state's index when saved (`X-Consul-Index`).
    pub index: u64,
    /// The archive ([`crate::state::archive`]).
    pub archive: bytes::Bytes,
}

/// Hands the DC's leadership to another server (`POST /v1/operator/raft/transfer-leader`),
/// at the leader; needs `operator:write`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferLeader {
    /// The DC (`None`: the receiver's).
    pub dc: Option<String>,
    /// The server to hand it to (node ID, name or address; `None`: the leader picks).
    pub to: Option<String>,
    /// The request's ACL token.
    pub token: Option<Secret>,
}

/// A gossip keyring operation on a DC's LAN pool (`/v1/operator/keyring`), done by one of
/// its servers: `op: None` lists the keys every live member holds (`keyring:read`);
/// otherwise the key is installed, used or removed on every member (`keyring:write`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyringOperation {
    /// The DC (`None`: the receiver's).
    pub dc: Option<String>,
    /// What to do.
    pub op: Option<(KeyVerb, GossipKey)>,
    /// The request's ACL token.
    pub token: Option<Secret>,
}

/// A user event to spread through a DC's LAN pool (`/v1/event/fire`), by any of its
/// servers (`event:write` on its name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FireEvent {
    /// The DC (`None`: the receiver's).
    pub dc: Option<String>,
    /// The event, with its ID.
    pub event: crate::gossip::events::UserEvent,
    /// The request's ACL token.
    pub token: Option<Secret>,
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

/// Liveness and identity probe; echoes the payload (also the transport benchmark).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    /// Returned unchanged.
    pub payload: Bytes,
}

/// The answer to a [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The answering node.
    pub node: String,
    /// Its datacenter.
    pub datacenter: String,
    /// The request's payload.
    pub payload: Bytes,
}

/// Who are you, as a Raft server? (Used while bootstrapping; `None` from a client agent.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetServerInfo;

/// Apply a command through the DC's leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Write {
    /// The DC it is for (`None`: the receiver's).
    pub dc: Option<String>,
    /// The command.
    pub cmd: Command,
    /// The ACL token it is made with (`None`: the anonymous token), checked where the
    /// command is applied.
    #[serde(default)]
    pub token: Option<Secret>,
}

/// Answer a read (at the DC's leader when its mode needs one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Read {
    /// The DC it is for (`None`: the receiver's).
    pub dc: Option<String>,
    /// The query.
    pub query: Query,
    /// Consistency and blocking.
    pub opts: ReadOptions,
    /// The ACL token it is made with (`None`: the anonymous token), checked where the
    /// data is read.
    #[serde(default)]
    pub token: Option<Secret>,
}

/// The DC's Raft leader and voters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRaftStatus {
    /// The DC it is for (`None`: the receiver's).
    pub dc: Option<String>,
}

/// The datacenters the server knows, nearest first (asked by client agents).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListDatacenters;

/// The WAN coordinates of every server the answering server knows, by datacenter
/// (`/v1/coordinate/datacenters`; asked by client agents).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WanCoordinates;

/// One datacenter's servers' WAN coordinates (Consul's `DatacenterMap`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatacenterCoordinates {
    /// The datacenter.
    pub datacenter: String,
    /// Its servers (`node.dc`) and their coordinates.
    pub coordinates: Vec<crate::state::coordinates::NodeCoordinate>,
}

/// Runs a prepared query (`/v1/query/:id/execute`, its DNS name, or a server failing over
/// to another DC: Consul's `Execute` and `ExecuteRemote`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteQuery {
    /// The DC asked (`None`: the receiver's).
    pub dc: Option<String>,
    /// Which query.
    pub query: QueryRef,
    /// `?near=` (`_agent`, `_ip` or a node; overrides the query's `Near`).
    pub near: Option<String>,
    /// Where the request came from, for `_agent` and `_ip`.
    pub source: QuerySource,
    /// At most this many instances (`?limit=`).
    pub limit: Option<usize>,
    /// The consistency mode.
    pub mode: ReadMode,
    /// Only render the query (`/explain`), do not run it.
    pub explain: bool,
    /// The request's ACL token.
    pub token: Option<Secret>,
}

/// A prepared query named by a request, or sent whole by a server failing over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueryRef {
    /// Its ID or name (a template renders for the name).
    Named(String),
    /// The definition as rendered where the execution started (run as is, no failover).
    Definition(Box<crate::state::prepared_query::PreparedQuery>),
}

/// Where an execution was asked: the agent's node and DC, and the client's address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QuerySource {
    /// The agent the request reached.
    pub node: String,
    /// Its datacenter.
    pub datacenter: String,
    /// The client's address (`X-Forwarded-For` or the connection's).
    pub ip: Option<String>,
}

/// The answer to [`ExecuteQuery`] (Consul's `PreparedQueryExecuteResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryExecution {
    /// The service queried.
    pub service: String,
    /// The instances selected, with their nodes and checks.
    pub nodes: Vec<crate::state::query::ServiceHealth>,
    /// The query's DNS TTL (Go duration; empty: the default).
    pub dns_ttl: String,
    /// The DC that answered.
    pub datacenter: String,
    /// How many other DCs were asked.
    pub failovers: u32,
    /// The answering DC's catalog index.
    pub index: u64,
    /// Leadership as the answering server saw it.
    pub meta: crate::raft::ReadMeta,
    /// With `explain`: the query as rendered.
    pub query: Option<Box<crate::state::prepared_query::PreparedQuery>>,
}

/// Renew a session at the DC's leader (which keeps the TTL timers); the reply is the
/// session, `None` if there is no such session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewSession {
    /// The DC it is for (`None`: the receiver's).
    pub dc: Option<String>,
    /// The session.
    pub id: String,
    /// The ACL token it is made with.
    #[serde(default)]
    pub token: Option<Secret>,
}

/// Add the sending server to the DC's Raft (sent to a member; the leader does it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRaft {
    /// Its Raft id.
    pub id: u64,
    /// Its name and address.
    pub node: ServerNode,
}

/// One call of the protocol: a request struct whose reply type is known at compile time.
/// Implemented for every call by the `calls!` table.
pub trait Call: Into<AgentRequest> {
    /// What a successful answer carries.
    type Reply;
    /// Takes the reply out of `response`; any other variant is a protocol mismatch.
    fn reply(response: AgentResponse) -> Result<Self::Reply, RpcError>;
}

/// Generates the wire enums (one variant per call, named after it), the conversions and
/// [`Call`] impls, and the label of each call: the one place a reply is matched to its call.
macro_rules! calls {
    ($($call:ident => $reply:ty, $kind:literal;)*) => {
        /// A request over the `rpc` ALPN: one variant per [`Call`].
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub enum AgentRequest {
            $(
                #[doc = concat!("A [`", stringify!($call), "`] call.")]
                $call($call),
            )*
        }

        /// The answer to an [`AgentRequest`], variant for variant: the call's reply, or
        /// why there is none.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum AgentResponse {
            $(
                #[doc = concat!("Answer to a [`", stringify!($call), "`].")]
                $call(Result<$reply, RpcError>),
            )*
        }

        $(
            impl From<$call> for AgentRequest {
                fn from(call: $call) -> AgentRequest {
                    AgentRequest::$call(call)
                }
            }

            impl Call for $call {
                type Reply = $reply;
                fn reply(response: AgentResponse) -> Result<$reply, RpcError> {
                    match response {
                        AgentResponse::$call(r) => r,
                        other => Err(RpcError::Protocol(format!(
                            "a {} reply to a {} call", other.kind(), $kind
                        ))),
                    }
                }
            }
        )*

        impl AgentRequest {
            /// The call's name, as a metric label.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(AgentRequest::$call(_) => $kind,)*
                }
            }

            /// The answer saying this request failed with `error`.
            pub fn fail(&self, error: RpcError) -> AgentResponse {
                match self {
                    $(AgentRequest::$call(_) => AgentResponse::$call(Err(error)),)*
                }
            }
        }

        impl AgentResponse {
            /// The call it answers, as a metric label.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(AgentResponse::$call(_) => $kind,)*
                }
            }

            /// The error it carries, if any.
            pub fn error(&self) -> Option<&RpcError> {
                match self {
                    $(AgentResponse::$call(r) => r.as_ref().err(),)*
                }
            }
        }
    };
}

/// What the holder of `token` may do, answered by any server of the DC from its state
/// (asked by agents for their own endpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveToken {
    /// The token (`None`: the anonymous token).
    pub token: Option<Secret>,
    /// The DC that resolves it (`None`: the receiver's): the primary, for servers of a DC
    /// that does not replicate tokens.
    pub dc: Option<String>,
}

impl ResolveToken {
    /// A resolver's answer as a token cache takes it: the authorizer or the ACL refusal;
    /// `None` when the resolver could not be reached (its down policy then decides).
    pub fn resolution(
        answer: Result<crate::acl::Authorizer, RpcError>,
    ) -> Option<Result<crate::acl::Authorizer, AclError>> {
        match answer {
            Ok(authz) => Some(Ok(authz)),
            Err(RpcError::Acl(e)) => Some(Err(e)),
            Err(e) => {
                tracing::debug!(error = %e, "no token resolver reached");
                None
            }
        }
    }
}

/// How ACL replication stands on the server that answers (of `dc`, default this one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AclReplicationStatus {
    /// The DC it is for (`None`: the receiver's).
    pub dc: Option<String>,
}

calls! {
    Ping => Pong, "ping";
    AclReplicationStatus => crate::acl::ReplicationStatus, "acl_replication";
    ResolveToken => crate::acl::Authorizer, "acl_resolve";
    GetServerInfo => Option<ServerInfo>, "server_info";
    Write => CommandResult, "write";
    Read => ReadOutcome, "read";
    GetRaftStatus => RaftStatus, "raft_status";
    ListDatacenters => Vec<String>, "datacenters";
    WanCoordinates => Vec<DatacenterCoordinates>, "wan_coordinates";
    ExecuteQuery => QueryExecution, "query_execute";
    RemoveRaftPeer => (), "raft_remove_peer";
    SaveSnapshot => SnapshotArchive, "snapshot_save";
    TransferLeader => crate::raft::ServerNode, "raft_transfer_leader";
    AutopilotHealth => Vec<crate::raft::ServerHealth>, "autopilot_health";
    KeyringOperation => KeyringReport, "keyring";
    FireEvent => crate::gossip::events::UserEvent, "event_fire";
    RenewSession => Option<Session>, "session_renew";
    JoinRaft => (), "join";
}

impl AgentRequest {
    /// The datacenter the request names (`None`: the receiver's).
    pub fn datacenter(&self) -> Option<&str> {
        match self {
            AgentRequest::Write(Write { dc, .. })
            | AgentRequest::Read(Read { dc, .. })
            | AgentRequest::GetRaftStatus(GetRaftStatus { dc })
            | AgentRequest::RenewSession(RenewSession { dc, .. })
            | AgentRequest::AclReplicationStatus(AclReplicationStatus { dc })
            | AgentRequest::ResolveToken(ResolveToken { dc, .. })
            | AgentRequest::ExecuteQuery(ExecuteQuery { dc, .. })
            | AgentRequest::RemoveRaftPeer(RemoveRaftPeer { dc, .. })
            | AgentRequest::SaveSnapshot(SaveSnapshot { dc, .. })
            | AgentRequest::TransferLeader(TransferLeader { dc, .. })
            | AgentRequest::AutopilotHealth(AutopilotHealth { dc })
            | AgentRequest::KeyringOperation(KeyringOperation { dc, .. })
            | AgentRequest::FireEvent(FireEvent { dc, .. }) => dc.as_deref(),
            _ => None,
        }
    }

    /// The ACL token the request carries (`None`: a request that carries none, such as
    /// a probe; `Some(None)`: the anonymous token).
    pub fn token(&self) -> Option<Option<&Secret>> {
        match self {
            AgentRequest::Write(Write { token, .. })
            | AgentRequest::Read(Read { token, .. })
            | AgentRequest::RenewSession(RenewSession { token, .. })
            | AgentRequest::ResolveToken(ResolveToken { token, .. })
            | AgentRequest::ExecuteQuery(ExecuteQuery { token, .. })
            | AgentRequest::RemoveRaftPeer(RemoveRaftPeer { token, .. })
            | AgentRequest::SaveSnapshot(SaveSnapshot { token, .. })
            | AgentRequest::TransferLeader(TransferLeader { token, .. })
            | AgentRequest::KeyringOperation(KeyringOperation { token, .. })
            | AgentRequest::FireEvent(FireEvent { token, .. }) => Some(token.as_ref()),
            _ => None,
        }
    }

    /// The ACL token the request carries, to fill in.
    pub fn token_mut(&mut self) -> Option<&mut Option<Secret>> {
        match self {
            AgentRequest::Write(Write { token, .. })
            | AgentRequest::Read(Read { token, .. })
            | AgentRequest::RenewSession(RenewSession { token, .. })
            | AgentRequest::ResolveToken(ResolveToken { token, .. })
            | AgentRequest::ExecuteQuery(ExecuteQuery { token, .. })
            | AgentRequest::RemoveRaftPeer(RemoveRaftPeer { token, .. })
            | AgentRequest::SaveSnapshot(SaveSnapshot { token, .. })
            | AgentRequest::TransferLeader(TransferLeader { token, .. })
            | AgentRequest::KeyringOperation(KeyringOperation { token, .. })
            | AgentRequest::FireEvent(FireEvent { token, .. }) => Some(token),
            _ => None,
        }
    }

    /// Whether only the DC's leader answers it (writes, renewals, joins, and reads in
    /// default or consistent mode).
    pub fn needs_leader(&self) -> bool {
        match self {
            AgentRequest::Write(_)
            | AgentRequest::RenewSession(_)
            | AgentRequest::JoinRaft(_)
            | AgentRequest::RemoveRaftPeer(_)
            | AgentRequest::TransferLeader(_)
            | AgentRequest::AutopilotHealth(_) => true,
            AgentRequest::Read(r) => r.opts.mode.needs_leader(),
            AgentRequest::ExecuteQuery(x) => x.mode.needs_leader(),
            AgentRequest::SaveSnapshot(s) => s.mode.needs_leader(),
            _ => false,
        }
    }

    /// Whether answering it changes nothing, so that it may be sent to another server
    /// whatever happened to it on the first.
    pub fn is_read(&self) -> bool {
        !matches!(
            self,
            AgentRequest::Write(_)
                | AgentRequest::JoinRaft(_)
                | AgentRequest::RemoveRaftPeer(_)
                | AgentRequest::TransferLeader(_)
                | AgentRequest::KeyringOperation(KeyringOperation { op: Some(_), .. })
        )
    }

    /// Whether, after its exchange with another agent failed with `e`, this request may be
    /// sent again (to another server): a read always, a write only if it surely did not
    /// reach a handler.
    pub fn may_resend(&self, e: &TransportError) -> bool {
        self.is_read() || e.is_retry_safe()
    }

    /// The error a failed exchange of this request with another agent is reported as: a
    /// write whose outcome is unknown says that it may have been applied.
    pub fn forward_failed(&self, e: TransportError) -> RpcError {
        if !self.is_read() && e.outcome_unknown() {
            RpcError::Indeterminate {
                reason: e.to_string(),
            }
        } else {
            e.into()
        }
    }

    /// How long one exchange with the server that answers it may take: a blocking read's
    /// wait, or a keyring operation's wait for every member, on top of [`FORWARD_TIMEOUT`].
    pub fn timeout(&self) -> Duration {
        match self {
            AgentRequest::Read(r) => r.opts.wait + FORWARD_TIMEOUT,
            AgentRequest::KeyringOperation(_) => crate::gossip::KEYRING_CONFIRM + FORWARD_TIMEOUT,
            _ => FORWARD_TIMEOUT,
        }
    }

    /// Bounds what the sender asked for by what any agent grants (a blocking read's wait).
    pub fn bounded(mut self) -> AgentRequest {
        if let AgentRequest::Read(r) = &mut self {
            r.opts.wait = r.opts.wait.min(MAX_WAIT_WITH_JITTER);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(role: Role, dc: &str) -> Identity {
        Identity {
            role,
            datacenter: dc.into(),
        }
    }

    #[test]
    fn the_hop_comes_from_the_peer() {
        assert_eq!(Hop::of(&peer(Role::Client, "dc1"), "dc1"), Hop::Origin);
        assert_eq!(Hop::of(&peer(Role::Server, "dc1"), "dc1"), Hop::Forwarded);
        assert_eq!(Hop::of(&peer(Role::Server, "dc2"), "dc1"), Hop::FromDc);
        assert_eq!(Hop::of(&peer(Role::Client, "dc2"), "dc1"), Hop::FromDc);
    }

    #[test]
    fn a_reply_is_taken_only_from_its_own_variant() {
        let ok = AgentResponse::ListDatacenters(Ok(vec!["dc1".into()]));
        assert_eq!(ListDatacenters::reply(ok), Ok(vec!["dc1".to_string()]));
        let err = AgentResponse::Write(Err(RpcError::NoLeader));
        assert_eq!(Write::reply(err), Err(RpcError::NoLeader));
        let wrong = AgentResponse::JoinRaft(Ok(()));
        assert!(matches!(
            ListDatacenters::reply(wrong),
            Err(RpcError::Protocol(m)) if m.contains("join") && m.contains("datacenters")
        ));
        let req = AgentRequest::from(GetRaftStatus { dc: None });
        assert_eq!(
            req.fail(RpcError::NoLeader),
            AgentResponse::GetRaftStatus(Err(RpcError::NoLeader))
        );
    }

    #[test]
    fn a_write_is_resent_only_when_undelivered_and_otherwise_reported_as_indeterminate() {
        let addr = "127.0.0.1:8300".parse().unwrap();
        let undelivered = || TransportError::Unreachable {
            addr,
            reason: "no stream opened".into(),
        };
        let lost = |_: ()| TransportError::ConnectionLost {
            addr,
            reason: "closed".into(),
        };
        let timed_out = |_: ()| TransportError::Timeout {
            addr,
            after: Duration::from_secs(10),
        };
        let write = AgentRequest::from(Write {
            dc: None,
            cmd: Command::KvDelete { key: "k".into() },
            token: None,
        });
        let read = AgentRequest::from(GetRaftStatus { dc: None });
        assert!(write.may_resend(&undelivered()));
        let outcome_unknown: [&dyn Fn(()) -> TransportError; 2] = [&lost, &timed_out];
        for e in outcome_unknown {
            let e = || e(());
            assert!(read.may_resend(&e()), "a read is resent after {}", e());
            assert!(
                !write.may_resend(&e()),
                "a write is not resent after {}",
                e()
            );
            let reported = write.forward_failed(e());
            assert!(
                matches!(reported, RpcError::Indeterminate { .. })
                    && reported.to_string().contains("may have been applied")
                    && !reported.is_retry_safe(),
                "{reported}"
            );
            assert!(matches!(
                read.forward_failed(e()),
                RpcError::Forward {
                    retry_safe: false,
                    ..
                }
            ));
        }
        assert!(matches!(
            write.forward_failed(undelivered()),
            RpcError::Forward {
                retry_safe: true,
                ..
            }
        ));
    }

    #[test]
    fn reads_are_bounded_and_time_out_after_their_wait() {
        let read = |mode, wait| {
            AgentRequest::from(Read {
                dc: None,
                query: Query::Nodes { node_meta: vec![] },
                opts: ReadOptions {
                    wait,
                    ..ReadOptions::now(mode)
                },
                token: None,
            })
        };
        let long = read(ReadMode::Stale, Duration::from_secs(3600)).bounded();
        assert_eq!(long.timeout(), MAX_WAIT_WITH_JITTER + FORWARD_TIMEOUT);
        assert!(!long.needs_leader() && long.is_read());
        assert!(read(ReadMode::Leader, Duration::ZERO).needs_leader());
        let write = AgentRequest::from(Write {
            dc: Some("dc2".into()),
            cmd: Command::KvDelete { key: "k".into() },
            token: None,
        });
        assert!(write.needs_leader() && !write.is_read());
        assert_eq!(write.datacenter(), Some("dc2"));
        assert_eq!(write.timeout(), FORWARD_TIMEOUT);
    }
}
