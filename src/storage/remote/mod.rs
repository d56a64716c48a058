//! Storage nodes in processes of their own, reached over gRPC (tonic).
//!
//! * [`client::RemoteNode`] implements [`StorageNode`](super::StorageNode)
//!   for the service: every call has a deadline, pages and batches are
//!   bounded in records (so in bytes), and one HTTP/2 connection per node is
//!   reused by every call.
//! * [`server`] serves one node's storage (`energyguard node`): it answers
//!   401 to any call without the cluster secret (compared in constant time),
//!   tells who it is (its id and the incarnation of its storage), and
//!   refuses a service whose settings epoch is older than one it has seen.
//!
//! The schema is `proto/node.proto`; `wire` converts its messages to and
//! from the storage types, validating everything that arrives.

pub mod client;
pub mod server;
mod wire;

/// The generated messages, client and server of `proto/node.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("energyguard.node.v1");
}

/// The header carrying the caller's settings epoch.
pub const EPOCH_HEADER: &str = "energyguard-epoch";

/// Largest message either side decodes. Pages and batches stay far below
/// it ([`WIRE_PAGE`] records of at most a few hundred bytes each); it
/// bounds what a peer can make the other allocate.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Records per `Apply` or `Scan` call at most.
pub const WIRE_PAGE: usize = 20_000;

/// HTTP/2 flow-control windows, both sides: a page of [`WIRE_PAGE`]
/// records (about 1 MB) crosses in one window instead of waiting for
/// HTTP/2's default 64 KiB to be acknowledged a dozen times.
pub const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
