//! Consul's KV HTTP API against a real 3-server DC (processes): reads in every consistency
//! mode with Consul's headers, writes through any server, CAS, recursion, keys, raw,
//! blocking queries that wake and that time out, and the error codes.

use std::time::{Duration, Instant};

use crate::common::dc::*;
use crate::common::*;
use reqwest::StatusCode;

fn http(dc: &Dc, i: usize) -> String {
    format!("http://{}:8500", dc.addrs[i].ip())
}

async fn get(c: &reqwest::Client, url: String) -> reqwest::Response {
    c.get(url).send().await.unwrap()
}

async fn del(c: &reqwest::Client, url: String) -> reqwest::Response {
    c.delete(url).send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_api_against_a_real_dc() {
    let pki = TestPki::new();
    let dc = write_dc(10, &pki);
    let _procs: Vec<ChildGuard> = dc.configs[..3].iter().map(|c| spawn_agent(c)).collect();
    let (_me, li) = observe_leader(&pki, &dc.addrs[..3]).await;
    let fi = (li + 1) % 3;
    let (leader, follower) = (http(&dc, li), http(&dc, fi));
    let c = http_client();

    // Status: every server names the same leader and the three peers.
    let want = dc.addrs[li].to_string();
    for i in 0..3 {
        let l: String = get(&c, format!("{}/v1/status/leader", http(&dc, i)))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(l, want);
        let mut peers: Vec<String> = get(&c, format!("{}/v1/status/peers", http(&dc, i)))
            .await
            .json()
            .await
            .unwrap();
        peers.sort();
        let mut all: Vec<String> = dc.addrs[..3].iter().map(|a| a.to_string()).collect();
        all.sort();
        assert_eq!(peers, all);
    }

    // A write through a follower is forwarded to the leader.
    let r = c
        .put(format!("{follower}/v1/kv/app/config"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "true");

    // Default mode, answered by the leader (forwarded from the follower).
    let r = get(&c, format!("{follower}/v1/kv/app/config")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "X-Consul-Effective-Consistency"), "leader");
    assert_eq!(header(&r, "X-Consul-KnownLeader"), "true");
    let index: u64 = header(&r, "X-Consul-Index").parse().unwrap();
    assert!(index >= 1);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body[0]["Key"], "app/config");
    assert_eq!(body[0]["Value"], "aGVsbG8=");
    assert_eq!(body[0]["Flags"], 0);
    assert_eq!(body[0]["CreateIndex"], body[0]["ModifyIndex"]);

    // Stale on the follower says so, and how long since it heard from the leader.
    let r = eventually(
        Duration::from_secs(5),
        "replicated to the follower",
        || async {
            let r = c
                .get(format!("{follower}/v1/kv/app/config?stale"))
                .send()
                .await
                .ok()?;
            (r.status() == StatusCode::OK).then_some(r)
        },
    )
    .await;
    assert_eq!(header(&r, "X-Consul-Effective-Consistency"), "stale");
    let _: u64 = header(&r, "X-Consul-LastContact").parse().unwrap();
    let r = get(&c, format!("{leader}/v1/kv/app/config?consistent")).await;
    assert_eq!(header(&r, "X-Consul-Effective-Consistency"), "consistent");
    assert_eq!(header(&r, "X-Consul-LastContact"), "0");

    // raw, flags, keys with separator, recurse.
    let r = get(&c, format!("{leader}/v1/kv/app/config?raw")).await;
    assert_eq!(r.text().await.unwrap(), "hello");
    for k in ["app/db/host", "app/db/port", "apple"] {
        let r = c
            .put(format!("{leader}/v1/kv/{k}?flags=42"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "true");
    }
    let keys: Vec<String> = get(&c, format!("{leader}/v1/kv/app/?keys&separator=/"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys, ["app/config", "app/db/"]);
    let all: serde_json::Value = get(&c, format!("{leader}/v1/kv/app?recurse"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 4);
    assert_eq!(all[1]["Flags"], 42);

    // Missing keys: 404 that still carries the index.
    let r = get(&c, format!("{leader}/v1/kv/nope")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(header(&r, "X-Consul-Index").parse::<u64>().unwrap() >= 1);

    // CAS: 0 creates only; a stale index fails with `false`, the right one succeeds.
    let put = |url: String, body: &'static str| {
        let c = c.clone();
        async move {
            c.put(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(put(format!("{leader}/v1/kv/lock?cas=0"), "a").await, "true");
    assert_eq!(
        put(format!("{leader}/v1/kv/lock?cas=0"), "b").await,
        "false"
    );
    let e: serde_json::Value = get(&c, format!("{leader}/v1/kv/lock"))
        .await
        .json()
        .await
        .unwrap();
    let mi = e[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        put(format!("{leader}/v1/kv/lock?cas={}", mi - 1), "c").await,
        "false"
    );
    assert_eq!(
        put(format!("{leader}/v1/kv/lock?cas={mi}"), "d").await,
        "true"
    );
    let r = del(&c, format!("{leader}/v1/kv/lock?cas={mi}")).await;
    assert_eq!(r.text().await.unwrap(), "false");

    // Blocking query that wakes on a write from elsewhere.
    let e: serde_json::Value = get(&c, format!("{leader}/v1/kv/app/config"))
        .await
        .json()
        .await
        .unwrap();
    let idx = e[0]["ModifyIndex"].as_u64().unwrap();
    let r0 = get(&c, format!("{leader}/v1/kv/app/config")).await;
    let table_index: u64 = header(&r0, "X-Consul-Index").parse().unwrap();
    assert!(table_index >= idx);
    let waiter = {
        let c = c.clone();
        let url = format!("{follower}/v1/kv/app/config?index={table_index}&wait=30s");
        tokio::spawn(async move {
            let t = Instant::now();
            let r = get(&c, url).await;
            let i: u64 = header(&r, "X-Consul-Index").parse().unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            (t.elapsed(), i, body)
        })
    };
    // The follower forwards it to the leader, where it waits (the leader's gauge says so).
    eventually(
        Duration::from_secs(5),
        "the query blocking on the leader",
        || async {
            let n = metric(&c, &leader, "consulate_rpc_queries_blocking").await?;
            (n == 1.0).then_some(())
        },
    )
    .await;
    assert!(
        !waiter.is_finished(),
        "a blocking query with a current index waits"
    );
    assert_eq!(
        put(format!("{follower}/v1/kv/app/config"), "world").await,
        "true"
    );
    let (took, new_index, body) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(new_index > table_index);
    assert_eq!(body[0]["Value"], "d29ybGQ=");
    assert!(took < Duration::from_secs(10));

    // Blocking query that times out: same index back after about the wait.
    let t = Instant::now();
    let r = get(
        &c,
        format!("{leader}/v1/kv/app/config?index={new_index}&wait=400ms"),
    )
    .await;
    let waited = t.elapsed();
    assert_eq!(
        header(&r, "X-Consul-Index").parse::<u64>().unwrap(),
        new_index
    );
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // Recursive delete.
    let r = del(&c, format!("{leader}/v1/kv/app?recurse")).await;
    assert_eq!(r.text().await.unwrap(), "true");
    let r = get(&c, format!("{leader}/v1/kv/app?recurse")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Errors: conflicting modes, bad numbers, unknown DC, oversized value.
    let r = get(&c, format!("{leader}/v1/kv/apple?stale&consistent")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.text().await.unwrap(),
        "Cannot specify ?stale with ?consistent, conflicting semantics."
    );
    let r = get(&c, format!("{leader}/v1/kv/apple?index=abc")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .put(format!("{leader}/v1/kv/apple?cas=-1"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = get(&c, format!("{leader}/v1/kv/apple?dc=dc9")).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.text().await.unwrap(), "No path to datacenter");
    let r = c
        .put(format!("{leader}/v1/kv/big"))
        .body(vec![b'x'; 512 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = c
        .put(format!("{leader}/v1/kv/max"))
        .body(vec![b'x'; 512 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "true",
        "exactly 512 KiB is accepted"
    );
}
