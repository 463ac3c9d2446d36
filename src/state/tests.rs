use super::*;

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
    assert_eq!(s.apply(5, set("a", "1")), CommandResult::Bool(true));
    assert_eq!(s.apply(6, set("a", "2")), CommandResult::Bool(true));
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
        s.apply(7, cas(5)),
        CommandResult::Bool(false),
        "stale index"
    );
    assert_eq!(s.apply(8, cas(6)), CommandResult::Bool(true));
    assert_eq!(s.kv_get("a").unwrap().flags, 9);
    let create_only = Command::KvCas {
        key: "b".into(),
        value: bytes::Bytes::new(),
        flags: 0,
        index: 0,
    };
    assert_eq!(s.apply(9, create_only.clone()), CommandResult::Bool(true));
    assert_eq!(s.apply(10, create_only), CommandResult::Bool(false));
    assert_eq!(s.index(Table::Kv), 9, "a failed CAS changes nothing");
    assert_eq!(
        s.apply(
            11,
            Command::KvDeleteCas {
                key: "a".into(),
                index: 1
            }
        ),
        CommandResult::Bool(false)
    );
    assert_eq!(
        s.apply(
            12,
            Command::KvDeleteCas {
                key: "a".into(),
                index: 8
            }
        ),
        CommandResult::Bool(true)
    );
    assert!(s.kv_get("a").is_none());
}

#[test]
fn kv_prefix_and_delete_tree() {
    let mut s = State::default();
    for (i, k) in ["app/a", "app/b/c", "apple", "b"].iter().enumerate() {
        s.apply(i as u64 + 1, set(k, "x"));
    }
    let keys: Vec<_> = s.kv_prefix("app/").map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["app/a", "app/b/c"]);
    s.apply(
        10,
        Command::KvDeleteTree {
            prefix: "app/".into(),
        },
    );
    let keys: Vec<_> = s.kv_prefix("").map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["apple", "b"]);
    assert_eq!(s.index(Table::Kv), 10);
    s.apply(
        11,
        Command::KvDeleteTree {
            prefix: "zzz".into(),
        },
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
        s.apply(3, reg("n1", Some(("web-1", "web")), vec![check.clone()])),
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
    s.apply(4, reg("n1", Some(("web-1", "web")), vec![check.clone()]));
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
    s.apply(5, reg("n1", None, vec![failing]));
    let c = s.node_checks("n1").next().unwrap();
    assert_eq!(
        (c.create_index, c.modify_index, c.status),
        (3, 5, HealthStatus::Critical)
    );
    assert_eq!(s.index(Table::Services), 3);

    s.apply(6, reg("n10", Some(("web", "web")), vec![]));
    assert_eq!(s.node_services("n1").count(), 1, "n10 is not n1");

    s.apply(
        7,
        Command::Deregister(DeregisterRequest {
            node: "n1".into(),
            service_id: Some("web-1".into()),
            check_id: None,
        }),
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
        s.apply(1, reg("n1", None, vec![orphan])),
        CommandResult::Rejected(_)
    ));
    assert!(matches!(
        s.apply(2, reg("", None, vec![])),
        CommandResult::Rejected(_)
    ));
    assert_eq!(s.nodes().count(), 0, "a rejected command writes nothing");
}

#[tokio::test]
async fn watchers_wake_on_their_table_only() {
    let mut s = State::default();
    let mut kv = s.watch(Table::Kv);
    let nodes = s.watch(Table::Nodes);
    s.apply(1, set("k", "v"));
    assert!(kv.has_changed().unwrap());
    assert_eq!(*kv.borrow_and_update(), 1);
    assert!(!nodes.has_changed().unwrap());
    s.apply(2, reg("n", None, vec![]));
    assert!(nodes.has_changed().unwrap());
}

#[test]
fn snapshot_round_trip() {
    let mut s = State::default();
    s.apply(1, set("k", "v"));
    s.apply(2, reg("n1", Some(("a", "api")), vec![]));
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
    s.apply(1, Command::Register(a));
    s.apply(2, Command::Register(b));
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
    );
    s.apply(
        4,
        reg(
            "n2",
            None,
            vec![check("c", Some("web-2"), HealthStatus::Warning)],
        ),
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
    let QueryResult::Checks(c) = (Query::ChecksInState {
        state: Some(HealthStatus::Warning),
    })
    .run(&s) else {
        panic!()
    };
    assert_eq!(c.len(), 1);

    // Renaming an instance and deregistering a node keep the name index right, and a
    // restored state rebuilds it.
    s.apply(5, reg("n2", Some(("web-2", "api")), vec![]));
    assert_eq!(ids(&s, sn(&[], &[])), ["web-1"]);
    s.apply(
        6,
        Command::Deregister(DeregisterRequest {
            node: "n1".into(),
            ..Default::default()
        }),
    );
    assert!(ids(&s, sn(&[], &[])).is_empty());
    let restored = State::from_tables(s.tables().clone());
    assert_eq!(restored.service_instances("api").count(), 1);
    assert_eq!(restored.service_instances("web").count(), 0);
}
