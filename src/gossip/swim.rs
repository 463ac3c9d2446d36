//! Failure detection for the LAN pool: SWIM's probes (as hashicorp/memberlist runs them)
//! with Lifeguard's suspicion, so that what an agent sends per second does not grow with
//! the pool. chitchat stays the membership and state layer; this module owns who is alive.
//!
//! - **Probes** ([`Prober`], pure): every probe interval an agent pings the next member of
//!   a shuffled round-robin list; without an ack within the probe timeout it asks
//!   [`INDIRECT_PROBES`] other members to ping it (`PingReq`); without any ack by the end
//!   of the probe it suspects the member. Pings name the member's incarnation of the
//!   node (name and generation), so a restarted node does not answer for its predecessor.
//! - **Suspicion** ([`Book`], pure): a suspicion is a key `suspect:<name>` =
//!   `<generation>:<incarnation>` the suspecting agent publishes in its own chitchat state,
//!   spread like any state change. A suspected member that learns of it refutes by
//!   publishing a higher incarnation (`swim-inc`), which voids every claim on a lower one.
//!   Each agent fails a member on its own clock: once a valid claim has stood for the
//!   suspicion timeout, which shrinks from [`SUSPICION_MAX_MULT`] times its minimum toward
//!   the minimum as independent agents confirm it (Lifeguard), the minimum growing with the
//!   log of the pool's size.
//! - **Wire**: probe messages share the LAN gossip socket and its sealing; the first byte
//!   ([`PROBE_TAG`]) tells them from chitchat's messages. A ping is answered by the socket
//!   itself, the rest goes to the probe loop ([`run`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::Chitchat;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Member, MemberStatus};
use crate::metrics::GossipMetrics;

/// First byte of a probe datagram (after opening): chitchat's messages start with 0-3.
pub const PROBE_TAG: u8 = 0xC5;
/// How many members are asked to ping a member that did not answer directly (memberlist).
pub const INDIRECT_PROBES: usize = 3;
/// Key prefix of a suspicion claim: `suspect:<name>` = `<generation>:<incarnation>`.
pub const KEY_SUSPECT: &str = "suspect:";
/// A member's incarnation (absent: 0); raised to refute a suspicion.
pub const KEY_INCARNATION: &str = "swim-inc";
/// The suspicion timeout starts at this multiple of its minimum (Lifeguard).
pub const SUSPICION_MAX_MULT: u32 = 4;
/// Independent confirmations after which a suspicion times out at the minimum.
const EXPECTED_CONFIRMATIONS: usize = 3;

/// A probe message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// "Are you `name` of `generation`?": answered with an [`Msg::Ack`] of the same `seq`
    /// only by that incarnation.
    Ping {
        seq: u64,
        name: String,
        generation: u64,
    },
    /// The answer to a ping (or a relayed answer to a ping request).
    Ack { seq: u64 },
    /// "Ping this member for me, and send me its ack under my `seq`."
    PingReq {
        seq: u64,
        addr: SocketAddr,
        name: String,
        generation: u64,
    },
}

impl Msg {
    /// The datagram's plaintext: [`PROBE_TAG`], then MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROBE_TAG];
        rmp_serde::encode::write(&mut out, self).expect("a probe message encodes");
        out
    }

    /// A probe message, if `plain` is one.
    pub fn decode(plain: &[u8]) -> Option<Msg> {
        match plain.split_first() {
            Some((&PROBE_TAG, body)) => rmp_serde::from_slice(body).ok(),
            _ => None,
        }
    }
}

/// One incarnation of a member, as probes address it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Node name.
    pub name: Arc<str>,
    /// chitchat generation (changes when the agent restarts).
    pub generation: u64,
    /// Gossip address.
    pub addr: SocketAddr,
}

/// Probe timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeConfig {
    /// How often a probe starts.
    pub interval: Duration,
    /// How long a direct ping waits for its ack before indirect probes are asked for.
    pub timeout: Duration,
}

impl ProbeConfig {
    /// When a probe without any ack ends in a suspicion: the direct timeout, then two more
    /// for the indirect round trip (request, ping, ack, relayed ack).
    fn deadline(&self) -> Duration {
        self.timeout * 3
    }
}

/// What the probe core asks its I/O loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Send this message there.
    Send(SocketAddr, Msg),
    /// Nobody got an ack from this member in time: publish a suspicion.
    Suspect(Target),
    /// One of our probes was acked.
    Acked,
}

#[derive(Debug)]
struct Pending {
    target: Target,
    indirect_at: Option<Instant>,
    deadline: Instant,
}

#[derive(Debug)]
struct Relay {
    requester: SocketAddr,
    seq: u64,
    deadline: Instant,
}

/// SWIM's probe schedule (pure): which member to ping next, the probes in flight, the
/// pings relayed for others.
#[derive(Debug)]
pub struct Prober {
    config: ProbeConfig,
    members: Vec<Target>,
    order: Vec<usize>,
    next: usize,
    seq: u64,
    pending: HashMap<u64, Pending>,
    relays: HashMap<u64, Relay>,
    /// Lifeguard's local health: raised when our probes go unanswered or we had to refute
    /// a suspicion of ourselves, lowered by acks. An agent starved of CPU or network sees
    /// everyone as slow; its timeouts stretch by `1 + health` rather than it accusing the
    /// pool.
    health: u32,
}

/// The highest local health score (timeouts stretched up to 9 times, as memberlist).
pub const MAX_HEALTH: u32 = 8;

impl Prober {
    /// A prober with no member yet.
    pub fn new(config: ProbeConfig) -> Prober {
        Prober {
            config,
            members: Vec::new(),
            order: Vec::new(),
            next: 0,
            seq: 0,
            pending: HashMap::new(),
            relays: HashMap::new(),
            health: 0,
        }
    }

    /// The direct timeout, stretched by the local health score.
    fn timeout(&self) -> Duration {
        self.config.timeout * (1 + self.health)
    }

    /// When a probe ends in a suspicion, stretched by the local health score.
    fn deadline(&self) -> Duration {
        self.config.deadline() * (1 + self.health)
    }

    /// This agent had to refute a suspicion of itself: it is likely the slow one.
    pub fn note_refuted(&mut self) {
        self.health = (self.health + 1).min(MAX_HEALTH);
    }

    /// The local health score (0: healthy).
    pub fn health(&self) -> u32 {
        self.health
    }

    /// The members to probe (every other live member): the round-robin restarts over them
    /// in a new random order when they change.
    pub fn set_members(&mut self, members: Vec<Target>, rng: &mut impl rand::Rng) {
        if members == self.members {
            return;
        }
        self.members = members;
        self.order = (0..self.members.len()).collect();
        self.order.shuffle(rng);
        self.next = 0;
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Starts the probe of the next member (a new shuffled pass after the last one).
    pub fn tick(&mut self, now: Instant, rng: &mut impl rand::Rng) -> Vec<Out> {
        if self.members.is_empty() {
            return Vec::new();
        }
        if self.next >= self.order.len() {
            self.order.shuffle(rng);
            self.next = 0;
        }
        let target = self.members[self.order[self.next]].clone();
        self.next += 1;
        if self.pending.values().any(|p| p.target == target) {
            return Vec::new();
        }
        let seq = self.next_seq();
        let ping = Msg::Ping {
            seq,
            name: target.name.to_string(),
            generation: target.generation,
        };
        let addr = target.addr;
        self.pending.insert(
            seq,
            Pending {
                target,
                indirect_at: Some(now + self.timeout()),
                deadline: now + self.deadline(),
            },
        );
        vec![Out::Send(addr, ping)]
    }

    /// An ack arrived: it ends our probe, or is relayed to whoever asked us to ping.
    pub fn on_ack(&mut self, seq: u64) -> Vec<Out> {
        if self.pending.remove(&seq).is_some() {
            self.health = self.health.saturating_sub(1);
            return vec![Out::Acked];
        }
        match self.relays.remove(&seq) {
            Some(r) => vec![Out::Send(r.requester, Msg::Ack { seq: r.seq })],
            None => Vec::new(),
        }
    }

    /// Another member asks us to ping `target` for it.
    pub fn on_ping_req(
        &mut self,
        requester: SocketAddr,
        their_seq: u64,
        target: Target,
        now: Instant,
    ) -> Vec<Out> {
        let seq = self.next_seq();
        self.relays.insert(
            seq,
            Relay {
                requester,
                seq: their_seq,
                deadline: now + self.deadline(),
            },
        );
        vec![Out::Send(
            target.addr,
            Msg::Ping {
                seq,
                name: target.name.to_string(),
                generation: target.generation,
            },
        )]
    }

    /// Moves the probes whose time has come on: indirect pings after the direct timeout,
    /// a suspicion at the deadline; forgets expired relays.
    pub fn expire(&mut self, now: Instant, rng: &mut impl rand::Rng) -> Vec<Out> {
        let mut out = Vec::new();
        let mut done = Vec::new();
        for (seq, p) in self.pending.iter_mut() {
            if now >= p.deadline {
                done.push(*seq);
                out.push(Out::Suspect(p.target.clone()));
            } else if p.indirect_at.is_some_and(|at| now >= at) {
                p.indirect_at = None;
                let helpers: Vec<&Target> =
                    self.members.iter().filter(|m| **m != p.target).collect();
                for helper in helpers.sample(rng, INDIRECT_PROBES) {
                    out.push(Out::Send(
                        helper.addr,
                        Msg::PingReq {
                            seq: *seq,
                            addr: p.target.addr,
                            name: p.target.name.to_string(),
                            generation: p.target.generation,
                        },
                    ));
                }
            }
        }
        for seq in done {
            self.pending.remove(&seq);
            self.health = (self.health + 1).min(MAX_HEALTH);
        }
        self.relays.retain(|_, r| now < r.deadline);
        out
    }

    /// When [`Prober::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.indirect_at.unwrap_or(p.deadline))
            .chain(self.relays.values().map(|r| r.deadline))
            .min()
    }
}

/// The suspicion timeout of a pool of `members`, confirmed by `confirmations` agents
/// (Lifeguard): `SUSPICION_MAX_MULT` times the minimum for one, shrinking with the log of
/// the confirmations to the minimum at [`EXPECTED_CONFIRMATIONS`]. The minimum is 1.5
/// probe intervals, times log10 of the pool's size past ten members (the time a claim
/// takes to spread grows with it).
pub fn suspicion_timeout(interval: Duration, members: usize, confirmations: usize) -> Duration {
    let scale = (members.max(10) as f64).log10();
    let min = interval.mul_f64(1.5 * scale);
    let max = min * SUSPICION_MAX_MULT;
    let c = confirmations.max(1) as f64;
    let frac = (c.ln() / (EXPECTED_CONFIRMATIONS as f64).ln()).min(1.0);
    max - (max - min).mul_f64(frac)
}

/// A claim's value: `<generation>:<incarnation>`.
pub fn encode_claim(generation: u64, incarnation: u64) -> String {
    format!("{generation}:{incarnation}")
}

fn decode_claim(value: &str) -> Option<(u64, u64)> {
    let (g, i) = value.split_once(':')?;
    Some((g.parse().ok()?, i.parse().ok()?))
}

#[derive(Debug, Default)]
struct Subject {
    /// Claimer name -> the (generation, incarnation) it suspects.
    claims: HashMap<String, (u64, u64)>,
    /// When this agent first saw a claim valid for the current incarnation.
    since: Option<Instant>,
}

/// What this agent knows of suspicions (pure): the claims and incarnations every member
/// published, as chitchat's key listeners report them, and when each claim was first seen
/// here. Shared between those listeners and the agent's loops. Every change to it comes
/// from a key change in chitchat, which is what tells the member list to be rebuilt.
#[derive(Debug)]
pub struct Book {
    /// Name -> (generation, incarnation) as the member itself published it.
    incarnations: HashMap<String, (u64, u64)>,
    subjects: HashMap<String, Subject>,
    /// Our own name and generation (claims against them ask for a refutation).
    me: (String, u64),
}

impl Book {
    /// The book of the agent `name` of `generation`.
    pub fn new(name: &str, generation: u64) -> Book {
        Book {
            incarnations: HashMap::new(),
            subjects: HashMap::new(),
            me: (name.to_string(), generation),
        }
    }

    /// `claimer` published `suspect:<subject>` = `value` (seen at `now`). Returns whether
    /// the claim is against this agent (to be refuted).
    pub fn claim(&mut self, claimer: &str, subject: &str, value: &str, now: Instant) -> bool {
        let Some(claim) = decode_claim(value) else {
            return false;
        };
        let against_me = self.me.0 == subject && self.me.1 == claim.0;
        let current = self.incarnation(subject, claim.0);
        let s = self.subjects.entry(subject.to_string()).or_default();
        s.claims.insert(claimer.to_string(), claim);
        if claim.1 >= current && s.since.is_none() {
            s.since = Some(now);
        }
        against_me
    }

    /// `member` (of `generation`) published incarnation `incarnation`.
    pub fn incarnation_of(&mut self, member: &str, generation: u64, incarnation: u64) {
        let entry = self
            .incarnations
            .entry(member.to_string())
            .or_insert((generation, incarnation));
        if (generation, incarnation) > *entry {
            *entry = (generation, incarnation);
        }
        if let Some(s) = self.subjects.get_mut(member)
            && s.claims
                .values()
                .all(|c| (c.0, c.1) < (generation, incarnation))
        {
            s.since = None;
        }
    }

    /// The incarnation a claim against `member` of `generation` names now.
    pub fn incarnation(&self, member: &str, generation: u64) -> u64 {
        match self.incarnations.get(member) {
            Some((g, i)) if *g == generation => *i,
            _ => 0,
        }
    }

    /// The incarnation that refutes every claim against this agent, if one is needed:
    /// one above the highest claimed, when that is not below ours.
    pub fn refutation(&self) -> Option<u64> {
        let (me, generation) = &self.me;
        let highest = self
            .subjects
            .get(me)?
            .claims
            .values()
            .filter(|(g, _)| g == generation)
            .map(|(_, i)| *i)
            .max()?;
        (highest >= self.incarnation(me, *generation)).then_some(highest + 1)
    }

    /// The agents whose claims against `member` of `generation` stand (name their current
    /// incarnation or a later one).
    fn confirmations(&self, member: &str, generation: u64) -> usize {
        let current = self.incarnation(member, generation);
        self.subjects.get(member).map_or(0, |s| {
            s.claims
                .values()
                .filter(|(g, i)| *g == generation && *i >= current)
                .count()
        })
    }

    /// Whether `member` of `generation` has failed, as seen here at `now` in a pool of
    /// `members` live ones: a claim has stood for the suspicion timeout.
    pub fn failed(
        &self,
        member: &str,
        generation: u64,
        members: usize,
        interval: Duration,
        now: Instant,
    ) -> bool {
        let Some(since) = self.subjects.get(member).and_then(|s| s.since) else {
            return false;
        };
        let c = self.confirmations(member, generation);
        c > 0 && now.duration_since(since) >= suspicion_timeout(interval, members, c)
    }

    /// When the first member still suspected will be due to fail (for a re-check).
    pub fn next_due(&self, members: usize, interval: Duration) -> Option<Instant> {
        self.subjects
            .iter()
            .filter_map(|(name, s)| {
                let since = s.since?;
                let generation = s.claims.values().map(|c| c.0).max()?;
                let c = self.confirmations(name, generation).max(1);
                Some(since + suspicion_timeout(interval, members, c))
            })
            .min()
    }

    /// Drops what is known of members no longer in the pool.
    pub fn retain(&mut self, present: &HashSet<&str>) {
        self.subjects.retain(|n, _| present.contains(n.as_str()));
        self.incarnations
            .retain(|n, _| present.contains(n.as_str()));
    }
}

/// The probe targets among the members: every other live one.
pub fn targets(members: &[Member], me: &str) -> Vec<Target> {
    members
        .iter()
        .filter(|m| m.status == MemberStatus::Alive && m.name != me)
        .map(|m| Target {
            name: Arc::from(m.name.as_str()),
            generation: m.generation,
            addr: m.gossip_addr,
        })
        .collect()
}

/// Shared state of one agent's failure detection.
pub struct Swim {
    /// Suspicions and incarnations.
    pub book: Mutex<Book>,
    /// Rung when a claim against this agent needs refuting.
    pub refute: Notify,
}

impl Swim {
    /// Failure detection for the agent `name` of `generation`.
    pub fn new(name: &str, generation: u64) -> Swim {
        Swim {
            book: Mutex::new(Book::new(name, generation)),
            refute: Notify::new(),
        }
    }

    /// chitchat reported `claimer` publishing `suspect:<subject>` = `value`.
    pub fn on_claim(&self, claimer: &str, subject: &str, value: &str) {
        let against_me = self.book.lock().expect("swim book lock").claim(
            claimer,
            subject,
            value,
            Instant::now(),
        );
        if against_me {
            self.refute.notify_one();
        }
    }

    /// chitchat reported `member` of `generation` publishing its incarnation `value`.
    pub fn on_incarnation(&self, member: &str, generation: u64, value: &str) {
        if let Ok(incarnation) = value.parse() {
            self.book.lock().expect("swim book lock").incarnation_of(
                member,
                generation,
                incarnation,
            );
        }
    }
}

/// The probe loop of one agent until `shutdown` (`send`: a datagram on the gossip socket):
/// probes, relays pings for others,
/// publishes suspicions, refutes claims against it and withdraws claims that were refuted.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    swim: Arc<Swim>,
    send: impl Fn(SocketAddr, &Msg),
    mut inbox: mpsc::Receiver<(SocketAddr, Msg)>,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    mut members: watch::Receiver<Vec<Member>>,
    me: String,
    config: ProbeConfig,
    metrics: GossipMetrics,
    shutdown: CancellationToken,
) {
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::from_rng(&mut rand::rng());
    let mut prober = Prober::new(config);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut claimed: HashMap<String, (u64, u64)> = HashMap::new();
    loop {
        let deadline = prober.next_deadline();
        let out = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                if members.has_changed().unwrap_or(false) {
                    let targets = targets(&members.borrow_and_update(), &me);
                    prober.set_members(targets, &mut rng);
                }
                withdraw_refuted(&swim, &chitchat, &mut claimed, &members).await;
                prober.tick(Instant::now(), &mut rng)
            }
            _ = swim.refute.notified() => {
                if refute(&swim, &chitchat).await {
                    metrics.probe("refuted");
                    prober.note_refuted();
                }
                Vec::new()
            }
            msg = inbox.recv() => match msg {
                Some((_, Msg::Ack { seq })) => prober.on_ack(seq),
                Some((from, Msg::PingReq { seq, addr, name, generation })) => {
                    let target = Target { name: Arc::from(name.as_str()), generation, addr };
                    prober.on_ping_req(from, seq, target, Instant::now())
                }
                Some((_, Msg::Ping { .. })) => Vec::new(),
                None => return,
            },
            _ = sleep_until(deadline) => prober.expire(Instant::now(), &mut rng),
        };
        for o in out {
            match o {
                Out::Send(to, msg) => send(to, &msg),
                Out::Acked => metrics.probe("ok"),
                Out::Suspect(target) => {
                    metrics.probe("suspect");
                    let incarnation = swim
                        .book
                        .lock()
                        .expect("swim book lock")
                        .incarnation(&target.name, target.generation);
                    debug!(member = %target.name, "no ack: suspected");
                    claimed.insert(target.name.to_string(), (target.generation, incarnation));
                    chitchat.lock().await.self_node_state().set(
                        format!("{KEY_SUSPECT}{}", target.name),
                        encode_claim(target.generation, incarnation),
                    );
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Publishes an incarnation above every claim against us; whether one was needed.
async fn refute(swim: &Swim, chitchat: &tokio::sync::Mutex<Chitchat>) -> bool {
    let Some(incarnation) = swim.book.lock().expect("swim book lock").refutation() else {
        return false;
    };
    debug!(incarnation, "suspected: refuting");
    chitchat
        .lock()
        .await
        .self_node_state()
        .set(KEY_INCARNATION, incarnation);
    true
}

/// Deletes our claims that no longer stand: refuted (a higher incarnation), or about a
/// member that restarted, left or is gone.
async fn withdraw_refuted(
    swim: &Swim,
    chitchat: &tokio::sync::Mutex<Chitchat>,
    claimed: &mut HashMap<String, (u64, u64)>,
    members: &watch::Receiver<Vec<Member>>,
) {
    if claimed.is_empty() {
        return;
    }
    let stale: Vec<String> = {
        let book = swim.book.lock().expect("swim book lock");
        let members = members.borrow();
        claimed
            .iter()
            .filter(|(name, (generation, incarnation))| {
                let current = members
                    .iter()
                    .find(|m| m.name == **name)
                    .filter(|m| m.generation == *generation && m.status != MemberStatus::Left);
                current.is_none() || book.incarnation(name, *generation) > *incarnation
            })
            .map(|(name, _)| name.clone())
            .collect()
    };
    if stale.is_empty() {
        return;
    }
    let mut c = chitchat.lock().await;
    let state = c.self_node_state();
    for name in stale {
        claimed.remove(&name);
        state.delete(&format!("{KEY_SUSPECT}{name}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn target(i: u16) -> Target {
        Target {
            name: Arc::from(format!("n{i}").as_str()),
            generation: 1,
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
        }
    }

    fn config() -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
        }
    }

    #[test]
    fn messages_round_trip_and_are_told_from_chitchat_messages() {
        for m in [
            Msg::Ping {
                seq: 7,
                name: "a".into(),
                generation: 3,
            },
            Msg::Ack { seq: u64::MAX },
            Msg::PingReq {
                seq: 1,
                addr: "127.0.0.1:1".parse().unwrap(),
                name: "b".into(),
                generation: 0,
            },
        ] {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
        assert_eq!(Msg::decode(&[0, 1, 2]), None, "a chitchat Syn");
        assert_eq!(Msg::decode(&[PROBE_TAG, 0xff]), None, "garbage");
        assert_eq!(Msg::decode(&[]), None);
    }

    #[test]
    fn every_member_is_probed_once_per_pass() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut p = Prober::new(config());
        p.set_members((0..5).map(target).collect(), &mut rng);
        let mut seen = HashSet::new();
        for _ in 0..5 {
            for o in p.tick(Instant::now(), &mut rng) {
                let Out::Send(addr, Msg::Ping { seq, .. }) = o else {
                    panic!("a ping")
                };
                seen.insert(addr);
                assert_eq!(p.on_ack(seq), vec![Out::Acked]);
            }
        }
        assert_eq!(seen.len(), 5);
        assert_eq!(p.next_deadline(), None, "every probe answered");
    }

    #[test]
    fn an_unanswered_probe_asks_others_then_suspects() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let mut p = Prober::new(config());
        p.set_members((0..5).map(target).collect(), &mut rng);
        let t0 = Instant::now();
        let [Out::Send(victim, Msg::Ping { seq, .. })] = p.tick(t0, &mut rng)[..] else {
            panic!("one ping")
        };
        assert!(
            p.expire(t0 + Duration::from_millis(50), &mut rng)
                .is_empty()
        );
        let asked = p.expire(t0 + Duration::from_millis(100), &mut rng);
        assert_eq!(asked.len(), INDIRECT_PROBES);
        for o in &asked {
            let Out::Send(helper, Msg::PingReq { seq: s, addr, .. }) = o else {
                panic!("ping requests")
            };
            assert_ne!(*helper, victim, "not the silent member itself");
            assert_eq!((*s, *addr), (seq, victim));
        }
        let out = p.expire(t0 + Duration::from_millis(300), &mut rng);
        assert!(matches!(&out[..], [Out::Suspect(t)] if t.addr == victim));
        // An indirect ack in time saves it.
        let t1 = t0 + Duration::from_secs(1);
        let [Out::Send(_, Msg::Ping { seq, .. })] = p.tick(t1, &mut rng)[..] else {
            panic!("one ping")
        };
        p.expire(t1 + Duration::from_millis(100), &mut rng);
        assert_eq!(p.on_ack(seq), vec![Out::Acked]);
        assert!(p.expire(t1 + Duration::from_secs(1), &mut rng).is_empty());
    }

    #[test]
    fn local_health_stretches_timeouts_after_failed_probes_and_recovers_with_acks() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let mut p = Prober::new(config());
        p.set_members((0..5).map(target).collect(), &mut rng);
        let mut t = Instant::now();
        for expected in 1..=2 {
            p.tick(t, &mut rng);
            let out = p.expire(t + Duration::from_secs(5), &mut rng);
            assert!(out.iter().any(|o| matches!(o, Out::Suspect(_))));
            assert_eq!(p.health(), expected);
            t += Duration::from_secs(10);
        }
        // Health 2: the direct timeout is 300 ms, not 100 ms.
        p.tick(t, &mut rng);
        assert_eq!(p.next_deadline(), Some(t + Duration::from_millis(300)));
        assert!(
            p.expire(t + Duration::from_millis(299), &mut rng)
                .is_empty()
        );
        let Some(seq) = p.pending.keys().next().copied() else {
            panic!("a probe in flight")
        };
        p.on_ack(seq);
        assert_eq!(p.health(), 1);
        for _ in 0..20 {
            p.note_refuted();
        }
        assert_eq!(p.health(), MAX_HEALTH);
    }

    #[test]
    fn pings_relayed_for_others_carry_the_ack_back() {
        let mut p = Prober::new(config());
        let requester: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let out = p.on_ping_req(requester, 42, target(3), Instant::now());
        let [
            Out::Send(
                to,
                Msg::Ping {
                    seq,
                    ref name,
                    generation,
                },
            ),
        ] = out[..]
        else {
            panic!("a ping")
        };
        assert_eq!((to, name.as_str(), generation), (target(3).addr, "n3", 1));
        assert_eq!(
            p.on_ack(seq),
            vec![Out::Send(requester, Msg::Ack { seq: 42 })]
        );
        assert!(p.on_ack(seq).is_empty(), "once");
    }

    #[test]
    fn the_suspicion_timeout_shrinks_with_confirmations_and_grows_with_the_pool() {
        let i = Duration::from_millis(200);
        assert_eq!(suspicion_timeout(i, 5, 1), Duration::from_millis(1200));
        assert_eq!(suspicion_timeout(i, 5, 3), Duration::from_millis(300));
        assert_eq!(suspicion_timeout(i, 5, 30), Duration::from_millis(300));
        assert!(suspicion_timeout(i, 5, 2) < suspicion_timeout(i, 5, 1));
        assert_eq!(suspicion_timeout(i, 1000, 3), Duration::from_millis(900));
        assert!(suspicion_timeout(i, 2000, 3) > suspicion_timeout(i, 1000, 3));
    }

    #[test]
    fn a_claim_fails_a_member_after_the_timeout_unless_refuted() {
        let i = Duration::from_millis(200);
        let mut b = Book::new("me", 9);
        let t0 = Instant::now();
        b.incarnation_of("x", 5, 0);
        b.claim("a", "x", &encode_claim(5, 0), t0);
        assert!(!b.failed("x", 5, 10, i, t0 + Duration::from_millis(1100)));
        assert!(b.failed("x", 5, 10, i, t0 + Duration::from_millis(1200)));
        assert_eq!(b.next_due(10, i), Some(t0 + Duration::from_millis(1200)));
        // Confirmations shorten it.
        b.claim("b", "x", &encode_claim(5, 0), t0);
        b.claim("c", "x", &encode_claim(5, 0), t0);
        assert!(b.failed("x", 5, 10, i, t0 + Duration::from_millis(300)));
        // A newer generation (a restart) is not the suspected one.
        assert!(!b.failed("x", 6, 10, i, t0 + Duration::from_secs(10)));
        // A refutation voids the claims.
        b.incarnation_of("x", 5, 1);
        assert!(!b.failed("x", 5, 10, i, t0 + Duration::from_secs(10)));
        assert_eq!(b.next_due(10, i), None);
        // A claim on the new incarnation counts again.
        b.claim("d", "x", &encode_claim(5, 1), t0 + Duration::from_secs(20));
        assert!(b.failed("x", 5, 10, i, t0 + Duration::from_secs(22)));
        // A claim against us (this incarnation) asks for a refutation.
        assert!(b.claim("a", "me", &encode_claim(9, 0), t0));
        assert_eq!(b.refutation(), Some(1));
        b.incarnation_of("me", 9, 1);
        assert_eq!(b.refutation(), None, "refuted");
        assert!(!b.claim("a", "me", &encode_claim(8, 0), t0));
        assert!(!b.claim("a", "x", &encode_claim(5, 1), t0));
        // Malformed claims are ignored.
        let before = b.next_due(10, i);
        assert!(!b.claim("a", "y", "nonsense", t0));
        assert_eq!(b.next_due(10, i), before);
    }
}
