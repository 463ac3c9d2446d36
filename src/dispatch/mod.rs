//! Answers every request an agent is given, wherever it must be answered: here, at this
//! DC's Raft leader, through one of the DC's servers (on client agents), or in another
//! datacenter (servers forward through the [`Router`]; client agents hand such requests to
//! a local server). Every entry point (agent RPC, HTTP API, DNS, the agent's own loops)
//! calls it instead of deciding for itself.
//!
//! The decision is one pure function ([`route::route`]); [`Dispatcher::serve`] is the one
//! generic forwarder around it: it holds a request through a leader election, relays it to
//! the leader, a server or another DC, or answers it from local state ([`Dispatcher`]'s
//! `here`). Leader-only work has its own entry, [`Dispatcher::on_leader`].

pub mod handler;
pub mod route;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::acl::{AclError, Authorizer, ReplicationStatus, Secret};
use crate::federation::Router;
use crate::gossip::{Gossip, Member};
use crate::metrics::{InFlight, RpcMetrics};
use crate::raft::{RaftNode, RaftNodeError, ReadMeta};
use crate::rpc::client::AgentClient;
use crate::rpc::{
    AgentRequest, AgentResponse, Call, GetRaftStatus, Hop, JoinRaft, ListDatacenters, RaftStatus,
    Read, ReadOutcome, RenewSession, RpcError, Write,
};
use crate::state::authorize::filter_result;
use crate::state::session_ttl::SessionTimers;
use crate::state::{Command, CommandResult};
use crate::transport::{Transport, TransportError};
use crate::vocab::{ReadMode, Role};
use route::Route;

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

/// How an agent applies ACLs: servers check every request they answer against the
/// token it carries; every agent sends its `default` token with requests that carry none.
#[derive(Debug, Clone)]
pub struct AclSettings {
    /// Where no rule of a token applies, allow (`default_policy = "allow"`).
    pub default_allow: bool,
    /// The token of requests that carry none (`acl.tokens.default`).
    pub default_token: Option<Secret>,
    /// The agent's own token, for its own work (`acl.tokens.agent`).
    pub agent_token: Option<Secret>,
    /// Servers of a DC that does not replicate tokens: global tokens are resolved by the
    /// primary DC (named here) and cached.
    pub remote: Option<(String, Arc<crate::acl::ResolvedTokens>)>,
}

/// Whether a request answered here is checked against its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Yes: it came from a user, an agent or another DC.
    Token,
    /// No: the leader's own work (session expiry, reconciliation).
    Internal,
}

/// Routes and answers requests for one agent.
#[derive(Clone)]
pub struct Dispatcher {
    datacenter: String,
    metrics: RpcMetrics,
    raft: Option<RaftNode>,
    servers: Arc<ServerList>,
    client: AgentClient,
    router: Option<Arc<Router>>,
    /// Servers: the session TTL timers, reset here when a renewal reaches the leader.
    session_timers: Option<Arc<SessionTimers>>,
    /// ACLs, when enabled.
    acl: Option<Arc<AclSettings>>,
    /// Servers: this server's WAN address and the WAN coordinates.
    wan_coordinates: Option<(SocketAddr, Arc<crate::coordinate::Estimator>)>,
    /// Servers: how this server's ACL replication stands.
    acl_replication: Option<Arc<std::sync::Mutex<ReplicationStatus>>>,
    /// The agent's LAN pool, once it joined (keyring operations).
    lan: Arc<std::sync::OnceLock<Gossip>>,
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
            client: AgentClient::new(transport).fail_fast(),
            router,
            session_timers: None,
            acl: None,
            acl_replication: None,
            wan_coordinates: None,
            lan: Arc::default(),
        }
    }

    /// Hands every clone of this dispatcher the agent's LAN pool, once it joined (the
    /// RPC handler is serving before).
    pub fn set_lan(&self, lan: Gossip) {
        let _ = self.lan.set(lan);
    }

    /// On servers: this server's WAN coordinate and those the other servers sent; `me` is
    /// this server's WAN address.
    pub fn with_wan_coordinates(
        mut self,
        me: SocketAddr,
        wan: Arc<crate::coordinate::Estimator>,
    ) -> Dispatcher {
        self.wan_coordinates = Some((me, wan));
        self
    }

    /// The WAN coordinates of every server in the WAN pool, by datacenter (sorted by
    /// name); a server whose coordinate is not known yet is left out.
    fn wan_coordinates(&self) -> Vec<crate::rpc::DatacenterCoordinates> {
        use crate::state::coordinates::NodeCoordinate;
        let (Some(router), Some((me, wan))) = (&self.router, &self.wan_coordinates) else {
            return Vec::new();
        };
        let mut by_dc: std::collections::BTreeMap<String, Vec<NodeCoordinate>> = Default::default();
        for m in router.members() {
            let coord = wan_coordinate_of(*me, wan, m.gossip_addr);
            let list = by_dc.entry(m.datacenter.clone()).or_default();
            if let Some(coord) = coord {
                list.push(NodeCoordinate {
                    node: m.name.clone(),
                    coord,
                });
            }
        }
        by_dc
            .into_iter()
            .map(|(datacenter, mut coordinates)| {
                coordinates.sort_by(|a, b| a.node.cmp(&b.node));
                crate::rpc::DatacenterCoordinates {
                    datacenter,
                    coordinates,
                }
            })
            .collect()
    }

    /// On servers: where this server's ACL replication loop reports how it stands.
    pub fn with_acl_replication(
        mut self,
        status: Arc<std::sync::Mutex<ReplicationStatus>>,
    ) -> Dispatcher {
        self.acl_replication = Some(status);
        self
    }

    /// With ACLs enabled as `settings` say.
    pub fn with_acl(mut self, settings: AclSettings) -> Dispatcher {
        self.acl = Some(Arc::new(settings));
        self
    }

    /// The token this agent's own work is done with (`None` without ACLs, or without an
    /// `acl.tokens.agent`: the anonymous token).
    pub fn agent_token(&self) -> Option<Secret> {
        self.acl.as_ref().and_then(|a| a.agent_token.clone())
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

    /// This agent's Raft node, on servers.
    pub fn raft(&self) -> Option<&RaftNode> {
        self.raft.as_ref()
    }

    /// The WAN pool as this server sees it (`None` on client agents).
    pub fn wan_members(&self) -> Option<Vec<Member>> {
        self.router.as_ref().map(|r| r.members())
    }

    /// Answers `call`, started by this agent (HTTP, DNS, its loops), wherever it must be
    /// answered.
    pub async fn call<C: Call>(&self, call: C) -> Result<C::Reply, RpcError> {
        let mut req: AgentRequest = call.into();
        if let (Some(acl), Some(token)) = (&self.acl, req.token_mut())
            && token.is_none()
        {
            token.clone_from(&acl.default_token);
        }
        C::reply(self.serve(Hop::Origin, req).await)
    }

    /// Leader-only work (ending sessions whose TTL ran out, reconciling the catalog with
    /// gossip): answered from this server's state if it leads now, never forwarded or held.
    pub async fn on_leader<C: Call>(&self, call: C) -> Result<C::Reply, RpcError> {
        let raft = self.server()?;
        if !raft.is_leader() {
            return Err(RpcError::NoLeader);
        }
        let req: AgentRequest = call.into();
        let req = req.bounded();
        let response = match self.here(raft, Hop::Forwarded, &req, Check::Internal).await {
            Some(response) => response,
            None => req.fail(RpcError::NoLeader),
        };
        C::reply(response)
    }

    /// The one forwarder: answers `req`, which came by `hop`, where [`route::route`] says,
    /// holding it while the DC has no reachable leader for at most [`LEADER_HOLD`] (an
    /// election after a leader died delays requests instead of failing them). Answers from
    /// elsewhere, errors included, are returned unchanged.
    pub async fn serve(&self, hop: Hop, req: AgentRequest) -> AgentResponse {
        let req = req.bounded();
        let deadline = tokio::time::Instant::now() + LEADER_HOLD;
        loop {
            let leader = self
                .raft
                .as_ref()
                .and_then(|r| r.leader())
                .map(|(id, _)| id);
            let route = route::route(
                route::Agent {
                    datacenter: &self.datacenter,
                    role: if self.raft.is_some() {
                        Role::Server
                    } else {
                        Role::Client
                    },
                    leading: self.raft.as_ref().is_some_and(RaftNode::is_leader),
                },
                req.datacenter(),
                req.needs_leader(),
                hop,
            );
            let route = match route {
                Ok(route) => route,
                Err(e) => return req.fail(e),
            };
            let answer = match (route, &self.raft) {
                (Route::Here, Some(raft)) => match self.here(raft, hop, &req, Check::Token).await {
                    Some(answer) => Ok(answer),
                    None if hop == Hop::Forwarded => Err(RpcError::NoLeader),
                    None => self.to_leader(raft, &req).await,
                },
                (Route::Leader, Some(raft)) => self.to_leader(raft, &req).await,
                (Route::RemoteDc, _) => self.cross_dc(&req).await,
                (Route::ViaServer, _) => self.via_server(&req).await,
                (Route::Here | Route::Leader, None) => Err(client_holds_no_raft()),
            };
            let answer = answer.unwrap_or_else(|e| req.fail(e));
            if let (Some(raft), Some(e)) = (&self.raft, answer.error())
                && route::hold(route, hop, e, req.is_read())
                && tokio::time::Instant::now() < deadline
            {
                let left = deadline - tokio::time::Instant::now();
                raft.leader_change(leader, left.min(HOLD_RETRY)).await;
                continue;
            }
            return answer;
        }
    }

    /// Answers `req` from this server's state, or `None` when it finds that the DC's leader
    /// must answer instead (this server does not lead, a default-mode read's lease lapsed,
    /// or a stale read is staler than it may be).
    async fn here(
        &self,
        raft: &RaftNode,
        hop: Hop,
        req: &AgentRequest,
        check: Check,
    ) -> Option<AgentResponse> {
        let authz = match self.authorizer(raft, req, check).await {
            Ok(authz) => authz,
            Err(e) => return Some(req.fail(e.into())),
        };
        let acl_system = match req {
            AgentRequest::Write(w) => w.cmd.is_acl(),
            AgentRequest::Read(r) => r.query.is_acl(),
            _ => false,
        };
        if acl_system && self.acl.is_none() {
            return Some(req.fail(AclError::Disabled.into()));
        }
        Some(match req {
            AgentRequest::Write(Write { cmd, .. }) => {
                if let Some(authz) = &authz
                    && let Err(e) = raft.read().state.authorize_command(authz, cmd)
                {
                    return Some(req.fail(e.into()));
                }
                AgentResponse::Write(self.write_here(raft, cmd.clone()).await)
            }
            AgentRequest::Read(Read { query, opts, .. }) => {
                let meta = match raft.read_barrier(opts.mode).await {
                    Ok(meta)
                        if opts.mode == ReadMode::Stale
                            && hop != Hop::Forwarded
                            && opts.max_stale.is_some_and(|max| {
                                meta.last_contact_ms > max.as_millis() as u64
                            }) =>
                    {
                        return None;
                    }
                    Ok(meta) => meta,
                    Err(RaftNodeError::NotLeader { .. }) => return None,
                    Err(e) => return Some(req.fail(e.into())),
                };
                match self
                    .read_here(raft, query, *opts, meta, authz.as_deref())
                    .await
                {
                    Ok(out) => AgentResponse::Read(Ok(out)),
                    Err(e) => req.fail(e),
                }
            }
            AgentRequest::GetRaftStatus(_) => AgentResponse::GetRaftStatus(Ok(RaftStatus {
                leader: raft.leader().map(|(_, node)| node),
                voters: raft.voters(),
                servers: raft
                    .configuration()
                    .into_iter()
                    .map(|(id, node, voter)| crate::rpc::RaftServer { id, node, voter })
                    .collect(),
            })),
            AgentRequest::AutopilotHealth(_) => match raft.server_health() {
                Err(RaftNodeError::NotLeader { .. }) => return None,
                health => AgentResponse::AutopilotHealth(health.map_err(RpcError::from)),
            },
            AgentRequest::RemoveRaftPeer(r) => {
                if let Err(e) = require(
                    &authz,
                    crate::acl::Scalar::Operator,
                    crate::acl::Access::Write,
                ) {
                    return Some(req.fail(e));
                }
                match raft.remove_server(&r.peer).await {
                    Err(RaftNodeError::NotLeader { .. }) => return None,
                    result => AgentResponse::RemoveRaftPeer(result.map_err(RpcError::from)),
                }
            }
            AgentRequest::ExecuteQuery(x) => {
                let meta = match raft.read_barrier(x.mode).await {
                    Ok(meta) => meta,
                    Err(RaftNodeError::NotLeader { .. }) => return None,
                    Err(e) => return Some(req.fail(e.into())),
                };
                AgentResponse::ExecuteQuery(self.execute_query(raft, x, meta, authz).await)
            }
            AgentRequest::KeyringOperation(k) => {
                let access = match k.op {
                    Some(_) => crate::acl::Access::Write,
                    None => crate::acl::Access::Read,
                };
                if let Err(e) = require(&authz, crate::acl::Scalar::Keyring, access) {
                    return Some(req.fail(e));
                }
                let Some(lan) = self.lan.get() else {
                    return Some(req.fail(RpcError::NotServed(
                        "this server has not joined its LAN pool yet".into(),
                    )));
                };
                let report = match &k.op {
                    None => lan.keyring_list().await,
                    Some((verb, key)) => lan.keyring_operation(*verb, key).await,
                };
                AgentResponse::KeyringOperation(report.map_err(RpcError::from))
            }
            AgentRequest::FireEvent(f) => {
                let perm = crate::acl::Permission::named(
                    crate::acl::Resource::Event,
                    f.event.name.clone(),
                    crate::acl::Access::Write,
                );
                if let Some(Err(e)) = authz.as_ref().map(|a| a.check(&perm)) {
                    return Some(req.fail(RpcError::from(e)));
                }
                let Some(lan) = self.lan.get() else {
                    return Some(req.fail(RpcError::NotServed(
                        "this server has not joined its LAN pool yet".into(),
                    )));
                };
                AgentResponse::FireEvent(Ok(lan.fire_event(f.event.clone()).await))
            }
            AgentRequest::TransferLeader(t) => {
                if let Err(e) = require(
                    &authz,
                    crate::acl::Scalar::Operator,
                    crate::acl::Access::Write,
                ) {
                    return Some(req.fail(e));
                }
                match raft.transfer_leadership(t.to.as_deref()).await {
                    Err(RaftNodeError::NotLeader { .. }) => return None,
                    result => AgentResponse::TransferLeader(result.map_err(RpcError::from)),
                }
            }
            AgentRequest::SaveSnapshot(s) => {
                if let Err(e) = require(&authz, crate::acl::Scalar::Acl, crate::acl::Access::Write)
                {
                    return Some(req.fail(e));
                }
                match raft.read_barrier(s.mode).await {
                    Ok(_) => {}
                    Err(RaftNodeError::NotLeader { .. }) => return None,
                    Err(e) => return Some(req.fail(e.into())),
                }
                AgentResponse::SaveSnapshot(self.save_snapshot(raft).await)
            }
            AgentRequest::WanCoordinates(_) => {
                AgentResponse::WanCoordinates(Ok(self.wan_coordinates()))
            }
            AgentRequest::ListDatacenters(_) => {
                AgentResponse::ListDatacenters(Ok(match &self.router {
                    Some(router) => router.datacenters(),
                    None => vec![self.datacenter.clone()],
                }))
            }
            AgentRequest::RenewSession(RenewSession { id, .. }) => {
                if !raft.is_leader() {
                    return None;
                }
                let session = raft.read().state.session(id).cloned();
                // As for destroying: an unknown session has no node to check, so only a
                // token that may renew any session learns that it is unknown.
                let node = session.as_ref().map_or("", |s| s.node.as_str());
                if let Some(authz) = &authz
                    && let Err(e) = authz.check(&crate::acl::Permission::named(
                        crate::acl::Resource::Session,
                        node,
                        crate::acl::Access::Write,
                    ))
                {
                    return Some(req.fail(e.into()));
                }
                if let (Some(s), Some(timers)) = (&session, &self.session_timers)
                    && let Some(ttl) = s.ttl
                {
                    timers.renew(&s.id, ttl, tokio::time::Instant::now());
                }
                AgentResponse::RenewSession(Ok(session))
            }
            AgentRequest::JoinRaft(JoinRaft { id, node }) => AgentResponse::JoinRaft(
                raft.add_server(*id, node.clone())
                    .await
                    .map_err(RpcError::from),
            ),
            AgentRequest::AclReplicationStatus(_) => AgentResponse::AclReplicationStatus(Ok(self
                .acl_replication
                .as_ref()
                .map(|s| s.lock().expect("replication status lock").clone())
                .unwrap_or_default())),
            AgentRequest::ResolveToken(_) => match authz {
                Some(authz) => AgentResponse::ResolveToken(Ok((*authz).clone())),
                None => req.fail(AclError::Disabled.into()),
            },
            AgentRequest::Ping(_) | AgentRequest::GetServerInfo(_) => req.fail(
                RpcError::NotServed("a node-local probe is answered by the handler".into()),
            ),
        })
    }

    /// Runs a prepared query here: renders it, selects this DC's instances and, when too
    /// few are selected and the query came from a client rather than from another DC's
    /// server, fails over to the DCs its `Failover` names (the nearest `NearestN` by
    /// network coordinates, then `Datacenters`), moving on past any DC that cannot be
    /// reached or has none.
    async fn execute_query(
        &self,
        raft: &RaftNode,
        x: &crate::rpc::ExecuteQuery,
        meta: ReadMeta,
        authz: Option<Arc<Authorizer>>,
    ) -> Result<crate::rpc::QueryExecution, RpcError> {
        use crate::rpc::{QueryExecution, QueryRef};
        let home = matches!(x.query, QueryRef::Named(_));
        let (query, nodes, index) = {
            let guard = raft.read();
            let state = &guard.state;
            let query = match &x.query {
                QueryRef::Named(name) => state
                    .prepared_query_for(name)
                    .ok_or_else(|| RpcError::NotFound("Query not found".into()))?,
                QueryRef::Definition(q) => (**q).clone(),
            };
            // A query with a token of its own runs with it (as Consul's).
            let authz = match (&self.acl, query.token.is_empty()) {
                (Some(acl), false) => Some(state.acl_authorizer(
                    Some(&query.token),
                    acl.default_allow,
                    crate::acl::model::now_ms,
                )?),
                _ => authz,
            };
            if x.explain {
                if let Some(a) = &authz {
                    a.check(&crate::acl::Permission::named(
                        crate::acl::Resource::Query,
                        query.name.as_str(),
                        crate::acl::Access::Read,
                    ))?;
                }
                let index = state.max_index(&[crate::state::Table::PreparedQueries]);
                return Ok(QueryExecution {
                    service: query.service.service.clone(),
                    nodes: Vec::new(),
                    dns_ttl: query.dns_ttl.clone(),
                    datacenter: self.datacenter.clone(),
                    failovers: 0,
                    index,
                    meta,
                    query: Some(Box::new(query)),
                });
            }
            let nodes = select_instances(state, &query.service, x, home, authz.as_deref());
            let index = state.max_index(&[
                crate::state::Table::Nodes,
                crate::state::Table::Services,
                crate::state::Table::Checks,
            ]);
            (query, nodes, index)
        };
        let enough = query.service.failover.min_passing.max(1) as usize;
        let mut answer = QueryExecution {
            service: query.service.service.clone(),
            nodes,
            dns_ttl: query.dns_ttl.clone(),
            datacenter: self.datacenter.clone(),
            failovers: 0,
            index,
            meta,
            query: None,
        };
        if !home || answer.nodes.len() >= enough {
            return Ok(answer);
        }
        let mut failovers = 0;
        for dc in self.failover_order(&query.service.failover) {
            failovers += 1;
            let remote = AgentRequest::from(crate::rpc::ExecuteQuery {
                dc: Some(dc.clone()),
                query: QueryRef::Definition(Box::new(query.clone())),
                near: None,
                source: x.source.clone(),
                limit: x.limit,
                mode: x.mode,
                explain: false,
                token: x.token.clone(),
            });
            let reply = match self.cross_dc(&remote).await {
                Ok(response) => crate::rpc::ExecuteQuery::reply(response),
                Err(e) => Err(e),
            };
            match reply {
                Ok(found) if found.nodes.len() >= enough => {
                    self.metrics
                        .query_failovers
                        .with_label_values(&["answered"])
                        .inc();
                    return Ok(QueryExecution { failovers, ..found });
                }
                Ok(found) => {
                    self.metrics
                        .query_failovers
                        .with_label_values(&["too_few"])
                        .inc();
                    // Below `MinPassing` but more than this DC had: the best so far.
                    if found.nodes.len() > answer.nodes.len() {
                        answer = found;
                    }
                }
                Err(e) => {
                    self.metrics
                        .query_failovers
                        .with_label_values(&["error"])
                        .inc();
                    tracing::debug!(datacenter = %dc, error = %e, "prepared query failover");
                }
            }
        }
        answer.failovers = failovers;
        Ok(answer)
    }

    /// The DCs a query fails over to, in order: the `NearestN` nearest by network
    /// coordinates, then `Datacenters` (never this DC, never twice).
    fn failover_order(&self, f: &crate::state::prepared_query::Failover) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        if f.nearest_n > 0
            && let (Some(router), Some((me, wan))) = (&self.router, &self.wan_coordinates)
        {
            let own = wan.coordinate();
            let servers: Vec<(String, Option<crate::coordinate::Coordinate>)> = router
                .members()
                .into_iter()
                .map(|m| (m.datacenter, wan_coordinate_of(*me, wan, m.gossip_addr)))
                .collect();
            let ranked = crate::coordinate::rank_datacenters(
                &self.datacenter,
                &own,
                servers.iter().map(|(dc, c)| (dc.as_str(), c.as_ref())),
            );
            order.extend(ranked.into_iter().take(f.nearest_n as usize));
        }
        for dc in &f.datacenters {
            if *dc != self.datacenter && !order.contains(dc) {
                order.push(dc.clone());
            }
        }
        order
    }

    /// What the token `req` carries may do, when this server checks ACLs and `req` is one
    /// that carries a token (`None`: nothing to check). A token this server does not know
    /// is resolved by the primary DC when this DC does not replicate tokens.
    async fn authorizer(
        &self,
        raft: &RaftNode,
        req: &AgentRequest,
        check: Check,
    ) -> Result<Option<Arc<Authorizer>>, AclError> {
        let Some(acl) = self.acl.as_ref().filter(|_| check == Check::Token) else {
            return Ok(None);
        };
        let Some(token) = req.token() else {
            return Ok(None);
        };
        let here = raft.read().state.acl_authorizer(
            token.map(|s| s.0.as_str()),
            acl.default_allow,
            crate::acl::model::now_ms,
        );
        match (here, &acl.remote, token) {
            (Err(AclError::NotFound), Some((primary, tokens)), Some(secret)) => {
                let fetch = || self.resolve_in(primary, secret);
                let authz = tokens
                    .resolve(Some(secret), std::time::Instant::now(), fetch)
                    .await?;
                Ok(Some(Arc::new(authz)))
            }
            (here, ..) => here.map(Some),
        }
    }

    /// Asks `dc` (the primary) what `secret` may do (`None`: it could not be reached).
    async fn resolve_in(&self, dc: &str, secret: &Secret) -> Option<Result<Authorizer, AclError>> {
        let req = AgentRequest::from(crate::rpc::ResolveToken {
            token: Some(secret.clone()),
            dc: Some(dc.to_string()),
        });
        let answer = match self.cross_dc(&req).await {
            Ok(answer) => crate::rpc::ResolveToken::reply(answer),
            Err(e) => Err(e),
        };
        crate::rpc::ResolveToken::resolution(answer)
    }

    /// A write of this DC applied here (this server leads, or fails with `No cluster
    /// leader`).
    async fn write_here(&self, raft: &RaftNode, cmd: Command) -> Result<CommandResult, RpcError> {
        // The lock-delay is the leader's to check, before proposing (as Consul): it is
        // soft state, which the log's deterministic apply cannot consult.
        if let Command::KvAcquire { key, .. } = &cmd
            && raft.is_leader()
            && raft
                .read()
                .state
                .lock_delayed(key, std::time::Instant::now())
        {
            return Ok(CommandResult::Bool(false));
        }
        Ok(raft.write(cmd).await?)
    }

    /// A read answered from this server's state, at once or, for a blocking query, once
    /// the index of its tables passes `opts.min_index` or the wait runs out. It waits on
    /// the watch channels of the query's tables, not on a timer per change.
    /// The archive of this server's state now: the tables are copied under the state lock
    /// (constant time), encoded and compressed on a blocking thread.
    async fn save_snapshot(
        &self,
        raft: &RaftNode,
    ) -> Result<crate::rpc::SnapshotArchive, RpcError> {
        let (meta, tables) = {
            let r = raft.read();
            let last = r.last_applied;
            let index = r.state.index_of_log(last.map_or(0, |l| l.index));
            let term = last.map_or(0, |l| l.leader_id.term);
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let meta = crate::state::archive::ArchiveMeta {
                id: format!("{term}-{index}-{ms}"),
                size: 0,
                index,
                term,
                version: 0,
                format: String::new(),
                datacenter: self.datacenter.clone(),
            };
            (meta, r.state.tables().clone())
        };
        let index = meta.index;
        let archive =
            tokio::task::spawn_blocking(move || crate::state::archive::write(meta, &tables))
                .await
                .map_err(std::io::Error::other)
                .and_then(|written| written)
                .map_err(|e| RpcError::NotServed(format!("saving the snapshot failed: {e}")))?;
        Ok(crate::rpc::SnapshotArchive {
            index,
            archive: archive.into(),
        })
    }

    async fn read_here(
        &self,
        raft: &RaftNode,
        query: &crate::state::query::Query,
        opts: crate::rpc::ReadOptions,
        meta: ReadMeta,
        authz: Option<&Authorizer>,
    ) -> Result<ReadOutcome, RpcError> {
        let deadline = tokio::time::Instant::now() + opts.wait;
        let (run, filter) = query.for_filter();
        loop {
            // The index is checked and the watches subscribed under one read of the state,
            // which writes cannot change meanwhile, so no change between the two is missed;
            // a read that answers at once subscribes to nothing. The query runs only when it
            // answers: a waiting request holds no result.
            let mut watches: Vec<_> = {
                let r = raft.read();
                let index = query.index(&r.state);
                if opts.min_index == 0
                    || index > opts.min_index
                    || tokio::time::Instant::now() >= deadline
                {
                    let (result, filtered) = match authz {
                        Some(authz) => filter_result(authz, &run, run.run(&r.state))?,
                        None => (run.run(&r.state), false),
                    };
                    drop(r);
                    // Filtered outside the state lock: a filter never holds writers back.
                    let result = match filter {
                        Some(f) => crate::state::filter::apply(query.inner(), result, f)
                            .map_err(|e| RpcError::Refused(e.to_string()))?,
                        None => result,
                    };
                    return Ok(ReadOutcome {
                        result,
                        index,
                        meta,
                        mode: opts.mode,
                        filtered,
                        stale_from: None,
                    });
                }
                query.watch(&r.state)
            };
            let changed =
                futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            let _waiting = InFlight::new(&self.metrics.queries_blocking);
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                continue; // deadline: answer with what is there now
            }
        }
    }

    fn server(&self) -> Result<&RaftNode, RpcError> {
        self.raft.as_ref().ok_or_else(client_holds_no_raft)
    }

    /// Sends `req` to this DC's leader as this server knows it (the leader sees it as
    /// [`Hop::Forwarded`]).
    async fn to_leader(
        &self,
        raft: &RaftNode,
        req: &AgentRequest,
    ) -> Result<AgentResponse, RpcError> {
        let (_, leader) = raft.leader().ok_or(RpcError::NoLeader)?;
        let addr = leader
            .addr
            .parse()
            .map_err(|_| RpcError::Raft(format!("leader address {:?} is invalid", leader.addr)))?;
        self.client
            .relay(addr, None, req, req.timeout(), IN_DC_REACH)
            .await
            .map_err(|e| self.forward_failed(req, e))
    }

    /// What a failed exchange of `req` with another agent is reported as (a write that may
    /// have applied is counted).
    fn forward_failed(&self, req: &AgentRequest, e: TransportError) -> RpcError {
        let e = req.forward_failed(e);
        if matches!(e, RpcError::Indeterminate { .. }) {
            self.metrics.indeterminate.inc();
        }
        e
    }

    /// Sends `req` towards the datacenter it names: through the router on servers, to a
    /// local server on client agents (which never talk to another DC themselves).
    async fn cross_dc(&self, req: &AgentRequest) -> Result<AgentResponse, RpcError> {
        let dc = req.datacenter().unwrap_or(&self.datacenter);
        match &self.router {
            Some(router) => router.forward_shared(dc, req).await,
            None if self.raft.is_none() => self.via_server(req).await,
            None => Err(RpcError::NoPathToDatacenter),
        }
    }

    /// Sends `req` from a client agent to the DC's servers, the current one first, moving
    /// on while a server fails without having acted on the request (every read; a write
    /// only while it was surely not delivered). The first answer is returned, whatever it
    /// says; a write lost with its server is reported as indeterminate.
    async fn via_server(&self, req: &AgentRequest) -> Result<AgentResponse, RpcError> {
        let (start, order) = self.servers.rotation();
        let mut last = RpcError::NotServed("no server of this datacenter is known".into());
        for (i, addr) in order.into_iter().enumerate() {
            if i > 0 {
                self.metrics.resent.inc();
            }
            match self
                .client
                .relay(addr, None, req, req.timeout(), IN_DC_REACH)
                .await
            {
                Ok(resp) => {
                    self.servers.settle(start, i);
                    return Ok(resp);
                }
                Err(e) => {
                    let resend = req.may_resend(&e);
                    last = self.forward_failed(req, e);
                    if !resend {
                        self.servers.settle(start, i + 1);
                        return Err(last);
                    }
                }
            }
        }
        self.servers.settle(start, 1);
        Err(last)
    }
}

/// Typed shorthands for the calls every entry point makes.
impl Dispatcher {
    /// Applies `cmd` through the leader of `dc` (default: this one), made with `token`.
    pub async fn write(
        &self,
        token: Option<Secret>,
        dc: Option<&str>,
        cmd: Command,
    ) -> Result<CommandResult, RpcError> {
        self.call(Write {
            dc: dc.map(str::to_string),
            cmd,
            token,
        })
        .await
    }

    /// Answers `query` as `opts` asks, in `dc` (default: this one), made with `token`.
    pub async fn read(
        &self,
        token: Option<Secret>,
        dc: Option<&str>,
        query: crate::state::query::Query,
        opts: crate::rpc::ReadOptions,
    ) -> Result<ReadOutcome, RpcError> {
        self.call(Read {
            dc: dc.map(str::to_string),
            query,
            opts,
            token,
        })
        .await
    }

    /// The leader and voting servers of `dc` (default: this one).
    pub async fn raft_status(&self, dc: Option<&str>) -> Result<RaftStatus, RpcError> {
        self.call(GetRaftStatus {
            dc: dc.map(str::to_string),
        })
        .await
    }

    /// Every datacenter known, this one first, then nearest first.
    pub async fn datacenters(&self) -> Result<Vec<String>, RpcError> {
        self.call(ListDatacenters).await
    }
}

fn client_holds_no_raft() -> RpcError {
    RpcError::NotServed("client agents hold no Raft state".into())
}

/// The instances a prepared query selects in this DC, as the request asks: only those the
/// token may read, sorted by estimated round trip from `?near=` (else the query's `Near`;
/// `_agent` and `_ip` only where the request entered), else shuffled; at most `limit`.
fn select_instances(
    state: &crate::state::State,
    q: &crate::state::prepared_query::ServiceQuery,
    x: &crate::rpc::ExecuteQuery,
    home: bool,
    authz: Option<&Authorizer>,
) -> Vec<crate::state::query::ServiceHealth> {
    use crate::acl::{Access, Resource};
    use crate::state::coordinates::Near;
    let mut nodes = state.prepared_query_local(q);
    if let Some(a) = authz {
        nodes.retain(|h| {
            a.allows_named(Resource::Service, &h.service.service, Access::Read)
                && a.allows_named(Resource::Node, &h.node.node, Access::Read)
        });
    }
    let near = x
        .near
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(Some(q.near.as_str()).filter(|n| !n.is_empty()));
    let near = match near {
        Some("_agent") if home => Some(Near::Node(x.source.node.clone())),
        Some("_ip") if home => x.source.ip.clone().map(Near::Address),
        Some("_agent" | "_ip") | None => None,
        Some(node) => Some(Near::Node(node.to_string())),
    };
    match near.as_ref().and_then(|n| state.distances_from(n)) {
        Some(distance) => nodes.sort_by_cached_key(|h| distance(&h.node.node)),
        None => {
            use rand::seq::SliceRandom;
            nodes.shuffle(&mut rand::rng());
        }
    }
    if let Some(limit) = x.limit {
        nodes.truncate(limit);
    }
    nodes
}

/// The WAN coordinate of the server at `addr`: this server's own (`me`), else the last one
/// it sent.
fn wan_coordinate_of(
    me: SocketAddr,
    wan: &crate::coordinate::Estimator,
    addr: SocketAddr,
) -> Option<crate::coordinate::Coordinate> {
    if addr == me {
        Some(wan.coordinate())
    } else {
        wan.peer(addr)
    }
}

/// Whether `authz` (`None`: ACLs do not apply) grants `access` to `scalar` (operator,
/// keyring, acl).
fn require(
    authz: &Option<Arc<Authorizer>>,
    scalar: crate::acl::Scalar,
    access: crate::acl::Access,
) -> Result<(), RpcError> {
    match authz {
        Some(authz) => authz
            .check(&crate::acl::Permission::scalar(scalar, access))
            .map_err(RpcError::from),
        None => Ok(()),
    }
}
