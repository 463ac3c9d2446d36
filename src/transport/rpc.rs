//! Framed request/response over QUIC: each request travels on its own bidirectional
//! stream as one length-prefixed MessagePack frame (tokio-util's `LengthDelimitedCodec`,
//! bounded by [`super::TransportOptions::max_frame`]), answered by one frame carrying
//! `Result<Response, RemoteError>`. A stream per request means no head-of-line blocking
//! between requests and cheap per-request cancellation; the connection under them is
//! pooled by [`super::Transport`].
//!
//! A frame that is malformed or larger than the limit never reaches a handler: the sender
//! gets a [`RemoteError`] reply, the stream is stopped, and the rejection is counted.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use quinn::VarInt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::identity::{Alpn, Identity};
use super::{ConnectionService, PeerConnection, Transport, TransportError, frames_heard};
use crate::metrics::TransportMetrics;

/// An error the remote transport layer answers with instead of a handler's response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// The request frame could not be decoded as the service's request type.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request frame exceeded the peer's maximum frame size.
    #[error("request frame larger than {limit} bytes")]
    TooLarge {
        /// The peer's limit.
        limit: u64,
    },
    /// The response could not be encoded within the frame limit.
    #[error("response could not be sent: {0}")]
    Response(String),
}

impl RemoteError {
    /// None of these is fixed by sending the same request again.
    pub fn is_retry_safe(&self) -> bool {
        false
    }
}

/// Application code that answers one kind of request. Implemented by each protocol served
/// over QUIC (the agent RPC, Raft), and by the tests.
pub trait Handler: Send + Sync + 'static {
    /// The decoded request type.
    type Request: DeserializeOwned + Send + 'static;
    /// The response type.
    type Response: Serialize + Send + 'static;
    /// Answers one request from an authorized `peer`.
    fn handle(
        &self,
        peer: &Identity,
        request: Self::Request,
    ) -> impl Future<Output = Self::Response> + Send;
}

/// Serves a [`Handler`] on every bidirectional stream of the connections it is given.
pub struct RpcService<H> {
    handler: Arc<H>,
    max_frame: usize,
    metrics: TransportMetrics,
}

impl<H: Handler> RpcService<H> {
    /// Wraps `handler`; frames above `max_frame` bytes are refused.
    pub fn new(handler: Arc<H>, max_frame: usize, metrics: TransportMetrics) -> Arc<Self> {
        Arc::new(RpcService {
            handler,
            max_frame,
            metrics,
        })
    }
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

impl<H: Handler> ConnectionService for RpcService<H> {
    fn serve(
        self: Arc<Self>,
        peer: PeerConnection,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let (send, recv) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    s = peer.conn.accept_bi() => match s {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(remote = %peer.conn.remote_address(), error = %e, "rpc connection ended");
                            return;
                        }
                    },
                };
                let this = self.clone();
                let identity = peer.identity.clone();
                let alpn = peer.alpn;
                tokio::spawn(async move { this.serve_stream(identity, alpn, send, recv).await });
            }
        })
    }
}

impl<H: Handler> RpcService<H> {
    async fn serve_stream(
        &self,
        peer: Identity,
        alpn: Alpn,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let mut reader = FramedRead::new(recv, codec(self.max_frame));
        let reply: Result<H::Response, RemoteError> = match reader.next().await {
            None => return,
            Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                self.reject("oversized");
                Err(RemoteError::TooLarge {
                    limit: self.max_frame as u64,
                })
            }
            Some(Err(_)) => return, // stream reset or connection lost: nobody to answer
            Some(Ok(frame)) => match rmp_serde::from_slice::<H::Request>(&frame) {
                Err(e) => {
                    self.reject("malformed");
                    Err(RemoteError::Malformed(e.to_string()))
                }
                Ok(request) => {
                    self.metrics
                        .requests_served
                        .with_label_values(&[alpn.as_str()])
                        .inc();
                    // A caller that goes away (its call dropped: the stream is stopped, or
                    // the connection lost) cancels the handling, and with it whatever the
                    // handler waits on or forwarded further (a blocking query, a relay).
                    let gone = send.stopped();
                    tokio::select! {
                        reply = self.handler.handle(&peer, request) => Ok(reply),
                        _ = gone => {
                            self.metrics
                                .requests_abandoned
                                .with_label_values(&[alpn.as_str()])
                                .inc();
                            return;
                        }
                    }
                }
            },
        };
        let failed = reply.is_err();
        let mut payload = rmp_serde::to_vec_named(&reply).map_err(|e| e.to_string());
        if let Ok(p) = &payload
            && p.len() > self.max_frame
        {
            payload = Err(format!(
                "{} bytes exceed the {} byte frame limit",
                p.len(),
                self.max_frame
            ));
        }
        let payload = payload.unwrap_or_else(|reason| {
            rmp_serde::to_vec_named(&Err::<(), _>(RemoteError::Response(reason)))
                .expect("an error reply always encodes")
        });
        let mut writer = FramedWrite::new(send, codec(self.max_frame));
        if writer.send(Bytes::from(payload)).await.is_ok() {
            let _ = writer.into_inner().finish();
        }
        if failed {
            let _ = reader.into_inner().stop(VarInt::from_u32(1));
        }
    }

    fn reject(&self, reason: &'static str) {
        self.metrics
            .frames_rejected
            .with_label_values(&[reason])
            .inc();
    }
}

/// Maps an I/O error from a framed quinn stream back to the transport's typed errors.
fn stream_error(addr: SocketAddr, e: io::Error) -> TransportError {
    if let Some(inner) = e.get_ref() {
        if let Some(quinn::ReadError::ConnectionLost(ce)) = inner.downcast_ref::<quinn::ReadError>()
        {
            return TransportError::from_connection(addr, ce.clone());
        }
        if let Some(quinn::WriteError::ConnectionLost(ce)) =
            inner.downcast_ref::<quinn::WriteError>()
        {
            return TransportError::from_connection(addr, ce.clone());
        }
    }
    if e.kind() == io::ErrorKind::InvalidData {
        return TransportError::Codec {
            addr,
            reason: e.to_string(),
        };
    }
    TransportError::ConnectionLost {
        addr,
        reason: e.to_string(),
    }
}

/// How long past three RTTs a call waits for the peer's first ACK before the peer is
/// declared gone (generous: a loaded peer may be slow to run its endpoint task).
const UNACKED_GRACE: Duration = Duration::from_millis(500);
/// Past two RTTs, how long a live peer surely takes at most to ACK (its ACK delay is 25 ms).
const SURELY_ACKED: Duration = Duration::from_millis(250);

/// Watches one call on a pooled connection. If the call ends without an answer (timed out,
/// or its future dropped, e.g. by a caller that gave up) and the peer sent not even an ACK
/// in a time it surely would have, the peer behind the connection is gone (crashed, or
/// restarted and lost the connection; its stateless resets or other undecryptable datagrams
/// do not count). The connection is closed so that the next call dials afresh instead of
/// waiting out the idle timeout.
struct Liveness<'a> {
    conn: &'a quinn::Connection,
    heard: u64,
    started: tokio::time::Instant,
    answered: bool,
}

impl<'a> Liveness<'a> {
    fn new(conn: &'a quinn::Connection) -> Self {
        Liveness {
            conn,
            heard: frames_heard(conn),
            started: tokio::time::Instant::now(),
            answered: false,
        }
    }

    fn answered(&mut self) {
        self.answered = true;
    }

    /// The call's deadline passed: with nothing heard from the peer meanwhile, the
    /// connection is dead whatever the deadline was.
    fn timed_out(&mut self) {
        self.answered = true;
        if frames_heard(self.conn) == self.heard {
            self.conn.close(VarInt::from_u32(0), b"peer unresponsive");
        }
    }
}

impl Drop for Liveness<'_> {
    /// A call abandoned by its caller: judged only once a live peer would surely have
    /// ACKed (about an RTT plus its ACK delay, 25 ms by default).
    fn drop(&mut self) {
        let ack_due = self.conn.rtt() * 3 + std::time::Duration::from_millis(100);
        if !self.answered
            && self.started.elapsed() >= ack_due
            && frames_heard(self.conn) == self.heard
        {
            self.conn.close(VarInt::from_u32(0), b"peer unresponsive");
        }
    }
}

/// A typed client for one protocol: which ALPN, which request and response types.
pub struct RpcClient<Req, Resp> {
    transport: Transport,
    alpn: Alpn,
    fail_fast: bool,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Clone for RpcClient<Req, Resp> {
    fn clone(&self) -> Self {
        RpcClient {
            transport: self.transport.clone(),
            alpn: self.alpn,
            fail_fast: self.fail_fast,
            _types: PhantomData,
        }
    }
}

impl<Req: Serialize, Resp: DeserializeOwned> RpcClient<Req, Resp> {
    /// A client sending `Req` and expecting `Resp` over `alpn`.
    pub fn new(transport: Transport, alpn: Alpn) -> Self {
        RpcClient {
            transport,
            alpn,
            fail_fast: false,
            _types: PhantomData,
        }
    }

    /// Makes calls fail as soon as the peer has not acknowledged the request within three
    /// RTTs and a grace period, instead of at their deadline: for callers that have another
    /// server to try (client agents, forwarding). A false alarm on a stalled peer costs a
    /// retry elsewhere; Raft, which retries on its own schedule, does not use it.
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    /// Sends `request` to the server at `addr` (which must belong to `expected_dc` if given)
    /// and waits for its response, at most `timeout` in all. Whatever fails before the
    /// request was wholly written reports `Unreachable` (retry-safe: the peer cannot act on
    /// part of a frame); after it, `Timeout` or `ConnectionLost` (the peer may have acted).
    pub async fn call(
        &self,
        addr: SocketAddr,
        expected_dc: Option<&str>,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        self.call_reaching(addr, expected_dc, request, timeout, timeout)
            .await
    }

    /// As [`RpcClient::call`], and the peer must be connected and have acknowledged the
    /// request within `reach` (typically shorter than `timeout`, which also covers the
    /// peer's work): how a router that has other servers to try bounds the time a dead or
    /// partitioned one costs, whatever the request's own deadline.
    pub async fn call_reaching(
        &self,
        addr: SocketAddr,
        expected_dc: Option<&str>,
        request: &Req,
        timeout: Duration,
        reach: Duration,
    ) -> Result<Resp, TransportError> {
        let max_frame = self.transport.options().max_frame;
        let payload = rmp_serde::to_vec_named(request).map_err(|e| TransportError::Codec {
            addr,
            reason: e.to_string(),
        })?;
        if payload.len() > max_frame {
            return Err(TransportError::Codec {
                addr,
                reason: format!(
                    "request of {} bytes exceeds the {max_frame} byte frame limit",
                    payload.len()
                ),
            });
        }
        let started = tokio::time::Instant::now();
        let connect_within = timeout.min(reach);
        let conn = match tokio::time::timeout(
            connect_within,
            self.transport.connect(addr, self.alpn, expected_dc),
        )
        .await
        {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(TransportError::Unreachable {
                    addr,
                    reason: format!("not connected within {connect_within:?}"),
                });
            }
        };
        let mut watch = Liveness::new(&conn);
        // Until the whole frame is in the stream, the peer cannot have a request to act on:
        // any failure before that is `Unreachable` (retry-safe), after it the request may
        // have been delivered.
        let sent = AtomicBool::new(false);
        let undelivered = |reason: String| TransportError::Unreachable { addr, reason };
        let exchange = async {
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| undelivered(format!("no stream opened: {e}")))?;
            let mut writer = FramedWrite::new(send, codec(max_frame));
            writer
                .send(Bytes::from(payload))
                .await
                .map_err(|e| undelivered(format!("request not written: {e}")))?;
            sent.store(true, Ordering::Relaxed);
            let _ = writer.into_inner().finish();
            let mut reader = FramedRead::new(recv, codec(max_frame));
            let frame = match reader.next().await {
                None => {
                    return Err(TransportError::ConnectionLost {
                        addr,
                        reason: "stream closed without a reply".into(),
                    });
                }
                Some(r) => r.map_err(|e| stream_error(addr, e))?,
            };
            let reply: Result<Resp, RemoteError> =
                rmp_serde::from_slice(&frame).map_err(|e| TransportError::Codec {
                    addr,
                    reason: e.to_string(),
                })?;
            reply.map_err(|error| TransportError::Remote { addr, error })
        };
        let remaining = timeout.saturating_sub(started.elapsed());
        // A live peer ACKs the request within about an RTT; one that has not after a
        // generous margin is gone, and the caller hears so now rather than at its deadline.
        let natural = conn.rtt() * 3 + UNACKED_GRACE;
        let ack_due = natural.min(reach.saturating_sub(started.elapsed()));
        let watch_ack = self.fail_fast || reach < timeout;
        let heard = watch.heard;
        let unacked = async {
            tokio::time::sleep(ack_due).await;
            if frames_heard(&conn) == heard {
                return;
            }
            std::future::pending::<()>().await
        };
        // A long call (a blocking query, twice the silence allowed or more) on a connection
        // whose peer went silent: a live peer answers the keep-alives, so one not heard for
        // two of them is gone, and the call ends now rather than at the idle timeout.
        let keep_alive = self.transport.options().keep_alive;
        let silent_limit = keep_alive * 2 + conn.rtt() * 3 + UNACKED_GRACE;
        let went_silent = async {
            let (mut last, mut since) = (frames_heard(&conn), tokio::time::Instant::now());
            loop {
                tokio::time::sleep(keep_alive / 2).await;
                let now = frames_heard(&conn);
                if now != last {
                    (last, since) = (now, tokio::time::Instant::now());
                } else if since.elapsed() >= silent_limit {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(remaining, exchange) => r,
            () = went_silent, if remaining > silent_limit * 2 => {
                watch.answered();
                conn.close(VarInt::from_u32(0), b"peer unresponsive");
                let reason = format!("nothing heard from the peer for {silent_limit:?}");
                if !sent.load(Ordering::Relaxed) {
                    return Err(undelivered(reason));
                }
                return Err(TransportError::ConnectionLost { addr, reason });
            }
            _ = unacked, if watch_ack && ack_due < remaining => {
                watch.answered();
                if ack_due >= conn.rtt() * 2 + SURELY_ACKED {
                    // Only a peer silent for as long as a live one surely is not is judged
                    // gone; a caller's budget running out sooner says nothing about it.
                    conn.close(VarInt::from_u32(0), b"peer unresponsive");
                }
                let reason = format!("no acknowledgement within {ack_due:?}");
                if !sent.load(Ordering::Relaxed) {
                    return Err(undelivered(reason));
                }
                return Err(TransportError::ConnectionLost { addr, reason });
            }
        };
        match outcome {
            Ok(result) => {
                watch.answered();
                result
            }
            Err(_) => {
                watch.timed_out();
                if sent.load(Ordering::Relaxed) {
                    Err(TransportError::Timeout {
                        addr,
                        after: timeout,
                    })
                } else {
                    Err(TransportError::Unreachable {
                        addr,
                        reason: format!("no stream opened within {timeout:?}"),
                    })
                }
            }
        }
    }
}
