//! Autopilot's dead-server cleanup on the leader (Consul's `CleanupDeadServers`): a voter
//! that LAN gossip has seen failed, left or gone for longer than
//! `autopilot.dead_server_after` is removed from the Raft configuration, as long as the
//! voters that remain are at least `autopilot.min_quorum` (default: `bootstrap_expect`)
//! and the alive ones among them are a quorum. So in a DC of three, a dead server goes
//! once a replacement has joined, and never so that the DC would lose its quorum.
//! [`cleanup_plan`] is the pure rule; [`run`] watches and applies it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::gossip::{Member, MemberStatus};
use crate::raft::RaftNode;

/// How often the leader looks again when nothing was signalled.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the cleanup knows of one voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    /// Its node name.
    pub name: String,
    /// How long gossip has seen it failed, left or absent (`None`: alive).
    pub dead_for: Option<Duration>,
}

/// The voters to remove now, in order: dead for at least `after`, one at a time while the
/// voters left stay at least `min_quorum` and their alive ones a quorum of them.
pub fn cleanup_plan(voters: &[Voter], min_quorum: usize, after: Duration) -> Vec<String> {
    let alive = voters.iter().filter(|v| v.dead_for.is_none()).count();
    let mut left = voters.len();
    let mut doomed: Vec<&Voter> = voters
        .iter()
        .filter(|v| v.dead_for.is_some_and(|d| d >= after))
        .collect();
    doomed.sort_by(|a, b| b.dead_for.cmp(&a.dead_for).then(a.name.cmp(&b.name)));
    let mut plan = Vec::new();
    for v in doomed {
        let after_removal = left - 1;
        if after_removal < min_quorum.max(1) || alive < after_removal / 2 + 1 {
            break;
        }
        left = after_removal;
        plan.push(v.name.clone());
    }
    plan
}

/// Since when each server has been seen dead (soft state of the leader, restarted by a
/// new one: it errs on the side of keeping a server).
#[derive(Debug, Default)]
pub struct DeadSince(HashMap<String, Instant>);

impl DeadSince {
    /// The voters `config` names (name, voter), with how long each has been dead as of
    /// `now` according to `members`.
    pub fn observe(
        &mut self,
        config: &[(String, bool)],
        members: &[Member],
        now: Instant,
    ) -> Vec<Voter> {
        let alive = |name: &str| {
            members
                .iter()
                .any(|m| m.name == name && m.status == MemberStatus::Alive)
        };
        self.0
            .retain(|name, _| config.iter().any(|(n, _)| n == name));
        config
            .iter()
            .filter(|(_, voter)| *voter)
            .map(|(name, _)| {
                let dead_for = if alive(name) {
                    self.0.remove(name);
                    None
                } else {
                    let since = *self.0.entry(name.clone()).or_insert(now);
                    Some(now - since)
                };
                Voter {
                    name: name.clone(),
                    dead_for,
                }
            })
            .collect()
    }

    /// Forgets everything (leadership lost).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Removes dead voters while this server leads, until `shutdown`; each removal counted in
/// `removed`.
pub async fn run(
    raft: RaftNode,
    mut members: watch::Receiver<Vec<Member>>,
    (min_quorum, after): (usize, Duration),
    removed: prometheus::IntCounter,
    shutdown: CancellationToken,
) {
    let mut dead = DeadSince::default();
    loop {
        if raft.is_leader() {
            let config: Vec<(String, bool)> = raft
                .configuration()
                .into_iter()
                .map(|(_, node, voter)| (node.name, voter))
                .collect();
            let current = members.borrow_and_update().clone();
            let voters = dead.observe(&config, &current, Instant::now());
            for name in cleanup_plan(&voters, min_quorum, after) {
                match raft.remove_server(&name).await {
                    Ok(()) => {
                        removed.inc();
                        info!(server = %name, "autopilot removed a dead server from Raft");
                    }
                    Err(e) => {
                        warn!(server = %name, error = %e, "autopilot could not remove a dead server");
                        break;
                    }
                }
            }
        } else {
            dead.clear();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = members.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(dead: &[(&str, Option<u64>)]) -> Vec<Voter> {
        dead.iter()
            .map(|(n, d)| Voter {
                name: n.to_string(),
                dead_for: d.map(Duration::from_secs),
            })
            .collect()
    }

    const AFTER: Duration = Duration::from_secs(10);

    #[test]
    fn a_dead_server_goes_once_a_replacement_has_joined() {
        let three = voters(&[("s1", None), ("s2", None), ("s3", Some(60))]);
        assert!(
            cleanup_plan(&three, 3, AFTER).is_empty(),
            "no replacement yet"
        );
        let four = voters(&[("s1", None), ("s2", None), ("s3", Some(60)), ("s4", None)]);
        assert_eq!(cleanup_plan(&four, 3, AFTER), ["s3"]);
    }

    #[test]
    fn not_before_the_configured_time() {
        let four = voters(&[("s1", None), ("s2", None), ("s3", Some(5)), ("s4", None)]);
        assert!(cleanup_plan(&four, 3, AFTER).is_empty());
    }

    #[test]
    fn never_below_the_minimum_nor_a_quorum_of_alive_voters() {
        // Five voters, two dead: longest dead first, as far as the minimum allows.
        let five = voters(&[
            ("s1", None),
            ("s2", None),
            ("s3", None),
            ("s4", Some(60)),
            ("s5", Some(90)),
        ]);
        assert_eq!(cleanup_plan(&five, 0, AFTER), ["s5", "s4"]);
        assert_eq!(cleanup_plan(&five, 3, AFTER), ["s5", "s4"]);
        assert_eq!(cleanup_plan(&five, 4, AFTER), ["s5"]);
        // Alive ones that would not be a quorum of what is left: nothing goes.
        let short = voters(&[("s1", None), ("s2", Some(60)), ("s3", Some(60))]);
        assert!(cleanup_plan(&short, 0, AFTER).is_empty());
        let lone = voters(&[("s1", Some(60))]);
        assert!(cleanup_plan(&lone, 0, AFTER).is_empty());
    }

    #[test]
    fn dead_time_counts_from_first_seen_and_resets_when_alive() {
        let t0 = Instant::now();
        let mut dead = DeadSince::default();
        let config = vec![("s1".to_string(), true), ("s2".to_string(), true)];
        let member = |name: &str, status| Member {
            name: name.into(),
            id: String::new(),
            gossip_addr: "127.0.0.1:8301".parse().unwrap(),
            role: crate::vocab::Role::Server,
            datacenter: "dc1".into(),
            quic: None,
            wan: None,
            http: None,
            build: String::new(),
            leader: false,
            status,
            generation: 1,
        };
        let failed = [
            member("s1", MemberStatus::Alive),
            member("s2", MemberStatus::Failed),
        ];
        dead.observe(&config, &failed, t0);
        let v = dead.observe(&config, &failed, t0 + Duration::from_secs(7));
        assert_eq!(v[1].dead_for, Some(Duration::from_secs(7)));
        assert_eq!(v[0].dead_for, None);
        let back = [
            member("s1", MemberStatus::Alive),
            member("s2", MemberStatus::Alive),
        ];
        dead.observe(&config, &back, t0 + Duration::from_secs(8));
        let again = dead.observe(&config, &failed, t0 + Duration::from_secs(9));
        assert_eq!(
            again[1].dead_for,
            Some(Duration::ZERO),
            "the clock restarted"
        );
        let gone = dead.observe(&config, &[], t0 + Duration::from_secs(12));
        assert_eq!(
            gone[0].dead_for,
            Some(Duration::ZERO),
            "absent counts as dead"
        );
    }
}
