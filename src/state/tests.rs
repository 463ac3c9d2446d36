use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::query::{Query, QueryResult};
use super::*;

/// The clock every apply in these tests sees: one fixed instant, so that the state's soft
/// timing (lock-delays) is checked against instants chosen by the test.
fn now() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn reg(node: &str, svc: Option<(&str, &str)>, checks: Vec<CheckDefinition>) -> Command {
    Command::Register(Box::new(RegisterRequest {
        node: node.into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        service: svc.map(|(id, name)| ServiceDefinition {
            id: id.into(),
            service: name.into(),
            port: 80,
            ..Default::default()
        }),
        checks,
        ..Default::default()
    }))
}

fn set(key: &str, v: &str) -> Command {
    Command::KvSet {
        key: key.into(),
        value: bytes::Bytes::copy_from_slice(v.as_bytes()),
        flags: 0,
    }
}

#[test]
fn kv_indexes_and_cas() {
    let mut s = State::default();
    assert_eq!(s.max_index(&[Table::Kv]), 1, "never below 1");
    assert_eq!(s.apply(5, set("a", "1"), now()), CommandResult::Bool(true));
    assert_eq!(s.apply(6, set("a", "2"), now()), CommandResult::Bool(true));
    let e = s.kv_get("a").unwrap();
    assert_eq!(
        (e.create_index, e.modify_index, &e.value[..]),
        (5, 6, &b"2"[..])
    );
    let cas = |index| Command::KvCas {
        key: "a".into(),
        value: bytes::Bytes::from_static(b"3"),
        flags: 9,
        index,
    };
    assert_eq!(
        s.apply(7, cas(5), now()),
        CommandResult::Bool(false),
        "stale index"
    );
    assert_eq!(s.apply(8, cas(6), now()), CommandResult::Bool(true));
    assert_eq!(s.kv_get("a").unwrap().flags, 9);
    let create_only = Command::KvCas {
        key: "b".into(),
        value: bytes::Bytes::new(),
        flags: 0,
        index: 0,
    };
    assert_eq!(
        s.apply(9, create_only.clone(), now()),
        CommandResult::Bool(true)
    );
    assert_eq!(s.apply(10, create_only, now()), CommandResult::Bool(false));
    assert_eq!(s.index(Table::Kv), 9, "a failed CAS changes nothing");
    assert_eq!(
        s.apply(
            11,
            Command::KvDeleteCas {
                key: "a".into(),
                index: 1
            },
            now()
        ),
        CommandResult::Bool(false)
    );
    assert_eq!(
        s.apply(
            12,
            Command::KvDeleteCas {
                key: "a".into(),
                index: 8
            },
            now()
        ),
        CommandResult::Bool(true)
    );
    assert!(s.kv_get("a").is_none());
}

#[test]
fn kv_prefix_and_delete_tree() {
    let mut s = State::default();
    for (i, k) in ["app/a", "app/b/c", "apple", "b"].iter().enumerate() {
        s.apply(i as u64 + 1, set(k, "x"), now());
    }
    let keys: Vec<_> = s.kv_prefix("app/").map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["app/a", "app/b/c"]);
    s.apply(
        10,
        Command::KvDeleteTree {
            prefix: "app/".into(),
        },
        now(),
    );
    let keys: Vec<_> = s.kv_prefix("").map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["apple", "b"]);
    assert_eq!(s.index(Table::Kv), 10);
    s.apply(
        11,
        Command::KvDeleteTree {
            prefix: "zzz".into(),
        },
        now(),
    );
    assert_eq!(s.index(Table::Kv), 10, "deleting nothing is not a change");
}

#[test]
fn register_is_idempotent_and_deregister_cascades() {
    let mut s = State::default();
    let check = CheckDefinition {
        check_id: "service:web-1".into(),
        name: "web alive".into(),
        status: HealthStatus::Passing,
        service_id: Some("web-1".into()),
        ..Default::default()
    };
    assert_eq!(
        s.apply(
            3,
            reg("n1", Some(("web-1", "web")), vec![check.clone()]),
            now()
        ),
        CommandResult::Ok
    );
    assert_eq!(
        (
            s.index(Table::Nodes),
            s.index(Table::Services),
            s.index(Table::Checks)
        ),
        (3, 3, 3)
    );
    let c = s.node_checks("n1").next().unwrap();
    assert_eq!(
        (c.service_name.as_str(), c.status),
        ("web", HealthStatus::Passing)
    );

    // The same registration again changes no index (anti-entropy re-asserts often).
    s.apply(
        4,
        reg("n1", Some(("web-1", "web")), vec![check.clone()]),
        now(),
    );
    assert_eq!(
        (
            s.index(Table::Nodes),
            s.index(Table::Services),
            s.index(Table::Checks)
        ),
        (3, 3, 3)
    );

    // A status change touches only the checks table and keeps CreateIndex.
    let failing = CheckDefinition {
        status: HealthStatus::Critical,
        ..check
    };
    s.apply(5, reg("n1", None, vec![failing]), now());
    let c = s.node_checks("n1").next().unwrap();
    assert_eq!(
        (c.create_index, c.modify_index, c.status),
        (3, 5, HealthStatus::Critical)
    );
    assert_eq!(s.index(Table::Services), 3);

    s.apply(6, reg("n10", Some(("web", "web")), vec![]), now());
    assert_eq!(s.node_services("n1").count(), 1, "n10 is not n1");

    s.apply(
        7,
        Command::Deregister(DeregisterRequest {
            node: "n1".into(),
            service_id: Some("web-1".into()),
            check_id: None,
        }),
        now(),
    );
    assert_eq!(s.node_services("n1").count(), 0);
    assert_eq!(
        s.node_checks("n1").count(),
        0,
        "a service's checks go with it"
    );
    assert!(s.node("n1").is_some());

    s.apply(
        8,
        Command::Deregister(DeregisterRequest {
            node: "n10".into(),
            ..Default::default()
        }),
        now(),
    );
    assert!(s.node("n10").is_none());
    assert_eq!(s.services().count(), 0);
}

#[test]
fn register_validation() {
    let mut s = State::default();
    let orphan = CheckDefinition {
        check_id: "c".into(),
        service_id: Some("nope".into()),
        ..Default::default()
    };
    assert!(matches!(
        s.apply(1, reg("n1", None, vec![orphan]), now()),
        CommandResult::Rejected(_)
    ));
    assert!(matches!(
        s.apply(2, reg("", None, vec![]), now()),
        CommandResult::Rejected(_)
    ));
    assert_eq!(s.nodes().count(), 0, "a rejected command writes nothing");
}

#[tokio::test]
async fn watchers_wake_on_their_table_only() {
    let mut s = State::default();
    let mut kv = s.watch(Table::Kv);
    let nodes = s.watch(Table::Nodes);
    s.apply(1, set("k", "v"), now());
    assert!(kv.has_changed().unwrap());
    assert_eq!(*kv.borrow_and_update(), 1);
    assert!(!nodes.has_changed().unwrap());
    s.apply(2, reg("n", None, vec![]), now());
    assert!(nodes.has_changed().unwrap());
}

#[test]
fn snapshot_round_trip() {
    let mut s = State::default();
    s.apply(1, set("k", "v"), now());
    s.apply(2, reg("n1", Some(("a", "api")), vec![]), now());
    let bytes = rmp_serde::to_vec_named(s.tables()).unwrap();
    let back: Tables = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(&back, s.tables());
    let mut t = State::default();
    let w = t.watch(Table::Services);
    t.restore(back);
    assert_eq!(t.index(Table::Services), 2);
    assert!(w.has_changed().unwrap());
}

#[test]
fn a_batch_applies_in_order_at_one_index() {
    let mut s = State::default();
    let r = s.apply(
        4,
        Command::Batch(vec![
            set("a", "1"),
            Command::KvCas {
                key: "a".into(),
                value: bytes::Bytes::from_static(b"2"),
                flags: 0,
                index: 4,
            },
            Command::KvCas {
                key: "b".into(),
                value: bytes::Bytes::new(),
                flags: 0,
                index: 3,
            },
        ]),
        now(),
    );
    assert_eq!(
        r,
        CommandResult::Batch(vec![
            CommandResult::Bool(true),
            CommandResult::Bool(true),
            CommandResult::Bool(false)
        ])
    );
    let e = s.kv_get("a").unwrap();
    assert_eq!(
        (e.create_index, e.modify_index, &e.value[..]),
        (4, 4, &b"2"[..])
    );
}

fn check(id: &str, service: Option<&str>, status: HealthStatus) -> CheckDefinition {
    CheckDefinition {
        check_id: id.into(),
        name: id.into(),
        status,
        service_id: service.map(str::to_string),
        ..Default::default()
    }
}

#[test]
fn catalog_queries_filter_like_consul() {
    use crate::state::query::{Query, QueryResult};
    let mut s = State::default();
    let tagged = |node: &str, id: &str, tags: &[&str], meta: &str| {
        let Command::Register(mut r) = reg(node, Some((id, "web")), vec![]) else {
            unreachable!()
        };
        r.service.as_mut().unwrap().tags = tags.iter().map(|t| t.to_string()).collect();
        r.node_meta.insert("rack".into(), meta.into());
        r
    };
    let a = tagged("n1", "web-1", &["prod", "v1"], "r1");
    let b = tagged("n2", "web-2", &["v1"], "r2");
    s.apply(1, Command::Register(a), now());
    s.apply(2, Command::Register(b), now());
    let ids = |s: &State, q: Query| match q.run(s) {
        QueryResult::ServiceNodes(rows) => rows.into_iter().map(|(_, s)| s.id).collect(),
        QueryResult::Health(rows) => rows.into_iter().map(|h| h.service.id).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let sn = |tags: &[&str], meta: &[(&str, &str)]| Query::ServiceNodes {
        service: "web".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        node_meta: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    assert_eq!(ids(&s, sn(&[], &[])), ["web-1", "web-2"]);
    assert_eq!(ids(&s, sn(&["prod"], &[])), ["web-1"]);
    assert_eq!(
        ids(&s, sn(&["v1", "prod"], &[])),
        ["web-1"],
        "every tag must match"
    );
    assert_eq!(ids(&s, sn(&[], &[("rack", "r2")])), ["web-2"]);
    s.apply(
        3,
        reg(
            "n1",
            None,
            vec![check("serfHealth", None, HealthStatus::Passing)],
        ),
        now(),
    );
    s.apply(
        4,
        reg(
            "n2",
            None,
            vec![check("c", Some("web-2"), HealthStatus::Warning)],
        ),
        now(),
    );
    let health = |passing| Query::ServiceHealth {
        service: "web".into(),
        tags: vec![],
        passing,
        node_meta: vec![],
    };
    assert_eq!(ids(&s, health(false)), ["web-1", "web-2"]);
    assert_eq!(ids(&s, health(true)), ["web-1"], "a warning is not passing");
    let QueryResult::Health(h) = health(false).run(&s) else {
        panic!()
    };
    assert_eq!(h[0].checks.len(), 1, "node checks count for the instance");
    let QueryResult::ServiceTags(tags) = (Query::Services { node_meta: vec![] }).run(&s) else {
        panic!()
    };
    assert_eq!(tags["web"], ["prod", "v1"], "union of tags, deduplicated");
    let QueryResult::ServiceSummaries(sums) = Query::ServiceSummaries.run(&s) else {
        panic!()
    };
    let web = sums.iter().find(|x| x.name == "web").unwrap();
    assert_eq!(
        (web.instances, web.nodes.as_slice()),
        (2, &["n1".to_string(), "n2".into()][..])
    );
    assert_eq!(web.tags, ["prod", "v1"]);
    assert_eq!(web.checks, [1, 1, 0], "n1's node check and web-2's own");
    assert_eq!(web.health, [1, 1, 0], "each instance by its worst check");
    let QueryResult::Checks(c) = (Query::ChecksInState {
        state: Some(HealthStatus::Warning),
    })
    .run(&s) else {
        panic!()
    };
    assert_eq!(c.len(), 1);

    // Renaming an instance and deregistering a node keep the name index right, and a
    // restored state rebuilds it.
    s.apply(5, reg("n2", Some(("web-2", "api")), vec![]), now());
    assert_eq!(ids(&s, sn(&[], &[])), ["web-1"]);
    s.apply(
        6,
        Command::Deregister(DeregisterRequest {
            node: "n1".into(),
            ..Default::default()
        }),
        now(),
    );
    assert!(ids(&s, sn(&[], &[])).is_empty());
    let restored = State::from_tables(s.tables().clone());
    assert_eq!(restored.service_instances("api").count(), 1);
    assert_eq!(restored.service_instances("web").count(), 0);
}

fn serf(node: &str, status: HealthStatus) -> Command {
    reg(
        node,
        None,
        vec![CheckDefinition {
            check_id: "serfHealth".into(),
            name: "Serf Health Status".into(),
            status,
            ..Default::default()
        }],
    )
}

fn session(id: &str, node: &str, behavior: SessionBehavior, delay_s: u64) -> Command {
    Command::SessionCreate(Box::new(Session {
        id: id.into(),
        node: node.into(),
        node_checks: vec!["serfHealth".into()],
        behavior,
        lock_delay: std::time::Duration::from_secs(delay_s),
        ..Default::default()
    }))
}

fn acquire(key: &str, session: &str) -> Command {
    Command::KvAcquire {
        key: key.into(),
        value: bytes::Bytes::from_static(b"v"),
        flags: 0,
        session: session.into(),
    }
}

fn release(key: &str, session: &str) -> Command {
    Command::KvRelease {
        key: key.into(),
        value: bytes::Bytes::from_static(b"r"),
        flags: 0,
        session: session.into(),
    }
}

#[test]
fn sessions_need_their_node_and_healthy_checks() {
    let mut s = State::default();
    assert!(matches!(
        s.apply(1, session("s1", "n1", SessionBehavior::Release, 0), now()),
        CommandResult::Rejected(m) if m.contains("Missing node")
    ));
    s.apply(2, serf("n1", HealthStatus::Critical), now());
    assert!(matches!(
        s.apply(3, session("s1", "n1", SessionBehavior::Release, 0), now()),
        CommandResult::Rejected(m) if m.contains("critical")
    ));
    s.apply(4, serf("n1", HealthStatus::Passing), now());
    assert_eq!(
        s.apply(5, session("s1", "n1", SessionBehavior::Release, 0), now()),
        CommandResult::Ok
    );
    assert!(matches!(
        s.apply(6, session("s1", "n1", SessionBehavior::Release, 0), now()),
        CommandResult::Rejected(_)
    ));
    assert_eq!(s.session("s1").unwrap().create_index, 5);
    assert_eq!(s.index(Table::Sessions), 5);
}

#[test]
fn locks_follow_consuls_rules() {
    let mut s = State::default();
    s.apply(1, serf("n1", HealthStatus::Passing), now());
    s.apply(2, session("a", "n1", SessionBehavior::Release, 0), now());
    s.apply(3, session("b", "n1", SessionBehavior::Release, 0), now());
    assert!(matches!(
        s.apply(4, acquire("k", "nope"), now()),
        CommandResult::Rejected(_)
    ));
    assert_eq!(
        s.apply(5, acquire("k", "a"), now()),
        CommandResult::Bool(true)
    );
    let e = s.kv_get("k").unwrap();
    assert_eq!((e.session.as_deref(), e.lock_index), (Some("a"), 1));
    assert_eq!(
        s.apply(6, acquire("k", "b"), now()),
        CommandResult::Bool(false)
    );
    assert_eq!(
        s.apply(7, acquire("k", "a"), now()),
        CommandResult::Bool(true),
        "re-acquiring by the holder updates the value"
    );
    assert_eq!(s.kv_get("k").unwrap().lock_index, 1);
    assert_eq!(
        s.apply(8, release("k", "b"), now()),
        CommandResult::Bool(false)
    );
    assert_eq!(
        s.apply(9, set("k", "plain"), now()),
        CommandResult::Bool(true)
    );
    assert_eq!(s.kv_get("k").unwrap().session.as_deref(), Some("a"));
    assert_eq!(
        s.apply(10, release("k", "a"), now()),
        CommandResult::Bool(true)
    );
    let e = s.kv_get("k").unwrap();
    assert_eq!((e.session.as_deref(), &e.value[..]), (None, &b"r"[..]));
    assert_eq!(
        s.apply(11, acquire("k", "b"), now()),
        CommandResult::Bool(true)
    );
    assert_eq!(s.kv_get("k").unwrap().lock_index, 2);
}

#[test]
fn a_failing_check_ends_sessions_and_frees_or_deletes_their_keys() {
    let mut s = State::default();
    s.apply(1, serf("n1", HealthStatus::Passing), now());
    s.apply(2, serf("n2", HealthStatus::Passing), now());
    s.apply(3, session("rel", "n1", SessionBehavior::Release, 15), now());
    s.apply(4, session("del", "n1", SessionBehavior::Delete, 0), now());
    s.apply(
        5,
        session("other", "n2", SessionBehavior::Release, 0),
        now(),
    );
    s.apply(6, acquire("r", "rel"), now());
    s.apply(7, acquire("d", "del"), now());
    s.apply(8, acquire("o", "other"), now());
    assert!(!s.lock_delayed("r", now()));
    // Still passing: nothing ends.
    s.apply(9, serf("n1", HealthStatus::Passing), now());
    assert_eq!(s.sessions().count(), 3);
    s.apply(10, serf("n1", HealthStatus::Critical), now());
    assert!(s.session("rel").is_none() && s.session("del").is_none());
    let r = s.kv_get("r").unwrap();
    assert_eq!((r.session.as_deref(), r.modify_index), (None, 10));
    assert!(s.kv_get("d").is_none(), "behavior delete");
    assert!(s.lock_delayed("r", now()), "15 s lock-delay");
    assert!(s.lock_delayed("r", now() + Duration::from_secs(14)));
    assert!(
        !s.lock_delayed("r", now() + Duration::from_secs(15)),
        "lock-delay over"
    );
    assert!(!s.lock_delayed("d", now()), "no lock-delay");
    assert_eq!(s.kv_get("o").unwrap().session.as_deref(), Some("other"));
    // Deregistering a node ends its sessions; destroying ends one.
    s.apply(
        11,
        Command::Deregister(DeregisterRequest {
            node: "n2".into(),
            ..Default::default()
        }),
        now(),
    );
    assert!(s.session("other").is_none());
    assert_eq!(s.kv_get("o").unwrap().session, None);
    s.apply(12, serf("n1", HealthStatus::Passing), now());
    s.apply(13, session("x", "n1", SessionBehavior::Release, 0), now());
    s.apply(14, Command::SessionDestroy { id: "x".into() }, now());
    assert_eq!(s.sessions().count(), 0);
    assert_eq!(s.index(Table::Sessions), 14);
}

#[test]
fn sessions_survive_a_snapshot_and_old_snapshots_still_load() {
    let mut s = State::default();
    s.apply(1, serf("n1", HealthStatus::Passing), now());
    s.apply(2, session("a", "n1", SessionBehavior::Release, 0), now());
    let bytes = rmp_serde::to_vec_named(s.tables()).unwrap();
    let back = State::from_tables(rmp_serde::from_slice(&bytes).unwrap());
    assert_eq!(back.session("a"), s.session("a"));
    assert_eq!(back.index(Table::Sessions), 2);
    // A snapshot from before sessions: four table indexes, no sessions.
    #[derive(serde::Serialize)]
    struct Old {
        nodes: BTreeMap<String, Node>,
        services: BTreeMap<(String, String), Service>,
        checks: BTreeMap<(String, String), Check>,
        kv: BTreeMap<String, KvEntry>,
        indexes: [u64; 4],
    }
    let old = Old {
        nodes: BTreeMap::new(),
        services: BTreeMap::new(),
        checks: BTreeMap::new(),
        kv: BTreeMap::new(),
        indexes: [1, 2, 3, 4],
    };
    let tables: Tables = rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
    let s = State::from_tables(tables);
    assert_eq!((s.index(Table::Kv), s.index(Table::Sessions)), (4, 0));
}

#[test]
fn service_node_and_tag_names_match_case_insensitively() {
    let mut s = State::default();
    let mut cmd = reg("Node-A", Some(("api-1", "Api")), vec![]);
    if let Command::Register(r) = &mut cmd {
        r.service.as_mut().unwrap().tags = vec!["Blue".into()];
    }
    s.apply(1, cmd, now());
    let found = Query::ServiceHealth {
        service: "api".into(),
        tags: vec!["blue".into()],
        passing: false,
        node_meta: Vec::new(),
    }
    .run(&s);
    let QueryResult::Health(entries) = found else {
        panic!("{found:?}")
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].service.service, "Api",
        "names keep their spelling"
    );
    let QueryResult::NodeServices(Some((node, services))) = Query::NodeServices {
        node: "node-a".into(),
    }
    .run(&s) else {
        panic!("node-a not found")
    };
    assert_eq!((node.node.as_str(), services.len()), ("Node-A", 1));
}

mod acl {
    use super::*;
    use crate::acl::model::{self, GLOBAL_MANAGEMENT_ID, Link, Policy, Role, Token};
    use crate::acl::{Access, Resource};

    fn policy(id: &str, name: &str, rules: &str) -> Command {
        Command::AclPolicySet(Box::new(Policy {
            id: id.into(),
            name: name.into(),
            rules: rules.into(),
            ..Default::default()
        }))
    }

    fn token(accessor: &str, secret: &str, policies: &[&str]) -> Token {
        Token {
            accessor_id: accessor.into(),
            secret_id: secret.into(),
            policies: policies
                .iter()
                .map(|n| Link {
                    name: (*n).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn rejected(r: CommandResult, says: &str) {
        assert!(
            matches!(&r, CommandResult::Rejected(m) if m.contains(says)),
            "{r:?} should say {says:?}"
        );
    }

    #[test]
    fn bootstrap_happens_once_and_makes_a_management_token() {
        let mut s = State::default();
        assert_eq!(s.acl_bootstrapped(), None);
        let boot = Command::AclBootstrap(Box::new(token("root", "s3cret", &[])));
        assert_eq!(s.apply(5, boot.clone(), now()), CommandResult::Ok);
        let t = s.acl_token_by_secret("s3cret").unwrap();
        assert!(t.is_management() && t.create_index == 5);
        assert_eq!(s.acl_rules_of(&t), None, "management: no rules to check");
        rejected(
            s.apply(6, boot, now()),
            "ACL bootstrap no longer allowed (reset index: 5)",
        );
        assert_eq!(s.index(Table::Acl), 5);
    }

    #[test]
    fn tokens_link_policies_and_roles_by_name_or_id_and_merge_their_rules() {
        let mut s = State::default();
        let ok = CommandResult::Ok;
        assert_eq!(
            s.apply(
                1,
                policy("p1", "kv-app", r#"key_prefix "app/" { policy = "write" }"#),
                now()
            ),
            ok
        );
        assert_eq!(
            s.apply(
                2,
                policy("p2", "svc-read", r#"service_prefix "" { policy = "read" }"#),
                now()
            ),
            ok
        );
        let role = Role {
            id: "r1".into(),
            name: "readers".into(),
            policies: vec![Link {
                id: "p2".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(s.apply(3, Command::AclRoleSet(Box::new(role)), now()), ok);
        let mut t = token("a1", "sec1", &["kv-app"]);
        t.roles = vec![Link {
            name: "readers".into(),
            ..Default::default()
        }];
        assert_eq!(s.apply(4, Command::AclTokenSet(Box::new(t)), now()), ok);
        let t = s.acl_token("a1").unwrap();
        assert_eq!(
            t.policies,
            vec![Link {
                id: "p1".into(),
                name: "kv-app".into()
            }]
        );
        assert_eq!(t.roles[0].id, "r1");
        let rules = s.acl_rules_of(&t).unwrap();
        assert_eq!(
            rules.named[&Resource::Key].lookup("app/x"),
            Some(Access::Write)
        );
        assert_eq!(
            rules.named[&Resource::Service].lookup("web"),
            Some(Access::Read),
            "through the role"
        );
        // Renaming a policy renames the links; deleting it removes its rules.
        assert_eq!(
            s.apply(
                5,
                policy("p1", "kv-app2", r#"key_prefix "app/" { policy = "read" }"#),
                now()
            ),
            ok
        );
        let t = s.acl_token("a1").unwrap();
        assert_eq!(t.policies[0].name, "kv-app2");
        assert_eq!(
            s.acl_rules_of(&t).unwrap().named[&Resource::Key].lookup("app/x"),
            Some(Access::Read)
        );
        assert_eq!(
            s.apply(6, Command::AclPolicyDelete { id: "p1".into() }, now()),
            ok
        );
        assert!(
            !s.acl_rules_of(&t)
                .unwrap()
                .named
                .contains_key(&Resource::Key)
        );
    }

    #[test]
    fn bad_acl_writes_are_rejected_with_consuls_reasons() {
        let mut s = State::default();
        rejected(
            s.apply(1, policy("p", "bad name!", ""), now()),
            "invalid Name",
        );
        rejected(
            s.apply(
                1,
                policy("p", "ok", r#"key "a" { policy = "nope" }"#),
                now(),
            ),
            "Failed to parse ACL rules",
        );
        s.apply(1, policy("p1", "taken", ""), now());
        rejected(
            s.apply(2, policy("p2", "taken", ""), now()),
            "already exists",
        );
        rejected(
            s.apply(2, policy("p3", model::GLOBAL_MANAGEMENT_NAME, ""), now()),
            "already exists",
        );
        rejected(
            s.apply(
                2,
                Command::AclPolicyDelete {
                    id: GLOBAL_MANAGEMENT_ID.into(),
                },
                now(),
            ),
            "not permitted",
        );
        rejected(
            s.apply(
                2,
                Command::AclTokenSet(Box::new(token("a", "s", &["missing"]))),
                now(),
            ),
            "cannot find policy \"missing\"",
        );
        s.apply(
            3,
            Command::AclTokenSet(Box::new(token("a", "s", &[]))),
            now(),
        );
        rejected(
            s.apply(
                4,
                Command::AclTokenSet(Box::new(token("b", "s", &[]))),
                now(),
            ),
            "SecretID is already in use",
        );
        rejected(
            s.apply(
                4,
                Command::AclTokenSet(Box::new(token("a", "other", &[]))),
                now(),
            ),
            "Changing a token's SecretID",
        );
        let mut local = token("a", "s", &[]);
        local.local = true;
        rejected(
            s.apply(4, Command::AclTokenSet(Box::new(local)), now()),
            "local mode",
        );
        rejected(
            s.apply(
                4,
                Command::AclTokenDelete {
                    accessor: model::ANONYMOUS_ACCESSOR.into(),
                },
                now(),
            ),
            "anonymous",
        );
    }

    #[test]
    fn acl_tables_survive_a_snapshot_and_the_secret_index_is_rebuilt() {
        let mut s = State::default();
        s.apply(
            1,
            policy("p1", "kv", r#"key_prefix "" { policy = "read" }"#),
            now(),
        );
        s.apply(
            2,
            Command::AclTokenSet(Box::new(token("a1", "sec1", &["kv"]))),
            now(),
        );
        let bytes = rmp_serde::to_vec_named(s.tables()).unwrap();
        let back: Tables = rmp_serde::from_slice(&bytes).unwrap();
        let t = State::from_tables(back);
        assert_eq!(t.acl_token_by_secret("sec1").unwrap().accessor_id, "a1");
        assert_eq!(t.index(Table::Acl), 2);
        assert_eq!(t.acl_policies().len(), 2, "kv and the built-in");
        assert_eq!(
            t.acl_token_by_secret(model::ANONYMOUS_SECRET)
                .unwrap()
                .accessor_id,
            model::ANONYMOUS_ACCESSOR
        );
        let mut s = t;
        s.apply(
            3,
            Command::AclTokenDelete {
                accessor: "a1".into(),
            },
            now(),
        );
        assert!(s.acl_token_by_secret("sec1").is_none());
    }

    #[test]
    fn commands_need_consuls_permissions_and_reads_are_filtered() {
        use crate::state::authorize::filter_result;
        let mut s = State::default();
        s.apply(1, reg("n1", Some(("web-1", "web")), vec![]), now());
        s.apply(2, reg("n1", Some(("db-1", "db")), vec![]), now());
        s.apply(3, set("app/a", "1"), now());
        s.apply(4, set("other/b", "2"), now());
        s.apply(
            5,
            policy(
                "p1",
                "app",
                r#"
                key_prefix "app/" { policy = "write" }
                service "web" { policy = "write" }
                node_prefix "" { policy = "read" }
            "#,
            ),
            now(),
        );
        s.apply(
            6,
            Command::AclTokenSet(Box::new(token("a1", "sec1", &["app"]))),
            now(),
        );
        let authz = s.acl_authorizer(Some("sec1"), false, || 0).unwrap();
        assert_eq!(authz.accessor(), "a1");
        assert!(s.authorize_command(&authz, &set("app/x", "v")).is_ok());
        let e = s
            .authorize_command(&authz, &set("other/x", "v"))
            .unwrap_err();
        assert!(e.to_string().contains("'key:write' on \"other/x\""), "{e}");
        assert!(
            s.authorize_command(&authz, &reg("n1", Some(("web-2", "web")), vec![]))
                .is_ok(),
            "a service on an unchanged node needs only service:write"
        );
        assert!(
            s.authorize_command(&authz, &reg("n2", Some(("web-3", "web")), vec![]))
                .is_err(),
            "a new node needs node:write"
        );
        assert!(
            s.authorize_command(&authz, &Command::KvDeleteTree { prefix: "".into() })
                .is_err()
        );
        assert!(
            s.authorize_command(
                &authz,
                &Command::Batch(vec![set("app/1", "v"), set("x", "v")])
            )
            .is_err(),
            "a batch needs all of its commands' permissions"
        );
        assert!(
            s.authorize_command(
                &authz,
                &Command::AclTokenDelete {
                    accessor: "a1".into()
                }
            )
            .is_err()
        );
        // Lists are filtered, a single key refused.
        let q = Query::KvList { prefix: "".into() };
        let (r, removed) = filter_result(&authz, &q, q.run(&s)).unwrap();
        assert!(removed);
        assert!(matches!(&r, QueryResult::Kv(v) if v.len() == 1 && v[0].key == "app/a"));
        let q = Query::KvGet {
            key: "other/b".into(),
        };
        assert!(filter_result(&authz, &q, q.run(&s)).is_err());
        let q = Query::Services { node_meta: vec![] };
        let (r, removed) = filter_result(&authz, &q, q.run(&s)).unwrap();
        assert!(removed);
        assert!(matches!(&r, QueryResult::ServiceTags(m) if m.keys().eq(["web"])));
        let q = Query::Nodes { node_meta: vec![] };
        let (_, removed) = filter_result(&authz, &q, q.run(&s)).unwrap();
        assert!(!removed, "node_prefix \"\" read");
        // Unknown, expired and anonymous tokens.
        assert_eq!(
            s.acl_authorizer(Some("nope"), true, || 0).unwrap_err(),
            crate::acl::AclError::NotFound
        );
        let mut short = token("a2", "sec2", &[]);
        short.expiration_ms = Some(10);
        s.apply(7, Command::AclTokenSet(Box::new(short)), now());
        assert!(s.acl_authorizer(Some("sec2"), true, || 9).is_ok());
        assert!(
            s.acl_authorizer(Some("sec2"), true, || 10).is_err(),
            "expired"
        );
        let anon = s.acl_authorizer(None, false, || 0).unwrap();
        assert_eq!(anon.accessor(), model::ANONYMOUS_ACCESSOR);
        assert!(s.authorize_command(&anon, &set("app/x", "v")).is_err());
        let anon = s.acl_authorizer(None, true, || 0).unwrap();
        assert!(
            s.authorize_command(&anon, &set("app/x", "v")).is_ok(),
            "default allow"
        );
    }

    #[test]
    fn a_threads_last_resolved_token_is_never_reused_across_changes_states_or_secrets() {
        let mut s = State::default();
        s.apply(
            1,
            policy("p1", "app", r#"key_prefix "app/" { policy = "write" }"#),
            now(),
        );
        s.apply(
            2,
            Command::AclTokenSet(Box::new(token("a1", "sec1", &["app"]))),
            now(),
        );
        let mut short = token("a2", "sec2", &["app"]);
        short.expiration_ms = Some(10);
        s.apply(3, Command::AclTokenSet(Box::new(short)), now());
        // Resolved twice in a row on this thread: the second comes from its memo.
        assert_eq!(
            s.acl_authorizer(Some("sec1"), false, || 0)
                .unwrap()
                .accessor(),
            "a1"
        );
        assert_eq!(
            s.acl_authorizer(Some("sec1"), false, || 0)
                .unwrap()
                .accessor(),
            "a1"
        );
        // Another secret, the anonymous token, another default policy: each its own.
        assert_eq!(
            s.acl_authorizer(Some("sec1x"), false, || 0).unwrap_err(),
            crate::acl::AclError::NotFound
        );
        s.acl_authorizer(Some("sec1"), false, || 0).unwrap();
        assert_eq!(
            s.acl_authorizer(None, false, || 0).unwrap().accessor(),
            model::ANONYMOUS_ACCESSOR
        );
        s.acl_authorizer(Some("sec1"), false, || 0).unwrap();
        let allow = s.acl_authorizer(Some("sec1"), true, || 0).unwrap();
        assert!(s.authorize_command(&allow, &set("other/x", "v")).is_ok());
        let deny = s.acl_authorizer(Some("sec1"), false, || 0).unwrap();
        assert!(s.authorize_command(&deny, &set("other/x", "v")).is_err());
        // Expiry is checked on a memo hit too.
        assert!(s.acl_authorizer(Some("sec2"), false, || 9).is_ok());
        assert!(
            s.acl_authorizer(Some("sec2"), false, || 10).is_err(),
            "expired"
        );
        // Another state of the same process (an in-process cluster) that lacks the token.
        s.acl_authorizer(Some("sec1"), false, || 0).unwrap();
        assert_eq!(
            State::default()
                .acl_authorizer(Some("sec1"), false, || 0)
                .unwrap_err(),
            crate::acl::AclError::NotFound
        );
        // A change of the ACL tables: the token deleted is refused at once.
        s.acl_authorizer(Some("sec1"), false, || 0).unwrap();
        s.apply(
            4,
            Command::AclTokenDelete {
                accessor: "a1".into(),
            },
            now(),
        );
        assert_eq!(
            s.acl_authorizer(Some("sec1"), false, || 0).unwrap_err(),
            crate::acl::AclError::NotFound
        );
    }

    #[test]
    fn replication_makes_the_global_objects_the_primarys_and_leaves_local_tokens() {
        let mut primary = State::default();
        primary.apply(
            1,
            policy("p1", "kv", r#"key_prefix "" { policy = "read" }"#),
            now(),
        );
        primary.apply(
            2,
            Command::AclTokenSet(Box::new(token("g1", "sg1", &["kv"]))),
            now(),
        );
        let mut local = token("l1", "sl1", &["kv"]);
        local.local = true;
        primary.apply(3, Command::AclTokenSet(Box::new(local.clone())), now());
        let mut replica = State::default();
        replica.apply(1, policy("p0", "gone", ""), now());
        replica.apply(
            2,
            Command::AclTokenSet(Box::new(token("old", "sold", &[]))),
            now(),
        );
        let mut mine = token("l2", "sl2", &[]);
        mine.local = true;
        replica.apply(3, Command::AclTokenSet(Box::new(mine)), now());
        let set = primary.acl_global();
        assert_eq!(
            set.tokens.len(),
            1,
            "the primary's local token is not replicated"
        );
        let plan = replica.acl_replication_plan(&set);
        let r = replica.apply(10, Command::Batch(plan), now());
        assert!(
            matches!(&r, CommandResult::Batch(v) if v.iter().all(|x| *x == CommandResult::Ok)),
            "{r:?}"
        );
        assert!(replica.acl_token_by_secret("sg1").is_some());
        assert!(
            replica.acl_token_by_secret("sold").is_none(),
            "deleted in the primary"
        );
        assert!(
            replica.acl_token_by_secret("sl2").is_some(),
            "local tokens stay"
        );
        assert!(replica.acl_policy("p0").is_none());
        assert_eq!(replica.acl_policy("p1").unwrap().name, "kv");
        assert!(
            replica.acl_bootstrapped().is_some(),
            "no bootstrap of its own afterwards"
        );
        assert!(
            replica.acl_replication_plan(&set).is_empty(),
            "nothing to do once in step"
        );
    }
}

fn prepared(id: &str, name: &str, session: &str) -> Box<prepared_query::PreparedQuery> {
    Box::new(prepared_query::PreparedQuery {
        id: id.into(),
        name: name.into(),
        session: session.into(),
        token: String::new(),
        service: prepared_query::ServiceQuery {
            service: "web".into(),
            ..Default::default()
        },
        dns_ttl: String::new(),
        template: None,
        create_index: 0,
        modify_index: 0,
    })
}

#[test]
fn prepared_queries_have_unique_names_and_die_with_their_session() {
    let mut s = State::default();
    let create = |q| Command::PreparedQueryCreate(q);
    assert_eq!(
        s.apply(2, create(prepared("q1", "web", "")), now()),
        CommandResult::Ok
    );
    assert_eq!(
        s.apply(3, create(prepared("q2", "web", "")), now()),
        CommandResult::Rejected("Name 'web' aliases an existing query name".into())
    );
    assert_eq!(
        s.apply(3, create(prepared("q1", "other", "")), now()),
        CommandResult::Rejected("Query ID must be new".into())
    );
    assert!(matches!(
        s.apply(
            4,
            Command::PreparedQueryUpdate(prepared("nope", "x", "")),
            now()
        ),
        CommandResult::Rejected(_)
    ));
    // Updated in place: CreateIndex kept.
    assert_eq!(
        s.apply(
            5,
            Command::PreparedQueryUpdate(prepared("q1", "web2", "")),
            now()
        ),
        CommandResult::Ok
    );
    let q = s.prepared_query_for("web2").unwrap();
    assert_eq!((q.create_index, q.modify_index), (2, 5));
    assert!(s.prepared_query_for("web").is_none());
    assert_eq!(s.prepared_query_for("q1").unwrap().name, "web2");
    // Bound to a session: gone when the session ends.
    s.apply(6, serf("n1", HealthStatus::Passing), now());
    s.apply(7, session("s1", "n1", SessionBehavior::Release, 0), now());
    assert_eq!(
        s.apply(
            8,
            Command::PreparedQueryCreate(prepared("q3", "", "s1")),
            now()
        ),
        CommandResult::Ok
    );
    assert_eq!(s.prepared_queries().count(), 2);
    s.apply(9, Command::SessionDestroy { id: "s1".into() }, now());
    assert_eq!(s.prepared_queries().count(), 1);
    assert_eq!(s.max_index(&[Table::PreparedQueries]), 9);
}
