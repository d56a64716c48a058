//! A real mosquitto broker with persistence, on a free port in a temp dir,
//! killed on drop. The binary comes from Debian's `mosquitto` package
//! (`.ci/run` installs it when missing).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::service::free_port;

pub struct Mosquitto {
    pub port: u16,
    child: Child,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let store = dir.join("mosquitto");
        std::fs::create_dir_all(&store).expect("mosquitto dir");
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n",
                store.display()
            ),
        )
        .expect("mosquitto config");
        let binary = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|b| Path::new(b).exists() || *b == "mosquitto")
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install -y mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
