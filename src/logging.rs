//! The process's log: the subscriber `consulate agent` installs (lines on stderr at the
//! configured `log_level`, which `agent/reload` changes without a restart) and the tap
//! that `agent/monitor` streams from, each monitor at its own level whatever the file's.
//! Process-global, as logging is: agents that tests run in-process share one, and where
//! [`init`] never ran the tap stays silent and a level change is refused.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The level names a `log_level` or `?loglevel=` takes (Consul's, with `err` for error).
fn level(name: &str) -> Option<Level> {
    match name.to_ascii_lowercase().as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" | "warning" => Some(Level::WARN),
        "err" | "error" => Some(Level::ERROR),
        _ => None,
    }
}

/// A monitor's level (`?loglevel=`; default info).
pub fn monitor_level(name: Option<&str>) -> Result<Level, String> {
    match name.filter(|n| !n.is_empty()) {
        None => Ok(Level::INFO),
        Some(n) => level(n).ok_or_else(|| format!("Unknown log level: {n}")),
    }
}

/// The filter a `log_level` stands for: a level name, or `tracing` filter directives
/// (`info,openraft=warn`).
pub fn filter(log_level: &str) -> Result<EnvFilter, String> {
    if let Some(l) = level(log_level) {
        return Ok(level_filter(l));
    }
    let directives = log_level.contains('=') || log_level.contains(',');
    match EnvFilter::try_new(log_level) {
        Ok(f) if directives => Ok(f),
        _ => Err(format!(
            "{log_level:?} is not a log level (trace, debug, info, warn, error) nor filter directives"
        )),
    }
}

/// The filter of a plain level. At `info`, the Raft log's own notes (chunk files opened,
/// purges, cache bookkeeping) are left out: they are for debugging it.
fn level_filter(l: Level) -> EnvFilter {
    let name = l.as_str().to_ascii_lowercase();
    if l == Level::INFO {
        EnvFilter::new(format!("{name},raft_log=warn"))
    } else {
        EnvFilter::new(name)
    }
}

/// One log line as a monitor sends it.
pub type Line = Arc<str>;

/// Where log lines go besides stderr: the live monitors.
struct Tap {
    lines: broadcast::Sender<(Level, Line)>,
    /// The most verbose level any live monitor wants (0: none, 1 error .. 5 trace), so
    /// that no line is formatted for nobody.
    wanted: AtomicU8,
    monitors: Mutex<Vec<(u64, Level)>>,
}

/// How many lines a slow monitor may fall behind before it skips ahead.
const MONITOR_BACKLOG: usize = 512;

static TAP: LazyLock<Tap> = LazyLock::new(|| Tap {
    lines: broadcast::channel(MONITOR_BACKLOG).0,
    wanted: AtomicU8::new(0),
    monitors: Mutex::new(Vec::new()),
});

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn rank(l: Level) -> u8 {
    match l {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Installs the process's subscriber: stderr at `log_level` (the `RUST_LOG` variable
/// wins when set) plus the monitors' tap.
pub fn init(log_level: Option<&str>) {
    let stderr_filter = EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| log_level.and_then(|l| filter(l).ok()))
        .unwrap_or_else(|| level_filter(Level::INFO));
    let (stderr_filter, handle) = reload::Layer::new(stderr_filter);
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(stderr_filter);
    let tap = TapLayer.with_filter(tracing_subscriber::filter::dynamic_filter_fn(|m, _| {
        rank(*m.level()) <= TAP.wanted.load(Ordering::Relaxed)
    }));
    if tracing_subscriber::registry()
        .with(stderr)
        .with(tap)
        .try_init()
        .is_ok()
    {
        let _ = RELOAD.set(handle);
    }
}

/// Why a log level was not changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Not a level nor directives.
    #[error("{0}")]
    Invalid(String),
    /// This process's log is not [`init`]'s (an agent run inside another program).
    #[error("this process's log is not the agent's own")]
    NotOwned,
}

/// Sets the stderr log's level (`agent/reload` of a changed `log_level`).
pub fn set_level(log_level: &str) -> Result<(), LogError> {
    let f = filter(log_level).map_err(LogError::Invalid)?;
    let handle = RELOAD.get().ok_or(LogError::NotOwned)?;
    handle
        .reload(f)
        .map_err(|e| LogError::Invalid(e.to_string()))
}

/// A live monitor: the lines at its level or above, until dropped.
pub struct Monitor {
    id: u64,
    level: Level,
    lines: broadcast::Receiver<(Level, Line)>,
}

impl Monitor {
    /// Starts receiving lines at `level` and more severe.
    pub fn new(level: Level) -> Monitor {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let lines = TAP.lines.subscribe();
        let mut monitors = TAP.monitors.lock().expect("monitors lock");
        monitors.push((id, level));
        recompute(&monitors);
        Monitor { id, level, lines }
    }

    /// The next line for this monitor; `None` when the log is gone. Lines missed by a
    /// monitor that fell behind are reported as one line saying how many.
    pub async fn next(&mut self) -> Option<Line> {
        loop {
            match self.lines.recv().await {
                Ok((l, line)) if rank(l) <= rank(self.level) => return Some(line),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some(
                        format!("[WARN]  monitor: {n} log lines dropped (too slow)\n").into(),
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let mut monitors = TAP.monitors.lock().expect("monitors lock");
        monitors.retain(|(id, _)| *id != self.id);
        recompute(&monitors);
    }
}

fn recompute(monitors: &[(u64, Level)]) {
    let wanted = monitors.iter().map(|(_, l)| rank(*l)).max().unwrap_or(0);
    TAP.wanted.store(wanted, Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
}

/// Formats events for the tap in Consul's monitor shape:
/// `2026-12-01T11:15:02.123Z [INFO]  target: message: key=value`.
struct TapLayer;

impl<S: Subscriber> Layer<S> for TapLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let tag = format!("[{}]", level.as_str());
        let rest = match fields.rest.is_empty() {
            true => String::new(),
            false => format!(": {}", fields.rest.join(" ")),
        };
        let line = format!(
            "{now} {tag:<7} {}: {}{rest}\n",
            event.metadata().target(),
            fields.message,
        );
        let _ = TAP.lines.send((level, line.into()));
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push(format!("{}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.push(format!("{}={value}", field.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_are_accepted_and_nonsense_refused() {
        for ok in [
            "info",
            "DEBUG",
            "err",
            "warn",
            "trace",
            "info,openraft=warn",
        ] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        for bad in ["loud", "", "inf o"] {
            assert!(filter(bad).is_err(), "{bad}");
        }
        assert_eq!(monitor_level(None).unwrap(), Level::INFO);
        assert_eq!(monitor_level(Some("debug")).unwrap(), Level::DEBUG);
        assert!(monitor_level(Some("chatty")).is_err());
    }
}
