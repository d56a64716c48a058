//! The node's side: one node's storage served over gRPC (`energyguard node`).
//!
//! Every call passes two checks before it reaches the storage:
//! * [`RequireSecret`], a tower layer, answers HTTP 401 unless the call
//!   carries `authorization: Bearer <cluster.secret>`, compared in constant
//!   time;
//! * [`EpochGuard`] refuses a caller whose settings epoch is older than the
//!   newest this node has seen (kept in `<dir>/epoch`, so it survives
//!   restarts): a service started from stale settings cannot remove data
//!   this node still owns.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use super::proto::storage_node_server::{StorageNode as NodeRpc, StorageNodeServer};
use super::{
    CONNECTION_WINDOW_BYTES, EPOCH_HEADER, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES, proto, wire,
};
use crate::storage::{StorageError, StorageNode};

/// Answers 401 to a request without the secret.
#[derive(Clone)]
pub struct RequireSecret<S> {
    inner: S,
    expected: Arc<[u8]>,
}

impl<S, B> tower::Service<http::Request<B>> for RequireSecret<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        let admitted = presented.is_some_and(|p| bool::from(p.ct_eq(&self.expected)));
        if admitted {
            return Either::Right(self.inner.call(request));
        }
        let mut refused = http::Response::new(tonic::body::Body::empty());
        *refused.status_mut() = http::StatusCode::UNAUTHORIZED;
        Either::Left(ready(Ok(refused)))
    }
}

/// The newest settings epoch this node has seen, durable in its directory.
pub struct EpochGuard {
    path: PathBuf,
    seen: Mutex<u64>,
}

impl EpochGuard {
    /// Reads `<dir>/epoch` (0 when absent).
    pub fn open(dir: &std::path::Path) -> std::io::Result<Self> {
        let path = dir.join("epoch");
        let seen = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold an epoch", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Self {
            path,
            seen: Mutex::new(seen),
        })
    }

    /// Admits a caller at `epoch`: refused below the newest seen, recorded
    /// (durably, before answering) above it. The file is written only when
    /// the epoch grows, which happens once per settings change.
    fn admit(&self, epoch: u64) -> Result<(), Status> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if epoch < *seen {
            return Err(Status::failed_precondition(format!(
                "the caller's settings epoch {epoch} is older than {} seen by this node: \
                 is a stale EnergyGuard service running?",
                *seen
            )));
        }
        if epoch > *seen {
            crate::storage::write_file_durably(&self.path, epoch.to_string().as_bytes())
                .map_err(|e| Status::internal(format!("recording epoch {epoch}: {e}")))?;
            *seen = epoch;
        }
        Ok(())
    }
}

/// One node's storage behind the checks.
pub struct NodeService {
    node: Arc<dyn StorageNode>,
    incarnation: String,
    epochs: EpochGuard,
}

impl NodeService {
    pub fn new(node: Arc<dyn StorageNode>, incarnation: String, epochs: EpochGuard) -> Self {
        Self {
            node,
            incarnation,
            epochs,
        }
    }

    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let epoch = request
            .metadata()
            .get(EPOCH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Status::invalid_argument(format!("no {EPOCH_HEADER} header")))?;
        self.epochs.admit(epoch)
    }
}

fn to_status(error: StorageError) -> Status {
    match error {
        StorageError::Closed => Status::unavailable("the node is shutting down"),
        StorageError::Refused(message) => Status::failed_precondition(message),
        other => Status::internal(other.to_string()),
    }
}

fn invalid(error: crate::reading::InvalidInput) -> Status {
    Status::invalid_argument(error.to_string())
}

#[tonic::async_trait]
impl NodeRpc for NodeService {
    async fn hello(
        &self,
        request: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::HelloReply>, Status> {
        self.admit(&request)?;
        Ok(Response::new(proto::HelloReply {
            node_id: self.node.id().to_string(),
            incarnation: self.incarnation.clone(),
        }))
    }

    async fn apply(
        &self,
        request: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ApplyReply>, Status> {
        self.admit(&request)?;
        let records = wire::records_from_wire(request.into_inner().records).map_err(invalid)?;
        let changed = self.node.apply(records).await.map_err(to_status)?;
        Ok(Response::new(proto::ApplyReply { changed }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetReply>, Status> {
        self.admit(&request)?;
        let key = request
            .into_inner()
            .key
            .ok_or_else(|| Status::invalid_argument("no key"))?;
        let key = wire::key_from_wire(key).map_err(invalid)?;
        let record = self.node.get(&key).await.map_err(to_status)?;
        Ok(Response::new(proto::GetReply {
            record: record.as_ref().map(wire::record_to_wire),
        }))
    }

    async fn scan(
        &self,
        request: Request<proto::ScanRequest>,
    ) -> Result<Response<proto::ScanReply>, Status> {
        self.admit(&request)?;
        let scan = wire::scan_from_wire(request.into_inner()).map_err(invalid)?;
        let records = self.node.scan(scan).await.map_err(to_status)?;
        Ok(Response::new(proto::ScanReply {
            records: records.iter().map(wire::record_to_wire).collect(),
        }))
    }

    async fn digests(
        &self,
        request: Request<proto::DigestsRequest>,
    ) -> Result<Response<proto::DigestsReply>, Status> {
        self.admit(&request)?;
        let digest_request =
            wire::digest_request_from_wire(request.into_inner()).map_err(invalid)?;
        let digests = self.node.digests(digest_request).await.map_err(to_status)?;
        Ok(Response::new(proto::DigestsReply {
            digests: digests.iter().map(wire::digest_to_wire).collect(),
        }))
    }

    async fn remove_sensors(
        &self,
        request: Request<proto::RemoveSensorsRequest>,
    ) -> Result<Response<proto::RemoveSensorsReply>, Status> {
        self.admit(&request)?;
        let sensors = request
            .into_inner()
            .sensors
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let removed = self.node.remove_sensors(sensors).await.map_err(to_status)?;
        Ok(Response::new(proto::RemoveSensorsReply { removed }))
    }

    async fn stats(
        &self,
        request: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsReply>, Status> {
        self.admit(&request)?;
        let stats = self.node.stats().await.map_err(to_status)?;
        Ok(Response::new(wire::stats_to_wire(&stats)))
    }
}

/// Serves `service` on `listener` until `shutdown` completes, then lets
/// calls in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: NodeService,
    secret: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let expected: Arc<[u8]> = Arc::from(secret.as_bytes());
    let rpc = StorageNodeServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .layer(tower::layer::layer_fn(move |inner| RequireSecret {
            inner,
            expected: expected.clone(),
        }))
        .add_service(rpc)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_refuses_an_older_epoch_than_it_has_seen_even_after_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let guard = EpochGuard::open(dir.path()).expect("open");
        guard.admit(1).expect("the first epoch");
        guard.admit(3).expect("a newer epoch");
        let refused = guard.admit(2).expect_err("an older epoch");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

        let reopened = EpochGuard::open(dir.path()).expect("reopen");
        assert!(reopened.admit(2).is_err(), "the newest epoch is durable");
        reopened.admit(3).expect("the same epoch");
    }
}
