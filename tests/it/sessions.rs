//! Sessions and locks as applications use them, against real agent processes started by
//! `consulate up` from a test topology: `consulate lock` contenders on two client agents
//! never overlap; `kill -9` of the holder's agent hands the lock over after the lock-delay
//! (measured); a TTL session ends between one and two TTLs; a renewed one survives a leader
//! failover; py-consul drives sessions and locks; a session and lock in dc2 from dc1.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// A topology of `dc1` (3 servers, clients c1 and c2) and `dc2` (one server), on
/// 127.<net>.<dc>.x.
fn topology(dir: &Path, net: u8) -> String {
    let text = format!(
        r#"domain = "consul"
[[datacenters]]
name = "dc1"
agents = [
  {{ name = "s1", role = "server", address = "127.{net}.1.1" }},
  {{ name = "s2", role = "server", address = "127.{net}.1.2" }},
  {{ name = "s3", role = "server", address = "127.{net}.1.3" }},
  {{ name = "c1", role = "client", address = "127.{net}.1.21" }},
  {{ name = "c2", role = "client", address = "127.{net}.1.22" }},
]
[[datacenters]]
name = "dc2"
agents = [
  {{ name = "t1", role = "server", address = "127.{net}.2.1" }},
]
"#
    );
    let path = dir.join("topology.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `consulate up` of [`topology`] in `dir`, ready.
async fn federation(dir: &Path, net: u8) -> ChildGuard {
    let topo = topology(dir, net);
    let (up, out) = spawn_up(dir, &[&topo]);
    up_ready(&out).await;
    up
}

async fn put(http: &reqwest::Client, url: &str, body: Value) -> (u16, String) {
    let r = http.put(url).body(body.to_string()).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    r.status().is_success().then_some(())?;
    r.json().await.ok()
}

/// The DC's leader as `agent` reports it.
async fn leader_of(http: &reqwest::Client, agent: &str) -> String {
    let r = http
        .get(format!("http://{agent}/v1/status/leader"))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

async fn create(http: &reqwest::Client, url: &str, body: Value) -> String {
    let (code, text) = put(http, url, body).await;
    assert_eq!(code, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["ID"].as_str().unwrap().to_string()
}

/// `consulate lock` against `agent`, running `script` under `sh -c`.
fn lock_cmd(agent: &str, prefix: &str, lock_delay: &str, script: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(consulate_bin());
    cmd.args([
        "lock",
        "-http-addr",
        agent,
        "-lock-delay",
        lock_delay,
        prefix,
        script,
    ]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_and_hand_over_when_the_holder_dies() {
    let dir = tempfile::tempdir().unwrap();
    let _up = federation(dir.path(), 85).await;
    let (c1, c2) = ("127.85.1.21:8500", "127.85.1.22:8500");
    let http = http_client();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("count"), "0").unwrap();

    // Two contenders on two client agents, 12 rounds each: only the holder may enter (mkdir
    // fails if the other is inside) and increment the shared counter.
    let script = format!(
        "mkdir {s}/held || exit 3; n=$(cat {s}/count); sleep 0.05; echo $((n+1)) > {s}/count; rmdir {s}/held",
        s = shared.display()
    );
    let contenders: Vec<_> = [c1, c2]
        .into_iter()
        .map(|agent| {
            let script = script.clone();
            std::thread::spawn(move || {
                (0..12)
                    .map(|_| {
                        lock_cmd(agent, "app/counter", "15s", &script)
                            .output()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for c in contenders {
        for out in c.join().unwrap() {
            assert!(out.status.success(), "{out:?}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(shared.join("count"))
            .unwrap()
            .trim(),
        "24"
    );
    let v = get(&http, &format!("http://{c1}/v1/kv/app/counter/.lock"))
        .await
        .unwrap();
    assert_eq!(v[0]["LockIndex"], 24, "{v}");
    assert_eq!(v[0]["Session"], "", "released: {v}");
    let sessions = get(&http, &format!("http://{c1}/v1/session/list"))
        .await
        .unwrap();
    assert_eq!(sessions, json!([]), "every session destroyed");

    // X holds the lock through c1; Y waits through c2. kill -9 c1: serfHealth fails, X's
    // session ends, X's command is stopped, and Y gets the lock after the lock-delay.
    let lock_delay = Duration::from_secs(3);
    let x_running = shared.join("x-running");
    let mut x = ChildGuard(
        Some(
            lock_cmd(
                c1,
                "app/failover",
                "3s",
                &format!("touch {}; exec sleep 600", x_running.display()),
            )
            .spawn()
            .unwrap(),
        ),
        None,
    );
    eventually(Duration::from_secs(10), "X holding the lock", || async {
        x_running.exists().then_some(())
    })
    .await;
    let y_got = shared.join("y-got");
    let mut y = lock_cmd(
        c2,
        "app/failover",
        "3s",
        &format!("touch {}", y_got.display()),
    )
    .spawn()
    .unwrap();
    eventually(Duration::from_secs(10), "Y's session, waiting", || async {
        let v = get(&http, &format!("http://{c2}/v1/session/list")).await?;
        (v.as_array()?.len() == 2).then_some(())
    })
    .await;
    assert!(!y_got.exists(), "Y must wait while X holds the lock");
    let list = std::process::Command::new(consulate_bin())
        .args(["session", "list", "-http-addr", c2])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{list:?}");
    assert_eq!(text.matches("consulate lock").count(), 2, "{text}");
    assert!(
        text.contains(" c1 ") && text.contains(" c2 ") && text.contains("15s"),
        "{text}"
    );
    let killed = Instant::now();
    signal(
        up_pid(&dir.path().join(".consulate"), "c1"),
        Signal::SIGKILL,
    );
    let detected = eventually(
        Duration::from_secs(10),
        "c1's serfHealth critical",
        || async {
            let v = get(&http, &format!("http://{c2}/v1/health/node/c1")).await?;
            v.as_array()?
                .iter()
                .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "critical")
                .then(|| killed.elapsed())
        },
    )
    .await;
    let handover = eventually(Duration::from_secs(20), "Y acquiring the lock", || async {
        y_got.exists().then(|| killed.elapsed())
    })
    .await;
    eprintln!(
        "kill -9 of the holder's agent: failure detected after {detected:?}, lock handed over after {handover:?} (lock-delay {lock_delay:?})"
    );
    assert!(
        handover >= lock_delay,
        "the lock-delay was honoured: {handover:?}"
    );
    assert!(
        handover <= detected + lock_delay + Duration::from_secs(1),
        "handover {handover:?} within detection {detected:?} + lock-delay + 1 s"
    );
    assert!(y.wait().unwrap().success());
    // X lost the lock: its command was stopped and it failed.
    let x_status = x.signal_and_wait(nix::sys::signal::Signal::SIGCONT, Duration::from_secs(10));
    assert!(!x_status.success(), "X reports the lost lock");

    // A session and a lock in dc2, driven from dc1 with ?dc=dc2 (the session's node is a
    // dc2 node: t1).
    let s = create(
        &http,
        &format!("http://{c2}/v1/session/create?dc=dc2"),
        json!({"Node": "t1", "Name": "remote", "TTL": "30s"}),
    )
    .await;
    let (code, text) = put(
        &http,
        &format!("http://{c2}/v1/kv/remote-lock?acquire={s}&dc=dc2"),
        json!("v"),
    )
    .await;
    assert_eq!((code, text.as_str()), (200, "true"));
    let v = get(&http, &format!("http://{c2}/v1/kv/remote-lock?dc=dc2"))
        .await
        .unwrap();
    assert_eq!(v[0]["Session"], s.as_str());
    assert!(
        get(&http, &format!("http://{c2}/v1/kv/remote-lock"))
            .await
            .is_none(),
        "not in dc1"
    );
    let (code, renewed) = put(
        &http,
        &format!("http://{c2}/v1/session/renew/{s}?dc=dc2"),
        json!(null),
    )
    .await;
    assert_eq!(code, 200, "{renewed}");
    assert!(renewed.contains("\"TTL\":\"30s\""), "{renewed}");
    let info = get(&http, &format!("http://{c2}/v1/session/info/{s}?dc=dc2"))
        .await
        .unwrap();
    assert_eq!(info[0]["Node"], "t1");
    let (code, _) = put(
        &http,
        &format!("http://{c2}/v1/session/destroy/{s}?dc=dc2"),
        json!(null),
    )
    .await;
    assert_eq!(code, 200);
    let v = get(&http, &format!("http://{c2}/v1/kv/remote-lock?dc=dc2"))
        .await
        .unwrap();
    assert_eq!(v[0]["Session"], "", "released when the session ended");
    let (code, _) = put(
        &http,
        &format!("http://{c2}/v1/session/renew/{s}?dc=dc2"),
        json!(null),
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_sessions_expire_in_time_and_renewed_ones_survive_failover() {
    let dir = tempfile::tempdir().unwrap();
    let _up = federation(dir.path(), 86).await;
    let c1 = "127.86.1.21:8500";
    let http = http_client();
    let ttl = Duration::from_secs(10);

    // py-consul: sessions and locks as its users call them.
    let python = std::env::var_os("CONSULATE_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python"),
        Into::into,
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/consul_sessions.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(c1)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{}: {e} (run .ci/run to make the venv)", python.display()));
    assert!(
        out.status.success(),
        "py-consul sessions: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Two TTL sessions: `idle` is never renewed, `kept` is renewed every 3 s.
    let created = Instant::now();
    let idle = create(
        &http,
        &format!("http://{c1}/v1/session/create"),
        json!({"TTL": "10s", "Name": "idle"}),
    )
    .await;
    let kept = create(
        &http,
        &format!("http://{c1}/v1/session/create"),
        json!({"TTL": "10s", "Name": "kept"}),
    )
    .await;
    // Renewed every 3 s until told to stop; every renewal must succeed, through the
    // leader's death included.
    let stop = tokio_util::sync::CancellationToken::new();
    let renewals = {
        let (http, kept, stop) = (http.clone(), kept.clone(), stop.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return failed,
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
                let url = format!("http://{c1}/v1/session/renew/{kept}");
                let (code, text) = put(&http, &url, json!(null)).await;
                if code != 200 {
                    failed.push(format!("{code} {text}"));
                }
            }
        })
    };
    // `idle` ends no sooner than its TTL and no later than twice it (watched with a
    // blocking query on its info).
    let mut index = 0;
    let ended = loop {
        let r = http
            .get(format!(
                "http://{c1}/v1/session/info/{idle}?index={index}&wait=5s"
            ))
            .send()
            .await
            .unwrap();
        index = r.headers()["X-Consul-Index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let v: Value = r.json().await.unwrap();
        if v == json!([]) {
            break created.elapsed();
        }
        assert!(created.elapsed() < ttl * 3, "idle session still alive");
    };
    eprintln!("a {ttl:?} TTL session without renewals ended after {ended:?}");
    assert!(ended >= ttl && ended <= ttl * 2, "{ended:?}");

    // kill -9 the leader: `kept`, renewed through the election, outlives twice its TTL
    // after the failover.
    let leader = leader_of(&http, c1).await;
    let node = match leader.split(':').next().unwrap() {
        "127.86.1.1" => "s1",
        "127.86.1.2" => "s2",
        _ => "s3",
    };
    signal(
        up_pid(&dir.path().join(".consulate"), node),
        Signal::SIGKILL,
    );
    let failover = Instant::now();
    // Checked every second for twice its TTL and more after the failover.
    while failover.elapsed() < ttl * 2 + Duration::from_secs(3) {
        let info = eventually(Duration::from_secs(10), "session info", || async {
            get(&http, &format!("http://{c1}/v1/session/info/{kept}?stale")).await
        })
        .await;
        assert_eq!(info[0]["ID"], kept.as_str(), "the renewed session is alive");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.cancel();
    let failed = renewals.await.unwrap();
    assert!(failed.is_empty(), "renewals failed: {failed:?}");
    let new_leader = leader_of(&http, c1).await;
    assert_ne!(new_leader, leader);
    let list = get(&http, &format!("http://{c1}/v1/session/list"))
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
