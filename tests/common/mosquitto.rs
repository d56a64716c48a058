//! A real mosquitto broker with persistence, on a free port in a temp dir,
//! killed on drop. The binaries come from Debian's `mosquitto` package
//! (`.ci/run` installs it when missing).

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
        let port = free_port();
        let store = dir.join("mosquitto");
        std::fs::create_dir_all(&store).expect("mosquitto dir");
        Self::from_config(
            dir.join("mosquitto.conf"),
            port,
            format!(
                "listener {port} 127.0.0.1\n{access}persistence true\npersistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n",
                store.display()
            ),
        )
    }

    /// Writes `text` to `config` and starts mosquitto with it on `port`.
    fn from_config(config: std::path::PathBuf, port: u16, text: String) -> Self {
        std::fs::write(&config, text).expect("mosquitto config");
        let child = spawn(&config, port);
        Self {
            port,
            config,
            child,
        }
    }

    /// Anonymous clients, over TLS only, with the PEM `cert` and `key`.
    pub fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Self {
        let port = free_port();
        Self::from_config(
            dir.join("mosquitto-tls.conf"),
            port,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\ncertfile {}\nkeyfile {}\n",
                cert.display(),
                key.display()
            ),
        )
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
        self.child = spawn(&self.config, self.port);
    }
}

fn spawn(config: &Path, port: u16) -> Child {
    let binary = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let child = Command::new(binary)
        .arg("-c")
        .arg(config)
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
    child
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
