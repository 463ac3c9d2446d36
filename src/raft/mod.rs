//! Per-datacenter Raft (openraft 0.9, storage v2): the type configuration, the durable
//! [`log_store`], the [`state_machine`] over the DC's catalog and KV state, the QUIC
//! [`network`], and [`RaftNode`], the one handle the rest of the agent uses: write a
//! command, read in one of Consul's three consistency modes, bootstrap, learn the leader.

// openraft's StorageError and RaftError are large by design, and their shapes are fixed by
// openraft's traits; boxing them here would only add allocations on the hot path.
#![allow(clippy::result_large_err)]

pub mod batcher;
pub mod bootstrap;
pub mod collector;
pub mod lease;
mod legacy_log;
pub mod log_store;
pub mod network;
pub mod snapshot_timer;
pub mod state_machine;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use openraft::{Raft, ServerState};
use serde::{Deserialize, Serialize};

use crate::metrics::RaftMetrics;
use crate::state::{Command, CommandResult};
use crate::transport::Transport;
use crate::vocab::ReadMode;
use log_store::LogStore;
use network::{RaftHandler, RaftNetworkClient};
use state_machine::{Replicated, SnapshotFileError, StateMachine};

/// A server as Raft membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNode {
    /// The node name.
    pub name: String,
    /// Its QUIC address (`ip:port`), where `raft` and `rpc` are served.
    pub addr: String,
}

impl fmt::Display for ServerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// The Raft types of a consulate DC.
    ///
    /// A command is held by reference: the leader hands the same entry to the log, to each
    /// follower's replication and to its state machine, and those copies cost a count, not a
    /// deep clone of every key and value (its encoding is the command's own).
    pub TypeConfig:
        D = std::sync::Arc<Command>,
        R = CommandResult,
        NodeId = u64,
        Node = ServerNode,
);

/// Raft errors as the rest of the agent sees them, each saying whether a retry is safe.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    /// The log cannot be opened (damaged, locked, unreadable).
    #[error("raft log {path}")]
    Log {
        /// The log's directory.
        path: std::path::PathBuf,
        /// What is wrong.
        source: Box<log_store::LogOpenError>,
    },
    /// The snapshot file cannot be used.
    #[error(transparent)]
    Snapshot(#[from] SnapshotFileError),
    /// This server is not the leader; `leader` is who is, if known.
    #[error("not the leader")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<(u64, ServerNode)>,
    },
    /// No leader is known (election in progress or no quorum).
    #[error("No cluster leader")]
    NoLeader,
    /// Raft stopped or failed; the agent is going down.
    #[error("raft: {0}")]
    Fatal(String),
    /// Initialization refused (already initialized, ...).
    #[error("raft initialize: {0}")]
    Initialize(String),
    /// An operator request that cannot be done as asked (e.g. removing an unknown peer).
    #[error("{0}")]
    Refused(String),
}

impl RaftNodeError {
    /// A copy for each of the writes that shared a failed batch (the open-time variants,
    /// which never come from a write, become `Fatal`).
    pub fn duplicate(&self) -> RaftNodeError {
        match self {
            RaftNodeError::NotLeader { leader } => RaftNodeError::NotLeader {
                leader: leader.clone(),
            },
            RaftNodeError::NoLeader => RaftNodeError::NoLeader,
            other => RaftNodeError::Fatal(other.to_string()),
        }
    }

    /// True when the command was certainly not appended, so it can be sent (e.g. to the
    /// leader) again.
    pub fn is_retry_safe(&self) -> bool {
        matches!(
            self,
            RaftNodeError::NotLeader { .. } | RaftNodeError::NoLeader | RaftNodeError::Refused(_)
        )
    }
}

/// Raft timings and log retention. Defaults aim at a new leader within 2 s of a crash.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range (randomized within).
    pub election_timeout: (Duration, Duration),
    /// Take a snapshot once this many entries were applied since the last one...
    pub snapshot_every: u64,
    /// ...checked at a random moment between one and two of these ([`snapshot_timer`]).
    pub snapshot_interval: Duration,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub keep_behind_snapshot: u64,
}

impl Default for RaftOptions {
    /// Consul's defaults for the snapshot settings.
    fn default() -> Self {
        RaftOptions {
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(200), Duration::from_millis(500)),
            snapshot_every: 16_384,
            snapshot_interval: Duration::from_secs(30),
            keep_behind_snapshot: 10_240,
        }
    }
}

/// How long a leader may take to confirm its leadership with a quorum before a read that
/// needs it fails with "No cluster leader".
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// What a read says besides its data (Consul's `X-Consul-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMeta {
    /// Whether a leader is known.
    pub known_leader: bool,
    /// Milliseconds since this server last heard from the leader (0 on the leader).
    pub last_contact_ms: u64,
}

/// How long a leadership transfer may take before it is reported failed.
const TRANSFER_WITHIN: Duration = Duration::from_secs(3);

/// One server's Raft: the handle the agent writes and reads through.
#[derive(Clone)]
pub struct RaftNode {
    id: u64,
    lease: Duration,
    raft: Raft<TypeConfig>,
    batcher: batcher::WriteBatcher,
    shared: Arc<RwLock<Replicated>>,
    last_contact: Arc<LeaderContact>,
    commit_seconds: prometheus::Histogram,
    /// Followers' answers to AppendEntries, by send time: the leader's lease.
    acks: Arc<lease::QuorumAcks>,
    /// How the leader asks another server to take over.
    peers: crate::transport::rpc::RpcClient<network::RaftRequest, network::RaftResponse>,
    /// Set while this leader hands leadership over: followers may vote for the new leader
    /// within the lease, so the lease is not trusted meanwhile.
    transferring: Arc<std::sync::atomic::AtomicBool>,
    /// Set once [`RaftNode::shutdown`] began: writes are refused (and logged) from then on.
    stopped: Arc<std::sync::atomic::AtomicBool>,
    /// The log, flushed once more on shutdown (the newest committed id waits for a flush).
    log: LogStore,
    /// Stops the snapshot timer, awaited on shutdown.
    snapshot_timer: (
        tokio_util::sync::CancellationToken,
        Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    ),
}

/// One server's health as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    /// Its Raft id.
    pub id: u64,
    /// Its name and address.
    pub node: ServerNode,
    /// Whether it votes.
    pub voter: bool,
    /// Whether it leads.
    pub leader: bool,
    /// Milliseconds since it last acknowledged the leader (`None`: not in this term).
    pub last_contact_ms: Option<u64>,
}

impl ServerHealth {
    /// Consul's autopilot rule: healthy while its last contact is within `threshold_ms`
    /// (`LastContactThreshold`, 200 ms by default).
    pub fn healthy(&self, threshold_ms: u64) -> bool {
        self.last_contact_ms.is_some_and(|ms| ms <= threshold_ms)
    }
}

/// How many voters may fail with the DC keeping a quorum, given the healthy ones (Consul's
/// `FailureTolerance`: healthy voters minus a quorum of all voters, never below zero).
pub fn failure_tolerance(servers: &[ServerHealth], threshold_ms: u64) -> usize {
    let voters = servers.iter().filter(|s| s.voter).count();
    let healthy = servers
        .iter()
        .filter(|s| s.voter && s.healthy(threshold_ms))
        .count();
    healthy.saturating_sub(voters / 2 + 1)
}

/// When this server last heard from a leader, and whether its state has caught up since it
/// started: a restarted server re-applies its log before its state is what it was, and a
/// new one holds nothing until a leader sends it the log, so neither may answer stale reads
/// before then.
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Instant>>,
    /// What must be applied first: the commit index this server had when it started, else
    /// (a new server) the leader's commit index in the first AppendEntries it accepted.
    catch_up_to: std::sync::OnceLock<u64>,
    /// Set once the state reached `catch_up_to` (or a leader confirmed a read): never reset.
    caught_up: std::sync::atomic::AtomicBool,
}

impl LeaderContact {
    /// For a server that had committed up to `known` when it stopped (`None`: a new one).
    pub fn starting_from(known: Option<u64>) -> LeaderContact {
        let contact = LeaderContact::default();
        if let Some(index) = known {
            contact.catch_up_to.get_or_init(|| index);
        }
        contact
    }

    /// Records contact now, from a leader whose commit index is `leader_commit`.
    pub fn touch(&self, leader_commit: Option<u64>) {
        *self.last.lock().expect("contact lock poisoned") = Some(Instant::now());
        self.catch_up_to.get_or_init(|| leader_commit.unwrap_or(0));
    }

    /// Milliseconds since the last contact (`None` if never).
    pub fn since_ms(&self) -> Option<u64> {
        let at = *self.last.lock().expect("contact lock poisoned");
        at.map(|at| at.elapsed().as_millis() as u64)
    }

    /// Whether state that has applied up to `applied` holds everything that was committed
    /// when this server started (once true, stays true).
    pub fn caught_up(&self, applied: u64) -> bool {
        use std::sync::atomic::Ordering;
        if self.caught_up.load(Ordering::Acquire) {
            return true;
        }
        let reached = self.catch_up_to.get().is_some_and(|&to| applied >= to);
        if reached {
            self.mark_caught_up();
        }
        reached
    }

    /// Records that this server's state is known to be current (a leader confirmed a read).
    pub fn mark_caught_up(&self) {
        self.caught_up
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Counts every change of leader this server sees, until Raft stops.
async fn count_leader_changes(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, ServerNode>>,
    changes: prometheus::IntCounter,
) {
    let mut leader = None;
    loop {
        let now = metrics.borrow_and_update().current_leader;
        if now.is_some() && now != leader {
            changes.inc();
        }
        leader = now;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

impl RaftNode {
    /// Opens this server's Raft state in `data_dir` and starts Raft. Refuses to start from a
    /// log or snapshot that fails its integrity checks.
    pub async fn open(
        id: u64,
        data_dir: &Path,
        opts: &RaftOptions,
        transport: Transport,
        metrics: RaftMetrics,
    ) -> Result<(RaftNode, Arc<RaftHandler>), RaftNodeError> {
        let raft_dir = data_dir.join("raft");
        std::fs::create_dir_all(&raft_dir)
            .map_err(|e| RaftNodeError::Fatal(format!("{}: {e}", raft_dir.display())))?;
        let log_path = raft_dir.join("log");
        let log_error = |source| RaftNodeError::Log {
            path: log_path.clone(),
            source: Box::new(source),
        };
        if legacy_log::import_if_present(&raft_dir, &log_path)
            .await
            .map_err(log_error)?
        {
            tracing::info!(dir = %log_path.display(), "imported the Raft log of an earlier version");
        }
        let mut log = LogStore::open(&log_path).map_err(log_error)?;
        log.observe_commits(metrics.log_commit_seconds.clone());
        let sm = StateMachine::open(&raft_dir)?.with_metrics(metrics.clone());
        let shared = sm.shared();
        // What this server knew was committed when it stopped: once it has re-applied that,
        // it answers stale reads with no older state than it had before.
        let committed = openraft::storage::RaftLogStorage::read_committed(&mut log)
            .await
            .map_err(|e| RaftNodeError::Fatal(e.to_string()))?;
        let known = committed.or(shared.read().expect("state lock").last_applied);
        let last_contact = Arc::new(LeaderContact::starting_from(known.map(|l| l.index)));
        let config = openraft::Config {
            cluster_name: "consulate".into(),
            heartbeat_interval: opts.heartbeat.as_millis() as u64,
            election_timeout_min: opts.election_timeout.0.as_millis() as u64,
            election_timeout_max: opts.election_timeout.1.as_millis() as u64,
            // Snapshots are taken by this server's own timer (`snapshot_timer`).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: opts.keep_behind_snapshot,
            // Entries can be batches of up to 256 KiB (or one 512 KiB value): bound what one
            // AppendEntries frame carries.
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftNodeError::Fatal(e.to_string()))?;
        let acks = Arc::new(lease::QuorumAcks::default());
        let transfer = network::TransferTerm::default();
        let network = RaftNetworkClient::new(
            transport,
            acks.clone(),
            metrics.rpc_failures.clone(),
            transfer.clone(),
        );
        let peers = network.rpc();
        let raft = Raft::new(id, Arc::new(config), network, log.clone(), sm)
            .await
            .map_err(|e| RaftNodeError::Fatal(e.to_string()))?;
        let handler = Arc::new(RaftHandler::new(
            raft.clone(),
            last_contact.clone(),
            transfer,
        ));
        tokio::spawn(count_leader_changes(
            raft.metrics(),
            metrics.leader_changes.clone(),
        ));
        let stop_timer = tokio_util::sync::CancellationToken::new();
        let timer = tokio::spawn(snapshot_timer::run(
            raft.clone(),
            opts.snapshot_every,
            opts.snapshot_interval,
            stop_timer.clone(),
        ));
        Ok((
            RaftNode {
                id,
                lease: opts.election_timeout.0,
                batcher: batcher::WriteBatcher::start(raft.clone()),
                log,
                commit_seconds: metrics.commit_seconds.clone(),
                raft,
                shared,
                last_contact,
                acks,
                peers,
                transferring: Default::default(),
                stopped: Default::default(),
                snapshot_timer: (stop_timer, Arc::new(tokio::sync::Mutex::new(Some(timer)))),
            },
            handler,
        ))
    }

    /// This server's Raft node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The underlying openraft handle (metrics, membership changes).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Whether this server has Raft state (was bootstrapped or joined). A restarted server
    /// never bootstraps again.
    pub async fn is_initialized(&self) -> Result<bool, RaftNodeError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| RaftNodeError::Fatal(e.to_string()))
    }

    /// Forms a new cluster of `members` (this server among them).
    pub async fn initialize(
        &self,
        members: BTreeMap<u64, ServerNode>,
    ) -> Result<(), RaftNodeError> {
        self.raft
            .initialize(members)
            .await
            .map_err(|e| RaftNodeError::Initialize(e.to_string()))
    }

    /// The current leader and its address, if known.
    pub fn leader(&self) -> Option<(u64, ServerNode)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Waits, at most `max`, until the leader this server knows is no longer `from` (an
    /// election ended or began): what a request held through an election waits on.
    pub async fn leader_change(&self, from: Option<u64>, max: Duration) {
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout(max, metrics.wait_for(|m| m.current_leader != from)).await;
    }

    /// Waits until this server's leadership differs from `leading` (it won or lost it).
    pub async fn leadership_change(&self, leading: bool) {
        let mut metrics = self.raft.metrics();
        let stopped = metrics
            .wait_for(|m| (m.state == ServerState::Leader) != leading)
            .await
            .is_err();
        if stopped {
            // Raft stopped: leadership never changes again.
            std::future::pending::<()>().await;
        }
    }

    /// Whether a quorum acknowledged requests this leader sent recently enough that no
    /// other leader can have been elected since (the lease is the minimum election
    /// timeout). Measured from send times against the clock now ([`lease`]), never from
    /// openraft's metrics snapshot, whose age is unknown after a process pause.
    fn within_lease(&self) -> bool {
        if self.transferring.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let followers = membership.voter_ids().filter(|v| *v != self.id);
        self.acks
            .within(&m.vote, followers, self.lease, Instant::now())
    }

    /// The voting members of the cluster as this server knows them.
    pub fn voters(&self) -> Vec<ServerNode> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).cloned())
            .collect()
    }

    /// Whether this server is the leader right now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Appends `cmd` if this server leads (group-committed with concurrent writes);
    /// otherwise says who does.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, RaftNodeError> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!("a write reached Raft after it was shut down; refused");
            return Err(RaftNodeError::Fatal("Raft is shut down".into()));
        }
        let _timer = self.commit_seconds.start_timer();
        self.batcher.write(cmd).await
    }

    /// Prepares a read in `mode`: checks leadership (leader and consistent modes, confirming
    /// with a quorum for consistent) and reports what Consul's headers carry.
    /// A stale read on a server that has not caught up since it started is served as a
    /// consistent one (by the leader), as Consul forwards stale reads until a server has
    /// heard from a leader.
    pub async fn read_barrier(&self, mode: ReadMode) -> Result<ReadMeta, RaftNodeError> {
        let leader = self.leader();
        let me_leader = self.is_leader();
        let mode = match mode {
            ReadMode::Stale if !self.caught_up() => ReadMode::Consistent,
            mode => mode,
        };
        match mode {
            ReadMode::Stale => {}
            // Default mode trusts a leader that a quorum acknowledged within the lease; a
            // server that merely believes it leads (e.g. just restarted with its old vote)
            // must confirm first, so it never answers from a deposed term's state.
            ReadMode::Leader if me_leader && self.within_lease() => {}
            ReadMode::Leader | ReadMode::Consistent if me_leader => {
                // Without a quorum this would wait for one: answer "no leader" instead.
                let confirm =
                    tokio::time::timeout(CONFIRM_TIMEOUT, self.raft.ensure_linearizable());
                match confirm.await {
                    Err(_) | Ok(Err(RaftError::APIError(_))) => {
                        return Err(RaftNodeError::NoLeader);
                    }
                    Ok(Err(other)) => return Err(RaftNodeError::Fatal(other.to_string())),
                    Ok(Ok(_)) => self.last_contact.mark_caught_up(),
                }
            }
            _ => {
                return Err(match leader {
                    Some(l) => RaftNodeError::NotLeader { leader: Some(l) },
                    None => RaftNodeError::NoLeader,
                });
            }
        }
        Ok(ReadMeta {
            known_leader: leader.is_some(),
            last_contact_ms: if me_leader {
                0
            } else {
                self.last_contact.since_ms().unwrap_or(u64::MAX)
            },
        })
    }

    /// Whether this server's state holds everything committed when it started.
    fn caught_up(&self) -> bool {
        let applied = self.read().last_applied.map_or(0, |l| l.index);
        self.last_contact.caught_up(applied)
    }

    /// Milliseconds since this server last heard from a leader (`None`: never).
    pub fn leader_contact_ms(&self) -> Option<u64> {
        self.last_contact.since_ms()
    }

    /// The replicated state, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, Replicated> {
        self.shared.read().expect("state lock poisoned")
    }

    /// Adds a server to the cluster (leader only): first as a learner that catches up, then
    /// promoted to voter. A voter with the same name or address but another id (the same
    /// machine after losing its disk) is removed, as Consul does.
    pub async fn add_server(&self, id: u64, node: ServerNode) -> Result<(), RaftNodeError> {
        self.must_lead()?;
        let fatal = |e: &dyn fmt::Display| RaftNodeError::Fatal(e.to_string());
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let mut voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) {
            return Ok(());
        }
        let stale: Vec<u64> = membership
            .nodes()
            .filter(|(other, n)| **other != id && (n.name == node.name || n.addr == node.addr))
            .map(|(other, _)| *other)
            .collect();
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| fatal(&e))?;
        for s in stale {
            voters.remove(&s);
        }
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| fatal(&e))?;
        Ok(())
    }

    /// `Ok` on the leader; otherwise who leads, if anyone (for the leader-only operations).
    fn must_lead(&self) -> Result<(), RaftNodeError> {
        if self.is_leader() {
            return Ok(());
        }
        Err(match self.leader() {
            Some(l) => RaftNodeError::NotLeader { leader: Some(l) },
            None => RaftNodeError::NoLeader,
        })
    }

    /// Every server in the Raft configuration: its id, identity, and whether it votes.
    pub fn configuration(&self) -> Vec<(u64, ServerNode, bool)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
            .collect()
    }

    /// Removes the server with this QUIC address (`ip:port`), node ID or name from the
    /// Raft configuration (leader only; Consul's `raft remove-peer`). Refused for the
    /// leader itself, and for a server the configuration does not hold.
    pub async fn remove_server(&self, name_or_addr: &str) -> Result<(), RaftNodeError> {
        self.must_lead()?;
        let config = self.configuration();
        let Some((id, _, _)) = config.iter().find(|(id, n, _)| {
            n.addr == name_or_addr
                || n.name == name_or_addr
                || crate::vocab::node_uuid(*id) == name_or_addr
        }) else {
            return Err(RaftNodeError::Refused(format!(
                "address {name_or_addr:?} was not found in the Raft configuration"
            )));
        };
        if *id == self.id {
            return Err(RaftNodeError::Refused(
                "the leader cannot remove itself: transfer leadership first".into(),
            ));
        }
        let voters: std::collections::BTreeSet<u64> = config
            .iter()
            .filter(|(other, _, voter)| *voter && other != id)
            .map(|(other, _, _)| *other)
            .collect();
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| RaftNodeError::Fatal(e.to_string()))?;
        Ok(())
    }

    /// Hands leadership to the voter `to` names (node ID, name or address; `None`: the
    /// follower that acknowledged this leader last), as Raft's leadership transfer: the
    /// target is told to campaign at once and the others grant it their vote although this
    /// leader's lease has not expired (this leader stops trusting its lease first).
    /// Returns the new leader.
    pub async fn transfer_leadership(&self, to: Option<&str>) -> Result<ServerNode, RaftNodeError> {
        use std::sync::atomic::Ordering;
        let health = self.server_health()?;
        let target = health
            .iter()
            .filter(|s| s.voter && s.id != self.id)
            .filter(|s| {
                to.is_none_or(|to| {
                    s.node.addr == to || s.node.name == to || crate::vocab::node_uuid(s.id) == to
                })
            })
            .min_by_key(|s| s.last_contact_ms.unwrap_or(u64::MAX))
            .ok_or_else(|| {
                RaftNodeError::Refused(match to {
                    Some(to) => format!("no other voter {to:?} in the Raft configuration"),
                    None => "no other voter to transfer leadership to".into(),
                })
            })?;
        let addr: std::net::SocketAddr =
            target.node.addr.parse().map_err(|_| {
                RaftNodeError::Refused(format!("bad address {:?}", target.node.addr))
            })?;
        self.transferring.store(true, Ordering::SeqCst);
        let asked = self
            .peers
            .call(
                addr,
                None,
                &network::RaftRequest::TimeoutNow,
                TRANSFER_WITHIN,
            )
            .await;
        let outcome = match asked {
            Ok(network::RaftResponse::TimeoutNow(Ok(()))) => {
                // It leads; this server learns so from its first AppendEntries.
                let mut metrics = self.raft.metrics();
                let seen = tokio::time::timeout(
                    TRANSFER_WITHIN,
                    metrics.wait_for(|m| m.current_leader == Some(target.id)),
                )
                .await;
                match seen {
                    Ok(Ok(_)) => Ok(target.node.clone()),
                    _ => Err(format!(
                        "{} won, but this server has not heard from it",
                        target.node.name
                    )),
                }
            }
            Ok(network::RaftResponse::TimeoutNow(Err(e))) => Err(e),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        if outcome.is_err() && self.is_leader() {
            // A vote may still be on its way: the lease is trusted again only after it ran out.
            tokio::time::sleep(self.lease).await;
        }
        self.transferring.store(false, Ordering::SeqCst);
        outcome.map_err(|e| {
            RaftNodeError::Refused(format!(
                "leadership transfer to {} failed: {e}",
                target.node.name
            ))
        })
    }

    /// Every server's health as this leader sees it (Consul's autopilot): how long since
    /// each last acknowledged it (zero for itself; `None`: not in this term).
    pub fn server_health(&self) -> Result<Vec<ServerHealth>, RaftNodeError> {
        self.must_lead()?;
        let vote = self.raft.metrics().borrow().vote;
        let now = Instant::now();
        Ok(self
            .configuration()
            .into_iter()
            .map(|(id, node, voter)| ServerHealth {
                id,
                node,
                voter,
                leader: id == self.id,
                last_contact_ms: if id == self.id {
                    Some(0)
                } else {
                    self.acks
                        .last_contact(&vote, id, now)
                        .map(|d| d.as_millis() as u64)
                },
            })
            .collect())
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.snapshot_timer.0.cancel();
        if let Some(timer) = self.snapshot_timer.1.lock().await.take() {
            let _ = timer.await;
        }
        let _ = self.raft.shutdown().await;
        // What is written but not yet flushed (the newest committed id) goes to disk, so a
        // restart re-applies everything this server knew was committed.
        if let Err(e) = self.log.sync().await {
            tracing::warn!(error = %e, "flushing the raft log at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LeaderContact;

    #[test]
    fn a_restarted_server_is_caught_up_once_it_reapplied_what_it_had() {
        let contact = LeaderContact::starting_from(Some(30));
        assert!(!contact.caught_up(29));
        // A leader further ahead does not move the target: stale reads may lag.
        contact.touch(Some(80));
        assert!(contact.caught_up(30));
    }

    #[test]
    fn a_new_server_is_caught_up_once_it_applied_what_the_first_leader_committed() {
        let contact = LeaderContact::starting_from(None);
        assert!(!contact.caught_up(100), "no leader heard from yet");
        contact.touch(Some(50));
        assert!(!contact.caught_up(49));
        // Later contacts do not move the target: it is what was committed at start.
        contact.touch(Some(80));
        assert!(contact.caught_up(50));
        assert!(contact.caught_up(0), "once caught up, stays so");
    }

    #[test]
    fn failure_tolerance_counts_healthy_voters_beyond_a_quorum() {
        use super::{ServerHealth, ServerNode, failure_tolerance};
        let server = |id, voter, ms: Option<u64>| ServerHealth {
            id,
            node: ServerNode {
                name: format!("s{id}"),
                addr: String::new(),
            },
            voter,
            leader: id == 1,
            last_contact_ms: ms,
        };
        let three = [
            server(1, true, Some(0)),
            server(2, true, Some(40)),
            server(3, true, Some(90)),
        ];
        assert_eq!(failure_tolerance(&three, 200), 1);
        let one_down = [
            server(1, true, Some(0)),
            server(2, true, Some(40)),
            server(3, true, Some(5000)),
        ];
        assert_eq!(failure_tolerance(&one_down, 200), 0);
        assert!(!one_down[2].healthy(200));
        let learner = [server(1, true, Some(0)), server(2, false, None)];
        assert_eq!(failure_tolerance(&learner, 200), 0);
        let five = [1, 2, 3, 4, 5].map(|i| server(i, true, Some(10)));
        assert_eq!(failure_tolerance(&five, 200), 2);
    }

    #[test]
    fn a_leader_confirming_a_read_is_caught_up() {
        let contact = LeaderContact::default();
        contact.mark_caught_up();
        assert!(contact.caught_up(0));
    }
}
