//! Hostile and careless input against real agent processes (two DCs of one server and one
//! client agent each): blocking queries abandoned through a client agent and across DCs
//! are released on the servers; check intervals of `0s` and `1ns` are raised to the
//! minimum instead of spinning the agent; no state-changing route answers `GET` (the whole
//! route table is walked).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::common::*;

/// Each test has its own block of addresses: 127.<net>.<dc>.<host>.
fn ip(net: u8, dc: u8, host: u8) -> String {
    format!("127.{net}.{dc}.{host}")
}

fn base(net: u8, dc: u8, host: u8) -> String {
    format!("http://{}:8500", ip(net, dc, host))
}

/// Two DCs `dc1`, `dc2` on 127.<net>.x: server `s1` on .1, client `c1` on .21 (with
/// `client_extra` config lines).
fn write_dcs(dir: &Path, pki: &TestPki, net: u8, client_extra: &str) -> Vec<PathBuf> {
    [1u8, 2]
        .into_iter()
        .flat_map(|dc| write_small_dc(dir, pki, (net, dc), Some(3 - dc), client_extra))
        .collect()
}

/// Two running DCs and an HTTP client; the agents stop when it is dropped.
struct Dcs {
    agents: Vec<ChildGuard>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Starts both DCs on 127.<net>.x (client agents with `client_extra`) and waits for a
/// leader in each and for dc1 to reach dc2.
async fn start_dcs(net: u8, client_extra: &str) -> Dcs {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let http = http_client();
    let agents: Vec<ChildGuard> = write_dcs(dir.path(), &pki, net, client_extra)
        .iter()
        .map(|c| spawn_agent(c))
        .collect();
    for dc in [1, 2] {
        wait_for_leader(&http, &base(net, dc, 21), "").await;
    }
    wait_for_leader(&http, &base(net, 1, 21), "?dc=dc2").await;
    Dcs {
        agents,
        http,
        _dir: dir,
    }
}

/// The value of `consulate_rpc_queries_blocking` on the agent at `base`.
async fn blocking(http: &reqwest::Client, base: &str) -> Option<f64> {
    metric(http, base, "consulate_rpc_queries_blocking").await
}

/// Opens `n` connections to `agent` (host:port), each sending `GET path` and then left
/// open without reading: the caller drops them to disconnect.
async fn hold_queries(agent: &str, path: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let addr: SocketAddr = agent.parse().unwrap();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {agent}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_blocking_queries_are_released_on_every_server() {
    let net = 89;
    // 500 connections from the test's one address: above the default cap of 200.
    let dcs = start_dcs(net, "[limits]\nhttp_max_conns_per_client = 1000\n").await;
    let http = &dcs.http;
    let leader_pid = dcs.agents[0].0.as_ref().unwrap().id();
    let (s1, s2, c1) = (base(net, 1, 1), base(net, 2, 1), base(net, 1, 21));
    // A key in each DC, and its index to block on.
    let mut index = [0u64; 2];
    // Large values, as in the report: a waiter woken for nothing re-reads one.
    let value = vec![b'v'; 512 * 1024];
    for (i, dc) in ["dc1", "dc2"].into_iter().enumerate() {
        let r = http
            .put(format!("{c1}/v1/kv/watched?dc={dc}"))
            .body(value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = http
            .get(format!("{c1}/v1/kv/watched?dc={dc}"))
            .send()
            .await
            .unwrap();
        index[i] = r.headers()["X-Consul-Index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
    }
    let agent = format!("{}:8500", ip(net, 1, 21));
    let local = hold_queries(
        &agent,
        &format!("/v1/kv/watched?index={}&wait=1h", index[0]),
        300,
    )
    .await;
    // 100 distinct cross-DC queries (each its own forward to dc2), and 100 identical to the
    // first, which share its forward on dc1's server (coalesced) and go with it.
    let mut remote = Vec::new();
    for i in 0..100 {
        let path = format!("/v1/kv/watched?dc=dc2&index={}&wait=1h", index[1] + i);
        remote.extend(hold_queries(&agent, &path, 1).await);
    }
    let path = format!("/v1/kv/watched?dc=dc2&index={}&wait=1h", index[1]);
    remote.extend(hold_queries(&agent, &path, 100).await);
    eventually(
        Duration::from_secs(20),
        "every query waiting on its server",
        || async {
            let (here, there) = (blocking(http, &s1).await?, blocking(http, &s2).await?);
            (here >= 300.0 && there >= 100.0).then_some(())
        },
    )
    .await;
    let abandoned_before = metric(
        http,
        &s2,
        "consulate_rpc_requests_abandoned_total{alpn=\"rpc\"}",
    )
    .await
    .unwrap();
    let rss_before = rss_mb(leader_pid);
    drop(local);
    drop(remote);
    eventually(
        Duration::from_secs(10),
        "every abandoned query released",
        || async {
            let (here, there) = (blocking(http, &s1).await?, blocking(http, &s2).await?);
            (here == 0.0 && there == 0.0).then_some(())
        },
    )
    .await;
    let abandoned = metric(
        http,
        &s2,
        "consulate_rpc_requests_abandoned_total{alpn=\"rpc\"}",
    )
    .await
    .unwrap();
    assert!(
        abandoned - abandoned_before >= 100.0,
        "dc2 counted the cross-DC queries as abandoned: {abandoned_before} -> {abandoned}"
    );
    // The servers still answer, and writes wake nobody left over: the leader's memory does
    // not grow by the re-reads of 300 abandoned waiters (150 MB of values).
    for dc in ["dc1", "dc2"] {
        for key in ["other", "watched"] {
            let r = http
                .put(format!("{c1}/v1/kv/{key}?dc={dc}"))
                .body("w")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    assert_eq!(blocking(http, &s1).await, Some(0.0));
    assert_eq!(blocking(http, &s2).await, Some(0.0));
    let rss_after = rss_mb(leader_pid);
    assert!(
        rss_after < rss_before + 64,
        "the leader's RSS grew from {rss_before} MB to {rss_after} MB after the writes"
    );
}

/// The resident memory of process `pid`, in MB.
fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_intervals_below_a_second_are_raised_and_never_spin_the_agent() {
    let net = 90;
    let dcs = start_dcs(net, "").await;
    let http = &dcs.http;
    let c1 = base(net, 1, 21);
    // A TCP target that counts the check's connections.
    let target = tokio::net::TcpListener::bind(format!("{}:0", ip(net, 0, 9)))
        .await
        .unwrap();
    let target_addr = target.local_addr().unwrap();
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = target.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let register = |body: serde_json::Value| {
        let http = http.clone();
        let c1 = c1.clone();
        async move {
            http.put(format!("{c1}/v1/agent/check/register"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for (id, interval) in [("zero", "0s"), ("tiny", "1ns")] {
        let status = register(serde_json::json!({
            "ID": id, "Name": id, "TCP": target_addr.to_string(),
            "Interval": interval, "Timeout": "1ns",
        }))
        .await;
        assert_eq!(status, 200, "{interval} is raised, not refused");
    }
    let status = register(serde_json::json!({
        "ID": "ttl", "Name": "ttl", "TTL": "2s", "Status": "passing",
    }))
    .await;
    assert_eq!(status, 200);
    // Nonsense is refused.
    for (field, value) in [("Interval", "-1s"), ("Interval", "soon"), ("Timeout", "1x")] {
        let mut body = serde_json::json!({"ID": "bad", "Name": "bad", "TCP": target_addr.to_string(), "Interval": "10s"});
        body[field] = serde_json::json!(value);
        assert_eq!(register(body).await, 400, "{field} {value}");
    }
    // The TTL check still lapses: the agent's check runner is not stuck.
    let checks_url = format!("{c1}/v1/agent/checks");
    eventually(Duration::from_secs(15), "the TTL check expired", || async {
        let checks = get_json(http, &checks_url).await?;
        (checks["ttl"]["Status"] == "critical").then_some(())
    })
    .await;
    let checks = get_json(http, &checks_url).await.unwrap();
    for id in ["zero", "tiny"] {
        let output = checks[id]["Output"].as_str().unwrap_or_default();
        assert!(
            output.contains("below the minimum of 1s"),
            "{id}: a warning in the output: {output:?}"
        );
        assert_eq!(checks[id]["Status"], "passing", "{id} runs");
    }
    // Counted, not timed: two checks at the 1 s minimum make a few connections a second,
    // where a spinning runner makes thousands.
    let before = runs.load(std::sync::atomic::Ordering::SeqCst);
    let window = std::time::Instant::now();
    eventually(Duration::from_secs(10), "a few more runs", || async {
        (runs.load(std::sync::atomic::Ordering::SeqCst) >= before + 4).then_some(())
    })
    .await;
    let elapsed = window.elapsed().as_secs_f64().max(1.0);
    let made = runs.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(
        (made as f64) <= 2.0 * (elapsed + 2.0),
        "{made} runs in {elapsed:.1} s: the 1 s minimum is not kept"
    );
    // Deregistered, they stop.
    for id in ["zero", "tiny"] {
        let r = http
            .put(format!("{c1}/v1/agent/check/deregister/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// Every route of the table, asked with every method it does not take, answers 405 (and
/// the routes that read answer their own method); no route that changes state takes GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_takes_only_its_methods() {
    let net = 91;
    let dcs = start_dcs(net, "").await;
    let http = &dcs.http;
    let c1 = base(net, 1, 21);
    let methods = ["get", "put", "post", "delete", "patch"];
    let mut asked = 0;
    for (template, allowed, _) in consulate::http::ROUTES {
        let path: String = template
            .split('/')
            .map(|seg| match seg {
                "{*key}" => "some/key",
                s if s.starts_with('{') => "x",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in methods {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let takes = allowed.contains(&method);
            if takes && method != "get" {
                continue; // would change the agent; the 405s are what is checked here
            }
            let status = http
                .request(m, format!("{c1}{path}"))
                .send()
                .await
                .unwrap()
                .status();
            asked += 1;
            if takes {
                assert_ne!(status, 405, "GET {template}");
            } else {
                assert_eq!(status, 405, "{method} {template} must be refused");
            }
        }
    }
    assert!(asked > 100, "the whole table walked ({asked} requests)");
    // Refusals are counted, by route template.
    let refused = metric(
        http,
        &c1,
        "consulate_http_requests_total{code=\"405\",method=\"GET\",route=\"/v1/agent/check/pass/{id}\"}",
    )
    .await;
    assert_eq!(refused, Some(1.0));
}

/// A blocking KV query waits on its key or prefix: a write to `b` wakes none of the
/// waiters on `a` or `a/`; a write to `a/x` wakes the prefix's waiters only; a write to `a`
/// its own. Counted by the leader's `consulate_kv_waiters_woken_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_write_wakes_only_the_waiters_on_its_key_and_prefixes() {
    let net = 92;
    let dcs = start_dcs(net, "").await;
    let http = &dcs.http;
    let (s1, c1) = (base(net, 1, 1), base(net, 1, 21));
    let put = |key: &'static str| {
        let (http, c1) = (http.clone(), c1.clone());
        async move {
            let r = http
                .put(format!("{c1}/v1/kv/{key}"))
                .body(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    for key in ["a", "b", "a/x"] {
        put(key).await;
    }
    let index_of = |path: &'static str| {
        let (http, c1) = (http.clone(), c1.clone());
        async move {
            let r = http.get(format!("{c1}{path}")).send().await.unwrap();
            r.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    };
    let (key_index, dir_index) = (
        index_of("/v1/kv/a").await,
        index_of("/v1/kv/a/?recurse").await,
    );
    assert!(key_index < dir_index, "a key reports its own ModifyIndex");
    let wait = |path: String| {
        let http = http.clone();
        tokio::spawn(async move { http.get(path).send().await.unwrap().status() })
    };
    let on_key: Vec<_> = (0..40)
        .map(|_| wait(format!("{c1}/v1/kv/a?index={key_index}&wait=60s")))
        .collect();
    let on_dir: Vec<_> = (0..10)
        .map(|_| wait(format!("{c1}/v1/kv/a/?recurse&index={dir_index}&wait=60s")))
        .collect();
    let waiting = || async { metric(http, &s1, "consulate_rpc_queries_blocking").await };
    eventually(Duration::from_secs(15), "50 queries waiting", || async {
        (waiting().await? == 50.0).then_some(())
    })
    .await;
    let woken = || async {
        metric(http, &s1, "consulate_kv_waiters_woken_total")
            .await
            .unwrap()
    };
    let before = woken().await;
    put("b").await;
    assert_eq!(
        woken().await,
        before,
        "a write to b woke a waiter on a or a/"
    );
    assert_eq!(waiting().await, Some(50.0));
    put("a/x").await;
    for w in on_dir {
        assert_eq!(w.await.unwrap(), 200);
    }
    assert_eq!(
        woken().await,
        before + 10.0,
        "the prefix's waiters, and only them"
    );
    assert_eq!(waiting().await, Some(40.0));
    assert!(on_key.iter().all(|w| !w.is_finished()));
    put("a").await;
    for w in on_key {
        assert_eq!(w.await.unwrap(), 200);
    }
    assert_eq!(woken().await, before + 50.0);
}

/// Limits on a careless or hostile client: registrations with oversized IDs, names or
/// metadata are refused with 400 (and one at the limits can be deregistered again), a body
/// trickled in is answered 408, and connections past the per-client cap are answered 429,
/// each counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_registrations_slow_bodies_and_connection_floods_are_refused() {
    let net = 93;
    let limits = "[limits]\nhttp_max_conns_per_client = 10\nhttp_body_read_timeout = \"2s\"\n";
    let dcs = start_dcs(net, limits).await;
    let http = &dcs.http;
    let c1 = base(net, 1, 21);
    let put = |path: &str, body: serde_json::Value| {
        let req = http.put(format!("{c1}{path}")).json(&body);
        async move { req.send().await.unwrap() }
    };
    let meta = |n: usize, k: usize, v: usize| -> serde_json::Map<String, serde_json::Value> {
        (0..n)
            .map(|i| (format!("{i:0>k$}"), serde_json::json!("v".repeat(v))))
            .collect()
    };
    let too_big = [
        serde_json::json!({"ID": "x".repeat(100_000), "Name": "web"}),
        serde_json::json!({"Name": "n".repeat(513)}),
        serde_json::json!({"Name": "web", "Tags": ["t".repeat(513)]}),
        serde_json::json!({"Name": "web", "Meta": meta(65, 4, 1)}),
        serde_json::json!({"Name": "web", "Meta": meta(1, 129, 1)}),
        serde_json::json!({"Name": "web", "Meta": meta(1, 8, 513)}),
    ];
    for body in too_big {
        let r = put("/v1/agent/service/register", body).await;
        assert_eq!(r.status(), 400, "{}", r.text().await.unwrap());
    }
    let r = put(
        "/v1/catalog/register",
        serde_json::json!({"Node": "n".repeat(100_000), "Address": "127.0.0.1"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = put(
        "/v1/agent/check/register",
        serde_json::json!({"Name": "c".repeat(513), "TTL": "10s"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    // At the limits: accepted, and can be named again to deregister it.
    let id = "i".repeat(512);
    let r = put(
        "/v1/agent/service/register",
        serde_json::json!({"ID": id, "Name": "web", "Meta": meta(64, 128, 512)}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = http
        .put(format!("{c1}/v1/agent/service/deregister/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A body trickled at 2 bytes a second: 408 once the read timeout has passed.
    let agent: SocketAddr = format!("{}:8500", ip(net, 1, 21)).parse().unwrap();
    let mut slow = tokio::net::TcpStream::connect(agent).await.unwrap();
    slow.write_all(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let (mut read, mut write) = slow.into_split();
    let trickle = tokio::spawn(async move {
        while write.write_all(b"ab").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut read, &mut answer),
    )
    .await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        metric(
            http,
            &c1,
            "consulate_http_requests_total{code=\"408\",method=\"PUT\",route=\"/v1/kv/{*key}\"}"
        )
        .await,
        Some(1.0)
    );

    // Connections from one address past the cap of 10: answered 429 and closed; other
    // addresses are served.
    let from = |host: u8| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{}:0", ip(net, 0, host)).parse().unwrap())
            .unwrap();
        socket.connect(agent)
    };
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(from(50).await.unwrap());
    }
    eventually(Duration::from_secs(10), "10 connections open", || async {
        let open = metric(http, &c1, "consulate_http_connections_open").await?;
        (open >= 10.0).then_some(())
    })
    .await;
    for _ in 0..3 {
        let mut extra = from(50).await.unwrap();
        let _ = extra
            .write_all(b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut extra, &mut answer),
        )
        .await;
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 429"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    let mut other = from(51).await.unwrap();
    other
        .write_all(b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut other, &mut answer)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert_eq!(
        metric(
            http,
            &c1,
            "consulate_http_connections_refused_total{reason=\"per_client_limit\"}"
        )
        .await,
        Some(3.0)
    );
    drop(held);
    // Places come back when connections close.
    eventually(Duration::from_secs(10), "a place again", || async {
        let mut again = from(50).await.ok()?;
        again
            .write_all(b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut again, &mut answer)
            .await
            .ok()?;
        String::from_utf8_lossy(&answer)
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
}
