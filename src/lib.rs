//! EnergyGuard: durable, replicated storage and alerting for energy readings.
//!
//! Data flow (README.md has the picture):
//!
//! * [`reading`] parses untrusted input into validated readings: the one
//!   parser every door uses.
//! * [`ingest`]: the one path from a reading to stored and alerted.
//! * [`replication`] places each reading on its replicas (`full` or
//!   `consistent` hashing), writes to a quorum, keeps hints for nodes that are
//!   down, repairs recovered nodes and rebalances when the placement changes.
//! * [`storage`] holds versioned records on nodes (SQLite files; in memory
//!   for tests), knowing nothing of replication.
//! * [`alerts`] turns readings into alert episodes (a pure state machine)
//!   and keeps thresholds and alert history durable.
//! * [`http`] serves the REST API and [`console`] the web console on the
//!   same port; [`server`] wires everything together
//!   from a [`config::Config`]; [`cli`] is the command-line client.
//! * [`latest`] keeps every sensor's newest reading in memory for the
//!   console.
//! * [`telemetry`] describes every metric the service exports.
//! * [`version`] issues the write versions that make replicas converge;
//!   [`history`] aggregates a sensor's history into buckets.
//! * [`bench`](mod@bench) is `energyguard bench`: the end-to-end performance tests.

pub mod alerts;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod history;
pub mod http;
pub mod ingest;
pub mod latest;
pub mod logging;
pub mod mqtt;
pub mod node;
pub mod reading;
pub mod replication;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod version;
