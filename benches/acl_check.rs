//! What an ACL check adds to one KV read where it is answered, in one process, without the
//! network and scheduling noise of `benches/acl_reads.sh`: a server's state with a policy
//! granting `key_prefix "" read` and a token holding it, then the read alone (the query
//! run on the state) against the read as a server with ACLs on answers it (the token
//! resolved from the state's cache, the query run, its result filtered by the token).
//! usage: cargo bench --bench acl_check

use std::hint::black_box;
use std::time::Instant;

use consulate::acl::model::{Link, Policy, Token, now_ms};
use consulate::state::authorize::filter_result;
use consulate::state::query::Query;
use consulate::state::{Command, State};

const SECRET: &str = "6f0a2c1e-8d4b-4a7e-9c3f-2b1d5e7a9c0d";

/// Nanoseconds per call of `f`, the best of five runs of `n` calls.
fn time(n: u32, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let now = Instant::now();
    let mut s = State::default();
    s.apply(
        1,
        Command::AclPolicySet(Box::new(Policy {
            id: "p1".into(),
            name: "reader".into(),
            rules: r#"key_prefix "" { policy = "read" }"#.into(),
            ..Default::default()
        })),
        now,
    );
    s.apply(
        2,
        Command::AclTokenSet(Box::new(Token {
            accessor_id: "a1".into(),
            secret_id: SECRET.into(),
            policies: vec![Link {
                name: "reader".into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
        now,
    );
    s.apply(
        3,
        Command::KvSet {
            key: "bench-read".into(),
            value: bytes::Bytes::from_static(b"bench-value"),
            flags: 0,
        },
        now,
    );
    let q = Query::KvGet {
        key: "bench-read".into(),
    };
    let n = 1_000_000;
    let plain = time(n, || {
        black_box(q.run(black_box(&s)));
    });
    let checked = time(n, || {
        let authz = s
            .acl_authorizer(Some(black_box(SECRET)), false, now_ms)
            .unwrap();
        let r = filter_result(&authz, &q, q.run(black_box(&s))).unwrap();
        black_box(r);
    });
    println!("KV read, query alone:             {plain:7.0} ns");
    println!("KV read with the ACL check:       {checked:7.0} ns");
    println!(
        "added by the check:               {:7.0} ns",
        checked - plain
    );
}
