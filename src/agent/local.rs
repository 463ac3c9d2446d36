//! Agent-local state: the services and checks registered through this agent's
//! `/v1/agent/...` endpoints. They belong to the agent, not to the catalog: the agent is
//! the source of truth and anti-entropy (the agent's `anti_entropy` loop) makes the
//! catalog's view of this node match them. [`sync_plan`] is the pure diff that decides
//! what to write.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::warn;

use crate::state::{
    Check, CheckDefinition, Command, DeregisterRequest, HealthStatus, Node, RegisterRequest,
    Service, ServiceDefinition,
};

/// Node checks that other parts of the system own (gossip reconciliation on the leader):
/// anti-entropy never removes them.
const FOREIGN_CHECKS: &[&str] = &["serfHealth"];
/// Services other parts of the system own (the leader registers every server as service
/// `consul`): anti-entropy never removes them.
const FOREIGN_SERVICES: &[&str] = &[crate::vocab::CONSUL_SERVICE];

/// Who this agent is, as the catalog shows its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node UUID.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Advertised address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Whether this agent is a server.
    pub server: bool,
    /// Its QUIC port.
    pub port: u16,
}

impl NodeInfo {
    /// A register request for this node alone (anti-entropy and gossip reconciliation
    /// write the node identically, so neither undoes the other).
    pub fn register(&self) -> RegisterRequest {
        let mut tagged = BTreeMap::new();
        tagged.insert("lan".to_string(), self.address.clone());
        tagged.insert("wan".to_string(), self.address.clone());
        RegisterRequest {
            id: self.id.clone(),
            node: self.name.clone(),
            address: self.address.clone(),
            datacenter: self.datacenter.clone(),
            tagged_addresses: tagged,
            ..RegisterRequest::default()
        }
    }

    /// Whether the catalog's `n` is this node as [`NodeInfo::register`] writes it.
    pub fn matches(&self, n: &Node) -> bool {
        let want = self.register();
        n.id == want.id
            && n.address == want.address
            && n.datacenter == want.datacenter
            && n.tagged_addresses == want.tagged_addresses
    }
}

/// How an agent check is run (the runner comes with health checking; the definition is
/// kept from registration on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// Set by the application through `check/pass|warn|fail` before the TTL runs out.
    Ttl(Duration),
    /// An HTTP GET (or `method`) of `url`: 2xx passing, 429 warning, else critical.
    Http {
        /// The URL.
        url: String,
        /// The method (GET by default).
        method: String,
        /// Extra request headers.
        header: BTreeMap<String, Vec<String>>,
        /// Request body.
        body: String,
        /// Skip certificate verification.
        tls_skip_verify: bool,
    },
    /// A TCP connect to `host:port`.
    Tcp(String),
    /// A command run with these arguments.
    Script(Vec<String>),
    /// Maintenance mode of the node or a service (Consul's `_node_maintenance`,
    /// `_service_maintenance:<id>`): critical while it exists, never run.
    Maintenance,
}

/// The check that puts the whole node in maintenance (Consul's ID).
pub const NODE_MAINTENANCE: &str = "_node_maintenance";

/// The check that puts service `id` in maintenance (Consul's ID).
pub fn service_maintenance_id(id: &str) -> String {
    format!("_service_maintenance:{id}")
}

impl CheckKind {
    /// Consul's `Type` string.
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckKind::Ttl(_) => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp(_) => "tcp",
            CheckKind::Script(_) => "script",
            CheckKind::Maintenance => "maintenance",
        }
    }
}

/// An agent check: its catalog shape plus how it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalCheck {
    /// The check as written to the catalog.
    pub def: CheckDefinition,
    /// How it runs.
    pub kind: CheckKind,
    /// How often (non-TTL checks).
    pub interval: Option<Duration>,
    /// Per-run timeout.
    pub timeout: Option<Duration>,
    /// Deregister the service after being critical this long.
    pub deregister_critical_after: Option<Duration>,
    /// Why the check does not run as registered (an interval or timeout raised to
    /// [`MIN_CHECK_INTERVAL`]): shown at the head of its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The shortest interval and timeout a check runs with (Consul's `MinInterval`): shorter
/// ones are raised to it, with a warning, so that no check can spin its agent.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl LocalCheck {
    /// The check with its interval and timeout raised to [`MIN_CHECK_INTERVAL`] where
    /// they were shorter, saying so in [`LocalCheck::warning`].
    pub fn with_minimums(mut self) -> LocalCheck {
        let mut raised = Vec::new();
        for (name, value) in [
            ("Interval", &mut self.interval),
            ("Timeout", &mut self.timeout),
        ] {
            if let Some(d) = value
                && *d < MIN_CHECK_INTERVAL
            {
                raised.push(format!(
                    "{name} {d:?} is below the minimum of {MIN_CHECK_INTERVAL:?}, using {MIN_CHECK_INTERVAL:?}"
                ));
                *d = MIN_CHECK_INTERVAL;
            }
        }
        if !raised.is_empty() {
            self.warning = Some(raised.join("; "));
        }
        self
    }
}

/// A refused agent registration (a client mistake: HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// The registration is incomplete or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// No such service or check on this agent.
    #[error("{0}")]
    Unknown(String),
}

/// The services and checks of this agent.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    /// Services by ID.
    pub services: BTreeMap<String, ServiceDefinition>,
    /// Checks by ID.
    pub checks: BTreeMap<String, LocalCheck>,
    /// The IDs of the services and checks that came from the config file: the next load
    /// of it (a start, `agent/reload`) replaces them, while those registered through the
    /// API are kept (as Consul's agent).
    #[serde(default)]
    pub from_config: FromConfig,
}

/// The services and checks the config file defines, by ID.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FromConfig {
    /// Service IDs.
    pub services: std::collections::BTreeSet<String>,
    /// Check IDs (of checks defined alone; a service's checks go with it).
    pub checks: std::collections::BTreeSet<String>,
}

/// A service definition with the checks defined inside it.
pub type ServiceWithChecks = (ServiceDefinition, Vec<LocalCheck>);

impl LocalState {
    /// Replaces what the config file defined before by `services` and `checks`, all or
    /// nothing: a definition that does not register leaves the state as it was.
    pub fn apply_config(
        &mut self,
        services: Vec<ServiceWithChecks>,
        checks: Vec<LocalCheck>,
    ) -> Result<(), LocalError> {
        let mut next = self.clone();
        // Maintenance outlives a reload (and a restart) of the service it holds down.
        let maintenance: Vec<LocalCheck> = next
            .checks
            .values()
            .filter(|c| c.kind == CheckKind::Maintenance && c.def.service_id.is_some())
            .cloned()
            .collect();
        for id in std::mem::take(&mut next.from_config.services) {
            let _ = next.remove_service(&id);
        }
        for id in std::mem::take(&mut next.from_config.checks) {
            next.checks.remove(&id);
        }
        for (def, service_checks) in services {
            let id = def.effective_id().to_string();
            next.add_service(def, service_checks, true)?;
            next.from_config.services.insert(id);
        }
        for mut check in checks {
            if check.def.check_id.is_empty() {
                check.def.check_id = check.def.name.clone();
            }
            let id = check.def.check_id.clone();
            next.add_check(check)?;
            next.from_config.checks.insert(id);
        }
        for m in maintenance {
            if m.def
                .service_id
                .as_ref()
                .is_some_and(|s| next.services.contains_key(s))
            {
                next.checks.insert(m.def.check_id.clone(), m);
            }
        }
        *self = next;
        Ok(())
    }

    /// Registers (or replaces) a service and the checks given with it. Checks without an
    /// ID get Consul's `service:<id>` (`service:<id>:N` when there are several). With
    /// `replace_checks`, the service's checks not given now are removed.
    pub fn add_service(
        &mut self,
        mut def: ServiceDefinition,
        mut checks: Vec<LocalCheck>,
        replace_checks: bool,
    ) -> Result<(), LocalError> {
        if def.service.is_empty() {
            return Err(LocalError::Invalid("Missing service name".into()));
        }
        let id = def.effective_id().to_string();
        def.id = id.clone();
        let several = checks.len() > 1;
        for (i, c) in checks.iter_mut().enumerate() {
            if c.def.check_id.is_empty() {
                c.def.check_id = if several {
                    format!("service:{id}:{}", i + 1)
                } else {
                    format!("service:{id}")
                };
            }
            if c.def.name.is_empty() {
                c.def.name = format!("Service '{}' check", def.service);
            }
            c.def.service_id = Some(id.clone());
        }
        if replace_checks {
            self.checks.retain(|_, c| {
                c.def.service_id.as_deref() != Some(id.as_str()) || c.kind == CheckKind::Maintenance
            });
        }
        self.services.insert(id, def);
        for c in checks {
            self.checks.insert(c.def.check_id.clone(), c);
        }
        Ok(())
    }

    /// Removes a service and its checks.
    pub fn remove_service(&mut self, id: &str) -> Result<(), LocalError> {
        if self.services.remove(id).is_none() {
            return Err(LocalError::Unknown(format!("Unknown service ID {id:?}")));
        }
        self.checks
            .retain(|_, c| c.def.service_id.as_deref() != Some(id));
        Ok(())
    }

    /// Registers (or replaces) a check; a service it names must be registered here.
    pub fn add_check(&mut self, mut check: LocalCheck) -> Result<(), LocalError> {
        if check.def.name.is_empty() {
            return Err(LocalError::Invalid("Missing check name".into()));
        }
        if check.def.check_id.is_empty() {
            check.def.check_id = check.def.name.clone();
        }
        if let Some(sid) = check.def.service_id.as_deref().filter(|s| !s.is_empty())
            && !self.services.contains_key(sid)
        {
            return Err(LocalError::Invalid(format!(
                "ServiceID {sid:?} does not exist"
            )));
        }
        self.checks.insert(check.def.check_id.clone(), check);
        Ok(())
    }

    /// Removes a check.
    pub fn remove_check(&mut self, id: &str) -> Result<(), LocalError> {
        self.checks
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| LocalError::Unknown(format!("Unknown check ID {id:?}")))
    }

    /// Sets a check's status and output (`check/pass|warn|fail`, TTL expiry).
    pub fn update_check(
        &mut self,
        id: &str,
        status: HealthStatus,
        output: String,
    ) -> Result<(), LocalError> {
        let c = self
            .checks
            .get_mut(id)
            .ok_or_else(|| LocalError::Unknown(format!("Unknown check ID {id:?}")))?;
        c.def.status = status;
        c.def.output = output;
        Ok(())
    }

    /// Puts the node (`service: None`) or one of its services in maintenance with
    /// `reason`, or takes it out (Consul's maintenance mode: a critical check, which takes
    /// the instances out of passing answers and DNS, kept across restarts).
    pub fn set_maintenance(
        &mut self,
        service: Option<&str>,
        enable: bool,
        reason: &str,
    ) -> Result<(), LocalError> {
        let (id, name, what) = match service {
            Some(sid) => {
                if !self.services.contains_key(sid) {
                    return Err(LocalError::Unknown(format!("Unknown service ID {sid:?}")));
                }
                (
                    service_maintenance_id(sid),
                    "Service Maintenance Mode",
                    "service",
                )
            }
            None => (
                NODE_MAINTENANCE.to_string(),
                "Node Maintenance Mode",
                "node",
            ),
        };
        if !enable {
            self.checks.remove(&id);
            return Ok(());
        }
        let notes = match reason {
            "" => format!(
                "Maintenance mode is enabled for this {what}, but no reason was provided. This is a default message."
            ),
            r => r.to_string(),
        };
        let check = LocalCheck {
            def: CheckDefinition {
                check_id: id.clone(),
                name: name.to_string(),
                status: HealthStatus::Critical,
                notes,
                output: String::new(),
                service_id: service.map(str::to_string),
                kind: String::new(),
            },
            kind: CheckKind::Maintenance,
            interval: None,
            timeout: None,
            deregister_critical_after: None,
            warning: None,
        };
        self.checks.insert(id, check);
        Ok(())
    }

    /// The catalog checks this agent's checks should be, on `node`, given its services.
    pub fn catalog_checks(&self, node: &str) -> BTreeMap<String, Check> {
        self.checks
            .values()
            .map(|c| {
                let service_id = c.def.service_id.clone().unwrap_or_default();
                let svc = self.services.get(&service_id);
                let check = Check {
                    node: node.to_string(),
                    check_id: c.def.check_id.clone(),
                    name: c.def.name.clone(),
                    status: c.def.status,
                    notes: c.def.notes.clone(),
                    output: c.def.output.clone(),
                    service_id,
                    service_name: svc.map(|s| s.service.clone()).unwrap_or_default(),
                    service_tags: svc.map(|s| s.tags.clone()).unwrap_or_default(),
                    kind: c.kind.as_str().to_string(),
                    create_index: 0,
                    modify_index: 0,
                };
                (c.def.check_id.clone(), check)
            })
            .collect()
    }
}

fn same_ignoring_indexes<T: Clone + PartialEq>(a: &T, b: &T, clear: impl Fn(&mut T)) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    clear(&mut a);
    clear(&mut b);
    a == b
}

/// What to write so that the catalog's view of `node` matches `local`: the catalog holds
/// `catalog_node` (if registered), `catalog_services` and `catalog_checks` for it now.
/// Nothing is written for what already matches, so a sync of an unchanged agent costs no
/// Raft write. Checks owned by others (`serfHealth`) are left alone.
pub fn sync_plan(
    node: &NodeInfo,
    local: &LocalState,
    catalog_node: Option<&Node>,
    catalog_services: &[Service],
    catalog_checks: &[Check],
) -> Vec<Command> {
    let mut plan = Vec::new();
    if !catalog_node.is_some_and(|n| node.matches(n)) {
        plan.push(Command::Register(Box::new(node.register())));
    }
    for s in catalog_services {
        if !local.services.contains_key(&s.id) && !FOREIGN_SERVICES.contains(&s.id.as_str()) {
            plan.push(Command::Deregister(DeregisterRequest {
                node: node.name.clone(),
                service_id: Some(s.id.clone()),
                check_id: None,
            }));
        }
    }
    let wanted_checks = local.catalog_checks(&node.name);
    for c in catalog_checks {
        let service_going = !c.service_id.is_empty() && !local.services.contains_key(&c.service_id);
        if !wanted_checks.contains_key(&c.check_id)
            && !FOREIGN_CHECKS.contains(&c.check_id.as_str())
            && !service_going
        {
            plan.push(Command::Deregister(DeregisterRequest {
                node: node.name.clone(),
                service_id: None,
                check_id: Some(c.check_id.clone()),
            }));
        }
    }
    let clear_service = |s: &mut Service| {
        s.create_index = 0;
        s.modify_index = 0;
    };
    let clear_check = |c: &mut Check| {
        c.create_index = 0;
        c.modify_index = 0;
    };
    for (id, def) in &local.services {
        let want = def.clone().into_service(node.name.clone());
        let have = catalog_services.iter().find(|s| &s.id == id);
        if !have.is_some_and(|h| same_ignoring_indexes(h, &want, clear_service)) {
            let mut req = node.register();
            req.service = Some(def.clone());
            plan.push(Command::Register(Box::new(req)));
        }
    }
    for (id, want) in &wanted_checks {
        let have = catalog_checks.iter().find(|c| &c.check_id == id);
        if !have.is_some_and(|h| same_ignoring_indexes(h, want, clear_check)) {
            let local_check = &local.checks[id];
            let mut req = node.register();
            let mut def = local_check.def.clone();
            def.kind = local_check.kind.as_str().to_string();
            req.checks = vec![def];
            plan.push(Command::Register(Box::new(req)));
        }
    }
    plan
}

/// The agent's local state, shared by its HTTP handlers and the anti-entropy loop, and
/// kept in a file of the data dir so that a restarted agent still has its services (as
/// Consul's agent does).
pub struct LocalAgent {
    /// This agent's node.
    pub node: NodeInfo,
    state: Mutex<LocalState>,
    changed: Notify,
    /// Bumped on every change, for the check runner (anti-entropy uses `changed`).
    version: tokio::sync::watch::Sender<u64>,
    /// When each TTL check was last set by its application.
    refreshed: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    file: PathBuf,
}

impl LocalAgent {
    /// An agent whose state lives in `file`: read back now (an unreadable file is logged
    /// and set aside, the agent starts empty), rewritten atomically after every change.
    pub fn persistent(node: NodeInfo, file: PathBuf) -> LocalAgent {
        let state = match std::fs::read(&file) {
            Ok(bytes) => rmp_serde::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %file.display(), error = %e, "unreadable agent state set aside");
                let _ = std::fs::rename(&file, file.with_extension("corrupt"));
                LocalState::default()
            }),
            Err(_) => LocalState::default(),
        };
        LocalAgent {
            node,
            state: Mutex::new(state),
            changed: Notify::new(),
            version: tokio::sync::watch::channel(0).0,
            refreshed: Mutex::new(std::collections::HashMap::new()),
            file,
        }
    }

    fn save(&self, state: &LocalState) {
        let file = &self.file;
        let tmp = file.with_extension("tmp");
        let written = rmp_serde::to_vec_named(state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            warn!(file = %file.display(), error = %e, "cannot save agent state");
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> LocalState {
        self.state.lock().expect("local state lock").clone()
    }

    /// Runs `f` on the state; a success wakes anti-entropy to sync the change.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut LocalState) -> Result<T, LocalError>,
    ) -> Result<T, LocalError> {
        let mut state = self.state.lock().expect("local state lock");
        let before = state.clone();
        let out = f(&mut state)?;
        if *state != before {
            self.save(&state);
            drop(state);
            self.version.send_modify(|v| *v += 1);
            self.changed.notify_one();
        }
        Ok(out)
    }

    /// The current status of check `id`, if registered (cheap: no copy of the state).
    pub fn check_status(&self, id: &str) -> Option<HealthStatus> {
        let state = self.state.lock().expect("local state lock");
        state.checks.get(id).map(|c| c.def.status)
    }

    /// A receiver that changes whenever the state does.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Sets a check's status as its application does (`check/pass|warn|fail|update`): for
    /// a TTL check this also restarts its TTL.
    pub fn set_check(
        &self,
        id: &str,
        status: HealthStatus,
        output: String,
    ) -> Result<(), LocalError> {
        self.update(|l| l.update_check(id, status, output))?;
        self.refreshed
            .lock()
            .expect("refresh lock")
            .insert(id.to_string(), std::time::Instant::now());
        Ok(())
    }

    /// When the application last set check `id` (`None`: never since this agent started).
    pub fn last_refresh(&self, id: &str) -> Option<std::time::Instant> {
        self.refreshed
            .lock()
            .expect("refresh lock")
            .get(id)
            .copied()
    }

    /// Resolves when the state changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    fn node() -> NodeInfo {
        NodeInfo {
            id: "0000".into(),
            name: "n1".into(),
            address: "127.0.0.1".into(),
            datacenter: "dc1".into(),
            server: false,
            port: 8300,
        }
    }

    fn ttl_check(id: &str) -> LocalCheck {
        LocalCheck {
            def: CheckDefinition {
                check_id: id.into(),
                name: id.into(),
                ..CheckDefinition::default()
            },
            kind: CheckKind::Ttl(Duration::from_secs(10)),
            interval: None,
            timeout: None,
            warning: None,
            deregister_critical_after: None,
        }
    }

    fn web() -> ServiceDefinition {
        ServiceDefinition {
            id: "web-1".into(),
            service: "web".into(),
            port: 80,
            ..ServiceDefinition::default()
        }
    }

    /// Applies the plan to `state` and returns the next plan, which must be empty.
    fn sync(state: &mut State, local: &LocalState, at: &mut u64) -> usize {
        let plan_of = |s: &State| {
            let services: Vec<Service> = s.node_services("n1").cloned().collect();
            let checks: Vec<Check> = s.node_checks("n1").cloned().collect();
            sync_plan(&node(), local, s.node("n1"), &services, &checks)
        };
        let plan = plan_of(state);
        let n = plan.len();
        for cmd in plan {
            *at += 1;
            let r = state.apply(*at, cmd, std::time::Instant::now());
            assert_eq!(r, crate::state::CommandResult::Ok);
        }
        assert_eq!(plan_of(state), vec![], "a second sync writes nothing");
        n
    }

    #[test]
    fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent-local");
        let a = LocalAgent::persistent(node(), file.clone());
        a.update(|l| l.add_service(web(), vec![ttl_check("")], false))
            .unwrap();
        let b = LocalAgent::persistent(node(), file.clone());
        assert_eq!(b.snapshot(), a.snapshot());
        std::fs::write(&file, b"garbage").unwrap();
        let c = LocalAgent::persistent(node(), file);
        assert_eq!(
            c.snapshot(),
            LocalState::default(),
            "a corrupt file is set aside"
        );
    }

    #[test]
    fn a_config_load_replaces_its_own_definitions_and_keeps_the_rest() {
        let mut l = LocalState::default();
        let api = ServiceDefinition {
            id: "api".into(),
            service: "api".into(),
            ..ServiceDefinition::default()
        };
        l.add_service(api, vec![], false).unwrap();
        l.apply_config(vec![(web(), vec![ttl_check("")])], vec![ttl_check("disk")])
            .unwrap();
        l.set_maintenance(Some("web-1"), true, "").unwrap();
        l.set_maintenance(None, true, "moving racks").unwrap();
        assert_eq!(
            l.checks[NODE_MAINTENANCE].def.notes, "moving racks",
            "the reason is the notes"
        );
        assert!(
            l.checks["_service_maintenance:web-1"]
                .def
                .notes
                .contains("no reason was provided")
        );

        // The file changes: web keeps its maintenance, the disk check is gone.
        let mut moved = web();
        moved.port = 81;
        l.apply_config(vec![(moved, vec![])], vec![]).unwrap();
        assert_eq!(l.services["web-1"].port, 81);
        assert!(
            l.services.contains_key("api"),
            "registered through the API: kept"
        );
        let ids: Vec<&str> = l.checks.keys().map(String::as_str).collect();
        assert_eq!(ids, [NODE_MAINTENANCE, "_service_maintenance:web-1"]);

        // A definition that does not register changes nothing.
        let before = l.clone();
        let nameless = ServiceDefinition::default();
        assert!(l.apply_config(vec![(nameless, vec![])], vec![]).is_err());
        assert_eq!(l, before);

        // Disabled, and gone with the service.
        l.set_maintenance(None, false, "").unwrap();
        l.apply_config(vec![], vec![]).unwrap();
        assert_eq!(l.services.keys().collect::<Vec<_>>(), ["api"]);
        assert!(l.checks.is_empty(), "{:?}", l.checks);
        assert!(l.set_maintenance(Some("web-1"), true, "").is_err());
    }

    #[test]
    fn checks_get_consul_ids() {
        let mut l = LocalState::default();
        l.add_service(web(), vec![ttl_check(""), ttl_check("")], false)
            .unwrap();
        let ids: Vec<&String> = l.checks.keys().collect();
        assert_eq!(ids, ["service:web-1:1", "service:web-1:2"]);
        let mut l = LocalState::default();
        l.add_service(web(), vec![ttl_check("")], false).unwrap();
        assert!(l.checks.contains_key("service:web-1"));
        assert!(l.add_check(ttl_check("x")).is_ok());
        let mut orphan = ttl_check("y");
        orphan.def.service_id = Some("nope".into());
        assert!(matches!(l.add_check(orphan), Err(LocalError::Invalid(_))));
        l.remove_service("web-1").unwrap();
        assert_eq!(l.checks.keys().collect::<Vec<_>>(), ["x"]);
        assert!(l.remove_service("web-1").is_err());
    }

    #[test]
    fn sync_converges_and_is_idempotent() {
        let mut s = State::default();
        let mut at = 0;
        let mut l = LocalState::default();
        l.add_service(web(), vec![ttl_check("")], false).unwrap();
        assert_eq!(sync(&mut s, &l, &mut at), 3, "node, service, check");
        assert_eq!(s.node_checks("n1").next().unwrap().kind, "ttl");

        l.update_check("service:web-1", HealthStatus::Passing, "ok".into())
            .unwrap();
        assert_eq!(sync(&mut s, &l, &mut at), 1, "only the check changed");
        assert_eq!(
            s.node_checks("n1").next().unwrap().status,
            HealthStatus::Passing
        );

        // Someone wipes the node from the catalog: everything is re-asserted.
        at += 1;
        s.apply(
            at,
            Command::Deregister(DeregisterRequest {
                node: "n1".into(),
                ..DeregisterRequest::default()
            }),
            std::time::Instant::now(),
        );
        assert_eq!(sync(&mut s, &l, &mut at), 3);

        // A leader-owned check and a stray service registered through the catalog.
        at += 1;
        let mut stray = node().register();
        stray.service = Some(ServiceDefinition {
            service: "stray".into(),
            ..ServiceDefinition::default()
        });
        stray.checks = vec![CheckDefinition {
            check_id: "serfHealth".into(),
            name: "Serf Health Status".into(),
            ..CheckDefinition::default()
        }];
        s.apply(
            at,
            Command::Register(Box::new(stray)),
            std::time::Instant::now(),
        );
        assert_eq!(sync(&mut s, &l, &mut at), 1, "the stray service goes");
        assert!(s.node_checks("n1").any(|c| c.check_id == "serfHealth"));

        l.remove_service("web-1").unwrap();
        assert_eq!(sync(&mut s, &l, &mut at), 1);
        assert_eq!(s.node_services("n1").count(), 0);
        assert_eq!(s.node_checks("n1").count(), 1, "serfHealth stays");
    }
}
