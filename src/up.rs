//! `consulate up`: a whole local federation from one topology file. It makes the CA and
//! every agent's certificate once (reusing them after), renders every agent's config, gives
//! each agent its own data dir, log file and pid file under a state folder, starts every agent as a
//! child process, waits until every DC has a leader and the WAN pool holds every server
//! (showing progress), prints where everything is, then supervises: a crashed agent is
//! reported (and restarted with `--restart`), and Ctrl-C/SIGTERM stops client agents first
//! and servers last, within a bound.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::{self, table};
use crate::config::ConfigError;
use crate::config::topology::{RenderPaths, Topology};
use crate::pki::{self, PkiError, Validity};
use crate::vocab::Role;

/// What `consulate up` is asked to do.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The topology file.
    pub topology: PathBuf,
    /// Where configs, data dirs, logs and the lock go.
    pub state_dir: PathBuf,
    /// Where the CA and agent certificates are (made if missing).
    pub certs_dir: PathBuf,
    /// Wipe the state folder first (certificates are kept).
    pub fresh: bool,
    /// Restart an agent that exits on its own.
    pub restart: bool,
    /// Turn ACLs on ([`Topology::secure`]) with a management token kept in the state folder.
    pub acl: bool,
    /// How long to wait for leaders and a complete WAN pool.
    pub ready_timeout: Duration,
}

/// Why `up` could not bring the federation up. None is fixed by retrying unchanged.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// Another `up` holds the state folder.
    #[error(
        "a federation is already running from {dir} (pid {pid}); stop it first (Ctrl-C in its terminal, or `kill {pid}`)"
    )]
    AlreadyRunning {
        /// The state folder.
        dir: PathBuf,
        /// The running `up`.
        pid: u32,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The topology is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The federation did not become ready in time.
    #[error("not ready after {after:?}: {missing}; see the agents' logs in {logs}")]
    NotReady {
        /// The bound.
        after: Duration,
        /// What was still missing.
        missing: String,
        /// The log folder.
        logs: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpError + '_ {
    move |source| UpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state folder's lock: `up.pid` holding our pid, removed when dropped.
struct Lock(PathBuf);

impl Lock {
    fn acquire(dir: &Path) -> Result<Lock, UpError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("up.pid");
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(pid) = text.trim().parse::<u32>()
            && pid != std::process::id()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(UpError::AlreadyRunning {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        std::fs::write(&path, std::process::id().to_string()).map_err(io(&path))?;
        Ok(Lock(path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Makes the CA and each agent's certificate in `dir` unless they exist.
fn ensure_certs(topo: &Topology, dir: &Path) -> Result<(), UpError> {
    let ca_paths = pki::ca_paths(dir, &topo.domain);
    if !ca_paths.cert.is_file() {
        let ca = pki::create_ca(&topo.domain, Validity::days(pki::CA_DAYS))?;
        pki::write_pair(&ca_paths, &ca, false)?;
        println!("==> Created the development CA in {}", dir.display());
    }
    for (dc, agent) in topo.agents() {
        let spec = topo.cert_spec(dc, agent);
        if !pki::agent_paths(dir, &spec).cert.is_file() {
            pki::issue_agent_cert_files(dir, &spec, pki::CERT_DAYS, false)?;
        }
    }
    Ok(())
}

/// One agent of the federation and its process.
struct Agent {
    dc: String,
    node: String,
    role: Role,
    http: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    /// Holds the running agent's pid, for users who want to signal one agent (the
    /// README's tour kills a server with it).
    pid_file: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn start(&mut self) -> Result<(), UpError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(&self.log))?;
        let err = log.try_clone().map_err(io(&self.log))?;
        let exe = std::env::current_exe().map_err(io(Path::new("consulate")))?;
        let mut child = Command::new(exe);
        child
            .arg("agent")
            .arg("--config")
            .arg(&self.config)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true);
        // Agents die with `up` even when it is killed outright (no orphans holding ports).
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
        unsafe {
            child.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let child = child.spawn().map_err(io(&self.config))?;
        if let Some(pid) = child.id() {
            std::fs::write(&self.pid_file, format!("{pid}\n")).map_err(io(&self.pid_file))?;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Forgets the agent's process once it exited.
    fn exited(&mut self) {
        self.child = None;
        let _ = std::fs::remove_file(&self.pid_file);
    }

    fn terminate(&self) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Where the federation stands while it comes up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// DCs whose servers name a leader, and the leader's address per DC.
    pub leaders: BTreeMap<String, String>,
    /// Servers alive in the WAN view of every DC (the smallest count over the DCs).
    pub wan_alive: usize,
}

impl Progress {
    /// What is still missing for a federation of `dcs` DCs and `servers` servers; `None`
    /// when ready. Pure.
    pub fn missing(&self, dcs: usize, servers: usize) -> Option<String> {
        let mut out = Vec::new();
        if self.leaders.len() < dcs {
            out.push(format!("leaders in {}/{dcs} DCs", self.leaders.len()));
        }
        if self.wan_alive < servers {
            out.push(format!(
                "{}/{servers} servers in the WAN pool",
                self.wan_alive
            ));
        }
        (!out.is_empty()).then(|| out.join(", "))
    }
}

async fn observe(agents: &[Agent], clients: &BTreeMap<String, cli::Client>) -> Progress {
    let mut p = Progress::default();
    let mut wan_min: Option<usize> = None;
    let dcs: std::collections::BTreeSet<&String> = agents.iter().map(|a| &a.dc).collect();
    for dc in dcs {
        let servers: Vec<&Agent> = agents
            .iter()
            .filter(|a| &a.dc == dc && a.role == Role::Server)
            .collect();
        let mut best_wan = 0;
        for s in &servers {
            let c = &clients[&s.node];
            if let Ok(leader) = cli::leader(c).await
                && !leader.is_empty()
            {
                p.leaders.insert(dc.clone(), leader);
            }
            if let Ok(n) = cli::wan_alive(c).await {
                best_wan = best_wan.max(n);
            }
        }
        wan_min = Some(wan_min.map_or(best_wan, |m: usize| m.min(best_wan)));
    }
    p.wan_alive = wan_min.unwrap_or(0);
    p
}

/// Brings the federation up and runs it until `shutdown` fires; then stops every agent.
pub async fn up(opts: UpOptions, shutdown: CancellationToken) -> Result<(), UpError> {
    let started = Instant::now();
    let topo = Topology::load(&opts.topology)?;
    let lock = Lock::acquire(&opts.state_dir)?;
    if opts.fresh {
        for sub in ["data", "config", "logs", "pids"] {
            let path = opts.state_dir.join(sub);
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
    }
    ensure_certs(&topo, &opts.certs_dir)?;
    let abs = |p: &Path| std::path::absolute(p).map_err(io(p));
    let paths = RenderPaths {
        certs_dir: abs(&opts.certs_dir)?,
        state_dir: abs(&opts.state_dir.join("data"))?,
    };
    let config_dir = opts.state_dir.join("config");
    let log_dir = abs(&opts.state_dir.join("logs"))?;
    let pid_dir = opts.state_dir.join("pids");
    for dir in [&log_dir, &pid_dir] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut configs = topo.render(&paths);
    let management = if opts.acl {
        let token = management_token(&opts.state_dir)?;
        topo.secure(&mut configs, &token);
        Some(token)
    } else {
        None
    };
    topo.write_configs(&configs, &config_dir)
        .map_err(io(&config_dir))?;
    let mut agents: Vec<Agent> = configs
        .into_iter()
        .map(|cfg| Agent {
            http: cfg.http_bind(),
            config: config_dir.join(format!("{}.toml", cfg.node_name)),
            log: log_dir.join(format!("{}.log", cfg.node_name)),
            pid_file: pid_dir.join(format!("{}.pid", cfg.node_name)),
            dc: cfg.datacenter,
            node: cfg.node_name,
            role: cfg.role,
            child: None,
        })
        .collect();
    // Servers first, so that client agents find them at once.
    agents.sort_by_key(|a| (a.role != Role::Server, a.dc.clone(), a.node.clone()));
    for a in &mut agents {
        a.start()?;
    }
    let clients: BTreeMap<String, cli::Client> = agents
        .iter()
        .map(|a| {
            let c = cli::Client::new(&a.http.to_string()).with_token(management.clone());
            (a.node.clone(), c)
        })
        .collect();
    let servers = agents.iter().filter(|a| a.role == Role::Server).count();
    let dcs = topo.datacenters.len();
    println!(
        "==> Started {} agents of {dcs} datacenters; logs in {}",
        agents.len(),
        log_dir.display()
    );
    let mut last = String::new();
    let progress = loop {
        let p = observe(&agents, &clients).await;
        let Some(missing) = p.missing(dcs, servers) else {
            break p;
        };
        if missing != last {
            println!("    waiting for {missing}");
            last = missing.clone();
        }
        if started.elapsed() > opts.ready_timeout {
            stop(&mut agents).await;
            return Err(UpError::NotReady {
                after: opts.ready_timeout,
                missing,
                logs: log_dir,
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                stop(&mut agents).await;
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    println!(
        "==> Federation ready in {:.1} s: every DC has a leader, the WAN pool holds all {servers} servers\n",
        started.elapsed().as_secs_f64()
    );
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let leads = progress
                .leaders
                .get(&a.dc)
                .is_some_and(|l| l.split(':').next() == Some(&a.http.ip().to_string()));
            vec![
                a.dc.clone(),
                a.node.clone(),
                a.role.to_string(),
                format!("http://{}", a.http),
                if leads { "leader" } else { "" }.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["Datacenter", "Node", "Role", "HTTP", "Leader"], &rows)
    );
    if let (Some(first), Some(other)) = (
        agents.iter().find(|a| a.role == Role::Client),
        topo.datacenters.get(1),
    ) {
        let h = first.http;
        println!("Try:");
        println!("  consulate members -http-addr {h}");
        println!(
            "  curl -s 'http://{h}/v1/catalog/services?dc={}'",
            other.name
        );
        println!("  curl -s http://{h}/metrics | grep consulate_http_requests_total");
    }
    if let Some(token) = &management {
        println!("\nACLs are on (default deny). The management token:");
        println!("  export CONSUL_HTTP_TOKEN={token}");
    }
    println!("\nCtrl-C stops every agent.");
    supervise(&mut agents, opts.restart, &shutdown).await;
    stop(&mut agents).await;
    drop(lock);
    Ok(())
}

/// Reports (and with `restart`, restarts) agents that exit on their own, until `shutdown`.
async fn supervise(agents: &mut [Agent], restart: bool, shutdown: &CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        for a in agents.iter_mut() {
            let Some(child) = a.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "!!> {} ({}) exited: {status}; log: {}",
                    a.node,
                    a.dc,
                    a.log.display()
                );
                a.exited();
                if restart {
                    match a.start() {
                        Ok(()) => eprintln!("==> restarted {}", a.node),
                        Err(e) => eprintln!("!!> cannot restart {}: {e}", a.node),
                    }
                }
            }
        }
    }
}

/// How long agents of one role get to stop after SIGTERM before they are killed.
const STOP_BOUND: Duration = Duration::from_secs(2);

/// Stops client agents, then servers: SIGTERM, then SIGKILL after [`STOP_BOUND`].
async fn stop(agents: &mut [Agent]) {
    for role in [Role::Client, Role::Server] {
        let group: Vec<&mut Agent> = agents.iter_mut().filter(|a| a.role == role).collect();
        for a in &group {
            a.terminate();
        }
        let deadline = Instant::now() + STOP_BOUND;
        for a in group {
            if let Some(mut child) = a.child.take()
                && tokio::time::timeout_at(deadline, child.wait())
                    .await
                    .is_err()
            {
                let _ = child.kill().await;
            }
            a.exited();
        }
    }
    println!("==> Stopped every agent");
}

/// What `consulate status` found, as its JSON form shows it.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    /// Every agent of the topology and whether its API answers.
    pub agents: Vec<AgentStatus>,
    /// Each DC's leader (`None`: no leader, or no server answered).
    pub leaders: BTreeMap<String, Option<String>>,
    /// The WAN pool as a server of the first DC that answers lists it.
    pub wan_members: Vec<(String, String)>,
    /// A query from each DC (through a live agent of it) to every other DC.
    pub cross_dc: Vec<CrossDc>,
}

/// One agent in [`Status`].
#[derive(Debug, serde::Serialize)]
pub struct AgentStatus {
    /// Its DC.
    pub datacenter: String,
    /// Its node name.
    pub node: String,
    /// Server or client.
    pub role: String,
    /// Its HTTP address.
    pub http: String,
    /// Whether it answered.
    pub alive: bool,
}

/// One cross-DC probe in [`Status`].
#[derive(Debug, serde::Serialize)]
pub struct CrossDc {
    /// The DC asked.
    pub from: String,
    /// The DC named with `?dc=`.
    pub to: String,
    /// `None` if it answered; the error otherwise.
    pub error: Option<String>,
}

impl Status {
    /// What is wrong, if anything (the exit code of `consulate status`).
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .agents
            .iter()
            .filter(|a| !a.alive)
            .map(|a| format!("{} ({}) is down", a.node, a.datacenter))
            .collect();
        out.extend(
            self.leaders
                .iter()
                .filter(|(_, l)| l.is_none())
                .map(|(dc, _)| format!("{dc} has no leader")),
        );
        out.extend(self.cross_dc.iter().filter_map(|c| {
            c.error
                .as_ref()
                .map(|e| format!("{} -> {}: {e}", c.from, c.to))
        }));
        out
    }

    /// The aligned-columns form.
    pub fn pretty(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .agents
            .iter()
            .map(|a| {
                let leads = self.leaders.get(&a.datacenter).and_then(|l| l.as_deref());
                let ip = a.http.split(':').next().unwrap_or("");
                vec![
                    a.datacenter.clone(),
                    a.node.clone(),
                    a.role.clone(),
                    a.http.clone(),
                    if a.alive { "alive" } else { "down" }.to_string(),
                    if leads.and_then(|l| l.split(':').next()) == Some(ip) {
                        "leader"
                    } else {
                        ""
                    }
                    .to_string(),
                ]
            })
            .collect();
        let mut out = table(
            &["Datacenter", "Node", "Role", "HTTP", "Status", "Leader"],
            &rows,
        );
        let wan: Vec<Vec<String>> = self
            .wan_members
            .iter()
            .map(|(n, s)| vec![n.clone(), s.clone()])
            .collect();
        out.push('\n');
        out.push_str(&table(&["WAN member", "Status"], &wan));
        let cross: Vec<Vec<String>> = self
            .cross_dc
            .iter()
            .map(|c| {
                vec![
                    c.from.clone(),
                    c.to.clone(),
                    c.error.clone().unwrap_or_else(|| "ok".into()),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["From", "To", "Cross-DC query"], &cross));
        out
    }
}

/// The management token of the federation kept in `state_dir` (made on first use, readable
/// only by its owner), so that restarts and `consulate status` use the same one.
fn management_token(state_dir: &Path) -> Result<String, UpError> {
    let path = state_dir.join("acl-management-token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let token = crate::vocab::random_uuid();
    std::fs::write(&path, &token).map_err(io(&path))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io(&path))?;
    Ok(token)
}

/// Probes a running federation described by the topology at `path`.
pub async fn status(path: &Path) -> Result<Status, UpError> {
    let topo = Topology::load(path)?;
    let paths = RenderPaths {
        certs_dir: PathBuf::new(),
        state_dir: PathBuf::new(),
    };
    let mut agents = Vec::new();
    let mut clients = BTreeMap::new();
    // With ACLs on (`up --acl`), the token `up` printed: `CONSUL_HTTP_TOKEN`.
    let token = std::env::var("CONSUL_HTTP_TOKEN").ok();
    for cfg in topo.render(&paths) {
        let c = cli::Client::new(&cfg.http_bind().to_string()).with_token(token.clone());
        agents.push(AgentStatus {
            alive: cli::alive(&c).await,
            datacenter: cfg.datacenter.clone(),
            node: cfg.node_name.clone(),
            role: cfg.role.to_string(),
            http: cfg.http_bind().to_string(),
        });
        clients.insert(cfg.node_name, (cfg.role, c));
    }
    let mut leaders = BTreeMap::new();
    let mut wan_members = Vec::new();
    let mut cross_dc = Vec::new();
    for dc in &topo.datacenters {
        let live: Vec<&AgentStatus> = agents
            .iter()
            .filter(|a| a.datacenter == dc.name && a.alive)
            .collect();
        let mut leader = None;
        for a in &live {
            let (role, c) = &clients[&a.node];
            if leader.is_none()
                && let Ok(l) = cli::leader(c).await
                && !l.is_empty()
            {
                leader = Some(l);
            }
            if wan_members.is_empty()
                && *role == Role::Server
                && let Ok(m) = cli::wan_members(c).await
            {
                wan_members = m;
            }
        }
        leaders.insert(dc.name.clone(), leader);
        for other in topo.datacenters.iter().filter(|o| o.name != dc.name) {
            let error = match live.first() {
                None => Some("no agent of the DC answers".to_string()),
                Some(a) => cli::reaches(&clients[&a.node].1, &other.name)
                    .await
                    .err()
                    .map(|e| e.to_string()),
            };
            cross_dc.push(CrossDc {
                from: dc.name.clone(),
                to: other.name.clone(),
                error,
            });
        }
    }
    Ok(Status {
        agents,
        leaders,
        wan_members,
        cross_dc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_says_what_is_missing() {
        let mut p = Progress::default();
        assert_eq!(
            p.missing(2, 6).as_deref(),
            Some("leaders in 0/2 DCs, 0/6 servers in the WAN pool")
        );
        p.leaders.insert("dc1".into(), "127.0.1.1:8300".into());
        p.leaders.insert("dc2".into(), "127.0.2.1:8300".into());
        p.wan_alive = 5;
        assert_eq!(
            p.missing(2, 6).as_deref(),
            Some("5/6 servers in the WAN pool")
        );
        p.wan_alive = 6;
        assert_eq!(p.missing(2, 6), None);
    }
}
