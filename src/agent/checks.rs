//! The check runner: runs the HTTP and TCP checks registered with this agent on their
//! intervals (jittered, each with its own timeout, so a hung target delays nothing else)
//! and expires TTL checks that their application stopped refreshing. Results go into the
//! agent-local state; anti-entropy carries them to the catalog, writing only changes. A
//! run is recorded when its status changes; a changed output alone only once per
//! `check_update_interval` (Consul's rule), so a target that puts a timestamp in its body
//! does not turn every run into a catalog write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::local::{CheckKind, LocalAgent, LocalCheck, MIN_CHECK_INTERVAL};
use crate::state::HealthStatus;
use crate::transport::tls::web_client_config;

/// Timeout when a check gives none (Consul's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an HTTP body the output keeps.
const OUTPUT_LIMIT: usize = 4096;

/// Consul's default `check_update_interval`.
pub const DEFAULT_OUTPUT_EVERY: Duration = Duration::from_secs(300);

/// Whether a run with `status` and `output` is recorded, given what was last recorded
/// (`None` before the first run) and when. Pure.
pub fn record(
    last: Option<(HealthStatus, &str, Instant)>,
    status: HealthStatus,
    output: &str,
    now: Instant,
    output_every: Duration,
) -> bool {
    match last {
        None => true,
        Some((s, _, _)) if s != status => true,
        Some((_, o, _)) if o == output => false,
        Some((_, _, at)) => now.duration_since(at) >= output_every,
    }
}

/// The verdict on an HTTP status code, as Consul's: 2xx passing, 429 warning, else critical.
pub fn http_status(code: u16) -> HealthStatus {
    match code {
        200..=299 => HealthStatus::Passing,
        429 => HealthStatus::Warning,
        _ => HealthStatus::Critical,
    }
}

/// The HTTP clients of HTTP checks: one verifying `https://` targets against the system's
/// roots (as Consul does), one for checks with `TLSSkipVerify`.
#[derive(Clone)]
struct Clients {
    verifying: reqwest::Client,
    skipping: reqwest::Client,
}

impl Clients {
    fn new() -> Clients {
        let client = |verify| {
            reqwest::Client::builder()
                .use_preconfigured_tls(web_client_config(verify))
                .build()
                .expect("an HTTP client with a rustls config builds")
        };
        Clients {
            verifying: client(true),
            skipping: client(false),
        }
    }
}

/// Runs until `shutdown` fires: one task per runnable check, restarted when its definition
/// changes and stopped when it is deregistered; the runners live in this loop's own set, so
/// none outlives it. `output_every` is how often an output-only change is recorded.
pub async fn run(local: Arc<LocalAgent>, output_every: Duration, shutdown: CancellationToken) {
    let http = Clients::new();
    let mut running: HashMap<String, (LocalCheck, CancellationToken)> = HashMap::new();
    let mut runners = tokio::task::JoinSet::new();
    let mut version = local.subscribe();
    loop {
        while runners.try_join_next().is_some() {}
        let checks = local.snapshot().checks;
        running.retain(|id, (def, token)| {
            let keep = checks.get(id).is_some_and(|c| same_runner(c, def));
            if !keep {
                token.cancel();
            }
            keep
        });
        for (id, check) in checks {
            if running.contains_key(&id)
                || matches!(check.kind, CheckKind::Script(_) | CheckKind::Maintenance)
            {
                continue;
            }
            let token = shutdown.child_token();
            runners.spawn(run_one(
                local.clone(),
                http.clone(),
                id.clone(),
                check.clone(),
                output_every,
                token.clone(),
            ));
            running.insert(id, (check, token));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = version.changed() => if r.is_err() { return },
        }
    }
}

/// Whether a running task for `b` also serves `a` (status and output changes do not
/// restart a runner; a changed definition does).
fn same_runner(a: &LocalCheck, b: &LocalCheck) -> bool {
    a.kind == b.kind && a.interval == b.interval && a.timeout == b.timeout
}

async fn run_one(
    local: Arc<LocalAgent>,
    http: Clients,
    id: String,
    check: LocalCheck,
    output_every: Duration,
    token: CancellationToken,
) {
    let started = Instant::now();
    let mut recorded: Option<(String, Instant)> = None;
    let mut critical_since: Option<Instant> = None;
    // Registration raised short intervals already; the floor here keeps a check read
    // back from an older data dir from spinning too.
    let interval = check
        .interval
        .unwrap_or(Duration::from_secs(10))
        .max(MIN_CHECK_INTERVAL);
    // Spread checks over their interval so that they do not fire in lockstep.
    let mut next = tokio::time::Instant::now() + interval.mul_f64(rand::random::<f64>());
    loop {
        let verdict = match &check.kind {
            CheckKind::Ttl(ttl) => {
                next = tokio::time::Instant::now()
                    + (*ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
                let since = local.last_refresh(&id).unwrap_or(started);
                (since.elapsed() > *ttl).then(|| {
                    (
                        HealthStatus::Critical,
                        format!("TTL expired (last refreshed {:?} ago)", since.elapsed()),
                    )
                })
            }
            CheckKind::Http {
                url,
                method,
                header,
                body,
                tls_skip_verify,
            } => {
                let timeout = check
                    .timeout
                    .unwrap_or(DEFAULT_TIMEOUT)
                    .max(MIN_CHECK_INTERVAL);
                let client = if *tls_skip_verify {
                    &http.skipping
                } else {
                    &http.verifying
                };
                Some(http_check(client, url, method, header, body, timeout).await)
            }
            CheckKind::Tcp(addr) => {
                let timeout = check
                    .timeout
                    .unwrap_or(DEFAULT_TIMEOUT)
                    .max(MIN_CHECK_INTERVAL);
                Some(tcp_check(addr, timeout).await)
            }
            CheckKind::Script(_) | CheckKind::Maintenance => return,
        };
        if let Some((status, _)) = &verdict {
            if *status == HealthStatus::Critical {
                let since = *critical_since.get_or_insert_with(Instant::now);
                if let (Some(after), Some(service)) = (
                    check.deregister_critical_after,
                    check.def.service_id.as_deref(),
                ) && since.elapsed() >= after
                {
                    debug!(check = %id, service, "critical too long: deregistering the service");
                    let _ = local.update(|l| l.remove_service(service));
                    return;
                }
            } else {
                critical_since = None;
            }
        }
        if let Some((status, output)) = verdict {
            let output = match &check.warning {
                Some(w) => format!("Warning: {w}\n{output}"),
                None => output,
            };
            // The status is read back: an application may have set it (TTL checks).
            let last = match (&recorded, local.check_status(&id)) {
                (Some((o, at)), Some(s)) => Some((s, o.as_str(), *at)),
                _ => None,
            };
            let now = Instant::now();
            if record(last, status, &output, now, output_every) {
                debug!(check = %id, status = status.as_str(), "check result recorded");
                recorded = Some((output.clone(), now));
                let _ = local.update(|l| l.update_check(&id, status, output));
            }
        }
        if matches!(check.kind, CheckKind::Http { .. } | CheckKind::Tcp(_)) {
            let now = tokio::time::Instant::now();
            while next <= now {
                next += interval;
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(on_tick(next)) => {}
        }
    }
}

/// Check runs start on ticks of this length: runs due within one tick share a wake-up of
/// the agent instead of waking it one by one (hundreds of checks per second otherwise
/// cost more in wake-ups than in checking). Still spread: a second holds 20 ticks.
const TICK: Duration = Duration::from_millis(50);

/// `at`, rounded up to the next [`TICK`] of the process.
fn on_tick(at: tokio::time::Instant) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let since = at.saturating_duration_since(epoch).as_micros();
    let tick = TICK.as_micros();
    epoch + Duration::from_micros(since.div_ceil(tick).saturating_mul(tick) as u64)
}

async fn http_check(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    header: &std::collections::BTreeMap<String, Vec<String>>,
    body: &str,
    timeout: Duration,
) -> (HealthStatus, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = http.request(method.clone(), url).timeout(timeout);
    for (k, vs) in header {
        for v in vs {
            req = req.header(k, v);
        }
    }
    if !body.is_empty() {
        req = req.body(body.to_string());
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let excerpt: String = text.chars().take(OUTPUT_LIMIT).collect();
            (
                http_status(status.as_u16()),
                format!("HTTP {method} {url}: {status} Output: {excerpt}"),
            )
        }
        Err(e) => (
            HealthStatus::Critical,
            format!("HTTP {method} {url}: {}", error_chain(&e)),
        ),
    }
}

/// An error with its causes, which say what went wrong (`... invalid peer certificate:
/// UnknownIssuer`), where the top level only says that the request failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn tcp_check(addr: &str, timeout: Duration) -> (HealthStatus, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (
            HealthStatus::Passing,
            format!("TCP connect {addr}: Success"),
        ),
        Ok(Err(e)) => (HealthStatus::Critical, format!("TCP connect {addr}: {e}")),
        Err(_) => (
            HealthStatus::Critical,
            format!("TCP connect {addr}: timed out after {timeout:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_changes_are_recorded_at_once_output_alone_at_most_every_interval() {
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        let (p, c) = (HealthStatus::Passing, HealthStatus::Critical);
        assert!(record(None, p, "ok", t0, every), "first run");
        let last = Some((p, "ok 12:00:00", t0));
        let later = |s| t0 + Duration::from_secs(s);
        assert!(
            !record(last, p, "ok 12:00:00", later(1), every),
            "nothing new"
        );
        assert!(
            !record(last, p, "ok 12:00:01", later(1), every),
            "output only, too soon"
        );
        assert!(
            record(last, p, "ok 12:05:00", later(300), every),
            "output only, due"
        );
        assert!(
            record(last, c, "ok 12:00:00", later(1), every),
            "status change"
        );
    }

    #[test]
    fn http_codes_map_like_consul() {
        assert_eq!(http_status(200), HealthStatus::Passing);
        assert_eq!(http_status(204), HealthStatus::Passing);
        assert_eq!(http_status(429), HealthStatus::Warning);
        assert_eq!(http_status(500), HealthStatus::Critical);
        assert_eq!(http_status(404), HealthStatus::Critical);
        assert_eq!(http_status(301), HealthStatus::Critical);
    }
}
