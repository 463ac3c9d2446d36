//! Routing between datacenters. A server keeps, for every remote DC, its live servers as
//! the WAN pool reports them, ordered by QUIC's own round-trip estimate, and forwards a
//! request naming that DC to the best one; a server that fails a call is marked and
//! skipped for a while, and the next one is tried, within one reach deadline. The answer
//! of the remote DC, errors included, is returned unchanged.
//!
//! The decision of which servers to try, in which order, is pure ([`plan`],
//! [`rank_datacenters`]) and unit-tested; [`Router::forward`] is the thin I/O loop around
//! it. Only servers route: client agents send cross-DC requests to a local server.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::gossip::{Member, MemberStatus};
use crate::metrics::FederationMetrics;
use crate::rpc::client::AgentClient;
use crate::rpc::{AgentRequest, AgentResponse, ReadOutcome, RpcError};
use crate::transport::{Transport, TransportError};

/// Tunables of cross-DC routing.
#[derive(Debug, Clone, Copy)]
pub struct RouterOptions {
    /// Time within which some server of the DC must have been reached (connected and the
    /// request acknowledged); past it the DC counts as unreachable.
    pub reach: Duration,
    /// How long a server that failed a call is skipped. After that it is tried again,
    /// after the servers that have not failed.
    pub mark_for: Duration,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            reach: Duration::from_millis(1500),
            mark_for: Duration::from_secs(2),
        }
    }
}

/// What the router knows of one remote server, as [`plan`] ranks it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerView {
    /// Its WAN address.
    pub addr: SocketAddr,
    /// QUIC's smoothed RTT to it, if a connection is open.
    pub rtt: Option<Duration>,
    /// Whether it leads its DC.
    pub leader: bool,
    /// When it last failed a call (cleared by a success).
    pub failed: Option<Instant>,
}

/// The servers of `dc` to try, best first: alive in the WAN pool and not failed within
/// `mark_for`; those that never failed (or succeeded since) before those that failed
/// longer ago; then the leader first when `prefer_leader` (it answers writes and
/// consistent reads without another hop), then by RTT (unknown last). Pure.
pub fn plan(
    dc: &str,
    members: &[Member],
    view: impl Fn(&Member) -> ServerView,
    now: Instant,
    mark_for: Duration,
    prefer_leader: bool,
) -> Result<Vec<SocketAddr>, RpcError> {
    let of_dc: Vec<&Member> = members.iter().filter(|m| m.datacenter == dc).collect();
    if of_dc.is_empty() {
        return Err(RpcError::NoPathToDatacenter);
    }
    let mut usable: Vec<(bool, bool, Duration, &str, SocketAddr)> = of_dc
        .iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .map(|m| (m, view(m)))
        .filter(|(_, v)| v.failed.is_none_or(|t| now.duration_since(t) >= mark_for))
        .map(|(m, v)| {
            (
                v.failed.is_some(),
                !(prefer_leader && v.leader),
                v.rtt.unwrap_or(Duration::MAX),
                m.name.as_str(),
                v.addr,
            )
        })
        .collect();
    if usable.is_empty() {
        return Err(RpcError::NoReachableServer);
    }
    usable.sort();
    Ok(usable.into_iter().map(|u| u.4).collect())
}

/// The datacenters known, the local one first, then by the median RTT to their live
/// servers (DCs without a measurement last, by name). Pure.
pub fn rank_datacenters(
    local: &str,
    members: &[Member],
    rtt: impl Fn(&Member) -> Option<Duration>,
) -> Vec<String> {
    let mut rtts: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for m in members {
        let entry = rtts.entry(m.datacenter.as_str()).or_default();
        if m.status == MemberStatus::Alive
            && let Some(r) = rtt(m)
        {
            entry.push(r);
        }
    }
    rtts.remove(local);
    let mut ranked: Vec<(Duration, &str)> = rtts
        .into_iter()
        .map(|(dc, mut r)| {
            r.sort();
            (r.get(r.len() / 2).copied().unwrap_or(Duration::MAX), dc)
        })
        .collect();
    ranked.sort();
    std::iter::once(local.to_string())
        .chain(ranked.into_iter().map(|(_, dc)| dc.to_string()))
        .collect()
}

/// QUIC's RTT estimates to the WAN members, read from the transport's connections at most
/// every [`RTT_REFRESH`] (reading them costs a lock per connection; they move slowly).
#[derive(Default)]
struct RttCache {
    at: Option<Instant>,
    rtts: HashMap<SocketAddr, Duration>,
}

/// How old the RTT estimates a request is routed by may be.
const RTT_REFRESH: Duration = Duration::from_millis(500);

/// One server's router: the WAN view, failure marks and the forwarding client.
pub struct Router {
    local_dc: String,
    members: watch::Receiver<Vec<Member>>,
    transport: Transport,
    client: AgentClient,
    failed: Mutex<HashMap<SocketAddr, Instant>>,
    rtts: Mutex<RttCache>,
    opts: RouterOptions,
    metrics: FederationMetrics,
    /// Reads for other DCs in flight, by what makes them identical. Held weakly: a forward
    /// every asker abandoned is dropped (its remote wait released), never kept alive here.
    inflight: Mutex<HashMap<Vec<u8>, futures::future::WeakShared<ForwardFuture>>>,
    /// The last answer to each recent read that allows `stale-if-error`, and when it came.
    last_good: Mutex<HashMap<Vec<u8>, LastGood>>,
}

/// A remembered answer and when it came.
type LastGood = (Arc<ReadOutcome>, Instant);

/// Most last-known answers kept; past it the oldest eighth goes.
const LAST_GOOD_MAX: usize = 4096;

/// A forward that identical reads share.
type ForwardFuture = futures::future::BoxFuture<'static, Result<AgentResponse, RpcError>>;

/// Forgotten entries (their askers all gone) are swept once the map holds this many.
const INFLIGHT_SWEEP: usize = 1024;

/// What makes an answer a last-known one for a read: its DC, query, consistency and token
/// (not the index it waited on). Pure.
fn last_good_key(dc: &str, r: &crate::rpc::Read) -> Vec<u8> {
    read_key(dc, r, 0)
}

/// What makes two reads for another DC identical: the DC, the query, the consistency
/// asked, the index waited on and the token (answers depend on it). Pure.
fn coalesce_key(dc: &str, r: &crate::rpc::Read) -> Vec<u8> {
    read_key(dc, r, r.opts.min_index)
}

/// A read's DC, query, consistency, token and `index`, as bytes to key a map with.
fn read_key(dc: &str, r: &crate::rpc::Read, index: u64) -> Vec<u8> {
    rmp_serde::to_vec(&(dc, &r.query, r.opts.mode, r.opts.max_stale, index, &r.token))
        .unwrap_or_default()
}

/// What makes two prepared-query executions for another DC identical: the DC and the
/// whole call (query, `near`, where it was asked, `limit`, consistency, token). Marked so
/// it never equals a read's key. Pure.
fn execution_key(dc: &str, x: &crate::rpc::ExecuteQuery) -> Vec<u8> {
    rmp_serde::to_vec(&("execute", dc, x)).unwrap_or_default()
}

impl Router {
    /// A router over the WAN pool's `members`, forwarding through `transport`.
    pub fn new(
        local_dc: &str,
        members: watch::Receiver<Vec<Member>>,
        transport: Transport,
        opts: RouterOptions,
        metrics: FederationMetrics,
    ) -> Router {
        Router {
            local_dc: local_dc.to_string(),
            members,
            client: AgentClient::new(transport.clone()).fail_fast(),
            transport,
            failed: Mutex::new(HashMap::new()),
            rtts: Mutex::new(RttCache::default()),
            opts,
            metrics,
            inflight: Mutex::new(HashMap::new()),
            last_good: Mutex::new(HashMap::new()),
        }
    }

    /// Forwards `req` to DC `dc`: a read or a prepared query's execution through
    /// [`Router::forward_coalesced`] (unless `?consistent`: one already in flight may
    /// have read before a write that preceded this request); a read that allows
    /// `stale-if-error` is remembered when answered, and answered from that memory (marked
    /// with the DC and the age) when the DC cannot be reached.
    pub async fn forward_shared(
        self: &Arc<Self>,
        dc: &str,
        req: &AgentRequest,
    ) -> Result<AgentResponse, RpcError> {
        use crate::vocab::ReadMode::Consistent;
        let read = match req {
            AgentRequest::Read(read) if read.opts.mode != Consistent => read,
            AgentRequest::ExecuteQuery(x) if x.mode != Consistent => {
                let key = execution_key(dc, x);
                return self.forward_coalesced(dc, req, key, None).await;
            }
            _ => return self.forward(dc, req, req.timeout()).await,
        };
        let out = self
            .forward_coalesced(dc, req, coalesce_key(dc, read), Some(read))
            .await;
        let Some(max_age) = read.opts.stale_if_error else {
            return out;
        };
        let key = last_good_key(dc, read);
        match out {
            Ok(AgentResponse::Read(Ok(outcome))) if outcome.stale_from.is_none() => {
                self.remember(key, &outcome);
                Ok(AgentResponse::Read(Ok(outcome)))
            }
            Err(e) if e.is_unavailable() => {
                let found = self
                    .last_good
                    .lock()
                    .expect("router lock")
                    .get(&key)
                    .cloned();
                match found.filter(|(_, at)| at.elapsed() <= max_age) {
                    Some((answer, at)) => {
                        self.metrics.stale_answers.with_label_values(&[dc]).inc();
                        let mut stale = (*answer).clone();
                        stale.stale_from = Some(crate::rpc::StaleAnswer {
                            datacenter: dc.to_string(),
                            age: at.elapsed(),
                        });
                        Ok(AgentResponse::Read(Ok(stale)))
                    }
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    fn remember(&self, key: Vec<u8>, outcome: &ReadOutcome) {
        let mut last = self.last_good.lock().expect("router lock");
        last.insert(key, (Arc::new(outcome.clone()), Instant::now()));
        if last.len() > LAST_GOOD_MAX {
            let mut by_age: Vec<(Instant, Vec<u8>)> =
                last.iter().map(|(k, (_, at))| (*at, k.clone())).collect();
            by_age.sort_by_key(|(at, _)| *at);
            for (_, k) in by_age.into_iter().take(LAST_GOOD_MAX / 8) {
                last.remove(&k);
            }
        }
    }

    /// Forwards `req` to DC `dc` as [`Router::forward`] does, except that it joins an
    /// identical one (same `key`) already in flight on this server and shares its
    /// answer: a hot name asked by many clients at once costs one forward. A joiner of a
    /// blocking `read` never waits past its own wait: then it reads the current state.
    async fn forward_coalesced(
        self: &Arc<Self>,
        dc: &str,
        req: &AgentRequest,
        key: Vec<u8>,
        read: Option<&crate::rpc::Read>,
    ) -> Result<AgentResponse, RpcError> {
        let (shared, joined) = {
            let mut inflight = self.inflight.lock().expect("router lock");
            match inflight.get(&key).and_then(|w| w.upgrade()) {
                Some(shared) => (shared, true),
                None => {
                    let (router, dc, req, k) =
                        (self.clone(), dc.to_string(), req.clone(), key.clone());
                    let shared =
                        futures::FutureExt::shared(futures::FutureExt::boxed(async move {
                            let out = router.forward(&dc, &req, req.timeout()).await;
                            router.inflight.lock().expect("router lock").remove(&k);
                            out
                        }));
                    if inflight.len() >= INFLIGHT_SWEEP {
                        inflight.retain(|_, w| w.upgrade().is_some());
                    }
                    if let Some(weak) = shared.downgrade() {
                        inflight.insert(key, weak);
                    }
                    (shared, false)
                }
            }
        };
        if !joined {
            return shared.await;
        }
        self.metrics.coalesced.inc();
        let Some(read) = read.filter(|r| r.opts.min_index > 0) else {
            return shared.await;
        };
        tokio::select! {
            out = shared => out,
            () = tokio::time::sleep(read.opts.wait) => {
                let mut now = read.clone();
                now.opts.min_index = 0;
                now.opts.wait = Duration::ZERO;
                let now = AgentRequest::Read(now);
                self.forward(dc, &now, now.timeout()).await
            }
        }
    }

    /// The WAN pool as gossip sees it.
    pub fn members(&self) -> Vec<Member> {
        self.members.borrow().clone()
    }

    /// The RTT estimates, refreshed from the transport when older than [`RTT_REFRESH`].
    fn rtts(&self, members: &[Member]) -> std::sync::MutexGuard<'_, RttCache> {
        let mut cache = self.rtts.lock().expect("router lock");
        if cache.at.is_none_or(|at| at.elapsed() >= RTT_REFRESH) {
            cache.rtts = members
                .iter()
                .filter_map(|m| Some((m.gossip_addr, self.transport.rtt(m.gossip_addr)?)))
                .collect();
            cache.at = Some(Instant::now());
        }
        cache
    }

    /// Every known datacenter, the local one first, then nearest first.
    pub fn datacenters(&self) -> Vec<String> {
        let members = self.members.borrow();
        let rtts = self.rtts(&members);
        rank_datacenters(&self.local_dc, &members, |m| {
            rtts.rtts.get(&m.gossip_addr).copied()
        })
    }

    /// The servers of `dc` in the order a request would try them now.
    pub fn servers(&self, dc: &str, prefer_leader: bool) -> Result<Vec<SocketAddr>, RpcError> {
        let members = self.members.borrow();
        let rtts = self.rtts(&members);
        let failed = self.failed.lock().expect("router lock");
        plan(
            dc,
            &members,
            |m| ServerView {
                addr: m.gossip_addr,
                rtt: rtts.rtts.get(&m.gossip_addr).copied(),
                leader: m.leader,
                failed: failed.get(&m.gossip_addr).copied(),
            },
            Instant::now(),
            self.opts.mark_for,
            prefer_leader,
        )
    }

    /// Sends `req` to a server of `dc` and returns its answer (which may itself be an
    /// error of that DC, passed on unchanged). A server that cannot be reached is marked
    /// and the next one tried, while the request surely did not apply (reads: always)
    /// and the reach deadline has not passed; `timeout` bounds the whole exchange with one
    /// server, its work included.
    pub async fn forward(
        &self,
        dc: &str,
        req: &AgentRequest,
        timeout: Duration,
    ) -> Result<AgentResponse, RpcError> {
        let started = Instant::now();
        let order = match self.servers(dc, req.needs_leader()) {
            Ok(o) => o,
            Err(e) => {
                match e {
                    RpcError::NoPathToDatacenter => self.count("unknown", "no_path"),
                    _ => self.count(dc, "unreachable"),
                }
                return Err(e);
            }
        };
        let deadline = Instant::now() + self.opts.reach;
        let mut tried = 0;
        for addr in order {
            let reach = deadline.saturating_duration_since(Instant::now());
            if reach.is_zero() {
                break;
            }
            tried += 1;
            match self.client.relay(addr, Some(dc), req, timeout, reach).await {
                Ok(resp) => {
                    self.failed.lock().expect("router lock").remove(&addr);
                    self.count(dc, if tried > 1 { "failover" } else { "ok" });
                    self.metrics
                        .seconds
                        .with_label_values(&[dc])
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(resp);
                }
                Err(e) => {
                    self.mark(addr, dc, &e);
                    if !req.may_resend(&e) {
                        self.count(dc, "error");
                        return Err(req.forward_failed(e));
                    }
                }
            }
        }
        self.count(dc, "unreachable");
        Err(RpcError::NoReachableServer)
    }

    fn mark(&self, addr: SocketAddr, dc: &str, e: &TransportError) {
        let reason = match e {
            TransportError::Timeout { .. } => "timeout",
            TransportError::Refused { .. } => "refused",
            TransportError::Remote { .. } | TransportError::Codec { .. } => "protocol",
            _ => "unreachable",
        };
        self.metrics
            .server_failures
            .with_label_values(&[reason])
            .inc();
        let first = self
            .failed
            .lock()
            .expect("router lock")
            .insert(addr, Instant::now())
            .is_none();
        if first {
            info!(%addr, %dc, error = %e, "remote server failed a forwarded request; trying another");
        } else {
            debug!(%addr, %dc, error = %e, "remote server failed again");
        }
    }

    /// Counts a forward to `dc` (a DC of the WAN pool, or `unknown`).
    fn count(&self, dc: &str, outcome: &'static str) {
        self.metrics
            .forwards
            .with_label_values(&[dc, outcome])
            .inc();
    }
}

/// `consulate_transport_peer_rtt_seconds{server, datacenter}`: QUIC's RTT estimate to every
/// server of the WAN pool this server has a connection to, read at scrape time. The label
/// set is bounded by the number of servers (clients never appear), and a server that left
/// the pool leaves the exposition with it.
pub struct RttCollector {
    router: std::sync::Arc<Router>,
    template: prometheus::GaugeVec,
}

impl RttCollector {
    /// A collector over `router`'s WAN view and RTT estimates.
    pub fn new(router: std::sync::Arc<Router>) -> RttCollector {
        RttCollector {
            router,
            template: Self::vec(),
        }
    }

    fn vec() -> prometheus::GaugeVec {
        prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "consulate_transport_peer_rtt_seconds",
                "QUIC's smoothed round-trip estimate to each server of the WAN pool this \
                 server is connected to.",
            ),
            &["server", "datacenter"],
        )
        .expect("valid metric")
    }
}

impl prometheus::core::Collector for RttCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.template.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let fresh = Self::vec();
        let members = self.router.members.borrow();
        let rtts = self.router.rtts(&members);
        for m in members.iter() {
            if let Some(rtt) = rtts.rtts.get(&m.gossip_addr) {
                fresh
                    .with_label_values(&[&m.name, &m.datacenter])
                    .set(rtt.as_secs_f64());
            }
        }
        fresh.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Role;

    #[test]
    fn identical_reads_share_a_key_and_any_difference_splits_them() {
        use crate::rpc::{Read, ReadOptions};
        use crate::state::query::Query;
        let read = |min_index, token: Option<&str>, mode| Read {
            dc: Some("dc2".into()),
            query: Query::Services {
                node_meta: Default::default(),
            },
            opts: ReadOptions {
                mode,
                max_stale: None,
                min_index,
                wait: Duration::from_secs(300),
                stale_if_error: None,
            },
            token: token.map(|t| crate::acl::Secret(t.into())),
        };
        let stale = crate::vocab::ReadMode::Stale;
        let base = coalesce_key("dc2", &read(7, Some("t"), stale));
        let mut other_wait = read(7, Some("t"), stale);
        other_wait.opts.wait = Duration::from_secs(310);
        assert_eq!(
            base,
            coalesce_key("dc2", &other_wait),
            "the wait (jittered) is not part of it"
        );
        assert_ne!(base, coalesce_key("dc3", &read(7, Some("t"), stale)));
        assert_ne!(base, coalesce_key("dc2", &read(8, Some("t"), stale)));
        assert_ne!(base, coalesce_key("dc2", &read(7, Some("u"), stale)));
        assert_ne!(base, coalesce_key("dc2", &read(7, None, stale)));
        assert_ne!(
            base,
            coalesce_key(
                "dc2",
                &read(7, Some("t"), crate::vocab::ReadMode::Consistent)
            )
        );
    }

    #[test]
    fn identical_executions_share_a_key_and_any_difference_splits_them() {
        use crate::rpc::{ExecuteQuery, QueryRef, QuerySource};
        let call = |f: &dyn Fn(&mut ExecuteQuery)| {
            let mut x = ExecuteQuery {
                dc: Some("dc2".into()),
                query: QueryRef::Named("web".into()),
                near: None,
                source: QuerySource {
                    node: "c1".into(),
                    datacenter: "dc1".into(),
                    ip: Some("10.0.0.1".into()),
                },
                limit: None,
                mode: crate::vocab::ReadMode::Leader,
                explain: false,
                token: Some(crate::acl::Secret("t".into())),
            };
            f(&mut x);
            x
        };
        let base = execution_key("dc2", &call(&|_| {}));
        assert_eq!(base, execution_key("dc2", &call(&|_| {})));
        assert_ne!(base, execution_key("dc3", &call(&|_| {})));
        let others = [
            call(&|x| x.query = QueryRef::Named("db".into())),
            call(&|x| x.near = Some("_agent".into())),
            call(&|x| x.source.ip = None),
            call(&|x| x.limit = Some(1)),
            call(&|x| x.mode = crate::vocab::ReadMode::Stale),
            call(&|x| x.token = None),
        ];
        for other in others {
            assert_ne!(base, execution_key("dc2", &other));
        }
    }

    fn member(name: &str, dc: &str, addr: &str, status: MemberStatus) -> Member {
        Member {
            name: name.into(),
            id: String::new(),
            gossip_addr: addr.parse().unwrap(),
            role: Role::Server,
            datacenter: dc.into(),
            quic: None,
            wan: None,
            http: None,
            build: String::new(),
            leader: name.starts_with("lead"),
            status,
            generation: 1,
        }
    }

    fn pool() -> Vec<Member> {
        vec![
            member("a1.dc1", "dc1", "127.0.1.1:1", MemberStatus::Alive),
            member("b1.dc2", "dc2", "127.0.2.1:1", MemberStatus::Alive),
            member("lead.dc2", "dc2", "127.0.2.2:1", MemberStatus::Alive),
            member("b3.dc2", "dc2", "127.0.2.3:1", MemberStatus::Alive),
            member("c1.dc3", "dc3", "127.0.3.1:1", MemberStatus::Failed),
            member("c2.dc3", "dc3", "127.0.3.2:1", MemberStatus::Left),
            member("d1.dc4", "dc4", "127.0.4.1:1", MemberStatus::Alive),
        ]
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn addrs(v: &[&str]) -> Vec<SocketAddr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn plan_orders_by_rtt_skips_failed_and_prefers_the_leader_when_asked() {
        let now = Instant::now();
        let rtt = |m: &Member| match m.gossip_addr.ip().to_string().as_str() {
            "127.0.2.1" => Some(ms(30)),
            "127.0.2.2" => Some(ms(50)),
            _ => None,
        };
        let view = |failed: Option<Instant>| {
            move |m: &Member| ServerView {
                addr: m.gossip_addr,
                rtt: rtt(m),
                leader: m.leader,
                failed: (m.gossip_addr.ip().to_string() == "127.0.2.1")
                    .then_some(failed)
                    .flatten(),
            }
        };
        let p = |failed, leader| plan("dc2", &pool(), view(failed), now, ms(2000), leader);
        assert_eq!(
            p(None, false).unwrap(),
            addrs(&["127.0.2.1:1", "127.0.2.2:1", "127.0.2.3:1"])
        );
        assert_eq!(
            p(None, true).unwrap(),
            addrs(&["127.0.2.2:1", "127.0.2.1:1", "127.0.2.3:1"])
        );
        // Failed just now: skipped. Failed long ago: tried after the others.
        assert_eq!(
            p(Some(now), false).unwrap(),
            addrs(&["127.0.2.2:1", "127.0.2.3:1"])
        );
        let long_ago = now.checked_sub(ms(5000)).unwrap();
        assert_eq!(
            p(Some(long_ago), false).unwrap(),
            addrs(&["127.0.2.2:1", "127.0.2.3:1", "127.0.2.1:1"])
        );
    }

    #[test]
    fn plan_tells_an_unknown_dc_from_one_with_no_live_server() {
        let now = Instant::now();
        let view = |m: &Member| ServerView {
            addr: m.gossip_addr,
            rtt: None,
            leader: false,
            failed: None,
        };
        assert_eq!(
            plan("dc9", &pool(), view, now, ms(1), false),
            Err(RpcError::NoPathToDatacenter)
        );
        assert_eq!(
            plan("dc3", &pool(), view, now, ms(1), false),
            Err(RpcError::NoReachableServer)
        );
        let all_marked = |m: &Member| ServerView {
            failed: Some(now),
            ..view(m)
        };
        assert_eq!(
            plan("dc4", &pool(), all_marked, now, ms(2000), false),
            Err(RpcError::NoReachableServer)
        );
    }

    #[test]
    fn datacenters_rank_local_first_then_by_median_rtt() {
        let rtt = |m: &Member| match m.datacenter.as_str() {
            "dc2" if m.name == "b3.dc2" => Some(ms(500)),
            "dc2" => Some(ms(40)),
            "dc4" => Some(ms(20)),
            _ => None,
        };
        assert_eq!(
            rank_datacenters("dc1", &pool(), rtt),
            vec!["dc1", "dc4", "dc2", "dc3"]
        );
        assert_eq!(
            rank_datacenters("dc5", &[], rtt),
            vec!["dc5"],
            "the local DC even before the pool is joined"
        );
    }
}
