//! In-process 3-server Raft clusters over real QUIC with real certificates and real fsync'd
//! storage: election, replication, leader-only writes, read modes, failover, and catch-up
//! of a wiped server through a snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use consulate::metrics::Metrics;
use consulate::raft::network::RaftHandler;
use consulate::raft::{RaftNode, RaftNodeError, RaftOptions, ServerNode};
use consulate::state::{Command, CommandResult};
use consulate::transport::identity::Alpn;
use consulate::transport::rpc::RpcService;
use consulate::transport::{Services, Transport, TransportOptions};
use consulate::vocab::ReadMode;
use consulate::vocab::Role;
use tokio_util::sync::CancellationToken;

fn fast() -> RaftOptions {
    RaftOptions {
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(200), Duration::from_millis(400)),
        snapshot_every: 100,
        snapshot_interval: Duration::from_millis(50),
        keep_behind_snapshot: 10,
    }
}

struct Server {
    node: RaftNode,
    transport: Transport,
    shutdown: CancellationToken,
    dir: PathBuf,
}

async fn start_server(pki: &TestPki, id: u64, dir: &Path, addr: SocketAddr) -> Server {
    let metrics = Metrics::new();
    let tls = pki.material(Role::Server, "dc1");
    // A restarted server reuses its address: wait until the previous endpoint released it.
    let transport = eventually(
        Duration::from_secs(10),
        "the server's address free",
        || async {
            Transport::bind(
                addr,
                "dc1",
                &tls,
                TransportOptions::default(),
                metrics.transport.clone(),
            )
            .ok()
        },
    )
    .await;
    let (node, handler): (RaftNode, Arc<RaftHandler>) = RaftNode::open(
        id,
        dir,
        &fast(),
        transport.clone(),
        consulate::metrics::RaftMetrics::unregistered(),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let max_frame = transport.options().max_frame;
    transport.serve(
        Services::default().with(
            Alpn::Raft,
            RpcService::new(handler, max_frame, metrics.transport.clone()),
        ),
        shutdown.clone(),
    );
    Server {
        node,
        transport,
        shutdown,
        dir: dir.to_path_buf(),
    }
}

impl Server {
    async fn stop(self) {
        self.node.shutdown().await;
        self.shutdown.cancel();
        self.transport.close(Duration::from_millis(200)).await;
    }
}

fn kv(key: &str, value: &str) -> Command {
    Command::KvSet {
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        flags: 0,
    }
}

fn value_of(s: &Server, key: &str) -> Option<Bytes> {
    s.node.read().state.kv_get(key).map(|e| e.value.clone())
}

async fn cluster(pki: &TestPki, root: &Path) -> Vec<Server> {
    let mut servers = Vec::new();
    for id in 1..=3u64 {
        let dir = root.join(format!("s{id}"));
        servers.push(start_server(pki, id, &dir, "127.0.0.1:0".parse().unwrap()).await);
    }
    let members: BTreeMap<u64, ServerNode> = servers
        .iter()
        .map(|s| {
            (
                s.node.id(),
                ServerNode {
                    name: format!("s{}", s.node.id()),
                    addr: s.transport.local_addr().to_string(),
                },
            )
        })
        .collect();
    servers[0].node.initialize(members).await.unwrap();
    servers
}

async fn leader_of(servers: &[Server]) -> usize {
    eventually(Duration::from_secs(10), "a leader all agree on", || async {
        let leaders: Vec<_> = servers
            .iter()
            .map(|s| s.node.leader().map(|l| l.0))
            .collect();
        let first = leaders[0]?;
        if !leaders.iter().all(|l| *l == Some(first)) {
            return None;
        }
        servers
            .iter()
            .position(|s| s.node.id() == first && s.node.is_leader())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_replicates_and_routes_writes_to_the_leader() {
    let pki = TestPki::new();
    let root = tempfile::tempdir().unwrap();
    let servers = cluster(&pki, root.path()).await;
    let li = leader_of(&servers).await;
    let leader = &servers[li];
    let follower = &servers[(li + 1) % 3];

    assert_eq!(
        leader.node.write(kv("a", "1")).await.unwrap(),
        CommandResult::Bool(true)
    );
    for s in &servers {
        eventually(
            Duration::from_secs(5),
            "replicated to every server",
            || async { (value_of(s, "a").as_deref() == Some(&b"1"[..])).then_some(()) },
        )
        .await;
    }

    // A follower does not append: it names the leader, so the caller can forward.
    match follower.node.write(kv("b", "2")).await {
        Err(RaftNodeError::NotLeader {
            leader: Some((id, node)),
        }) => {
            assert_eq!(id, leader.node.id());
            assert_eq!(node.addr, leader.transport.local_addr().to_string());
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // Read modes: the leader serves all three; a follower only stale, saying how stale.
    for mode in [ReadMode::Leader, ReadMode::Consistent, ReadMode::Stale] {
        let meta = leader.node.read_barrier(mode).await.unwrap();
        assert!(meta.known_leader);
        assert_eq!(meta.last_contact_ms, 0);
    }
    let meta = follower.node.read_barrier(ReadMode::Stale).await.unwrap();
    assert!(
        meta.known_leader && meta.last_contact_ms < 5_000,
        "{meta:?}"
    );
    assert!(matches!(
        follower.node.read_barrier(ReadMode::Consistent).await,
        Err(RaftNodeError::NotLeader { .. })
    ));

    // Failover: the leader stops; the others elect a new one and keep every write.
    let mut servers = servers;
    let old = servers.remove(li);
    old.stop().await;
    let li = leader_of(&servers).await;
    assert_eq!(
        servers[li].node.write(kv("c", "3")).await.unwrap(),
        CommandResult::Bool(true)
    );
    for s in &servers {
        eventually(
            Duration::from_secs(5),
            "post-failover write replicated",
            || async { (value_of(s, "a").is_some() && value_of(s, "c").is_some()).then_some(()) },
        )
        .await;
    }
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_server_catches_up_through_a_snapshot() {
    let pki = TestPki::new();
    let root = tempfile::tempdir().unwrap();
    let mut servers = cluster(&pki, root.path()).await;
    let li = leader_of(&servers).await;
    let victim_i = (li + 1) % 3;

    // Far more entries than a snapshot interval, so the log is purged behind snapshots.
    for i in 0..300 {
        let li = leader_of(&servers).await;
        servers[li]
            .node
            .write(kv(&format!("k{i:03}"), "v"))
            .await
            .unwrap();
    }

    let victim = servers.remove(victim_i);
    let (id, addr, dir) = (
        victim.node.id(),
        victim.transport.local_addr(),
        victim.dir.clone(),
    );
    victim.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();

    let li = leader_of(&servers).await;
    for i in 300..350 {
        servers[li]
            .node
            .write(kv(&format!("k{i:03}"), "v"))
            .await
            .unwrap();
    }
    let fresh = start_server(&pki, id, &dir, addr).await;
    eventually(
        Duration::from_secs(20),
        "wiped server caught up",
        || async { (fresh.node.read().state.kv_len() == 350).then_some(()) },
    )
    .await;
    assert!(
        dir.join("raft/snapshot.bin").is_file(),
        "caught up by installing a snapshot"
    );
    servers.push(fresh);
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_serves_stale_reads_and_refuses_consistent_ones() {
    let pki = TestPki::new();
    let root = tempfile::tempdir().unwrap();
    let mut servers = cluster(&pki, root.path()).await;
    let li = leader_of(&servers).await;
    servers[li].node.write(kv("x", "1")).await.unwrap();
    let fi = (li + 1) % 3;
    eventually(
        Duration::from_secs(5),
        "x replicated to the follower",
        || async { value_of(&servers[fi], "x").map(|_| ()) },
    )
    .await;

    // Cut the follower off: the other two servers go away.
    let follower = servers.remove(fi);
    for s in servers {
        s.stop().await;
    }
    // Stale reads keep answering, and report a staleness that grows.
    eventually(
        Duration::from_secs(5),
        "staleness reported as growing",
        || async {
            let meta = follower.node.read_barrier(ReadMode::Stale).await.ok()?;
            (meta.last_contact_ms >= 500).then_some(())
        },
    )
    .await;
    assert_eq!(value_of(&follower, "x").as_deref(), Some(&b"1"[..]));

    let started = std::time::Instant::now();
    let consistent = tokio::time::timeout(
        Duration::from_secs(3),
        follower.node.read_barrier(ReadMode::Consistent),
    )
    .await
    .expect("a consistent read fails within a bounded time");
    assert!(
        matches!(
            consistent,
            Err(RaftNodeError::NoLeader | RaftNodeError::NotLeader { .. })
        ),
        "{consistent:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_lone_former_leader_does_not_answer_default_reads() {
    let pki = TestPki::new();
    let root = tempfile::tempdir().unwrap();
    let mut servers = cluster(&pki, root.path()).await;
    let li = leader_of(&servers).await;
    servers[li].node.write(kv("x", "1")).await.unwrap();
    let leader = servers.remove(li);
    let (id, addr, dir) = (
        leader.node.id(),
        leader.transport.local_addr(),
        leader.dir.clone(),
    );
    for s in servers {
        s.stop().await;
    }
    leader.stop().await;

    // Alone, with its old vote, it may believe it leads; it must not serve as the leader.
    let lone = start_server(&pki, id, &dir, addr).await;
    let started = std::time::Instant::now();
    for mode in [ReadMode::Leader, ReadMode::Consistent] {
        let r = tokio::time::timeout(Duration::from_secs(5), lone.node.read_barrier(mode))
            .await
            .expect("a leadership check is bounded");
        assert!(
            matches!(
                r,
                Err(RaftNodeError::NoLeader | RaftNodeError::NotLeader { .. })
            ),
            "{mode:?}: {r:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    // Stale reads still answer from what it had, once it has re-applied its log.
    eventually(
        Duration::from_secs(10),
        "a stale read on the lone server",
        || async { lone.node.read_barrier(ReadMode::Stale).await.ok() },
    )
    .await;
    assert_eq!(value_of(&lone, "x").as_deref(), Some(&b"1"[..]));
    lone.stop().await;
}
