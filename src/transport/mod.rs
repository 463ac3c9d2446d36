//! The QUIC transport: one endpoint per agent on its QUIC port, mutual TLS against the
//! federation CA, protocols separated by ALPN, and authorization from the peer certificate
//! checked on both ends. It owns connections (accepting, dialing, pooling, re-dialing after
//! loss) and hands each authorized incoming connection to the [`ConnectionService`]
//! registered for its ALPN. What travels over a connection is the business of the layers
//! above ([`rpc`] for request/response frames).
//!
//! Defences for an endpoint exposed to a network: unknown or garbage datagrams are dropped
//! by quinn; once more than [`TransportOptions::max_pending_handshakes`] handshakes are in
//! progress, unvalidated clients must first prove their address with a stateless Retry, and
//! every handshake has a deadline, so a flood of half-open handshakes cannot exhaust state.

pub mod identity;
pub mod rpc;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use quinn::{ConnectionError, VarInt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::TransportMetrics;
use identity::{Alpn, Identity, Refusal, authorize, authorize_acceptor};
use tls::{TlsError, TlsMaterial, peer_identity};

/// Transport failures, each saying whether the request can safely be sent again.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The local UDP socket could not be bound.
    #[error("cannot bind QUIC endpoint on {addr}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS material unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No connection could be made (no answer, handshake timeout, endpoint closing).
    #[error("{addr} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer (or we, checking the peer) refused the connection.
    #[error("{addr} refused the connection: {refusal}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// Why, as a bounded reason.
        refusal: Refusal,
    },
    /// The request was sent but no answer came in time.
    #[error("request to {addr} timed out after {after:?}")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The deadline that passed.
        after: Duration,
    },
    /// The connection broke after the request was sent: the peer may have acted on it.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer answered with a transport-level error (bad frame, shutting down, ...).
    #[error("{addr} answered with an error: {error}")]
    Remote {
        /// The peer.
        addr: SocketAddr,
        /// What it said.
        error: rpc::RemoteError,
    },
    /// Our request could not be encoded, or the reply not decoded.
    #[error("codec error talking to {addr}: {reason}")]
    Codec {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl TransportError {
    /// True when the request certainly did not reach a handler, so it may be sent again (to
    /// this peer or another) without risk of applying it twice.
    pub fn is_retry_safe(&self) -> bool {
        match self {
            TransportError::Unreachable { .. } | TransportError::Refused { .. } => true,
            TransportError::Remote { error, .. } => error.is_retry_safe(),
            TransportError::Timeout { .. }
            | TransportError::ConnectionLost { .. }
            | TransportError::Codec { .. }
            | TransportError::Bind { .. }
            | TransportError::Tls(_) => false,
        }
    }

    /// True when the request was sent and no answer came: the peer may have acted on it.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout { .. } | TransportError::ConnectionLost { .. }
        )
    }

    /// Maps a quinn connection error seen on `addr`. Closes that carry one of our refusal
    /// codes, or a TLS alert, become [`TransportError::Refused`].
    fn from_connection(addr: SocketAddr, err: ConnectionError) -> TransportError {
        match &err {
            ConnectionError::ApplicationClosed(close) => {
                if let Some(refusal) = Refusal::from_close_code(close.error_code.into_inner()) {
                    return TransportError::Refused { addr, refusal };
                }
            }
            ConnectionError::ConnectionClosed(close) if is_tls_alert(close.error_code) => {
                return TransportError::Refused {
                    addr,
                    refusal: Refusal::Handshake,
                };
            }
            ConnectionError::TransportError(e) if is_tls_alert(e.code) => {
                return TransportError::Refused {
                    addr,
                    refusal: Refusal::Handshake,
                };
            }
            ConnectionError::TimedOut => {
                return TransportError::Unreachable {
                    addr,
                    reason: "timed out".into(),
                };
            }
            _ => {}
        }
        TransportError::ConnectionLost {
            addr,
            reason: err.to_string(),
        }
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100-0x1ff (RFC 9001, 4.8).
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// Tunables of the transport. Defaults suit a LAN/WAN deployment; tests shorten them.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Largest frame accepted or sent by [`rpc`].
    pub max_frame: usize,
    /// Time allowed for a handshake, in either direction.
    pub handshake_timeout: Duration,
    /// A connection with no traffic (keep-alives included) for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval on dialed connections, well under `idle_timeout`.
    pub keep_alive: Duration,
    /// Handshakes in progress above which unvalidated clients are sent a Retry.
    pub max_pending_handshakes: usize,
    /// Concurrent bidirectional streams a peer may open on one connection: every request
    /// in flight holds one, and a client agent forwards all its blocking queries (held by
    /// tools such as consul-template by the thousand) over one connection per server.
    pub max_streams: u32,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_frame: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(3),
            max_pending_handshakes: 64,
            max_streams: 16_384,
        }
    }
}

/// An incoming connection that passed TLS and authorization.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Who the peer is, from its certificate.
    pub identity: Identity,
    /// The protocol negotiated.
    pub alpn: Alpn,
}

/// Serves the authorized connections of one ALPN for as long as each lasts. Implemented by
/// [`rpc::RpcService`] for request/response protocols.
pub trait ConnectionService: Send + Sync + 'static {
    /// Runs until the connection closes or `shutdown` fires.
    fn serve(
        self: Arc<Self>,
        peer: PeerConnection,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

/// Which service answers each ALPN; an ALPN without one is refused.
#[derive(Default, Clone)]
pub struct Services {
    services: HashMap<Alpn, Arc<dyn ConnectionService>>,
}

impl Services {
    /// Registers `service` for `alpn`.
    pub fn with(mut self, alpn: Alpn, service: Arc<dyn ConnectionService>) -> Services {
        self.services.insert(alpn, service);
        self
    }
}

type PoolSlot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;
/// A pooled connection is specific to the peer, the protocol and the DC it was checked for.
type PoolKey = (SocketAddr, Alpn, Option<String>);

struct Inner {
    endpoint: quinn::Endpoint,
    local_dc: String,
    domain: String,
    clients: HashMap<Alpn, quinn::ClientConfig>,
    pool: Mutex<HashMap<PoolKey, PoolSlot>>,
    metrics: TransportMetrics,
    opts: TransportOptions,
}

/// One agent's QUIC endpoint: accepts connections for the registered services and dials
/// peers, reusing one connection per (peer, ALPN).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

fn quinn_transport_config(
    opts: &TransportOptions,
    keep_alive: bool,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        opts.idle_timeout
            .try_into()
            .expect("idle timeout fits a QUIC varint"),
    ));
    if keep_alive {
        t.keep_alive_interval(Some(opts.keep_alive));
    }
    t.max_concurrent_bidi_streams(VarInt::from_u32(opts.max_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(opts.max_streams));
    Arc::new(t)
}

impl Transport {
    /// Binds the endpoint. It can dial at once; it accepts once [`Transport::serve`] is
    /// called (services often need the transport themselves, e.g. Raft's network).
    pub fn bind(
        addr: SocketAddr,
        local_dc: &str,
        tls: &TlsMaterial,
        opts: TransportOptions,
        metrics: TransportMetrics,
    ) -> Result<Transport, TransportError> {
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls.server_config()?));
        server.transport_config(quinn_transport_config(&opts, false));
        server.max_incoming(4096);
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &tls.reset_secret());
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let runtime = quinn::default_runtime().expect("transport runs inside a tokio runtime");
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::new(Arc::new(reset_key)),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        let mut clients = HashMap::new();
        for alpn in Alpn::ALL {
            let mut c = quinn::ClientConfig::new(Arc::new(tls.client_config(alpn)?));
            c.transport_config(quinn_transport_config(&opts, true));
            // Every agent is dialed under the same server name, and a restarted agent cannot
            // read tokens its previous process issued: never present one.
            c.token_store(Arc::new(quinn::NoneTokenStore));
            clients.insert(alpn, c);
        }
        let inner = Arc::new(Inner {
            endpoint,
            local_dc: local_dc.to_string(),
            domain: tls.domain().to_string(),
            clients,
            pool: Mutex::new(HashMap::new()),
            metrics,
            opts,
        });
        Ok(Transport { inner })
    }

    /// Starts accepting connections for `services`. The accept loop and every connection
    /// task stop when `shutdown` fires.
    pub fn serve(&self, services: Services, shutdown: CancellationToken) {
        tokio::spawn(accept_loop(self.inner.clone(), services, shutdown));
    }

    /// The bound UDP address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// The transport's options.
    pub fn options(&self) -> &TransportOptions {
        &self.inner.opts
    }

    /// QUIC's smoothed round-trip estimate to `addr`, from the open pooled connections to it
    /// (the lowest over its ALPNs); `None` without one.
    pub fn rtt(&self, addr: SocketAddr) -> Option<Duration> {
        let slots: Vec<PoolSlot> = {
            let pool = self.inner.pool.lock().expect("pool lock poisoned");
            pool.iter()
                .filter(|(k, _)| k.0 == addr)
                .map(|(_, slot)| slot.clone())
                .collect()
        };
        slots
            .iter()
            .filter_map(|slot| {
                let guard = slot.try_lock().ok()?;
                let conn = guard.as_ref()?;
                conn.close_reason().is_none().then(|| conn.rtt())
            })
            .min()
    }

    /// A connection to `addr` for `alpn`, reused if one is open, dialed otherwise. The
    /// acceptor must be a server (of our DC for raft, of `expected_dc` if given).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: Alpn,
        expected_dc: Option<&str>,
    ) -> Result<quinn::Connection, TransportError> {
        let key = (addr, alpn, expected_dc.map(str::to_string));
        let slot = {
            let mut pool = self.inner.pool.lock().expect("pool lock poisoned");
            pool.entry(key).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        *guard = None;
        let conn = self.dial(addr, alpn, expected_dc).await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        alpn: Alpn,
        expected_dc: Option<&str>,
    ) -> Result<quinn::Connection, TransportError> {
        let inner = &self.inner;
        let connecting = inner
            .endpoint
            .connect_with(inner.clients[&alpn].clone(), addr, "consulate")
            .map_err(|e| TransportError::Unreachable {
                addr,
                reason: e.to_string(),
            })?;
        let conn = match tokio::time::timeout(inner.opts.handshake_timeout, connecting).await {
            Err(_) => {
                return Err(TransportError::Unreachable {
                    addr,
                    reason: format!("no handshake within {:?}", inner.opts.handshake_timeout),
                });
            }
            // A connection lost during its handshake never carried a request.
            Ok(Err(e)) => {
                return Err(match TransportError::from_connection(addr, e) {
                    TransportError::ConnectionLost { addr, reason } => {
                        TransportError::Unreachable { addr, reason }
                    }
                    other => other,
                });
            }
            Ok(Ok(conn)) => conn,
        };
        let peer = peer_identity(&conn, &inner.domain);
        if let Err(refusal) = authorize_acceptor(alpn, &inner.local_dc, expected_dc, peer.as_ref())
        {
            conn.close(
                VarInt::from_u32(refusal.close_code()),
                refusal.as_str().as_bytes(),
            );
            warn!(%addr, %alpn, %refusal, peer = ?peer, "refusing server: identity not allowed");
            return Err(TransportError::Refused { addr, refusal });
        }
        track_open(&inner.metrics, &conn, alpn, "out");
        Ok(conn)
    }

    /// Closes every connection and the endpoint, waiting at most `bound` for peers to be told.
    pub async fn close(&self, bound: Duration) {
        self.inner.endpoint.close(VarInt::from_u32(0), b"shutdown");
        let _ = tokio::time::timeout(bound, self.inner.endpoint.wait_idle()).await;
    }
}

/// Frames the peer sent us on `conn` that prove it still has the connection (ACKs and
/// stream data decrypt only with the connection's keys; stateless resets do not count).
pub fn frames_heard(conn: &quinn::Connection) -> u64 {
    let rx = conn.stats().frame_rx;
    rx.acks + rx.stream
}

/// Keeps the open-connections gauge right for the life of `conn`.
fn track_open(
    metrics: &TransportMetrics,
    conn: &quinn::Connection,
    alpn: Alpn,
    direction: &'static str,
) {
    let gauge = metrics
        .connections_open
        .with_label_values(&[alpn.as_str(), direction]);
    gauge.inc();
    let conn = conn.clone();
    tokio::spawn(async move {
        conn.closed().await;
        gauge.dec();
    });
}

async fn accept_loop(inner: Arc<Inner>, services: Services, shutdown: CancellationToken) {
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = inner.endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        if !incoming.remote_address_validated()
            && pending.load(Ordering::Relaxed) >= inner.opts.max_pending_handshakes
        {
            // Stateless: costs us one packet and no memory; a real peer simply retries.
            let _ = incoming.retry();
            continue;
        }
        pending.fetch_add(1, Ordering::Relaxed);
        let (inner, services, shutdown, pending) = (
            inner.clone(),
            services.clone(),
            shutdown.clone(),
            pending.clone(),
        );
        tokio::spawn(async move {
            let accepted = handshake(&inner, incoming).await;
            pending.fetch_sub(1, Ordering::Relaxed);
            if let Some(peer) = accepted {
                match services.services.get(&peer.alpn) {
                    Some(service) => service.clone().serve(peer, shutdown).await,
                    None => refuse(
                        &inner,
                        &peer.conn,
                        Refusal::UnknownAlpn,
                        Some(&peer.identity),
                    ),
                }
            }
        });
    }
    inner.endpoint.close(VarInt::from_u32(0), b"shutdown");
    debug!("QUIC accept loop stopped");
}

fn refuse(inner: &Inner, conn: &quinn::Connection, refusal: Refusal, peer: Option<&Identity>) {
    conn.close(
        VarInt::from_u32(refusal.close_code()),
        refusal.as_str().as_bytes(),
    );
    inner
        .metrics
        .handshakes_refused
        .with_label_values(&[refusal.as_str()])
        .inc();
    warn!(remote = %conn.remote_address(), %refusal, peer = ?peer.map(|p| p.to_string()), "refused QUIC connection");
}

/// Completes the TLS handshake of one incoming connection and authorizes the peer for the
/// negotiated ALPN. Refusals are closed with their code, logged once and counted.
async fn handshake(inner: &Inner, incoming: quinn::Incoming) -> Option<PeerConnection> {
    let remote = incoming.remote_address();
    let refused = |refusal: Refusal, detail: &str| {
        inner
            .metrics
            .handshakes_refused
            .with_label_values(&[refusal.as_str()])
            .inc();
        info!(%remote, %refusal, detail, "QUIC handshake failed");
    };
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            refused(Refusal::Handshake, &e.to_string());
            return None;
        }
    };
    let conn = match tokio::time::timeout(inner.opts.handshake_timeout, connecting).await {
        Err(_) => {
            refused(Refusal::HandshakeTimeout, "deadline passed");
            return None;
        }
        Ok(Err(e)) => {
            refused(Refusal::Handshake, &e.to_string());
            return None;
        }
        Ok(Ok(conn)) => conn,
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol.and_then(|p| Alpn::from_id(&p)));
    let identity = peer_identity(&conn, &inner.domain);
    let Some(alpn) = alpn else {
        refuse(inner, &conn, Refusal::UnknownAlpn, identity.as_ref());
        return None;
    };
    if let Err(refusal) = authorize(alpn, &inner.local_dc, identity.as_ref()) {
        refuse(inner, &conn, refusal, identity.as_ref());
        return None;
    }
    let identity = identity.expect("authorize accepts only a known identity");
    inner
        .metrics
        .handshakes_accepted
        .with_label_values(&[alpn.as_str()])
        .inc();
    track_open(&inner.metrics, &conn, alpn, "in");
    debug!(%remote, %alpn, peer = %identity, "QUIC connection accepted");
    Some(PeerConnection {
        conn,
        identity,
        alpn,
    })
}
