//! EnergyGuard: durable, replicated storage and alerting for energy readings.
//!
//! Data flow (see README.md for the picture):
//!
//! * [`reading`] parses untrusted input into validated readings: the one
//!   parser every door uses.
//! * [`replication`] places each reading on its replicas (`full` or
//!   `consistent` hashing), writes to a quorum, keeps hints for nodes that are
//!   down, repairs recovered nodes and rebalances when the placement changes.
//! * [`storage`] holds versioned records on nodes (SQLite files; in memory
//!   for tests), knowing nothing of replication.
//! * [`version`] issues the write versions that make replicas converge.

pub mod reading;
pub mod replication;
pub mod storage;
pub mod version;
