//! Consul's agent cache (`?cached` on catalog/services, catalog/service, health/service and
//! prepared-query execute): the first request for a query fetches it; later ones are
//! answered from the agent's memory, which a background blocking query per entry keeps
//! current (stale mode, as Consul's); requests that need a fetch at once share one.
//! Prepared-query executions, which no blocking query can follow, are cached simply
//! ([`simple`]: as old as their fetch).
//! `Cache-Control: max-age=N` forces a fetch when the answer is older; `stale-if-error=N`
//! serves the last answer when a fetch fails. An entry's age is 0 while its refresh is
//! connected and counts from the moment it lost contact (Consul's rule for
//! background-refreshed types). Entries unused for [`CacheLimits::idle`] stop and go; past
//! [`CacheLimits::max_entries`] the least recently used go first.

pub mod simple;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::Secret;
use crate::dispatch::Dispatcher;
use crate::metrics::CacheMetrics;
use crate::rpc::{ExecuteQuery, QueryExecution, ReadOptions, ReadOutcome, RpcError};
use crate::state::query::Query;
use crate::vocab::ReadMode;

/// How long each background refresh blocks on the servers (Consul's cache waits 10 min).
const REFRESH_WAIT: Duration = Duration::from_secs(600);

/// The longest pause between refreshes after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a cached request asks of the cache: Consul's `Cache-Control` directives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age=N`: answers older than this are fetched again first.
    pub max_age: Option<Duration>,
    /// `stale-if-error=N`: when a fetch fails, an answer up to this old is served.
    pub stale_if_error: Option<Duration>,
    /// `must-revalidate` or `max-age=0`: a simply cached answer is fetched again first
    /// (Consul ignores it for answers a background refresh keeps current).
    pub must_revalidate: bool,
}

impl CacheControl {
    /// Reads the directives of a `Cache-Control` header (others are ignored, as Consul
    /// does; a malformed number is ignored too).
    pub fn parse(header: &str) -> CacheControl {
        let mut c = CacheControl::default();
        for directive in header.split(',') {
            let Some((name, value)) = directive.trim().split_once('=') else {
                c.must_revalidate |= directive.trim().eq_ignore_ascii_case("must-revalidate");
                continue;
            };
            let Ok(secs) = value.trim().parse::<u64>() else {
                continue;
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "max-age" => {
                    c.max_age = Some(Duration::from_secs(secs));
                    c.must_revalidate |= secs == 0;
                }
                "stale-if-error" => c.stale_if_error = Some(Duration::from_secs(secs)),
                _ => {}
            }
        }
        c
    }
}

/// How many entries the cache keeps and for how long unused.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Most entries held; the least recently used past it are dropped.
    pub max_entries: usize,
    /// An entry unused this long stops refreshing and is dropped.
    pub idle: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_entries: 10_000,
            idle: Duration::from_secs(3600),
        }
    }
}

/// A cached answer: the outcome, whether it came from memory, and its age.
pub struct CachedAnswer {
    /// The answer.
    pub outcome: Arc<ReadOutcome>,
    /// `X-Cache: HIT` (from memory) or `MISS` (fetched for this request).
    pub hit: bool,
    /// `Age`: 0 while the entry's refresh is connected, else since it lost contact.
    pub age: Duration,
}

/// What identifies a cached answer: the DC, the query and the token's digest (answers
/// depend on what the token may read).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    dc: Option<String>,
    query: Vec<u8>,
    token: Option<[u8; 32]>,
}

impl Key {
    fn new(dc: Option<&str>, query: &Query, token: Option<&Secret>) -> Key {
        Key {
            dc: dc.map(str::to_string),
            query: rmp_serde::to_vec(query).unwrap_or_default(),
            token: token.map(|t| crate::acl::model::secret_digest(&t.0)),
        }
    }
}

/// An entry's current state.
#[derive(Clone, Default)]
struct Snapshot {
    answer: Option<Arc<ReadOutcome>>,
    /// Since when the refresh fails (`None`: connected).
    lost_contact: Option<Instant>,
}

impl Snapshot {
    fn age(&self) -> Duration {
        self.lost_contact.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// A fetch, as the requests that need it at once share it.
type Fetching<V> = futures::future::BoxFuture<'static, Result<Arc<V>, RpcError>>;

/// The fetch running in `slot`, else a new one from `start`, left there weakly (it ends
/// with its last asker, never kept alive by the cache).
fn join_or_start<V>(
    slot: &mut Option<futures::future::WeakShared<Fetching<V>>>,
    start: impl FnOnce() -> Fetching<V>,
) -> futures::future::Shared<Fetching<V>> {
    if let Some(running) = slot.as_ref().and_then(futures::future::WeakShared::upgrade) {
        return running;
    }
    let shared = futures::FutureExt::shared(start());
    *slot = shared.downgrade();
    shared
}

/// The keys of the `n` least recently used of `entries` (key, last use). Pure.
fn least_used<K>(entries: impl Iterator<Item = (K, Instant)>, n: usize) -> Vec<K> {
    let mut by_use: Vec<(Instant, K)> = entries.map(|(k, t)| (t, k)).collect();
    by_use.sort_by_key(|(t, _)| *t);
    by_use.into_iter().take(n).map(|(_, k)| k).collect()
}

struct Entry {
    state: watch::Sender<Snapshot>,
    last_used: Mutex<Instant>,
    stop: CancellationToken,
    bytes: AtomicI64,
    /// The fetch a request started, shared by the requests that need one meanwhile.
    fetching: Mutex<Option<futures::future::WeakShared<Fetching<ReadOutcome>>>>,
}

impl Entry {
    fn used(&self) {
        *self.last_used.lock().expect("cache entry lock") = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().expect("cache entry lock").elapsed()
    }
}

/// Where the cache fetches from: the agent's [`Dispatcher`] (a stand-in in unit tests).
pub trait Fetch: Send + Sync + 'static {
    /// Reads `query` in `dc` for `token` as `opts` say.
    fn read(
        &self,
        token: Option<Secret>,
        dc: Option<String>,
        query: Query,
        opts: ReadOptions,
    ) -> futures::future::BoxFuture<'static, Result<ReadOutcome, RpcError>>;

    /// Runs a prepared query.
    fn execute(
        &self,
        call: ExecuteQuery,
    ) -> futures::future::BoxFuture<'static, Result<QueryExecution, RpcError>>;
}

impl Fetch for Dispatcher {
    fn read(
        &self,
        token: Option<Secret>,
        dc: Option<String>,
        query: Query,
        opts: ReadOptions,
    ) -> futures::future::BoxFuture<'static, Result<ReadOutcome, RpcError>> {
        let dispatcher = self.clone();
        Box::pin(async move { dispatcher.read(token, dc.as_deref(), query, opts).await })
    }

    fn execute(
        &self,
        call: ExecuteQuery,
    ) -> futures::future::BoxFuture<'static, Result<QueryExecution, RpcError>> {
        let dispatcher = self.clone();
        Box::pin(async move { dispatcher.call(call).await })
    }
}

/// What identifies a cached execution: everything its answer depends on (the DC, the
/// query, `near`, where it was asked from, `limit`, the token's digest), not the
/// consistency asked (a cached execution is always fetched stale, as Consul's). Pure.
fn execution_key(call: &ExecuteQuery) -> Vec<u8> {
    let token = call
        .token
        .as_ref()
        .map(|t| crate::acl::model::secret_digest(&t.0));
    rmp_serde::to_vec(&(
        &call.dc,
        &call.query,
        &call.near,
        &call.source,
        call.limit,
        call.explain,
        token,
    ))
    .unwrap_or_default()
}

struct Inner {
    fetch: Arc<dyn Fetch>,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    executions: simple::SimpleCache<QueryExecution>,
    metrics: CacheMetrics,
    limits: CacheLimits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The agent cache. Clones share it.
#[derive(Clone)]
pub struct AgentCache {
    inner: Arc<Inner>,
}

impl AgentCache {
    /// A cache that fetches through `fetch`; its refreshes stop when `shutdown` fires.
    pub fn new(
        fetch: Arc<dyn Fetch>,
        metrics: CacheMetrics,
        limits: CacheLimits,
        shutdown: CancellationToken,
    ) -> AgentCache {
        AgentCache {
            inner: Arc::new(Inner {
                fetch,
                entries: Mutex::new(HashMap::new()),
                executions: simple::SimpleCache::new(metrics.clone(), limits),
                metrics,
                limits,
                shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Answers `query` in `dc` for `token` from the cache, fetching it on a miss. With
    /// `min_index > 0` it is a blocking query on the cached entry: it answers once the
    /// entry's index passes `min_index`, or after `wait`.
    pub async fn read(
        &self,
        token: Option<Secret>,
        dc: Option<&str>,
        query: Query,
        control: CacheControl,
        min_index: u64,
        wait: Duration,
    ) -> Result<CachedAnswer, RpcError> {
        let entry = self.entry(token.clone(), dc, &query);
        entry.used();
        let now = entry.state.borrow().clone();
        let fresh_enough = |s: &Snapshot| control.max_age.is_none_or(|max| s.age() <= max);
        let answer = match now.answer.clone() {
            Some(answer) if now.lost_contact.is_none() && fresh_enough(&now) => {
                self.count("hit");
                CachedAnswer {
                    outcome: answer,
                    hit: true,
                    age: now.age(),
                }
            }
            cached => match self.fetch(&entry, token, dc, query).await {
                Ok(outcome) => {
                    self.count("miss");
                    CachedAnswer {
                        outcome,
                        hit: false,
                        age: Duration::ZERO,
                    }
                }
                Err(e) => match cached {
                    Some(answer)
                        if e.is_unavailable()
                            && control.stale_if_error.is_some_and(|s| now.age() <= s) =>
                    {
                        self.count("stale_if_error");
                        let age = entry.state.borrow().age();
                        CachedAnswer {
                            outcome: answer,
                            hit: true,
                            age,
                        }
                    }
                    _ => {
                        self.count("error");
                        return Err(e);
                    }
                },
            },
        };
        if min_index == 0 || answer.outcome.index > min_index {
            return Ok(answer);
        }
        // A blocking query on the entry: wait for the refresh to bring a newer index.
        let mut changes = entry.state.subscribe();
        let deadline = Instant::now() + wait;
        loop {
            let snapshot = changes.borrow_and_update().clone();
            if let Some(a) = snapshot.answer.as_ref().filter(|a| a.index > min_index) {
                return Ok(CachedAnswer {
                    outcome: a.clone(),
                    hit: true,
                    age: snapshot.age(),
                });
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                () = tokio::time::sleep_until(deadline) => break,
                () = self.inner.shutdown.cancelled() => break,
            }
        }
        Ok(answer)
    }

    /// Answers a prepared query's execution (`/v1/query/:id/execute?cached`) from the
    /// simple cache: fetched (in stale mode) on a miss or when `control` asks for a
    /// younger answer than the one held.
    pub async fn execute(
        &self,
        call: ExecuteQuery,
        control: CacheControl,
    ) -> Result<simple::Cached<QueryExecution>, RpcError> {
        let fetch = self.inner.fetch.clone();
        let key = execution_key(&call);
        let call = ExecuteQuery {
            mode: ReadMode::Stale,
            ..call
        };
        self.inner
            .executions
            .get(key, control, move || fetch.execute(call))
            .await
    }

    fn count(&self, outcome: &str) {
        self.inner
            .metrics
            .requests
            .with_label_values(&[outcome])
            .inc();
    }

    /// The entry of a query, made (and its refresh started) if new.
    fn entry(&self, token: Option<Secret>, dc: Option<&str>, query: &Query) -> Arc<Entry> {
        let key = Key::new(dc, query, token.as_ref());
        let mut entries = self.inner.entries.lock().expect("cache lock");
        if let Some(e) = entries.get(&key) {
            return e.clone();
        }
        let entry = Arc::new(Entry {
            state: watch::channel(Snapshot::default()).0,
            last_used: Mutex::new(Instant::now()),
            stop: self.inner.shutdown.child_token(),
            bytes: AtomicI64::new(0),
            fetching: Mutex::new(None),
        });
        entries.insert(key.clone(), entry.clone());
        self.inner.metrics.entries.inc();
        if entries.len() > self.inner.limits.max_entries {
            self.evict_least_used(&mut entries);
        }
        drop(entries);
        let cache = self.clone();
        let (refreshed, dc, query) = (entry.clone(), dc.map(str::to_string), query.clone());
        self.inner.tasks.spawn(async move {
            cache.refresh(key, refreshed, token, dc, query).await;
        });
        entry
    }

    /// Drops the least recently used eighth of the entries (amortized: one sort per
    /// `max_entries / 8` new entries).
    fn evict_least_used(&self, entries: &mut HashMap<Key, Arc<Entry>>) {
        let used = entries
            .iter()
            .map(|(k, e)| (k.clone(), *e.last_used.lock().expect("cache entry lock")));
        for key in least_used(used, (self.inner.limits.max_entries / 8).max(1)) {
            if let Some(e) = entries.remove(&key) {
                self.forget(&e, "capacity");
            }
        }
    }

    /// Stops an entry removed from the map and takes it out of the figures.
    fn forget(&self, e: &Entry, reason: &str) {
        e.stop.cancel();
        self.inner.metrics.entries.dec();
        self.inner
            .metrics
            .bytes
            .sub(e.bytes.swap(0, Ordering::Relaxed));
        self.inner
            .metrics
            .evictions
            .with_label_values(&[reason])
            .inc();
    }

    /// Stores a fetched answer in the entry (unless the refresh already stored a newer
    /// one) and returns what the entry holds.
    fn store(&self, entry: &Entry, out: ReadOutcome) -> Arc<ReadOutcome> {
        let size = rmp_serde::to_vec(&out).map_or(0, |b| b.len() as i64);
        let out = Arc::new(out);
        let mut kept = out.clone();
        entry.state.send_modify(|s| {
            match &s.answer {
                Some(old) if old.index > out.index => kept = old.clone(),
                _ => {
                    s.answer = Some(out.clone());
                    let before = entry.bytes.swap(size, Ordering::Relaxed);
                    self.inner.metrics.bytes.add(size - before);
                }
            }
            s.lost_contact = None;
        });
        kept
    }

    /// A fetch for a request (a miss, an answer too old, a refresh that lost contact),
    /// shared with the requests of the entry that need one while it runs.
    async fn fetch(
        &self,
        entry: &Arc<Entry>,
        token: Option<Secret>,
        dc: Option<&str>,
        query: Query,
    ) -> Result<Arc<ReadOutcome>, RpcError> {
        let shared = {
            let mut fetching = entry.fetching.lock().expect("cache entry lock");
            join_or_start(&mut fetching, || {
                // The cache's own stale-if-error covers failures: a server's last-known
                // answer is never stored as a fresh one.
                let opts = ReadOptions::now(ReadMode::Stale);
                let read = self
                    .inner
                    .fetch
                    .read(token, dc.map(str::to_string), query, opts);
                let (cache, entry) = (self.clone(), entry.clone());
                Box::pin(async move { Ok(cache.store(&entry, read.await?)) })
            })
        };
        shared.await
    }

    /// The entry's background refresh: a blocking query on its index, again and again,
    /// with backoff after failures, until the entry is idle or evicted or the agent stops.
    async fn refresh(
        &self,
        key: Key,
        entry: Arc<Entry>,
        token: Option<Secret>,
        dc: Option<String>,
        query: Query,
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            if entry.stop.is_cancelled() {
                return;
            }
            if entry.idle_for() > self.inner.limits.idle {
                let mut entries = self.inner.entries.lock().expect("cache lock");
                if entries.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                    entries.remove(&key);
                    drop(entries);
                    self.forget(&entry, "idle");
                }
                return;
            }
            let index = entry.state.borrow().answer.as_ref().map_or(0, |a| a.index);
            if index == 0 {
                // The request that made the entry fetches its first answer; until one is
                // there (a failed first fetch), wait for the next request's.
                let mut changes = entry.state.subscribe();
                tokio::select! {
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(backoff) => {}
                    () = entry.stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            let opts = ReadOptions {
                min_index: index,
                wait: REFRESH_WAIT.min(self.inner.limits.idle),
                ..ReadOptions::now(ReadMode::Stale)
            };
            let read = self
                .inner
                .fetch
                .read(token.clone(), dc.clone(), query.clone(), opts);
            let result = tokio::select! {
                r = read => r,
                () = entry.stop.cancelled() => return,
            };
            match result {
                Ok(out) => {
                    backoff = Duration::from_secs(1);
                    self.store(&entry, out);
                }
                Err(_) => {
                    entry.state.send_modify(|s| {
                        s.lost_contact.get_or_insert_with(Instant::now);
                    });
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = entry.stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Waits up to `bound` for every refresh to end once the agent's shutdown has fired.
    pub async fn close(&self, bound: Duration) {
        self.inner.tasks.close();
        let _ = tokio::time::timeout(bound, self.inner.tasks.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the servers: answers at index 1 once `open` (a blocking refresh
    /// waits until cancelled), or fails while `down`.
    struct Servers {
        down: std::sync::atomic::AtomicBool,
        fetches: std::sync::atomic::AtomicU64,
        open: watch::Sender<bool>,
    }

    impl Fetch for Servers {
        fn read(
            &self,
            _: Option<Secret>,
            _: Option<String>,
            query: Query,
            opts: ReadOptions,
        ) -> futures::future::BoxFuture<'static, Result<ReadOutcome, RpcError>> {
            if opts.min_index > 0 {
                return Box::pin(std::future::pending());
            }
            self.fetches.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Box::pin(std::future::ready(Err(RpcError::NoReachableServer)));
            }
            let Query::KvGet { key } = query else {
                unreachable!("the tests read keys")
            };
            let mut open = self.open.subscribe();
            Box::pin(async move {
                open.wait_for(|o| *o).await.expect("the stand-in lives");
                Ok(ReadOutcome {
                    result: crate::state::query::QueryResult::Keys(vec![key; 8]),
                    index: 1,
                    meta: crate::raft::ReadMeta {
                        known_leader: true,
                        last_contact_ms: 0,
                    },
                    mode: ReadMode::Stale,
                    filtered: false,
                    stale_from: None,
                })
            })
        }

        /// Answers with the consistency it was asked in as the service's name.
        fn execute(
            &self,
            call: ExecuteQuery,
        ) -> futures::future::BoxFuture<'static, Result<QueryExecution, RpcError>> {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            Box::pin(std::future::ready(Ok(QueryExecution {
                service: format!("{:?}", call.mode),
                nodes: Vec::new(),
                dns_ttl: String::new(),
                datacenter: "dc1".into(),
                failovers: 0,
                index: 1,
                meta: crate::raft::ReadMeta {
                    known_leader: true,
                    last_contact_ms: 0,
                },
                query: None,
            })))
        }
    }

    fn cache(limits: CacheLimits) -> (AgentCache, Arc<Servers>, CacheMetrics) {
        let servers = Arc::new(Servers {
            down: Default::default(),
            fetches: Default::default(),
            open: watch::channel(true).0,
        });
        let metrics = crate::metrics::Metrics::new().cache;
        let c = AgentCache::new(
            servers.clone(),
            metrics.clone(),
            limits,
            CancellationToken::new(),
        );
        (c, servers, metrics)
    }

    fn key(i: usize) -> Query {
        Query::KvGet {
            key: format!("k{i}"),
        }
    }

    async fn read(
        c: &AgentCache,
        i: usize,
        control: CacheControl,
    ) -> Result<CachedAnswer, RpcError> {
        c.read(None, Some("dc2"), key(i), control, 0, Duration::ZERO)
            .await
    }

    #[tokio::test]
    async fn memory_stays_bounded_over_100_000_distinct_queries() {
        let limits = CacheLimits {
            max_entries: 1_000,
            idle: Duration::from_secs(3600),
        };
        let (c, servers, metrics) = cache(limits);
        let mut peak = (0, 0);
        for i in 0..100_000 {
            let a = read(&c, i, CacheControl::default()).await.unwrap();
            assert!(!a.hit);
            peak.0 = peak.0.max(metrics.entries.get());
            peak.1 = peak.1.max(metrics.bytes.get());
        }
        assert!(peak.0 <= 1_001, "entries peaked at {}", peak.0);
        let per_entry = metrics.bytes.get() / metrics.entries.get();
        assert!(peak.1 <= 1_001 * per_entry, "bytes peaked at {}", peak.1);
        assert!(metrics.evictions.with_label_values(&["capacity"]).get() >= 99_000);
        assert_eq!(servers.fetches.load(Ordering::Relaxed), 100_000);
        // The newest are still there: a hit, no fetch.
        assert!(read(&c, 99_999, CacheControl::default()).await.unwrap().hit);
        assert_eq!(servers.fetches.load(Ordering::Relaxed), 100_000);
        c.inner.shutdown.cancel();
        c.close(Duration::from_secs(5)).await;
        assert!(
            c.inner.tasks.is_empty(),
            "every refresh ended with the agent"
        );
    }

    #[tokio::test]
    async fn an_answer_is_served_stale_only_when_asked_and_marked_with_its_age() {
        let (c, servers, metrics) = cache(CacheLimits::default());
        assert!(!read(&c, 1, CacheControl::default()).await.unwrap().hit);
        assert!(read(&c, 1, CacheControl::default()).await.unwrap().hit);
        // The refresh loses contact (as a failing blocking query would record it).
        servers.down.store(true, Ordering::Relaxed);
        let entry = c.entry(None, Some("dc2"), &key(1));
        entry.state.send_modify(|s| {
            s.lost_contact = Some(Instant::now() - Duration::from_secs(5));
        });
        let stale = CacheControl {
            stale_if_error: Some(Duration::from_secs(60)),
            ..CacheControl::default()
        };
        let a = read(&c, 1, stale).await.unwrap();
        assert!(
            a.hit && a.age >= Duration::from_secs(5),
            "marked by its age"
        );
        assert!(matches!(
            read(&c, 1, CacheControl::default()).await,
            Err(RpcError::NoReachableServer)
        ));
        let too_old = CacheControl {
            stale_if_error: Some(Duration::from_secs(1)),
            ..CacheControl::default()
        };
        assert!(
            read(&c, 1, too_old).await.is_err(),
            "older than stale-if-error allows"
        );
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["stale_if_error"])
                .get(),
            1
        );
        assert_eq!(metrics.requests.with_label_values(&["error"]).get(), 2);
        // Back: a fetch refreshes it, and max-age is met again.
        servers.down.store(false, Ordering::Relaxed);
        let a = read(&c, 1, CacheControl::default()).await.unwrap();
        assert!(!a.hit && a.age == Duration::ZERO);
    }

    #[test]
    fn cache_control_reads_consuls_directives() {
        let c = CacheControl::parse("max-age=30, stale-if-error=600");
        assert_eq!(c.max_age, Some(Duration::from_secs(30)));
        assert_eq!(c.stale_if_error, Some(Duration::from_secs(600)));
        let c = CacheControl::parse("no-cache, Max-Age = 5, stale-if-error=soon");
        assert_eq!(c.max_age, Some(Duration::from_secs(5)));
        assert_eq!(c.stale_if_error, None, "a malformed number is ignored");
        assert!(!c.must_revalidate);
        assert_eq!(CacheControl::parse(""), CacheControl::default());
        assert!(CacheControl::parse("Must-Revalidate").must_revalidate);
        let c = CacheControl::parse("max-age=0");
        assert!(c.must_revalidate && c.max_age == Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn requests_that_miss_at_once_share_one_fetch() {
        let (c, servers, metrics) = cache(CacheLimits::default());
        servers.open.send_replace(false);
        let asks = (0..50).map(|_| {
            let c = c.clone();
            async move { read(&c, 1, CacheControl::default()).await }
        });
        let all = tokio::spawn(futures::future::join_all(asks));
        tokio::task::yield_now().await;
        servers.open.send_replace(true);
        for a in all.await.unwrap() {
            assert!(!a.unwrap().hit, "each shared the fetch");
        }
        assert_eq!(servers.fetches.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.requests.with_label_values(&["miss"]).get(), 50);
    }

    #[tokio::test]
    async fn executions_are_fetched_stale_and_kept_per_dc_query_source_limit_and_token() {
        let (c, servers, _) = cache(CacheLimits::default());
        let call = |f: &dyn Fn(&mut ExecuteQuery)| {
            let mut call = ExecuteQuery {
                dc: Some("dc2".into()),
                query: crate::rpc::QueryRef::Named("web".into()),
                near: None,
                source: crate::rpc::QuerySource {
                    node: "c1".into(),
                    datacenter: "dc1".into(),
                    ip: Some("10.0.0.1".into()),
                },
                limit: None,
                mode: ReadMode::Leader,
                explain: false,
                token: Some(Secret("t1".into())),
            };
            f(&mut call);
            call
        };
        let miss = c
            .execute(call(&|_| {}), CacheControl::default())
            .await
            .unwrap();
        assert_eq!((miss.hit, miss.value.service.as_str()), (false, "Stale"));
        let same = [call(&|_| {}), call(&|c| c.mode = ReadMode::Consistent)];
        for same in same {
            assert!(c.execute(same, CacheControl::default()).await.unwrap().hit);
        }
        let others = [
            call(&|c| c.dc = None),
            call(&|c| c.query = crate::rpc::QueryRef::Named("db".into())),
            call(&|c| c.near = Some("_agent".into())),
            call(&|c| c.source.ip = Some("10.0.0.2".into())),
            call(&|c| c.limit = Some(1)),
            call(&|c| c.token = Some(Secret("t2".into()))),
            call(&|c| c.token = None),
        ];
        for other in others {
            assert!(!c.execute(other, CacheControl::default()).await.unwrap().hit);
        }
        assert_eq!(servers.fetches.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn answers_depend_on_the_dc_the_query_and_the_token() {
        let q = Query::Services {
            node_meta: Default::default(),
        };
        let a = Key::new(Some("dc2"), &q, Some(&Secret("t1".into())));
        assert_eq!(a, Key::new(Some("dc2"), &q, Some(&Secret("t1".into()))));
        assert_ne!(a, Key::new(Some("dc2"), &q, Some(&Secret("t2".into()))));
        assert_ne!(a, Key::new(None, &q, Some(&Secret("t1".into()))));
        assert_ne!(a, Key::new(Some("dc2"), &q, None));
        assert!(
            !a.token.unwrap().iter().all(|b| *b == 0),
            "a digest, never the secret"
        );
        assert!(RpcError::NoReachableServer.is_unavailable());
        assert!(!RpcError::NotFound("x".into()).is_unavailable());
    }
}
