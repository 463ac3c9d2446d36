//! Real processes with ACLs on (`default_policy = "deny"`): a token scoped by HCL rules
//! reads and writes only what it was granted, through a server and through a client agent;
//! every route of the HTTP API refuses or filters a request without a token.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::dc::*;
use crate::common::*;

const ROOT: &str = "root-secret-0000";

fn acl_line(server: bool) -> String {
    let initial = if server {
        format!("initial_management = \"{ROOT}\", ")
    } else {
        String::new()
    };
    format!(
        "primary_datacenter = \"dc1\"\nacl = {{ enabled = true, default_policy = \"deny\", tokens = {{ {initial}agent = \"{ROOT}\" }} }}\n"
    )
}

struct Acl {
    http: reqwest::Client,
    server: String,
    client: String,
    _procs: Vec<ChildGuard>,
    _dc: Dc,
}

async fn start(net: u8) -> Acl {
    let pki = TestPki::new();
    let dc = write_dc_with(net, &pki, &acl_line(true));
    let mut procs: Vec<ChildGuard> = dc.configs[..3].iter().map(|c| spawn_agent(c)).collect();
    procs.push(spawn_agent(&write_client_with(
        &dc,
        &pki,
        net,
        9,
        "c1",
        &acl_line(false),
    )));
    let http = http_client_bounded();
    let server = format!("http://127.79.{net}.1:8500");
    let client = format!("http://127.79.{net}.9:8500");
    // The primary's leader makes the initial management token; it then works everywhere.
    for base in [&server, &client] {
        eventually(
            Duration::from_secs(30),
            "the initial management token works",
            || async {
                let r = http
                    .put(format!("{base}/v1/kv/secret/k"))
                    .header("X-Consul-Token", ROOT)
                    .body("v")
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            },
        )
        .await;
    }
    Acl {
        http,
        server,
        client,
        _procs: procs,
        _dc: dc,
    }
}

impl Acl {
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, r.text().await.unwrap(), headers)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_reads_and_writes_only_what_it_was_granted() {
    let acl = start(15).await;
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;
    let s = &acl.server;
    let rules =
        "key_prefix \"app/\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }";
    let (status, body, _) = acl
        .send(
            put.clone(),
            &format!("{s}/v1/acl/policy"),
            Some(ROOT),
            Some(json!({"Name": "app-writer", "Rules": rules})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let policy: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(policy["Name"], "app-writer");
    let (status, body, _) = acl
        .send(
            put.clone(),
            &format!("{s}/v1/acl/token"),
            Some(ROOT),
            Some(json!({"Description": "app", "Policies": [{"Name": "app-writer"}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token: Value = serde_json::from_str(&body).unwrap();
    let secret = token["SecretID"].as_str().unwrap().to_string();
    assert_eq!(token["Policies"][0]["ID"], policy["ID"]);
    // Through a server and through the client agent: the token travels with the request.
    for base in [&acl.server, &acl.client] {
        let (status, body, _) = acl
            .send(
                put.clone(),
                &format!("{base}/v1/kv/app/x"),
                Some(&secret),
                None,
            )
            .await;
        assert_eq!((status, body.as_str()), (200, "true"), "app/x via {base}");
        let (status, body, _) = acl
            .send(
                put.clone(),
                &format!("{base}/v1/kv/other/x"),
                Some(&secret),
                None,
            )
            .await;
        assert_eq!(status, 403, "other/x via {base}: {body}");
        assert!(
            body.contains("Permission denied") && body.contains("'key:write' on \"other/x\""),
            "{body}"
        );
        let (status, body, headers) = acl
            .send(
                get.clone(),
                &format!("{base}/v1/kv/?recurse"),
                Some(&secret),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let keys: Vec<String> = serde_json::from_str::<Vec<Value>>(&body)
            .unwrap()
            .iter()
            .map(|e| e["Key"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(keys, ["app/x"], "only app/ is visible");
        assert_eq!(
            headers
                .get("X-Consul-Results-Filtered-By-ACLs")
                .map(|v| v.to_str().unwrap()),
            Some("true")
        );
        let (status, _, _) = acl
            .send(
                get.clone(),
                &format!("{base}/v1/kv/secret/k"),
                Some(&secret),
                None,
            )
            .await;
        assert_eq!(status, 403, "a single key without key:read");
        let (status, body, _) = acl
            .send(
                get.clone(),
                &format!("{base}/v1/acl/token/self"),
                Some(&secret),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["AccessorID"],
            token["AccessorID"]
        );
        let (status, body, _) = acl
            .send(
                get.clone(),
                &format!("{base}/v1/kv/app/x"),
                Some("no-such-token"),
                None,
            )
            .await;
        assert_eq!((status, body.as_str()), (403, "ACL not found"));
        // Bearer works too; the ACL system itself needs acl:read.
        let r = acl
            .http
            .get(format!("{base}/v1/acl/tokens"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    // The CLI: a policy from a rules file, a token with it, read back with
    // CONSUL_HTTP_TOKEN; refused without a token.
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.hcl");
    std::fs::write(&rules_file, "key_prefix \"cli/\" { policy = \"write\" }\n").unwrap();
    let addr = s.trim_start_matches("http://");
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(consulate_bin());
        cmd.args(args).env_remove("CONSUL_HTTP_TOKEN");
        if let Some(t) = token {
            cmd.env("CONSUL_HTTP_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let rules_arg = format!("@{}", rules_file.display());
    let (ok, out, err) = cli(
        &[
            "acl",
            "policy",
            "create",
            "-name",
            "cli-pol",
            "-rules",
            &rules_arg,
            "-http-addr",
            addr,
        ],
        Some(ROOT),
    );
    assert!(ok && out.contains("Name:         cli-pol"), "{out}{err}");
    let (ok, out, err) = cli(
        &[
            "acl",
            "token",
            "create",
            "-policy-name",
            "cli-pol",
            "-description",
            "from the cli",
            "-http-addr",
            addr,
            "-format",
            "json",
        ],
        Some(ROOT),
    );
    assert!(ok, "{out}{err}");
    let cli_secret = serde_json::from_str::<Value>(&out).unwrap()["SecretID"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out, err) = cli(
        &["acl", "token", "read", "-self", "-http-addr", addr],
        Some(&cli_secret),
    );
    assert!(
        ok && out.contains("from the cli") && out.contains("cli-pol"),
        "{out}{err}"
    );
    let (ok, out, err) = cli(
        &[
            "kv",
            "put",
            "-http-addr",
            addr,
            "-token",
            &cli_secret,
            "cli/k",
            "v",
        ],
        None,
    );
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(&["acl", "policy", "list", "-http-addr", addr], None);
    assert!(!ok && err.contains("403"), "{err}");
    // py-consul with token= (through the client agent).
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/consul_acl.py");
    let out = tokio::process::Command::new(crate::py_consul::python())
        .arg(script)
        .args([acl.client.trim_start_matches("http://"), secret.as_str()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "py-consul: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A second bootstrap is refused, with the index of the first.
    let (status, body, _) = acl
        .send(put.clone(), &format!("{s}/v1/acl/bootstrap"), None, None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("ACL bootstrap no longer allowed"), "{body}");
    // Deleting the token makes it unknown at once in this DC.
    let accessor = token["AccessorID"].as_str().unwrap();
    let (status, _, _) = acl
        .send(
            reqwest::Method::DELETE,
            &format!("{s}/v1/acl/token/{accessor}"),
            Some(ROOT),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body, _) = acl
        .send(put, &format!("{s}/v1/kv/app/y"), Some(&secret), None)
        .await;
    assert_eq!((status, body.as_str()), (403, "ACL not found"));
}

/// Every route the router serves, asked without a token under `default_policy = "deny"`:
/// a change is refused (403), a read is refused or answers without any of the data the
/// anonymous token may not see. Only the routes declared public answer normally. A route
/// added without its check fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_or_filters_a_request_without_a_token() {
    use consulate::http::AclCheck;
    let acl = start(16).await;
    // Data the anonymous token must not see, under names the requests use.
    let c = &acl.client;
    let (status, body, _) = acl
        .send(
            reqwest::Method::PUT,
            &format!("{}/v1/catalog/register", acl.server),
            Some(ROOT),
            Some(json!({"Node": "secretnode", "Address": "10.9.9.9",
                        "Service": {"Service": "secretsvc", "Port": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = acl
        .send(
            reqwest::Method::PUT,
            &format!("{c}/v1/agent/service/register"),
            Some(ROOT),
            Some(json!({"Name": "secretsvc", "ID": "secretsvc",
                        "Check": {"CheckID": "secretchk", "TTL": "30s"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let markers = [
        "secretnode",
        "secretsvc",
        "secretchk",
        "secret/k",
        "10.9.9.9",
        ROOT,
    ];
    let bodies = |template: &str| -> Option<Value> {
        Some(match template {
            "/v1/catalog/register" => json!({"Node": "secretnode", "Address": "10.0.0.1"}),
            "/v1/catalog/deregister" => json!({"Node": "secretnode"}),
            "/v1/agent/service/register" => json!({"Name": "secretsvc"}),
            "/v1/agent/check/register" => json!({"Name": "c", "TTL": "10s"}),
            "/v1/agent/check/update/{id}" => json!({"Status": "passing"}),
            "/v1/session/create" => json!({"Node": "c1"}),
            "/v1/acl/policy" | "/v1/acl/policy/{id}" => json!({"Name": "p", "Rules": ""}),
            "/v1/acl/role" | "/v1/acl/role/{id}" => json!({"Name": "r"}),
            "/v1/acl/token" | "/v1/acl/token/{accessor}" => json!({"Description": "t"}),
            "/v1/txn" => json!([{"KV": {"Verb": "set", "Key": "secret/k", "Value": "dg=="}}]),
            "/v1/query" | "/v1/query/{id}" => {
                json!({"Name": "secretq", "Service": {"Service": "secretsvc"}})
            }
            "/v1/coordinate/update" => json!({"Node": "secretnode", "Coord": {
                "Vec": vec![0.0; 8], "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5}}),
            _ => return None,
        })
    };
    let mut asked = 0;
    for (template, methods, check) in consulate::http::ROUTES {
        let path: String = template
            .split('/')
            .map(|seg| match seg {
                "{*key}" => "secret/k",
                "{name}" => "secretsvc",
                "{node}" => "secretnode",
                "{id}" => "secretchk",
                "{state}" => "any",
                "{accessor}" => "00000000-0000-0000-0000-000000000002",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in *methods {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let url = format!("{c}{path}");
            let (status, body, _) = acl.send(m, &url, None, bodies(template)).await;
            asked += 1;
            match (check, *method) {
                (AclCheck::Public, _) => {
                    assert_ne!(status, 403, "{method} {template} is public: {body}")
                }
                (_, "get") => assert!(
                    status == 403
                        || ((status == 200 || status == 404)
                            && markers.iter().all(|m| !body.contains(m))),
                    "GET {template} without a token answered {status}: {body}"
                ),
                // The one write refused before any token matters: there is no key.
                (_, "put") if *template == "/v1/kv/" => {
                    assert_eq!((status, body.as_str()), (400, "Missing key name"))
                }
                _ => assert_eq!(
                    status, 403,
                    "{method} {template} without a token must be refused: {body}"
                ),
            }
        }
    }
    let all: usize = consulate::http::ROUTES.iter().map(|r| r.1.len()).sum();
    assert_eq!(asked, all, "the whole table walked");
    // DNS carries no token: the anonymous token may not read the service.
    let host = c.trim_start_matches("http://").trim_end_matches(":8500");
    let dig = std::process::Command::new("dig")
        .args([
            &format!("@{host}"),
            "-p",
            "8600",
            "+time=2",
            "+tries=1",
            "+short",
        ])
        .arg("secretsvc.service.consul")
        .output()
        .expect("dig must be installed (.ci/run installs bind9-dnsutils)");
    let answer = String::from_utf8_lossy(&dig.stdout);
    assert!(
        dig.status.success() && answer.trim().is_empty(),
        "dig: {answer}"
    );
    // The agent is still up: `PUT /v1/agent/leave` was refused too.
    let (status, _, _) = acl
        .send(
            reqwest::Method::GET,
            &format!("{c}/v1/agent/self"),
            Some(ROOT),
            None,
        )
        .await;
    assert_eq!(status, 200);
}

/// Two DCs, dc1 primary: dc2's leader replicates dc1's policies and tokens, so the initial
/// management token and a token made in dc1 work in dc2; a global token made through dc2
/// is written in dc1; a `Local` token of dc2 stays there; a token deleted in dc1 stops
/// working in dc2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_in_the_primary_work_in_the_other_dc_and_local_ones_stay_home() {
    two_dcs(83, None).await;
}

/// The same across the WAN emulator's 80 ms link (its delays printed, for BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_replicate_across_an_emulated_80ms_wan() {
    two_dcs(82, Some(Duration::from_millis(80))).await;
}

async fn two_dcs(net: u8, wan: Option<Duration>) {
    use crate::common::wan::{Link, WanEmulator};
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let ip = move |dc: u8| format!("127.{net}.{dc}.1");
    // With a WAN link, each server is reached from the other DC through a front on .100.
    let front = move |dc: u8| format!("127.{net}.{dc}.100:8300");
    let _emulator = match wan {
        Some(latency) => {
            let e = WanEmulator::new(move |addr: std::net::IpAddr| {
                let std::net::IpAddr::V4(v4) = addr else {
                    return None;
                };
                Some(format!("dc{}", v4.octets()[2]))
            });
            e.set_link(
                "dc1",
                "dc2",
                Link {
                    latency,
                    jitter: Duration::from_millis(5),
                    loss: 0.0,
                },
            );
            for dc in [1, 2] {
                e.front(
                    &format!("dc{dc}"),
                    front(dc).parse().unwrap(),
                    format!("{}:8300", ip(dc)).parse().unwrap(),
                )
                .await;
            }
            Some(e)
        }
        None => None,
    };
    let wan_lines = |dc: u8| match wan {
        Some(_) => format!("advertise_addr_wan = \"{}\"\n", front(dc)),
        None => String::new(),
    };
    let seed = match wan {
        Some(_) => front(1),
        None => ip(1),
    };
    let acl = |extra: &str| {
        format!(
            "primary_datacenter = \"dc1\"\nacl = {{ enabled = true, default_policy = \"deny\", {extra} }}\n"
        )
    };
    let dc1 = write_agent_config(
        dir.path(),
        &pki,
        ("s1", "dc1", consulate::vocab::Role::Server),
        &ip(1),
        &ip(1),
        &format!(
            "bootstrap_expect = 1\n{}{}",
            wan_lines(1),
            acl(&format!(
                "tokens = {{ initial_management = \"{ROOT}\", agent = \"{ROOT}\" }}"
            ))
        ),
    );
    let dc2 = write_agent_config(
        dir.path(),
        &pki,
        ("s1", "dc2", consulate::vocab::Role::Server),
        &ip(2),
        &ip(2),
        &format!(
            "bootstrap_expect = 1\nwan_join = [\"{}\"]\n{}{}",
            seed,
            wan_lines(2),
            acl(&format!(
                "enable_token_replication = true, tokens = {{ replication = \"{ROOT}\", agent = \"{ROOT}\" }}"
            ))
        ),
    );
    let _agents = [spawn_agent(&dc1), spawn_agent(&dc2)];
    let http = http_client_bounded();
    let (b1, b2) = (
        format!("http://{}:8500", ip(1)),
        format!("http://{}:8500", ip(2)),
    );
    let works = |base: String, token: String| {
        let http = http.clone();
        async move {
            let r = http
                .put(format!("{base}/v1/kv/probe"))
                .header("X-Consul-Token", token)
                .body("v")
                .send()
                .await
                .ok()?;
            Some(r.status().as_u16())
        }
    };
    let until = |base: &str, token: &str, want: u16, what: &str| {
        let (base, token, what) = (base.to_string(), token.to_string(), what.to_string());
        let works = &works;
        async move {
            let t = std::time::Instant::now();
            eventually(Duration::from_secs(30), &what, || async {
                (works(base.clone(), token.clone()).await == Some(want)).then_some(())
            })
            .await;
            t.elapsed()
        }
    };
    until(&b1, ROOT, 200, "the management token in dc1").await;
    until(&b2, ROOT, 200, "the management token replicated to dc2").await;
    let put = |base: &str, path: &str, token: &str, body: Value| {
        let req = http
            .put(format!("{base}{path}"))
            .header("X-Consul-Token", token)
            .body(body.to_string());
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, v)
        }
    };
    let (status, _) = put(
        &b1,
        "/v1/acl/policy",
        ROOT,
        json!({"Name": "kv", "Rules": "key_prefix \"\" { policy = \"write\" }"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, t1) = put(
        &b1,
        "/v1/acl/token",
        ROOT,
        json!({"Policies": [{"Name": "kv"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let s1 = t1["SecretID"].as_str().unwrap().to_string();
    let took = until(&b2, &s1, 200, "a dc1 token works in dc2").await;
    eprintln!("a token made in dc1 worked in dc2 after {took:?} (WAN {wan:?})");
    // Made through dc2, written in dc1 (and replicated back).
    let (status, t2) = put(
        &b2,
        "/v1/acl/token",
        ROOT,
        json!({"Policies": [{"Name": "kv"}]}),
    )
    .await;
    assert_eq!(status, 200, "{t2}");
    let s2 = t2["SecretID"].as_str().unwrap().to_string();
    until(
        &b1,
        &s2,
        200,
        "a global token made through dc2 works in dc1",
    )
    .await;
    // A Local token of dc2 stays there.
    let (status, tl) = put(
        &b2,
        "/v1/acl/token",
        ROOT,
        json!({"Policies": [{"Name": "kv"}], "Local": true}),
    )
    .await;
    assert_eq!(status, 200, "{tl}");
    let local = tl["SecretID"].as_str().unwrap().to_string();
    until(&b2, &local, 200, "the local token in dc2").await;
    assert_eq!(
        works(b1.clone(), local.clone()).await,
        Some(403),
        "not in dc1"
    );
    // Deleted in dc1: refused in dc2 too.
    let accessor = t1["AccessorID"].as_str().unwrap();
    let r = http
        .delete(format!("{b1}/v1/acl/token/{accessor}"))
        .header("X-Consul-Token", ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let took = until(&b2, &s1, 403, "a deleted token stops working in dc2").await;
    eprintln!("a token deleted in dc1 stopped working in dc2 after {took:?} (WAN {wan:?})");
    // The local token survived replication rounds.
    assert_eq!(works(b2.clone(), local).await, Some(200));
    // Replication reports how it stands, on dc2's server (its leader) and through the CLI.
    let status: Value = http
        .get(format!("{b2}/v1/acl/replication"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["Enabled"], true, "{status}");
    assert_eq!(status["Running"], true, "{status}");
    assert_eq!(status["SourceDatacenter"], "dc1");
    assert_eq!(status["ReplicationType"], "tokens");
    assert!(status["ReplicatedIndex"].as_u64().unwrap() > 0, "{status}");
    assert!(!status["LastSuccess"].as_str().unwrap().is_empty());
    let primary: Value = http
        .get(format!("{b1}/v1/acl/replication"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        primary["Enabled"], false,
        "the primary replicates from nobody"
    );
    let out = std::process::Command::new(consulate_bin())
        .args(["acl", "replication", "-http-addr"])
        .arg(b2.trim_start_matches("http://"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Source Datacenter:      dc1"),
        "{text}"
    );
}

/// DCs that do not replicate tokens ask the primary for the global ones and cache them for
/// `token_ttl`. With the primary cut off, dc2 (`down_policy = "extend-cache"`) keeps
/// serving a token it has seen and refuses one it never saw (its `default_policy` is
/// deny), dc3 (`"deny"`) refuses every global token, and both keep their `Local` tokens.
/// Healed, a token deleted in the primary stops working in dc2 within its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_cut_off_extend_cache_keeps_seen_tokens_and_deny_refuses_them() {
    use crate::common::wan::WanEmulator;
    const NET: u8 = 78;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let ip = |dc: u8| format!("127.{NET}.{dc}.1");
    let front = |dc: u8| format!("127.{NET}.{dc}.100:8300");
    let wan = WanEmulator::new(|addr: std::net::IpAddr| match addr {
        std::net::IpAddr::V4(v4) => Some(format!("dc{}", v4.octets()[2])),
        _ => None,
    });
    for dc in 1..=3 {
        wan.front(
            &format!("dc{dc}"),
            front(dc).parse().unwrap(),
            format!("{}:8300", ip(dc)).parse().unwrap(),
        )
        .await;
    }
    let config = |dc: u8, acl: &str| {
        let join = match dc {
            1 => String::new(),
            _ => format!("wan_join = [\"{}\"]\n", front(1)),
        };
        write_agent_config(
            dir.path(),
            &pki,
            ("s1", &format!("dc{dc}"), consulate::vocab::Role::Server),
            &ip(dc),
            &ip(dc),
            &format!(
                "bootstrap_expect = 1\nadvertise_addr_wan = \"{}\"\n{join}primary_datacenter = \"dc1\"\nacl = {{ enabled = true, default_policy = \"deny\", token_ttl = \"1s\", {acl} }}\n",
                front(dc)
            ),
        )
    };
    let secondary = |down: &str| {
        format!(
            "down_policy = \"{down}\", tokens = {{ replication = \"{ROOT}\", agent = \"{ROOT}\" }}"
        )
    };
    let _agents = [
        spawn_agent(&config(
            1,
            &format!("tokens = {{ initial_management = \"{ROOT}\", agent = \"{ROOT}\" }}"),
        )),
        spawn_agent(&config(2, &secondary("extend-cache"))),
        spawn_agent(&config(3, &secondary("deny"))),
    ];
    let http = http_client_bounded();
    let base = |dc: u8| format!("http://{}:8500", ip(dc));
    let status = |dc: u8, token: String| {
        let req = http
            .put(format!("{}/v1/kv/probe", base(dc)))
            .header("X-Consul-Token", token)
            .body("v");
        async move { Some(req.send().await.ok()?.status().as_u16()) }
    };
    let until = |dc: u8, token: &str, want: u16, what: &str| {
        let (token, what) = (token.to_string(), format!("{what} (dc{dc}: {want})"));
        let status = &status;
        async move {
            eventually(Duration::from_secs(30), &what, || async {
                (status(dc, token.clone()).await == Some(want)).then_some(())
            })
            .await
        }
    };
    for dc in 1..=3 {
        until(
            dc,
            ROOT,
            200,
            "the management token, resolved by the primary",
        )
        .await;
    }
    let put = |dc: u8, path: &str, body: Value| {
        let req = http
            .put(format!("{}{path}", base(dc)))
            .header("X-Consul-Token", ROOT)
            .body(body.to_string());
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status == 200)
                .then(|| serde_json::from_str::<Value>(&text).unwrap())
                .ok_or(text)
        }
    };
    put(
        1,
        "/v1/acl/policy",
        json!({"Name": "kv", "Rules": "key_prefix \"\" { policy = \"write\" }"}),
    )
    .await
    .unwrap();
    // A Local token of dc2 or dc3 names the policy as replicated there.
    let token = |dc: u8, local: bool| {
        let put = &put;
        async move {
            let t = eventually(Duration::from_secs(30), "a token made", || async {
                let body = json!({"Policies": [{"Name": "kv"}], "Local": local});
                put(dc, "/v1/acl/token", body).await.ok()
            })
            .await;
            (
                t["SecretID"].as_str().unwrap().to_string(),
                t["AccessorID"].as_str().unwrap().to_string(),
            )
        }
    };
    let (seen, seen_accessor) = token(1, false).await;
    let (unseen, _) = token(1, false).await;
    for dc in [2, 3] {
        until(dc, &seen, 200, "a primary token, resolved by the primary").await;
        let (local, _) = token(dc, true).await;
        until(dc, &local, 200, "a local token").await;
    }
    // Metrics need `agent:read` with ACLs on (as Consul's).
    let resolved = |dc: u8, how: &str| {
        let series = format!("consulate_acl_token_resolutions_total{{how=\"{how}\"}} ");
        let req = http
            .get(format!("{}/metrics", base(dc)))
            .header("X-Consul-Token", ROOT);
        async move {
            let text = req.send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str())?.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    assert!(resolved(2, "resolved").await > 0.0);
    let locals: Vec<(u8, String)> = {
        let mut v = Vec::new();
        for dc in [2, 3] {
            v.push((dc, token(dc, true).await.0));
        }
        v
    };

    wan.cut("dc1", "dc2");
    wan.cut("dc1", "dc3");
    let down_before = resolved(2, "down_policy").await;
    until(
        3,
        &seen,
        403,
        "deny refuses a seen token with the primary cut off",
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "dc2 finds the primary unreachable",
        || async {
            (status(2, seen.clone()).await == Some(200)
                && resolved(2, "down_policy").await > down_before)
                .then_some(())
        },
    )
    .await;
    // Past its TTL and with the primary unreachable, the seen token still works in dc2
    // (extend-cache); the unseen one gets the default policy (deny).
    assert_eq!(status(2, seen.clone()).await, Some(200));
    assert_eq!(status(2, unseen.clone()).await, Some(403));
    for (dc, local) in &locals {
        assert_eq!(status(*dc, local.clone()).await, Some(200), "dc{dc} local");
    }

    wan.heal("dc1", "dc2");
    wan.heal("dc1", "dc3");
    until(3, &seen, 200, "the primary reachable again").await;
    let r = http
        .delete(format!("{}/v1/acl/token/{seen_accessor}", base(1)))
        .header("X-Consul-Token", ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until(
        2,
        &seen,
        403,
        "a token deleted in the primary, once its TTL ran out",
    )
    .await;
}
