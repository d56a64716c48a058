//! The service's side of a node process: [`RemoteNode`].
//!
//! Failures are told apart for the replicator: a call that got no answer
//! (refused connection, cut link, deadline passed) is
//! [`StorageError::Unreachable`] and its outcome unknown; a node that
//! refused the call (secret, identity, epoch) is [`StorageError::Refused`];
//! a node whose storage failed is [`StorageError::Remote`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tonic::codegen::InterceptedService;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::proto::storage_node_client::StorageNodeClient;
use super::{
    CONNECTION_WINDOW_BYTES, EPOCH_HEADER, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES, WIRE_PAGE,
    proto, wire,
};
use crate::reading::Key;
use crate::storage::{
    DigestRequest, Incarnation, NodeId, NodeStats, RangeDigest, Record, Scan, StorageError,
    StorageNode, StorageResult,
};

/// How a service reaches its node processes.
#[derive(Clone)]
pub struct RemoteSettings {
    /// `cluster.secret`.
    pub secret: String,
    /// A probe (`Hello`) unanswered this long fails; also the connect timeout.
    pub probe_deadline: Duration,
    /// Any other call unanswered this long fails.
    pub call_deadline: Duration,
    /// The service's settings epoch, sent with every call.
    pub epoch: Arc<AtomicU64>,
}

/// Adds the secret and the epoch to every call.
#[derive(Clone)]
struct Credentials {
    bearer: AsciiMetadataValue,
    epoch: Arc<AtomicU64>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let metadata = request.metadata_mut();
        metadata.insert("authorization", self.bearer.clone());
        metadata.insert(
            EPOCH_HEADER,
            MetadataValue::from(self.epoch.load(Ordering::Acquire)),
        );
        Ok(request)
    }
}

type Client = StorageNodeClient<InterceptedService<Channel, Credentials>>;

/// A storage node served by `energyguard node`, possibly on another machine.
pub struct RemoteNode {
    id: NodeId,
    url: String,
    client: Client,
    settings: RemoteSettings,
}

impl RemoteNode {
    /// Prepares the connection; nothing is sent until the first call, so a
    /// service starts while its node processes are not running yet.
    pub fn connect(id: NodeId, url: &str, settings: RemoteSettings) -> StorageResult<Self> {
        let invalid =
            |reason: String| StorageError::Refused(format!("node {id} at {url}: {reason}"));
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(settings.probe_deadline)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(settings.probe_deadline)
            .keep_alive_timeout(settings.probe_deadline);
        let bearer = format!("Bearer {}", settings.secret)
            .parse()
            .map_err(|_| invalid("the secret is not valid in a header".into()))?;
        let credentials = Credentials {
            bearer,
            epoch: settings.epoch.clone(),
        };
        let client = StorageNodeClient::with_interceptor(endpoint.connect_lazy(), credentials)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            id,
            url: url.to_string(),
            client,
            settings,
        })
    }

    /// Runs one call within `deadline`, mapping what can go wrong.
    async fn call<T, F>(&self, deadline: Duration, call: F) -> StorageResult<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(from_status(&self.id, status)),
            Err(_) => Err(StorageError::Unreachable(format!(
                "node {} gave no answer within {deadline:?}",
                self.id
            ))),
        }
    }

    fn corrupt(&self, error: crate::reading::InvalidInput) -> StorageError {
        StorageError::Corrupt(format!("node {} answered {error}", self.id))
    }
}

fn from_status(id: &NodeId, status: Status) -> StorageError {
    let message = format!("node {id}: {}", status.message());
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::FailedPrecondition => {
            StorageError::Refused(message)
        }
        Code::Internal | Code::DataLoss | Code::ResourceExhausted => StorageError::Remote(message),
        Code::InvalidArgument => StorageError::Corrupt(message),
        _ => StorageError::Unreachable(message),
    }
}

#[async_trait]
impl StorageNode for RemoteNode {
    fn id(&self) -> &NodeId {
        &self.id
    }

    async fn apply(&self, records: Vec<Record>) -> StorageResult<u64> {
        let mut changed = 0;
        for chunk in records.chunks(WIRE_PAGE) {
            let request = proto::ApplyRequest {
                records: chunk.iter().map(wire::record_to_wire).collect(),
            };
            let mut client = self.client.clone();
            let reply = self
                .call(self.settings.call_deadline, client.apply(request))
                .await?;
            changed += reply.changed;
        }
        Ok(changed)
    }

    async fn get(&self, key: &Key) -> StorageResult<Option<Record>> {
        let request = proto::GetRequest {
            key: Some(wire::key_to_wire(key)),
        };
        let mut client = self.client.clone();
        let reply = self
            .call(self.settings.call_deadline, client.get(request))
            .await?;
        match reply.record {
            None => Ok(None),
            Some(record) => Ok(wire::records_from_wire(vec![record])
                .map_err(|e| self.corrupt(e))?
                .pop()),
        }
    }

    /// Pages of at most [`WIRE_PAGE`] records until `scan.limit` is reached
    /// or the node has no more: the answer is the one a local node gives.
    async fn scan(&self, scan: Scan) -> StorageResult<Vec<Record>> {
        let mut out: Vec<Record> = Vec::new();
        let mut after = scan.after.clone();
        while out.len() < scan.limit {
            let page_limit = (scan.limit - out.len()).min(WIRE_PAGE);
            let request = wire::scan_to_wire(&Scan {
                after: after.clone(),
                limit: page_limit,
                ..scan.clone()
            });
            let mut client = self.client.clone();
            let reply = self
                .call(self.settings.call_deadline, client.scan(request))
                .await?;
            let page = wire::records_from_wire(reply.records).map_err(|e| self.corrupt(e))?;
            let full = page.len() == page_limit;
            after = page.last().map(|r| r.key.clone());
            out.extend(page);
            if !full {
                break;
            }
        }
        Ok(out)
    }

    async fn digests(&self, request: DigestRequest) -> StorageResult<Vec<RangeDigest>> {
        let mut client = self.client.clone();
        let reply = self
            .call(
                self.settings.call_deadline,
                client.digests(wire::digest_request_to_wire(&request)),
            )
            .await?;
        reply
            .digests
            .into_iter()
            .map(|d| wire::digest_from_wire(d).map_err(|e| self.corrupt(e)))
            .collect()
    }

    async fn remove_sensors(&self, sensors: Vec<crate::reading::SensorId>) -> StorageResult<u64> {
        let request = proto::RemoveSensorsRequest {
            sensors: sensors.iter().map(|s| s.as_str().to_string()).collect(),
        };
        let mut client = self.client.clone();
        let reply = self
            .call(self.settings.call_deadline, client.remove_sensors(request))
            .await?;
        Ok(reply.removed)
    }

    async fn stats(&self) -> StorageResult<NodeStats> {
        let mut client = self.client.clone();
        let reply = self
            .call(
                self.settings.call_deadline,
                client.stats(proto::StatsRequest {}),
            )
            .await?;
        Ok(wire::stats_from_wire(reply))
    }

    /// The node process owns its storage; the service only stops calling.
    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }

    fn address(&self) -> String {
        self.url.clone()
    }

    /// `Hello`, checking that the node answering is the one configured.
    async fn probe(&self) -> StorageResult<Incarnation> {
        let mut client = self.client.clone();
        let reply = self
            .call(
                self.settings.probe_deadline,
                client.hello(proto::HelloRequest {}),
            )
            .await?;
        if reply.node_id != self.id.as_str() {
            return Err(StorageError::Refused(format!(
                "{} is node {:?}, not {}",
                self.url, reply.node_id, self.id
            )));
        }
        Ok(Incarnation(reply.incarnation))
    }
}
