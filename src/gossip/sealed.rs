//! chitchat's UDP transport, wrapped: every datagram is a chitchat message, sealed with
//! AES-256-GCM under the agent's primary gossip key when it has a keyring (Consul's
//! `encrypt`), and opened under any key of it.
//! A datagram that does not open or does not parse is dropped and counted, never
//! answered: an agent with a wrong or missing key cannot join, and garbage on the port
//! costs one failed decryption. Every message carries the sender's network coordinate in a
//! trailer after chitchat's bytes, and a SynAck answering our Syn closes a round trip:
//! the sample that updates this agent's coordinate (Consul samples on memberlist's pings).
//! The socket also carries SWIM's probe messages ([`super::swim`]), sealed the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use tokio::sync::mpsc;
use tracing::debug;

use super::swim;
use crate::config::GossipKey;
use crate::coordinate::{self, Estimator};
use crate::metrics::GossipMetrics;

/// The largest UDP payload (IPv4).
const MAX_DATAGRAM: usize = 65_507;
/// What sealing adds: the nonce in front, the tag behind.
const SEAL_OVERHEAD: usize = NONCE_LEN + 16;
/// Bound into every sealed datagram, so that a sealed packet of another protocol using the
/// same key cannot be replayed as gossip.
const AAD: &[u8] = b"consulate-lan-gossip-v1";

/// Seals and opens datagrams (pure: no I/O) under the agent's keyring: sealed with the
/// primary key, opened with any installed one. Clones share the keys, so a keyring
/// operation reaches the socket at once.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<RwLock<Arc<[LessSafeKey]>>>,
}

impl Sealer {
    /// A sealer for `keys` (primary first); without any, datagrams are plaintext.
    pub fn new(keys: &[GossipKey]) -> Sealer {
        Sealer {
            keys: Arc::new(RwLock::new(aead_keys(keys))),
        }
    }

    /// Replaces the keys (primary first).
    pub fn set_keys(&self, keys: &[GossipKey]) {
        *self.keys.write().expect("sealer lock") = aead_keys(keys);
    }

    fn current(&self) -> Arc<[LessSafeKey]> {
        self.keys.read().expect("sealer lock").clone()
    }

    /// Seals `plain` into a datagram.
    pub fn seal(&self, plain: Vec<u8>) -> Vec<u8> {
        self.seal_with(AAD, plain)
    }

    /// Seals `plain` under the primary key, bound to `aad`; plaintext without a key.
    pub fn seal_with(&self, aad: &[u8], mut plain: Vec<u8>) -> Vec<u8> {
        let keys = self.current();
        let Some(key) = keys.first() else {
            return plain;
        };
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        key.seal_in_place_append_tag(nonce, Aad::from(aad), &mut plain)
            .expect("AES-GCM sealing of a datagram-sized buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&plain);
        out
    }

    /// Opens a datagram; `None` if it was not sealed under a key held here.
    pub fn open<'a>(&self, datagram: &'a mut [u8]) -> Option<&'a [u8]> {
        self.open_with(AAD, datagram)
    }

    /// Opens what [`Sealer::seal_with`] sealed with the same `aad`, trying the primary key
    /// first. A failed attempt leaves the buffer unspecified, so every key but the last
    /// works on a copy.
    pub fn open_with<'a>(&self, aad: &[u8], sealed: &'a mut [u8]) -> Option<&'a [u8]> {
        let keys = self.current();
        let Some((last, others)) = keys.split_last() else {
            return Some(sealed);
        };
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = (&*nonce).try_into().ok()?;
        for key in others {
            let mut copy = body.to_vec();
            if let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut copy,
            ) {
                let n = plain.len();
                body[..n].copy_from_slice(&copy[..n]);
                return Some(&body[..n]);
            }
        }
        last.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .ok()
            .map(|plain| &*plain)
    }
}

fn aead_keys(keys: &[GossipKey]) -> Arc<[LessSafeKey]> {
    keys.iter()
        .map(|k| {
            LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &k.0).expect("32 bytes is an AES-256 key"),
            )
        })
        .collect()
}

/// The chitchat [`Transport`] of LAN gossip.
pub struct SealedUdpTransport {
    sealer: Sealer,
    metrics: GossipMetrics,
    coordinates: Arc<Estimator>,
    probes: ProbeHook,
}

/// Where the socket sends the SWIM probe messages it receives: pings for this agent's
/// incarnation are answered at once, the rest go to the probe loop's inbox; the probe loop
/// sends through the [`SealedSender`] left in `socket` when the socket opens.
pub struct ProbeHook {
    /// This agent's node name and chitchat generation (what a ping must name).
    pub me: (String, u64),
    /// The probe loop's inbox (full: the message is dropped and counted).
    pub inbox: mpsc::Sender<(SocketAddr, swim::Msg)>,
    /// Filled with the sending side of the socket when it opens.
    pub socket: Arc<OnceLock<SealedSender>>,
}

impl SealedUdpTransport {
    /// A transport sealing with `sealer`, counting into `metrics`, sampling round trips
    /// into `coordinates`, handing probe messages to `probes`.
    pub fn new(
        sealer: Sealer,
        metrics: GossipMetrics,
        coordinates: Arc<Estimator>,
        probes: ProbeHook,
    ) -> SealedUdpTransport {
        SealedUdpTransport {
            sealer,
            metrics,
            coordinates,
            probes,
        }
    }
}

/// The gossip socket with its sealer and metrics: chitchat's messages go through the
/// socket's [`Socket::send`], probe messages through [`SealedSender::send`], sealed and
/// counted alike.
#[derive(Clone)]
pub struct SealedSender {
    socket: Arc<tokio::net::UdpSocket>,
    sealer: Sealer,
    metrics: GossipMetrics,
}

impl SealedSender {
    /// Sends a probe message to `to`, never waiting (a full socket buffer drops the
    /// datagram, as the network may).
    pub fn send(&self, to: SocketAddr, msg: &swim::Msg) {
        let datagram = self.sealer.seal(msg.encode());
        self.metrics.sent(datagram.len());
        if let Err(e) = self.socket.try_send_to(&datagram, to) {
            debug!(error = %e, %to, "probe send failed");
        }
    }
}

/// Most peers with a Syn awaiting its SynAck; past it the table starts over.
const MAX_PENDING: usize = 4096;

/// Round trips on the gossip path: when a Syn went to each peer, closed by its SynAck.
#[derive(Default)]
pub struct RoundTrips {
    syn_sent: HashMap<SocketAddr, Instant>,
}

impl RoundTrips {
    /// Notes `msg` going to `to` at `now`.
    pub fn sent(&mut self, to: SocketAddr, msg: &ChitchatMessage, now: Instant) {
        if matches!(msg, ChitchatMessage::Syn { .. }) {
            if self.syn_sent.len() >= MAX_PENDING {
                self.syn_sent.clear();
            }
            self.syn_sent.insert(to, now);
        }
    }

    /// The round trip `msg` from `from` closes, if it answers our Syn.
    pub fn received(
        &mut self,
        from: SocketAddr,
        msg: &ChitchatMessage,
        now: Instant,
    ) -> Option<std::time::Duration> {
        match msg {
            ChitchatMessage::SynAck { .. } => self
                .syn_sent
                .remove(&from)
                .map(|at| now.saturating_duration_since(at)),
            _ => None,
        }
    }
}

#[async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("cannot bind LAN gossip to {listen_addr}/UDP"))?;
        let out = SealedSender {
            socket: Arc::new(socket),
            sealer: self.sealer.clone(),
            metrics: self.metrics.clone(),
        };
        let _ = self.probes.socket.set(out.clone());
        Ok(Box::new(SealedSocket {
            out,
            buf: vec![0u8; MAX_DATAGRAM],
            coordinates: self.coordinates.clone(),
            round_trips: RoundTrips::default(),
            me: self.probes.me.clone(),
            inbox: self.probes.inbox.clone(),
        }))
    }
}

struct SealedSocket {
    out: SealedSender,
    buf: Vec<u8>,
    coordinates: Arc<Estimator>,
    round_trips: RoundTrips,
    me: (String, u64),
    inbox: mpsc::Sender<(SocketAddr, swim::Msg)>,
}

impl SealedSocket {
    /// A probe message: a ping for this incarnation is acked here (no hop to the probe
    /// loop, whose delay would read as a slow member), the rest go to the probe loop.
    fn probe(&self, from: SocketAddr, msg: swim::Msg) {
        match msg {
            swim::Msg::Ping {
                seq,
                name,
                generation,
            } => {
                if name == self.me.0 && generation == self.me.1 {
                    self.out.send(from, &swim::Msg::Ack { seq });
                }
            }
            other => {
                if self.inbox.try_send((from, other)).is_err() {
                    self.out.metrics.dropped("probe_backlog");
                }
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let mut plain = msg.serialize_to_vec();
        let before = plain.len();
        coordinate::encode_trailer(&self.coordinates.coordinate(), &mut plain);
        // A message that only fits without the trailer goes without it.
        if plain.len() + SEAL_OVERHEAD > MAX_DATAGRAM {
            plain.truncate(before);
        }
        self.round_trips.sent(to, &msg, Instant::now());
        let datagram = self.out.sealer.seal(plain);
        if datagram.len() > MAX_DATAGRAM {
            self.out.metrics.dropped("oversized");
            return Ok(());
        }
        self.out.metrics.sent(datagram.len());
        // A peer that is down (ICMP unreachable) is the failure detector's business.
        if let Err(e) = self.out.socket.send_to(&datagram, to).await {
            debug!(error = %e, %to, "gossip send failed");
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.out.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "gossip recv error");
                    continue;
                }
            };
            self.out.metrics.received(len);
            let Some(mut plain) = self.out.sealer.open(&mut self.buf[..len]) else {
                self.out.metrics.dropped("decrypt");
                continue;
            };
            if plain.first() == Some(&swim::PROBE_TAG) {
                match swim::Msg::decode(plain) {
                    Some(msg) => self.probe(from, msg),
                    None => self.out.metrics.dropped("malformed"),
                }
                continue;
            }
            match ChitchatMessage::deserialize(&mut plain) {
                Ok(msg) => {
                    let now = Instant::now();
                    let rtt = self.round_trips.received(from, &msg, now);
                    if let Some(coord) = coordinate::decode_trailer(plain)
                        && let Some(used) = self.coordinates.observe(from, coord, rtt, now)
                    {
                        self.out.metrics.coordinate_sample(used.is_ok());
                    }
                    return Ok((from, msg));
                }
                Err(_) => self.out.metrics.dropped("malformed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_datagrams_open_only_with_the_same_key() {
        let k1 = GossipKey([7u8; 32]);
        let k2 = GossipKey([8u8; 32]);
        let a = Sealer::new(std::slice::from_ref(&k1));
        let mut sealed = a.seal(b"hello gossip".to_vec());
        assert_eq!(sealed.len(), 12 + SEAL_OVERHEAD);
        assert_ne!(&sealed[NONCE_LEN..NONCE_LEN + 12], b"hello gossip");
        let mut copy = sealed.clone();
        assert_eq!(a.open(&mut sealed), Some(&b"hello gossip"[..]));
        assert_eq!(
            Sealer::new(std::slice::from_ref(&k2)).open(&mut copy.clone()),
            None,
            "wrong key"
        );
        copy[NONCE_LEN] ^= 1;
        assert_eq!(a.open(&mut copy), None, "tampered");
        assert_eq!(a.open(&mut [0u8; 5]), None, "too short");
        let plain = Sealer::new(&[]);
        assert_eq!(plain.open(&mut b"x".to_vec()), Some(&b"x"[..]));
        assert_eq!(
            a.open(&mut plain.seal(b"plaintext gossip".to_vec())),
            None,
            "an agent without the key is refused"
        );
    }

    #[test]
    fn a_keyring_opens_under_any_key_and_seals_with_the_primary() {
        let (k1, k2, k3) = (GossipKey([1; 32]), GossipKey([2; 32]), GossipKey([3; 32]));
        let old = Sealer::new(std::slice::from_ref(&k1));
        let both = Sealer::new(&[k1.clone(), k2.clone()]);
        let new = Sealer::new(std::slice::from_ref(&k2));
        for (from, label) in [(&old, "primary"), (&new, "secondary")] {
            let mut d = from.seal(b"rotating".to_vec());
            assert_eq!(both.open(&mut d), Some(&b"rotating"[..]), "{label}");
        }
        let mut d = both.seal(b"x".to_vec());
        assert_eq!(old.clone().open(&mut d.clone()), Some(&b"x"[..]));
        assert_eq!(new.open(&mut d), None, "sealed with the primary key");
        // A clone follows a change of keys (the socket holds one).
        let socket_side = old.clone();
        old.set_keys(&[k2.clone(), k1.clone()]);
        let mut d = socket_side.seal(b"y".to_vec());
        assert_eq!(new.open(&mut d), Some(&b"y"[..]));
        let mut d = Sealer::new(&[k3]).seal(b"z".to_vec());
        assert_eq!(both.open(&mut d), None);
    }
}
