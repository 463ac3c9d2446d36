//! `/v1/agent/version`, `host`, `join`, `reload` and `monitor`: operating one agent (its
//! build, its machine, which pool it is in, its config file, its log).

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Api;
use super::agent::agent_perm;
use super::error::HttpError;
use super::params::Params;
use crate::acl::{Access, Permission, Scalar};

/// `GET /v1/agent/version` (no ACL, as Consul's).
pub async fn version() -> Response {
    Json(serde_json::json!({
        "SHA": "",
        "BuildDate": "",
        "HumanVersion": env!("CARGO_PKG_VERSION"),
        "FIPS": "",
    }))
    .into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CpuJson {
    cpu: usize,
    vendor_id: String,
    model_name: String,
    mhz: u64,
    cores: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemoryJson {
    total: u64,
    available: u64,
    used: u64,
    used_percent: f64,
    free: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HostInfoJson {
    hostname: String,
    uptime: u64,
    boot_time: u64,
    os: &'static str,
    platform: String,
    platform_version: String,
    kernel_version: String,
    kernel_arch: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DiskJson {
    path: String,
    fstype: String,
    total: u64,
    free: u64,
    used: u64,
    used_percent: f64,
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The facts `agent/host` reports, read through `sysinfo` (Consul's shape, from gopsutil).
fn host_facts() -> serde_json::Value {
    use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::everything())
            .with_cpu(CpuRefreshKind::nothing().with_frequency()),
    );
    let cpus: Vec<CpuJson> = sys
        .cpus()
        .iter()
        .enumerate()
        .map(|(i, c)| CpuJson {
            cpu: i,
            vendor_id: c.vendor_id().to_string(),
            model_name: c.brand().to_string(),
            mhz: c.frequency(),
            cores: 1,
        })
        .collect();
    let total = sys.total_memory();
    let available = sys.available_memory();
    let memory = MemoryJson {
        total,
        available,
        used: total.saturating_sub(available),
        used_percent: percent(total.saturating_sub(available), total),
        free: sys.free_memory(),
    };
    let host = HostInfoJson {
        hostname: System::host_name().unwrap_or_default(),
        uptime: System::uptime(),
        boot_time: System::boot_time(),
        os: std::env::consts::OS,
        platform: System::distribution_id(),
        platform_version: System::os_version().unwrap_or_default(),
        kernel_version: System::kernel_version().unwrap_or_default(),
        kernel_arch: std::env::consts::ARCH.to_string(),
    };
    let disks = Disks::new_with_refreshed_list();
    let root = disks
        .list()
        .iter()
        .filter(|d| std::path::Path::new("/").starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| DiskJson {
            path: d.mount_point().display().to_string(),
            fstype: d.file_system().to_string_lossy().into_owned(),
            total: d.total_space(),
            free: d.available_space(),
            used: d.total_space().saturating_sub(d.available_space()),
            used_percent: percent(
                d.total_space().saturating_sub(d.available_space()),
                d.total_space(),
            ),
        });
    let collected = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    serde_json::json!({
        "Memory": memory,
        "CPU": cpus,
        "Host": host,
        "Disk": root,
        "CollectionTime": collected,
        "Errors": null,
    })
}

/// `GET /v1/agent/host` (`operator:read`): the machine the agent runs on.
pub async fn host(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, Permission::scalar(Scalar::Operator, Access::Read))
        .await?;
    let facts = tokio::task::spawn_blocking(host_facts)
        .await
        .map_err(|e| HttpError::Internal(e.to_string()))?;
    Ok(Json(facts).into_response())
}

/// A join address: `ip` or `ip:port` (the port defaults to the pool's own).
fn join_addr(text: &str, default_port: u16) -> Result<SocketAddr, HttpError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    text.trim_matches(['[', ']'])
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| {
            HttpError::BadRequest(format!(
                "Invalid join address {text:?}: expected ip or ip:port"
            ))
        })
}

/// `PUT /v1/agent/join/:address[?wan=1]` (`agent:write`): joins the LAN pool of the
/// agent at `address`, or (servers, `?wan`) the WAN pool of the server at that QUIC
/// address.
pub async fn join(
    State(api): State<Api>,
    Path(address): Path<String>,
    p: Params,
) -> Result<Response, HttpError> {
    api.authorize(&p, agent_perm(&api, Access::Write)).await?;
    let Some((lan, wan)) = &api.pools else {
        return Err(HttpError::Internal(
            "this agent is in no gossip pool".into(),
        ));
    };
    let pool = match (p.enabled("wan"), wan) {
        (false, _) => lan,
        (true, Some(wan)) => wan,
        (true, None) => {
            return Err(HttpError::BadRequest(
                "Only servers join the WAN pool".into(),
            ));
        }
    };
    let addr = join_addr(&address, pool.gossip_addr().port())?;
    pool.join(addr)
        .await
        .map_err(|e| HttpError::Internal(e.to_string()))?;
    Ok(().into_response())
}

/// Why a reload was refused (the agent keeps running as it was).
fn refused(why: impl std::fmt::Display) -> HttpError {
    HttpError::Internal(format!("Failed to reload configs: {why}"))
}

/// `PUT /v1/agent/reload` (`agent:write`): reads the config file again and applies what
/// can change without a restart: the services and checks it defines (replacing those it
/// defined before; those registered through the API stay) and `log_level`. A file that
/// does not parse or whose definitions do not register is refused and nothing changes.
pub async fn reload(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, agent_perm(&api, Access::Write)).await?;
    let Some(file) = api.config_file.as_deref() else {
        return Err(refused("this agent was not started from a config file"));
    };
    let config = crate::config::AgentConfig::load(file).map_err(refused)?;
    let (services, checks) = super::agent::config_definitions(&config).map_err(refused)?;
    // `load` checked the level: setting it below cannot fail once the definitions applied.
    let level = config.log_level.as_deref().unwrap_or("info");
    api.local
        .update(|l| l.apply_config(services, checks))
        .map_err(refused)?;
    match crate::logging::set_level(level) {
        Ok(()) | Err(crate::logging::LogError::NotOwned) => {}
        Err(e) => return Err(refused(e)),
    }
    tracing::info!(file = %file.display(), "config reloaded");
    Ok(().into_response())
}

/// `GET /v1/agent/monitor?loglevel=` (`agent:read`): streams the agent's log lines at
/// that level and above as they are written, until the client goes away or the agent
/// stops.
pub async fn monitor(State(api): State<Api>, p: Params) -> Result<Response, HttpError> {
    api.authorize(&p, agent_perm(&api, Access::Read)).await?;
    let level = crate::logging::monitor_level(p.get("loglevel")).map_err(HttpError::BadRequest)?;
    let monitor = crate::logging::Monitor::new(level);
    let stop = api.shutdown.clone();
    let lines = futures::stream::unfold((monitor, stop), |(mut m, stop)| async move {
        let line = tokio::select! {
            line = m.next() => line?,
            () = stop.cancelled() => return None,
        };
        Some((
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line.as_bytes().to_vec())),
            (m, stop),
        ))
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        Body::from_stream(lines),
    )
        .into_response())
}
