//! Real processes: `kill -9` of any one server while a client agent carries continuous reads
//! and writes. A request whose server dies under it is sent to another server when it
//! certainly did not apply (every read; a write never delivered), so readers see no error
//! at all, and a write is answered with an error only when it may have applied, saying so.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::dc::*;
use crate::common::*;

const NET: u8 = 6;
/// What an answer that cannot say whether the write applied says (and only that one).
const INDETERMINATE: &str = "may have been applied";

#[derive(Default)]
struct Tally {
    acked: BTreeSet<String>,
    indeterminate: BTreeSet<String>,
    /// Errors that are neither success nor an honest "may have been applied".
    wrong: Vec<String>,
    /// The slowest answer.
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_any_one_server_fails_no_read_and_no_undelivered_write_through_a_client() {
    let pki = TestPki::new();
    let dc = write_dc(NET, &pki);
    let mut procs: Vec<ChildGuard> = dc.configs[..3].iter().map(|c| spawn_agent(c)).collect();
    let _client = spawn_agent(&write_client(&dc, &pki, NET, 9, "c1"));
    let (_me, probe) = prober(&pki);
    let http = http_client_bounded();
    let base = format!("http://127.79.{NET}.9:8500");
    agreed_leader(&probe, &dc.addrs[..3]).await;
    eventually(
        Duration::from_secs(30),
        "the client agent writes",
        || async {
            let r = http
                .put(format!("{base}/v1/kv/fixed"))
                .body("v")
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    // A stale read may lag what the leader acknowledged (Consul's semantics): the load
    // starts once every server holds the key it reads, so any miss later is a kill's doing.
    for addr in &dc.addrs[..3] {
        let url = format!("http://{}:8500/v1/kv/fixed?stale", addr.ip());
        eventually(
            Duration::from_secs(30),
            "every server holds the key",
            || async {
                let r = http.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            },
        )
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (http, base, stop, writes) =
                (http.clone(), base.clone(), stop.clone(), writes.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load/{w}/{n}");
                    n += 1;
                    let t = std::time::Instant::now();
                    let r = http
                        .put(format!("{base}/v1/kv/{key}"))
                        .body("v")
                        .send()
                        .await;
                    tally.slowest = tally.slowest.max(t.elapsed());
                    let (status, body) = match r {
                        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                        Err(e) => (0, e.to_string()),
                    };
                    match status {
                        200 if body == "true" => {
                            tally.acked.insert(key);
                        }
                        500 if body.contains(INDETERMINATE) => {
                            tally.indeterminate.insert(key);
                        }
                        _ => tally.wrong.push(format!("PUT {key}: {status} {body}")),
                    }
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                tally
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
            // Default-mode and consistent reads (both through the leader's lease or a
            // barrier) and stale ones (any server).
            let mode = ["", "?consistent", "?stale", ""][r];
            tokio::spawn(async move {
                let mut wrong = Vec::new();
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = http.get(format!("{base}/v1/kv/fixed{mode}")).send().await;
                    match r {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => wrong.push(format!(
                            "GET fixed{mode}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => wrong.push(format!("GET fixed{mode}: {e}")),
                    }
                    reads += 1;
                }
                (reads, wrong)
            })
        })
        .collect();

    // Kill each server in turn, the leader last, and bring it back before the next: whichever
    // server the client agent uses, one kill hits it, and one hits the leader. Each kill
    // lands on a running load and the load runs on until the DC has a leader and the killed
    // server is back and has caught up.
    let order = {
        let li = agreed_leader(&probe, &dc.addrs[..3]).await;
        [(li + 1) % 3, (li + 2) % 3, li]
    };
    for victim in order {
        let before = writes.load(Ordering::Relaxed);
        eventually(Duration::from_secs(30), "writes flowing", || async {
            (writes.load(Ordering::Relaxed) >= before + 200).then_some(())
        })
        .await;
        procs[victim].signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        let at_kill = writes.load(Ordering::Relaxed);
        eventually(Duration::from_secs(30), "writes after the kill", || async {
            (writes.load(Ordering::Relaxed) >= at_kill + 200).then_some(())
        })
        .await;
        procs[victim] = spawn_agent(&dc.configs[victim]);
        let li = agreed_leader(&probe, &dc.addrs[..3]).await;
        let target = info(&probe, dc.addrs[li])
            .await
            .expect("leader info")
            .applied;
        eventually(
            Duration::from_secs(30),
            "the restarted server caught up",
            || async {
                let i = info(&probe, dc.addrs[victim]).await?;
                (i.applied >= target).then_some(())
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut tally = Tally::default();
    for w in writers {
        let t = w.await.unwrap();
        tally.acked.extend(t.acked);
        tally.indeterminate.extend(t.indeterminate);
        tally.wrong.extend(t.wrong);
        tally.slowest = tally.slowest.max(t.slowest);
    }
    let (mut reads, mut read_errors) = (0, Vec::new());
    for r in readers {
        let (n, wrong) = r.await.unwrap();
        reads += n;
        read_errors.extend(wrong);
    }
    let li = agreed_leader(&probe, &dc.addrs[..3]).await;
    let stored: BTreeSet<String> = keys_on_leader(&http, &dc, li).await;
    let missing: Vec<&String> = tally.acked.difference(&stored).collect();
    let applied_anyway = tally.indeterminate.intersection(&stored).count();
    let counted = |series: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move { metric(&http, &base, series).await.unwrap_or(0.0) }
    };
    let (resent, indeterminate) = (
        counted("consulate_rpc_resent_total").await,
        counted("consulate_rpc_writes_indeterminate_total").await,
    );
    eprintln!(
        "{} writes acknowledged, {} answered 'may have been applied' ({applied_anyway} of them \
         applied), {} wrong, slowest {:?}; {reads} reads, {} failed; the client agent resent \
         {resent} requests to another server",
        tally.acked.len(),
        tally.indeterminate.len(),
        tally.wrong.len(),
        tally.slowest,
        read_errors.len()
    );
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    assert!(
        read_errors.is_empty(),
        "reads failed across the kills: {read_errors:?}"
    );
    assert!(
        tally.wrong.is_empty(),
        "writes failed without saying they may have applied: {:?}",
        tally.wrong
    );
    assert!(tally.acked.len() > 600, "the load ran throughout");
    assert!(
        resent > 0.0,
        "no kill hit a request in flight from the client agent: the test proved nothing"
    );
    // The client agent counts those it lost itself; a server that lost the leader under a
    // relayed write counts that one.
    assert!(
        indeterminate <= tally.indeterminate.len() as f64,
        "counted {indeterminate} indeterminate writes, answered {}",
        tally.indeterminate.len()
    );
}

/// Every key under `load/` as the leader holds it (a consistent read).
async fn keys_on_leader(http: &reqwest::Client, dc: &Dc, li: usize) -> BTreeSet<String> {
    let url = format!(
        "http://{}:8500/v1/kv/load/?keys&consistent",
        dc.addrs[li].ip()
    );
    let keys: Vec<String> = eventually(Duration::from_secs(10), "the keys", || async {
        get_json(http, &url)
            .await
            .and_then(|v| serde_json::from_value(v).ok())
    })
    .await;
    keys.into_iter().collect()
}
