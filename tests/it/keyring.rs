//! Real processes: rotating the LAN gossip key of a live DC (3 servers, 5 clients) with
//! `/v1/operator/keyring` and `consulate keyring`: install a new key, use it, remove the
//! old one, while every agent's member list is sampled every 100 ms (no member ever shown
//! failed, no datagram refused). Refusals (the primary key, a key not installed, a bad
//! key); restarted agents come back speaking the new key from their data dir although
//! their config still names the old one; an agent holding only the old key cannot join;
//! no key appears in any log. Across two DCs, one operation changes both DCs' pools
//! (`?local-only`: the agent's own).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::dc::*;
use crate::common::*;
use consulate::config::GossipKey;
use nix::sys::signal::Signal;
use serde_json::Value;

const NET: u8 = 9;

fn agent_url(i: usize) -> String {
    match i {
        0..=2 => format!("http://127.79.{NET}.{}:8500", i + 1),
        _ => format!("http://127.79.{NET}.{}:8500", 20 + i - 2),
    }
}

/// The one pool entry of dc1 in a keyring listing from `url`.
async fn keyring(http: &reqwest::Client, url: &str) -> Option<Value> {
    let v = get_json(http, &format!("{url}/v1/operator/keyring")).await?;
    let pools = v.as_array()?;
    (pools.len() == 1 && pools[0]["Datacenter"] == "dc1").then(|| pools[0].clone())
}

/// `{key: count}` of a pool's `field`.
fn counts(pool: &Value, field: &str) -> Vec<(String, u64)> {
    pool[field]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until agent `i` lists `field` of dc1's pool as `expected` (the agents' views of
/// each other's keyrings converge through gossip).
async fn listed(http: &reqwest::Client, i: usize, field: &str, expected: &[(String, u64)]) {
    eventually(
        Duration::from_secs(10),
        &format!("{field} listed as {expected:?}"),
        || async {
            let pool = keyring(http, &agent_url(i)).await?;
            (counts(&pool, field) == expected).then_some(())
        },
    )
    .await;
}

async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn assert_no_key_logged(logs: &[std::path::PathBuf], keys: &[&GossipKey]) {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!text.is_empty(), "{} is empty", log.display());
        for k in keys {
            assert!(
                !text.contains(&k.to_base64()),
                "a gossip key is in {}",
                log.display()
            );
        }
    }
}

/// Decrypt refusals counted by agent `i`.
async fn decrypt_drops(http: &reqwest::Client, i: usize) -> f64 {
    let text = scrape(http, &agent_url(i)).await.expect("metrics");
    sum_samples(
        &text,
        "consulate_gossip_packets_dropped_total{pool=\"lan\",reason=\"decrypt\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gossip_key_rotates_on_a_live_dc_without_a_failed_member() {
    let old = GossipKey::generate();
    let new = GossipKey::generate();
    let extra = format!("encrypt = \"{}\"\n", old.to_base64());
    let pki = TestPki::new();
    let dc = write_dc_with(NET, &pki, &extra);
    let mut configs: Vec<_> = dc.configs[..3].to_vec();
    configs.extend(
        (1..=5).map(|i| write_client_with(&dc, &pki, NET, 20 + i, &format!("c{i}"), &extra)),
    );
    let logs: Vec<_> = configs.iter().map(|c| c.with_extension("log")).collect();
    let mut agents: Vec<ChildGuard> = configs.iter().map(|c| spawn_agent(c)).collect();
    let http = http_client_bounded();
    for i in 0..8 {
        eventually(Duration::from_secs(30), "all 8 members alive", || async {
            let m = get_json(&http, &format!("{}/v1/agent/members", agent_url(i))).await?;
            let a = m.as_array()?;
            (a.len() == 8 && a.iter().all(|x| x["Status"] == 1)).then_some(())
        })
        .await;
    }
    wait_for_leader(&http, &agent_url(0), "").await;

    // Every agent's member list, every 100 ms, from here to the end of the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, samples, http) = (stop.clone(), samples.clone(), http.clone());
        tokio::spawn(async move {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for i in 0..8 {
                    let url = format!("{}/v1/agent/members", agent_url(i));
                    let Some(m) = get_json(&http, &url).await else {
                        bad.push(format!("agent {i} did not answer"));
                        continue;
                    };
                    for x in m.as_array().into_iter().flatten() {
                        if x["Status"] != 1 {
                            bad.push(format!("agent {i} saw {} as {}", x["Name"], x["Status"]));
                        }
                    }
                    samples.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bad
        })
    };
    let mut drops_before = Vec::new();
    for i in 0..8 {
        drops_before.push(decrypt_drops(&http, i).await);
    }

    let pool = keyring(&http, &agent_url(4)).await.expect("keyring listed");
    assert_eq!(pool["NumNodes"], 8, "{pool}");
    assert_eq!(counts(&pool, "Keys"), vec![(old.to_base64(), 8)]);
    assert_eq!(counts(&pool, "PrimaryKeys"), vec![(old.to_base64(), 8)]);
    assert_eq!(pool["WAN"], false);

    // Refused: the primary key, a key not installed, a key that is not one.
    let url = format!("{}/v1/operator/keyring", agent_url(3));
    let body = |k: &GossipKey| format!("{{\"Key\": \"{}\"}}", k.to_base64());
    let (code, text) = send(http.delete(&url).body(body(&old))).await;
    assert_eq!(
        (code, text.as_str()),
        (400, "Removing the primary key is not allowed")
    );
    let (code, text) = send(http.put(&url).body(body(&new))).await;
    assert_eq!(
        (code, text.as_str()),
        (400, "Requested key is not in the keyring")
    );
    let (code, text) = send(http.post(&url).body("{\"Key\": \"c2hvcnQ=\"}")).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("key is 5 bytes, expected 32"), "{text}");

    // Install through a client with the CLI: every agent holds both, seals with the old.
    let dir = dc.dir.path();
    let out = run_cli(
        dir,
        &[
            "keyring",
            "-install",
            &new.to_base64(),
            "-http-addr",
            &agent_url(4),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut both = vec![(old.to_base64(), 8), (new.to_base64(), 8)];
    both.sort();
    listed(&http, 0, "Keys", &both).await;
    listed(&http, 0, "PrimaryKeys", &[(old.to_base64(), 8)]).await;

    // Use it, through a server over HTTP: every agent seals with the new key.
    let (code, text) = send(
        http.put(format!("{}/v1/operator/keyring", agent_url(1)))
            .body(body(&new)),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    listed(&http, 6, "PrimaryKeys", &[(new.to_base64(), 8)]).await;

    // Remove the old one with the CLI: only the new key is left anywhere.
    let out = run_cli(
        dir,
        &[
            "keyring",
            "-remove",
            &old.to_base64(),
            "-http-addr",
            &agent_url(7),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    listed(&http, 2, "Keys", &[(new.to_base64(), 8)]).await;
    let out = run_cli(dir, &["keyring", "-list", "-http-addr", &agent_url(2)]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("dc1 (LAN):")
            && listing.contains(&format!("{} [8/8]", new.to_base64()))
            && !listing.contains(&old.to_base64()),
        "{listing}"
    );

    stop.store(true, Ordering::Relaxed);
    let bad = sampler.await.unwrap();
    let n = samples.load(Ordering::Relaxed);
    assert!(bad.is_empty(), "during the rotation ({n} samples): {bad:?}");
    assert!(n >= 8 * 3, "only {n} samples");
    for (i, before) in drops_before.iter().enumerate() {
        assert_eq!(
            decrypt_drops(&http, i).await,
            *before,
            "agent {i} refused datagrams during the rotation"
        );
    }
    let text = scrape(&http, &agent_url(0)).await.unwrap();
    // Each operation counted once, on the server that ran it; the two refusals as errors.
    let mut texts = Vec::new();
    for i in 0..3 {
        texts.push(scrape(&http, &agent_url(i)).await.unwrap());
    }
    for (op, result) in [
        ("install", "ok"),
        ("use", "ok"),
        ("remove", "ok"),
        ("use", "error"),
        ("remove", "error"),
    ] {
        let series =
            format!("consulate_keyring_operations_total{{op=\"{op}\",result=\"{result}\"}}");
        let n: f64 = texts.iter().map(|t| sum_samples(t, &series)).sum();
        assert_eq!(n, 1.0, "{series}");
    }
    assert_eq!(sum_samples(&text, "consulate_keyring_keys"), 1.0);
    assert_no_key_logged(&logs, &[&old, &new]);

    // The keyring is in every data dir, readable by the agent's user only.
    let file = dir.join("c3-data/keyring.json");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.contains(&new.to_base64()) && !stored.contains(&old.to_base64()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A client stopped and a server killed come back with the new key (their configs still
    // name the old one) and are members again.
    agents[4].signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
    agents[0].signal_and_wait(Signal::SIGKILL, Duration::from_secs(10));
    agents[4] = spawn_agent(&configs[4]);
    agents[0] = spawn_agent(&configs[0]);
    for i in [0, 4, 7] {
        eventually(Duration::from_secs(30), "all 8 alive again", || async {
            let m = get_json(&http, &format!("{}/v1/agent/members", agent_url(i))).await?;
            let a = m.as_array()?;
            (a.len() == 8 && a.iter().all(|x| x["Status"] == 1)).then_some(())
        })
        .await;
    }
    listed(&http, 0, "Keys", &[(new.to_base64(), 8)]).await;

    // An agent holding only the old key cannot join: its datagrams are refused.
    let stale = write_client_with(&dc, &pki, NET, 26, "c6", &extra);
    let _c6 = spawn_agent(&stale);
    eventually(
        Duration::from_secs(30),
        "c6's datagrams refused",
        || async { (decrypt_drops(&http, 0).await > drops_before[0]).then_some(()) },
    )
    .await;
    let m = get_json(&http, &format!("{}/v1/agent/members", agent_url(1)))
        .await
        .unwrap();
    assert!(
        m.as_array().unwrap().iter().all(|x| x["Name"] != "c6"),
        "{m}"
    );
    assert_no_key_logged(&logs, &[&old, &new]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keyring_operation_reaches_every_datacenter() {
    const NET2: u8 = 71;
    let old = GossipKey::generate();
    let new = GossipKey::generate();
    let key_line = format!("encrypt = \"{}\"\n", old.to_base64());
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for (dc, wan_join) in [(1, None), (2, Some(1))] {
        for config in
            write_small_dc_with(dir.path(), &pki, (NET2, dc), wan_join, &key_line, &key_line)
        {
            agents.push(spawn_agent(&config));
        }
    }
    let http = http_client_bounded();
    let c1 = format!("http://127.{NET2}.1.21:8500");
    eventually(
        Duration::from_secs(30),
        "both DCs listed, 2 agents each",
        || async {
            let v = get_json(&http, &format!("{c1}/v1/operator/keyring")).await?;
            let pools = v.as_array()?;
            (pools.len() == 2 && pools.iter().all(|p| p["NumNodes"] == 2)).then_some(())
        },
    )
    .await;

    let out = run_cli(
        dir.path(),
        &["keyring", "-install", &new.to_base64(), "-http-addr", &c1],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut both = vec![(old.to_base64(), 2), (new.to_base64(), 2)];
    both.sort();
    eventually(
        Duration::from_secs(10),
        "the new key in both DCs",
        || async {
            let v = get_json(&http, &format!("{c1}/v1/operator/keyring")).await?;
            let dcs: Vec<&str> = v
                .as_array()?
                .iter()
                .filter_map(|p| p["Datacenter"].as_str())
                .collect();
            (dcs == ["dc1", "dc2"] && v.as_array()?.iter().all(|p| counts(p, "Keys") == both))
                .then_some(())
        },
    )
    .await;
    let v = get_json(&http, &format!("{c1}/v1/operator/keyring?local-only"))
        .await
        .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["Datacenter"], "dc1");
}
