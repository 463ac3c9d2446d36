//! Reports this agent's LAN coordinate to its DC's servers, which keep every node's in the
//! Raft state (Consul's `sendCoordinate`): every `max(sync_coordinate_interval_min,
//! members / 64 per second)` plus as much jitter again, so that however large the DC, its
//! agents write about 64 updates a second at most (group commit joins concurrent ones into
//! one Raft entry). A coordinate that has not yet moved from the origin is not reported.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::coordinate::{Coordinate, Estimator};
use crate::dispatch::Dispatcher;
use crate::gossip::Member;
use crate::state::Command;
use crate::state::coordinates::NodeCoordinate;

/// Updates a DC's agents write per second at most (Consul's `sync_coordinate_rate_target`).
pub const RATE_TARGET: f64 = 64.0;
/// The default shortest time between two reports (Consul's `sync_coordinate_interval_min`).
pub const DEFAULT_INTERVAL_MIN: Duration = Duration::from_secs(15);

/// The time between two reports in a pool of `members`: `members / rate` seconds, at least
/// `min` (Consul's `lib.RateScaledInterval`).
pub fn rate_scaled_interval(rate: f64, min: Duration, members: usize) -> Duration {
    Duration::from_secs_f64(members as f64 / rate).max(min)
}

/// Runs until `shutdown` fires.
pub async fn run(
    node: String,
    coordinates: Arc<Estimator>,
    dispatcher: Dispatcher,
    members: watch::Receiver<Vec<Member>>,
    interval_min: Duration,
    shutdown: CancellationToken,
) {
    let origin = Coordinate::new(&crate::coordinate::Config::default());
    loop {
        let every = rate_scaled_interval(RATE_TARGET, interval_min, members.borrow().len());
        let wait = every + every.mul_f64(rand::random::<f64>());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let coord = coordinates.coordinate();
        if coord == origin {
            continue;
        }
        let cmd = Command::CoordinatesUpdate(vec![NodeCoordinate {
            node: node.clone(),
            coord,
        }]);
        let write = dispatcher.write(dispatcher.agent_token(), None, cmd);
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = write => r,
        };
        if let Err(e) = result {
            debug!(error = %e, "coordinate update failed; the next one retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_grows_with_the_pool_past_the_rate_target() {
        let min = Duration::from_secs(15);
        assert_eq!(rate_scaled_interval(64.0, min, 3), min);
        assert_eq!(rate_scaled_interval(64.0, min, 960), min);
        assert_eq!(
            rate_scaled_interval(64.0, min, 6400),
            Duration::from_secs(100)
        );
    }
}
