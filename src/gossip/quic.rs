//! chitchat's transport for the WAN pool, carried by the QUIC transport's `wan-gossip`
//! ALPN: one message per unidirectional stream, on the pooled connection to the peer, so
//! WAN gossip inherits mutual TLS and the servers-only rule (a client certificate is
//! refused by the transport before a byte of gossip is read).
//!
//! Sending never waits for a handshake: each message goes into a small per-peer queue
//! drained by that peer's task (which dials when needed); a full queue drops the message,
//! as a lossy network would, and gossip repairs it next round. Every message starts with
//! the sender's gossip (WAN) address, because a peer behind NAT or a relay is seen at
//! another address than the one it is gossiped with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport as ChitchatTransport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::sealed::RoundTrips;
use crate::coordinate::{self, Coordinate, Estimator};
use crate::metrics::GossipMetrics;
use crate::transport::identity::Alpn;
use crate::transport::{ConnectionService, PeerConnection, Transport, frames_heard};

/// Largest message accepted (chitchat sizes its messages for a UDP datagram).
const MAX_MESSAGE: usize = 65_507 + 64;
/// Messages waiting for one peer before further ones are dropped.
const PEER_QUEUE: usize = 8;
/// Messages received and not yet taken by chitchat before further ones are dropped.
const INBOX: usize = 1024;
/// A peer task with nothing to send for this long ends (a new one starts on demand).
const PEER_IDLE: Duration = Duration::from_secs(60);
/// How long one incoming stream may take to arrive in full.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a connection to a peer before a message is dropped.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection on which we keep sending and hear nothing back (not even ACKs) for this
/// long is closed, so the next message dials afresh: after a crash or a partition, a new
/// connection recovers at once where the old one would wait out QUIC's backed-off timers.
const SILENT_LIMIT: Duration = Duration::from_secs(3);

/// Frames `msg` from `from` at `coord`: the sender's address (length-prefixed text),
/// chitchat's own serialization, then the sender's network coordinate.
pub fn encode(from: SocketAddr, msg: &ChitchatMessage, coord: &Coordinate) -> Vec<u8> {
    let addr = from.to_string();
    let mut out = Vec::with_capacity(1 + addr.len() + msg.serialized_len() + 96);
    out.push(addr.len() as u8);
    out.extend_from_slice(addr.as_bytes());
    msg.serialize(&mut out);
    coordinate::encode_trailer(coord, &mut out);
    out
}

/// One decoded frame: the sender, its message, its coordinate (if it sent one).
pub type Frame = (SocketAddr, ChitchatMessage, Option<Coordinate>);

/// Reverse of [`encode`]; `None` for anything malformed.
pub fn decode(frame: &[u8]) -> Option<Frame> {
    let (&len, rest) = frame.split_first()?;
    let addr = rest.get(..len as usize)?;
    let from = std::str::from_utf8(addr).ok()?.parse().ok()?;
    let mut body = &rest[len as usize..];
    let msg = ChitchatMessage::deserialize(&mut body).ok()?;
    if body.is_empty() {
        return Some((from, msg, None));
    }
    let coord = coordinate::decode_trailer(body)?;
    Some((from, msg, Some(coord)))
}

/// The WAN pool's carrier: a chitchat [`ChitchatTransport`] for sending and the
/// `wan-gossip` [`ConnectionService`] for receiving, joined by an inbox.
pub struct QuicGossip {
    transport: Transport,
    advertise: SocketAddr,
    inbox: mpsc::Sender<Frame>,
    inbox_rx: Mutex<Option<mpsc::Receiver<Frame>>>,
    metrics: GossipMetrics,
    shutdown: CancellationToken,
    coordinates: Arc<Estimator>,
}

impl QuicGossip {
    /// A carrier sending over `transport` as `advertise` (our WAN address), sampling
    /// QUIC's round trips to the peers into `coordinates` (this server's WAN coordinate);
    /// its tasks stop when `shutdown` fires.
    pub fn new(
        transport: Transport,
        advertise: SocketAddr,
        metrics: GossipMetrics,
        coordinates: Arc<Estimator>,
        shutdown: CancellationToken,
    ) -> Arc<QuicGossip> {
        let (inbox, rx) = mpsc::channel(INBOX);
        Arc::new(QuicGossip {
            transport,
            advertise,
            inbox,
            inbox_rx: Mutex::new(Some(rx)),
            metrics,
            shutdown,
            coordinates,
        })
    }

    /// The service to register for the `wan-gossip` ALPN.
    pub fn service(&self) -> Arc<dyn ConnectionService> {
        Arc::new(Receiver {
            inbox: self.inbox.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

#[async_trait]
impl ChitchatTransport for QuicGossip {
    async fn open(&self, _listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let rx = self
            .inbox_rx
            .lock()
            .expect("inbox lock")
            .take()
            .context("the WAN gossip carrier is already open")?;
        Ok(Box::new(QuicSocket {
            transport: self.transport.clone(),
            advertise: self.advertise,
            rx,
            peers: HashMap::new(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            coordinates: self.coordinates.clone(),
            round_trips: RoundTrips::default(),
        }))
    }
}

struct QuicSocket {
    transport: Transport,
    advertise: SocketAddr,
    rx: mpsc::Receiver<Frame>,
    peers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    metrics: GossipMetrics,
    shutdown: CancellationToken,
    coordinates: Arc<Estimator>,
    round_trips: RoundTrips,
}

#[async_trait]
impl Socket for QuicSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let mut frame = encode(self.advertise, &msg, &self.coordinates.coordinate());
        self.round_trips.sent(to, &msg, Instant::now());
        if frame.len() > MAX_MESSAGE {
            self.metrics.dropped("oversized");
            return Ok(());
        }
        for _ in 0..2 {
            let queue = self.peers.entry(to).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(send_loop(
                    self.transport.clone(),
                    to,
                    rx,
                    self.metrics.clone(),
                    self.shutdown.clone(),
                ));
                tx
            });
            match queue.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.dropped("queue_full");
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(f)) => {
                    // The peer's task ended idle: start another.
                    self.peers.remove(&to);
                    frame = f;
                }
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        match self.rx.recv().await {
            Some((from, msg, coord)) => {
                // A SynAck answering our Syn is a sample; its value is QUIC's smoothed
                // round trip to the peer (free of queueing and stream set-up), else the
                // time the exchange took.
                let now = Instant::now();
                let rtt = self
                    .round_trips
                    .received(from, &msg, now)
                    .map(|took| self.transport.rtt(from).unwrap_or(took));
                if let Some(coord) = coord
                    && let Some(used) = self.coordinates.observe(from, coord, rtt, now)
                {
                    self.metrics.coordinate_sample(used.is_ok());
                }
                Ok((from, msg))
            }
            // The transport stopped accepting (the agent is shutting down): nothing more
            // arrives, and chitchat is stopped by `Gossip::leave`, not by an error here.
            None => std::future::pending().await,
        }
    }
}

/// Delivers one peer's messages in order, dialing when there is no open connection.
async fn send_loop(
    transport: Transport,
    to: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    metrics: GossipMetrics,
    shutdown: CancellationToken,
) {
    // (connection, frames heard from the peer, since when that count has not moved)
    let mut silence: Option<(usize, u64, tokio::time::Instant)> = None;
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = tokio::time::timeout(PEER_IDLE, rx.recv()) => match m {
                Ok(Some(frame)) => frame,
                _ => return,
            },
        };
        let bound = transport.options().handshake_timeout.min(DIAL_TIMEOUT);
        let conn = match tokio::time::timeout(bound, send_one(&transport, to, &frame)).await {
            Ok(Ok(conn)) => {
                metrics.sent(frame.len());
                conn
            }
            Ok(Err(e)) => {
                debug!(%to, error = %e, "WAN gossip message not delivered");
                metrics.dropped("unreachable");
                continue;
            }
            Err(_) => {
                metrics.dropped("unreachable");
                continue;
            }
        };
        let heard = frames_heard(&conn);
        match silence {
            Some((id, h, since)) if id == conn.stable_id() && h == heard => {
                if since.elapsed() >= SILENT_LIMIT {
                    debug!(%to, "WAN gossip peer silent; closing its connection");
                    conn.close(quinn::VarInt::from_u32(0), b"peer unresponsive");
                    silence = None;
                }
            }
            _ => silence = Some((conn.stable_id(), heard, tokio::time::Instant::now())),
        }
    }
}

async fn send_one(
    transport: &Transport,
    to: SocketAddr,
    frame: &[u8],
) -> anyhow::Result<quinn::Connection> {
    let conn = transport.connect(to, Alpn::WanGossip, None).await?;
    let mut stream = conn.open_uni().await?;
    stream.write_all(frame).await?;
    stream.finish()?;
    Ok(conn)
}

/// The `wan-gossip` service: reads each unidirectional stream as one message.
struct Receiver {
    inbox: mpsc::Sender<Frame>,
    metrics: GossipMetrics,
}

impl ConnectionService for Receiver {
    fn serve(
        self: Arc<Self>,
        peer: PeerConnection,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let mut stream = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    s = peer.conn.accept_uni() => match s {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let read =
                        tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(MAX_MESSAGE)).await;
                    let frame = match read {
                        Ok(Ok(frame)) => frame,
                        Ok(Err(quinn::ReadToEndError::TooLong)) => {
                            this.metrics.dropped("oversized");
                            return;
                        }
                        _ => return, // stream reset, connection lost or too slow
                    };
                    this.metrics.received(frame.len());
                    match decode(&frame) {
                        Some(m) => {
                            if this.inbox.try_send(m).is_err() {
                                this.metrics.dropped("queue_full");
                            }
                        }
                        None => this.metrics.dropped("malformed"),
                    }
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_sender_address_and_refuse_garbage() {
        let from: SocketAddr = "127.0.31.1:8300".parse().unwrap();
        let msg = ChitchatMessage::BadCluster;
        let coord = Coordinate::new(&crate::coordinate::Config::default());
        let frame = encode(from, &msg, &coord);
        assert_eq!(decode(&frame), Some((from, msg, Some(coord))));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&frame[..frame.len() - 1]), None, "truncated");
        let mut longer = frame.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None, "trailing bytes");
        let mut bad_addr = frame.clone();
        bad_addr[1] = b'x';
        assert_eq!(decode(&bad_addr), None);
        assert_eq!(decode(&[200, 1, 2, 3]), None, "length past the end");
    }
}
