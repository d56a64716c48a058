//! The external broker the bench compares against, when one is installed:
//! Debian's mosquitto on a free port, anonymous, no persistence, allowing
//! [`WINDOW`] unacknowledged messages per client. Killed on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::BenchError;
use super::service::free_port;
use crate::mqtt::broker::accepts_connections;

/// Unacknowledged QoS 1 messages mosquitto may send one subscriber (its
/// `max_inflight_messages`), EnergyGuard's default
/// `mqtt.batch_messages`: batches settle at about half of it, so mosquitto
/// keeps sending while one is stored.
pub const WINDOW: usize = 1_000;

pub struct Mosquitto {
    child: Child,
    pub port: u16,
    /// As it reports itself, e.g. "mosquitto version 2.0.11".
    pub version: String,
}

impl Mosquitto {
    /// Starts mosquitto; `None` when it is not installed.
    pub async fn start(dir: &Path) -> Result<Option<Self>, BenchError> {
        let Some(binary) = [
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
            "/usr/bin/mosquitto",
        ]
        .into_iter()
        .find(|b| Path::new(b).is_file()) else {
            return Ok(None);
        };
        let help = Command::new(binary).arg("-h").output()?;
        let version = String::from_utf8_lossy(&help.stdout)
            .lines()
            .next()
            .unwrap_or("mosquitto")
            .trim()
            .to_string();
        let port = free_port()?;
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n\
                 max_inflight_messages {WINDOW}\nmax_queued_messages 10000000\n"
            ),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let broker = Self {
            child,
            port,
            version,
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if !accepts_connections(address, Duration::from_secs(10)).await {
            return Err(BenchError::Mqtt(format!(
                "{binary} did not listen on {port}"
            )));
        }
        Ok(Some(broker))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
