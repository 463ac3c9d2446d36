//! What a blocking KV query waits on: the key or the prefix it reads, not the whole KV
//! table (as Consul's watch sets do), so a write wakes only the waiters on that key and on
//! its prefixes. Waiters subscribe under the state's read lock (hence the mutex); the
//! channels are made on demand and swept once nobody waits on them.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// The watch channels of the keys and prefixes some query waits on.
#[derive(Debug, Default)]
pub struct KvWatches {
    inner: Mutex<Channels>,
    woken: AtomicU64,
}

#[derive(Debug, Default)]
struct Channels {
    keys: BTreeMap<String, watch::Sender<u64>>,
    prefixes: BTreeMap<String, watch::Sender<u64>>,
    /// How many channels were left after the last sweep.
    swept_to: usize,
}

impl Channels {
    /// A receiver on `map[name]`, made if need be; a sweep drops the channels nobody
    /// waits on once there are twice as many as after the last one.
    fn subscribe(&mut self, prefix: bool, name: &str) -> watch::Receiver<u64> {
        if self.keys.len() + self.prefixes.len() > 2 * self.swept_to + 64 {
            self.keys.retain(|_, s| s.receiver_count() > 0);
            self.prefixes.retain(|_, s| s.receiver_count() > 0);
            self.swept_to = self.keys.len() + self.prefixes.len();
        }
        let map = if prefix {
            &mut self.prefixes
        } else {
            &mut self.keys
        };
        match map.get(name) {
            Some(s) => s.subscribe(),
            None => {
                let (s, r) = watch::channel(0);
                map.insert(name.to_string(), s);
                r
            }
        }
    }
}

/// Wakes the waiters on `sender` with `index`; how many there were.
fn wake(sender: &watch::Sender<u64>, index: u64) -> u64 {
    let waiting = sender.receiver_count() as u64;
    if waiting > 0 {
        sender.send_replace(index);
    }
    waiting
}

impl KvWatches {
    /// A receiver that changes when `key` is written or deleted.
    pub fn key(&self, key: &str) -> watch::Receiver<u64> {
        self.lock().subscribe(false, key)
    }

    /// A receiver that changes when any key under `prefix` is written or deleted.
    pub fn prefix(&self, prefix: &str) -> watch::Receiver<u64> {
        self.lock().subscribe(true, prefix)
    }

    /// `key` was written or deleted at `index`: wakes its waiters and those of each of its
    /// prefixes.
    pub fn changed(&self, key: &str, index: u64) {
        let c = self.lock();
        let mut woken = c.keys.get(key).map_or(0, |s| wake(s, index));
        woken += prefix_waiters(&c, key, key.len() + 1, index);
        self.count(woken);
    }

    /// Every key under `prefix` was deleted at `index`.
    pub fn tree_changed(&self, prefix: &str, index: u64) {
        let c = self.lock();
        let under = |map: &BTreeMap<String, watch::Sender<u64>>| {
            map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, s)| wake(s, index))
                .sum::<u64>()
        };
        // The prefixes above `prefix` (itself is among those under it).
        let above = prefix_waiters(&c, prefix, prefix.len(), index);
        let woken = under(&c.keys) + under(&c.prefixes) + above;
        self.count(woken);
    }

    /// The whole store was replaced (a snapshot installed) at `index`: every waiter wakes.
    pub fn all_changed(&self, index: u64) {
        let c = self.lock();
        let woken = c
            .keys
            .values()
            .chain(c.prefixes.values())
            .map(|s| wake(s, index))
            .sum();
        self.count(woken);
    }

    /// How many waiters writes have woken in all (`consulate_kv_waiters_woken_total`).
    pub fn woken(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
    }

    fn count(&self, woken: u64) {
        self.woken.fetch_add(woken, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.inner.lock().expect("kv watches poisoned")
    }
}

/// Wakes the waiters on every prefix of `key` shorter than `below` bytes (`key.len() + 1`:
/// `key` itself included); how many there were.
fn prefix_waiters(c: &Channels, key: &str, below: usize, index: u64) -> u64 {
    if c.prefixes.is_empty() {
        return 0;
    }
    (0..below.min(key.len() + 1))
        .filter(|i| key.is_char_boundary(*i))
        .filter_map(|i| c.prefixes.get(&key[..i]))
        .map(|s| wake(s, index))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_wakes_only_its_key_and_its_prefixes() {
        let w = KvWatches::default();
        let a = w.key("a");
        let mut b = w.key("b");
        let a_dir = w.prefix("a/");
        let mut all = w.prefix("");
        let mut ax = w.key("a/x");
        w.changed("b", 5);
        assert!(b.has_changed().unwrap() && all.has_changed().unwrap());
        assert!(!a.has_changed().unwrap() && !a_dir.has_changed().unwrap());
        assert_eq!(w.woken(), 2);
        b.mark_unchanged();
        all.mark_unchanged();
        w.changed("a/x", 6);
        assert!(ax.has_changed().unwrap() && a_dir.has_changed().unwrap());
        assert!(all.has_changed().unwrap());
        assert!(!a.has_changed().unwrap() && !b.has_changed().unwrap());
        assert_eq!(*ax.borrow_and_update(), 6);
        assert_eq!(w.woken(), 5);
    }

    #[test]
    fn a_tree_delete_wakes_what_is_under_it_and_above_it() {
        let w = KvWatches::default();
        let mut ax = w.key("a/x");
        let mut a_dir = w.prefix("a/");
        let mut a_sub = w.prefix("a/y/");
        let mut root = w.prefix("a");
        let other = w.key("b");
        w.tree_changed("a/", 9);
        for (name, r) in [
            ("a/x", &mut ax),
            ("a/", &mut a_dir),
            ("a/y/", &mut a_sub),
            ("a", &mut root),
        ] {
            assert!(r.has_changed().unwrap(), "{name}");
        }
        assert!(!other.has_changed().unwrap());
        assert_eq!(w.woken(), 4);
    }

    #[test]
    fn channels_nobody_waits_on_are_swept() {
        let w = KvWatches::default();
        for i in 0..1000 {
            drop(w.key(&format!("k{i}")));
        }
        let kept = w.key("kept");
        assert!(w.lock().keys.len() < 200, "swept as they pile up");
        for i in 0..1000 {
            drop(w.key(&format!("j{i}")));
        }
        assert!(w.lock().keys.contains_key("kept"), "a live one stays");
        drop(kept);
    }
}
