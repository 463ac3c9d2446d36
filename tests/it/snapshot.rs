//! Real processes: `consulate snapshot save|inspect|restore` against a 3-server DC holding
//! 10,000 keys, services and sessions; the DC wiped and restored from the archive (disaster
//! recovery) with every server's state identical to what was saved; a corrupted archive
//! refused with the state untouched; a restore under concurrent reads seen all at once, and
//! blocking queries woken by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::dc::*;
use crate::common::*;

const NET: u8 = 7;
const KEYS: usize = 10_000;

/// Runs the CLI against the agent at `base`; its stdout, or the failure's stderr.
fn cli(dir: &std::path::Path, base: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(consulate_bin())
        .args(args)
        .env("CONSUL_HTTP_ADDR", base)
        .current_dir(dir)
        .output()
        .expect("run consulate");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What a server holds, as a listing that compares byte for byte: every key with its value
/// and flags, the catalog's services and the sessions (indexes left out: a restore into a
/// fresh DC may move them).
async fn listing(http: &reqwest::Client, base: &str, mode: &str) -> Option<String> {
    let get = |path: String| async move {
        let r = http.get(format!("{base}{path}")).send().await.ok()?;
        match r.status().as_u16() {
            200 => r.json::<Value>().await.ok(),
            404 => Some(json!([])),
            _ => None,
        }
    };
    let kv = get(format!("/v1/kv/?recurse&{mode}")).await?;
    let mut keys: Vec<String> = kv
        .as_array()?
        .iter()
        .map(|e| format!("{} {} {}", e["Key"], e["Value"], e["Flags"]))
        .collect();
    keys.sort();
    let services = get(format!("/v1/catalog/services?{mode}")).await?;
    let mut sessions: Vec<String> = get(format!("/v1/session/list?{mode}"))
        .await?
        .as_array()?
        .iter()
        .map(|s| format!("{} {} {}", s["ID"], s["Name"], s["TTL"]))
        .collect();
    sessions.sort();
    Some(format!(
        "{}\n{services}\n{}",
        keys.join("\n"),
        sessions.join("\n")
    ))
}

/// How many keys under `k/` the agent at `base` lists (`mode`: e.g. `&stale`).
async fn key_count(http: &reqwest::Client, base: &str, mode: &str) -> Option<usize> {
    let r = http
        .get(format!("{base}/v1/kv/k/?keys{mode}"))
        .send()
        .await
        .ok()?;
    match r.status().as_u16() {
        200 => Some(r.json::<Vec<String>>().await.ok()?.len()),
        404 => Some(0),
        _ => None,
    }
}

async fn txn(http: &reqwest::Client, base: &str, ops: Vec<Value>) {
    let body = Value::Array(ops).to_string();
    eventually(Duration::from_secs(30), "a transaction applied", || async {
        let r = http
            .put(format!("{base}/v1/txn"))
            .body(body.clone())
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

fn set(key: &str, value: &str, flags: u64) -> Value {
    json!({"KV": {"Verb": "set", "Key": key, "Value": base64_of(value), "Flags": flags}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dc_is_saved_wiped_and_restored_identically() {
    let pki = TestPki::new();
    let dc = write_dc(NET, &pki);
    let start = || -> Vec<ChildGuard> { dc.configs[..3].iter().map(|c| spawn_agent(c)).collect() };
    let procs = start();
    let (_me, probe) = prober(&pki);
    let http = http_client_bounded();
    let bases: Vec<String> = dc.addrs[..3]
        .iter()
        .map(|a| format!("http://{}:8500", a.ip()))
        .collect();
    let base = bases[0].clone();
    agreed_leader(&probe, &dc.addrs[..3]).await;

    // The state: 10,000 keys (64 per transaction), services, sessions.
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(64) {
        let ops = chunk
            .iter()
            .map(|i| set(&format!("k/{i:05}"), &format!("value {i}"), *i as u64))
            .collect();
        txn(&http, &base, ops).await;
    }
    for i in 0..5 {
        catalog_register(
            &http,
            &base,
            (&format!("n{i}"), &format!("10.0.0.{i}")),
            (&format!("svc{i}"), 8000 + i as u16, &["t"]),
            "passing",
        )
        .await;
    }
    for name in ["lock-a", "lock-b"] {
        let r = http
            .put(format!("{base}/v1/session/create"))
            .body(json!({"Name": name, "Node": "n0", "TTL": "60s", "NodeChecks": []}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "session {name}");
    }
    let saved = listing(&http, &base, "consistent").await.expect("listing");

    // Save (verified by the CLI) and inspect.
    let file = dc.dir.path().join("backup.snap");
    let out = cli(
        dc.dir.path(),
        &base,
        &["snapshot", "save", file.to_str().unwrap()],
    )
    .expect("snapshot save");
    assert!(
        out.starts_with("Saved and verified snapshot to index "),
        "{out}"
    );
    let inspected: Value = serde_json::from_str(
        &cli(
            dc.dir.path(),
            &base,
            &[
                "snapshot",
                "inspect",
                "--format",
                "json",
                file.to_str().unwrap(),
            ],
        )
        .expect("snapshot inspect"),
    )
    .unwrap();
    assert_eq!(inspected["Counts"]["KV"], KEYS, "{inspected}");
    assert_eq!(inspected["Counts"]["Sessions"], 2, "{inspected}");
    assert!(inspected["Index"].as_u64().unwrap() > 100, "{inspected}");

    // Disaster: every server's data gone; a fresh DC from the same configs.
    for mut p in procs {
        p.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    }
    for i in 0..3 {
        std::fs::remove_dir_all(data_dir(&dc, i)).unwrap();
    }
    let _procs = start();
    agreed_leader(&probe, &dc.addrs[..3]).await;
    eventually(
        Duration::from_secs(30),
        "the fresh DC takes writes",
        || async {
            let r = http
                .put(format!("{base}/v1/kv/fresh"))
                .body("1")
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    assert_eq!(
        key_count(&http, &base, "").await,
        Some(0),
        "the DC was wiped"
    );

    // A corrupted archive is refused and changes nothing.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = dc.dir.path().join("corrupted.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let err = cli(
        dc.dir.path(),
        &base,
        &["snapshot", "restore", bad.to_str().unwrap()],
    )
    .expect_err("a corrupted archive must be refused");
    assert!(err.contains("400"), "{err}");
    let truncated = dc.dir.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..mid]).unwrap();
    let err = cli(
        dc.dir.path(),
        &base,
        &["snapshot", "restore", truncated.to_str().unwrap()],
    )
    .expect_err("a truncated archive must be refused");
    assert!(err.contains("truncated"), "{err}");
    assert!(
        cli(
            dc.dir.path(),
            &base,
            &["snapshot", "inspect", bad.to_str().unwrap()]
        )
        .is_err(),
        "inspect verifies too"
    );
    assert_eq!(
        key_count(&http, &base, "").await,
        Some(0),
        "state untouched"
    );

    // Restore while readers watch: they see none of it or all of it, and a blocking query
    // waiting on the DC's KV wakes.
    let index = {
        let r = http
            .get(format!("{base}/v1/kv/fresh"))
            .send()
            .await
            .unwrap();
        r.headers()["X-Consul-Index"].to_str().unwrap().to_string()
    };
    let blocking = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/v1/kv/k/?keys&index={index}&wait=60s"))
                .timeout(Duration::from_secs(90))
                .send()
                .await
                .ok()?
                .json::<Vec<String>>()
                .await
                .ok()
                .map(|k| k.len())
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = bases
        .iter()
        .map(|b| {
            let (http, b, stop) = (http.clone(), b.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(n) = key_count(&http, &b, "&stale").await {
                        seen.insert(n);
                    }
                }
                seen
            })
        })
        .collect();
    let out = cli(
        dc.dir.path(),
        &base,
        &["snapshot", "restore", file.to_str().unwrap()],
    )
    .expect("snapshot restore");
    assert_eq!(out, "Restored snapshot\n");
    assert_eq!(
        blocking.await.unwrap(),
        Some(KEYS),
        "the blocking query woke"
    );
    for b in &bases {
        eventually(Duration::from_secs(30), "every server restored", || async {
            (listing(&http, b, "stale").await? == saved).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let seen = r.await.unwrap();
        assert!(
            seen.iter().all(|n| *n == 0 || *n == KEYS),
            "a reader saw a half-restored state: {seen:?}"
        );
    }
    assert_eq!(
        listing(&http, &base, "consistent").await.unwrap(),
        saved,
        "the leader holds what was saved"
    );
    // Writes go on after the restore, with indexes above the archive's.
    let r = http
        .put(format!("{base}/v1/kv/after"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = http
        .get(format!("{base}/v1/kv/after"))
        .send()
        .await
        .unwrap();
    let v: Value = after.json().await.unwrap();
    assert!(
        v[0]["ModifyIndex"].as_u64().unwrap() > inspected["Index"].as_u64().unwrap(),
        "indexes never go back: {v}"
    );
}
