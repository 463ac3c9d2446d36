//! Gossip: chitchat pools and what agents publish in them. Two pools use the same machinery
//! ([`Gossip`]): the LAN pool of one datacenter, servers and clients alike, over UDP
//! ([`sealed`]: AES-256-GCM when the DC has a gossip key), and the WAN pool of the servers
//! of every DC, over the QUIC transport's `wan-gossip` ALPN ([`quic`], [`wan`]). Each
//! member publishes what the others need to reach it (role, datacenter, QUIC, WAN and HTTP
//! addresses, build, node ID, DC leadership); chitchat's phi-accrual failure detector says
//! who is alive. The module turns chitchat's state into a [`Member`] list (Consul's
//! statuses: alive, left, failed), published on a watch channel for the agent (server
//! discovery, `/v1/agent/members`, the federation router) and the leader's catalog
//! reconciliation.

pub mod quic;
pub mod sealed;
pub mod wan;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::Transport as ChitchatTransport;
use chitchat::{Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::GossipKey;
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
    /// The gossip key, if the DC encrypts gossip.
    pub key: Option<GossipKey>,
    /// Timings.
    pub options: GossipOptions,
    /// This agent's LAN coordinate, updated from round trips on the gossip path.
    pub coordinates: Arc<crate::coordinate::Estimator>,
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
}

/// A running member of a gossip pool (LAN or WAN). Clones share the member.
#[derive(Clone)]
pub struct Gossip {
    handle: Arc<ChitchatHandle>,
    members: watch::Receiver<Vec<Member>>,
    interval: Duration,
}

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
        let transport = sealed::SealedUdpTransport::new(
            config.key.as_ref(),
            metrics.clone(),
            config.coordinates.clone(),
        );
        Gossip::start(
            PoolConfig {
                network: "LAN",
                name: config.node,
                cluster_id: config.datacenter,
                listen: config.bind,
                advertise: config.advertise,
                seeds: config.seeds,
                kvs,
                options: config.options,
            },
            &transport,
            metrics,
            shutdown,
        )
        .await
    }

    async fn start(
        config: PoolConfig,
        transport: &dyn ChitchatTransport,
        metrics: GossipMetrics,
        shutdown: CancellationToken,
    ) -> Result<Gossip, GossipError> {
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let id = ChitchatId::new(config.name.clone(), generation, config.advertise);
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
        };
        let handle = chitchat::spawn_chitchat(chitchat_config, config.kvs, transport)
            .await
            .map_err(|e| GossipError {
                network: config.network,
                addr: config.listen,
                reason: format!("{e:#}"),
            })?;
        let (tx, members) = watch::channel(Vec::new());
        tokio::spawn(watch_members(
            handle.chitchat(),
            tx,
            o.interval,
            metrics,
            shutdown,
        ));
        info!(network = config.network, listen = %config.listen, seeds = config.seeds.len(), "gossip started");
        Ok(Gossip {
            handle: Arc::new(handle),
            members,
            interval: o.interval,
        })
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
                if c.live_nodes().any(|id| *id == newest) {
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

    /// Gossips with `addr` at once: how a member that knows the pool pulls in one that
    /// does not (flood-join), or rejoins a seed.
    fn join(&self, addr: SocketAddr) {
        let _ = self.handle.gossip(addr);
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

/// Republishes the member list whenever it changes (checked every gossip interval).
async fn watch_members(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    tx: watch::Sender<Vec<Member>>,
    interval: Duration,
    metrics: GossipMetrics,
    shutdown: CancellationToken,
) {
    let mut previous: std::collections::HashMap<String, MemberStatus> = Default::default();
    loop {
        let members = {
            let c = chitchat.lock().await;
            members_of(&c)
        };
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
        previous = members.iter().map(|m| (m.name.clone(), m.status)).collect();
        tx.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            *current = members;
            true
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Every member forced out, as the pool's members published it: its newest forced
/// generation, and whether it is pruned.
fn forced_out<'a>(
    states: impl Iterator<Item = &'a chitchat::NodeState>,
) -> std::collections::HashMap<&'a str, (u64, bool)> {
    let mut forced: std::collections::HashMap<&str, (u64, bool)> = Default::default();
    for state in states {
        for (key, value) in state.iter_prefix(KEY_FORCED) {
            let (generation, prune) = match value.value.split_once(':') {
                Some((g, "prune")) => (g, true),
                _ => (value.value.as_str(), false),
            };
            let (Ok(generation), Some(name)) =
                (generation.parse::<u64>(), key.strip_prefix(KEY_FORCED))
            else {
                continue;
            };
            let entry = forced.entry(name).or_insert((generation, prune));
            if generation > entry.0 {
                *entry = (generation, prune);
            } else if generation == entry.0 {
                entry.1 |= prune;
            }
        }
    }
    forced
}

/// The members chitchat knows, one per node name (the newest generation wins: a restarted
/// agent replaces its previous incarnation), sorted by name.
fn members_of(c: &Chitchat) -> Vec<Member> {
    let live: std::collections::HashSet<&ChitchatId> = c.live_nodes().collect();
    let forced = forced_out(c.node_states().values());
    let mut by_name: BTreeMap<String, (u64, Member)> = BTreeMap::new();
    for (id, state) in c.node_states() {
        let get = |k: &str| state.get(k).unwrap_or_default().to_string();
        let Some(role) = (match state.get(KEY_ROLE) {
            Some("server") => Some(Role::Server),
            Some("client") => Some(Role::Client),
            _ => None,
        }) else {
            continue; // not yet gossiped its keys
        };
        let mut status = if state.get(KEY_STATUS) == Some(STATUS_LEFT) {
            MemberStatus::Left
        } else if live.contains(id) {
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
        let member = Member {
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
            status,
        };
        match by_name.get(&member.name) {
            Some((generation, _)) if *generation > id.generation_id => {}
            _ => {
                by_name.insert(member.name.clone(), (id.generation_id, member));
            }
        }
    }
    by_name.into_values().map(|(_, m)| m).collect()
}
