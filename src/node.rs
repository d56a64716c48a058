//! `energyguard node`: one storage node as a process of its own, so that
//! a replica fails apart from the service and from the other replicas (its
//! own disk, its own machine).
//!
//! Its directory belongs to one node id: `node.id`, written when the
//! directory is first used, makes a node refuse to start as another id (a
//! mix-up of directories would otherwise serve one node's data as
//! another's). The node's database is `<dir>/<id>.sqlite3`, exactly as a
//! local node's; what it acknowledges is committed first, so a SIGKILL loses
//! nothing acknowledged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::remote::server::{EpochGuard, NodeService, serve};
use crate::storage::sqlite::{SqliteNode, Synchronous};
use crate::storage::{NodeId, StorageError, StorageNode};

/// The file naming the node a directory belongs to.
const ID_FILE: &str = "node.id";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{dir} belongs to node {found:?}, not {wanted}: give each node its own directory")]
    OtherNode {
        dir: String,
        found: String,
        wanted: NodeId,
    },
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("node directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// What `energyguard node` was asked to run.
pub struct NodeSettings {
    pub id: NodeId,
    pub dir: PathBuf,
    pub secret: String,
    pub synchronous: Synchronous,
}

/// Binds `listen`, then serves the node until `shutdown`.
pub async fn serve_node(
    settings: NodeSettings,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| NodeError::Listen {
            address: listen,
            source,
        })?;
    run_node(settings, listener, shutdown).await
}

/// Serves the node on an already bound listener (tests bind port 0), then
/// closes its storage once calls in flight are answered.
pub async fn run_node(
    settings: NodeSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let NodeSettings {
        id,
        dir,
        secret,
        synchronous,
    } = settings;
    let io = |source| NodeError::Io {
        dir: dir.display().to_string(),
        source,
    };
    claim_dir(&dir, &id)?;
    let epochs = EpochGuard::open(&dir).map_err(io)?;
    let node = Arc::new(SqliteNode::open(id.clone(), &dir, synchronous)?);
    let incarnation = node.incarnation().0.clone();
    let address = listener.local_addr().map_err(io)?;
    tracing::info!(node = %id, dir = %dir.display(), "storage node listening on http://{address}");
    let service = NodeService::new(node.clone(), incarnation, epochs);
    let served = serve(listener, service, &secret, shutdown).await;
    tracing::info!(node = %id, "storage node stopping: flushing and closing its storage");
    node.close().await?;
    served?;
    tracing::info!(node = %id, "storage node stopped");
    Ok(())
}

/// Makes `dir` (created if needed, private) the directory of node `id`,
/// or checks that it is: a node process's, or a local node's own directory.
pub(crate) fn claim_dir(dir: &Path, id: &NodeId) -> Result<(), NodeError> {
    let path = dir.join(ID_FILE);
    let io = |source| NodeError::Io {
        dir: dir.display().to_string(),
        source,
    };
    crate::server::create_private_dir(dir).map_err(io)?;
    match std::fs::read_to_string(&path) {
        Ok(found) if found.trim() == id.as_str() => Ok(()),
        Ok(found) => Err(NodeError::OtherNode {
            dir: dir.display().to_string(),
            found: found.trim().to_string(),
            wanted: id.clone(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::storage::write_file_durably(&path, id.as_str().as_bytes()).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_serves_the_node_it_was_first_used_by_and_no_other() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node1: NodeId = "node1".parse().expect("id");
        let node2: NodeId = "node2".parse().expect("id");
        claim_dir(dir.path(), &node1).expect("a new directory is claimed");
        claim_dir(dir.path(), &node1).expect("and stays the same node's");
        let error = claim_dir(dir.path(), &node2).expect_err("another id is refused");
        assert!(
            error.to_string().contains("belongs to node \"node1\""),
            "{error}"
        );
    }
}
