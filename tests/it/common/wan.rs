//! A WAN emulator: a UDP relay placed in front of each server's QUIC port, through which
//! other DCs reach it (the server advertises the relay's address as its WAN address). Each
//! packet is delayed by the latency of the link between the sender's DC and the server's
//! (plus jitter), dropped with the link's loss probability, or dropped outright while the
//! link is cut (a partition). Traffic within a DC does not pass through it.
//!
//! Every agent's DC is told by its IP (one 127.x network per DC in the tests), so the relay
//! knows which link a packet crosses in both directions.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// The properties of the link between two DCs (both directions).
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    /// One-way delay.
    pub latency: Duration,
    /// Up to this much is added at random to each packet's delay.
    pub jitter: Duration,
    /// Fraction of packets dropped.
    pub loss: f64,
}

type DcOf = Arc<dyn Fn(IpAddr) -> Option<String> + Send + Sync>;

struct Shared {
    dc_of: DcOf,
    links: Mutex<HashMap<(String, String), Link>>,
    cut: Mutex<HashSet<(String, String)>>,
}

fn key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Shared {
    /// The delay for one packet from `from` to `to`, or `None` to drop it.
    fn fate(&self, from: Option<&str>, to: &str) -> Option<Duration> {
        let Some(from) = from else {
            return Some(Duration::ZERO);
        };
        if from == to {
            return Some(Duration::ZERO);
        }
        let k = key(from, to);
        if self.cut.lock().unwrap().contains(&k) {
            return None;
        }
        let link = self
            .links
            .lock()
            .unwrap()
            .get(&k)
            .copied()
            .unwrap_or_default();
        if link.loss > 0.0 && rand::random::<f64>() < link.loss {
            return None;
        }
        Some(link.latency + link.jitter.mul_f64(rand::random::<f64>()))
    }
}

/// The emulator: create fronts for servers, shape links, cut and heal them.
#[derive(Clone)]
pub struct WanEmulator {
    shared: Arc<Shared>,
}

/// Sends `data` to `to` through `socket` after `delay` (a task per packet: jitter may
/// reorder, as on a real WAN).
fn deliver(socket: &Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr, delay: Duration) {
    let socket = socket.clone();
    if delay.is_zero() {
        let _ = socket.try_send_to(&data, to);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = socket.send_to(&data, to).await;
    });
}

impl WanEmulator {
    /// An emulator telling each agent's DC by its IP with `dc_of`.
    pub fn new(dc_of: impl Fn(IpAddr) -> Option<String> + Send + Sync + 'static) -> WanEmulator {
        WanEmulator {
            shared: Arc::new(Shared {
                dc_of: Arc::new(dc_of),
                links: Mutex::new(HashMap::new()),
                cut: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Shapes the link between `a` and `b`.
    pub fn set_link(&self, a: &str, b: &str, link: Link) {
        self.shared.links.lock().unwrap().insert(key(a, b), link);
    }

    /// Partitions `a` from `b`: every packet between them is dropped.
    pub fn cut(&self, a: &str, b: &str) {
        self.shared.cut.lock().unwrap().insert(key(a, b));
    }

    /// Ends the partition between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        self.shared.cut.lock().unwrap().remove(&key(a, b));
    }

    /// Relays `front` to the server of `dc` listening at `server`, until the test ends.
    pub async fn front(&self, dc: &str, front: SocketAddr, server: SocketAddr) {
        let socket = Arc::new(UdpSocket::bind(front).await.expect("bind WAN front"));
        let shared = self.shared.clone();
        let dc = dc.to_string();
        tokio::spawn(async move {
            // One upstream socket per sender, so the server's replies find their way back.
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let from_dc = (shared.dc_of)(from.ip());
                let upstream = match upstreams.get(&from) {
                    Some(u) => u.clone(),
                    None => {
                        let u = Arc::new(
                            UdpSocket::bind(SocketAddr::new(front.ip(), 0))
                                .await
                                .expect("bind WAN upstream"),
                        );
                        upstreams.insert(from, u.clone());
                        let (u2, front_socket, shared, dc, from_dc) = (
                            u.clone(),
                            socket.clone(),
                            shared.clone(),
                            dc.clone(),
                            from_dc.clone(),
                        );
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                                let fate = match &from_dc {
                                    Some(to) => shared.fate(Some(&dc), to),
                                    None => Some(Duration::ZERO),
                                };
                                if let Some(delay) = fate {
                                    deliver(&front_socket, buf[..n].to_vec(), from, delay);
                                }
                            }
                        });
                        u
                    }
                };
                if let Some(delay) = shared.fate(from_dc.as_deref(), &dc) {
                    deliver(&upstream, buf[..n].to_vec(), server, delay);
                }
            }
        });
    }
}
