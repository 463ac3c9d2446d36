//! Consul's catalog, health and agent HTTP API against a real DC of processes: three servers
//! and one client agent. The client answers every endpoint by forwarding to a server, keeps
//! its own services in sync with the catalog (anti-entropy), and moves to another server
//! when the one it uses dies.

use std::time::{Duration, Instant};

use crate::common::dc::*;
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const NET: u8 = 11;

fn header(r: &reqwest::Response, name: &str) -> u64 {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

struct Api {
    c: reqwest::Client,
    base: String,
}

impl Api {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.c
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.c
            .put(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Polls `path` until `ok` holds for its JSON (anti-entropy and replication are
    /// asynchronous).
    async fn until(&self, path: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(15), what, || async {
            let r = self
                .c
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            ok(&v).then_some(v)
        })
        .await
    }
}

/// The check `id` of a `health/service` entry.
fn check_of<'a>(entry: &'a Value, id: &str) -> &'a Value {
    entry["Checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["CheckID"] == id))
        .unwrap_or_else(|| panic!("no check {id} in {entry}"))
}

fn names(v: &Value, field: &str) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} missing in {v}"))
                .to_string()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_health_and_agent_api_through_a_client_agent() {
    let pki = TestPki::new();
    let dc = write_dc(NET, &pki);
    let mut servers: Vec<ChildGuard> = dc.configs[..3].iter().map(|c| spawn_agent(c)).collect();
    let client_cfg = write_client(&dc, &pki, NET, 9, "c1");
    let _client = spawn_agent(&client_cfg);
    let (_me, li) = observe_leader(&pki, &dc.addrs[..3]).await;
    let http = http_client();
    let client = Api {
        c: http.clone(),
        base: format!("http://127.79.{NET}.9:8500"),
    };
    let server = |i: usize| Api {
        c: http.clone(),
        base: format!("http://{}:8500", dc.addrs[i].ip()),
    };

    // Status through the client: it asks a server.
    let leader: String = client
        .until("/v1/status/leader", "the client reaches a server", |v| {
            v.as_str().is_some_and(|s| !s.is_empty())
        })
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(leader, dc.addrs[li].to_string());
    assert_eq!(
        client
            .json("/v1/status/peers")
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // agent/self: what Prometheus reads the datacenter from.
    let me_json = client.json("/v1/agent/self").await;
    assert_eq!(me_json["Config"]["Datacenter"], "dc1");
    assert_eq!(me_json["Config"]["NodeName"], "c1");
    assert_eq!(me_json["Config"]["Server"], false);
    assert_eq!(me_json["Member"]["Tags"]["role"], "node");
    let members = client
        .until("/v1/agent/members", "gossip finds all four agents", |v| {
            names(v, "Name") == ["c1", "s1", "s2", "s3"]
        })
        .await;
    assert!(members.as_array().unwrap().iter().all(|m| m["Status"] == 1));
    let wan = server(0)
        .until(
            "/v1/agent/members?wan=1",
            "the servers as WAN members",
            |v| names(v, "Name").len() == 3,
        )
        .await;
    assert!(names(&wan, "Name").contains(&"s1.dc1".to_string()));

    // Every agent registers its own node through anti-entropy.
    client
        .until("/v1/catalog/nodes", "all four agents in the catalog", |v| {
            names(v, "Node") == ["c1", "s1", "s2", "s3"]
        })
        .await;

    // catalog/register through the client, Consul's PascalCase with a check.
    let reg = json!({
        "Node": "ext1", "Address": "10.1.0.1", "NodeMeta": {"rack": "r1"},
        "Service": {"ID": "web-1", "Service": "web", "Tags": ["prod", "v1"], "Port": 80,
                    "Meta": {"Version": "1.2"}},
        "Check": {"CheckID": "web-alive", "Name": "web alive", "Status": "passing",
                  "ServiceID": "web-1"}
    });
    let r = client.put("/v1/catalog/register", reg.to_string()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "true");
    let reg2 = json!({
        "node": "ext2", "address": "10.1.0.2",
        "service": {"id": "web-2", "service": "web", "tags": ["v1"], "port": 81},
        "checks": [{"checkid": "web2-alive", "name": "alive", "status": "critical",
                    "serviceid": "web-2"}]
    });
    assert_eq!(
        client
            .put("/v1/catalog/register", reg2.to_string())
            .await
            .status(),
        StatusCode::OK,
        "lowercase keys are Consul's keys too"
    );

    let r = client.get("/v1/catalog/services").await;
    assert!(header(&r, "X-Consul-Index") >= 1);
    let services: Value = r.json().await.unwrap();
    assert_eq!(services["web"], json!(["prod", "v1"]));

    let rows = client.json("/v1/catalog/service/web").await;
    assert_eq!(names(&rows, "ServiceID"), ["web-1", "web-2"]);
    let row = &rows[0];
    for field in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "CreateIndex",
        "ModifyIndex",
        "ServiceAddress",
        "ServiceEnableTagOverride",
        "ServiceID",
        "ServiceName",
        "ServicePort",
        "ServiceMeta",
        "ServiceTaggedAddresses",
        "ServiceTags",
        "ServiceWeights",
    ] {
        assert!(
            row.get(field).is_some(),
            "catalog/service row lacks {field}"
        );
    }
    assert_eq!(
        row["ServiceMeta"]["Version"], "1.2",
        "meta keys keep their case"
    );
    assert_eq!(row["ServiceWeights"], json!({"Passing": 1, "Warning": 1}));
    let prod = client.json("/v1/catalog/service/web?tag=prod").await;
    assert_eq!(names(&prod, "ServiceID"), ["web-1"]);
    let racked = client
        .json("/v1/catalog/service/web?node-meta=rack:r1")
        .await;
    assert_eq!(names(&racked, "Node"), ["ext1"]);
    let node = client.json("/v1/catalog/node/ext1").await;
    assert_eq!(node["Node"]["Address"], "10.1.0.1");
    assert_eq!(node["Services"]["web-1"]["Port"], 80);
    assert_eq!(client.json("/v1/catalog/node/nope").await, Value::Null);
    assert_eq!(client.json("/v1/catalog/datacenters").await, json!(["dc1"]));

    // Health.
    let all = client.json("/v1/health/service/web").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["Service"]["Service"], "web");
    assert_eq!(all[0]["Checks"][0]["CheckID"], "web-alive");
    let passing = client.json("/v1/health/service/web?passing=1").await;
    assert_eq!(passing.as_array().unwrap().len(), 1);
    assert_eq!(passing[0]["Node"]["Node"], "ext1");
    let checks = client.json("/v1/health/checks/web").await;
    assert_eq!(names(&checks, "CheckID"), ["web-alive", "web2-alive"]);
    let critical = client.json("/v1/health/state/critical").await;
    assert!(names(&critical, "CheckID").contains(&"web2-alive".to_string()));
    let on_node = client.json("/v1/health/node/ext1").await;
    assert_eq!(on_node[0]["ServiceName"], "web");

    // Agent services with a TTL check, in py-consul's lowercase spelling.
    let svc = json!({"name": "api", "id": "api-1", "port": 9000, "tags": ["a"],
                     "meta": {"Team": "x"}, "check": {"ttl": "30s"}});
    let r = client
        .put("/v1/agent/service/register", svc.to_string())
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let local = client.json("/v1/agent/services").await;
    assert_eq!(local["api-1"]["Service"], "api");
    let local_checks = client.json("/v1/agent/checks").await;
    assert_eq!(local_checks["service:api-1"]["Status"], "critical");
    assert_eq!(local_checks["service:api-1"]["Type"], "ttl");
    client
        .until("/v1/health/service/api", "the agent service synced", |v| {
            v.as_array().is_some_and(|a| {
                a.len() == 1
                    && a[0]["Node"]["Node"] == "c1"
                    && check_of(&a[0], "service:api-1")["Status"] == "critical"
            })
        })
        .await;
    assert_eq!(
        client.json("/v1/health/service/api?passing").await,
        json!([])
    );
    let r = client
        .put("/v1/agent/check/pass/service:api-1?note=fine", "")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let ok = client
        .until("/v1/health/service/api?passing", "the check passes", |v| {
            v.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    assert_eq!(check_of(&ok[0], "service:api-1")["Output"], "fine");
    assert_eq!(check_of(&ok[0], "serfHealth")["Status"], "passing");

    // A node-level agent check: register, warn, see it in health, deregister.
    let r = client
        .put(
            "/v1/agent/check/register",
            json!({"Name": "mem", "TTL": "10s", "Notes": "memory"}).to_string(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        client.json("/v1/agent/checks").await["mem"]["Notes"],
        "memory"
    );
    let r = client.put("/v1/agent/check/warn/mem?note=high", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    client
        .until("/v1/health/state/warning", "the node check warns", |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|c| c["CheckID"] == "mem" && c["Node"] == "c1"))
        })
        .await;
    assert_eq!(
        client.put("/v1/agent/check/fail/mem", "").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        client
            .put("/v1/agent/check/deregister/mem", "")
            .await
            .status(),
        StatusCode::OK
    );
    client
        .until("/v1/health/node/c1", "the node check removed", |v| {
            v.as_array()
                .is_some_and(|a| !a.iter().any(|c| c["CheckID"] == "mem"))
        })
        .await;

    // Consistency modes on catalog reads through the client, with Consul's headers.
    let mode = |r: &reqwest::Response| {
        r.headers()["X-Consul-Effective-Consistency"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let r = client.get("/v1/catalog/services?stale").await;
    assert_eq!(mode(&r), "stale");
    assert_eq!(r.headers()["X-Consul-KnownLeader"], "true");
    let _: u64 = header(&r, "X-Consul-LastContact");
    let r = client.get("/v1/health/service/web?consistent").await;
    assert_eq!(mode(&r), "consistent");
    let r = client.get("/v1/catalog/nodes").await;
    assert_eq!(mode(&r), "leader");
    let r = client.get("/v1/catalog/nodes?stale&consistent").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A blocking query through the client wakes on a catalog write.
    let r = client.get("/v1/catalog/service/web").await;
    let index = header(&r, "X-Consul-Index");
    let waiter = {
        let c = http.clone();
        let url = format!(
            "{}/v1/catalog/service/web?index={index}&wait=30s",
            client.base
        );
        tokio::spawn(async move {
            let t = Instant::now();
            let r = c.get(url).send().await.unwrap();
            let i = header(&r, "X-Consul-Index");
            let v: Value = r.json().await.unwrap();
            (t.elapsed(), i, v)
        })
    };
    // It waits on the leader (the client's server forwards it there).
    eventually(
        Duration::from_secs(5),
        "the query blocking on the leader",
        || async {
            let n = metric(&http, &server(li).base, "consulate_rpc_queries_blocking").await?;
            (n == 1.0).then_some(())
        },
    )
    .await;
    assert!(!waiter.is_finished(), "a current index waits");
    let reg3 = json!({"Node": "ext3", "Address": "10.1.0.3",
                      "Service": {"Service": "web", "Port": 82}});
    assert_eq!(
        client
            .put("/v1/catalog/register", reg3.to_string())
            .await
            .status(),
        StatusCode::OK
    );
    let (took, new_index, rows) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(new_index > index && took < Duration::from_secs(10));
    assert_eq!(rows.as_array().unwrap().len(), 3);
    // And one that times out returns the same index.
    let t = Instant::now();
    let r = client
        .get(&format!(
            "/v1/health/service/web?index={new_index}&wait=300ms"
        ))
        .await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(header(&r, "X-Consul-Index"), new_index);

    // Anti-entropy: wiping the client's node from the catalog is undone; deregistering on
    // the agent removes it.
    let wipe = json!({"Node": "c1"});
    assert_eq!(
        server(li)
            .put("/v1/catalog/deregister", wipe.to_string())
            .await
            .status(),
        StatusCode::OK
    );
    client
        .until(
            "/v1/health/service/api?passing",
            "re-asserted after a wipe",
            |v| v.as_array().is_some_and(|a| a.len() == 1),
        )
        .await;
    let r = client.put("/v1/agent/service/deregister/api-1", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    client
        .until("/v1/catalog/services", "the agent service removed", |v| {
            v.get("api").is_none()
        })
        .await;

    // Client mistakes: 400/404 with a reason, never a 500.
    let bad = [
        ("/v1/catalog/register", "{not json".to_string()),
        (
            "/v1/catalog/register",
            json!({"Node": "x", "Address": "1.2.3.4", "Colour": 1}).to_string(),
        ),
        (
            "/v1/catalog/register",
            json!({"Address": "1.2.3.4"}).to_string(),
        ),
        (
            "/v1/catalog/register",
            json!({"Node": "x", "Address": "1.2.3.4", "Check": {"Name": "c", "Status": "meh"}})
                .to_string(),
        ),
        ("/v1/agent/service/register", json!({"port": 1}).to_string()),
        (
            "/v1/agent/service/register",
            json!({"name": "a", "check": {"http": "http://x"}}).to_string(),
        ),
        (
            "/v1/agent/check/register",
            json!({"name": "c", "ttl": "ten seconds"}).to_string(),
        ),
    ];
    for (path, body) in bad {
        let r = client.put(path, body.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        assert!(!r.text().await.unwrap().is_empty());
    }
    let r = client.put("/v1/agent/check/pass/nope", "").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = client.get("/v1/health/state/sleepy").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = client.get("/v1/catalog/nodes?dc=dc9").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.text().await.unwrap(), "No path to datacenter");
    let r = client
        .get("/v1/catalog/service/web?node-meta=nocolon")
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The operator CLI against the client agent, Consul-style flags, CONSUL_HTTP_ADDR.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(consulate_bin())
            .args(args)
            .env("CONSUL_HTTP_ADDR", format!("127.79.{NET}.9:8500"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, _) = cli(&["members"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("Node") && lines[0].contains("Status"),
        "{out}"
    );
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("c1 ") && l.contains("alive") && l.contains("client"))
    );
    let (_, out, _) = cli(&["members", "-format=json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(cli(&["catalog", "datacenters"]).1, "dc1\n");
    let (_, out, _) = cli(&["catalog", "nodes", "-datacenter", "dc1"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("ext1 ") && l.contains("10.1.0.1")),
        "{out}"
    );
    let (_, out, _) = cli(&["catalog", "services"]);
    assert!(out.lines().any(|l| l == "web"), "{out}");
    let (ok, out, _) = cli(&["kv", "put", "cli/a", "hello"]);
    assert!(
        ok && out.contains("Success! Data written to: cli/a"),
        "{out}"
    );
    assert_eq!(cli(&["kv", "get", "cli/a"]).1, "hello\n");
    assert_eq!(cli(&["kv", "get", "-recurse", "cli/"]).1, "cli/a:hello\n");
    assert!(cli(&["kv", "delete", "-recurse", "cli/"]).0);
    let (ok, _, err) = cli(&["kv", "get", "cli/a"]);
    assert!(!ok && err.contains("No key exists at: cli/a"), "{err}");
    let (ok, _, err) = cli(&["catalog", "nodes", "-datacenter", "dc9"]);
    assert!(!ok && err.contains("No path to datacenter"), "{err}");
    let (ok, _, err) = cli(&["members", "-http-addr", "127.79.0.254:1"]);
    assert!(!ok && err.contains("cannot reach the agent"), "{err}");
    let file = dc.dir.path().join("svc.json");
    std::fs::write(
        &file,
        json!({"service": {"name": "cli-svc", "port": 1234, "tags": ["t"]}}).to_string(),
    )
    .unwrap();
    let (ok, out, err) = cli(&["services", "register", file.to_str().unwrap()]);
    assert!(
        ok && out.contains("Registered service: cli-svc"),
        "{out}{err}"
    );
    client
        .until(
            "/v1/catalog/service/cli-svc",
            "the CLI-registered service synced",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.len() == 1 && a[0]["Node"] == "c1")
            },
        )
        .await;

    // kill -9 the leader: a read sent at once to a survivor is held through the election
    // (Consul's rpc_hold_timeout) instead of failing. A write in flight to the dead leader
    // may fail (it cannot be known not to have applied), but the client agent moves on to a
    // live server and writes succeed again.
    let victim = li;
    servers[victim].signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    let t = std::time::Instant::now();
    let r = server((victim + 1) % 3).get("/v1/kv/cli-svc-missing").await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a default read held, then answered"
    );
    eprintln!(
        "first read after the leader died answered in {:?}",
        t.elapsed()
    );
    client
        .until(
            "/v1/catalog/service/web",
            "answered through the client after the leader died",
            |v| v.as_array().is_some_and(|a| a.len() == 3),
        )
        .await;
    eventually(
        Duration::from_secs(10),
        "a write after failover",
        || async {
            let r = client.put("/v1/kv/after-failover", "x").await;
            (r.text().await.ok()? == "true").then_some(())
        },
    )
    .await;

    // Without a quorum there is no leader: Consul's 500.
    let survivor = (victim + 1) % 3;
    servers[(victim + 2) % 3]
        .signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    let s = server(survivor);
    // Held for 7 s first, as Consul holds requests through an election.
    eventually(Duration::from_secs(30), "no cluster leader", || async {
        let r = s.get("/v1/catalog/nodes").await;
        (r.status() == StatusCode::INTERNAL_SERVER_ERROR
            && r.text().await.ok()? == "No cluster leader")
            .then_some(())
    })
    .await;
    let r = s.get("/v1/catalog/nodes?stale").await;
    assert_eq!(r.status(), StatusCode::OK, "stale reads need no leader");
}

/// `?near=` sorts catalog and health answers by the round trip estimated from network
/// coordinates: from a node, from the agent's own node (`_agent`), from the node at the
/// request's source address (`_ip`, `X-Forwarded-For` first); and `/v1/coordinate/*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_sorts_answers_by_estimated_round_trip() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let configs = write_small_dc(dir.path(), &pki, (75, 1), None, "");
    let _agents: Vec<ChildGuard> = configs.iter().map(|c| spawn_agent(c)).collect();
    let client = Api {
        c: http_client(),
        base: "http://127.75.1.21:8500".into(),
    };
    // Three external nodes with an instance each, 100, 10 and 50 ms along one axis from
    // the agent's node (c1, at the origin).
    let at = |node: &str, ms: f64| {
        json!({"Node": node, "Coord": {"Vec": [ms / 1000.0, 0, 0, 0, 0, 0, 0, 0],
               "Error": 0.1, "Adjustment": 0.0, "Height": 1e-5}})
    };
    for (i, node) in ["n-a", "n-b", "n-c"].iter().enumerate() {
        let body = json!({"Node": node, "Address": format!("10.0.0.{}", i + 1),
                          "Service": {"Service": "geo", "Port": 80}});
        eventually(Duration::from_secs(30), "a registration", || async {
            let r = client
                .c
                .put(format!("{}/v1/catalog/register", client.base))
                .body(body.to_string())
                .send()
                .await
                .ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
    for (node, ms) in [("n-a", 100.0), ("n-b", 10.0), ("n-c", 50.0), ("c1", 0.0)] {
        let r = client
            .put("/v1/coordinate/update", at(node, ms).to_string())
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{node}");
    }
    client
        .until("/v1/coordinate/nodes", "four coordinates", |v| {
            v.as_array().is_some_and(|a| a.len() >= 4)
        })
        .await;
    let order = |v: &Value, field: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[field].as_str().unwrap().to_string())
            .collect()
    };
    let v = client.json("/v1/catalog/service/geo?near=_agent").await;
    assert_eq!(order(&v, "Node"), ["n-b", "n-c", "n-a"]);
    let v = client.json("/v1/health/service/geo?near=n-a").await;
    let nodes: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n-a", "n-c", "n-b"]);
    let v = client.json("/v1/catalog/nodes?near=n-c").await;
    assert_eq!(order(&v, "Node")[..2], ["n-c", "n-b"]);
    let r = client
        .c
        .get(format!("{}/v1/catalog/service/geo?near=_ip", client.base))
        .header("X-Forwarded-For", "10.0.0.1, 127.0.0.1")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(order(&v, "Node"), ["n-a", "n-c", "n-b"]);
    // Without a coordinate for the source, the answer is not sorted (Consul's order).
    let v = client.json("/v1/catalog/service/geo?near=nobody").await;
    assert_eq!(order(&v, "Node"), ["n-a", "n-b", "n-c"]);

    let v = client.json("/v1/coordinate/node/n-b").await;
    assert_eq!(v[0]["Coord"]["Vec"][0], 0.01, "{v}");
    assert_eq!(v[0]["Segment"], "");
    assert_eq!(
        client.get("/v1/coordinate/node/nobody").await.status(),
        StatusCode::NOT_FOUND
    );
    let bad = json!({"Node": "n-a", "Coord": {"Vec": [0.0], "Error": 0.1,
                     "Adjustment": 0.0, "Height": 1e-5}});
    let r = client.put("/v1/coordinate/update", bad.to_string()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Deregistered, a node's coordinate goes with it.
    let r = client
        .put("/v1/catalog/deregister", json!({"Node": "n-b"}).to_string())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        client.get("/v1/coordinate/node/n-b").await.status(),
        StatusCode::NOT_FOUND
    );
}
