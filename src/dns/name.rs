//! What a DNS name asks for, as Consul reads names under its domain (pure).
//!
//! `[tag.]name.service[.dc]`, `_name._tag.service[.dc]` (RFC 2782; `_tcp` means no tag),
//! `name.node[.dc]`, `hex.addr[.dc]`, `query.query[.dc]` (a prepared query's name or ID),
//! and the domain itself. The rightmost keyword decides
//! the kind; at most one label after it names the datacenter.

use std::net::IpAddr;

/// What a name under the domain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The domain itself (SOA, NS).
    Apex,
    /// A service's instances, optionally only those carrying `tag`.
    Service {
        /// Service name.
        name: String,
        /// Tag filter.
        tag: Option<String>,
        /// Datacenter (`None`: the agent's own).
        dc: Option<String>,
    },
    /// A node's address.
    Node {
        /// Node name.
        name: String,
        /// Datacenter (`None`: the agent's own).
        dc: Option<String>,
    },
    /// A prepared query's instances.
    Query {
        /// The query's name or ID.
        name: String,
        /// Datacenter (`None`: the agent's own).
        dc: Option<String>,
    },
    /// An address spelled in hex (`7f000001.addr.dc1.consul`): SRV targets of services
    /// whose address differs from their node's.
    Addr(IpAddr),
    /// Under the domain, but nothing Consul answers (NXDOMAIN).
    Invalid,
}

/// Whether `name` (lowercase, without the trailing dot) is `domain` or under it; the
/// labels before the domain if so.
pub fn under_domain<'a>(name: &'a str, domain: &str) -> Option<Vec<&'a str>> {
    if name == domain {
        return Some(Vec::new());
    }
    let rest = name.strip_suffix(domain)?.strip_suffix('.')?;
    Some(rest.split('.').collect())
}

/// Reads the labels before the domain (left to right).
pub fn parse(labels: &[&str]) -> Lookup {
    if labels.is_empty() {
        return Lookup::Apex;
    }
    let n = labels.len();
    // The kind is the last label, or the one before it when the last names a DC.
    let (kind_at, dc) = match labels[n - 1] {
        "service" | "node" | "addr" | "query" => (n - 1, None),
        dc if n >= 2 && matches!(labels[n - 2], "service" | "node" | "addr" | "query") => {
            (n - 2, Some(dc.to_string()))
        }
        _ => return Lookup::Invalid,
    };
    let parts = &labels[..kind_at];
    if parts.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Lookup::Invalid;
    }
    match labels[kind_at] {
        "service" => match parts {
            [svc, tag] if svc.starts_with('_') && tag.starts_with('_') => Lookup::Service {
                name: svc[1..].to_string(),
                tag: Some(&tag[1..]).filter(|t| *t != "tcp").map(str::to_string),
                dc,
            },
            [name] => Lookup::Service {
                name: name.to_string(),
                tag: None,
                dc,
            },
            [tag @ .., name] => Lookup::Service {
                name: name.to_string(),
                tag: Some(tag.join(".")),
                dc,
            },
            [] => Lookup::Invalid,
        },
        "node" => Lookup::Node {
            name: parts.join("."),
            dc,
        },
        "query" => Lookup::Query {
            name: parts.join("."),
            dc,
        },
        _ => match parts {
            [hex] => hex_addr(hex).map_or(Lookup::Invalid, Lookup::Addr),
            _ => Lookup::Invalid,
        },
    }
}

/// An address as an `addr` label spells it: 8 hex digits (IPv4) or 32 (IPv6).
fn hex_addr(hex: &str) -> Option<IpAddr> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The `addr` label for `ip` (the inverse of [`hex_addr`]).
pub fn addr_label(ip: IpAddr) -> String {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> Lookup {
        parse(&under_domain(name, "consul").expect("under the domain"))
    }

    fn service(name: &str, tag: Option<&str>, dc: Option<&str>) -> Lookup {
        Lookup::Service {
            name: name.into(),
            tag: tag.map(Into::into),
            dc: dc.map(Into::into),
        }
    }

    #[test]
    fn services_in_every_form() {
        assert_eq!(p("web.service.consul"), service("web", None, None));
        assert_eq!(
            p("geo-web.query.dc2.consul"),
            Lookup::Query {
                name: "geo-web".into(),
                dc: Some("dc2".into())
            }
        );
        assert_eq!(
            p("web.service.dc2.consul"),
            service("web", None, Some("dc2"))
        );
        assert_eq!(p("v1.web.service.consul"), service("web", Some("v1"), None));
        assert_eq!(
            p("a.b.web.service.dc2.consul"),
            service("web", Some("a.b"), Some("dc2"))
        );
        assert_eq!(p("_web._tcp.service.consul"), service("web", None, None));
        assert_eq!(
            p("_web._v1.service.dc2.consul"),
            service("web", Some("v1"), Some("dc2"))
        );
    }

    #[test]
    fn nodes_addrs_and_the_apex() {
        assert_eq!(
            p("n1.node.consul"),
            Lookup::Node {
                name: "n1".into(),
                dc: None
            }
        );
        assert_eq!(
            p("n1.node.dc2.consul"),
            Lookup::Node {
                name: "n1".into(),
                dc: Some("dc2".into())
            }
        );
        assert_eq!(
            p("7f000001.addr.dc1.consul"),
            Lookup::Addr("127.0.0.1".parse().unwrap())
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            p(&format!("{}.addr.consul", addr_label(v6))),
            Lookup::Addr(v6)
        );
        assert_eq!(p("consul"), Lookup::Apex);
    }

    #[test]
    fn anything_else_under_the_domain_is_invalid() {
        for name in [
            "web.consul",
            "service.consul",
            "web.service.dc2.extra.consul",
            "zz.addr.consul",
            "7f0000.addr.consul",
            "a..service.consul",
        ] {
            assert_eq!(p(name), Lookup::Invalid, "{name}");
        }
        assert_eq!(under_domain("example.com", "consul"), None);
        assert_eq!(under_domain("notconsul", "consul"), None);
    }
}
