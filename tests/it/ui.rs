//! The web UI in a real browser: `consulate up` brings up two DCs, and headless Chromium
//! (Debian's, driven by Selenium from `tests/py/ui_browser.py`) opens a dc1 client agent's
//! `/ui/`: the overview shows both DCs with their leaders, a dc2 service opened from dc1
//! turns critical on the page without a reload, a KV key is created, edited (a concurrent
//! change is refused, not overwritten) and deleted through the page, and a value holding
//! HTML is shown as text. Screenshots of the pages land in `target/ui-screenshots/`. With
//! ACLs on (`up --acl`), the page asks for a token and keeps it in session storage only.
//! Also: the files' headers and validators, and `ui = false`.

use std::time::Duration;

use crate::common::dc::*;
use crate::common::*;
use crate::py_consul::python;

/// Two DCs of three servers and a client each, on 127.67.<dc>.<n>.
const TOPOLOGY: &str = r#"
[[datacenters]]
name = "dc1"
agents = [
  { name = "dc1-server-1", role = "server", address = "127.67.1.1" },
  { name = "dc1-server-2", role = "server", address = "127.67.1.2" },
  { name = "dc1-server-3", role = "server", address = "127.67.1.3" },
  { name = "dc1-client-1", role = "client", address = "127.67.1.10" },
]

[[datacenters]]
name = "dc2"
agents = [
  { name = "dc2-server-1", role = "server", address = "127.67.2.1" },
  { name = "dc2-server-2", role = "server", address = "127.67.2.2" },
  { name = "dc2-server-3", role = "server", address = "127.67.2.3" },
  { name = "dc2-client-1", role = "client", address = "127.67.2.10" },
]
"#;

const DC1: &str = "127.67.1.10:8500";
const DC2_CLIENT: &str = "127.67.2.10:8500";

/// Runs `tests/py/ui_browser.py` with `args` and the screenshot folder, which it returns;
/// fails the test with the script's output unless the script ends with `ok`.
async fn browser(args: &[&str]) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let artifacts = root.join("target/ui-screenshots");
    let run = tokio::process::Command::new(python())
        .arg(root.join("tests/py/ui_browser.py"))
        .args(args)
        .arg(&artifacts)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser run ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("\nok"),
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    artifacts
}

async fn put(http: &reqwest::Client, url: &str, body: &str) {
    let r = http.put(url).body(body.to_string()).send().await.unwrap();
    assert!(r.status().is_success(), "PUT {url}: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_in_a_real_browser_shows_the_federation_live_and_edits_kv_safely() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topo.toml"), TOPOLOGY).unwrap();
    let (_up, out) = spawn_up(dir.path(), &["topo.toml"]);
    up_ready(&out).await;
    let http = http_client();

    // What the page will show: services in both DCs, a value with HTML in it.
    for i in 1..=3 {
        put(
            &http,
            &format!("http://{DC1}/v1/agent/service/register"),
            &format!(
                r#"{{"Name":"web","ID":"web-{i}","Port":808{i},"Tags":["v1"],"Check":{{"TTL":"10m","Status":"passing"}}}}"#
            ),
        )
        .await;
    }
    put(
        &http,
        &format!("http://{DC2_CLIENT}/v1/agent/service/register"),
        r#"{"Name":"web","ID":"web-dc2","Port":8080,"Check":{"TTL":"10m","Status":"passing"}}"#,
    )
    .await;
    put(
        &http,
        &format!("http://{DC1}/v1/kv/app/html"),
        "<script>window.__pwned = 1</script><b>bold?</b>",
    )
    .await;

    // The files: types, the security policy, a validator that answers 304.
    let page = http.get(format!("http://{DC1}/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(h["cache-control"], "no-cache");
    let etag = h["etag"].clone();
    let again = http
        .get(format!("http://{DC1}/ui/"))
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let js = http
        .get(format!("http://{DC1}/ui/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let missing = http
        .get(format!("http://{DC1}/ui/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let artifacts = browser(&["federation", DC1, DC2_CLIENT]).await;
    for page in [
        "overview",
        "overview-phone",
        "service-critical",
        "services",
        "nodes",
        "kv-edit",
        "kv-html",
    ] {
        assert!(
            artifacts.join(format!("{page}.png")).is_file(),
            "{page}.png"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_ui_off_serves_no_ui() {
    let pki = TestPki::new();
    let dc = write_dc(18, &pki);
    let _client = spawn_agent(&write_client_with(&dc, &pki, 18, 9, "c1", "ui = false\n"));
    let http = http_client();
    let base = "http://127.79.18.9:8500";
    eventually(Duration::from_secs(10), "the agent's API", || async {
        let r = http
            .get(format!("{base}/v1/agent/self"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    for path in ["/", "/ui", "/ui/", "/ui/app.js"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(
            r.text().await.unwrap().contains("ui = false"),
            "{path} says why"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acls_the_ui_asks_for_a_token_and_keeps_it_in_session_storage() {
    let dir = tempfile::tempdir().unwrap();
    let one_dc = TOPOLOGY
        .split("\n[[datacenters]]\nname = \"dc2\"")
        .next()
        .unwrap();
    let one_dc = one_dc.replace("127.67.", "127.66.");
    std::fs::write(dir.path().join("topo.toml"), one_dc).unwrap();
    let (_up, out) = spawn_up(dir.path(), &["topo.toml", "--acl"]);
    up_ready(&out).await;
    let token =
        std::fs::read_to_string(dir.path().join(".consulate/acl-management-token")).unwrap();
    browser(&["acl", "127.66.1.10:8500", token.trim()]).await;
}
