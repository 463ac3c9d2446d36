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

/// `PUT /v1/txn` through a client agent: all or nothing, 409 naming the failed operation
/// with nothing applied, read-only transactions without Raft, locks, and bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_apply_all_or_nothing() {
    use serde_json::{Value, json};
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let configs = write_small_dc(dir.path(), &pki, (73, 1), None, "");
    let _agents: Vec<ChildGuard> = configs.iter().map(|c| spawn_agent(c)).collect();
    let http = http_client_bounded();
    let base = "http://127.73.1.21:8500";
    let txn = |ops: Value, query: &str| {
        let req = http
            .put(format!("{base}/v1/txn{query}"))
            .body(ops.to_string());
        async move {
            let r = req.send().await.ok()?;
            let status = r.status().as_u16();
            let consistency = r
                .headers()
                .get("X-Consul-Effective-Consistency")
                .map(|v| v.to_str().unwrap().to_string());
            Some((status, r.json::<Value>().await.ok()?, consistency))
        }
    };
    let kv = |verb: &str, key: &str, value: Option<&str>| {
        let mut op = json!({"Verb": verb, "Key": key});
        if let Some(v) = value {
            op["Value"] = json!(base64_of(v));
        }
        json!({"KV": op})
    };
    let (status, v, _) = eventually(Duration::from_secs(30), "a transaction", || async {
        txn(
            json!([kv("set", "t/a", Some("1")), kv("set", "t/b", Some("2"))]),
            "",
        )
        .await
        .filter(|(s, ..)| *s == 200)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["Errors"], Value::Null);
    assert_eq!(v["Results"][1]["KV"]["Key"], "t/b");
    let b_index = v["Results"][1]["KV"]["ModifyIndex"].as_u64().unwrap();

    // The second operation fails: the first is not applied either.
    let mut cas = kv("cas", "t/b", Some("x"));
    cas["KV"]["Index"] = json!(b_index + 100);
    let (status, v, _) = txn(json!([kv("set", "t/c", Some("3")), cas]), "")
        .await
        .unwrap();
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["Results"], Value::Null);
    assert_eq!(v["Errors"][0]["OpIndex"], 1);
    assert!(
        v["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("index is stale"),
        "{v}"
    );
    let r = http.get(format!("{base}/v1/kv/t/c")).send().await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "nothing of a failed transaction is applied"
    );

    // Reads and checks only: no Raft, in the mode asked.
    let mut check = kv("check-index", "t/b", None);
    check["KV"]["Index"] = json!(b_index);
    let read = json!([
        kv("get", "t/a", None),
        check,
        kv("check-not-exists", "t/c", None),
        kv("get-tree", "t/", None)
    ]);
    let (status, v, consistency) = txn(read, "?stale").await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(consistency.as_deref(), Some("stale"));
    assert_eq!(v["Results"][0]["KV"]["Value"], base64_of("1"));
    assert_eq!(
        v["Results"].as_array().unwrap().len(),
        4,
        "get, check-index, get-tree of two: {v}"
    );

    // Locks with a session, as Vault's HA lock takes them.
    // (The agent's node needs its serfHealth check first: the leader adds it.)
    let session = eventually(Duration::from_secs(30), "a session", || async {
        let r = http
            .put(format!("{base}/v1/session/create"))
            .body(r#"{"Name": "vault-lock"}"#)
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        Some(v["ID"].as_str()?.to_string())
    })
    .await;
    let with_session = |verb: &str| {
        let mut op = kv(verb, "t/lock", Some("me"));
        op["KV"]["Session"] = json!(session);
        op
    };
    let (status, v, _) = txn(
        json!([with_session("lock"), with_session("check-session")]),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["Results"][0]["KV"]["Session"], session.as_str());
    let (status, v, _) = txn(json!([with_session("unlock")]), "").await.unwrap();
    assert_eq!(status, 200, "{v}");

    // Bad input: an unknown verb, too many operations, not a list.
    let bad = |body: String| {
        let req = http.put(format!("{base}/v1/txn")).body(body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, text) = bad(json!([kv("frobnicate", "t/a", None)]).to_string()).await;
    assert_eq!(
        (status, text.contains("unknown KV verb")),
        (400, true),
        "{text}"
    );
    let many: Vec<Value> = (0..129)
        .map(|i| kv("set", &format!("t/{i}"), Some("x")))
        .collect();
    let (status, text) = bad(Value::Array(many).to_string()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("too many operations (129 > 128)"), "{text}");
    let (status, _) = bad(r#"{"KV": {}}"#.into()).await;
    assert_eq!(status, 400);
    let (status, text) =
        bad(json!([{"Node": {"Verb": "set", "Node": {"Address": "x"}}}]).to_string()).await;
    assert_eq!(status, 400, "a node without a name: {text}");

    // Catalog operations in Consul's shapes, with KV, all or nothing.
    let node = json!({"Node": {"Verb": "set", "Node": {"Node": "tx-n1", "Address": "10.9.0.1", "Meta": {"rack": "r1"}}}});
    let service = |verb: &str, index: u64| {
        json!({"Service": {"Verb": verb, "Node": "tx-n1",
                           "Service": {"ID": "web1", "Service": "web", "Port": 8080, "ModifyIndex": index}}})
    };
    let check = json!({"Check": {"Verb": "set", "Check": {"Node": "tx-n1", "CheckID": "web-up",
                       "Name": "up", "Status": "passing", "ServiceID": "web1"}}});
    let (status, v, _) = txn(
        json!([
            node,
            service("set", 0),
            check,
            kv("set", "t/catalog", Some("1"))
        ]),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["Results"][0]["Node"]["Meta"]["rack"], "r1", "{v}");
    assert_eq!(v["Results"][1]["Service"]["Port"], 8080, "{v}");
    assert_eq!(v["Results"][2]["Check"]["ServiceName"], "web", "{v}");
    let modify = v["Results"][1]["Service"]["ModifyIndex"].as_u64().unwrap();
    let health = get_json(&http, &format!("{base}/v1/health/service/web?passing"))
        .await
        .unwrap();
    assert_eq!(health.as_array().unwrap().len(), 1, "{health}");
    // A stale CAS after a deletion: nothing applied, the node still there.
    let (status, v, _) = txn(
        json!([{"Node": {"Verb": "delete", "Node": {"Node": "tx-n1"}}}, service("cas", modify + 1)]),
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        (status, v["Errors"][0]["OpIndex"].as_u64()),
        (409, Some(1)),
        "{v}"
    );
    let (status, v, consistency) = txn(
        json!([{"Node": {"Verb": "get", "Node": {"Node": "tx-n1"}}}, service("get", 0)]),
        "?stale",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(consistency.as_deref(), Some("stale"), "read-only: no Raft");
    assert_eq!(v["Results"][1]["Service"]["ID"], "web1", "{v}");
    let (status, v, _) = txn(json!([service("delete-cas", modify)]), "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    let health = get_json(&http, &format!("{base}/v1/health/service/web"))
        .await
        .unwrap();
    assert_eq!(health.as_array().unwrap().len(), 0, "{health}");
}
