//! The agent: wires the subsystems of one consulate agent together from its config, and
//! takes them down in order when the shared cancellation token fires. This is the only
//! place that knows every subsystem; each of them knows only its own boundary.

pub mod rpc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::transport::identity::Alpn;
use crate::transport::rpc::RpcService;
use crate::transport::tls::TlsMaterial;
use crate::transport::{Services, Transport, TransportError, TransportOptions};

/// Why an agent could not start. Start-up errors are configuration or environment
/// problems: retrying without a change does not help.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The QUIC transport could not start (TLS files, port in use, ...).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// How long shutdown waits for peers to be told connections are closing.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

/// A running agent.
pub struct Agent {
    config: AgentConfig,
    transport: Transport,
    metrics: Metrics,
    shutdown: CancellationToken,
}

impl Agent {
    /// Starts every subsystem of the agent described by `config`. All tasks stop when
    /// `shutdown` is cancelled; [`Agent::run_until_shutdown`] then finishes the job.
    pub fn start(config: AgentConfig, shutdown: CancellationToken) -> Result<Agent, AgentError> {
        let metrics = Metrics::new();
        let tls =
            TlsMaterial::load(&config.tls_files(), &config.domain).map_err(TransportError::from)?;
        tls.check_identity(&config.identity(), &config.tls.cert_file)
            .map_err(TransportError::from)?;
        let opts = TransportOptions::default();
        let rpc = RpcService::new(
            Arc::new(rpc::AgentRpc::new(&config.node_name, &config.datacenter)),
            opts.max_frame,
            metrics.transport.clone(),
        );
        let transport = Transport::bind(
            config.quic_bind(),
            &config.datacenter,
            &tls,
            opts,
            metrics.transport.clone(),
        )?;
        transport.serve(
            Services::default().with(Alpn::Rpc, rpc),
            shutdown.child_token(),
        );
        info!(
            node = %config.node_name,
            datacenter = %config.datacenter,
            role = %config.role,
            quic = %transport.local_addr(),
            "agent started"
        );
        Ok(Agent {
            config,
            transport,
            metrics,
            shutdown,
        })
    }

    /// The QUIC address actually bound.
    pub fn quic_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// This agent's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Waits for the cancellation signal, then stops subsystems in order within a bound.
    pub async fn run_until_shutdown(self) {
        self.shutdown.cancelled().await;
        info!("shutting down");
        self.transport.close(SHUTDOWN_BOUND).await;
        info!("stopped");
    }
}
