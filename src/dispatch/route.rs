//! Where a request is answered: the one pure decision every entry point's requests go
//! through ([`route`]), from what the agent is and knows now and how the request came.

use crate::rpc::{Hop, RpcError};
use crate::vocab::Role;

/// Where a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By this server, from its own state (it may still find it must go to the leader, e.g.
    /// a default-mode read whose lease lapsed).
    Here,
    /// By this DC's leader, one hop away.
    Leader,
    /// By a server of this DC (this is a client agent).
    ViaServer,
    /// In another DC, through the router.
    RemoteDc,
}

/// What the agent deciding is and knows at the moment it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agent<'a> {
    /// Its datacenter.
    pub datacenter: &'a str,
    /// Server or client.
    pub role: Role,
    /// Whether it leads its DC's Raft now (servers).
    pub leading: bool,
}

/// Where a request for `target` (`None`: this DC) is answered, given whether it
/// `needs_leader` and the `hop` it came by. Client agents hand their own requests to a
/// server and answer nobody else's; a request from another DC never goes on to a third; a
/// request forwarded within the DC is not forwarded again.
pub fn route(
    agent: Agent<'_>,
    target: Option<&str>,
    needs_leader: bool,
    hop: Hop,
) -> Result<Route, RpcError> {
    let remote = target.is_some_and(|dc| dc != agent.datacenter);
    match (agent.role, hop) {
        (Role::Client, Hop::Origin) => Ok(Route::ViaServer),
        (Role::Client, _) => Err(RpcError::NotServed(
            "a client agent answers only its own requests".into(),
        )),
        (Role::Server, Hop::FromDc) if remote => Err(RpcError::NoPathToDatacenter),
        (Role::Server, _) if remote => Ok(Route::RemoteDc),
        (Role::Server, _) if !needs_leader || agent.leading => Ok(Route::Here),
        (Role::Server, Hop::Forwarded) => Err(RpcError::NoLeader),
        (Role::Server, _) => Ok(Route::Leader),
    }
}

/// Whether a request that took `route` and failed with `error` may be held and tried again
/// once leadership settles: only requests of this DC that the sender does not hold itself,
/// and only while the leader is unknown or unreachable (writes only when surely unapplied).
pub fn hold(route: Route, hop: Hop, error: &RpcError, read: bool) -> bool {
    let in_dc = matches!(route, Route::Here | Route::Leader);
    let leaderless = match error {
        RpcError::NoLeader => true,
        RpcError::Forward { retry_safe, .. } => read || *retry_safe,
        _ => false,
    };
    in_dc && hop != Hop::Forwarded && leaderless
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Agent<'static> = Agent {
        datacenter: "dc1",
        role: Role::Server,
        leading: false,
    };
    const LEADER: Agent<'static> = Agent {
        leading: true,
        ..SERVER
    };
    const CLIENT: Agent<'static> = Agent {
        role: Role::Client,
        ..SERVER
    };

    /// A case: the agent, the target DC, whether the leader is needed, the hop, the route.
    type Case<'a> = (
        Agent<'a>,
        Option<&'a str>,
        bool,
        Hop,
        Result<Route, RpcError>,
    );

    /// Every combination of agent, target, leader need and hop, with its route.
    #[test]
    fn every_case_routes() {
        use Hop::*;
        use Route::*;
        let no_leader = Err(RpcError::NoLeader);
        let no_path = Err(RpcError::NoPathToDatacenter);
        let cases: &[Case] = &[
            // Client agents hand every request of their own to a server, whatever it is.
            (CLIENT, None, false, Origin, Ok(ViaServer)),
            (CLIENT, None, true, Origin, Ok(ViaServer)),
            (CLIENT, Some("dc1"), true, Origin, Ok(ViaServer)),
            (CLIENT, Some("dc2"), false, Origin, Ok(ViaServer)),
            // Servers: another DC through the router, unless the request came from one.
            (SERVER, Some("dc2"), false, Origin, Ok(RemoteDc)),
            (SERVER, Some("dc2"), true, Origin, Ok(RemoteDc)),
            (LEADER, Some("dc2"), true, Origin, Ok(RemoteDc)),
            (SERVER, Some("dc2"), true, Forwarded, Ok(RemoteDc)),
            (SERVER, Some("dc3"), false, FromDc, no_path.clone()),
            (LEADER, Some("dc3"), true, FromDc, no_path),
            // This DC, naming it or not: here unless only the leader may answer.
            (SERVER, None, false, Origin, Ok(Here)),
            (SERVER, Some("dc1"), false, Origin, Ok(Here)),
            (SERVER, None, false, Forwarded, Ok(Here)),
            (SERVER, Some("dc1"), false, FromDc, Ok(Here)),
            (SERVER, None, true, Origin, Ok(Leader)),
            (SERVER, Some("dc1"), true, FromDc, Ok(Leader)),
            (SERVER, None, true, Forwarded, no_leader),
            (LEADER, None, true, Origin, Ok(Here)),
            (LEADER, Some("dc1"), true, FromDc, Ok(Here)),
            (LEADER, None, true, Forwarded, Ok(Here)),
        ];
        for (agent, target, needs_leader, hop, want) in cases {
            assert_eq!(
                &route(*agent, *target, *needs_leader, *hop),
                want,
                "{agent:?} target {target:?} needs_leader {needs_leader} {hop:?}"
            );
        }
        // A client agent answers nobody else's requests.
        for hop in [Forwarded, FromDc] {
            for target in [None, Some("dc1"), Some("dc2")] {
                assert!(matches!(
                    route(CLIENT, target, false, hop),
                    Err(RpcError::NotServed(_))
                ));
            }
        }
    }

    #[test]
    fn only_leaderless_failures_in_the_dc_are_held() {
        let lost = |retry_safe| RpcError::Forward {
            reason: "lost".into(),
            retry_safe,
        };
        assert!(hold(Route::Leader, Hop::Origin, &RpcError::NoLeader, false));
        assert!(hold(Route::Here, Hop::FromDc, &RpcError::NoLeader, true));
        assert!(hold(Route::Leader, Hop::Origin, &lost(false), true));
        assert!(hold(Route::Leader, Hop::Origin, &lost(true), false));
        assert!(
            !hold(Route::Leader, Hop::Origin, &lost(false), false),
            "a write that may have applied"
        );
        assert!(!hold(
            Route::Here,
            Hop::Forwarded,
            &RpcError::NoLeader,
            true
        ));
        assert!(!hold(
            Route::RemoteDc,
            Hop::Origin,
            &RpcError::NoLeader,
            true
        ));
        assert!(!hold(
            Route::ViaServer,
            Hop::Origin,
            &RpcError::NoLeader,
            true
        ));
        assert!(!hold(
            Route::Here,
            Hop::Origin,
            &RpcError::Raft("disk".into()),
            true
        ));
    }
}
