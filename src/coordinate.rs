//! Network coordinates: Consul's Vivaldi variant (hashicorp/serf's `coordinate` package:
//! 8 dimensions plus a height, an adjustment term averaged over recent samples, a weak
//! gravity towards the origin, a median filter over each peer's last samples), and the
//! small trailer that carries a sender's coordinate on every gossip message, so that a
//! round trip measured on the gossip path can update the receiver's coordinate, as
//! memberlist's ping acks do. Pure: the caller measures the round trips and keeps the
//! [`Client`].

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// serf's `DefaultConfig`: the tuning every Consul agent runs with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Dimensions of the Euclidean part.
    pub dimensionality: usize,
    /// The error a new coordinate starts with, and its ceiling.
    pub vivaldi_error_max: f64,
    /// How fast the error estimate moves.
    pub vivaldi_ce: f64,
    /// How fast the coordinate moves.
    pub vivaldi_cc: f64,
    /// Samples the adjustment term averages.
    pub adjustment_window_size: usize,
    /// The smallest height (seconds).
    pub height_min: f64,
    /// Samples per peer whose median is used.
    pub latency_filter_size: usize,
    /// The gravity's scale (seconds): the further from the origin, the stronger the pull.
    pub gravity_rho: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dimensionality: 8,
            vivaldi_error_max: 1.5,
            vivaldi_ce: 0.25,
            vivaldi_cc: 0.25,
            adjustment_window_size: 20,
            height_min: 10.0e-6,
            latency_filter_size: 3,
            gravity_rho: 150.0,
        }
    }
}

/// Distances below this count as zero.
const ZERO_THRESHOLD: f64 = 1.0e-6;
/// Round trips longer than this are not samples (serf's `maxRTT`).
const MAX_RTT: Duration = Duration::from_secs(10);

/// A node's position (Consul's JSON shape: `Vec`, `Error`, `Adjustment`, `Height`;
/// seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Coordinate {
    /// The Euclidean part.
    pub vec: Vec<f64>,
    /// The node's confidence in its position (lower is better).
    pub error: f64,
    /// A per-node offset learned from the residuals.
    pub adjustment: f64,
    /// The node's distance from the core (its access link).
    pub height: f64,
}

impl Coordinate {
    /// The origin with the largest error: where every node starts.
    pub fn new(config: &Config) -> Coordinate {
        Coordinate {
            vec: vec![0.0; config.dimensionality],
            error: config.vivaldi_error_max,
            adjustment: 0.0,
            height: config.height_min,
        }
    }

    /// Whether every component is a finite number.
    pub fn is_valid(&self) -> bool {
        self.vec.iter().all(|v| v.is_finite())
            && self.error.is_finite()
            && self.adjustment.is_finite()
            && self.height.is_finite()
    }

    /// Whether both have the same dimensionality.
    pub fn is_compatible_with(&self, other: &Coordinate) -> bool {
        self.vec.len() == other.vec.len()
    }

    /// The estimated round trip to `other`: the Euclidean distance plus both heights,
    /// plus both adjustments when that stays positive.
    pub fn distance_to(&self, other: &Coordinate) -> Duration {
        let raw = self.raw_distance_to(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        let seconds = if adjusted > 0.0 { adjusted } else { raw };
        Duration::from_secs_f64(seconds.max(0.0))
    }

    fn raw_distance_to(&self, other: &Coordinate) -> f64 {
        magnitude(&diff(&self.vec, &other.vec)) + self.height + other.height
    }

    /// Moved by `force` (seconds) along the line from `other`.
    fn apply_force(&self, config: &Config, force: f64, other: &Coordinate) -> Coordinate {
        let mut moved = self.clone();
        let (unit, mag) = unit_vector_at(&self.vec, &other.vec);
        for (v, u) in moved.vec.iter_mut().zip(&unit) {
            *v += u * force;
        }
        if mag > ZERO_THRESHOLD {
            moved.height = (moved.height + other.height) * force / mag + moved.height;
            moved.height = moved.height.max(config.height_min);
        }
        moved
    }
}

fn diff(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn magnitude(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The unit vector from `b` to `a` and the distance between them; two points at the same
/// place get a random direction (so that nodes starting at the origin spread).
fn unit_vector_at(a: &[f64], b: &[f64]) -> (Vec<f64>, f64) {
    let d = diff(a, b);
    let mag = magnitude(&d);
    if mag > ZERO_THRESHOLD {
        return (d.iter().map(|x| x / mag).collect(), mag);
    }
    let random: Vec<f64> = d.iter().map(|_| rand::random::<f64>() - 0.5).collect();
    let mag = magnitude(&random);
    if mag > ZERO_THRESHOLD {
        return (random.iter().map(|x| x / mag).collect(), 0.0);
    }
    let mut unit = vec![0.0; a.len()];
    if let Some(first) = unit.first_mut() {
        *first = 1.0;
    }
    (unit, 0.0)
}

/// Why a sample was not used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoordinateError {
    /// The peer's coordinate has another dimensionality or a non-finite component.
    #[error("the peer's coordinate is invalid or incompatible")]
    BadCoordinate,
    /// The round trip is negative or over 10 s.
    #[error("round trip time {0:?} not in the valid range")]
    BadRtt(Duration),
}

/// One node's Vivaldi state: its coordinate and what updating it needs.
#[derive(Debug, Clone)]
pub struct Client {
    coord: Coordinate,
    origin: Coordinate,
    config: Config,
    adjustment_index: usize,
    adjustment_samples: Vec<f64>,
    latency_samples: HashMap<String, Vec<f64>>,
    resets: u64,
}

impl Client {
    /// A node at the origin.
    pub fn new(config: Config) -> Client {
        Client {
            coord: Coordinate::new(&config),
            origin: Coordinate::new(&config),
            adjustment_index: 0,
            adjustment_samples: vec![0.0; config.adjustment_window_size],
            latency_samples: HashMap::new(),
            resets: 0,
            config,
        }
    }

    /// The node's coordinate now.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coord
    }

    /// How often the coordinate went invalid and started over.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Forgets `peer`'s samples (it left).
    pub fn forget(&mut self, peer: &str) {
        self.latency_samples.remove(peer);
    }

    /// Updates the coordinate from a round trip `rtt` to `peer`, whose coordinate is
    /// `other`; returns the new coordinate.
    pub fn update(
        &mut self,
        peer: &str,
        other: &Coordinate,
        rtt: Duration,
    ) -> Result<&Coordinate, CoordinateError> {
        if !other.is_valid() || !self.coord.is_compatible_with(other) {
            return Err(CoordinateError::BadCoordinate);
        }
        if rtt > MAX_RTT {
            return Err(CoordinateError::BadRtt(rtt));
        }
        let rtt = self.latency_filter(peer, rtt.as_secs_f64());
        self.update_vivaldi(other, rtt);
        self.update_adjustment(other, rtt);
        self.update_gravity();
        if !self.coord.is_valid() {
            self.resets += 1;
            self.coord = Coordinate::new(&self.config);
        }
        Ok(&self.coord)
    }

    /// The median of `peer`'s last samples, `rtt` included.
    fn latency_filter(&mut self, peer: &str, rtt: f64) -> f64 {
        let samples = self.latency_samples.entry(peer.to_string()).or_default();
        samples.push(rtt);
        if samples.len() > self.config.latency_filter_size {
            samples.remove(0);
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt: f64) {
        let c = &self.config;
        let dist = self.coord.distance_to(other).as_secs_f64();
        let rtt = rtt.max(ZERO_THRESHOLD);
        let wrongness = (dist - rtt).abs() / rtt;
        let total_error = (self.coord.error + other.error).max(ZERO_THRESHOLD);
        let weight = self.coord.error / total_error;
        self.coord.error = (c.vivaldi_ce * weight * wrongness
            + self.coord.error * (1.0 - c.vivaldi_ce * weight))
            .min(c.vivaldi_error_max);
        let force = c.vivaldi_cc * weight * (rtt - dist);
        self.coord = self.coord.apply_force(c, force, other);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        let window = self.config.adjustment_window_size;
        if window == 0 {
            return;
        }
        let dist = self.coord.raw_distance_to(other);
        self.adjustment_samples[self.adjustment_index] = rtt - dist;
        self.adjustment_index = (self.adjustment_index + 1) % window;
        let sum: f64 = self.adjustment_samples.iter().sum();
        self.coord.adjustment = sum / (2.0 * window as f64);
    }

    fn update_gravity(&mut self) {
        let dist = self.origin.distance_to(&self.coord).as_secs_f64();
        let force = -(dist / self.config.gravity_rho).powi(2);
        self.coord = self.coord.apply_force(&self.config, force, &self.origin);
    }
}

/// Most peers whose last coordinate is kept; past it, the oldest are dropped.
const MAX_PEERS: usize = 10_000;

/// One gossip pool's coordinates, shared by the socket that samples round trips and the
/// agent that reports them: this node's [`Client`] and the last coordinate each peer sent.
#[derive(Debug)]
pub struct Estimator {
    inner: std::sync::Mutex<EstimatorState>,
}

#[derive(Debug)]
struct EstimatorState {
    client: Client,
    peers: HashMap<std::net::SocketAddr, (Coordinate, std::time::Instant)>,
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator::new(Config::default())
    }
}

impl Estimator {
    /// A node at the origin, knowing no peer.
    pub fn new(config: Config) -> Estimator {
        Estimator {
            inner: std::sync::Mutex::new(EstimatorState {
                client: Client::new(config),
                peers: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EstimatorState> {
        self.inner.lock().expect("coordinate lock")
    }

    /// This node's coordinate now.
    pub fn coordinate(&self) -> Coordinate {
        self.state().client.coordinate().clone()
    }

    /// Records that `peer` is at `coord`, and with a round trip `rtt` measured to it,
    /// updates this node's coordinate (whether the sample was used).
    pub fn observe(
        &self,
        peer: std::net::SocketAddr,
        coord: Coordinate,
        rtt: Option<Duration>,
        now: std::time::Instant,
    ) -> Option<Result<(), CoordinateError>> {
        let mut state = self.state();
        let used = rtt.map(|rtt| {
            state
                .client
                .update(&peer.to_string(), &coord, rtt)
                .map(|_| ())
        });
        if state.peers.len() >= MAX_PEERS && !state.peers.contains_key(&peer) {
            let oldest = state
                .peers
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                state.peers.remove(&oldest);
                state.client.forget(&oldest.to_string());
            }
        }
        state.peers.insert(peer, (coord, now));
        used
    }

    /// The last coordinate `peer` sent.
    pub fn peer(&self, peer: std::net::SocketAddr) -> Option<Coordinate> {
        self.state().peers.get(&peer).map(|(c, _)| c.clone())
    }
}

/// The median of `distances` (`None` when empty): how Consul ranks a datacenter from the
/// distances to its servers.
pub fn median(mut distances: Vec<Duration>) -> Option<Duration> {
    distances.sort();
    distances.get(distances.len() / 2).copied()
}

/// The other datacenters, nearest first from `own`: each ranked by the median estimated
/// round trip to its servers whose coordinates are known (Consul's
/// `GetDatacentersByDistance`); a DC with none comes after every ranked one; ties and the
/// unranked go by name.
pub fn rank_datacenters<'a>(
    local: &str,
    own: &Coordinate,
    servers: impl IntoIterator<Item = (&'a str, Option<&'a Coordinate>)>,
) -> Vec<String> {
    let mut by_dc: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    for (dc, coord) in servers {
        let list = by_dc.entry(dc).or_default();
        if let Some(c) = coord.filter(|c| c.is_compatible_with(own)) {
            list.push(own.distance_to(c));
        }
    }
    by_dc.remove(local);
    let mut ranked: Vec<(Duration, &str)> = by_dc
        .into_iter()
        .map(|(dc, d)| (median(d).unwrap_or(Duration::MAX), dc))
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, dc)| dc.to_string()).collect()
}

/// Marks a gossip trailer holding a coordinate.
const TRAILER_MAGIC: u8 = b'V';

/// The trailer carrying `coord` after a gossip message: a marker, then each component as
/// a little-endian f64 (the vector, error, adjustment, height).
pub fn encode_trailer(coord: &Coordinate, out: &mut Vec<u8>) {
    out.push(TRAILER_MAGIC);
    out.push(coord.vec.len() as u8);
    for v in coord
        .vec
        .iter()
        .chain([&coord.error, &coord.adjustment, &coord.height])
    {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The coordinate of a trailer made by [`encode_trailer`]; `None` for anything else (an
/// empty trailer: a sender that adds none).
pub fn decode_trailer(bytes: &[u8]) -> Option<Coordinate> {
    let (&magic, rest) = bytes.split_first()?;
    let (&dims, rest) = rest.split_first()?;
    let dims = dims as usize;
    if magic != TRAILER_MAGIC || rest.len() != (dims + 3) * 8 || dims == 0 {
        return None;
    }
    let values: Vec<f64> = rest
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect();
    let coord = Coordinate {
        vec: values[..dims].to_vec(),
        error: values[dims],
        adjustment: values[dims + 1],
        height: values[dims + 2],
    };
    coord.is_valid().then_some(coord)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    /// Nodes on a line, each pair's true RTT known; every node samples random others, as
    /// gossip does. serf's own test (`TestPerformance_Line`) in miniature.
    fn simulate(
        truth: &dyn Fn(usize, usize) -> Duration,
        nodes: usize,
        rounds: usize,
    ) -> Vec<Client> {
        let mut clients: Vec<Client> = (0..nodes).map(|_| Client::new(Config::default())).collect();
        for _ in 0..rounds {
            for i in 0..nodes {
                let j = (i + 1 + rand::random::<u32>() as usize % (nodes - 1)) % nodes;
                let other = clients[j].coordinate().clone();
                clients[i]
                    .update(&j.to_string(), &other, truth(i, j))
                    .unwrap();
            }
        }
        clients
    }

    #[test]
    fn coordinates_converge_to_the_true_round_trips() {
        // Three groups: 0-3 near each other (1 ms), 4-7 20 ms away, 8-11 80 ms from the first.
        let group = |i: usize| i / 4;
        let truth = |i: usize, j: usize| {
            let base = [[1.0, 20.0, 80.0], [20.0, 1.0, 70.0], [80.0, 70.0, 1.0]];
            Duration::from_secs_f64(base[group(i)][group(j)] / 1000.0)
        };
        let clients = simulate(&truth, 12, 400);
        for i in 0..12 {
            for j in 0..12 {
                if i == j {
                    continue;
                }
                let est = ms(clients[i].coordinate().distance_to(clients[j].coordinate()));
                let real = ms(truth(i, j));
                // Within 25% (or 1 ms for the near pairs).
                assert!(
                    (est - real).abs() <= (real * 0.25).max(1.0),
                    "{i}->{j}: estimated {est:.2} ms, true {real:.2} ms"
                );
            }
        }
        assert!(clients.iter().all(|c| c.coordinate().error < 0.5));
    }

    #[test]
    fn bad_samples_are_refused_and_leave_the_coordinate_alone() {
        let mut c = Client::new(Config::default());
        let before = c.coordinate().clone();
        let mut nan = Coordinate::new(&Config::default());
        nan.vec[0] = f64::NAN;
        assert_eq!(
            c.update("p", &nan, Duration::from_millis(1)),
            Err(CoordinateError::BadCoordinate)
        );
        let short = Coordinate {
            vec: vec![0.0; 3],
            ..before.clone()
        };
        assert!(c.update("p", &short, Duration::from_millis(1)).is_err());
        assert!(matches!(
            c.update("p", &before, Duration::from_secs(11)),
            Err(CoordinateError::BadRtt(_))
        ));
        assert_eq!(c.coordinate(), &before);
    }

    #[test]
    fn the_median_filter_ignores_one_outlier() {
        let mut c = Client::new(Config::default());
        assert_eq!(c.latency_filter("p", 0.010), 0.010);
        assert_eq!(c.latency_filter("p", 0.012), 0.012);
        assert_eq!(c.latency_filter("p", 0.500), 0.012);
        assert_eq!(c.latency_filter("p", 0.011), 0.012);
        c.forget("p");
        assert_eq!(c.latency_filter("p", 0.300), 0.300);
    }

    #[test]
    fn distance_adds_heights_and_positive_adjustments() {
        let a = Coordinate {
            vec: vec![0.003, 0.004],
            error: 0.1,
            adjustment: 0.001,
            height: 0.0005,
        };
        let b = Coordinate {
            vec: vec![0.0, 0.0],
            error: 0.1,
            adjustment: -0.002,
            height: 0.0005,
        };
        // 5 ms + 1 ms of heights + (1 - 2) ms of adjustments.
        assert!((ms(a.distance_to(&b)) - 5.0).abs() < 1e-9);
        let far = Coordinate {
            adjustment: -1.0,
            ..b.clone()
        };
        // An adjustment that would make it negative is left out.
        assert!((ms(a.distance_to(&far)) - 6.0).abs() < 1e-9);
        assert_eq!(median(vec![]), None);
        let d = |n| Duration::from_millis(n);
        assert_eq!(median(vec![d(9), d(1), d(5)]), Some(d(5)));
    }

    #[test]
    fn datacenters_rank_by_the_median_to_their_servers() {
        let at = |x: f64| Coordinate {
            vec: vec![x, 0.0],
            error: 0.1,
            adjustment: 0.0,
            height: 0.0,
        };
        let own = at(0.0);
        let (a1, a2, a3, b1, far) = (at(0.010), at(0.500), at(0.012), at(0.040), at(0.9));
        let servers = [
            ("dc1", Some(&own)),
            ("dcA", Some(&a1)),
            ("dcA", Some(&a2)),
            ("dcA", Some(&a3)),
            ("dcB", Some(&b1)),
            ("dcC", None),
            ("dcD", Some(&far)),
        ];
        // dcA's median (12 ms) beats dcB (40 ms) despite one far server; dcC is unknown.
        assert_eq!(
            rank_datacenters("dc1", &own, servers),
            ["dcA", "dcB", "dcD", "dcC"]
        );
    }

    #[test]
    fn trailers_round_trip_and_refuse_garbage() {
        let coord = Coordinate {
            vec: (0..8).map(|i| i as f64 * 0.001).collect(),
            error: 0.2,
            adjustment: -0.0001,
            height: 0.00002,
        };
        let mut out = Vec::new();
        encode_trailer(&coord, &mut out);
        assert_eq!(out.len(), 2 + 11 * 8);
        assert_eq!(decode_trailer(&out), Some(coord));
        assert_eq!(decode_trailer(&[]), None);
        assert_eq!(decode_trailer(&out[..out.len() - 1]), None);
        let mut wrong = out.clone();
        wrong[0] = b'X';
        assert_eq!(decode_trailer(&wrong), None);
        let mut nan = out.clone();
        nan[2..10].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(decode_trailer(&nan), None);
    }
}
