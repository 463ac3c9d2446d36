//! The catalog: nodes, service instances and health checks, registered and deregistered
//! as Consul's catalog endpoints do, and the lookups the HTTP API and DNS make of them.

use std::time::Instant;

use super::{
    Check, CommandResult, Counts, DeregisterRequest, HealthStatus, Node, NodeKey, RegisterRequest,
    Service, State, Table, node_range, remove_in, upsert,
};

impl State {
    pub(super) fn register(
        &mut self,
        index: u64,
        req: RegisterRequest,
        now: Instant,
    ) -> CommandResult {
        if req.node.is_empty() {
            return CommandResult::Rejected("Must provide node".into());
        }
        if let Some(svc) = &req.service
            && svc.service.is_empty()
        {
            return CommandResult::Rejected("Must provide service name".into());
        }
        for c in &req.checks {
            if let Some(sid) = c.service_id.as_deref().filter(|s| !s.is_empty()) {
                let known = req
                    .service
                    .as_ref()
                    .is_some_and(|s| s.effective_id() == sid)
                    || self
                        .data
                        .services
                        .contains_key(&(req.node.clone(), sid.to_string()));
                if !known {
                    return CommandResult::Rejected(format!(
                        "Unknown service ID '{sid}' for check"
                    ));
                }
            }
        }
        // Each entry is written only if something about it changed, so that anti-entropy
        // re-asserting the same registration moves no index.
        let node = Node {
            id: req.id.clone(),
            node: req.node.clone(),
            address: req.address.clone(),
            datacenter: req.datacenter.clone(),
            tagged_addresses: req.tagged_addresses.clone(),
            meta: req.node_meta.clone(),
            create_index: 0,
            modify_index: 0,
        };
        if upsert(&mut self.data.nodes, req.node.clone(), node, index) {
            self.touch(Table::Nodes, index);
        }
        if let Some(def) = req.service {
            let key = (req.node.clone(), def.effective_id().to_string());
            let service = def.into_service(req.node.clone());
            if let Some(old) = self.data.services.get(&key)
                && old.service != service.service
            {
                self.unindex_service(&key, &old.service.clone());
            }
            self.by_name
                .entry(service.service.clone())
                .or_default()
                .insert(key.clone());
            if upsert(&mut self.data.services, key, service, index) {
                self.touch(Table::Services, index);
            }
        }
        let mut gone_critical = Vec::new();
        for def in req.checks {
            let key = (req.node.clone(), def.check_id.clone());
            if def.status == HealthStatus::Critical
                && self
                    .data
                    .checks
                    .get(&key)
                    .is_none_or(|c| c.status != HealthStatus::Critical)
            {
                gone_critical.push(def.check_id.clone());
            }
            let service_id = def.service_id.unwrap_or_default();
            let (service_name, service_tags) = self
                .data
                .services
                .get(&(req.node.clone(), service_id.clone()))
                .map_or((String::new(), Vec::new()), |s| {
                    (s.service.clone(), s.tags.clone())
                });
            let check = Check {
                node: req.node.clone(),
                check_id: def.check_id,
                name: def.name,
                status: def.status,
                notes: def.notes,
                output: def.output,
                service_id,
                service_name,
                service_tags,
                kind: def.kind,
                create_index: 0,
                modify_index: 0,
            };
            if upsert(&mut self.data.checks, key, check, index) {
                self.touch(Table::Checks, index);
            }
        }
        if !gone_critical.is_empty() {
            self.invalidate_for(index, &req.node, Some(&gone_critical), now);
        }
        CommandResult::Ok
    }

    pub(super) fn deregister(
        &mut self,
        index: u64,
        req: DeregisterRequest,
        now: Instant,
    ) -> CommandResult {
        if let Some(check_id) = req.check_id {
            if self
                .data
                .checks
                .remove(&(req.node.clone(), check_id.clone()))
                .is_some()
            {
                self.touch(Table::Checks, index);
                self.invalidate_for(index, &req.node, Some(&[check_id]), now);
            }
            return CommandResult::Ok;
        }
        let range = node_range(&req.node);
        if let Some(service_id) = req.service_id {
            let key = (req.node.clone(), service_id.clone());
            if let Some(old) = self.data.services.remove(&key) {
                self.unindex_service(&key, &old.service);
                self.touch(Table::Services, index);
            }
            let removed: Vec<String> = self
                .data
                .checks
                .range(range.clone())
                .filter(|(_, c)| c.service_id == service_id)
                .map(|(_, c)| c.check_id.clone())
                .collect();
            if remove_in(&mut self.data.checks, range, |c| c.service_id == service_id) {
                self.touch(Table::Checks, index);
                self.invalidate_for(index, &req.node, Some(&removed), now);
            }
            return CommandResult::Ok;
        }
        if self.data.nodes.remove(&req.node).is_some() {
            self.touch(Table::Nodes, index);
        }
        self.coordinate_remove(index, &req.node);
        let gone: Vec<(NodeKey, String)> = self
            .data
            .services
            .range(range.clone())
            .map(|(k, s)| (k.clone(), s.service.clone()))
            .collect();
        for (key, name) in &gone {
            self.data.services.remove(key);
            self.unindex_service(key, name);
        }
        if !gone.is_empty() {
            self.touch(Table::Services, index);
        }
        if remove_in(&mut self.data.checks, range, |_| true) {
            self.touch(Table::Checks, index);
        }
        self.invalidate_for(index, &req.node, None, now);
        CommandResult::Ok
    }

    pub(super) fn unindex_service(&mut self, key: &NodeKey, name: &str) {
        if let Some(keys) = self.by_name.get_mut(name) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// What the catalog and KV store hold, counted (for the metrics a scrape reads).
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            nodes: self.data.nodes.len(),
            services: self.by_name.len(),
            instances: self.data.services.len(),
            kv_keys: self.data.kv.len(),
            ..Counts::default()
        };
        for check in self.data.checks.values() {
            match check.status {
                HealthStatus::Passing => c.passing += 1,
                HealthStatus::Warning => c.warning += 1,
                HealthStatus::Critical => c.critical += 1,
            }
        }
        c
    }

    /// All nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.data.nodes.values()
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.data.nodes.get(name)
    }

    /// Every service instance, ordered by (node, service ID).
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.data.services.values()
    }

    /// The service instances registered on `node`.
    pub fn node_services<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Service> + 'a {
        self.data.services.range(node_range(node)).map(|(_, s)| s)
    }

    /// The instances of the service called `name`, ordered by (node, service ID). Names
    /// match case-insensitively, as in Consul (and DNS): the exact name first, else every
    /// name equal but for case.
    pub fn service_instances<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        let exact = self.by_name.get(name);
        let others = exact
            .is_none()
            .then(|| {
                self.by_name
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, keys)| keys)
            })
            .into_iter()
            .flatten();
        exact
            .into_iter()
            .chain(others)
            .flatten()
            .filter_map(|k| self.data.services.get(k))
    }

    /// The node called `name`, matched as [`State::service_instances`] matches names.
    pub fn node_named(&self, name: &str) -> Option<&Node> {
        self.data.nodes.get(name).or_else(|| {
            self.data
                .nodes
                .values()
                .find(|n| n.node.eq_ignore_ascii_case(name))
        })
    }

    /// Every service name with its instances, in name order.
    pub fn service_names(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &Service>)> {
        self.by_name.iter().map(|(name, keys)| {
            (
                name.as_str(),
                keys.iter().filter_map(|k| self.data.services.get(k)),
            )
        })
    }

    /// Every check, ordered by (node, check ID).
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.data.checks.values()
    }

    /// The checks registered on `node`.
    pub fn node_checks<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Check> + 'a {
        self.data.checks.range(node_range(node)).map(|(_, c)| c)
    }
}
