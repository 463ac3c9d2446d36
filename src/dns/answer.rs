//! DNS answers from what a lookup found (pure): records per query type, SRV targets and
//! their addresses, SOA/NS of the domain, negative answers carrying the SOA, and the wire
//! encoding that cuts a UDP answer to the client's size with the TC bit set.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::name::addr_label;

/// One healthy service instance as DNS shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The node it runs on.
    pub node: String,
    /// The node's address.
    pub node_address: String,
    /// The service's own address (empty: the node's).
    pub address: String,
    /// The service port.
    pub port: u16,
    /// The SRV weight (the service's `Weights` for its health).
    pub weight: u16,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A service's healthy instances in `dc` (none: NXDOMAIN, as Consul), answered with
    /// `ttl`.
    Service {
        /// The instances, in the order to answer them (shuffled by the caller).
        instances: Vec<Instance>,
        /// The datacenter they are in.
        dc: String,
        /// Seconds.
        ttl: u32,
    },
    /// A node.
    Node {
        /// Its address.
        address: String,
        /// Seconds.
        ttl: u32,
    },
    /// An address spelled in an `addr` name.
    Addr(IpAddr),
    /// The domain itself: its name servers (the DC's servers as `node`, address).
    Apex {
        /// Node name and address of each server.
        servers: Vec<(String, IpAddr)>,
        /// The datacenter the servers are in.
        dc: String,
    },
    /// Nothing by that name (NXDOMAIN with the SOA).
    NoSuchName,
    /// The lookup could not be answered now (SERVFAIL).
    Failed,
    /// Not ours to answer (REFUSED).
    Refused,
}

/// What every answer of one agent shares.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The domain (no trailing dot).
    pub domain: String,
    /// Cap on records per answer (0: none).
    pub record_limit: usize,
    /// SOA timers and the negative-caching TTL (`minimum`).
    pub soa: SoaTimers,
    /// Whether recursors are configured (the RA flag).
    pub recursion: bool,
}

/// The SOA's timers, in seconds (Consul's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoaTimers {
    /// Refresh.
    pub refresh: u32,
    /// Retry.
    pub retry: u32,
    /// Expire.
    pub expire: u32,
    /// Minimum: how long resolvers cache a negative answer (RFC 2308); also the SOA
    /// record's TTL.
    pub min_ttl: u32,
}

impl Default for SoaTimers {
    fn default() -> Self {
        SoaTimers {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0,
        }
    }
}

/// The largest answer we ever send over UDP, whatever the client offers.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

fn fqdn(s: &str) -> Option<Name> {
    let mut name = Name::from_ascii(s).ok()?;
    name.set_fqdn(true);
    Some(name)
}

fn address_record(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(name.clone(), ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))),
    }
}

/// Whether a record for `ip` answers a query of type `qtype`.
fn wanted(qtype: RecordType, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A | RecordType::ANY, IpAddr::V4(_))
            | (RecordType::AAAA | RecordType::ANY, IpAddr::V6(_))
    )
}

impl Zone {
    /// The SOA record of the domain, with `serial`.
    pub fn soa(&self, serial: u32) -> Record {
        let apex = fqdn(&self.domain).unwrap_or_else(Name::root);
        let mname = fqdn(&format!("ns.{}", self.domain)).unwrap_or_else(Name::root);
        let rname = fqdn(&format!("hostmaster.{}", self.domain)).unwrap_or_else(Name::root);
        let t = self.soa;
        let clamp = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        Record::from_rdata(
            apex,
            t.min_ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                serial,
                clamp(t.refresh),
                clamp(t.retry),
                clamp(t.expire),
                t.min_ttl,
            )),
        )
    }

    /// The response to `request` (one question) given what its lookup found; `serial`
    /// stamps the SOA. Unknown names and empty answers carry the SOA in the authority
    /// section, so resolvers cache them for its minimum.
    pub fn respond(&self, request: &Message, found: Found, serial: u32) -> Message {
        let mut resp = Message::response(request.metadata.id, request.metadata.op_code);
        resp.metadata.message_type = MessageType::Response;
        resp.metadata.recursion_desired = request.metadata.recursion_desired;
        resp.metadata.recursion_available = self.recursion;
        resp.add_queries(request.queries.iter().cloned());
        if let Some(edns) = &request.edns {
            let mut e = Edns::new();
            e.set_max_payload(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            resp.set_edns(e);
        }
        let Some(q) = request.queries.first() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        let (qname, qtype) = (q.name().clone(), q.query_type());
        resp.metadata.authoritative = !matches!(found, Found::Refused | Found::Failed);
        let limit = |n: usize| {
            if self.record_limit == 0 {
                n
            } else {
                n.min(self.record_limit)
            }
        };
        let found = match found {
            Found::Service { instances, .. } if instances.is_empty() => Found::NoSuchName,
            other => other,
        };
        match found {
            Found::Refused => resp.metadata.response_code = ResponseCode::Refused,
            Found::Failed => resp.metadata.response_code = ResponseCode::ServFail,
            Found::NoSuchName => {
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.add_authority(self.soa(serial));
            }
            Found::Service { instances, dc, ttl } if qtype == RecordType::SRV => {
                let mut glue = BTreeSet::new();
                for inst in instances.iter().take(limit(instances.len())) {
                    let (target, ip) = self.srv_target(inst, &dc);
                    let Some(target) = target else { continue };
                    resp.add_answer(Record::from_rdata(
                        qname.clone(),
                        ttl,
                        RData::SRV(SRV::new(1, inst.weight, inst.port, target.clone())),
                    ));
                    if let Some(ip) = ip
                        && glue.insert((target.clone(), ip))
                    {
                        resp.add_additional(address_record(&target, ip, ttl));
                    }
                }
            }
            Found::Service { instances, ttl, .. } => {
                let mut seen = BTreeSet::new();
                let ips = instances.iter().filter_map(|i| {
                    let addr = if i.address.is_empty() {
                        &i.node_address
                    } else {
                        &i.address
                    };
                    addr.parse::<IpAddr>().ok()
                });
                let ips: Vec<IpAddr> = ips
                    .filter(|ip| wanted(qtype, *ip) && seen.insert(*ip))
                    .collect();
                for ip in ips.iter().take(limit(ips.len())) {
                    resp.add_answer(address_record(&qname, *ip, ttl));
                }
                if resp.answers.is_empty() {
                    resp.add_authority(self.soa(serial));
                }
            }
            Found::Node { address, ttl } => match address.parse::<IpAddr>() {
                Ok(ip) if wanted(qtype, ip) => {
                    resp.add_answer(address_record(&qname, ip, ttl));
                }
                _ => {
                    resp.add_authority(self.soa(serial));
                }
            },
            Found::Addr(ip) => {
                if wanted(qtype, ip) {
                    resp.add_answer(address_record(&qname, ip, 0));
                } else {
                    resp.add_authority(self.soa(serial));
                }
            }
            Found::Apex { servers, dc } => {
                if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    resp.add_answer(self.soa(serial));
                }
                if matches!(qtype, RecordType::NS | RecordType::ANY) {
                    for (node, ip) in &servers {
                        let Some(ns) = fqdn(&format!("{node}.node.{dc}.{}", self.domain)) else {
                            continue;
                        };
                        resp.add_answer(Record::from_rdata(
                            qname.clone(),
                            0,
                            RData::NS(NS(ns.clone())),
                        ));
                        resp.add_additional(address_record(&ns, *ip, 0));
                    }
                }
                if resp.answers.is_empty() {
                    resp.add_authority(self.soa(serial));
                }
            }
        }
        resp
    }

    /// The SRV target for an instance and the address to glue to it: the node's name when
    /// the service uses the node's address, an `addr` name for another IP, the host name
    /// itself otherwise (no glue).
    fn srv_target(&self, inst: &Instance, dc: &str) -> (Option<Name>, Option<IpAddr>) {
        let d = &self.domain;
        if inst.address.is_empty() || inst.address == inst.node_address {
            let ip = inst.node_address.parse().ok();
            return (fqdn(&format!("{}.node.{dc}.{d}", inst.node)), ip);
        }
        match inst.address.parse::<IpAddr>() {
            Ok(ip) => (fqdn(&format!("{}.addr.{dc}.{d}", addr_label(ip))), Some(ip)),
            Err(_) => (fqdn(&inst.address), None),
        }
    }
}

/// Encodes `msg`, cut to `max` bytes (records that do not fit are left out and the TC bit
/// is set, so the client asks again over TCP). `None` if not even the header fits.
pub fn encode(msg: &Message, max: u16) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_max_size(max);
    msg.emit(&mut encoder).ok()?;
    Some(buf)
}

/// The largest UDP answer `request` accepts: its EDNS payload size (capped at
/// [`MAX_UDP_PAYLOAD`]), or 512 bytes without EDNS (RFC 1035).
pub fn udp_limit(request: &Message) -> u16 {
    request
        .edns
        .as_ref()
        .map_or(512, |e| e.max_payload().clamp(512, MAX_UDP_PAYLOAD))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Query, ResponseCode};

    fn zone() -> Zone {
        Zone {
            domain: "consul".into(),
            record_limit: 0,
            soa: SoaTimers {
                min_ttl: 30,
                ..SoaTimers::default()
            },
            recursion: false,
        }
    }

    fn request(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m
    }

    fn instances(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|i| Instance {
                node: format!("node-{i}"),
                node_address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                address: String::new(),
                port: 8000 + i as u16,
                weight: 1,
            })
            .collect()
    }

    fn service(n: usize) -> Found {
        Found::Service {
            instances: instances(n),
            dc: "dc1".into(),
            ttl: 5,
        }
    }

    #[test]
    fn a_records_come_from_service_or_node_addresses_without_duplicates() {
        let mut inst = instances(3);
        inst[1].address = "10.9.9.9".into();
        inst[2].node_address = inst[0].node_address.clone();
        let found = Found::Service {
            instances: inst,
            dc: "dc1".into(),
            ttl: 5,
        };
        let req = request("web.service.consul.", RecordType::A, None);
        let resp = zone().respond(&req, found, 1);
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(resp.metadata.authoritative);
        let ips: Vec<String> = resp.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1", "10.9.9.9"]);
        assert!(resp.answers.iter().all(|r| r.ttl == 5));
        // No IPv6 address: an AAAA query is answered empty, with the SOA.
        let req = request("web.service.consul.", RecordType::AAAA, None);
        let resp = zone().respond(&req, service(2), 1);
        assert!(resp.answers.is_empty());
        assert_eq!(resp.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn srv_targets_are_node_names_or_addr_names_with_glue() {
        let mut inst = instances(2);
        inst[1].address = "10.9.9.9".into();
        let found = Found::Service {
            instances: inst,
            dc: "dc2".into(),
            ttl: 0,
        };
        let req = request("_web._tcp.service.dc2.consul.", RecordType::SRV, Some(1232));
        let resp = zone().respond(&req, found, 1);
        let targets: Vec<String> = resp.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(
            targets,
            [
                "1 1 8000 node-0.node.dc2.consul.",
                "1 1 8001 0a090909.addr.dc2.consul."
            ]
        );
        let glue: Vec<String> = resp
            .additionals
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        assert_eq!(
            glue,
            [
                "node-0.node.dc2.consul. 10.0.0.1",
                "0a090909.addr.dc2.consul. 10.9.9.9"
            ]
        );
        assert_eq!(resp.edns.as_ref().unwrap().max_payload(), 1232);
    }

    #[test]
    fn unknown_names_and_empty_services_are_nxdomain_with_the_soa() {
        for found in [Found::NoSuchName, service(0)] {
            let req = request("x.service.consul.", RecordType::A, None);
            let resp = zone().respond(&req, found, 7);
            assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
            let soa = &resp.authorities[0];
            assert_eq!(soa.ttl, 30);
            assert!(
                soa.data
                    .to_string()
                    .contains("ns.consul. hostmaster.consul. 7")
            );
        }
        let req = request("example.com.", RecordType::A, None);
        let resp = zone().respond(&req, Found::Refused, 7);
        assert_eq!(resp.metadata.response_code, ResponseCode::Refused);
        assert!(!resp.metadata.authoritative);
    }

    #[test]
    fn the_apex_answers_soa_and_ns_with_glue() {
        let servers = vec![("s1".to_string(), "10.0.0.1".parse().unwrap())];
        let apex = || Found::Apex {
            servers: servers.clone(),
            dc: "dc1".into(),
        };
        let resp = zone().respond(&request("consul.", RecordType::SOA, None), apex(), 3);
        assert_eq!(resp.answers[0].record_type(), RecordType::SOA);
        let resp = zone().respond(&request("consul.", RecordType::NS, None), apex(), 3);
        assert_eq!(resp.answers[0].data.to_string(), "s1.node.dc1.consul.");
        assert_eq!(resp.additionals[0].data.to_string(), "10.0.0.1");
        let resp = zone().respond(&request("consul.", RecordType::TXT, None), apex(), 3);
        assert!(resp.answers.is_empty() && resp.authorities.len() == 1);
    }

    #[test]
    fn the_record_limit_caps_answers() {
        let z = Zone {
            record_limit: 3,
            ..zone()
        };
        let resp = z.respond(
            &request("web.service.consul.", RecordType::A, None),
            service(10),
            1,
        );
        assert_eq!(resp.answers.len(), 3);
        let resp = z.respond(
            &request("web.service.consul.", RecordType::SRV, None),
            service(10),
            1,
        );
        assert_eq!(resp.answers.len(), 3);
    }

    #[test]
    fn udp_answers_are_cut_to_the_client_size_with_tc() {
        let req = request("web.service.consul.", RecordType::SRV, None);
        let resp = zone().respond(&req, service(40), 1);
        let udp = encode(&resp, udp_limit(&req)).unwrap();
        assert!(udp.len() <= 512);
        let cut = Message::from_vec(&udp).unwrap();
        assert!(cut.metadata.truncation);
        assert!(cut.answers.len() < 40);
        let full = Message::from_vec(&encode(&resp, u16::MAX).unwrap()).unwrap();
        assert!(!full.metadata.truncation);
        assert_eq!(full.answers.len(), 40);
        assert_eq!(full.additionals.len(), 40);
        // EDNS raises the limit, up to our cap.
        assert_eq!(udp_limit(&request("a.", RecordType::A, Some(1232))), 1232);
        assert_eq!(
            udp_limit(&request("a.", RecordType::A, Some(65000))),
            MAX_UDP_PAYLOAD
        );
        assert_eq!(udp_limit(&request("a.", RecordType::A, Some(100))), 512);
    }
}
