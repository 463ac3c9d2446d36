//! The server side of the agent RPC protocol (ALPN `rpc`): takes each call off the wire,
//! names the [`Hop`] it came by from the authenticated peer, answers the node-local probes
//! (ping, server info) itself and hands everything else to the [`Dispatcher`].

use crate::raft::ServerNode;
use crate::rpc::{AgentRequest, AgentResponse, Hop, JoinRaft, Pong, RpcError, ServerInfo};
use crate::transport::identity::Identity;
use crate::transport::rpc::Handler;
use crate::vocab::Role;

use super::Dispatcher;

/// Answers agent RPCs for one agent.
pub struct AgentRpc {
    node: String,
    datacenter: String,
    server: Option<ServerSelf>,
    dispatcher: Option<Dispatcher>,
}

/// What a server says of itself to servers probing it while bootstrapping.
struct ServerSelf {
    node: ServerNode,
    bootstrap_expect: Option<u32>,
}

impl AgentRpc {
    /// A handler that only answers pings (tests and benchmarks of the transport).
    pub fn new(node: &str, datacenter: &str) -> AgentRpc {
        AgentRpc {
            node: node.into(),
            datacenter: datacenter.into(),
            server: None,
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
        self.server = self_node.map(|node| ServerSelf {
            node,
            bootstrap_expect,
        });
        self
    }

    async fn server_info(&self) -> Option<ServerInfo> {
        let raft = self.dispatcher.as_ref()?.raft()?;
        let me = self.server.as_ref()?;
        let (term, applied) = {
            let m = raft.raft().metrics();
            let m = m.borrow();
            (m.current_term, m.last_applied.map_or(0, |l| l.index))
        };
        Some(ServerInfo {
            id: raft.id(),
            node: me.node.clone(),
            initialized: raft.is_initialized().await.unwrap_or(false),
            leader: raft.leader().map(|(_, n)| n),
            term,
            applied,
            voters: raft.voters().into_iter().map(|n| n.name).collect(),
            bootstrap_expect: me.bootstrap_expect,
        })
    }

    async fn answer(&self, peer: &Identity, request: AgentRequest) -> AgentResponse {
        match request {
            AgentRequest::Ping(ping) => AgentResponse::Ping(Ok(Pong {
                node: self.node.clone(),
                datacenter: self.datacenter.clone(),
                payload: ping.payload,
            })),
            AgentRequest::GetServerInfo(_) => {
                AgentResponse::GetServerInfo(Ok(self.server_info().await))
            }
            AgentRequest::JoinRaft(JoinRaft { .. })
                if peer.role != Role::Server || peer.datacenter != self.datacenter =>
            {
                request.fail(RpcError::NotServed(
                    "only servers of this DC may join its Raft".into(),
                ))
            }
            request => match &self.dispatcher {
                Some(d) => d.serve(Hop::of(peer, &self.datacenter), request).await,
                None => request.fail(RpcError::NotServed("this agent serves no requests".into())),
            },
        }
    }
}

impl Handler for AgentRpc {
    type Request = AgentRequest;
    type Response = AgentResponse;

    async fn handle(&self, peer: &Identity, request: AgentRequest) -> AgentResponse {
        let kind = request.kind();
        let response = self.answer(peer, request).await;
        if let Some(d) = &self.dispatcher {
            let outcome = if response.error().is_some() {
                "error"
            } else {
                "ok"
            };
            d.metrics()
                .requests
                .with_label_values(&[kind, outcome])
                .inc();
        }
        response
    }
}
