//! A real mosquitto broker with persistence, on a free port in a temp dir,
//! killed on drop. The binaries come from Debian's `mosquitto` package
//! (`.ci/run` installs it when missing).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::service::free_port;

pub struct Mosquitto {
    pub port: u16,
    config: PathBuf,
    child: Child,
}

impl Mosquitto {
    /// Anonymous clients allowed.
    pub fn start(dir: &Path) -> Self {
        Self::start_with_user(dir, None)
    }

    /// With `user` (name, password), only that user may connect.
    pub fn start_with_user(dir: &Path, user: Option<(&str, &str)>) -> Self {
        match user {
            None => Self::with_access(dir, "allow_anonymous true\n".into()),
            Some(user) => Self::start_with_acl(dir, &[user], None),
        }
    }

    /// Only `users` (name, password) may connect, with the rights of the
    /// ACL file `acl`, if any.
    pub fn start_with_acl(dir: &Path, users: &[(&str, &str)], acl: Option<&Path>) -> Self {
        let file = dir.join("mosquitto.passwd");
        for (i, (name, password)) in users.iter().enumerate() {
            let created = Command::new("mosquitto_passwd")
                .arg("-b")
                .args(if i == 0 { &["-c"][..] } else { &[] })
                .arg(&file)
                .args([name, password])
                .status()
                .expect("run mosquitto_passwd");
            assert!(created.success(), "mosquitto_passwd failed");
        }
        let mut access = format!("allow_anonymous false\npassword_file {}\n", file.display());
        if let Some(acl) = acl {
            access.push_str(&format!("acl_file {}\n", acl.display()));
        }
        Self::with_access(dir, access)
    }

    fn with_access(dir: &Path, access: String) -> Self {
        let store = dir.join("mosquitto");
        std::fs::create_dir_all(&store).expect("mosquitto dir");
        Self::from_config(dir.join("mosquitto.conf"), |port| {
            format!(
                "listener {port} 127.0.0.1\n{access}persistence true\npersistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n",
                store.display()
            )
        })
    }

    /// Starts mosquitto with the config `text` makes for a free port, on
    /// another port if that one was taken meanwhile.
    fn from_config(config: std::path::PathBuf, text: impl Fn(u16) -> String) -> Self {
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(&config, text(port)).expect("mosquitto config");
            if let Some(child) = spawn(&config, port) {
                return Self {
                    port,
                    config,
                    child,
                };
            }
        }
        panic!("mosquitto found no free port in five tries");
    }

    /// Anonymous clients, over TLS only, with the PEM `cert` and `key`.
    pub fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Self {
        Self::from_config(dir.join("mosquitto-tls.conf"), |port| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\ncertfile {}\nkeyfile {}\n",
                cert.display(),
                key.display()
            )
        })
    }

    /// Stops the broker the way an operator would (SIGTERM: it saves its
    /// persistent sessions and queued messages) and starts it again on the
    /// same port.
    pub fn restart(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("send SIGTERM");
        self.child.wait().expect("mosquitto exits");
        self.child = spawn(&self.config, self.port)
            .unwrap_or_else(|| panic!("mosquitto could not listen on {} again", self.port));
    }
}

/// Starts mosquitto and waits until *it* listens: it says so on stderr
/// ("… running") once its listener is open. `None` when it could not bind
/// the port (another process took it after it was found free); a port
/// that merely accepts connections could be another broker's.
fn spawn(config: &Path, port: u16) -> Option<Child> {
    let binary = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto (apt-get install -y mosquitto)");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(" running") {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not start on port {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            return Some(child);
        }
        if line.contains("Address already in use") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("mosquitto did not start on port {port}: {seen:#?}");
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
