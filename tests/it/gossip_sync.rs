//! LAN push-pull sync over TCP, in process: real agents' gossip (UDP and the sync port) on
//! 127.90.x, asked by a bare chitchat that can learn the pool no other way; hostile input
//! on the sync port (garbage, a frame claiming to be huge, the wrong key, another DC's
//! pool, connections held open) refused, counted, and never stopping it serving.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use chitchat::{Chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig};
use consulate::config::GossipKey;
use consulate::gossip::keyring::{Keyring, Stored};
use consulate::gossip::sealed::Sealer;
use consulate::gossip::sync::{self, SyncContext, SyncError};
use consulate::gossip::{Gossip, GossipOptions, LanConfig, MemberStatus};
use consulate::metrics::Metrics;
use consulate::vocab::Role;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const POOL: usize = 8;

fn addr(net: u8, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 90, net, 10 + i as u8], 8301))
}

struct Pool {
    agents: Vec<Gossip>,
    metrics: Vec<Metrics>,
    shutdown: CancellationToken,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for a in &self.agents {
            a.abort();
        }
    }
}

/// `POOL` agents of dc1 on `127.90.<net>.x`, joined through the first, every one seeing
/// all alive.
async fn pool(net: u8, key: Option<GossipKey>, dir: &std::path::Path) -> Pool {
    let shutdown = CancellationToken::new();
    let mut agents = Vec::new();
    let mut metrics = Vec::new();
    for i in 0..POOL {
        let m = Metrics::new();
        let config = LanConfig {
            node: format!("agent-{i}"),
            node_id: format!("id-{i}"),
            role: if i == 0 { Role::Server } else { Role::Client },
            datacenter: "dc1".into(),
            bind: addr(net, i),
            advertise: addr(net, i),
            seeds: if i == 0 { vec![] } else { vec![addr(net, 0)] },
            quic: SocketAddr::from(([127, 90, net, 10 + i as u8], 8300)),
            http: SocketAddr::from(([127, 90, net, 10 + i as u8], 8500)),
            wan: None,
            keyring: key.clone().map(|k| Stored {
                ring: Keyring::new(k),
                path: dir.join(format!("keyring-{i}")),
            }),
            options: GossipOptions::default(),
            coordinates: Default::default(),
        };
        let g = Gossip::lan(config, m.gossip.clone(), shutdown.child_token())
            .await
            .expect("gossip starts");
        agents.push(g);
        metrics.push(m);
    }
    let watchers: Vec<_> = agents.iter().map(|a| a.members()).collect();
    eventually(Duration::from_secs(30), "the pool converges", || {
        let done = watchers.iter().all(|w| {
            w.borrow()
                .iter()
                .filter(|m| m.status == MemberStatus::Alive)
                .count()
                == POOL
        });
        async move { done.then_some(()) }
    })
    .await;
    Pool {
        agents,
        metrics,
        shutdown,
    }
}

/// A chitchat that never gossips: what it knows, it knows from syncs.
fn bare(name: &str, cluster: &str, sealer: Sealer) -> SyncContext {
    let id = ChitchatId::new(name.to_string(), 1, SocketAddr::from(([127, 90, 0, 1], 9)));
    let config = ChitchatConfig {
        listen_addr: id.gossip_advertise_addr,
        chitchat_id: id,
        cluster_id: cluster.into(),
        gossip_interval: Duration::from_millis(200),
        seed_nodes: Vec::new(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        digest_bound: None,
    };
    let seeds = tokio::sync::watch::channel(HashSet::new()).1;
    let kvs = vec![
        ("role".into(), "client".into()),
        ("dc".into(), "dc1".into()),
    ];
    SyncContext {
        chitchat: Arc::new(tokio::sync::Mutex::new(
            Chitchat::with_chitchat_id_and_seeds(config, seeds, kvs),
        )),
        cluster: cluster.into(),
        sealer,
        metrics: Metrics::new().gossip,
    }
}

fn served(m: &Metrics, result: &str) -> u64 {
    m.gossip
        .syncs
        .with_label_values(&["lan", "served", result])
        .get()
}

#[tokio::test]
async fn one_sync_teaches_a_newcomer_the_whole_pool_and_the_pool_the_newcomer() {
    let dir = tempfile::tempdir().unwrap();
    let key = GossipKey([7; 32]);
    let pool = pool(1, Some(key.clone()), dir.path()).await;
    let newcomer = bare("newcomer", "dc1", Sealer::new(&[key]));
    let served_before = served(&pool.metrics[3], "ok");
    let learned = sync::pull(addr(1, 3), &newcomer).await.expect("sync");
    assert_eq!(learned, POOL, "every agent of the pool, in one exchange");
    {
        let c = newcomer.chitchat.lock().await;
        for i in 0..POOL {
            let state = c
                .node_states()
                .iter()
                .find(|(id, _)| *id.node_id == format!("agent-{i}"))
                .map(|(_, s)| s)
                .unwrap_or_else(|| panic!("agent-{i} learned"));
            assert_eq!(
                state.get("http"),
                Some(format!("127.90.1.{}:8500", 10 + i).as_str())
            );
        }
    }
    // The agent asked learned the newcomer from the same exchange, and gossip spreads it.
    let mut members = pool.agents[6].members();
    eventually(Duration::from_secs(10), "the newcomer spreads", || {
        let seen = members
            .borrow_and_update()
            .iter()
            .any(|m| m.name == "newcomer");
        async move { seen.then_some(()) }
    })
    .await;
    assert!(served(&pool.metrics[3], "ok") > served_before);
    // Asked again, the pool has nothing new for it.
    assert_eq!(sync::pull(addr(1, 5), &newcomer).await.expect("sync"), 0);
}

#[tokio::test]
async fn hostile_input_on_the_sync_port_is_refused_counted_and_never_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = GossipKey([9; 32]);
    let pool = pool(2, Some(key.clone()), dir.path()).await;
    let target = addr(2, 1);
    let m = &pool.metrics[1];
    let send = |bytes: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(target)
            .await
            .expect("connects");
        s.write_all(&bytes).await.expect("writes");
        s.shutdown().await.expect("shuts down");
        // The agent closes the connection once it has refused what came.
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest).await;
        rest
    };
    let mut garbage = 40u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xab; 40]);
    assert!(send(garbage).await.is_empty());
    assert!(
        send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
            .await
            .is_empty()
    );
    assert!(send(u32::MAX.to_be_bytes().to_vec()).await.is_empty());
    eventually(Duration::from_secs(5), "garbage counted", || {
        let done = served(m, "decrypt") >= 1 && served(m, "oversized") >= 2;
        async move { done.then_some(()) }
    })
    .await;
    // The wrong key: refused, nothing learned on either side.
    let intruder = bare("intruder", "dc1", Sealer::new(&[GossipKey([1; 32])]));
    assert!(sync::pull(target, &intruder).await.is_err());
    assert_eq!(intruder.chitchat.lock().await.node_states().len(), 1);
    // Another DC's pool, under the right key: refused.
    let other_dc = bare("other", "dc2", Sealer::new(std::slice::from_ref(&key)));
    assert!(sync::pull(target, &other_dc).await.is_err());
    eventually(Duration::from_secs(5), "refusals counted", || {
        let done = served(m, "decrypt") >= 2 && served(m, "wrong_cluster") == 1;
        async move { done.then_some(()) }
    })
    .await;
    // Connections held open take the few slots; one more is turned away, counted, and
    // once the held ones time out the port serves again.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(target)
                .await
                .expect("connects"),
        );
    }
    let friend = bare("friend", "dc1", Sealer::new(&[key]));
    eventually(Duration::from_secs(5), "a busy refusal", || {
        let friend = friend.clone();
        async move {
            match sync::pull(target, &friend).await {
                Err(SyncError::Io(..)) => (served(m, "busy") >= 1).then_some(()),
                _ => None,
            }
        }
    })
    .await;
    let learned = eventually(sync::SYNC_TIMEOUT * 3, "served again", || {
        let friend = friend.clone();
        async move { sync::pull(target, &friend).await.ok() }
    })
    .await;
    assert_eq!(learned, POOL);
    assert!(served(m, "timeout") >= 4, "the held connections timed out");
    drop(held);
    assert!(pool.agents.iter().all(|a| {
        a.members()
            .borrow()
            .iter()
            .filter(|x| x.status == MemberStatus::Alive)
            .count()
            >= POOL
    }));
}
