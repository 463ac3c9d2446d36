//! Push-pull state sync of the LAN pool over TCP, memberlist's push-pull: a member that is
//! behind (a newcomer, or one learning many nodes at once, as in a DC starting all at once)
//! sends a peer the version of every node it knows; the peer answers with the state of
//! every node the asker lacks or holds older, and names those it lacks itself, which the
//! asker sends last. Bounded gossip digests (20 nodes a Syn) teach a newcomer a pool of
//! thousands 20 nodes at a time; one sync teaches it the whole pool, and both sides end
//! with the newer state of every node either knew. It runs on the gossip port over TCP (as
//! Consul's serf does), sealed under the LAN keyring like the datagrams.
//!
//! The pure core: what a request names ([`Request::of`]), what a reply holds
//! ([`reply_for`]) and the push that closes the exchange ([`push_for`]), how states are
//! merged ([`merge`], chitchat's `reset_node_state_if_update`: a node's state is replaced
//! only by a newer one), the frame ([`encode`], [`decode`]) and when a member pulls
//! ([`CatchUp`]). The I/O: [`serve`] (the listener, a few exchanges served at a time) and
//! [`pull`] (one exchange with a peer).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{Chitchat, ChitchatId, NodeState, Version};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::sealed::Sealer;
use crate::metrics::GossipMetrics;

/// Bound into every sealed frame, so that a sealed datagram cannot be replayed as a sync.
const AAD: &[u8] = b"consulate-lan-sync-v1";
/// Largest frame accepted (sealed, compressed): about 10,000 nodes' state, with room.
const MAX_FRAME: usize = 32 << 20;
/// Largest decompressed message accepted (a compression bomb stops here).
const MAX_PLAIN: u64 = 256 << 20;
/// A whole exchange (connect, request, reply), either side.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Exchanges served at once; more are refused (the asker tries another member).
const MAX_SERVING: usize = 4;
/// The pause after a failed accept, so that a lack of descriptors does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How many nodes learned within one check period make a member pull: fewer, and
/// gossip teaches them at least as fast (a few joins a second in a large DC cost no sync).
pub const CATCH_UP_NODES: usize = 10;

/// Why an exchange failed. Every one is safe to retry, with this peer or another.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Connecting, reading or writing failed, or the peer closed early.
    #[error("sync with {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// The peer took longer than [`SYNC_TIMEOUT`].
    #[error("sync with {0}: no answer within {SYNC_TIMEOUT:?}")]
    Timeout(SocketAddr),
    /// What arrived was not a sync message under a key held here.
    #[error("sync: {0}")]
    Frame(#[from] FrameError),
}

/// What is wrong with a frame (counted under `consulate_gossip_syncs_total`'s result).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Longer than [`MAX_FRAME`], or than [`MAX_PLAIN`] once decompressed.
    #[error("frame too large")]
    Oversized,
    /// Not sealed under a key of this keyring (or sealed when we hold none).
    #[error("frame not sealed under a key held here")]
    Decrypt,
    /// Not a compressed sync message.
    #[error("malformed frame")]
    Malformed,
    /// A request from another datacenter's pool.
    #[error("request for pool {0:?}")]
    WrongCluster(String),
}

impl FrameError {
    /// The metric's result label.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::Oversized => "oversized",
            FrameError::Decrypt => "decrypt",
            FrameError::Malformed => "malformed",
            FrameError::WrongCluster(_) => "wrong_cluster",
        }
    }
}

/// An exchange opens with the asker's pool and the version of every node it knows, so
/// that each side sends only what the other lacks.
#[derive(Serialize, Deserialize)]
pub struct Request {
    cluster: String,
    known: Vec<NodeVersion>,
}

/// A node and the (last GC version, max version) its state is at.
type NodeVersion = (ChitchatId, Version, Version);

impl Request {
    /// What `c` asks with: the versions of the nodes it knows, itself included.
    pub fn of(c: &Chitchat, cluster: &str) -> Request {
        let known = c
            .node_states()
            .iter()
            .map(|(id, s)| (id.clone(), s.last_gc_version(), s.max_version()))
            .collect();
        Request {
            cluster: cluster.to_string(),
            known,
        }
    }
}

/// The answer: every node state the asker lacks or holds older, and the nodes whose
/// state the asker holds newer (sent back in a [`Push`]).
#[derive(Serialize, Deserialize)]
pub struct Reply {
    states: Vec<NodeState>,
    wanted: Vec<ChitchatId>,
}

/// The asker's last message: the states the answerer wanted.
#[derive(Serialize, Deserialize)]
pub struct Push {
    states: Vec<NodeState>,
}

/// What `c` answers to `known`: the state of each node it has that the asker does not, or
/// holds at an older version, and the nodes the asker holds newer. Nodes scheduled for
/// deletion here (forgotten) are neither sent nor wanted: a sync must not bring them back.
pub fn reply_for(c: &Chitchat, known: &[NodeVersion]) -> Reply {
    let theirs: HashMap<&ChitchatId, (Version, Version)> = known
        .iter()
        .map(|(id, gc, max)| (id, (*gc, *max)))
        .collect();
    let forgotten: HashSet<&ChitchatId> = c.scheduled_for_deletion_nodes().collect();
    let states = c
        .node_states()
        .iter()
        .filter(|(id, s)| {
            !forgotten.contains(id) && theirs.get(id).is_none_or(|k| *k < s.monotonic_property())
        })
        .map(|(_, s)| s.clone())
        .collect();
    let wanted = theirs
        .iter()
        .filter(|(id, version)| {
            !forgotten.contains(*id)
                && c.node_state(id)
                    .is_none_or(|s| s.monotonic_property() < **version)
        })
        .map(|(id, _)| (*id).clone())
        .collect();
    Reply { states, wanted }
}

/// The states of the `wanted` nodes, as `c` holds them.
pub fn push_for(c: &Chitchat, wanted: &[ChitchatId]) -> Push {
    Push {
        states: wanted
            .iter()
            .filter_map(|id| c.node_state(id).cloned())
            .collect(),
    }
}

/// Merges received node states into `c`: a node's state is replaced by a newer one (and
/// its key listeners called), never by an older one; our own state is ours alone. Returns
/// how many nodes were new here.
pub fn merge(c: &mut Chitchat, states: impl IntoIterator<Item = NodeState>) -> usize {
    let me = c.self_chitchat_id().clone();
    let mut learned = 0;
    for s in states {
        let id = s.chitchat_id();
        if *id == me {
            continue;
        }
        match c.node_state(id) {
            Some(ours) if ours.monotonic_property() >= s.monotonic_property() => continue,
            Some(_) => {}
            None => learned += 1,
        }
        let key_values = s
            .key_values_including_deleted()
            .map(|(k, v)| (k.to_string(), v.clone()));
        c.reset_node_state_if_update(id, key_values, s.max_version(), s.last_gc_version());
    }
    learned
}

/// A message as it travels: MessagePack, zstd-compressed, sealed, behind its length.
pub fn encode(msg: &impl Serialize, sealer: &Sealer) -> Vec<u8> {
    let plain = rmp_serde::to_vec(msg).expect("sync messages serialize");
    let compressed = zstd::bulk::compress(&plain, 1).expect("zstd compresses a buffer");
    let sealed = sealer.seal_with(AAD, compressed);
    let mut frame = Vec::with_capacity(4 + sealed.len());
    frame.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
    frame.extend_from_slice(&sealed);
    frame
}

/// Opens and parses a frame's body (what followed its length).
pub fn decode<T: for<'de> Deserialize<'de>>(
    body: &mut [u8],
    sealer: &Sealer,
) -> Result<T, FrameError> {
    let compressed = sealer.open_with(AAD, body).ok_or(FrameError::Decrypt)?;
    let decoder =
        zstd::stream::read::Decoder::new(compressed).map_err(|_| FrameError::Malformed)?;
    let mut plain = Vec::new();
    decoder
        .take(MAX_PLAIN + 1)
        .read_to_end(&mut plain)
        .map_err(|_| FrameError::Malformed)?;
    if plain.len() as u64 > MAX_PLAIN {
        return Err(FrameError::Oversized);
    }
    rmp_serde::from_slice(&plain).map_err(|_| FrameError::Malformed)
}

/// When a member pulls. It starts out catching up (a newcomer: a seed first, then random
/// members), and catches up again whenever it learned at least [`CATCH_UP_NODES`] nodes
/// within [`CHECK_ROUNDS`] rounds, by gossip or otherwise (a DC starting at once, a pool
/// healing). While catching up it pulls every round, from a random member, and stops
/// after [`QUIET_PULLS`] pulls in a row that taught it no new node: its view then matches
/// its peers'. A few joins a second in a large DC cost no sync: gossip teaches them.
#[derive(Debug)]
pub struct CatchUp {
    known_at_check: usize,
    rounds: u32,
    quiet: u32,
    catching_up: bool,
}

/// Rounds between two checks of how many nodes were learned.
pub const CHECK_ROUNDS: u32 = 5;
/// Pulls in a row that taught nothing new after which a member stops catching up.
pub const QUIET_PULLS: u32 = 2;

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp {
            known_at_check: 0,
            rounds: 0,
            quiet: 0,
            catching_up: true,
        }
    }
}

impl CatchUp {
    /// Called once a round with the number of nodes known now: whether to pull. Nodes
    /// learned while catching up do not count towards catching up again.
    pub fn due(&mut self, known: usize) -> bool {
        if self.catching_up {
            self.known_at_check = known;
            return true;
        }
        self.rounds += 1;
        if self.rounds >= CHECK_ROUNDS {
            self.rounds = 0;
            if known.saturating_sub(self.known_at_check) >= CATCH_UP_NODES {
                self.catching_up = true;
            }
            self.known_at_check = known;
        }
        self.catching_up
    }

    /// What a pull taught: how many nodes were new here.
    pub fn pulled(&mut self, learned: usize) {
        if learned > 0 {
            self.quiet = 0;
            return;
        }
        self.quiet += 1;
        if self.quiet >= QUIET_PULLS {
            self.quiet = 0;
            self.catching_up = false;
        }
    }
}

async fn read_frame(stream: &mut TcpStream) -> Result<Vec<u8>, ExchangeError> {
    let len = stream.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Oversized.into());
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Either side's failure within an exchange.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// What serving and pulling need: the pool's chitchat, its name, the keyring's sealer, the
/// metrics.
#[derive(Clone)]
pub struct SyncContext {
    /// The pool's chitchat.
    pub chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    /// The pool's cluster id (the DC): a request for another pool is refused.
    pub cluster: String,
    /// Seals and opens frames under the LAN keyring.
    pub sealer: Sealer,
    /// `consulate_gossip_syncs_total`, the bytes.
    pub metrics: GossipMetrics,
}

/// Serves exchanges on `listener` until `shutdown` fires, [`MAX_SERVING`] at a time (more
/// are closed at once and counted as `busy`); waits for those in progress (each bounded
/// by [`SYNC_TIMEOUT`]) before returning.
pub async fn serve(listener: TcpListener, ctx: SyncContext, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SERVING));
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, typically: let connections close before retrying.
                    debug!(error = %e, "sync accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.metrics.sync("served", "busy");
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            if let Err(e) = counted("served", peer, &ctx, answer(stream, &ctx)).await {
                debug!(error = %e, "sync refused");
            }
            drop(slot);
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn answer(mut stream: TcpStream, ctx: &SyncContext) -> Result<(), ExchangeError> {
    let request: Request = receive(&mut stream, ctx).await?;
    if request.cluster != ctx.cluster {
        return Err(FrameError::WrongCluster(request.cluster).into());
    }
    let reply = reply_for(&*ctx.chitchat.lock().await, &request.known);
    let wanted = !reply.wanted.is_empty();
    send(&mut stream, &reply, ctx).await?;
    if wanted {
        let push: Push = receive(&mut stream, ctx).await?;
        let learned = merge(&mut *ctx.chitchat.lock().await, push.states);
        ctx.metrics.sync_learned(learned);
    }
    Ok(())
}

async fn send(
    stream: &mut TcpStream,
    msg: &impl Serialize,
    ctx: &SyncContext,
) -> Result<(), ExchangeError> {
    let frame = encode(msg, &ctx.sealer);
    stream.write_all(&frame).await?;
    ctx.metrics.sent(frame.len());
    Ok(())
}

async fn receive<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
    ctx: &SyncContext,
) -> Result<T, ExchangeError> {
    let mut body = read_frame(stream).await?;
    ctx.metrics.received(4 + body.len());
    Ok(decode(&mut body, &ctx.sealer)?)
}

/// One exchange with the member at `peer`: each side ends up with the newer state of
/// every node either knew. Returns how many nodes were new here.
pub async fn pull(peer: SocketAddr, ctx: &SyncContext) -> Result<usize, SyncError> {
    counted("pulled", peer, ctx, exchange(peer, ctx)).await
}

/// Runs one side (`pulled` or `served`) of an exchange with `peer` under
/// [`SYNC_TIMEOUT`], and counts its result.
async fn counted<T>(
    side: &'static str,
    peer: SocketAddr,
    ctx: &SyncContext,
    exchange: impl std::future::Future<Output = Result<T, ExchangeError>>,
) -> Result<T, SyncError> {
    let result = match tokio::time::timeout(SYNC_TIMEOUT, exchange).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(ExchangeError::Frame(e))) => Err(SyncError::Frame(e)),
        Ok(Err(ExchangeError::Io(e))) => Err(SyncError::Io(peer, e)),
        Err(_) => Err(SyncError::Timeout(peer)),
    };
    let label = match &result {
        Ok(_) => "ok",
        Err(SyncError::Frame(e)) => e.label(),
        Err(SyncError::Io(..)) => "io",
        Err(SyncError::Timeout(_)) => "timeout",
    };
    ctx.metrics.sync(side, label);
    result
}

async fn exchange(peer: SocketAddr, ctx: &SyncContext) -> Result<usize, ExchangeError> {
    let request = Request::of(&*ctx.chitchat.lock().await, &ctx.cluster);
    let mut stream = TcpStream::connect(peer).await?;
    send(&mut stream, &request, ctx).await?;
    let reply: Reply = receive(&mut stream, ctx).await?;
    let (learned, push) = {
        let mut c = ctx.chitchat.lock().await;
        let learned = merge(&mut c, reply.states);
        (learned, push_for(&c, &reply.wanted))
    };
    ctx.metrics.sync_learned(learned);
    if !reply.wanted.is_empty() {
        send(&mut stream, &push, ctx).await?;
    }
    Ok(learned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GossipKey;

    fn node(name: &str) -> Chitchat {
        crate::gossip::test_chitchat(name, 1, &[("role", "client")])
    }

    /// One whole exchange between `asker` and `answerer`, as `pull` and `answer` run it.
    fn exchange(asker: &mut Chitchat, answerer: &mut Chitchat) -> (usize, usize) {
        let request = Request::of(asker, "dc1");
        let reply = reply_for(answerer, &request.known);
        let learned_here = merge(asker, reply.states);
        let push = push_for(asker, &reply.wanted);
        let learned_there = merge(answerer, push.states);
        (learned_here, learned_there)
    }

    fn view(c: &Chitchat) -> Vec<(String, Vec<(String, String)>)> {
        c.node_states()
            .iter()
            .map(|(id, s)| {
                let kvs = s
                    .key_values()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (id.node_id.to_string(), kvs)
            })
            .collect()
    }

    #[test]
    fn one_exchange_leaves_both_sides_with_the_newer_state_of_every_node() {
        let mut a = node("a");
        let mut b = node("b");
        let mut c = node("c");
        let mut d = node("d");
        // b knows c and d; a knows only itself.
        exchange(&mut b, &mut c);
        exchange(&mut b, &mut d);
        // c changes after b saw it; a learns the newer c directly.
        c.self_node_state().set("http", "127.0.0.3:8500");
        exchange(&mut a, &mut c);
        let (learned_by_a, learned_by_b) = exchange(&mut a, &mut b);
        assert_eq!(learned_by_a, 1, "d was new to a (b came with c)");
        assert_eq!(learned_by_b, 1, "a was new to b");
        assert_eq!(view(&a), view(&b));
        let c_at_b = b.node_states().iter().find(|(id, _)| &*id.node_id == "c");
        assert_eq!(
            c_at_b.and_then(|(_, s)| s.get("http")),
            Some("127.0.0.3:8500"),
            "b got c's newer state from a"
        );
        // Nothing left to send either way.
        let request = Request::of(&a, "dc1");
        let reply = reply_for(&b, &request.known);
        assert!(reply.states.is_empty() && reply.wanted.is_empty());
    }

    #[test]
    fn an_older_state_never_replaces_a_newer_one_and_our_own_is_ours() {
        let mut a = node("a");
        let mut b = node("b");
        exchange(&mut a, &mut b);
        let stale_b = b.self_node_state().clone();
        b.self_node_state().set("http", "new");
        exchange(&mut a, &mut b);
        assert_eq!(merge(&mut a, [stale_b]), 0);
        let b_at_a = a.node_states().iter().find(|(id, _)| &*id.node_id == "b");
        assert_eq!(b_at_a.and_then(|(_, s)| s.get("http")), Some("new"));
        // A copy of a's own state, even a "newer" one, is not applied to a.
        let mut forged = a.self_node_state().clone();
        forged.set("role", "server");
        forged.set("extra", "x");
        merge(&mut b, [forged.clone()]);
        merge(&mut a, [forged]);
        assert_eq!(a.self_node_state().get("role"), Some("client"));
        assert_eq!(a.self_node_state().get("extra"), None);
    }

    #[test]
    fn frames_open_only_under_a_key_held_here_and_garbage_is_refused() {
        let key = |b: u8| GossipKey([b; 32]);
        let sealer = Sealer::new(&[key(1)]);
        let other = Sealer::new(&[key(2)]);
        let both = Sealer::new(&[key(2), key(1)]);
        let plain = Sealer::new(&[]);
        let request = Request::of(&node("a"), "dc1");
        let frame = encode(&request, &sealer);
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        let body = || frame[4..].to_vec();
        let opened: Request = decode(&mut body(), &sealer).expect("opens");
        assert_eq!(opened.cluster, "dc1");
        assert_eq!(opened.known.len(), 1);
        assert!(
            decode::<Request>(&mut body(), &both).is_ok(),
            "any key held"
        );
        assert_eq!(
            decode::<Request>(&mut body(), &other).err(),
            Some(FrameError::Decrypt)
        );
        // Plaintext (no keyring) is refused where a keyring is held, and the reverse.
        let clear = encode(&request, &plain);
        assert_eq!(
            decode::<Request>(&mut clear[4..].to_vec(), &sealer).err(),
            Some(FrameError::Decrypt)
        );
        assert_eq!(
            decode::<Request>(&mut body(), &plain).err(),
            Some(FrameError::Malformed)
        );
        for garbage in [
            &b""[..],
            b"\x28\xb5\x2f\xfd garbage",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                decode::<Request>(&mut garbage.to_vec(), &plain).err(),
                Some(FrameError::Malformed)
            );
        }
        // Well-compressed, but not a request.
        let wrong = encode(&"just a string", &plain);
        assert_eq!(
            decode::<Request>(&mut wrong[4..].to_vec(), &plain).err(),
            Some(FrameError::Malformed)
        );
    }

    #[test]
    fn a_member_catches_up_at_start_and_after_many_joins_not_after_a_few() {
        let mut p = CatchUp::default();
        assert!(p.due(1), "a newcomer pulls at once");
        p.pulled(40);
        assert!(p.due(41));
        p.pulled(0);
        assert!(p.due(41), "one quiet pull is not enough");
        p.pulled(3);
        p.pulled(0);
        assert!(p.due(44), "a pull that taught something resets the count");
        p.pulled(0);
        assert!(!p.due(44), "two quiet pulls in a row: caught up");
        // A few joins a check period: gossip's work, no sync.
        let mut known = 44;
        for _ in 0..10 * CHECK_ROUNDS {
            known += 1;
            assert!(!p.due(known / CHECK_ROUNDS as usize * CHECK_ROUNDS as usize));
        }
        // Many at once (a DC starting, a partition healing): catch up again.
        let mut due = false;
        for _ in 0..CHECK_ROUNDS {
            due = p.due(known + CATCH_UP_NODES);
        }
        assert!(due);
        p.pulled(0);
        p.pulled(0);
        assert!(!p.due(known + CATCH_UP_NODES));
    }
}
