//! Who a peer is and what it may do: the identity carried in a certificate's SANs and the
//! per-ALPN authorization policy. Pure logic, no I/O, so every rule is unit-tested here.
//!
//! An agent's identity is the DNS SAN `server.<dc>.<domain>` or `client.<dc>.<domain>`
//! (Consul's `verify_server_hostname` convention). A certificate may carry other SANs
//! (`localhost`, `<node>.server.<dc>.<domain>`, IPs); they grant nothing.

use std::fmt;

use crate::vocab::Role;

/// The protocols an agent speaks on its one QUIC port, told apart by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alpn {
    /// Client-to-server and server-to-server requests (reads, writes, forwarding).
    Rpc,
    /// Raft messages between the servers of one datacenter.
    Raft,
    /// The servers-only WAN gossip pool.
    WanGossip,
}

impl Alpn {
    /// Every ALPN, in the order a server offers them.
    pub const ALL: [Alpn; 3] = [Alpn::Rpc, Alpn::Raft, Alpn::WanGossip];

    /// The protocol id as sent in the TLS handshake.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::Rpc => b"rpc",
            Alpn::Raft => b"raft",
            Alpn::WanGossip => b"wan-gossip",
        }
    }

    /// Maps a negotiated protocol id back to the enum; `None` for anything unknown.
    pub fn from_id(id: &[u8]) -> Option<Alpn> {
        Alpn::ALL.into_iter().find(|a| a.id() == id)
    }

    /// A short label for logs and metrics (bounded: three values).
    pub fn as_str(self) -> &'static str {
        match self {
            Alpn::Rpc => "rpc",
            Alpn::Raft => "raft",
            Alpn::WanGossip => "wan-gossip",
        }
    }
}

impl fmt::Display for Alpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated identity of a peer, taken from its certificate after the chain was
/// verified against the federation CA.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Server or client.
    pub role: Role,
    /// The datacenter the certificate was issued for.
    pub datacenter: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.role, self.datacenter)
    }
}

/// The SAN that names an agent of `role` in `dc`: `server.dc1.consul`.
pub fn identity_san(role: Role, dc: &str, domain: &str) -> String {
    format!("{}.{}.{}", role.as_str(), dc, domain.trim_end_matches('.'))
}

/// Finds the identity among a certificate's DNS SANs. A server SAN wins over a client SAN
/// if a (misissued) certificate carries both, because authorization then checks server rules
/// which are the stricter ones for raft; for rpc both are acceptable anyway.
pub fn identity_from_sans<'a>(
    sans: impl IntoIterator<Item = &'a str>,
    domain: &str,
) -> Option<Identity> {
    let suffix = format!(".{}", domain.trim_end_matches('.'));
    let mut found: Option<Identity> = None;
    for san in sans {
        let Some(head) = san.strip_suffix(suffix.as_str()) else {
            continue;
        };
        let Some((role, dc)) = head.split_once('.') else {
            continue;
        };
        if dc.is_empty() || dc.contains('.') {
            continue;
        }
        let role = match role {
            "server" => Role::Server,
            "client" => Role::Client,
            _ => continue,
        };
        let id = Identity {
            role,
            datacenter: dc.to_string(),
        };
        if role == Role::Server {
            return Some(id);
        }
        found.get_or_insert(id);
    }
    found
}

/// Why a peer was refused. Bounded set: used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The certificate chains to the CA but carries no `server.`/`client.` identity SAN.
    NoIdentity,
    /// A client certificate on a servers-only protocol.
    ClientNotAllowed,
    /// A server of another datacenter on a protocol limited to the local DC.
    WrongDatacenter,
    /// The peer negotiated no ALPN or one we do not speak.
    UnknownAlpn,
    /// The TLS handshake failed (wrong CA, expired, no client certificate, ...).
    Handshake,
    /// The handshake did not finish in time.
    HandshakeTimeout,
}

impl Refusal {
    /// Label value for metrics and the reason string in the QUIC close frame.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoIdentity => "no_identity",
            Refusal::ClientNotAllowed => "client_not_allowed",
            Refusal::WrongDatacenter => "wrong_datacenter",
            Refusal::UnknownAlpn => "unknown_alpn",
            Refusal::Handshake => "tls_handshake",
            Refusal::HandshakeTimeout => "handshake_timeout",
        }
    }

    /// The QUIC application error code a refused connection is closed with.
    pub fn close_code(self) -> u32 {
        match self {
            Refusal::NoIdentity => 0x10,
            Refusal::ClientNotAllowed => 0x11,
            Refusal::WrongDatacenter => 0x12,
            Refusal::UnknownAlpn => 0x13,
            Refusal::Handshake => 0x14,
            Refusal::HandshakeTimeout => 0x15,
        }
    }

    /// Reverse of [`Refusal::close_code`], so a dialer can report why it was refused.
    pub fn from_close_code(code: u64) -> Option<Refusal> {
        [
            Refusal::NoIdentity,
            Refusal::ClientNotAllowed,
            Refusal::WrongDatacenter,
            Refusal::UnknownAlpn,
            Refusal::Handshake,
            Refusal::HandshakeTimeout,
        ]
        .into_iter()
        .find(|r| u64::from(r.close_code()) == code)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides whether `peer` may speak `alpn` with an agent of `local_dc`. The same rule is
/// applied by both ends: the acceptor checks the dialer, and the dialer checks the acceptor.
///
/// - `raft`: servers of the same DC only;
/// - `wan-gossip`: servers of any DC;
/// - `rpc`: any server, or a client of the same DC.
pub fn authorize(alpn: Alpn, local_dc: &str, peer: Option<&Identity>) -> Result<(), Refusal> {
    let peer = peer.ok_or(Refusal::NoIdentity)?;
    match (alpn, peer.role) {
        (Alpn::Raft, Role::Server) if peer.datacenter == local_dc => Ok(()),
        (Alpn::Raft, Role::Server) => Err(Refusal::WrongDatacenter),
        (Alpn::Raft | Alpn::WanGossip, Role::Client) => Err(Refusal::ClientNotAllowed),
        (Alpn::WanGossip, Role::Server) => Ok(()),
        (Alpn::Rpc, Role::Server) => Ok(()),
        (Alpn::Rpc, Role::Client) if peer.datacenter == local_dc => Ok(()),
        (Alpn::Rpc, Role::Client) => Err(Refusal::WrongDatacenter),
    }
}

/// The dialer's side of the rule: whoever accepts our connection must be a server (only
/// servers serve `rpc`, `raft` and `wan-gossip`), of our DC for `raft`, and of
/// `expected_dc` when the caller addressed a particular datacenter.
pub fn authorize_acceptor(
    alpn: Alpn,
    local_dc: &str,
    expected_dc: Option<&str>,
    peer: Option<&Identity>,
) -> Result<(), Refusal> {
    let peer = peer.ok_or(Refusal::NoIdentity)?;
    if peer.role != Role::Server {
        return Err(Refusal::ClientNotAllowed);
    }
    let wrong_dc = |dc: &str| peer.datacenter != dc;
    match (alpn, expected_dc) {
        (Alpn::Raft, _) if wrong_dc(local_dc) => Err(Refusal::WrongDatacenter),
        (_, Some(dc)) if wrong_dc(dc) => Err(Refusal::WrongDatacenter),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, dc: &str) -> Identity {
        Identity {
            role,
            datacenter: dc.into(),
        }
    }

    #[test]
    fn parses_identity_sans() {
        let sans = ["localhost", "n1.server.dc1.consul", "server.dc1.consul"];
        assert_eq!(
            identity_from_sans(sans, "consul"),
            Some(id(Role::Server, "dc1"))
        );
        assert_eq!(
            identity_from_sans(["client.dc2.consul"], "consul"),
            Some(id(Role::Client, "dc2"))
        );
        assert_eq!(
            identity_from_sans(["client.dc1.consul", "server.dc1.consul"], "consul"),
            Some(id(Role::Server, "dc1"))
        );
    }

    #[test]
    fn rejects_foreign_or_malformed_sans() {
        assert_eq!(identity_from_sans(["server.dc1.example"], "consul"), None);
        assert_eq!(identity_from_sans(["n1.server.dc1.consul"], "consul"), None);
        assert_eq!(identity_from_sans(["server..consul"], "consul"), None);
        assert_eq!(identity_from_sans(["admin.dc1.consul"], "consul"), None);
        assert_eq!(
            identity_from_sans(["localhost", "127.0.0.1"], "consul"),
            None
        );
        assert_eq!(
            identity_from_sans(["server.dc1.consul"], "consul."),
            Some(id(Role::Server, "dc1"))
        );
    }

    #[test]
    fn authorization_matrix() {
        let s1 = id(Role::Server, "dc1");
        let s2 = id(Role::Server, "dc2");
        let c1 = id(Role::Client, "dc1");
        let c2 = id(Role::Client, "dc2");
        use Alpn::*;
        assert_eq!(authorize(Raft, "dc1", Some(&s1)), Ok(()));
        assert_eq!(
            authorize(Raft, "dc1", Some(&s2)),
            Err(Refusal::WrongDatacenter)
        );
        assert_eq!(
            authorize(Raft, "dc1", Some(&c1)),
            Err(Refusal::ClientNotAllowed)
        );
        assert_eq!(authorize(WanGossip, "dc1", Some(&s2)), Ok(()));
        assert_eq!(
            authorize(WanGossip, "dc1", Some(&c1)),
            Err(Refusal::ClientNotAllowed)
        );
        assert_eq!(authorize(Rpc, "dc1", Some(&s2)), Ok(()));
        assert_eq!(authorize(Rpc, "dc1", Some(&c1)), Ok(()));
        assert_eq!(
            authorize(Rpc, "dc1", Some(&c2)),
            Err(Refusal::WrongDatacenter)
        );
        assert_eq!(authorize(Rpc, "dc1", None), Err(Refusal::NoIdentity));
    }

    #[test]
    fn acceptor_must_be_a_server_of_the_expected_dc() {
        let s1 = id(Role::Server, "dc1");
        let s2 = id(Role::Server, "dc2");
        let c1 = id(Role::Client, "dc1");
        use Alpn::*;
        assert_eq!(authorize_acceptor(Rpc, "dc1", None, Some(&s2)), Ok(()));
        assert_eq!(
            authorize_acceptor(Rpc, "dc1", Some("dc2"), Some(&s2)),
            Ok(())
        );
        assert_eq!(
            authorize_acceptor(Rpc, "dc1", Some("dc3"), Some(&s2)),
            Err(Refusal::WrongDatacenter)
        );
        assert_eq!(
            authorize_acceptor(Rpc, "dc1", None, Some(&c1)),
            Err(Refusal::ClientNotAllowed)
        );
        assert_eq!(authorize_acceptor(Raft, "dc1", None, Some(&s1)), Ok(()));
        assert_eq!(
            authorize_acceptor(Raft, "dc1", None, Some(&s2)),
            Err(Refusal::WrongDatacenter)
        );
        assert_eq!(
            authorize_acceptor(WanGossip, "dc1", None, Some(&s2)),
            Ok(())
        );
    }

    #[test]
    fn alpn_and_close_codes_round_trip() {
        for a in Alpn::ALL {
            assert_eq!(Alpn::from_id(a.id()), Some(a));
        }
        assert_eq!(Alpn::from_id(b"h3"), None);
        for r in [
            Refusal::NoIdentity,
            Refusal::WrongDatacenter,
            Refusal::HandshakeTimeout,
        ] {
            assert_eq!(Refusal::from_close_code(r.close_code().into()), Some(r));
        }
    }
}
