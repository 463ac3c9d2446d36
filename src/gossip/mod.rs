//! Gossip: chitchat pools and what agents publish in them. Two pools use the same machinery
//! ([`Gossip`]): the LAN pool of one datacenter, servers and clients alike, over UDP
//! ([`sealed`]: AES-256-GCM when the DC has a gossip key; [`sync`]: push-pull over TCP for
//! a member that is behind; [`swim`]: failure detection), and the WAN pool of the servers
//! of every DC, over the QUIC transport's `wan-gossip` ALPN ([`quic`], [`wan`]). Each
//! member publishes what the others need to reach it (role, datacenter, QUIC, WAN and HTTP
//! addresses, build, node ID, DC leadership); SWIM says who is alive on the LAN, chitchat's
//! phi-accrual failure detector on the WAN. The module turns chitchat's state into a [`Member`] list (Consul's
//! statuses: alive, left, failed), published on a watch channel for the agent (server
//! discovery, `/v1/agent/members`, the federation router) and the leader's catalog
//! reconciliation.

pub mod events;
pub mod keyring;
pub mod quic;
pub mod sealed;
pub mod swim;
pub mod sync;
pub mod wan;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::Transport as ChitchatTransport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, DigestBound, FailureDetectorConfig,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::GossipMetrics;
use crate::vocab::Role;

const KEY_ROLE: &str = "role";
const KEY_DC: &str = "dc";
const KEY_QUIC: &str = "quic";
const KEY_WAN: &str = "wan";
const KEY_HTTP: &str = "http";
const KEY_BUILD: &str = "build";
const KEY_ID: &str = "id";
const KEY_STATUS: &str = "status";
const KEY_LEADER: &str = "leader";
const STATUS_LEFT: &str = "left";
/// `forced:<name>` = `<generation>[:prune]`: a member forced out of the pool by this one
/// (Consul's force-leave): that incarnation of it, and any older one, is shown as left (or
/// not at all, pruned) by every member; a restarted one (a newer generation) is not.
const KEY_FORCED: &str = "forced:";

/// Why a member could not be forced out of the pool.
#[derive(Debug, thiserror::Error)]
pub enum ForceLeaveError {
    /// The pool has no member of that name.
    #[error("No node found with name {0:?}")]
    Unknown(String),
    /// It is alive: forcing it out would not last (it gossips on).
    #[error("node {0:?} is alive: only a failed node can be forced to leave")]
    Alive(String),
}

/// A member's state, with Consul's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberStatus {
    /// Reachable.
    Alive,
    /// Left gracefully.
    Left,
    /// Detected as failed.
    Failed,
}

impl MemberStatus {
    /// Consul's `Status` code: 1 alive, 3 left, 4 failed.
    pub fn code(self) -> u8 {
        match self {
            MemberStatus::Alive => 1,
            MemberStatus::Left => 3,
            MemberStatus::Failed => 4,
        }
    }

    /// Consul's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
        }
    }
}

/// One agent of a pool, as gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node name (`node.dc` in the WAN pool, as Consul names WAN members).
    pub name: String,
    /// Node UUID (as in the catalog).
    pub id: String,
    /// Its gossip address (LAN: its advertised IP and LAN port; WAN: its WAN QUIC address).
    pub gossip_addr: SocketAddr,
    /// Server or client.
    pub role: Role,
    /// Its datacenter.
    pub datacenter: String,
    /// Its QUIC address within its DC.
    pub quic: Option<SocketAddr>,
    /// Servers, in the LAN pool: the QUIC address other DCs reach it at (flood-join).
    pub wan: Option<SocketAddr>,
    /// Its HTTP API address.
    pub http: Option<SocketAddr>,
    /// Its build version.
    pub build: String,
    /// WAN pool: whether it leads its DC's Raft.
    pub leader: bool,
    /// Alive, left or failed.
    pub status: MemberStatus,
    /// chitchat's generation of this incarnation (a restarted agent has a newer one).
    pub generation: u64,
}

/// Gossip timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GossipOptions {
    /// How often each agent gossips with a few others (Consul's LAN: 200 ms).
    pub interval: Duration,
    /// Phi-accrual threshold above which a member is failed.
    pub phi_threshold: f64,
    /// How long a failed or left member is remembered before it is forgotten (reaped).
    pub reconnect_timeout: Duration,
}

impl Default for GossipOptions {
    fn default() -> Self {
        GossipOptions {
            interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            reconnect_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// What this agent publishes and where it gossips.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// Node name.
    pub node: String,
    /// Node UUID.
    pub node_id: String,
    /// Server or client.
    pub role: Role,
    /// Datacenter (also chitchat's cluster id: pools of different DCs never mix).
    pub datacenter: String,
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Address others reach us at.
    pub advertise: SocketAddr,
    /// Members to join through.
    pub seeds: Vec<SocketAddr>,
    /// Our QUIC address.
    pub quic: SocketAddr,
    /// Our HTTP address.
    pub http: SocketAddr,
    /// Servers: the QUIC address other DCs reach us at, for flood-join.
    pub wan: Option<SocketAddr>,
    /// The gossip keyring, if the DC encrypts gossip.
    pub keyring: Option<keyring::Stored>,
    /// Timings.
    pub options: GossipOptions,
    /// This agent's LAN coordinate, updated from round trips on the gossip path.
    pub coordinates: Arc<crate::coordinate::Estimator>,
}

/// How long `agent/join` waits for the address to show up as a live member.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a join failed (retrying later may work: the member may be starting).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Nothing answered at the address as a member of this pool.
    #[error("Failed to join {0}: {1}")]
    Unreachable(SocketAddr, String),
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
#[error("{network} gossip on {addr}: {reason}")]
pub struct GossipError {
    /// `LAN` or `WAN`.
    pub network: &'static str,
    /// The bind address.
    pub addr: SocketAddr,
    /// What failed (typically the port is taken; not retryable without a change).
    pub reason: String,
}

/// What a pool member is and publishes, whichever the pool.
struct PoolConfig {
    network: &'static str,
    name: String,
    cluster_id: String,
    listen: SocketAddr,
    advertise: SocketAddr,
    seeds: Vec<SocketAddr>,
    kvs: Vec<(String, String)>,
    options: GossipOptions,
    /// This incarnation's chitchat generation.
    generation: u64,
    /// LAN: SWIM decides who is alive, and digests are bounded. WAN (a few servers per DC):
    /// chitchat's phi-accrual detector over full digests.
    swim: Option<Arc<swim::Swim>>,
}

/// Most nodes a LAN Syn's digest names (chitchat patch, `vendor/chitchat/PATCH.md`): what
/// keeps the gossip an agent sends per second flat as the pool grows (about 20 entries of
/// ~55 bytes in each of ~30 digests a second).
pub const LAN_DIGEST_NODES: usize = 20;

/// How many LAN gossip rounds apart chitchat's work over every node runs (its
/// phi-accrual liveness, a backstop behind SWIM, and the expiry of deleted keys): five
/// rounds, once a second, instead of every round (chitchat patch,
/// `vendor/chitchat/PATCH.md`).
const HOUSEKEEPING_ROUNDS: u32 = 5;

/// A running member of a gossip pool (LAN or WAN). Clones share the member.
#[derive(Clone)]
pub struct Gossip {
    handle: Arc<ChitchatHandle>,
    members: watch::Receiver<Vec<Member>>,
    interval: Duration,
    /// LAN, encrypted: the keyring.
    keyring: Option<Arc<KeyringState>>,
    /// The user events this member received.
    events: Arc<EventState>,
    /// LAN: push-pull syncs over TCP on the gossip port (`join` starts with one).
    sync: Option<sync::SyncContext>,
}

/// A member's user events: the log, and a signal bumped on every new one (for blocking
/// `event/list`).
struct EventState {
    log: std::sync::Mutex<events::EventLog>,
    changed: watch::Sender<u64>,
}

impl EventState {
    fn deliver(&self, e: events::UserEvent) {
        let mut log = self.log.lock().expect("event log lock");
        if log.receive(e) {
            let index = log.index();
            drop(log);
            self.changed.send_replace(index);
        }
    }
}

/// A LAN member's keyring: its keys (held across an operation), its file, the sealer of
/// its socket.
struct KeyringState {
    stored: tokio::sync::Mutex<keyring::Stored>,
    sealer: sealed::Sealer,
    datacenter: String,
    metrics: GossipMetrics,
}

/// How long the agent asked for a keyring operation waits for every live member to apply
/// it (Consul's serf query waits a few seconds in a small pool).
pub const KEYRING_CONFIRM: Duration = Duration::from_secs(5);

impl Gossip {
    /// Joins the DC's LAN pool; the member list is kept current until `shutdown` fires.
    pub async fn lan(
        config: LanConfig,
        metrics: GossipMetrics,
        shutdown: CancellationToken,
    ) -> Result<Gossip, GossipError> {
        let role = match config.role {
            Role::Server => "server",
            Role::Client => "client",
        };
        let mut kvs = vec![
            (KEY_ROLE.to_string(), role.to_string()),
            (KEY_DC.to_string(), config.datacenter.clone()),
            (KEY_QUIC.to_string(), config.quic.to_string()),
            (KEY_HTTP.to_string(), config.http.to_string()),
            (KEY_BUILD.to_string(), env!("CARGO_PKG_VERSION").to_string()),
            (KEY_ID.to_string(), config.node_id.clone()),
        ];
        if let Some(wan) = config.wan {
            kvs.push((KEY_WAN.to_string(), wan.to_string()));
        }
        let keys = config
            .keyring
            .as_ref()
            .map_or(Vec::new(), |k| k.ring.keys().to_vec());
        let sealer = sealed::Sealer::new(&keys);
        let generation = now_micros();
        let (probe_tx, probe_rx) = tokio::sync::mpsc::channel(1024);
        let probe_socket = Arc::new(std::sync::OnceLock::new());
        let transport = sealed::SealedUdpTransport::new(
            sealer.clone(),
            metrics.clone(),
            config.coordinates.clone(),
            sealed::ProbeHook {
                me: (config.node.clone(), generation),
                inbox: probe_tx,
                socket: probe_socket.clone(),
            },
        );
        let swim = Arc::new(swim::Swim::new(&config.node, generation));
        let node = config.node.clone();
        let probe_metrics = metrics.clone();
        let sync_metrics = metrics.clone();
        let sync_sealer = sealer.clone();
        let datacenter = config.datacenter.clone();
        let keyring = config.keyring.map(|stored| {
            metrics.set_keyring_keys(stored.ring.keys().len());
            kvs.push((keyring::KEY_HELD.to_string(), stored.ring.held()));
            Arc::new(KeyringState {
                stored: tokio::sync::Mutex::new(stored),
                sealer,
                datacenter,
                metrics: metrics.clone(),
            })
        });
        let shutdown_events = shutdown.clone();
        let shutdown_sync = shutdown.clone();
        let sync_listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|e| GossipError {
                network: "LAN",
                addr: config.bind,
                reason: format!("push-pull sync over TCP: {e}"),
            })?;
        let seeds = config.seeds.clone();
        let cluster = config.datacenter.clone();
        let advertise = config.advertise;
        let mut gossip = Gossip::start(
            PoolConfig {
                network: "LAN",
                name: config.node,
                cluster_id: config.datacenter,
                listen: config.bind,
                advertise: config.advertise,
                seeds: config.seeds,
                kvs,
                options: config.options,
                generation,
                swim: Some(swim.clone()),
            },
            &transport,
            metrics,
            shutdown.clone(),
        )
        .await?;
        let socket = probe_socket
            .get()
            .cloned()
            .expect("chitchat opened the gossip socket");
        tokio::spawn(swim::run(
            swim,
            move |to, msg: &swim::Msg| socket.send(to, msg),
            probe_rx,
            gossip.handle.chitchat(),
            gossip.members(),
            node,
            swim::ProbeConfig {
                interval: config.options.interval,
                timeout: config.options.interval / 2,
            },
            probe_metrics,
            shutdown.clone(),
        ));
        if let Some(k) = &keyring {
            tokio::spawn(follow_keyring(
                gossip.handle.chitchat(),
                k.clone(),
                gossip.interval,
                shutdown,
            ));
        }
        gossip.keyring = keyring;
        let ctx = sync::SyncContext {
            chitchat: gossip.handle.chitchat(),
            cluster,
            sealer: sync_sealer,
            metrics: sync_metrics,
        };
        tokio::spawn(sync::serve(
            sync_listener,
            ctx.clone(),
            shutdown_sync.clone(),
        ));
        tokio::spawn(catch_up(
            ctx.clone(),
            seeds,
            gossip.members(),
            advertise,
            gossip.interval,
            shutdown_sync,
        ));
        gossip.sync = Some(ctx);
        let events = subscribe_events(&gossip.handle.chitchat()).await;
        tokio::spawn(follow_events(
            events,
            gossip.events.clone(),
            gossip.interval,
            shutdown_events,
        ));
        Ok(gossip)
    }

    async fn start(
        config: PoolConfig,
        transport: &dyn ChitchatTransport,
        metrics: GossipMetrics,
        shutdown: CancellationToken,
    ) -> Result<Gossip, GossipError> {
        let id = ChitchatId::new(config.name.clone(), config.generation, config.advertise);
        let o = config.options;
        let chitchat_config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: config.cluster_id,
            gossip_interval: o.interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: o.phi_threshold,
                sampling_window_size: 1000,
                max_interval: o.interval * 50,
                initial_interval: o.interval,
                dead_node_grace_period: o.reconnect_timeout,
            },
            marked_for_deletion_grace_period: o.reconnect_timeout,
            catchup_callback: None,
            extra_liveness_predicate: None,
            digest_bound: config.swim.is_some().then_some(DigestBound {
                max_nodes: LAN_DIGEST_NODES,
                recent_period: o.interval * 15,
                housekeeping_period: o.interval * HOUSEKEEPING_ROUNDS,
            }),
        };
        let handle = chitchat::spawn_chitchat(chitchat_config, config.kvs, transport)
            .await
            .map_err(|e| GossipError {
                network: config.network,
                addr: config.listen,
                reason: format!("{e:#}"),
            })?;
        let changed: ChangedNodes = Default::default();
        if let Some(swim) = &config.swim {
            let chitchat = handle.chitchat();
            let c = chitchat.lock().await;
            let claims = swim.clone();
            c.subscribe_event(swim::KEY_SUSPECT, move |e| {
                claims.on_claim(&e.node.node_id, e.key, e.value)
            })
            .forever();
            let incarnations = swim.clone();
            c.subscribe_event(swim::KEY_INCARNATION, move |e| {
                incarnations.on_incarnation(&e.node.node_id, e.node.generation_id, e.value)
            })
            .forever();
            let changes = changed.clone();
            c.subscribe_event("", move |e| {
                let mut nodes = changes.lock().expect("changed nodes lock");
                if !nodes.contains(e.node) {
                    nodes.insert(e.node.clone());
                }
            })
            .forever();
        }
        let (tx, members) = watch::channel(Vec::new());
        tokio::spawn(watch_members(
            handle.chitchat(),
            tx,
            o.interval,
            config.swim.map(|s| (s, changed)),
            metrics,
            shutdown,
        ));
        info!(network = config.network, listen = %config.listen, seeds = config.seeds.len(), "gossip started");
        Ok(Gossip {
            handle: Arc::new(handle),
            members,
            interval: o.interval,
            keyring: None,
            events: Arc::new(EventState {
                log: Default::default(),
                changed: watch::channel(0).0,
            }),
            sync: None,
        })
    }

    /// The address this member gossips at (the default port of a join address).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.handle.chitchat_id().gossip_advertise_addr
    }

    /// The member list, updated as gossip learns.
    pub fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.members.clone()
    }

    /// Publishes `key = value` about this member (e.g. DC leadership in the WAN pool).
    async fn publish(&self, key: &str, value: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(key, value))
            .await;
    }

    /// Joins the pool of the member at `addr` (`agent/join`): LAN, a push-pull sync with
    /// it first (the pool's state in one exchange, as Consul's join does), then gossips
    /// with it until a live member at that address is in the member list, for at most
    /// [`JOIN_TIMEOUT`].
    /// Returns how many members are known then.
    pub async fn join(&self, addr: SocketAddr) -> Result<usize, JoinError> {
        if let Some(ctx) = &self.sync {
            // Bounded well inside the join's own time: an address whose TCP port drops
            // packets must not hold the join back.
            match tokio::time::timeout(JOIN_TIMEOUT / 5, sync::pull(addr, ctx)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => info!(error = %e, "join: no push-pull sync, joining by gossip"),
                Err(_) => {
                    info!(%addr, "join: no push-pull sync in time, joining by gossip")
                }
            }
        }
        let mut members = self.members.clone();
        let joined = |ms: &[Member]| {
            ms.iter()
                .any(|m| m.gossip_addr == addr && m.status == MemberStatus::Alive)
        };
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        loop {
            if joined(&members.borrow_and_update()) {
                return Ok(members.borrow().len());
            }
            self.gossip_with(addr);
            let next = (tokio::time::Instant::now() + self.interval).min(deadline);
            if tokio::time::timeout_at(next, members.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                return Err(JoinError::Unreachable(addr, "the pool stopped".into()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JoinError::Unreachable(
                    addr,
                    format!("no member of this pool answered within {JOIN_TIMEOUT:?}"),
                ));
            }
        }
    }

    /// Spreads `event` through this pool (a server, for `event/fire`): stamped with the
    /// next Lamport time, published under its slot, delivered here at once. Returns it
    /// as stamped.
    pub async fn fire_event(&self, event: events::UserEvent) -> events::UserEvent {
        let e = self.events.log.lock().expect("event log lock").stamp(event);
        self.publish(&e.key(), &e.encode()).await;
        self.events.deliver(e.clone());
        e
    }

    /// The user events this member received, oldest first, and the list's index.
    pub fn events(&self) -> (Vec<events::UserEvent>, u64) {
        let log = self.events.log.lock().expect("event log lock");
        (log.events().cloned().collect(), log.index())
    }

    /// Changes whenever a new user event arrives (its value: the list's index).
    pub fn event_changes(&self) -> watch::Receiver<u64> {
        self.events.changed.subscribe()
    }

    /// Forces the failed member `name` out of the pool (Consul's force-leave): shown as
    /// left, or with `prune` removed from the member list, by every member once this
    /// spreads. A later incarnation of it (restarted) is a member again.
    pub async fn force_leave(&self, name: &str, prune: bool) -> Result<(), ForceLeaveError> {
        self.handle
            .with_chitchat(|c| {
                let newest = c
                    .node_states()
                    .keys()
                    .filter(|id| &*id.node_id == name)
                    .max_by_key(|id| id.generation_id)
                    .cloned()
                    .ok_or_else(|| ForceLeaveError::Unknown(name.to_string()))?;
                let alive = self.members.borrow().iter().any(|m| {
                    m.name == name
                        && m.generation == newest.generation_id
                        && m.status == MemberStatus::Alive
                });
                if alive {
                    return Err(ForceLeaveError::Alive(name.to_string()));
                }
                let value = match prune {
                    true => format!("{}:prune", newest.generation_id),
                    false => newest.generation_id.to_string(),
                };
                c.self_node_state()
                    .set(format!("{KEY_FORCED}{name}"), value);
                Ok(())
            })
            .await
    }

    /// The keys every live member holds (`consul keyring -list`).
    pub async fn keyring_list(&self) -> Result<keyring::KeyringReport, keyring::KeyringError> {
        let k = self
            .keyring
            .as_ref()
            .ok_or(keyring::KeyringError::NotEnabled)?;
        let members = self.live_keyrings().await;
        let stored = k.stored.lock().await;
        Ok(keyring::KeyringReport::of(
            &k.datacenter,
            &stored.ring,
            &members,
            None,
        ))
    }

    /// Applies a keyring operation here, publishes it to the pool and waits (bounded) until
    /// every live member applied it; the report names those that did not. An operation
    /// this agent refuses (using a key it does not hold, removing its primary key) is
    /// refused at once and published to no one.
    pub async fn keyring_operation(
        &self,
        verb: keyring::KeyVerb,
        key: &crate::config::GossipKey,
    ) -> Result<keyring::KeyringReport, keyring::KeyringError> {
        let k = self
            .keyring
            .as_ref()
            .ok_or(keyring::KeyringError::NotEnabled)?;
        let outcome = self.issue_keyring_operation(k, verb, key).await;
        k.metrics
            .keyring_operation(verb.as_str(), matches!(&outcome, Ok(r) if r.confirmed()));
        outcome
    }

    async fn issue_keyring_operation(
        &self,
        k: &KeyringState,
        verb: keyring::KeyVerb,
        key: &crate::config::GossipKey,
    ) -> Result<keyring::KeyringReport, keyring::KeyringError> {
        let op = {
            let mut stored = k.stored.lock().await;
            let mut ring = stored.ring.clone();
            let op = keyring::KeyOp {
                id: ring.next_id(now_micros()),
                verb,
                key: key.clone(),
            };
            let changed = ring.apply_op(&op)?;
            // Sealed under the primary key before this operation changes it: every member
            // holds that one.
            let published = keyring::encode_op(&op, &k.sealer);
            let before = std::mem::replace(&mut stored.ring, ring);
            if let Err(e) = stored.save() {
                stored.ring = before;
                return Err(e);
            }
            if changed {
                k.sealer.set_keys(stored.ring.keys());
                k.metrics.set_keyring_keys(stored.ring.keys().len());
            }
            let held = stored.ring.held();
            self.handle
                .with_chitchat(|c| {
                    let me = c.self_node_state();
                    me.set(keyring::KEY_HELD, held.clone());
                    me.set(keyring::KEY_OP, published.clone());
                })
                .await;
            op
        };
        let deadline = tokio::time::Instant::now() + KEYRING_CONFIRM;
        loop {
            let members = self.live_keyrings().await;
            let report = {
                let stored = k.stored.lock().await;
                keyring::KeyringReport::of(&k.datacenter, &stored.ring, &members, Some(op.id))
            };
            if report.confirmed() || tokio::time::Instant::now() >= deadline {
                return Ok(report);
            }
            tokio::time::sleep(self.interval.min(Duration::from_millis(50))).await;
        }
    }

    /// Every live member's keyring as it published it (a member that left or failed is
    /// not counted).
    async fn live_keyrings(&self) -> Vec<keyring::MemberKeys> {
        let alive: Vec<ChitchatId> = self
            .members
            .borrow()
            .iter()
            .filter(|m| m.status == MemberStatus::Alive)
            .map(|m| ChitchatId::new(m.name.clone(), m.generation, m.gossip_addr))
            .collect();
        self.handle
            .with_chitchat(|c| {
                alive
                    .iter()
                    .filter_map(|id| {
                        let state = c.node_state(id)?;
                        Some(keyring::MemberKeys {
                            name: id.node_id.to_string(),
                            held: state.get(keyring::KEY_HELD).map(str::to_string),
                            failed: state.get(keyring::KEY_FAILED).map(str::to_string),
                        })
                    })
                    .collect()
            })
            .await
    }

    /// Gossips with `addr` at once: how a member that knows the pool pulls in one that
    /// does not (flood-join), or rejoins a seed.
    fn gossip_with(&self, addr: SocketAddr) {
        let _ = self.handle.gossip(addr);
    }

    /// Stops gossiping at once, without telling anyone (what `kill -9` does to an agent):
    /// for benchmarks of failure detection in one process. The member's other loops stop
    /// with the shutdown signal it was started with.
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// Leaves gracefully: tells the pool this member left, gives gossip a few rounds to
    /// spread it (bounded), then stops.
    pub async fn leave(&self) {
        self.publish(KEY_STATUS, STATUS_LEFT).await;
        tokio::time::sleep((self.interval * 5).min(Duration::from_secs(1))).await;
        let _ = self.handle.initiate_shutdown();
        if let Err(e) = self.handle.termination_watcher().await {
            warn!(error = %e, "gossip stopped with an error");
        }
    }
}

/// Pulls the pool's state when this member is behind ([`sync`]), as [`sync::CatchUp`]
/// decides, checked every `period` (a gossip round): from a random live member, or from
/// a random seed while it knows none. One sync at a time.
async fn catch_up(
    ctx: sync::SyncContext,
    seeds: Vec<SocketAddr>,
    members: watch::Receiver<Vec<Member>>,
    me: SocketAddr,
    period: Duration,
    shutdown: CancellationToken,
) {
    use rand::seq::IndexedRandom;
    let seeds: Vec<SocketAddr> = seeds.into_iter().filter(|s| *s != me).collect();
    let mut policy = sync::CatchUp::default();
    let mut rounds = tokio::time::interval(period);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = rounds.tick() => {}
        }
        let known = ctx.chitchat.lock().await.node_states().len();
        if !policy.due(known) {
            continue;
        }
        let peer = {
            let members = members.borrow();
            let alive: Vec<SocketAddr> = members
                .iter()
                .filter(|m| m.status == MemberStatus::Alive && m.gossip_addr != me)
                .map(|m| m.gossip_addr)
                .collect();
            let candidates = if alive.is_empty() { &seeds } else { &alive };
            candidates.choose(&mut rand::rng()).copied()
        };
        let Some(peer) = peer else { continue };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            pulled = sync::pull(peer, &ctx) => match pulled {
                Ok(learned) => policy.pulled(learned),
                Err(e) => debug!(error = %e, "catch-up sync failed"),
            },
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Applies, every gossip interval, the keyring operations other members published that
/// this one has not applied yet, oldest first; saves the keyring, hands the keys to the
/// socket and publishes what it holds (or why an operation could not be applied). The
/// operation each member last published is kept from chitchat's key-change callback, so
/// no round walks the pool.
async fn follow_keyring(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    k: Arc<KeyringState>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let last_ops: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        Default::default();
    let ops = last_ops.clone();
    follow_keys(&chitchat, keyring::KEY_OP, move |node, key, value| {
        if key.is_empty() {
            let mut ops = ops.lock().expect("keyring ops lock");
            ops.insert(node.node_id.to_string(), value.to_string());
        }
    })
    .await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let published: Vec<String> = last_ops
            .lock()
            .expect("keyring ops lock")
            .values()
            .cloned()
            .collect();
        let mut stored = k.stored.lock().await;
        let applied = stored.ring.applied();
        let mut ops: Vec<Result<keyring::KeyOp, u64>> = published
            .iter()
            .filter_map(|v| keyring::decode_op(v, &k.sealer))
            .filter(|op| op.as_ref().map_or_else(|id| *id, |op| op.id) > applied)
            .collect();
        if ops.is_empty() {
            continue;
        }
        ops.sort_by_key(|op| op.as_ref().map_or_else(|id| *id, |op| op.id));
        let before = stored.ring.clone();
        let mut failed = None;
        for op in &ops {
            match op {
                Ok(op) => {
                    if let Err(e) = stored.ring.apply_op(op) {
                        failed = Some((op.id, e.to_string()));
                    }
                }
                Err(id) => {
                    stored.ring.skip(*id);
                    failed = Some((
                        *id,
                        "the operation is not sealed under a key held here".to_string(),
                    ));
                }
            }
        }
        if let Err(e) = stored.save() {
            warn!(error = %e, "keyring operation not applied: the keyring cannot be saved");
            failed = Some((stored.ring.applied(), e.to_string()));
            stored.ring = before.clone();
        }
        if stored.ring.keys() != before.keys() {
            k.sealer.set_keys(stored.ring.keys());
            k.metrics.set_keyring_keys(stored.ring.keys().len());
            info!(keys = stored.ring.keys().len(), "gossip keyring changed");
        }
        let held = stored.ring.held();
        drop(stored);
        let mut c = chitchat.lock().await;
        let me = c.self_node_state();
        me.set(keyring::KEY_HELD, held);
        if let Some((id, why)) = failed {
            warn!(op = id, reason = %why, "keyring operation not applied");
            me.set(keyring::KEY_FAILED, format!("{id} {why}"));
        }
    }
}

/// User events received and not yet delivered.
type EventQueue = Arc<std::sync::Mutex<Vec<events::UserEvent>>>;

/// Calls `record` with (member, key without `prefix`, value) for every key under `prefix`
/// the pool's members publish: at once for those already known, then for every new value
/// (chitchat's key-change callback, under its lock: `record` only records), so that no
/// round needs to walk the pool.
async fn follow_keys(
    chitchat: &tokio::sync::Mutex<Chitchat>,
    prefix: &'static str,
    record: impl Fn(&ChitchatId, &str, &str) + Send + Sync + 'static,
) {
    let c = chitchat.lock().await;
    for (id, state) in c.node_states() {
        for (key, v) in state.iter_prefix(prefix) {
            record(id, &key[prefix.len()..], &v.value);
        }
    }
    c.subscribe_event(prefix, move |e| record(e.node, e.key, e.value))
        .forever();
}

/// Queues every user event members publish (keys under [`events::KEY_PREFIX`]).
async fn subscribe_events(chitchat: &tokio::sync::Mutex<Chitchat>) -> EventQueue {
    let queued: EventQueue = Default::default();
    let queue = queued.clone();
    follow_keys(chitchat, events::KEY_PREFIX, move |_, _, value| {
        if let Some(event) = events::UserEvent::decode(value) {
            queue.lock().expect("event queue lock").push(event);
        }
    })
    .await;
    queued
}

/// Delivers the queued user events, oldest first, every gossip interval until `shutdown`
/// fires. Nothing here walks the pool (each member of a large pool would otherwise read
/// every member's state five times a second).
async fn follow_events(
    queued: EventQueue,
    state: Arc<EventState>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut found = std::mem::take(&mut *queued.lock().expect("event queue lock"));
        found.sort_by_key(|e| e.ltime);
        for e in found {
            state.deliver(e);
        }
    }
}

/// The nodes whose keys changed since the member list was last rebuilt (chitchat's
/// key-change callback records them).
type ChangedNodes = Arc<std::sync::Mutex<std::collections::HashSet<ChitchatId>>>;

/// Republishes the member list whenever it changes, checked every gossip interval. Who
/// is alive: chitchat's phi-accrual detector (WAN), or SWIM's suspicions (LAN). With SWIM
/// the list is rebuilt only when something it depends on moved (a key of some member,
/// which is also how claims and incarnations arrive; the number of nodes; a suspicion's
/// timeout), and only the members whose keys changed are described again: in a large
/// pool starting at once, rebuilding every member's entry on every change took more CPU
/// than the gossip itself.
async fn watch_members(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    tx: watch::Sender<Vec<Member>>,
    interval: Duration,
    swim: Option<(Arc<swim::Swim>, ChangedNodes)>,
    metrics: GossipMetrics,
    shutdown: CancellationToken,
) {
    let mut previous: std::collections::HashMap<String, MemberStatus> = Default::default();
    let mut described: std::collections::HashMap<ChitchatId, Described> = Default::default();
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let members = {
            let c = chitchat.lock().await;
            match &swim {
                None => {
                    let live: std::collections::HashSet<&ChitchatId> = c.live_nodes().collect();
                    Some(members_of(&c, |id| live.contains(id)))
                }
                Some((swim, changed)) => {
                    let now = tokio::time::Instant::now();
                    let mut book = swim.book.lock().expect("swim book lock");
                    let pool = c.node_states().len();
                    let changed = std::mem::take(&mut *changed.lock().expect("changed nodes lock"));
                    if changed.is_empty() && pool == described.len() && due.is_none_or(|d| now < d)
                    {
                        None
                    } else {
                        if pool < described.len() {
                            let present = c.node_states().keys().map(|id| &*id.node_id).collect();
                            book.retain(&present);
                        }
                        redescribe(&c, &mut described, changed);
                        due = book.next_due(pool, interval).filter(|d| *d > now);
                        let me = c.self_chitchat_id();
                        Some(assemble(described.iter(), |id| {
                            id == me
                                || !book.failed(&id.node_id, id.generation_id, pool, interval, now)
                        }))
                    }
                }
            }
        };
        if let Some(members) = members {
            publish_members(&tx, &metrics, &mut previous, members);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Counts the members by status (and the newly failed) and publishes the list if changed.
fn publish_members(
    tx: &watch::Sender<Vec<Member>>,
    metrics: &GossipMetrics,
    previous: &mut std::collections::HashMap<String, MemberStatus>,
    members: Vec<Member>,
) {
    for status in [
        MemberStatus::Alive,
        MemberStatus::Failed,
        MemberStatus::Left,
    ] {
        let n = members.iter().filter(|m| m.status == status).count();
        metrics.set_members(status.as_str(), n);
    }
    for m in &members {
        if m.status == MemberStatus::Failed
            && previous
                .get(&m.name)
                .is_some_and(|b| *b != MemberStatus::Failed)
        {
            metrics.member_failed();
        }
    }
    *previous = members.iter().map(|m| (m.name.clone(), m.status)).collect();
    tx.send_if_modified(|current| {
        if *current == members {
            return false;
        }
        *current = members;
        true
    });
}

/// What a member's own keys say about it, all but its status (SWIM or chitchat's
/// detector decides that): kept per node, and described again only when one of its keys
/// changed.
#[derive(Debug, Clone)]
struct Described {
    /// `None` until its role key arrived; its status is a placeholder.
    member: Option<Member>,
    /// It published that it left.
    left: bool,
    /// The members it forced out: name, generation, pruned.
    forced: Vec<(String, u64, bool)>,
}

/// Reads `state`'s keys into a [`Described`].
fn describe(id: &ChitchatId, state: &chitchat::NodeState) -> Described {
    let get = |k: &str| state.get(k).unwrap_or_default().to_string();
    let forced = state
        .iter_prefix(KEY_FORCED)
        .filter_map(|(key, value)| {
            let (generation, prune) = match value.value.split_once(':') {
                Some((g, "prune")) => (g, true),
                _ => (value.value.as_str(), false),
            };
            Some((
                key.strip_prefix(KEY_FORCED)?.to_string(),
                generation.parse::<u64>().ok()?,
                prune,
            ))
        })
        .collect();
    let role = match state.get(KEY_ROLE) {
        Some("server") => Some(Role::Server),
        Some("client") => Some(Role::Client),
        _ => None,
    };
    Described {
        member: role.map(|role| Member {
            name: id.node_id.to_string(),
            id: get(KEY_ID),
            gossip_addr: id.gossip_advertise_addr,
            role,
            datacenter: get(KEY_DC),
            quic: state.get(KEY_QUIC).and_then(|a| a.parse().ok()),
            wan: state.get(KEY_WAN).and_then(|a| a.parse().ok()),
            http: state.get(KEY_HTTP).and_then(|a| a.parse().ok()),
            build: get(KEY_BUILD),
            leader: state.get(KEY_LEADER) == Some("true"),
            status: MemberStatus::Alive,
            generation: id.generation_id,
        }),
        left: state.get(KEY_STATUS) == Some(STATUS_LEFT),
        forced,
    }
}

/// Brings `described` up to date with `c`: the `changed` nodes described again, nodes
/// gone from the pool dropped, nodes not described yet added.
fn redescribe(
    c: &Chitchat,
    described: &mut std::collections::HashMap<ChitchatId, Described>,
    changed: std::collections::HashSet<ChitchatId>,
) {
    for id in changed {
        if let Some(state) = c.node_state(&id) {
            described.insert(id.clone(), describe(&id, state));
        }
    }
    let states = c.node_states();
    described.retain(|id, _| states.contains_key(id));
    if described.len() != states.len() {
        for (id, state) in states {
            if !described.contains_key(id) {
                described.insert(id.clone(), describe(id, state));
            }
        }
    }
}

/// The members chitchat knows, as described, one per node name (the newest generation
/// wins: a restarted agent replaces its previous incarnation), sorted by name; `alive`
/// says who is alive. A member forced out (Consul's force-leave) by any member, at that
/// generation or an older one, and not alive, is left (or, pruned, not listed).
fn assemble<'a>(
    described: impl Iterator<Item = (&'a ChitchatId, &'a Described)> + Clone,
    alive: impl Fn(&ChitchatId) -> bool,
) -> Vec<Member> {
    let mut forced: std::collections::HashMap<&str, (u64, bool)> = Default::default();
    for (_, d) in described.clone() {
        for (name, generation, prune) in &d.forced {
            let entry = forced.entry(name).or_insert((*generation, *prune));
            if *generation > entry.0 {
                *entry = (*generation, *prune);
            } else if *generation == entry.0 {
                entry.1 |= *prune;
            }
        }
    }
    let mut by_name: BTreeMap<&str, (&Member, MemberStatus)> = BTreeMap::new();
    for (id, d) in described {
        let Some(member) = &d.member else {
            continue; // not yet gossiped its keys
        };
        let mut status = if d.left {
            MemberStatus::Left
        } else if alive(id) {
            MemberStatus::Alive
        } else {
            MemberStatus::Failed
        };
        if let Some((generation, prune)) = forced.get(&*id.node_id)
            && id.generation_id <= *generation
            && status != MemberStatus::Alive
        {
            if *prune {
                continue;
            }
            status = MemberStatus::Left;
        }
        match by_name.get(&*member.name) {
            Some((newer, _)) if newer.generation > member.generation => {}
            _ => {
                by_name.insert(&member.name, (member, status));
            }
        }
    }
    by_name
        .into_values()
        .map(|(m, status)| Member {
            status,
            ..m.clone()
        })
        .collect()
}

/// The members chitchat knows (the WAN pool: a few servers per DC, described afresh).
fn members_of(c: &Chitchat, alive: impl Fn(&ChitchatId) -> bool) -> Vec<Member> {
    let described: Vec<(&ChitchatId, Described)> = c
        .node_states()
        .iter()
        .map(|(id, state)| (id, describe(id, state)))
        .collect();
    assemble(described.iter().map(|(id, d)| (*id, d)), alive)
}

/// A chitchat of `name` that never gossips, publishing `kvs`: what unit tests merge states
/// into and read members from.
#[cfg(test)]
pub(crate) fn test_chitchat(name: &str, generation: u64, kvs: &[(&str, &str)]) -> Chitchat {
    let id = ChitchatId::new(
        name.to_string(),
        generation,
        SocketAddr::from(([127, 0, 0, 1], 8301)),
    );
    let config = ChitchatConfig {
        listen_addr: id.gossip_advertise_addr,
        chitchat_id: id,
        cluster_id: "dc1".into(),
        gossip_interval: Duration::from_millis(200),
        seed_nodes: Vec::new(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        digest_bound: None,
    };
    let kvs = kvs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Chitchat::with_chitchat_id_and_seeds(config, watch::channel(Default::default()).1, kvs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn statuses(members: &[Member]) -> Vec<(String, MemberStatus, u64)> {
        members
            .iter()
            .map(|m| (m.name.clone(), m.status, m.generation))
            .collect()
    }

    #[test]
    fn the_described_list_matches_a_fresh_one_through_changes_restarts_and_force_leave() {
        let client = [(KEY_ROLE, "client"), (KEY_HTTP, "127.0.0.1:8500")];
        let mut me = test_chitchat("a", 1, &client);
        let b1 = test_chitchat("b", 1, &client);
        let mut c = test_chitchat("c", 1, &client);
        let keyless = test_chitchat("d", 1, &[]);
        sync::merge(
            &mut me,
            [&b1, &c, &keyless].map(|x| x.node_states().values().next().unwrap().clone()),
        );
        let mut described = HashMap::new();
        let dead: HashSet<&str> = ["b", "c"].into();
        let alive = |id: &ChitchatId| !dead.contains(&*id.node_id);
        redescribe(&me, &mut described, HashSet::new());
        let fresh = |me: &Chitchat| members_of(me, alive);
        assert_eq!(assemble(described.iter(), alive), fresh(&me));
        assert_eq!(
            statuses(&fresh(&me)),
            [
                ("a".into(), MemberStatus::Alive, 1),
                ("b".into(), MemberStatus::Failed, 1),
                ("c".into(), MemberStatus::Failed, 1)
            ],
            "d has not published its role"
        );
        // b restarts (a newer generation), c is forced out by a, c's HTTP address changes.
        let b2 = test_chitchat("b", 2, &client);
        c.self_node_state().set(KEY_HTTP, "127.0.0.3:8500");
        sync::merge(
            &mut me,
            [&b2, &c].map(|x| x.node_states().values().next().unwrap().clone()),
        );
        me.self_node_state().set(format!("{KEY_FORCED}c"), "1");
        let changed: HashSet<ChitchatId> = [
            b2.self_chitchat_id().clone(),
            c.self_chitchat_id().clone(),
            me.self_chitchat_id().clone(),
        ]
        .into();
        redescribe(&me, &mut described, changed);
        let members = assemble(described.iter(), alive);
        assert_eq!(members, fresh(&me));
        assert_eq!(
            statuses(&members),
            [
                ("a".into(), MemberStatus::Alive, 1),
                ("b".into(), MemberStatus::Failed, 2),
                ("c".into(), MemberStatus::Left, 1)
            ]
        );
        assert_eq!(members[2].http, Some("127.0.0.3:8500".parse().unwrap()));
    }
}
