//! The service under test: this very binary started as a child process
//! (`energyguard serve`) on free ports in a temporary directory, with its
//! embedded broker, and the REST calls the workloads make to it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::BenchError;

const TOKEN: &str = "bench-admin-token-0123456789";
/// Readings per batched `POST /ingest`.
pub const BATCH: usize = 5_000;

/// A running `energyguard serve`, killed on drop.
pub struct ServiceProcess {
    child: Child,
    pub api: Api,
    pub mqtt_port: u16,
}

/// The service's REST API, as an admin; cheap to clone into load tasks.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    url: String,
}

/// This binary as a child process: warnings only, logging to `log`, and
/// none of the caller's `ENERGYGUARD_*` variables (they would be read as
/// configuration).
pub fn child_command(log: &Path) -> Result<Command, BenchError> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ENERGYGUARD_") {
            command.env_remove(name);
        }
    }
    Ok(command)
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl ServiceProcess {
    /// Starts the service in `dir` with its embedded broker and
    /// `replication` as its `[replication]` section, and waits until it
    /// serves and consumes.
    pub async fn start(dir: &Path, replication: &str) -> Result<Self, BenchError> {
        let mqtt_port = free_port()?;
        let mqtt = format!("listen = \"127.0.0.1:{mqtt_port}\"");
        Self::start_with(dir, replication, mqtt_port, &mqtt).await
    }

    /// The same, consuming from the external broker on `broker_port`.
    pub async fn start_external(
        dir: &Path,
        replication: &str,
        broker_port: u16,
    ) -> Result<Self, BenchError> {
        let mqtt = format!("embedded = false\nurl = \"mqtt://127.0.0.1:{broker_port}\"");
        Self::start_with(dir, replication, broker_port, &mqtt).await
    }

    async fn start_with(
        dir: &Path,
        replication: &str,
        mqtt_port: u16,
        mqtt: &str,
    ) -> Result<Self, BenchError> {
        let http_port = free_port()?;
        let config = dir.join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{data}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
                 [mqtt]\n{mqtt}\n[replication]\n{replication}\n\
                 [[auth.tokens]]\ntoken = \"{TOKEN}\"\nrole = \"admin\"\n",
                data = dir.join("data").display()
            ),
        )?;
        let mut command = child_command(&dir.join("service.log"))?;
        command
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(dir);
        let service = Self {
            child: command.spawn()?,
            api: Api {
                http: reqwest::Client::new(),
                url: format!("http://127.0.0.1:{http_port}"),
            },
            mqtt_port,
        };
        service.wait_ready(dir).await?;
        Ok(service)
    }

    async fn wait_ready(&self, dir: &Path) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(health) = self.api.call(Method::GET, "/healthz", None).await
                && health["mqtt"]["subscribed"] == true
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(dir.join("service.log")).unwrap_or_default();
        Err(BenchError::Service(format!(
            "the service did not become ready within 60 s; its log:\n{log}"
        )))
    }
}

impl Api {
    /// An authorized request to `path`.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    /// A request to `path` without the API token (the console's pages).
    pub fn plain(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    /// Signs in to the console with the admin token; answers the session
    /// cookie (`name=value`).
    pub async fn console_session(&self) -> Result<String, BenchError> {
        // The answer is a redirect whose own headers carry the cookie.
        let response = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?
            .post(format!("{}/ui/login", self.url))
            .header("origin", &self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={TOKEN}"))
            .send()
            .await?;
        response
            .headers()
            .get("set-cookie")
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .map(str::to_string)
            .ok_or_else(|| BenchError::Service("the console gave no session cookie".into()))
    }

    /// Sends one request; anything but a success is an error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, BenchError> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(BenchError::Service(format!(
                "{path} answered {status}: {text}"
            )));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Stores `readings` (any number) in batches of [`BATCH`].
    pub async fn ingest(&self, readings: &[Value]) -> Result<(), BenchError> {
        for chunk in readings.chunks(BATCH) {
            self.call(Method::POST, "/ingest", Some(Value::from(chunk.to_vec())))
                .await?;
        }
        Ok(())
    }

    /// `energyguard_readings_accepted_total` from `/metrics`, summed over
    /// doors.
    pub async fn accepted(&self) -> Result<u64, BenchError> {
        let text = self
            .request(Method::GET, "/metrics")
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|line| line.starts_with("energyguard_readings_accepted_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Polls until `accepted()` reaches `target`.
    pub async fn wait_accepted(&self, target: u64) -> Result<(), BenchError> {
        poll_until(&format!("{target} readings stored"), async || {
            Ok(self.accepted().await? >= target)
        })
        .await
    }

    /// Polls `/healthz` until no rebalance is in progress.
    pub async fn wait_rebalanced(&self) -> Result<(), BenchError> {
        poll_until("the rebalance finished", async || {
            Ok(self.call(Method::GET, "/healthz", None).await?["rebalancing"] != true)
        })
        .await
    }
}

/// Polls `done` every 5 ms until it holds; fails after 300 s, naming `goal`.
async fn poll_until(
    goal: &str,
    mut done: impl AsyncFnMut() -> Result<bool, BenchError>,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done().await? {
        if Instant::now() > deadline {
            return Err(BenchError::Service(format!("not {goal} after 300 s")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reading `i` of sensor `sensor`, one second after reading `i - 1`.
pub fn reading(sensor: &str, i: usize) -> Value {
    json!({"sensor_id": sensor, "timestamp": FIRST_SECOND + i as i64, "value": i as f64 * 0.5})
}

/// 2025-07-01T00:00:00Z, in epoch seconds: where generated readings start.
pub const FIRST_SECOND: i64 = 1_751_328_000;
