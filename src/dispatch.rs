//! The one place that decides where a request is answered: here, at this DC's Raft leader,
//! or (later) in another datacenter. Every entry point (agent RPC, HTTP API, DNS) calls it
//! instead of deciding for itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::rpc::{AgentRequest, AgentResponse};
use crate::raft::{RaftNode, RaftNodeError, ServerNode};
use crate::state::{Command, CommandResult};
use crate::transport::identity::Alpn;
use crate::transport::rpc::RpcClient;
use crate::transport::{Transport, TransportError};

/// How long a forwarded request may take in all.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not be answered, as carried between agents and mapped to HTTP by the
/// http module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DispatchError {
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
            DispatchError::NoLeader | DispatchError::NotServed(_) => true,
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

/// Routes requests for one agent.
#[derive(Clone)]
pub struct Dispatcher {
    raft: Option<RaftNode>,
    client: RpcClient<AgentRequest, AgentResponse>,
}

impl Dispatcher {
    /// A dispatcher for an agent with (server) or without (client) a Raft node.
    pub fn new(raft: Option<RaftNode>, transport: Transport) -> Dispatcher {
        Dispatcher {
            raft,
            client: RpcClient::new(transport, Alpn::Rpc),
        }
    }

    /// This agent's Raft node, on servers.
    pub fn raft(&self) -> Option<&RaftNode> {
        self.raft.as_ref()
    }

    /// The KV keys under `prefix` from this server's local state (stale read).
    pub fn kv_keys_stale(&self, prefix: &str) -> Result<Vec<String>, DispatchError> {
        Ok(self
            .server()?
            .read()
            .state
            .kv_prefix(prefix)
            .map(|e| e.key.clone())
            .collect())
    }

    fn server(&self) -> Result<&RaftNode, DispatchError> {
        self.raft
            .as_ref()
            .ok_or_else(|| DispatchError::NotServed("client agents hold no Raft state".into()))
    }

    /// Applies `cmd` through the DC's leader: locally if this server leads, else forwarded
    /// once to the leader (`forwarded` marks a request that already took that hop).
    pub async fn write(
        &self,
        cmd: Command,
        forwarded: bool,
    ) -> Result<CommandResult, DispatchError> {
        let raft = self.server()?;
        if raft.is_leader() {
            return Ok(raft.write(cmd).await?);
        }
        let Some((_, leader)) = raft.leader().filter(|_| !forwarded) else {
            return Err(DispatchError::NoLeader);
        };
        let addr = leader.addr.parse().map_err(|_| {
            DispatchError::Raft(format!("leader address {:?} is invalid", leader.addr))
        })?;
        let req = AgentRequest::Write {
            cmd,
            forwarded: true,
        };
        match self.client.call(addr, None, &req, FORWARD_TIMEOUT).await? {
            AgentResponse::Written(r) => r,
            other => Err(DispatchError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Adds server `id` to this DC's Raft (answered by the leader; others say there is none
    /// here, and the joiner tries another member).
    pub async fn join(&self, id: u64, node: ServerNode) -> Result<(), DispatchError> {
        Ok(self.server()?.add_server(id, node).await?)
    }
}
