//! The client side of the agent RPC protocol: a typed call to one agent, the reply's type
//! known from the call. Forwarders that relay whole requests use [`AgentClient::relay`].

use std::net::SocketAddr;
use std::time::Duration;

use super::{AgentRequest, AgentResponse, Call, RpcError};
use crate::transport::identity::Alpn;
use crate::transport::rpc::RpcClient;
use crate::transport::{Transport, TransportError};

/// A client of other agents' `rpc` ALPN.
#[derive(Clone)]
pub struct AgentClient {
    inner: RpcClient<AgentRequest, AgentResponse>,
}

impl AgentClient {
    /// A client over `transport`.
    pub fn new(transport: Transport) -> AgentClient {
        AgentClient {
            inner: RpcClient::new(transport, Alpn::Rpc),
        }
    }

    /// Calls fail as soon as the peer has not acknowledged the request in time (see
    /// [`RpcClient::fail_fast`]): for callers with another agent to try.
    pub fn fail_fast(self) -> AgentClient {
        AgentClient {
            inner: self.inner.fail_fast(),
        }
    }

    /// Makes `call` of the agent at `addr` (which must belong to `expected_dc` if given),
    /// at most `timeout` in all.
    pub async fn call<C: Call>(
        &self,
        addr: SocketAddr,
        expected_dc: Option<&str>,
        call: C,
        timeout: Duration,
    ) -> Result<C::Reply, RpcError> {
        let response = self
            .inner
            .call(addr, expected_dc, &call.into(), timeout)
            .await?;
        C::reply(response)
    }

    /// Sends `req` on unchanged and returns the answer unchanged, whatever it says; the
    /// peer must be reached (connected and the request acknowledged) within `reach`.
    pub async fn relay(
        &self,
        addr: SocketAddr,
        expected_dc: Option<&str>,
        req: &AgentRequest,
        timeout: Duration,
        reach: Duration,
    ) -> Result<AgentResponse, TransportError> {
        self.inner
            .call_reaching(addr, expected_dc, req, timeout, reach)
            .await
    }
}
