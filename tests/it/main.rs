//! The integration tests, in one binary: each module is one area of the
//! product, tested against the real `energyguard` binary, real brokers,
//! real SQLite files and a real browser. One binary links the dependencies
//! once instead of once per area.
//!
//! Run one area with `cargo test --test it <module>::`, for example
//! `cargo test --test it console::`.
//!
//! `tests/crash.rs` stays a binary of its own: it has its own `main`, which
//! re-executes itself as the writer it kills.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod bench;
mod cli;
mod console;
mod docker;
mod external_broker;
mod http_limits;
mod model;
mod mqtt;
mod mqtt_security;
mod nodes_apart;
mod observability;
mod replication;
mod tls;
mod tokens;
