//! What a token needs for each command, and which part of each query's answer it may see
//! (Consul's rules), checked by the server that holds the data. One exhaustive match per
//! type: a new command or result cannot be added without saying what it needs.
//!
//! Writes are refused whole (403 naming the permission); a single KV key read without
//! `key:read` is refused; every other read is filtered down to what the token may read,
//! and says whether anything was removed (`X-Consul-Results-Filtered-By-ACLs`).

use crate::acl::{Access, AclError, Authorizer, Permission, Resource, Scalar};

use super::query::{Query, QueryResult};
use super::txn::{CatalogTarget, CatalogVerb, KvOp, TxnOp, TxnOutcome, TxnResult};
use super::{Command, RegisterRequest, State};

impl State {
    /// Whether `authz` may apply `cmd` to this state.
    pub fn authorize_command(&self, authz: &Authorizer, cmd: &Command) -> Result<(), AclError> {
        let need = |kind, name: &str, a| authz.check(&Permission::named(kind, name, a));
        match cmd {
            Command::Register(req) => self.authorize_register(authz, req),
            Command::Deregister(req) => match (&req.service_id, &req.check_id) {
                (Some(id), _) => match self.data.services.get(&(req.node.clone(), id.clone())) {
                    Some(s) => need(Resource::Service, &s.service, Access::Write),
                    None => need(Resource::Node, &req.node, Access::Write),
                },
                (None, Some(id)) => match self.data.checks.get(&(req.node.clone(), id.clone())) {
                    Some(c) if !c.service_name.is_empty() => {
                        need(Resource::Service, &c.service_name, Access::Write)
                    }
                    _ => need(Resource::Node, &req.node, Access::Write),
                },
                (None, None) => need(Resource::Node, &req.node, Access::Write),
            },
            Command::KvSet { key, .. }
            | Command::KvCas { key, .. }
            | Command::KvDelete { key }
            | Command::KvDeleteCas { key, .. }
            | Command::KvAcquire { key, .. }
            | Command::KvRelease { key, .. } => need(Resource::Key, key, Access::Write),
            Command::KvDeleteTree { prefix } => {
                if authz.allows_write_under(Resource::Key, prefix) {
                    Ok(())
                } else {
                    authz.check(&Permission::named(Resource::Key, prefix, Access::Write))?;
                    Err(AclError::PermissionDenied {
                        accessor: authz.accessor().to_string(),
                        permission: format!("permission 'key:write' on every key under {prefix:?}"),
                    })
                }
            }
            Command::Txn(ops) => ops
                .iter()
                .try_for_each(|op| self.authorize_txn_op(authz, op)),
            Command::SessionCreate(s) => need(Resource::Session, &s.node, Access::Write),
            // An unknown session has no node to check: only a token that may end any
            // session's (`session_prefix ""`) learns that it is unknown.
            Command::SessionDestroy { id } => match self.data.sessions.get(id) {
                Some(s) => need(Resource::Session, &s.node, Access::Write),
                None => need(Resource::Session, "", Access::Write),
            },
            // Bootstrap needs no token: the command itself succeeds only once.
            Command::AclBootstrap(_) => Ok(()),
            Command::AclPolicySet(_)
            | Command::AclPolicyDelete { .. }
            | Command::AclRoleSet(_)
            | Command::AclRoleDelete { .. }
            | Command::AclTokenSet(_)
            | Command::AclTokenDelete { .. }
            | Command::AclReplicated
            // Consul: a snapshot restore takes a management token (it replaces the ACLs too).
            | Command::Restore { .. } => {
                authz.check(&Permission::scalar(Scalar::Acl, Access::Write))
            }
            // Consul: `query:write` on the name (an unnamed query: on its prefix ""); a
            // change also needs it on the name the query had.
            Command::PreparedQueryCreate(q) | Command::PreparedQueryUpdate(q) => {
                need(Resource::Query, &q.name, Access::Write)?;
                match self.data.prepared_queries.get(&q.id) {
                    Some(old) => need(Resource::Query, &old.name, Access::Write),
                    None => Ok(()),
                }
            }
            Command::PreparedQueryDelete { id } => match self.data.prepared_queries.get(id) {
                Some(old) => need(Resource::Query, &old.name, Access::Write),
                None => need(Resource::Query, "", Access::Write),
            },
            Command::CoordinatesUpdate(updates) => updates
                .iter()
                .try_for_each(|u| need(Resource::Node, &u.node, Access::Write)),
            Command::Batch(cmds) => cmds
                .iter()
                .try_for_each(|c| self.authorize_command(authz, c)),
        }
    }

    /// What one transaction operation needs: `key:read` to read or check a key, `key:write`
    /// to change it, and on every key under the prefix for the tree verbs (as Consul).
    /// A catalog operation needs what the same registration or deregistration does, or
    /// `node:read` (and `service:read` on the service's name) to read.
    pub fn authorize_txn_op(&self, authz: &Authorizer, op: &TxnOp) -> Result<(), AclError> {
        let op = match op {
            TxnOp::Kv(op) => op,
            TxnOp::Catalog(c) => {
                return match c.verb {
                    CatalogVerb::Get => {
                        check_txn_read(authz, op)?;
                        match self
                            .data
                            .services
                            .get(&(c.req.node.clone(), c.id().to_string()))
                        {
                            Some(s) if c.target == CatalogTarget::Service => authz.check(
                                &Permission::named(Resource::Service, &s.service, Access::Read),
                            ),
                            _ => Ok(()),
                        }
                    }
                    CatalogVerb::Set | CatalogVerb::Cas => {
                        self.authorize_command(authz, &Command::Register(Box::new(c.req.clone())))
                    }
                    CatalogVerb::Delete | CatalogVerb::DeleteCas => {
                        let id = (!c.id().is_empty()).then(|| c.id().to_string());
                        self.authorize_command(
                            authz,
                            &Command::Deregister(super::DeregisterRequest {
                                node: c.req.node.clone(),
                                service_id: id
                                    .clone()
                                    .filter(|_| c.target == CatalogTarget::Service),
                                check_id: id.filter(|_| c.target == CatalogTarget::Check),
                            }),
                        )
                    }
                };
            }
        };
        use super::txn::KvVerb;
        let key = op.key.as_str();
        match op.verb {
            KvVerb::DeleteTree => self.authorize_command(
                authz,
                &Command::KvDeleteTree {
                    prefix: key.to_string(),
                },
            ),
            verb if verb.writes() => {
                authz.check(&Permission::named(Resource::Key, key, Access::Write))
            }
            _ => authz.check(&Permission::named(Resource::Key, key, Access::Read)),
        }
    }

    /// A registration needs `node:write` when it makes or changes the node or carries a
    /// node check, and `service:write` on each service it registers or checks.
    fn authorize_register(
        &self,
        authz: &Authorizer,
        req: &RegisterRequest,
    ) -> Result<(), AclError> {
        let need = |kind, name: &str| authz.check(&Permission::named(kind, name, Access::Write));
        let node_changes = match self.data.nodes.get(&req.node) {
            None => true,
            Some(n) => {
                n.address != req.address
                    || n.tagged_addresses != req.tagged_addresses
                    || (!req.node_meta.is_empty() && n.meta != req.node_meta)
            }
        };
        if node_changes {
            need(Resource::Node, &req.node)?;
        }
        if let Some(s) = &req.service {
            need(Resource::Service, &s.service)?;
        }
        for check in &req.checks {
            match &check.service_id {
                None => need(Resource::Node, &req.node)?,
                Some(id) => {
                    let name = req
                        .service
                        .as_ref()
                        .filter(|s| s.id == *id || (s.id.is_empty() && s.service == *id))
                        .map(|s| s.service.clone())
                        .or_else(|| {
                            self.data
                                .services
                                .get(&(req.node.clone(), id.clone()))
                                .map(|s| s.service.clone())
                        });
                    match name {
                        Some(name) => need(Resource::Service, &name)?,
                        None => need(Resource::Node, &req.node)?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// What of `result` (the answer to `query`) `authz` may see, and whether anything was
/// removed; a single KV key the token may not read is refused instead.
pub fn filter_result(
    authz: &Authorizer,
    query: &Query,
    result: QueryResult,
) -> Result<(QueryResult, bool), AclError> {
    let can = |kind, name: &str| authz.allows_named(kind, name, Access::Read);
    // A read-only transaction needs what each of its operations does, or is refused whole.
    if let Query::Txn(ops) = query {
        ops.iter().try_for_each(|op| check_txn_read(authz, op))?;
    }
    if let Query::KvGet { key } = query {
        // Its answer is that one key (or nothing): checked once, nothing to filter.
        if can(Resource::Key, key) {
            return Ok((result, false));
        }
        authz.check(&Permission::named(
            Resource::Key,
            key.as_str(),
            Access::Read,
        ))?;
    }
    let mut removed = false;
    let mut keep = |ok: bool| {
        removed |= !ok;
        ok
    };
    let out = match result {
        QueryResult::Kv(mut v) => {
            v.retain(|e| keep(can(Resource::Key, &e.key)));
            QueryResult::Kv(v)
        }
        QueryResult::Keys(mut v) => {
            v.retain(|k| keep(can(Resource::Key, k)));
            QueryResult::Keys(v)
        }
        QueryResult::Nodes(mut v) => {
            v.retain(|n| keep(can(Resource::Node, &n.node)));
            QueryResult::Nodes(v)
        }
        QueryResult::ServiceSummaries(mut v) => {
            v.retain(|sum| keep(can(Resource::Service, &sum.name)));
            QueryResult::ServiceSummaries(v)
        }
        QueryResult::ServiceTags(mut m) => {
            m.retain(|name, _| keep(can(Resource::Service, name)));
            QueryResult::ServiceTags(m)
        }
        QueryResult::ServiceNodes(mut v) => {
            v.retain(|(n, s)| {
                keep(can(Resource::Node, &n.node) && can(Resource::Service, &s.service))
            });
            QueryResult::ServiceNodes(v)
        }
        QueryResult::NodeServices(Some((node, mut services))) => {
            if keep(can(Resource::Node, &node.node)) {
                services.retain(|s| keep(can(Resource::Service, &s.service)));
                QueryResult::NodeServices(Some((node, services)))
            } else {
                QueryResult::NodeServices(None)
            }
        }
        QueryResult::NodeServices(None) => QueryResult::NodeServices(None),
        QueryResult::Health(mut v) => {
            v.retain(|h| {
                keep(
                    can(Resource::Node, &h.node.node) && can(Resource::Service, &h.service.service),
                )
            });
            QueryResult::Health(v)
        }
        QueryResult::Checks(mut v) => {
            v.retain(|c| {
                keep(if c.service_name.is_empty() {
                    can(Resource::Node, &c.node)
                } else {
                    can(Resource::Service, &c.service_name)
                })
            });
            QueryResult::Checks(v)
        }
        QueryResult::Sessions(mut v) => {
            v.retain(|s| keep(can(Resource::Session, &s.node)));
            QueryResult::Sessions(v)
        }
        // Whoever holds a secret may read its token; everything else of the ACL system
        // needs `acl:read`, and a token's secret `acl:write`.
        QueryResult::AclTokens(v) if matches!(query, Query::AclTokenSelf { .. }) => {
            QueryResult::AclTokens(v)
        }
        QueryResult::AclTokens(mut v) => {
            authz.check(&Permission::scalar(Scalar::Acl, Access::Read))?;
            if !authz.allows(&Permission::scalar(Scalar::Acl, Access::Write)) {
                for t in &mut v {
                    t.secret_id = "<hidden>".into();
                }
            }
            QueryResult::AclTokens(v)
        }
        // Replication copies secrets: it needs `acl:write`.
        r @ QueryResult::AclSet(_) => {
            authz.check(&Permission::scalar(Scalar::Acl, Access::Write))?;
            r
        }
        // A definition's token is shown only to who may change the ACL system (as Consul).
        QueryResult::PreparedQueries(mut v) => {
            v.retain(|q| keep(can(Resource::Query, &q.name)));
            if !authz.allows(&Permission::scalar(Scalar::Acl, Access::Write)) {
                for q in &mut v {
                    if !q.token.is_empty() {
                        q.token = "<hidden>".into();
                    }
                }
            }
            QueryResult::PreparedQueries(v)
        }
        QueryResult::Txn(outcome) => {
            // A service or check read by ID: its service's name is known only now.
            if let TxnOutcome::Applied(results) = &outcome {
                for r in results {
                    match r {
                        TxnResult::Service(s) => authz.check(&Permission::named(
                            Resource::Service,
                            &s.service,
                            Access::Read,
                        ))?,
                        TxnResult::Check(c) if !c.service_name.is_empty() => authz.check(
                            &Permission::named(Resource::Service, &c.service_name, Access::Read),
                        )?,
                        _ => {}
                    }
                }
            }
            QueryResult::Txn(outcome)
        }
        QueryResult::Coordinates(mut v) => {
            v.retain(|c| keep(can(Resource::Node, &c.node)));
            QueryResult::Coordinates(v)
        }
        r @ (QueryResult::AclPolicies(_) | QueryResult::AclRoles(_)) => {
            authz.check(&Permission::scalar(Scalar::Acl, Access::Read))?;
            r
        }
    };
    Ok((out, removed))
}

/// What a read or check of a transaction needs (`key:read`; on every key under the
/// prefix for `get-tree`).
fn check_txn_read(authz: &Authorizer, op: &TxnOp) -> Result<(), AclError> {
    let op: &KvOp = match op {
        TxnOp::Kv(op) => op,
        TxnOp::Catalog(c) => {
            return authz.check(&Permission::named(
                Resource::Node,
                &c.req.node,
                Access::Read,
            ));
        }
    };
    let key = op.key.as_str();
    if op.verb == super::txn::KvVerb::GetTree && !authz.allows_read_under(Resource::Key, key) {
        authz.check(&Permission::named(Resource::Key, key, Access::Read))?;
        return Err(AclError::PermissionDenied {
            accessor: authz.accessor().to_string(),
            permission: format!("permission 'key:read' on every key under {key:?}"),
        });
    }
    authz.check(&Permission::named(Resource::Key, key, Access::Read))
}
