//! `consulate up` as a user runs it: the shipped two-DC topology brought up by one command,
//! checked through the agents it started, refused a second time, and stopped by SIGTERM
//! with every agent gone and every port free.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Every agent address of `topology/local-2dc.toml`.
const ADDRS: [&str; 8] = [
    "127.0.1.1",
    "127.0.1.2",
    "127.0.1.3",
    "127.0.1.10",
    "127.0.2.1",
    "127.0.2.2",
    "127.0.2.3",
    "127.0.2.10",
];

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_brings_the_federation_up_and_sigterm_takes_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let topology = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/local-2dc.toml");
    let state = dir.path().join("state");
    let out_path = dir.path().join("up.out");
    let args = |state: &Path| {
        vec![
            "up".to_string(),
            topology.display().to_string(),
            "--data-dir".into(),
            state.display().to_string(),
            "--certs".into(),
            dir.path().join("certs").display().to_string(),
        ]
    };
    let started = Instant::now();
    let out = std::fs::File::create(&out_path).unwrap();
    let child = std::process::Command::new(consulate_bin())
        .args(args(&state))
        .current_dir(dir.path())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut up = ChildGuard(Some(child), Some(out_path.clone()));
    let text = eventually(Duration::from_secs(60), "`up` reporting ready", || async {
        let text = std::fs::read_to_string(&out_path).ok()?;
        text.contains("Federation ready").then_some(text)
    })
    .await;
    eprintln!("local-2dc ready {:?} after start", started.elapsed());
    assert!(text.contains("dc2-server-3") && text.contains("http://127.0.2.10:8500"));
    assert_eq!(
        text.matches("leader\n").count(),
        2,
        "one leader per DC:\n{text}"
    );

    // The federation works: a cross-DC query from dc1's client agent.
    let http = http_client();
    let r = http
        .get("http://127.0.1.10:8500/v1/catalog/services?dc=dc2")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // `consulate status`: everything alive, a leader per DC, every cross-DC query answered.
    let status = |format: &str| {
        std::process::Command::new(consulate_bin())
            .args(["status", &topology.display().to_string(), "-format", format])
            .output()
            .unwrap()
    };
    // Every agent's own view converges a moment after `up`'s readiness check: poll.
    let healthy = eventually(Duration::from_secs(15), "status healthy", || async {
        let out = status("json");
        out.status.success().then_some(out)
    })
    .await;
    assert!(healthy.status.success(), "{healthy:?}");
    let report: serde_json::Value = serde_json::from_slice(&healthy.stdout).unwrap();
    assert_eq!(report["agents"].as_array().unwrap().len(), 8);
    assert!(report["leaders"]["dc1"].is_string() && report["leaders"]["dc2"].is_string());
    assert_eq!(report["wan_members"].as_array().unwrap().len(), 6);
    assert!(
        report["cross_dc"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["error"].is_null()),
        "{report}"
    );
    let pretty = status("pretty");
    assert!(pretty.status.success());
    assert!(String::from_utf8_lossy(&pretty.stdout).contains("dc2-server-1.dc2"));

    // A second `up` on the same state folder refuses instead of fighting over ports.
    let second = std::process::Command::new(consulate_bin())
        .args(args(&state))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");

    // SIGTERM: every agent stops, in bounded time, and leaves its ports free.
    let t = Instant::now();
    let exit = up.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
    let took = t.elapsed();
    eprintln!("SIGTERM to every agent exited: {took:?}");
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let leftovers = processes_mentioning(&state.display().to_string());
    assert!(leftovers.is_empty(), "agents still running: {leftovers:?}");
    for ip in ADDRS {
        std::net::TcpListener::bind(format!("{ip}:8500")).expect("HTTP port free");
        std::net::UdpSocket::bind(format!("{ip}:8301")).expect("LAN gossip port free");
        std::net::UdpSocket::bind(format!("{ip}:8300")).expect("QUIC port free");
    }
    assert!(!state.join("up.pid").exists(), "the lock is released");
    let down = status("pretty");
    assert!(!down.status.success(), "status fails when agents are down");
    assert!(String::from_utf8_lossy(&down.stderr).contains("is down"));
}
