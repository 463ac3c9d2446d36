//! Consul's simple caching, for answers no blocking query can keep current (prepared-query
//! execute): the first request fetches; later ones are answered from memory with their
//! age since that fetch, until `Cache-Control` asks for a younger answer (`max-age=N`, or
//! `must-revalidate` / `max-age=0` for a fetch every time). When a fetch fails because the
//! servers (or the remote DC) cannot be reached, `stale-if-error=N` serves the stored
//! answer if it is at most that old. Requests that need a fetch while one is running share
//! it. Entries unused for the idle time are dropped by a sweep every
//! [`SWEEP_EVERY`] (at the next new entry); past the cap the least recently used go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, WeakShared};
use serde::Serialize;
use tokio::time::Instant;

use super::{CacheControl, CacheLimits, Fetching};
use crate::metrics::CacheMetrics;
use crate::rpc::RpcError;

/// How often entries unused for the idle time are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// An answer from a [`SimpleCache`].
#[derive(Debug)]
pub struct Cached<V> {
    /// The answer.
    pub value: Arc<V>,
    /// `X-Cache: HIT` (from memory) or `MISS` (fetched for this request).
    pub hit: bool,
    /// `Age`: since the answer was fetched.
    pub age: Duration,
    /// Served because a fetch failed (`stale-if-error`), not because it was young enough.
    pub fallback: bool,
}

struct SlotState<V> {
    /// The last answer and when it arrived.
    stored: Option<(Arc<V>, Instant)>,
    /// The fetch running for this entry, if any.
    inflight: Option<WeakShared<Fetching<V>>>,
    last_used: Instant,
    bytes: i64,
    /// Out of the map: a fetch finishing now serves its askers but is not counted.
    dropped: bool,
}

struct Slot<V> {
    state: Mutex<SlotState<V>>,
}

struct Slots<V> {
    map: HashMap<Vec<u8>, Arc<Slot<V>>>,
    swept: Instant,
}

/// Answers kept by key, each as old as its fetch (see the module doc). Shares the agent
/// cache's metrics: a request counts as `hit`, `miss`, `stale_if_error` or `error`.
pub struct SimpleCache<V> {
    slots: Mutex<Slots<V>>,
    metrics: CacheMetrics,
    limits: CacheLimits,
}

impl<V: Serialize + Send + Sync + 'static> SimpleCache<V> {
    /// An empty cache bounded by `limits`, counted in `metrics`.
    pub fn new(metrics: CacheMetrics, limits: CacheLimits) -> SimpleCache<V> {
        SimpleCache {
            slots: Mutex::new(Slots {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
            metrics,
            limits,
        }
    }

    /// The answer for `key`: from memory if young enough for `control`, else from `fetch`
    /// (shared with any request for `key` already fetching), else, when that fetch finds
    /// no server and `control` allows it, the stored answer.
    pub async fn get(
        &self,
        key: Vec<u8>,
        control: CacheControl,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<V, RpcError>>,
    ) -> Result<Cached<V>, RpcError> {
        let slot = self.slot(key);
        let (shared, stored) = {
            let mut s = slot.state.lock().expect("cache slot lock");
            s.last_used = Instant::now();
            if let Some((value, at)) = &s.stored
                && young_enough(control, at.elapsed())
            {
                self.count("hit");
                return Ok(Cached {
                    value: value.clone(),
                    hit: true,
                    age: at.elapsed(),
                    fallback: false,
                });
            }
            let shared = super::join_or_start(&mut s.inflight, || {
                let fetched = fetch();
                let (slot, metrics) = (slot.clone(), self.metrics.clone());
                async move {
                    let value = Arc::new(fetched.await?);
                    slot.store(value.clone(), &metrics);
                    Ok(value)
                }
                .boxed()
            });
            (shared, s.stored.clone())
        };
        match shared.await {
            Ok(value) => {
                self.count("miss");
                Ok(Cached {
                    value,
                    hit: false,
                    age: Duration::ZERO,
                    fallback: false,
                })
            }
            Err(e) => match stored {
                Some((value, at))
                    if e.is_unavailable()
                        && control.stale_if_error.is_some_and(|s| at.elapsed() <= s) =>
                {
                    self.count("stale_if_error");
                    Ok(Cached {
                        value,
                        hit: true,
                        age: at.elapsed(),
                        fallback: true,
                    })
                }
                _ => {
                    self.count("error");
                    Err(e)
                }
            },
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics.requests.with_label_values(&[outcome]).inc();
    }

    /// The entry of `key`, made if new (first sweeping idle entries when one is due, and
    /// making room at the cap by dropping the least recently used eighth).
    fn slot(&self, key: Vec<u8>) -> Arc<Slot<V>> {
        let mut slots = self.slots.lock().expect("cache lock");
        if let Some(slot) = slots.map.get(&key) {
            return slot.clone();
        }
        if slots.swept.elapsed() >= SWEEP_EVERY {
            slots.swept = Instant::now();
            let idle = self.limits.idle;
            slots.map.retain(|_, slot| {
                let keep = slot.last_used().elapsed() <= idle;
                if !keep {
                    self.forget(slot, "idle");
                }
                keep
            });
        }
        if slots.map.len() >= self.limits.max_entries {
            let used = slots.map.iter().map(|(k, s)| (k.clone(), s.last_used()));
            for key in super::least_used(used, (self.limits.max_entries / 8).max(1)) {
                if let Some(slot) = slots.map.remove(&key) {
                    self.forget(&slot, "capacity");
                }
            }
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                stored: None,
                inflight: None,
                last_used: Instant::now(),
                bytes: 0,
                dropped: false,
            }),
        });
        slots.map.insert(key, slot.clone());
        self.metrics.entries.inc();
        slot
    }

    /// Takes an entry removed from the map out of the figures, counted as `reason`.
    fn forget(&self, slot: &Slot<V>, reason: &str) {
        let mut s = slot.state.lock().expect("cache slot lock");
        s.dropped = true;
        self.metrics.bytes.sub(std::mem::take(&mut s.bytes));
        self.metrics.entries.dec();
        self.metrics.evictions.with_label_values(&[reason]).inc();
    }
}

impl<V: Serialize> Slot<V> {
    fn last_used(&self) -> Instant {
        self.state.lock().expect("cache slot lock").last_used
    }

    /// Keeps a fetched answer as the entry's (counted in the bytes held).
    fn store(&self, value: Arc<V>, metrics: &CacheMetrics) {
        let size = rmp_serde::to_vec(&*value).map_or(0, |b| b.len() as i64);
        let mut s = self.state.lock().expect("cache slot lock");
        if s.dropped {
            return;
        }
        metrics.bytes.add(size - s.bytes);
        s.bytes = size;
        s.stored = Some((value, Instant::now()));
    }
}

/// Whether an answer `age` old may be served for `control` (Consul's rule for simple
/// caching: `must-revalidate` never, `max-age` up to that age, else any age).
fn young_enough(control: CacheControl, age: Duration) -> bool {
    !control.must_revalidate && control.max_age.is_none_or(|max| age <= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn cache(limits: CacheLimits) -> (SimpleCache<String>, CacheMetrics) {
        let metrics = crate::metrics::Metrics::new().cache;
        (SimpleCache::new(metrics.clone(), limits), metrics)
    }

    fn answer(v: &str) -> impl FnOnce() -> BoxFuture<'static, Result<String, RpcError>> {
        let v = v.to_string();
        move || async move { Ok(v) }.boxed()
    }

    fn unreachable() -> impl FnOnce() -> BoxFuture<'static, Result<String, RpcError>> {
        || async { Err(RpcError::NoReachableServer) }.boxed()
    }

    fn control(header: &str) -> CacheControl {
        CacheControl::parse(header)
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_then_hits_as_old_as_the_fetch_until_max_age_asks_for_younger() {
        let (c, metrics) = cache(CacheLimits::default());
        let k = || b"q".to_vec();
        let a = c.get(k(), control(""), answer("one")).await.unwrap();
        assert_eq!(
            (a.value.as_str(), a.hit, a.age),
            ("one", false, Duration::ZERO)
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        // Without max-age, any age is served; the fetch is not asked for.
        let a = c.get(k(), control(""), answer("two")).await.unwrap();
        assert_eq!(
            (a.value.as_str(), a.hit, a.age.as_secs()),
            ("one", true, 30)
        );
        let a = c
            .get(k(), control("max-age=60"), answer("two"))
            .await
            .unwrap();
        assert_eq!((a.value.as_str(), a.hit), ("one", true));
        // Older than max-age: fetched again, and that answer is the entry's now.
        let a = c
            .get(k(), control("max-age=10"), answer("two"))
            .await
            .unwrap();
        assert_eq!(
            (a.value.as_str(), a.hit, a.age),
            ("two", false, Duration::ZERO)
        );
        let a = c
            .get(k(), control("max-age=10"), answer("three"))
            .await
            .unwrap();
        assert_eq!((a.value.as_str(), a.hit), ("two", true));
        // must-revalidate and max-age=0 fetch every time.
        for header in ["must-revalidate", "max-age=0"] {
            let a = c.get(k(), control(header), answer(header)).await.unwrap();
            assert_eq!((a.value.as_str(), a.hit), (header, false));
        }
        let counted = |o: &str| metrics.requests.with_label_values(&[o]).get();
        assert_eq!((counted("hit"), counted("miss")), (3, 4));
        assert_eq!(metrics.entries.get(), 1);
        assert_eq!(
            metrics.bytes.get(),
            rmp_serde::to_vec("max-age=0").unwrap().len() as i64
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_serves_the_stored_answer_only_when_asked_and_young_enough() {
        let (c, metrics) = cache(CacheLimits::default());
        let k = || b"q".to_vec();
        c.get(k(), control(""), answer("kept")).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        let asked = control("max-age=5, stale-if-error=60");
        let a = c.get(k(), asked, unreachable()).await.unwrap();
        assert_eq!(
            (a.value.as_str(), a.hit, a.age.as_secs(), a.fallback),
            ("kept", true, 20, true)
        );
        // Without stale-if-error, or past it, the error is the answer.
        let e = c.get(k(), control("max-age=5"), unreachable()).await;
        assert_eq!(e.unwrap_err(), RpcError::NoReachableServer);
        let e = c
            .get(k(), control("max-age=5, stale-if-error=10"), unreachable())
            .await;
        assert_eq!(e.unwrap_err(), RpcError::NoReachableServer);
        // An error that is not about reaching a server is never papered over.
        let refused = || async { Err(RpcError::Refused("no".into())) }.boxed();
        assert_eq!(
            c.get(k(), asked, refused).await.unwrap_err(),
            RpcError::Refused("no".into())
        );
        // Nothing stored yet: stale-if-error has nothing to serve.
        assert!(
            c.get(b"other".to_vec(), asked, unreachable())
                .await
                .is_err()
        );
        let counted = |o: &str| metrics.requests.with_label_values(&[o]).get();
        assert_eq!((counted("stale_if_error"), counted("error")), (1, 4));
    }

    #[tokio::test]
    async fn requests_needing_a_fetch_at_once_share_one() {
        let (c, _) = cache(CacheLimits::default());
        let c = Arc::new(c);
        let fetches = Arc::new(AtomicU64::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let asks = (0..50).map(|_| {
            let (c, fetches, mut released) = (c.clone(), fetches.clone(), released.clone());
            async move {
                c.get(b"q".to_vec(), CacheControl::default(), move || {
                    async move {
                        fetches.fetch_add(1, Ordering::Relaxed);
                        released.wait_for(|r| *r).await.expect("released");
                        Ok("shared".to_string())
                    }
                    .boxed()
                })
                .await
            }
        });
        let all = tokio::spawn(futures::future::join_all(asks));
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        let answers = all.await.unwrap();
        for a in answers {
            let a = a.unwrap();
            assert_eq!(
                (a.value.as_str(), a.hit),
                ("shared", false),
                "each shared the fetch"
            );
        }
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_and_idle_entries_go() {
        let limits = CacheLimits {
            max_entries: 1000,
            idle: Duration::from_secs(120),
        };
        let (c, metrics) = cache(limits);
        for i in 0..100_000u32 {
            c.get(i.to_be_bytes().to_vec(), control(""), answer("x"))
                .await
                .unwrap();
        }
        let held = metrics.entries.get();
        assert!((1..=1000).contains(&held), "{held} entries held");
        assert_eq!(
            metrics.bytes.get(),
            held * rmp_serde::to_vec("x").unwrap().len() as i64
        );
        let evicted = metrics.evictions.with_label_values(&["capacity"]).get();
        assert_eq!(evicted as i64, 100_000 - held);
        // Unused past the idle time: dropped at the sweep a new entry starts.
        tokio::time::advance(limits.idle + SWEEP_EVERY).await;
        c.get(b"new".to_vec(), control(""), answer("y"))
            .await
            .unwrap();
        assert_eq!(metrics.entries.get(), 1);
        assert_eq!(
            metrics.evictions.with_label_values(&["idle"]).get() as i64,
            held
        );
    }
}
