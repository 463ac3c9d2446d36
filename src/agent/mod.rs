//! The agent: wires the subsystems of one consulate agent together from its config, and
//! takes them down in order when the shared cancellation token fires. This is the only
//! place that knows every subsystem; each of them knows only its own boundary.

pub mod acl_replication;
pub mod anti_entropy;
pub mod autopilot;
pub mod bootstrap;
pub mod checks;
pub mod coordinates;
pub mod local;
pub mod reconcile;
pub mod server;
pub mod sessions;
pub mod tasks;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::dispatch::handler::AgentRpc;
use crate::dispatch::{Dispatcher, ServerList};
use crate::gossip::{Gossip, GossipError, GossipOptions, LanConfig, Member, MemberStatus};
use crate::metrics::Metrics;
use crate::raft::{RaftNode, RaftNodeError};
use crate::transport::identity::Alpn;
use crate::transport::rpc::RpcService;
use crate::transport::tls::TlsMaterial;
use crate::transport::{Services, Transport, TransportError, TransportOptions};
use crate::vocab::Role;
use server::ServerParts;
use tasks::Loops;

/// Why an agent could not start. Start-up errors are configuration or environment
/// problems: retrying without a change does not help.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The QUIC transport could not start (TLS files, port in use, ...).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The Raft state in the data dir cannot be used.
    #[error(transparent)]
    Raft(#[from] RaftNodeError),
    /// LAN gossip could not start.
    #[error(transparent)]
    Gossip(#[from] GossipError),
    /// The DNS port could not be bound.
    #[error("cannot serve DNS on {addr}: {reason}")]
    Dns {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot serve HTTP on {addr}: {reason}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A service or check the config file defines does not register.
    #[error("config: {0}")]
    Config(String),
    /// The gossip keyring in the data dir cannot be read or written.
    #[error(transparent)]
    Keyring(#[from] crate::gossip::keyring::KeyringError),
    /// The data dir is unusable.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The path concerned.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// How long shutdown waits for peers to be told connections are closing.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

/// Default full anti-entropy interval (Consul's for small clusters).
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(60);

/// A running agent.
pub struct Agent {
    gossip: Gossip,
    wan: Option<Gossip>,
    raft: Option<RaftNode>,
    http_task: JoinHandle<()>,
    dns_task: JoinHandle<()>,
    loops: Loops,
    /// The agent cache (`?cached`), whose refreshes end with the agent.
    cache: crate::cache::AgentCache,
    /// Stops serving QUIC (and the WAN gossip carrier), last in the ordered shutdown.
    serving: CancellationToken,
    transport: Transport,
    shutdown: CancellationToken,
}

/// Keeps a client agent's server list to the DC's live servers that gossip knows of (the
/// `lan_join` addresses serve until gossip has found any).
async fn track_servers(
    mut members: tokio::sync::watch::Receiver<Vec<Member>>,
    servers: Arc<ServerList>,
    datacenter: String,
    shutdown: CancellationToken,
) {
    loop {
        let live: Vec<SocketAddr> = members
            .borrow_and_update()
            .iter()
            .filter(|m| {
                m.role == Role::Server
                    && m.status == MemberStatus::Alive
                    && m.datacenter == datacenter
            })
            .filter_map(|m| m.quic)
            .collect();
        if !live.is_empty() {
            servers.set(live);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = members.changed() => if r.is_err() { return },
        }
    }
}

/// Until LAN gossip tells them, the DC's servers are the LAN join addresses on the QUIC
/// port.
fn join_servers(config: &AgentConfig) -> Vec<SocketAddr> {
    config
        .lan_join
        .iter()
        .map(|a| SocketAddr::new(a.ip, config.ports.quic))
        .collect()
}

/// This server's Raft id: random on first start, then read back from `node-id` in the data
/// dir, so a restart is the same Raft member.
fn node_id(data_dir: &Path) -> Result<u64, AgentError> {
    let path = data_dir.join("node-id");
    let err = |reason: String| AgentError::DataDir {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| err(format!("corrupt node id {:?}", s.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|e| err(e.to_string()))?;
            let id = rand::random::<u64>().max(1);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, id.to_string())
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| err(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl Agent {
    /// Starts every subsystem of the agent described by `config`: the transport, a
    /// server's own parts ([`ServerParts`]), the dispatcher and RPC handler, LAN gossip,
    /// the background loops of its role, DNS and HTTP. All tasks stop when `shutdown` is
    /// cancelled; [`Agent::run_until_shutdown`] then finishes the job.
    pub async fn start(
        config: AgentConfig,
        shutdown: CancellationToken,
    ) -> Result<Agent, AgentError> {
        let metrics = Metrics::new();
        metrics.set_identity(&config.datacenter, config.role.as_str());
        let tls =
            TlsMaterial::load(&config.tls_files(), &config.domain).map_err(TransportError::from)?;
        tls.check_identity(&config.identity(), &config.tls.cert_file)
            .map_err(TransportError::from)?;
        let opts = TransportOptions::default();
        let max_frame = opts.max_frame;
        let transport = Transport::bind(
            config.quic_bind(),
            &config.datacenter,
            &tls,
            opts,
            metrics.transport.clone(),
        )?;
        let quic_addr = SocketAddr::new(config.advertise(), transport.local_addr().port());
        let id = node_id(&config.data_dir)?;
        // QUIC keeps serving (RPC, Raft, WAN gossip) while the agent leaves its pools, so
        // that the WAN pool hears it leave and in-flight requests finish; it stops just
        // before the transport closes, at the end of the ordered shutdown.
        let serving = CancellationToken::new();
        // A start that fails half-way stops what it started serving.
        let serving_guard = serving.clone().drop_guard();
        let (server, services) = match config.role {
            Role::Server => {
                let (parts, services) = ServerParts::start(
                    &config,
                    id,
                    &transport,
                    &metrics,
                    Services::default(),
                    &serving,
                    &shutdown,
                )
                .await?;
                (Some(parts), services)
            }
            Role::Client => (None, Services::default()),
        };
        let servers = Arc::new(ServerList::new(join_servers(&config)));
        let mut dispatcher = Dispatcher::new(
            &config.datacenter,
            server.as_ref().map(|s| s.raft.clone()),
            servers.clone(),
            transport.clone(),
            metrics.rpc.clone(),
            server.as_ref().map(|s| s.router.clone()),
        );
        if let Some(s) = &server {
            dispatcher = dispatcher
                .with_session_timers(s.session_timers.clone())
                .with_acl_replication(s.acl_replication.clone())
                .with_wan_coordinates(s.wan_addr, s.wan_coordinates.clone());
        }
        let default_allow = config.acl.default_policy == crate::config::AclDefaultPolicy::Allow;
        let resolved_tokens = || {
            crate::acl::ResolvedTokens::new(
                config.acl.token_ttl.0,
                config.acl.down_policy,
                default_allow,
                metrics.acl.token_resolutions.clone(),
            )
        };
        // Another DC than the primary, as its own config says.
        let primary = config
            .primary_datacenter
            .clone()
            .filter(|p| *p != config.datacenter);
        if config.acl.enabled {
            let tokens = &config.acl.tokens;
            let remote = primary
                .clone()
                .filter(|_| server.is_some() && !config.acl.enable_token_replication)
                .map(|p| (p, Arc::new(resolved_tokens())));
            dispatcher = dispatcher.with_acl(crate::dispatch::AclSettings {
                default_allow,
                default_token: tokens.default.clone().map(crate::acl::Secret),
                agent_token: tokens.agent.clone().map(crate::acl::Secret),
                remote,
            });
        }
        let local = Arc::new(local::LocalAgent::persistent(
            local::NodeInfo {
                id: crate::vocab::node_uuid(id),
                name: config.node_name.clone(),
                address: config.advertise().to_string(),
                datacenter: config.datacenter.clone(),
                server: config.role == Role::Server,
                port: quic_addr.port(),
            },
            config.data_dir.join("agent-local"),
        ));
        let (defined, defined_checks) = crate::http::agent::config_definitions(&config)
            .map_err(|e| AgentError::Config(e.to_string()))?;
        local
            .update(|l| l.apply_config(defined, defined_checks))
            .map_err(|e| AgentError::Config(e.to_string()))?;
        let handler = AgentRpc::new(&config.node_name, &config.datacenter).with_dispatcher(
            dispatcher.clone(),
            server.as_ref().map(|s| s.me.clone()),
            config.bootstrap_expect,
        );
        let services = services.with(
            Alpn::Rpc,
            RpcService::new(Arc::new(handler), max_frame, metrics.transport.clone()),
        );
        transport.serve(services, serving.clone());
        let lan_coordinates = Arc::new(crate::coordinate::Estimator::default());
        let gossip = Gossip::lan(
            LanConfig {
                node: config.node_name.clone(),
                node_id: crate::vocab::node_uuid(id),
                role: config.role,
                datacenter: config.datacenter.clone(),
                bind: SocketAddr::new(config.bind_addr, config.ports.lan),
                advertise: SocketAddr::new(config.advertise(), config.ports.lan),
                seeds: config
                    .lan_join
                    .iter()
                    .map(|a| SocketAddr::new(a.ip, a.port.unwrap_or(config.ports.lan)))
                    .collect(),
                quic: quic_addr,
                http: SocketAddr::new(config.advertise(), config.ports.http),
                wan: server.as_ref().map(|s| s.wan_addr),
                keyring: crate::gossip::keyring::Stored::open(
                    &config.data_dir,
                    config.encrypt.as_ref(),
                )?,
                options: GossipOptions {
                    reconnect_timeout: config
                        .reconnect_timeout
                        .map_or(GossipOptions::default().reconnect_timeout, |d| d.0),
                    ..GossipOptions::default()
                },
                coordinates: lan_coordinates.clone(),
            },
            metrics.gossip.clone(),
            shutdown.child_token(),
        )
        .await?;
        dispatcher.set_lan(gossip.clone());
        let members = gossip.members();
        let mut loops = Loops::default();
        match &server {
            Some(s) => s.spawn_loops(
                &mut loops,
                &config,
                &transport,
                &dispatcher,
                members.clone(),
                &shutdown,
            ),
            None => loops.spawn(
                "track_servers",
                track_servers(
                    members.clone(),
                    servers,
                    config.datacenter.clone(),
                    shutdown.child_token(),
                ),
            ),
        }
        loops.spawn(
            "checks",
            checks::run(
                local.clone(),
                config
                    .check_update_interval
                    .map_or(checks::DEFAULT_OUTPUT_EVERY, |d| d.0),
                shutdown.child_token(),
            ),
        );
        loops.spawn(
            "coordinates",
            coordinates::run(
                config.node_name.clone(),
                lan_coordinates.clone(),
                dispatcher.clone(),
                members.clone(),
                config
                    .sync_coordinate_interval_min
                    .map_or(coordinates::DEFAULT_INTERVAL_MIN, |d| {
                        d.0.max(Duration::from_millis(100))
                    }),
                shutdown.child_token(),
            ),
        );
        loops.spawn(
            "anti_entropy",
            anti_entropy::run(
                local.clone(),
                dispatcher.clone(),
                config.sync_interval.map_or(DEFAULT_SYNC_INTERVAL, |d| {
                    d.0.max(Duration::from_millis(100))
                }),
                shutdown.child_token(),
            ),
        );
        let cache = crate::cache::AgentCache::new(
            Arc::new(dispatcher.clone()),
            metrics.cache.clone(),
            crate::cache::CacheLimits::default(),
            shutdown.child_token(),
        );
        let resolver = crate::dns::Resolver::new(
            &config.node_name,
            &config.domain,
            &config.dns,
            dispatcher.clone(),
            cache.clone(),
            members.clone(),
            config.bind_addr,
            metrics.dns.clone(),
        );
        let dns_bind = SocketAddr::new(config.bind_addr, config.ports.dns);
        let (dns_addr, dns_task) = crate::dns::serve(dns_bind, resolver, shutdown.child_token())
            .await
            .map_err(|e| AgentError::Dns {
                addr: dns_bind,
                reason: e.to_string(),
            })?;
        let mut api = crate::http::Api::new(
            dispatcher.clone(),
            local,
            members,
            metrics.clone(),
            shutdown.clone(),
        )
        .with_coordinates(lan_coordinates.clone())
        .with_pools(gossip.clone(), server.as_ref().map(|s| s.wan.clone()))
        .with_config_file(config.source.clone())
        .with_cache(cache.clone())
        .with_ui(config.ui);
        if config.acl.enabled {
            api = api.with_acl(crate::http::AclEdge::new(primary, resolved_tokens()));
        }
        let https = match config.https_bind() {
            Some(addr) => {
                let tls = tls
                    .https_config(config.tls.verify_incoming)
                    .map_err(TransportError::from)?;
                Some((addr, Arc::new(tls)))
            }
            None => None,
        };
        let (http_addr, https_addr, http_task) = crate::http::serve(
            config.http_bind(),
            https,
            api,
            config.limits,
            shutdown.child_token(),
        )
        .await
        .map_err(|e| AgentError::Http {
            addr: config.http_bind(),
            reason: e.to_string(),
        })?;
        info!(
            node = %config.node_name,
            http = %http_addr,
            https = ?https_addr,
            dns = %dns_addr,
            datacenter = %config.datacenter,
            role = %config.role,
            quic = %transport.local_addr(),
            loops = loops.len(),
            "agent started"
        );
        serving_guard.disarm();
        let (raft, wan) = match server {
            Some(s) => (Some(s.raft), Some(s.wan)),
            None => (None, None),
        };
        Ok(Agent {
            gossip,
            wan,
            raft,
            transport,
            http_task,
            dns_task,
            loops,
            cache,
            serving,
            shutdown,
        })
    }

    /// Waits for the cancellation signal, then stops subsystems in order, each within a
    /// bound: leave the gossip pools (QUIC still serving), stop HTTP and DNS (requests in
    /// flight past the bound are aborted), await the background loops (aborted past the
    /// bound), stop Raft, then QUIC. Nothing of this agent's own writes to Raft once it
    /// is stopped.
    pub async fn run_until_shutdown(self) {
        self.shutdown.cancelled().await;
        info!("leaving and shutting down");
        // Tell the pools first, so the leader deregisters this node rather than failing it,
        // and other DCs stop routing to it.
        let wan_leave = async {
            if let Some(wan) = &self.wan {
                wan.leave().await;
            }
        };
        let _ = tokio::time::timeout(
            SHUTDOWN_BOUND,
            futures::future::join(self.gossip.leave(), wan_leave),
        )
        .await;
        // The HTTP server stops taking requests first and lets in-flight ones finish.
        stop_task("http", self.http_task).await;
        stop_task("dns", self.dns_task).await;
        self.cache.close(SHUTDOWN_BOUND).await;
        self.loops.stop(SHUTDOWN_BOUND).await;
        info!("background tasks stopped");
        if let Some(raft) = &self.raft {
            let _ = tokio::time::timeout(SHUTDOWN_BOUND, raft.shutdown()).await;
            info!("raft stopped");
        }
        self.serving.cancel();
        self.transport.close(SHUTDOWN_BOUND).await;
        info!("stopped");
    }
}

/// Waits up to [`SHUTDOWN_BOUND`] for a serving task (which has been told to stop) to end;
/// past it, aborts it and what it still serves.
async fn stop_task(name: &'static str, mut task: JoinHandle<()>) {
    if tokio::time::timeout(SHUTDOWN_BOUND, &mut task)
        .await
        .is_err()
    {
        warn!(task = name, "still serving at shutdown: aborted");
        task.abort();
        let _ = task.await;
    }
}
