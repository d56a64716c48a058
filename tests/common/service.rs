//! Starts the real `energyguard` binary on a free port in a temporary
//! directory, learns its address from its log, and kills it on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const READ_TOKEN: &str = "read-token-0123456789";
pub const WRITE_TOKEN: &str = "write-token-0123456789";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";

pub struct Service {
    pub dir: PathBuf,
    pub url: String,
    /// The embedded MQTT broker's port.
    pub mqtt_port: u16,
    /// Its MQTT over TLS port, when `mqtt.tls_listen` is set.
    pub mqtts_port: Option<u16>,
    child: Child,
    /// Log lines after the address line, for tests that check the log.
    pub log: mpsc::Receiver<String>,
    pub http: reqwest::Client,
}

/// A port that was free a moment ago (rumqttd cannot report a port 0 back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Writes a config with one token per role, the `[mqtt]` section given,
/// plus `extra` TOML (which lands in the `[http]` section).
pub fn write_config(dir: &Path, mqtt: &str, extra: &str) -> PathBuf {
    let path = dir.join("test.toml");
    let text = format!(
        "data_dir = \"{data}\"\n[mqtt]\n{mqtt}\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [[auth.tokens]]\ntoken = \"{READ_TOKEN}\"\nrole = \"read\"\n\
         [[auth.tokens]]\ntoken = \"{WRITE_TOKEN}\"\nrole = \"write\"\n\
         [[auth.tokens]]\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"admin\"\n",
        data = dir.join("data").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

impl Service {
    /// Starts the service in `dir` (reusing whatever data is there), with
    /// its embedded broker on a free port.
    pub fn start_in(dir: &Path, extra_config: &str) -> Self {
        Self::start(dir, None, "listen = \"127.0.0.1:0\"", extra_config)
    }

    /// [`Self::start_in`] with more keys of the `[mqtt]` section.
    pub fn start_in_with_mqtt(dir: &Path, mqtt: &str) -> Self {
        Self::start(dir, None, &format!("listen = \"127.0.0.1:0\"\n{mqtt}"), "")
    }

    /// Starts the service consuming from an external broker on `broker_port`.
    pub fn start_with_broker(dir: &Path, broker_port: u16) -> Self {
        Self::start_with_broker_as(
            dir,
            broker_port,
            "url = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"eg-test\"",
        )
    }

    /// Starts the service consuming from an external broker on
    /// `broker_port`, with `mqtt` as the rest of its `[mqtt]` section
    /// (`{port}` in it is replaced by the broker's port).
    pub fn start_with_broker_as(dir: &Path, broker_port: u16, mqtt: &str) -> Self {
        let mqtt = format!(
            "embedded = false\n{}",
            mqtt.replace("{port}", &broker_port.to_string())
        );
        Self::start(dir, Some(broker_port), &mqtt, "")
    }

    /// `mqtt_port`: the external broker's, or `None` to learn the embedded
    /// one's from the log (it binds port 0, so no other process can take
    /// the port between a probe and the bind).
    fn start(dir: &Path, mqtt_port: Option<u16>, mqtt_section: &str, extra_config: &str) -> Self {
        energyguard::tls::install_default_provider();
        let config = write_config(dir, mqtt_section, extra_config);
        let mut child = Command::new(env!("CARGO_BIN_EXE_energyguard"))
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(dir)
            .env_remove("ENERGYGUARD_API_TOKEN")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start energyguard");
        let stderr = child.stderr.take().expect("stderr");
        let (address_tx, address_rx) = mpsc::channel();
        let (log_tx, log_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                {
                    let _ = address_tx.send(address.to_string());
                }
                let _ = log_tx.send(line);
            }
        });
        let mut mqtt_port = mqtt_port;
        let mut mqtts_port = None;
        let port = |address: &str| address.rsplit(':').next().and_then(|p| p.parse().ok());
        let url = loop {
            match address_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(address) => {
                    if let Some(mqtt) = address.strip_prefix("mqtt://") {
                        mqtt_port = mqtt_port.or(port(mqtt));
                    } else if let Some(mqtts) = address.strip_prefix("mqtts://") {
                        mqtts_port = port(mqtts);
                    } else {
                        break address;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log: Vec<String> = log_rx.try_iter().collect();
                    panic!("the service did not start: {log:#?}");
                }
            }
        };
        let mqtt_port = mqtt_port.expect("the embedded broker's address in the log");
        Self {
            dir: dir.to_path_buf(),
            url,
            mqtt_port,
            mqtts_port,
            child,
            log: log_rx,
            http: reqwest::Client::new(),
        }
    }

    /// Waits until the MQTT consumer has its subscription: readings
    /// published before that are, by MQTT's rules, delivered to nobody.
    pub async fn wait_subscribed(&self) {
        for _ in 0..500 {
            let (_, health) = self.call(Method::GET, "/healthz", None, None).await;
            if health["mqtt"]["subscribed"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the MQTT consumer did not subscribe within 10 s");
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics");
        response.text().await.expect("metrics text")
    }

    /// Signs in to the web console over plain HTTP with `token`; answers
    /// the session cookie (`name=value`).
    pub async fn console_session(&self, token: &str) -> String {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let signed_in = http
            .post(format!("{}/ui/login", self.url))
            .header("origin", &self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .expect("request");
        assert_eq!(signed_in.status(), 303);
        let cookie = signed_in.headers()["set-cookie"].to_str().expect("cookie");
        cookie.split(';').next().expect("pair").to_string()
    }

    /// Live copies on all nodes together (`keys` of `/nodes_status`).
    pub async fn copies(&self) -> u64 {
        let (_, nodes) = self.get("/nodes_status").await;
        nodes
            .as_array()
            .map(|nodes| nodes.iter().map(|n| n["keys"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(READ_TOKEN), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(ADMIN_TOKEN), Some(body))
            .await
    }

    pub async fn admin(&self, method: Method, path: &str) -> (StatusCode, Value) {
        self.call(method, path, Some(ADMIN_TOKEN), None).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// SIGTERM; answers the exit status and the log written after start.
    pub fn terminate_with_log(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.wait_for_sigterm();
        let log = std::mem::replace(&mut self.log, mpsc::channel().1);
        (status, log.iter().collect())
    }

    /// SIGTERM, and waits for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.wait_for_sigterm()
    }

    fn wait_for_sigterm(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("send SIGTERM");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the service did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
