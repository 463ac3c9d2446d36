//! The integration suite, one binary (one link per build): the in-process tier (transport,
//! Raft clusters and storage) and the real-process tier (the built `consulate` binary run
//! as agents, driven over HTTP, DNS, the CLI and signals). `common` is the harness.

mod common;

mod acl;
mod agent_ops;
mod cache;
mod cli;
mod dns;
mod federation;
mod filter;
mod force_leave;
mod gossip_lan;
mod gossip_sync;
mod hardening;
mod health_checks;
mod http_catalog;
mod http_kv;
mod https;
mod keyring;
mod prepared_query;
mod prometheus;
mod py_consul;
mod raft_cluster;
mod raft_process;
mod raft_storage;
mod server_loss;
mod sessions;
mod snapshot;
mod transport;
mod ui;
mod up;
