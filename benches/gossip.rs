//! LAN gossip at scale, in one process: N agents (real chitchat over real UDP on
//! 127.0.96.1, ports from 21000, each size on ports of its own), the first three as seeds. For each N in `GOSSIP_SIZES`
//! (default 50,200):
//!
//! 1. convergence: the time until every agent knows all N, and until every agent sees all
//!    N alive (at most `GOSSIP_CONVERGE_SECS`, default 60; if not reached, how far it
//!    got), with the push-pull syncs and the process's CPU seconds until then;
//! 2. steady state over `GOSSIP_WINDOW_SECS` (default 10): gossip bytes sent per agent per
//!    second (from each agent's metrics), the process's CPU, datagrams dropped as oversized,
//!    and agents wrongly seen as not alive (false failures) sampled every 100 ms;
//! 3. with `GOSSIP_KILL=1`: one client agent is stopped at once (no leave, as `kill -9`)
//!    and the time until each other agent sees it failed is reported (median, max).
//!
//! cargo bench --bench gossip

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consulate::gossip::{Gossip, GossipOptions, LanConfig, Member, MemberStatus};
use consulate::metrics::Metrics;
use consulate::vocab::Role;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn addr(base: u16, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 96, 1], base + i as u16))
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted after the command's closing paren.
    (ticks(11) + ticks(12)) / 100.0
}

fn alive_count(w: &watch::Receiver<Vec<Member>>) -> usize {
    w.borrow()
        .iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .count()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(n: usize, base: u16) {
    let converge_limit = env_secs("GOSSIP_CONVERGE_SECS", 60);
    let window = env_secs("GOSSIP_WINDOW_SECS", 10);
    let kill = std::env::var("GOSSIP_KILL").is_ok_and(|v| v == "1");
    let shutdown = CancellationToken::new();
    let mut agents = Vec::new();
    let mut tokens = Vec::new();
    let mut metrics = Vec::new();
    let started = Instant::now();
    let cpu_at_start = cpu_seconds();
    for i in 0..n {
        let m = Metrics::new();
        let config = LanConfig {
            node: format!("agent-{i:04}"),
            node_id: format!("id-{i}"),
            role: if i < 3 { Role::Server } else { Role::Client },
            datacenter: "dc1".into(),
            bind: addr(base, i),
            advertise: addr(base, i),
            seeds: (0..3).filter(|s| *s != i).map(|s| addr(base, s)).collect(),
            quic: SocketAddr::from(([127, 0, 96, 1], 8300)),
            http: SocketAddr::from(([127, 0, 96, 1], 8500)),
            wan: None,
            keyring: None,
            options: GossipOptions::default(),
            coordinates: Default::default(),
        };
        let token = shutdown.child_token();
        let g = Gossip::lan(config, m.gossip.clone(), token.clone())
            .await
            .expect("gossip starts");
        agents.push(g);
        tokens.push(token);
        metrics.push(m);
    }
    let all_started = started.elapsed();
    let watchers: Vec<_> = agents.iter().map(|a| a.members()).collect();
    let mut known_everywhere = None;
    let converged = loop {
        if known_everywhere.is_none() && watchers.iter().all(|w| w.borrow().len() == n) {
            known_everywhere = Some(started.elapsed());
        }
        if watchers.iter().all(|w| alive_count(w) == n) {
            break Some(started.elapsed());
        }
        if started.elapsed() > converge_limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let convergence = match converged {
        Some(t) => format!(
            "full membership everywhere after {:.2} s (all started after {:.2} s, every \
             member known everywhere after {:.2} s)",
            t.as_secs_f64(),
            all_started.as_secs_f64(),
            known_everywhere.unwrap_or(t).as_secs_f64()
        ),
        None => {
            let seen: Vec<usize> = watchers.iter().map(alive_count).collect();
            format!(
                "NOT converged after {} s (alive seen per agent: min {}, mean {:.0})",
                converge_limit.as_secs(),
                seen.iter().min().unwrap_or(&0),
                seen.iter().sum::<usize>() as f64 / n as f64
            )
        }
    };
    let sent = |ms: &[Metrics]| -> f64 {
        ms.iter()
            .map(|m| m.gossip.bytes.with_label_values(&["lan", "out"]).get() as f64)
            .sum()
    };
    let oversized = |ms: &[Metrics]| -> u64 {
        ms.iter()
            .map(|m| {
                m.gossip
                    .dropped
                    .with_label_values(&["lan", "oversized"])
                    .get()
            })
            .sum()
    };
    let syncs = |ms: &[Metrics]| -> u64 {
        ms.iter()
            .map(|m| {
                m.gossip
                    .syncs
                    .with_label_values(&["lan", "pulled", "ok"])
                    .get()
            })
            .sum()
    };
    println!(
        "{n:>5} agents: {} push-pull syncs until then ({:.1} per agent), {:.2} CPU seconds \
         since the start",
        syncs(&metrics),
        syncs(&metrics) as f64 / n as f64,
        cpu_seconds() - cpu_at_start
    );
    let syncs_before = syncs(&metrics);
    let before = sent(&metrics);
    let oversized_before = oversized(&metrics);
    let cpu_before = cpu_seconds();
    let t = Instant::now();
    let mut false_failures = 0usize;
    let mut samples = 0usize;
    while t.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples += 1;
        false_failures += watchers
            .iter()
            .map(|w| {
                w.borrow()
                    .iter()
                    .filter(|x| x.status != MemberStatus::Alive)
                    .count()
            })
            .sum::<usize>();
    }
    let secs = t.elapsed().as_secs_f64();
    let per_agent = (sent(&metrics) - before) / secs / n as f64;
    let cpu = (cpu_seconds() - cpu_before) / secs;
    println!(
        "{n:>5} agents: {convergence}; steady state {per_agent:>8.0} bytes/s sent per agent, \
         CPU {:.0}% of one core, {} oversized datagrams dropped, {false_failures} non-alive \
         views in {samples} samples, {} push-pull syncs",
        cpu * 100.0,
        oversized(&metrics) - oversized_before,
        syncs(&metrics) - syncs_before,
    );
    if kill {
        let victim = n - 1;
        let name = format!("agent-{victim:04}");
        let killed = Instant::now();
        agents[victim].abort();
        tokens[victim].cancel();
        let mut seen: Vec<Option<f64>> = vec![None; n - 1];
        let limit = Duration::from_secs(30);
        while seen.iter().any(Option::is_none) && killed.elapsed() < limit {
            for (i, w) in watchers[..n - 1].iter().enumerate() {
                if seen[i].is_none()
                    && w.borrow()
                        .iter()
                        .any(|m| m.name == name && m.status == MemberStatus::Failed)
                {
                    seen[i] = Some(killed.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let missing = seen.iter().filter(|s| s.is_none()).count();
        let mut times: Vec<f64> = seen.into_iter().flatten().collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{n:>5} agents: a stopped agent seen failed by each other agent after median \
             {:.2} s, p99 {:.2} s, max {:.2} s; {missing} never within {} s",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().copied().unwrap_or(f64::NAN),
            limit.as_secs()
        );
    }
    shutdown.cancel();
    for a in agents {
        a.abort();
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("GOSSIP_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut base = 21000u16;
    for n in sizes {
        rt.block_on(run(n, base));
        base += n as u16;
    }
}
