//! The cluster with its storage nodes in processes of their own: three
//! `energyguard node` children on loopback and a service (`consistent`,
//! RF 2) that reaches them over gRPC. Measured: batched ingest (against the
//! in-process figure of the same run), the recovery of a node that missed
//! `readings` while it was down, and how long failure detection takes each
//! way (SIGKILL of a node until `down`, its restart until `up`, with
//! `failure_timeout = 1s`).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use reqwest::Method;

use super::BenchError;
use super::load::millis;
use super::report::{NodeProcesses, Parameters};
use super::service::{ServiceProcess, child_command, free_port};
use super::workloads;

const SECRET: &str = "bench-cluster-secret-0123456789";
const IDS: [&str; 3] = ["node1", "node2", "node3"];
/// The node killed and restarted (the recover workload's victim too).
const VICTIM: usize = 1;

/// One `energyguard node` child, killed on drop.
struct NodeChild {
    child: Child,
    id: &'static str,
    dir: PathBuf,
    address: String,
}

impl NodeChild {
    async fn start(id: &'static str, dir: PathBuf, address: String) -> Result<Self, BenchError> {
        let mut command = child_command(&dir.with_extension("log"))?;
        command
            .args(["node", "--id", id, "--listen", &address, "--data"])
            .arg(&dir)
            .env("ENERGYGUARD_CLUSTER__SECRET", SECRET);
        let node = Self {
            child: command.spawn()?,
            id,
            dir,
            address,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&node.address).await.is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Service(format!(
                    "node {id} did not listen on {} within 30 s",
                    node.address
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(node)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the node-process workloads; `in_process_batch` is the batched
/// ingest of the in-process `consistent` cluster measured in the same run.
pub async fn run(
    dir: &Path,
    p: &Parameters,
    in_process_batch: f64,
) -> Result<NodeProcesses, BenchError> {
    let mut nodes = Vec::new();
    for id in IDS {
        let address = format!("127.0.0.1:{}", free_port()?);
        nodes.push(NodeChild::start(id, dir.join(id), address).await?);
    }
    let list: Vec<String> = nodes
        .iter()
        .map(|n| format!("{{ id = \"{}\", url = \"http://{}\" }}", n.id, n.address))
        .collect();
    let section = format!(
        "strategy = \"consistent\"\nreplication_factor = 2\nnodes = [{}]\n\
         [cluster]\nsecret = \"{SECRET}\"\nfailure_timeout = \"1s\"",
        list.join(", ")
    );
    let service_dir = dir.join("service");
    std::fs::create_dir_all(&service_dir)?;
    let service = ServiceProcess::start(&service_dir, &section).await?;
    let batch_readings_per_s = workloads::batch_rate(&service, p).await?;
    // The victim holds RF/nodes = 2/3 of the sensors: write 3/2 of
    // `readings` so that it misses `readings`.
    let missing = Parameters {
        readings: p.readings * 3 / 2,
        ..p.clone()
    };
    let recovery = workloads::recover(&service, &missing)
        .await?
        .pop()
        .ok_or_else(|| BenchError::Service("no recovery measured".into()))?;

    let victim = &mut nodes[VICTIM];
    let killed = Instant::now();
    victim.kill();
    wait_status(&service, victim.id, "down").await?;
    let kill_to_down_ms = millis(killed.elapsed());
    let restarted = Instant::now();
    let (id, node_dir, address) = (victim.id, victim.dir.clone(), victim.address.clone());
    *victim = NodeChild::start(id, node_dir, address).await?;
    wait_status(&service, id, "up").await?;
    let restart_to_up_ms = millis(restarted.elapsed());

    Ok(NodeProcesses {
        batch_readings_per_s,
        batch_ratio_to_in_process: batch_readings_per_s / in_process_batch.max(1.0),
        recovery,
        kill_to_down_ms,
        restart_to_up_ms,
    })
}

/// Polls `/nodes_status` every 5 ms until node `id` has `status`.
async fn wait_status(service: &ServiceProcess, id: &str, status: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = service.api.call(Method::GET, "/nodes_status", None).await?;
        let reached = nodes
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"] == id && n["status"] == status);
        if reached {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Service(format!(
                "node {id} not {status} within 60 s: {nodes}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
