//! LAN gossip at scale, in one process: N agents (real chitchat over real UDP on
//! 127.0.96.1, ports 21000+), the first three as seeds. Measures the time until every agent
//! sees all N alive, then each agent's gossip traffic (bytes/s sent, from its metrics) over
//! a steady-state window, for N = 50 and N = 200 (or `GOSSIP_SIZES=50,100,200`).
//!
//! cargo bench --bench gossip

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consulate::gossip::{Gossip, GossipOptions, LanConfig, MemberStatus};
use consulate::metrics::Metrics;
use consulate::vocab::Role;
use tokio_util::sync::CancellationToken;

const BASE_PORT: u16 = 21000;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 96, 1], BASE_PORT + i as u16))
}

async fn run(n: usize, window: Duration) {
    let shutdown = CancellationToken::new();
    let mut agents = Vec::new();
    let mut metrics = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let m = Metrics::new();
        let config = LanConfig {
            node: format!("agent-{i:03}"),
            node_id: format!("id-{i}"),
            role: if i < 3 { Role::Server } else { Role::Client },
            datacenter: "dc1".into(),
            bind: addr(i),
            advertise: addr(i),
            seeds: (0..3).filter(|s| *s != i).map(addr).collect(),
            quic: SocketAddr::from(([127, 0, 96, 1], 8300)),
            http: SocketAddr::from(([127, 0, 96, 1], 8500)),
            wan: None,
            keyring: None,
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
    let converged = loop {
        let done = watchers.iter().all(|w| {
            let m = w.borrow();
            m.len() == n && m.iter().all(|x| x.status == MemberStatus::Alive)
        });
        if done {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(120) {
            panic!("{n} agents did not converge in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sent = |ms: &[Metrics]| -> f64 {
        ms.iter()
            .map(|m| m.gossip.bytes.with_label_values(&["lan", "out"]).get() as f64)
            .sum()
    };
    let before = sent(&metrics);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let per_agent = (sent(&metrics) - before) / t.elapsed().as_secs_f64() / n as f64;
    let failed: usize = watchers
        .iter()
        .map(|w| {
            w.borrow()
                .iter()
                .filter(|x| x.status != MemberStatus::Alive)
                .count()
        })
        .sum();
    println!(
        "{n:>4} agents: full membership everywhere after {:>6.2} s; steady state {:>8.0} bytes/s sent per agent; {failed} non-alive views",
        converged.as_secs_f64(),
        per_agent
    );
    shutdown.cancel();
    for a in agents {
        a.leave().await;
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("GOSSIP_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200]);
    let window = Duration::from_secs(
        std::env::var("GOSSIP_WINDOW_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for n in sizes {
        rt.block_on(run(n, window));
    }
}
