//! What only a server agent runs: its Raft node (served over the `raft` ALPN), its place in
//! the WAN pool (the `wan-gossip` ALPN) with the router to other DCs, the session TTL
//! timers, and the loops that go with them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::tasks::Loops;
use super::{AgentError, bootstrap, reconcile, sessions};
use crate::config::AgentConfig;
use crate::dispatch::Dispatcher;
use crate::federation::{Router, RouterOptions};
use crate::gossip::quic::QuicGossip;
use crate::gossip::wan::{self, WanConfig};
use crate::gossip::{Gossip, Member};
use crate::metrics::Metrics;
use crate::raft::{RaftNode, RaftOptions, ServerNode};
use crate::state::session_ttl::SessionTimers;
use crate::transport::identity::Alpn;
use crate::transport::rpc::RpcService;
use crate::transport::{Services, Transport};
use crate::vocab::node_uuid;

/// A server's own parts, started before the parts every agent has.
pub struct ServerParts {
    /// Its Raft node.
    pub raft: RaftNode,
    /// Its Raft identity (name and QUIC address).
    pub me: ServerNode,
    /// Its membership of the WAN pool.
    pub wan: Gossip,
    /// Where it is reached from other DCs.
    pub wan_addr: SocketAddr,
    /// Routing to other DCs.
    pub router: Arc<Router>,
    /// The session TTL timers it keeps while it leads.
    pub session_timers: Arc<SessionTimers>,
    /// Its ACL replication figures (non-primary DCs).
    pub acl_metrics: crate::metrics::AclMetrics,
    /// Dead servers autopilot removed (a metric).
    pub autopilot_removed: prometheus::IntCounter,
    /// How its ACL replication stands (`/v1/acl/replication`).
    pub acl_replication: Arc<std::sync::Mutex<crate::acl::ReplicationStatus>>,
    /// Its WAN coordinate and the other servers' (`/v1/coordinate/datacenters`).
    pub wan_coordinates: Arc<crate::coordinate::Estimator>,
}

impl ServerParts {
    /// Opens Raft and joins the WAN pool, adding their ALPNs to `services`. `serving`
    /// stops the WAN gossip carrier, last in the ordered shutdown.
    pub async fn start(
        config: &AgentConfig,
        id: u64,
        transport: &Transport,
        metrics: &Metrics,
        services: Services,
        serving: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(ServerParts, Services), AgentError> {
        let max_frame = transport.options().max_frame;
        let (raft, handler) = RaftNode::open(
            id,
            &config.data_dir,
            &raft_options(config),
            transport.clone(),
            metrics.raft.clone(),
        )
        .await?;
        let mut services = services.with(
            Alpn::Raft,
            RpcService::new(handler, max_frame, metrics.transport.clone()),
        );
        metrics
            .registry
            .register(Box::new(crate::raft::collector::RaftCollector::new(
                raft.clone(),
            )))
            .expect("the Raft collector registers once");
        let quic_addr = SocketAddr::new(config.advertise(), transport.local_addr().port());
        let me = ServerNode {
            name: config.node_name.clone(),
            addr: quic_addr.to_string(),
        };
        let wan_addr = config.wan_advertise(transport.local_addr().port());
        let wan_coordinates = Arc::new(crate::coordinate::Estimator::default());
        let carrier = QuicGossip::new(
            transport.clone(),
            wan_addr,
            metrics.wan_gossip.clone(),
            wan_coordinates.clone(),
            serving.clone(),
        );
        services = services.with(Alpn::WanGossip, carrier.service());
        let wan = Gossip::wan(
            WanConfig {
                node: config.node_name.clone(),
                node_id: node_uuid(id),
                datacenter: config.datacenter.clone(),
                domain: config.domain.clone(),
                advertise: wan_addr,
                seeds: config.wan_seeds(),
                options: wan::default_options(),
            },
            &carrier,
            metrics.wan_gossip.clone(),
            shutdown.child_token(),
        )
        .await?;
        let router = Arc::new(Router::new(
            &config.datacenter,
            wan.members(),
            transport.clone(),
            RouterOptions::default(),
            metrics.federation.clone(),
        ));
        metrics
            .registry
            .register(Box::new(crate::federation::RttCollector::new(
                router.clone(),
            )))
            .expect("the RTT collector registers once");
        let parts = ServerParts {
            raft,
            me,
            wan,
            wan_addr,
            router,
            session_timers: Arc::new(SessionTimers::default()),
            acl_metrics: metrics.acl.clone(),
            autopilot_removed: metrics.raft.autopilot_removed.clone(),
            acl_replication: Default::default(),
            wan_coordinates,
        };
        Ok((parts, services))
    }

    /// Spawns a server's loops: bootstrap (until Raft has state), WAN flood-join and
    /// leadership publishing, session TTLs, autopilot's dead-server cleanup and catalog
    /// reconciliation on the leader.
    pub fn spawn_loops(
        &self,
        loops: &mut Loops,
        config: &AgentConfig,
        transport: &Transport,
        dispatcher: &Dispatcher,
        members: watch::Receiver<Vec<Member>>,
        shutdown: &CancellationToken,
    ) {
        loops.spawn(
            "bootstrap",
            bootstrap::run(
                self.raft.clone(),
                self.me.clone(),
                config.bootstrap_expect,
                super::join_servers(config),
                transport.clone(),
                shutdown.child_token(),
            ),
        );
        loops.spawn(
            "wan_flood_join",
            wan::flood_join(
                self.wan.clone(),
                config.datacenter.clone(),
                self.wan_addr,
                members.clone(),
                shutdown.child_token(),
            ),
        );
        loops.spawn(
            "publish_leadership",
            publish_leadership(self.wan.clone(), self.raft.clone(), shutdown.child_token()),
        );
        loops.spawn(
            "session_ttls",
            sessions::run(
                dispatcher.clone(),
                self.session_timers.clone(),
                shutdown.child_token(),
            ),
        );
        if config.autopilot.cleanup_dead_servers {
            let min_quorum = config
                .autopilot
                .min_quorum
                .or(config.bootstrap_expect.map(|n| n as usize))
                .unwrap_or(0);
            loops.spawn(
                "autopilot",
                super::autopilot::run(
                    self.raft.clone(),
                    members.clone(),
                    (min_quorum, config.autopilot.dead_server_after.0),
                    self.autopilot_removed.clone(),
                    shutdown.child_token(),
                ),
            );
        }
        loops.spawn(
            "reconcile",
            reconcile::run(dispatcher.clone(), members, shutdown.child_token()),
        );
        let primary = config
            .primary_datacenter
            .as_deref()
            .is_none_or(|p| p == config.datacenter);
        if let (true, false, Some(source)) = (
            config.acl.enabled,
            primary,
            config.primary_datacenter.clone(),
        ) {
            loops.spawn(
                "acl_replication",
                super::acl_replication::run(
                    self.raft.clone(),
                    dispatcher.clone(),
                    super::acl_replication::Replication {
                        primary: source,
                        token: config
                            .acl
                            .tokens
                            .replication
                            .clone()
                            .map(crate::acl::Secret),
                        tokens_too: config.acl.enable_token_replication,
                        metrics: self.acl_metrics.clone(),
                        status: self.acl_replication.clone(),
                    },
                    shutdown.child_token(),
                ),
            );
        }
        if let (true, true, Some(secret)) = (
            config.acl.enabled,
            primary,
            config.acl.tokens.initial_management.clone(),
        ) {
            loops.spawn(
                "acl_initial_management",
                initial_management(
                    self.raft.clone(),
                    dispatcher.clone(),
                    secret,
                    shutdown.child_token(),
                ),
            );
        }
    }
}

/// On the primary DC's leader: makes sure the configured `initial_management` secret is a
/// management token (the first time, as the ACL system's bootstrap), checked again whenever
/// this server becomes the leader.
async fn initial_management(
    raft: RaftNode,
    dispatcher: Dispatcher,
    secret: String,
    shutdown: CancellationToken,
) {
    let mut metrics = raft.raft().metrics();
    loop {
        let missing = raft.is_leader() && {
            let r = raft.read();
            r.state.acl_token_by_secret(&secret).is_none()
        };
        if missing {
            let token = crate::acl::model::Token {
                accessor_id: crate::vocab::random_uuid(),
                secret_id: secret.clone(),
                description: "Initial Management Token".into(),
                policies: vec![crate::acl::model::management_link()],
                create_ms: crate::acl::model::now_ms(),
                ..Default::default()
            };
            let bootstrapped = raft.read().state.acl_bootstrapped().is_some();
            let cmd = if bootstrapped {
                crate::state::Command::AclTokenSet(Box::new(token))
            } else {
                crate::state::Command::AclBootstrap(Box::new(token))
            };
            let write = crate::rpc::Write {
                dc: None,
                cmd,
                token: None,
            };
            match dispatcher.on_leader(write).await {
                Ok(_) => tracing::info!("ACL initial management token created"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not create the initial management token; will retry")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}

/// Keeps this server's WAN `leader` flag equal to its Raft leadership, so that other DCs
/// send it the requests only a leader answers.
async fn publish_leadership(wan: Gossip, raft: RaftNode, shutdown: CancellationToken) {
    let mut metrics = raft.raft().metrics();
    let mut published = None;
    loop {
        let leader = raft.is_leader();
        if published != Some(leader) {
            wan.set_leader(leader).await;
            published = Some(leader);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = metrics.changed() => if r.is_err() { return },
        }
    }
}

/// The Raft settings `config` asks for, defaults otherwise.
fn raft_options(config: &AgentConfig) -> RaftOptions {
    let mut opts = RaftOptions::default();
    if let Some(n) = config.raft_snapshot_threshold {
        opts.snapshot_every = n;
    }
    if let Some(d) = config.raft_snapshot_interval {
        opts.snapshot_interval = d.0;
    }
    if let Some(n) = config.raft_trailing_logs {
        opts.keep_behind_snapshot = n;
    }
    opts
}
