//! Compatibility with a real Consul client: the PyPI `py-consul` library (installed into
//! `target/py-venv` by `.ci/run`) drives a client agent of a real 3-server DC through
//! `tests/py/consul_compat.py`: agent service with a check, catalog, health `?passing`, KV
//! put/get/CAS/recurse/delete, a blocking `kv.get(index=...)` woken by another thread;
//! then its prepared-query and coordinate APIs (`tests/py/consul_query.py`).

use std::path::PathBuf;
use std::time::Duration;

use crate::common::dc::*;
use crate::common::*;

const NET: u8 = 12;

/// The venv's Python: `CONSULATE_PYTHON`, else `target/py-venv/bin/python`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CONSULATE_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run .ci/run (it creates the venv and installs py-consul)",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_consul_drives_a_client_agent() {
    let python = python();
    let pki = TestPki::new();
    let dc = write_dc(NET, &pki);
    let _servers: Vec<ChildGuard> = dc.configs[..3].iter().map(|c| spawn_agent(c)).collect();
    let _client = spawn_agent(&write_client(&dc, &pki, NET, 9, "c1"));
    let (_me, li) = observe_leader(&pki, &dc.addrs[..3]).await;
    let agent = format!("127.79.{NET}.9:8500");
    let leader = format!("{}:8500", dc.addrs[li].ip());
    // The client agent serves HTTP once it is up.
    let http = http_client();
    eventually(
        Duration::from_secs(10),
        "the client agent's API",
        || async {
            let r = http
                .get(format!("http://{agent}/v1/status/leader"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/consul_compat.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .args([&agent, &leader])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "py-consul run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Prepared queries and coordinates through py-consul: `web` passing on one node,
    // critical on another.
    for (node, status) in [("web-1", "passing"), ("web-2", "critical")] {
        let body = serde_json::json!({
            "Node": node, "Address": "10.9.0.1",
            "Service": {"ID": node, "Service": "web", "Port": 80},
            "Check": {"CheckID": "up", "Name": "up", "ServiceID": node, "Status": status},
        });
        let r = http
            .put(format!("http://{agent}/v1/catalog/register"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/consul_query.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&agent)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "py-consul queries failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
