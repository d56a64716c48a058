//! Real `energyguard node` processes for tests, and a TCP proxy that can
//! cut the link between the service and a node.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SECRET: &str = "cluster-secret-0123456789";

/// One node process; SIGKILLed on drop.
pub struct NodeProcess {
    pub id: String,
    pub dir: PathBuf,
    /// The address it listens on; a restart listens there again.
    pub address: String,
    child: Child,
}

/// Starts `energyguard node` and answers it with the log it wrote until
/// it said where it listens (or exited).
fn spawn(id: &str, dir: &Path, listen: &str, secret: &str) -> (Child, Result<String, Vec<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["node", "--id", id, "--listen", listen, "--data"])
        .arg(dir)
        .env("ENERGYGUARD_CLUSTER__SECRET", secret)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start energyguard node");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) {
        if let Some(address) = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            return (child, Ok(address.to_string()));
        }
        seen.push(line);
    }
    (child, Err(seen))
}

impl NodeProcess {
    /// Starts node `id` on a free port, its directory `dir`.
    pub fn start(id: &str, dir: &Path) -> Self {
        Self::start_at(id, dir, "127.0.0.1:0")
    }

    fn start_at(id: &str, dir: &Path, listen: &str) -> Self {
        let (mut child, address) = spawn(id, dir, listen, SECRET);
        match address {
            Ok(address) => Self {
                id: id.to_string(),
                dir: dir.to_path_buf(),
                address,
                child,
            },
            Err(log) => {
                let _ = child.kill();
                panic!("node {id} did not start: {log:#?}");
            }
        }
    }

    /// Runs `energyguard node` expecting it to refuse to start; answers
    /// its log.
    pub fn refused(id: &str, dir: &Path, secret: &str) -> Vec<String> {
        let (mut child, address) = spawn(id, dir, "127.0.0.1:0", secret);
        let status = child.wait().expect("wait");
        assert!(!status.success(), "node {id} started: {address:?}");
        address.expect_err("a node that refuses to start listens nowhere")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address (after [`Self::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        *self = Self::start_at(&self.id.clone(), &self.dir.clone(), &self.address.clone());
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a node. While cut, it moves no byte either way
/// and leaves new connections hanging, as a network partition does; once
/// healed, the bytes held back flow again.
pub struct Proxy {
    pub address: String,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let shared = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, cut) = (upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    wait_while_cut(&cut).await;
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, cut.clone()),
                        pump(server_read, client_write, cut)
                    );
                });
            }
        });
        Self { address, cut }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn wait_while_cut(cut: &AtomicBool) {
    while cut.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        wait_while_cut(&cut).await;
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read before the cut: held back until it heals.
        wait_while_cut(&cut).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
