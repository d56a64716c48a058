//! Opens the storage cluster the configuration describes: each node where
//! it lives (a file in `data_dir`, a directory of its own, or a node
//! process), the cluster state in `data_dir`, and failure detection.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::config::{Config, ConfigError, NodeLocation};
use crate::node::NodeError;
use crate::replication::meta::MetaStore;
use crate::replication::{PlacementSpec, ReplicationError, Replicator};
use crate::storage::remote::client::{RemoteNode, RemoteSettings};
use crate::storage::reopen::ReopeningNode;
use crate::storage::sqlite::{SqliteNode, Synchronous};
use crate::storage::{NodeId, StorageError, StorageNode};

/// A call to a node process other than a probe fails after twice
/// `failure_timeout`, but not before this: a page of a scan or a batch of
/// writes takes milliseconds. A write waits for its replicas, so this bounds
/// how long a hung node process can hold writes up before it is taken out.
const MIN_CALL_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("replication: {0}")]
    Replication(#[from] ReplicationError),
}

/// Opens every configured node and the replicator over them, and starts
/// their background work (the rebalance mover, failure detection).
pub async fn open(config: &Config) -> Result<Arc<Replicator>, ClusterError> {
    let data_dir = config.data_dir.as_path();
    let synchronous = config.storage.synchronous;
    let failure_timeout = config.cluster.failure_timeout()?;
    let spec = PlacementSpec {
        settings: config.replication.settings(),
        nodes: config.replication.node_ids(),
    };
    let epoch = Arc::new(AtomicU64::new(0));
    let remote = RemoteSettings {
        secret: config.cluster.secret.clone(),
        probe_deadline: failure_timeout,
        call_deadline: (2 * failure_timeout).max(MIN_CALL_DEADLINE),
        epoch: epoch.clone(),
    };
    let places: BTreeMap<NodeId, NodeLocation> = config
        .replication
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.location.clone()))
        .collect();
    let meta = MetaStore::open(data_dir, synchronous)?;
    let replicator = Replicator::open_with_epoch(meta, spec, epoch, |id| {
        let node: Arc<dyn StorageNode> = match places.get(id) {
            Some(NodeLocation::Process(url)) => {
                Arc::new(RemoteNode::connect(id.clone(), url, remote.clone())?)
            }
            Some(NodeLocation::Dir(dir)) => open_local(id, dir, synchronous, true)?,
            // A node of an earlier placement that the configuration no
            // longer names lives in `data_dir` until the rebalance is done.
            Some(NodeLocation::DataDir) | None => open_local(id, data_dir, synchronous, false)?,
        };
        Ok(node)
    })
    .await?;
    replicator.start_background();
    replicator.start_health(failure_timeout);
    log_places(&replicator, data_dir);
    Ok(replicator)
}

/// Opens a node stored in `dir` (a directory of its own when `own_dir`, in
/// which case it is claimed for `id`). A node whose storage fails to open
/// is answered anyway, down until it opens (see [`ReopeningNode`]); only
/// what no retry can fix stops the start: the directory is another node's,
/// or another process holds the file.
fn open_local(
    id: &NodeId,
    dir: &Path,
    synchronous: Synchronous,
    own_dir: bool,
) -> Result<Arc<dyn StorageNode>, StorageError> {
    let open = {
        let (id, dir) = (id.clone(), dir.to_path_buf());
        move || {
            if own_dir {
                crate::node::claim_dir(&dir, &id).map_err(|e| match e {
                    NodeError::Storage(storage) => storage,
                    NodeError::Io { dir, source } => StorageError::Io { path: dir, source },
                    other => StorageError::Refused(other.to_string()),
                })?;
            }
            SqliteNode::open(id.clone(), &dir, synchronous)
        }
    };
    match open() {
        Ok(node) => Ok(Arc::new(node)),
        Err(error @ (StorageError::Refused(_) | StorageError::InUse { .. })) => Err(error),
        Err(error) => {
            tracing::error!(node = %id, dir = %dir.display(), %error,
                "storage node cannot be opened: down until it opens");
            let reopening = ReopeningNode::new(id.clone(), dir.to_path_buf(), Arc::new(open));
            Ok(Arc::new(reopening))
        }
    }
}

fn log_places(replicator: &Replicator, data_dir: &Path) {
    for report in replicator.node_states() {
        tracing::info!(node = %report.id, address = %report.address, status = ?report.status,
            data_dir = %data_dir.display(), "storage node");
    }
}
