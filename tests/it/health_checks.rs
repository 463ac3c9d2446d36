//! Checks run by a client agent (real processes: 3 servers + 1 client): an HTTP check
//! follows its target (200 passing, 500 critical, back to passing), a hung target only
//! fails its own check, a TCP check follows a port, and a TTL check that is not refreshed
//! goes critical. Results are read through a server's catalog.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::dc::*;
use crate::common::*;
use serde_json::{Value, json};

const NET: u8 = 14;

/// The status of check `id` in the catalog, read at `base`.
async fn status(http: &reqwest::Client, base: &str, id: &str) -> Option<String> {
    let v: Value = http
        .get(format!("{base}/v1/health/node/c1"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v.as_array()?
        .iter()
        .find(|c| c["CheckID"] == id)
        .and_then(|c| c["Status"].as_str().map(str::to_string))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn wait_status(http: &reqwest::Client, base: &str, id: &str, want: &str) -> Duration {
    let t = Instant::now();
    eventually(Duration::from_secs(15), &format!("{id} {want}"), || async {
        (status(http, base, id).await? == want).then_some(())
    })
    .await;
    t.elapsed()
}

/// An HTTPS server with a self-signed certificate answering every request with 200.
async fn https_target(bind: &str) -> std::net::SocketAddr {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tcp_and_ttl_checks_reach_the_catalog() {
    // The checked application: answers with whatever code `code` holds.
    let (target, code) = checked_app(&format!("127.79.{NET}.50:0")).await;
    // A target that accepts connections and never answers.
    let hung = std::net::TcpListener::bind(format!("127.79.{NET}.51:0")).unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let tls_target = https_target(&format!("127.79.{NET}.53:0")).await;

    let pki = TestPki::new();
    let dc = write_dc(NET, &pki);
    let client_cfg = write_client(&dc, &pki, NET, 9, "c1");
    let _servers: Vec<ChildGuard> = dc.configs[..3].iter().map(|c| spawn_agent(c)).collect();
    let _client = spawn_agent(&client_cfg);
    let (_me, li) = observe_leader(&pki, &dc.addrs[..3]).await;
    let server = format!("http://{}:8500", dc.addrs[li].ip());
    let agent = format!("http://127.79.{NET}.9:8500");
    let http = http_client();

    let svc = json!({
        "Name": "app", "ID": "app-1", "Port": target.port(),
        "Checks": [
            {"CheckID": "app-http", "Name": "http", "HTTP": format!("http://{target}/health"),
             "Interval": "200ms", "Timeout": "500ms"},
            {"CheckID": "app-tcp", "Name": "tcp", "TCP": target.to_string(),
             "Interval": "200ms", "Timeout": "500ms"},
            {"CheckID": "app-hung", "Name": "hung", "HTTP": format!("http://{hung_addr}/"),
             "Interval": "200ms", "Timeout": "300ms"},
            {"CheckID": "app-ttl", "Name": "ttl", "TTL": "1s"},
            {"CheckID": "app-https", "Name": "https", "HTTP": format!("https://{tls_target}/"),
             "Interval": "200ms", "Timeout": "1s"},
            {"CheckID": "app-https-skip", "Name": "https skip", "TLSSkipVerify": true,
             "HTTP": format!("https://{tls_target}/"), "Interval": "200ms", "Timeout": "1s"}
        ]
    });
    eventually(
        Duration::from_secs(10),
        "the service registered",
        || async {
            let r = http
                .put(format!("{agent}/v1/agent/service/register"))
                .body(svc.to_string())
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;

    wait_status(&http, &server, "app-http", "passing").await;
    wait_status(&http, &server, "app-tcp", "passing").await;
    wait_status(&http, &server, "app-hung", "critical").await;
    // HTTPS: a self-signed target passes only with TLSSkipVerify; verified, it fails with
    // the reason in the output.
    wait_status(&http, &server, "app-https-skip", "passing").await;
    wait_status(&http, &server, "app-https", "critical").await;
    let checks = get_json(&http, &format!("{agent}/v1/agent/checks")).await;
    let output = checks["app-https"]["Output"].as_str().unwrap();
    assert!(output.contains("certificate"), "{output}");

    // The target fails: critical within interval + timeout (+ propagation); it recovers.
    code.store(500, Ordering::SeqCst);
    let took = wait_status(&http, &server, "app-http", "critical").await;
    eprintln!("HTTP 500 to critical in the catalog: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    code.store(200, Ordering::SeqCst);
    wait_status(&http, &server, "app-http", "passing").await;
    code.store(429, Ordering::SeqCst);
    wait_status(&http, &server, "app-http", "warning").await;
    code.store(200, Ordering::SeqCst);

    // TTL: refreshed it passes; left alone it lapses.
    let r = http
        .put(format!("{agent}/v1/agent/check/update/app-ttl"))
        .body(json!({"Status": "passing", "Output": "fine"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    wait_status(&http, &server, "app-ttl", "passing").await;
    let took = wait_status(&http, &server, "app-ttl", "critical").await;
    assert!(took < Duration::from_secs(4), "{took:?}");

    // A flapping check is coalesced: 40 flips in about a second cost a handful of catalog
    // writes (one per 500 ms at most), and the catalog ends with the last status.
    let index = || {
        let http = http.clone();
        let url = format!("{server}/v1/health/node/c1");
        async move {
            let r = http.get(url).send().await.unwrap();
            r.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    };
    let before = index().await;
    for i in 0..40 {
        let verb = if i % 2 == 0 { "fail" } else { "pass" };
        let r = http
            .put(format!("{agent}/v1/agent/check/{verb}/app-ttl"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_status(&http, &server, "app-ttl", "passing").await;
    let writes = index().await - before;
    assert!(writes <= 10, "40 flips cost {writes} catalog writes");

    // The hung target never held up the others: the HTTP check kept flipping on time above
    // while app-hung stayed critical.
    assert_eq!(
        status(&http, &server, "app-hung").await.as_deref(),
        Some("critical")
    );
    drop(hung);

    // DeregisterCriticalServiceAfter: a service whose check stays critical goes away.
    let doomed = json!({
        "Name": "doomed", "ID": "doomed-1", "Port": 1,
        "Check": {"TCP": format!("127.79.{NET}.52:1"), "Interval": "200ms", "Timeout": "200ms",
                  "DeregisterCriticalServiceAfter": "1s"}
    });
    let r = http
        .put(format!("{agent}/v1/agent/service/register"))
        .body(doomed.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let doomed_listed = |present: bool| {
        let http = http.clone();
        let url = format!("{server}/v1/catalog/services");
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (v.get("app").is_some() && v.get("doomed").is_some() == present).then_some(())
        }
    };
    eventually(
        Duration::from_secs(15),
        "the doomed service registered",
        || doomed_listed(true),
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the doomed service deregistered",
        || doomed_listed(false),
    )
    .await;
    let local = get_json(&http, &format!("{agent}/v1/agent/services")).await;
    assert!(
        local.get("doomed-1").is_none() && local.get("app-1").is_some(),
        "{local}"
    );
}
