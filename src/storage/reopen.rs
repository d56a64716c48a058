//! A local node whose storage could not be opened when the service started
//! (a failed or missing disk, a corrupt file): the service starts anyway
//! with the node down, and every call, failure detection's probes included,
//! tries to open it again until it opens. From then on it is that SQLite
//! node.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::sqlite::SqliteNode;
use super::{
    DigestRequest, Incarnation, NodeId, NodeStats, RangeDigest, Record, Scan, StorageError,
    StorageNode, StorageResult,
};
use crate::reading::{Key, SensorId};

/// Opens the node's storage (a blocking call).
pub type Opener = Arc<dyn Fn() -> StorageResult<SqliteNode> + Send + Sync>;

pub struct ReopeningNode {
    id: NodeId,
    dir: PathBuf,
    open: Opener,
    opened: tokio::sync::OnceCell<SqliteNode>,
}

impl ReopeningNode {
    /// A node in `dir` that `open` opens; nothing is tried until the first
    /// call.
    pub fn new(id: NodeId, dir: PathBuf, open: Opener) -> Self {
        Self {
            id,
            dir,
            open,
            opened: tokio::sync::OnceCell::new(),
        }
    }

    /// The node, opened now if it was not yet.
    async fn node(&self) -> StorageResult<&SqliteNode> {
        self.opened
            .get_or_try_init(|| async {
                let open = self.open.clone();
                tokio::task::spawn_blocking(move || open())
                    .await
                    .map_err(|e| StorageError::Corrupt(format!("opening the node panicked: {e}")))?
            })
            .await
    }
}

#[async_trait]
impl StorageNode for ReopeningNode {
    fn id(&self) -> &NodeId {
        &self.id
    }

    async fn apply(&self, records: Vec<Record>) -> StorageResult<u64> {
        self.node().await?.apply(records).await
    }

    async fn get(&self, key: &Key) -> StorageResult<Option<Record>> {
        self.node().await?.get(key).await
    }

    async fn scan(&self, scan: Scan) -> StorageResult<Vec<Record>> {
        self.node().await?.scan(scan).await
    }

    async fn digests(&self, request: DigestRequest) -> StorageResult<Vec<RangeDigest>> {
        self.node().await?.digests(request).await
    }

    async fn remove_sensors(&self, sensors: Vec<SensorId>) -> StorageResult<u64> {
        self.node().await?.remove_sensors(sensors).await
    }

    async fn stats(&self) -> StorageResult<NodeStats> {
        self.node().await?.stats().await
    }

    async fn close(&self) -> StorageResult<()> {
        match self.opened.get() {
            Some(node) => node.close().await,
            None => Ok(()),
        }
    }

    fn address(&self) -> String {
        self.dir.display().to_string()
    }

    async fn probe(&self) -> StorageResult<Incarnation> {
        self.node().await?.probe().await
    }
}
