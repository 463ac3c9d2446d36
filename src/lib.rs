//! consulate: a multi-datacenter service-discovery federation gateway in the spirit of
//! HashiCorp Consul. See `ARCHITECTURE.md` for the map of modules.

pub mod acl;
pub mod agent;
pub mod cache;
pub mod cli;
pub mod config;
pub mod coordinate;
pub mod dispatch;
pub mod dns;
pub mod duration;
pub mod federation;
pub mod gossip;
pub mod http;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod raft;
pub mod rpc;
pub mod state;
pub mod transport;
pub mod ui;
pub mod up;
pub mod vocab;
