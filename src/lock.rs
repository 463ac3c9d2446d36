//! `consulate lock PREFIX -- CMD...`, as `consul lock`: runs CMD while holding the lock
//! `PREFIX/.lock`, through the local agent's session and KV API only. The lock is held
//! with a session tied to the agent's node (so it ends if the agent's machine dies) and a
//! TTL renewed at half its length (so it ends if this process dies). CMD is stopped when
//! the lock is lost; when CMD ends, the lock is released and the session destroyed.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::cli::{CliError, Client};

/// The lock's settings.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The KV prefix; the lock key is `PREFIX/.lock`.
    pub prefix: String,
    /// The session's name.
    pub name: String,
    /// The session TTL (renewed every half of it).
    pub ttl: Duration,
    /// The session's lock-delay.
    pub lock_delay: Duration,
}

/// How long CMD gets to exit after SIGTERM before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Failed monitoring calls in a row (about a second apart) after which the lock is taken
/// for lost (Consul's `-monitor-retry`).
const MONITOR_RETRIES: u32 = 3;
/// Between acquire attempts while the key is free but refused (a lock-delay runs).
const RETRY: Duration = Duration::from_millis(250);

/// Why the lock command failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The agent refused or could not be reached.
    #[error(transparent)]
    Api(#[from] CliError),
    /// CMD could not be started.
    #[error("cannot run the command: {0}")]
    Spawn(std::io::Error),
    /// The lock was lost while CMD ran (CMD was stopped).
    #[error("lock lost: {0}")]
    Lost(String),
}

fn key(prefix: &str) -> String {
    format!("{}/.lock", prefix.trim_end_matches('/'))
}

/// Creates the session, waits for the lock, runs `cmd` holding it, and returns CMD's exit
/// code. `shutdown` (SIGINT/SIGTERM) stops waiting, or is passed on to CMD.
pub async fn run(
    c: &Client,
    opts: &LockOptions,
    cmd: &[String],
    shutdown: CancellationToken,
) -> Result<i32, LockError> {
    let body = json!({
        "Name": opts.name,
        "TTL": format!("{}s", opts.ttl.as_secs()),
        "LockDelay": format!("{}ms", opts.lock_delay.as_millis()),
        "Behavior": "release",
    });
    let created = c
        .put(
            "/v1/session/create",
            body.to_string().into_bytes(),
            "creating a session",
        )
        .await?;
    let session = serde_json::from_str::<Value>(&created)
        .ok()
        .and_then(|v| v["ID"].as_str().map(str::to_string))
        .ok_or_else(|| CliError::Input(format!("unexpected session answer {created}")))?;
    let renewing = CancellationToken::new();
    let renew = tokio::spawn(renew_loop(
        c.clone(),
        session.clone(),
        opts.ttl / 2,
        renewing.clone(),
    ));
    let outcome = hold_and_run(c, opts, cmd, &session, shutdown).await;
    renewing.cancel();
    let _ = renew.await;
    let key = key(&opts.prefix);
    let _ = c
        .put(
            &format!("/v1/kv/{key}?release={session}"),
            Vec::new(),
            "releasing the lock",
        )
        .await;
    let _ = c
        .put(
            &format!("/v1/session/destroy/{session}"),
            Vec::new(),
            "destroying the session",
        )
        .await;
    outcome
}

/// Renews the session every `every` until cancelled (a failure is retried next time; the
/// monitor decides when the lock is lost).
async fn renew_loop(c: Client, session: String, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let _ = c
            .put(
                &format!("/v1/session/renew/{session}"),
                Vec::new(),
                "renewing the session",
            )
            .await;
    }
}

/// The holder of the lock key as the agent reports it, and the key's index.
async fn holder(c: &Client, key: &str, index: u64) -> Result<(Option<String>, u64), CliError> {
    let path = if index == 0 {
        format!("/v1/kv/{key}")
    } else {
        format!("/v1/kv/{key}?index={index}&wait=10s")
    };
    let (v, index) = c.get_indexed(&path, "watching the lock").await?;
    let session = v
        .as_ref()
        .and_then(|v| v[0]["Session"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok((session, index))
}

async fn hold_and_run(
    c: &Client,
    opts: &LockOptions,
    cmd: &[String],
    session: &str,
    shutdown: CancellationToken,
) -> Result<i32, LockError> {
    let key = key(&opts.prefix);
    // Acquire: try; if another holds it, wait for the key to change; if it is free but
    // refused (lock-delay), try again shortly.
    loop {
        let answer = c
            .put(
                &format!("/v1/kv/{key}?acquire={session}"),
                Vec::new(),
                "acquiring the lock",
            )
            .await?;
        if answer.trim() == "true" {
            break;
        }
        let (held_by, index) = holder(c, &key, 0).await?;
        let wait = async {
            match held_by {
                Some(_) => holder(c, &key, index).await.map(|_| ()),
                None => {
                    tokio::time::sleep(RETRY).await;
                    Ok(())
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(130),
            r = wait => r?,
        }
    }
    let shell = cmd.join(" ");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&shell)
        .kill_on_drop(true)
        .spawn()
        .map_err(LockError::Spawn)?;
    let lost = monitor(c, &key, session);
    tokio::pin!(lost);
    let stop = |child: &mut tokio::process::Child| {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    };
    tokio::select! {
        status = child.wait() => Ok(status.map_or(1, |s| s.code().unwrap_or(1))),
        why = &mut lost => {
            stop(&mut child);
            if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            Err(LockError::Lost(why))
        }
        _ = shutdown.cancelled() => {
            stop(&mut child);
            let status = match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    let _ = child.kill().await;
                    None
                }
            };
            Ok(status.and_then(|s| s.code()).unwrap_or(130))
        }
    }
}

/// Resolves (with the reason) once the lock key is no longer held by `session`, or the
/// agent cannot be asked for [`MONITOR_RETRIES`] tries in a row.
async fn monitor(c: &Client, key: &str, session: &str) -> String {
    let mut index = 0;
    let mut failures = 0;
    loop {
        match holder(c, key, index).await {
            Ok((Some(s), i)) if s == session => {
                index = i;
                failures = 0;
            }
            Ok((other, _)) => {
                return match other {
                    Some(s) => format!("the lock is held by session {s}"),
                    None => "the lock was released (session invalidated)".into(),
                };
            }
            Err(e) => {
                failures += 1;
                if failures >= MONITOR_RETRIES {
                    return format!("cannot reach the agent: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
