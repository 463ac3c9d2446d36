//! The DNS interface: every agent answers Consul's `.consul` names (the configured domain)
//! over UDP and TCP, names in other datacenters included, which it looks up through the
//! [`Dispatcher`] like the HTTP API (cross-DC forwarding, failover, stale reads).
//!
//! [`name`] reads a name, [`answer`] turns what was found into a DNS message (both pure);
//! [`Resolver`] does the lookups; [`serve`] runs the thin UDP and TCP loops. The wire format
//! is hickory-proto's; the loops are ours so that every packet, malformed ones included, is
//! counted, and a UDP query costs one task, not hickory-server's task plus channel hop.

pub mod answer;
pub mod name;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::RecordType;
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cache::{AgentCache, CacheControl};
use crate::config::DnsConfig;
use crate::dispatch::Dispatcher;
use crate::gossip::{Member, MemberStatus};
use crate::metrics::DnsMetrics;
use crate::rpc::{ReadOptions, ReadOutcome, RpcError};
use crate::state::HealthStatus;
use crate::state::query::{Query, QueryResult, ServiceHealth};
use crate::vocab::ReadMode;
use crate::vocab::Role;
use answer::{Found, Instance, SoaTimers, Zone};
use name::Lookup;

/// Queries answered at once on UDP; more are dropped (and counted) until some finish.
const MAX_UDP_IN_FLIGHT: usize = 4096;
/// TCP connections served at once; more are closed at accept (and counted).
const MAX_TCP_CONNECTIONS: usize = 512;
/// A TCP connection with no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How a query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// UDP: the answer is cut to the client's size.
    Udp,
    /// TCP: the whole answer.
    Tcp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Answers DNS packets for one agent.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    /// This agent's node: prepared queries' `_agent`.
    node: String,
    dispatcher: Dispatcher,
    /// With `dns.use_cache`: the agent cache service and prepared-query lookups are
    /// answered from, and the `Cache-Control` they ask it with.
    cache: Option<(AgentCache, CacheControl)>,
    members: tokio::sync::watch::Receiver<Vec<Member>>,
    zone: Zone,
    read: ReadOptions,
    node_ttl: u32,
    service_ttl: Vec<(String, u32)>,
    only_passing: bool,
    recursors: Vec<SocketAddr>,
    recursor_timeout: Duration,
    bind: IpAddr,
    metrics: DnsMetrics,
}

fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The TTL for service `name`: its exact entry, else the longest matching `prefix*`, else
/// `*`, else 0 (Consul's rules). Pure.
fn service_ttl(table: &[(String, u32)], name: &str) -> u32 {
    if let Some((_, ttl)) = table.iter().find(|(k, _)| k == name) {
        return *ttl;
    }
    table
        .iter()
        .filter_map(|(k, ttl)| Some((k.strip_suffix('*')?, *ttl)))
        .filter(|(prefix, _)| name.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(0, |(_, ttl)| ttl)
}

/// The instances DNS shows: none with a critical check (with `only_passing`, only those
/// whose every check passes), each weighted as Consul weights them. Pure.
fn healthy_instances(list: &[ServiceHealth], only_passing: bool) -> Vec<Instance> {
    list.iter()
        .filter_map(|h| {
            let worst = h.checks.iter().map(|c| c.status).max().unwrap_or_default();
            let worst = if h.checks.is_empty() {
                HealthStatus::Passing
            } else {
                worst
            };
            let weight = match worst {
                HealthStatus::Passing => h.service.weights.passing,
                HealthStatus::Warning if !only_passing => h.service.weights.warning,
                _ => return None,
            };
            Some(Instance {
                node: h.node.node.clone(),
                node_address: h.node.address.clone(),
                address: h.service.address.clone(),
                port: h.service.port,
                weight: u16::try_from(weight).unwrap_or(u16::MAX),
            })
        })
        .filter(|i| i.weight > 0)
        .collect()
}

/// The instances a prepared query selected (its server already left out the unhealthy
/// ones, its ignored checks aside), weighted by their worst remaining status.
fn selected_instances(list: &[ServiceHealth]) -> Vec<Instance> {
    list.iter()
        .map(|h| {
            let warning = h.checks.iter().any(|c| c.status == HealthStatus::Warning);
            let weight = if warning {
                h.service.weights.warning
            } else {
                h.service.weights.passing
            };
            Instance {
                node: h.node.node.clone(),
                node_address: h.node.address.clone(),
                address: h.service.address.clone(),
                port: h.service.port,
                weight: u16::try_from(weight).unwrap_or(u16::MAX),
            }
        })
        .filter(|i| i.weight > 0)
        .collect()
}

fn type_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SRV => "SRV",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}

/// An answer to send and how it is counted.
struct Reply {
    bytes: Vec<u8>,
    /// The `outcome` label.
    outcome: &'static str,
    /// Cut to the client's UDP size.
    truncated: bool,
}

impl Reply {
    /// A header-only error answer to a query with `id`.
    fn error(id: u16, op_code: OpCode, rcode: ResponseCode) -> Option<Reply> {
        let m = Message::error_msg(id, op_code, rcode);
        Some(Reply {
            bytes: answer::encode(&m, 512)?,
            outcome: outcome_label(rcode),
            truncated: false,
        })
    }
}

fn outcome_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "ok",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::Refused => "refused",
        ResponseCode::FormErr => "malformed",
        ResponseCode::NotImp => "notimp",
        _ => "servfail",
    }
}

impl Resolver {
    /// A resolver for an agent of `domain`, looking names up through `dispatcher` (or,
    /// with `dns.use_cache`, through `cache`); NS answers list the servers of the DC from
    /// LAN gossip's `members`. `bind` is the agent's address, used as the source of
    /// queries to loopback recursors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &str,
        domain: &str,
        config: &DnsConfig,
        dispatcher: Dispatcher,
        cache: AgentCache,
        members: tokio::sync::watch::Receiver<Vec<Member>>,
        bind: IpAddr,
        metrics: DnsMetrics,
    ) -> Resolver {
        let soa = config.soa;
        // Consul's fail-static: while the servers cannot be reached, the cached answer
        // is served (with a short TTL), however long ago contact was lost.
        let control = CacheControl {
            max_age: Some(config.cache_max_age.0).filter(|d| !d.is_zero()),
            stale_if_error: Some(Duration::MAX),
            must_revalidate: false,
        };
        Resolver {
            inner: Arc::new(Inner {
                node: node.to_string(),
                dispatcher,
                cache: config.use_cache.then_some((cache, control)),
                members,
                zone: Zone {
                    domain: domain.trim_end_matches('.').to_ascii_lowercase(),
                    record_limit: config.a_record_limit,
                    soa: SoaTimers {
                        refresh: soa.refresh,
                        retry: soa.retry,
                        expire: soa.expire,
                        min_ttl: soa.min_ttl,
                    },
                    recursion: !config.recursors.is_empty(),
                },
                read: ReadOptions {
                    mode: if config.allow_stale {
                        ReadMode::Stale
                    } else {
                        ReadMode::Leader
                    },
                    max_stale: config.allow_stale.then_some(config.max_stale.0),
                    min_index: 0,
                    wait: Duration::ZERO,
                    stale_if_error: config.remote_stale_if_error.map(|d| d.0),
                },
                node_ttl: seconds(config.node_ttl.0),
                service_ttl: config
                    .service_ttl
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), seconds(v.0)))
                    .collect(),
                only_passing: config.only_passing,
                recursors: config
                    .recursors
                    .iter()
                    .map(|a| SocketAddr::new(a.ip, a.port.unwrap_or(53)))
                    .collect(),
                recursor_timeout: config.recursor_timeout.0,
                bind,
                metrics,
            }),
        }
    }

    /// Answers one packet as it arrived over `protocol`; `None` when nothing is to be sent
    /// back (not even a header to answer, or a response rather than a query).
    pub async fn handle(&self, packet: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        let started = Instant::now();
        let m = &self.inner.metrics;
        let (qtype, reply) = self.answer(packet, protocol).await;
        let outcome = reply.as_ref().map_or("malformed", |r| r.outcome);
        m.queries.with_label_values(&[qtype, outcome]).inc();
        if reply.as_ref().is_some_and(|r| r.truncated) {
            m.truncated.inc();
        }
        m.seconds
            .with_label_values(&[protocol.as_str()])
            .observe(started.elapsed().as_secs_f64());
        reply.map(|r| r.bytes)
    }

    /// The answer to `packet` (if any), with the question's type label.
    async fn answer(&self, packet: &[u8], protocol: Protocol) -> (&'static str, Option<Reply>) {
        let inner = &self.inner;
        let request = match Message::from_vec(packet) {
            Ok(m) if m.metadata.message_type == MessageType::Query => m,
            Ok(_) => return ("none", None),
            // A readable ID gets FORMERR back; anything shorter than a header, nothing.
            Err(_) if packet.len() >= 12 => {
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                return (
                    "none",
                    Reply::error(id, OpCode::Query, ResponseCode::FormErr),
                );
            }
            Err(_) => return ("none", None),
        };
        let (id, op_code) = (request.metadata.id, request.metadata.op_code);
        let Some(q) = request
            .queries
            .first()
            .filter(|_| request.queries.len() == 1)
        else {
            return ("none", Reply::error(id, op_code, ResponseCode::FormErr));
        };
        let qtype = type_label(q.query_type());
        if op_code != OpCode::Query {
            return (qtype, Reply::error(id, op_code, ResponseCode::NotImp));
        }
        let qname = q.name().to_ascii().to_ascii_lowercase();
        let qname = qname.trim_end_matches('.');
        let found = match name::under_domain(qname, &inner.zone.domain) {
            Some(labels) => self.lookup(name::parse(&labels)).await,
            None if inner.recursors.is_empty() => Found::Refused,
            None => match self.recurse(packet, protocol).await {
                Some(bytes) => {
                    let reply = Reply {
                        bytes,
                        outcome: "forwarded",
                        truncated: false,
                    };
                    return (qtype, Some(reply));
                }
                None => Found::Failed,
            },
        };
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let resp = inner.zone.respond(&request, found, serial);
        let limit = match protocol {
            Protocol::Udp => answer::udp_limit(&request),
            Protocol::Tcp => u16::MAX,
        };
        match answer::encode(&resp, limit) {
            Some(bytes) => {
                // The TC bit: byte 2, bit 1 of the header.
                let truncated = bytes.len() > 2 && bytes[2] & 0x02 != 0;
                let outcome = outcome_label(resp.metadata.response_code);
                (
                    qtype,
                    Some(Reply {
                        bytes,
                        outcome,
                        truncated,
                    }),
                )
            }
            None => (
                qtype,
                Reply::error(id, OpCode::Query, ResponseCode::ServFail),
            ),
        }
    }

    /// Looks `lookup` up through the dispatcher (in its DC).
    async fn lookup(&self, lookup: Lookup) -> Found {
        let inner = &self.inner;
        let local = inner.dispatcher.datacenter();
        // The TTL of the answer: the service's, or the nodes'.
        let (query, dc, ttl) = match lookup {
            Lookup::Invalid => return Found::NoSuchName,
            Lookup::Addr(ip) => return Found::Addr(ip),
            Lookup::Apex => {
                return Found::Apex {
                    servers: self.servers(),
                    dc: local.to_string(),
                };
            }
            Lookup::Service { name, tag, dc } => {
                let ttl = service_ttl(&inner.service_ttl, &name);
                let query = Query::ServiceHealth {
                    service: name,
                    tags: tag.into_iter().collect(),
                    passing: inner.only_passing,
                    node_meta: Vec::new(),
                };
                (query, dc, ttl)
            }
            Lookup::Node { name, dc } => (Query::NodeServices { node: name }, dc, inner.node_ttl),
            Lookup::Query { name, dc } => return self.prepared_query(name, dc).await,
        };
        let remote = dc.as_deref().filter(|d| *d != local).is_some();
        let dc_name = dc.clone().unwrap_or_else(|| local.to_string());
        let cached = matches!(query, Query::ServiceHealth { .. });
        let found = match self.read(dc.as_deref(), query, cached).await {
            Ok((out, stale)) => {
                // A last-known answer (a server's for a DC it cannot reach, or the cache's
                // while it cannot reach the servers) is not cached long.
                let ttl = match stale {
                    true => ttl.min(crate::config::STALE_DNS_TTL.as_secs() as u32),
                    false => ttl,
                };
                match &out.result {
                    QueryResult::Health(list) => {
                        let mut instances = healthy_instances(list, inner.only_passing);
                        instances.shuffle(&mut rand::rng());
                        Found::Service {
                            instances,
                            dc: dc_name,
                            ttl,
                        }
                    }
                    QueryResult::NodeServices(Some((node, _))) => Found::Node {
                        address: node.address.clone(),
                        ttl,
                    },
                    _ => Found::NoSuchName,
                }
            }
            // An unknown datacenter is an unknown name (Consul).
            Err(RpcError::NoPathToDatacenter) => Found::NoSuchName,
            Err(_) => Found::Failed,
        };
        if remote {
            let outcome = match &found {
                Found::Failed => "servfail",
                Found::NoSuchName => "nxdomain",
                Found::Service { instances, .. } if instances.is_empty() => "nxdomain",
                _ => "ok",
            };
            inner.metrics.cross_dc.with_label_values(&[outcome]).inc();
        }
        found
    }

    /// Reads `query` in `dc` (DNS carries no token: the agent's default token, or the
    /// anonymous one), from the agent cache when configured and `cacheable`; with whether
    /// the answer is a last-known one rather than current.
    async fn read(
        &self,
        dc: Option<&str>,
        query: Query,
        cacheable: bool,
    ) -> Result<(Arc<ReadOutcome>, bool), RpcError> {
        let inner = &self.inner;
        match inner.cache.as_ref().filter(|_| cacheable) {
            Some((cache, control)) => {
                let answer = cache
                    .read(None, dc, query, *control, 0, Duration::ZERO)
                    .await?;
                Ok((answer.outcome, !answer.age.is_zero()))
            }
            None => {
                let out = inner.dispatcher.read(None, dc, query, inner.read).await?;
                let stale = out.stale_from.is_some();
                Ok((Arc::new(out), stale))
            }
        }
    }

    /// Runs prepared query `name` (in `dc`): its instances, from whichever DC answered,
    /// with the query's DNS TTL (else the service's); from the agent cache when
    /// configured.
    async fn prepared_query(&self, name: String, dc: Option<String>) -> Found {
        let inner = &self.inner;
        let local = inner.dispatcher.datacenter().to_string();
        let call = crate::rpc::ExecuteQuery {
            dc,
            query: crate::rpc::QueryRef::Named(name),
            near: None,
            source: crate::rpc::QuerySource {
                node: inner.node.clone(),
                datacenter: local,
                ip: None,
            },
            limit: None,
            mode: inner.read.mode,
            explain: false,
            // DNS carries no token: the agent's default token, or the anonymous one.
            token: None,
        };
        let executed = match &inner.cache {
            Some((cache, control)) => cache
                .execute(call, *control)
                .await
                .map(|answer| (answer.value, answer.fallback)),
            None => inner
                .dispatcher
                .call(call)
                .await
                .map(|out| (Arc::new(out), false)),
        };
        match executed {
            Ok((out, stale)) => {
                let ttl = crate::duration::parse_go_duration(&out.dns_ttl)
                    .map_or_else(|| service_ttl(&inner.service_ttl, &out.service), seconds);
                let ttl = match stale {
                    true => ttl.min(crate::config::STALE_DNS_TTL.as_secs() as u32),
                    false => ttl,
                };
                Found::Service {
                    instances: selected_instances(&out.nodes),
                    dc: out.datacenter.clone(),
                    ttl,
                }
            }
            Err(RpcError::NotFound(_) | RpcError::NoPathToDatacenter) => Found::NoSuchName,
            Err(_) => Found::Failed,
        }
    }

    /// The servers of this DC alive in LAN gossip, for NS answers.
    fn servers(&self) -> Vec<(String, IpAddr)> {
        let local = self.inner.dispatcher.datacenter();
        self.inner
            .members
            .borrow()
            .iter()
            .filter(|m| {
                m.role == Role::Server && m.datacenter == local && m.status == MemberStatus::Alive
            })
            .map(|m| (m.name.clone(), m.gossip_addr.ip()))
            .collect()
    }

    /// Sends a query for a name outside the domain to the recursors in turn, over the
    /// protocol it came by; the first answer is relayed as it is.
    async fn recurse(&self, packet: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        let inner = &self.inner;
        for &to in &inner.recursors {
            let from = if to.ip().is_loopback() && inner.bind.is_ipv4() == to.is_ipv4() {
                SocketAddr::new(inner.bind, 0)
            } else if to.is_ipv4() {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
            } else {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
            };
            let attempt = ask_recursor(packet, protocol, from, to);
            match tokio::time::timeout(inner.recursor_timeout, attempt).await {
                Ok(Ok(resp)) => return Some(resp),
                Ok(Err(e)) => warn!(recursor = %to, error = %e, "recursor failed"),
                Err(_) => warn!(recursor = %to, "recursor timed out"),
            }
        }
        None
    }
}

/// One exchange with a recursor.
async fn ask_recursor(
    packet: &[u8],
    protocol: Protocol,
    from: SocketAddr,
    to: SocketAddr,
) -> std::io::Result<Vec<u8>> {
    match protocol {
        Protocol::Udp => {
            let socket = UdpSocket::bind(from).await?;
            socket.connect(to).await?;
            socket.send(packet).await?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = socket.recv(&mut buf).await?;
                // Only the answer to this query (same ID); anything else is ignored.
                if n >= 12 && buf[..2] == packet[..2] {
                    buf.truncate(n);
                    return Ok(buf);
                }
            }
        }
        Protocol::Tcp => {
            let socket = if to.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(from)?;
            let mut stream = socket.connect(to).await?;
            let len =
                u16::try_from(packet.len()).map_err(|_| std::io::Error::other("query too long"))?;
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(packet).await?;
            let len = stream.read_u16().await?;
            let mut buf = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buf).await?;
            Ok(buf)
        }
    }
}

/// Serves DNS on `bind` (UDP and TCP on the same port; port 0 picks one) until
/// `shutdown`. Returns the address bound and the task running both loops.
pub async fn serve(
    bind: SocketAddr,
    resolver: Resolver,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let udp = UdpSocket::bind(bind).await?;
    let addr = udp.local_addr()?;
    let tcp = TcpListener::bind(addr).await?;
    let task = tokio::spawn(async move {
        tokio::join!(
            serve_udp(udp, resolver.clone(), shutdown.clone()),
            serve_tcp(tcp, resolver, shutdown),
        );
    });
    Ok((addr, task))
}

async fn serve_udp(socket: UdpSocket, resolver: Resolver, shutdown: CancellationToken) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                // E.g. an ICMP error for an earlier answer: nothing to do with the next.
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            resolver
                .inner
                .metrics
                .dropped
                .with_label_values(&["overloaded"])
                .inc();
            continue;
        };
        let packet = buf[..n].to_vec();
        let (socket, resolver) = (socket.clone(), resolver.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = resolver.handle(&packet, Protocol::Udp).await {
                let _ = socket.send_to(&answer, src).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, resolver: Resolver, shutdown: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            resolver
                .inner
                .metrics
                .dropped
                .with_label_values(&["tcp_limit"])
                .inc();
            continue;
        };
        let (resolver, shutdown) = (resolver.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let codec = LengthDelimitedCodec::builder()
                .length_field_type::<u16>()
                .new_codec();
            let mut framed = Framed::new(stream, codec);
            loop {
                let frame = tokio::select! {
                    f = tokio::time::timeout(TCP_IDLE, framed.next()) => f,
                    _ = shutdown.cancelled() => return,
                };
                let Ok(Some(Ok(query))) = frame else { return };
                let Some(answer) = resolver.handle(&query, Protocol::Tcp).await else {
                    continue;
                };
                if framed.send(Bytes::from(answer)).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::types::{Check, Node, Service, Weights};

    #[test]
    fn service_ttls_follow_consuls_precedence() {
        let table = vec![
            ("*".to_string(), 1),
            ("web*".to_string(), 2),
            ("web-api*".to_string(), 3),
            ("web".to_string(), 4),
        ];
        assert_eq!(service_ttl(&table, "web"), 4);
        assert_eq!(service_ttl(&table, "web-api-v2"), 3);
        assert_eq!(service_ttl(&table, "webby"), 2);
        assert_eq!(service_ttl(&table, "db"), 1);
        assert_eq!(service_ttl(&[], "db"), 0);
    }

    fn entry(node: &str, statuses: &[HealthStatus]) -> ServiceHealth {
        ServiceHealth {
            node: Node {
                node: node.into(),
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            service: Service {
                service: "web".into(),
                port: 80,
                weights: Weights {
                    passing: 10,
                    warning: 1,
                },
                ..Service::default()
            },
            checks: statuses
                .iter()
                .map(|s| Check {
                    status: *s,
                    ..Check::default()
                })
                .collect(),
        }
    }

    #[test]
    fn critical_instances_are_left_out_and_warnings_weigh_less() {
        use HealthStatus::*;
        let list = || {
            vec![
                entry("ok", &[Passing, Passing]),
                entry("warn", &[Passing, Warning]),
                entry("down", &[Warning, Critical]),
                entry("unchecked", &[]),
            ]
        };
        let shown: Vec<(String, u16)> = healthy_instances(&list(), false)
            .into_iter()
            .map(|i| (i.node, i.weight))
            .collect();
        assert_eq!(
            shown,
            [
                ("ok".to_string(), 10),
                ("warn".to_string(), 1),
                ("unchecked".to_string(), 10)
            ]
        );
        let strict: Vec<String> = healthy_instances(&list(), true)
            .into_iter()
            .map(|i| i.node)
            .collect();
        assert_eq!(strict, ["ok", "unchecked"]);
    }
}
