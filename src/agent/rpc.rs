//! The agent RPC protocol (ALPN `rpc`): the typed requests one agent sends another, and the
//! handler that answers them. Later subsystems (catalog reads and writes, forwarding) add
//! their variants here.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::transport::identity::Identity;
use crate::transport::rpc::Handler;

/// A request over the `rpc` ALPN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Liveness and identity probe; echoes the payload (also the transport benchmark).
    Ping {
        /// Returned unchanged.
        payload: Bytes,
    },
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
}

/// Answers agent RPCs for one agent.
pub struct AgentRpc {
    node: String,
    datacenter: String,
}

impl AgentRpc {
    /// The handler of the agent named `node` in `datacenter`.
    pub fn new(node: &str, datacenter: &str) -> AgentRpc {
        AgentRpc {
            node: node.into(),
            datacenter: datacenter.into(),
        }
    }
}

impl Handler for AgentRpc {
    type Request = AgentRequest;
    type Response = AgentResponse;

    async fn handle(&self, _peer: &Identity, request: AgentRequest) -> AgentResponse {
        match request {
            AgentRequest::Ping { payload } => AgentResponse::Pong {
                node: self.node.clone(),
                datacenter: self.datacenter.clone(),
                payload,
            },
        }
    }
}
