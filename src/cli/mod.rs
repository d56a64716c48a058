//! The command line: `serve`, `node`, and client commands that talk to a
//! running service over its REST API. Tables for people, `--json` for
//! scripts; any failure exits non-zero with the server's message on stderr.

mod mqtt;
mod output;
mod password;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::replication::StrategyKind;

#[derive(Debug, Parser)]
#[command(
    name = "energyguard",
    version,
    about = "Durable, replicated storage and alerting for energy readings"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How to reach the service: accepted before or after the command.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How the service and node processes write their logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log
    /// collectors.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default when no command is given).
    Serve {
        /// A TOML file layered over config/default.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How log lines are written to stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Run one storage node as a process of its own, for a service that
    /// names it by `url` in `replication.nodes`.
    Node {
        /// How log lines are written to stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// The node's id, as the service names it.
        #[arg(long)]
        id: String,
        /// Where to listen, e.g. 0.0.0.0:5100.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The node's directory (its disk): created on first use, and
        /// refused to any other node id afterwards.
        #[arg(long)]
        data: PathBuf,
        /// A TOML file for `cluster.secret` and `storage.synchronous`
        /// (also ENERGYGUARD_CLUSTER__SECRET).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Store one reading.
    Put {
        sensor_id: String,
        value: f64,
        /// RFC 3339 time or epoch seconds (default: now).
        #[arg(long)]
        timestamp: Option<String>,
        #[arg(long)]
        unit: Option<String>,
    },
    /// Show one measurement by key (`<sensor_id>:<epoch ms>`).
    Get { key: String },
    /// Change the value of an existing measurement.
    Update {
        key: String,
        value: f64,
        #[arg(long)]
        unit: Option<String>,
    },
    /// Delete a measurement.
    Delete { key: String },
    /// List measurements in key order.
    List {
        #[arg(long)]
        sensor_id: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// Show the page after this key.
        #[arg(long)]
        after: Option<String>,
    },
    /// A sensor's history, raw or in buckets.
    History {
        sensor_id: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Bucket width: 1m, 15m, 1h, 1d.
        #[arg(long)]
        every: Option<String>,
        /// mean, min, max, sum, count, last or energy.
        #[arg(long)]
        agg: Option<String>,
        /// Buckets in this IANA time zone's local time (Europe/Rome):
        /// `--every 1d` then starts at local midnight.
        #[arg(long)]
        tz: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Set a sensor's alert threshold.
    Threshold {
        sensor_id: String,
        #[arg(long)]
        max: Option<f64>,
        #[arg(long)]
        min: Option<f64>,
        #[arg(long)]
        hysteresis: Option<f64>,
    },
    /// List alerts, newest first.
    Alerts {
        #[arg(long)]
        sensor_id: Option<String>,
        /// firing or resolved.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show the replication configuration, or change it.
    Replication {
        strategy: Option<StrategyKind>,
        #[arg(long)]
        replication_factor: Option<usize>,
        #[arg(long)]
        virtual_nodes: Option<u32>,
        #[arg(long)]
        write_quorum: Option<usize>,
    },
    /// Show the storage nodes.
    Nodes {},
    /// Take a node out of service (fault injection).
    Fail { node: String },
    /// Bring a node back: replay hints, repair from peers.
    Recover { node: String },
    /// Show which nodes hold a key.
    Replicas { key: String },
    /// Publish CSV readings (sensor_id,timestamp,value per line) over MQTT,
    /// from a file or stdin.
    Publish {
        file: Option<PathBuf>,
        #[command(flatten)]
        broker: mqtt::BrokerArgs,
    },
    /// Measure both replication strategies end to end (write, read, fail,
    /// recover, MQTT ingest): results.json and PNG plots in --out.
    Bench {
        /// Readings per bulk workload; request counts scale with it.
        #[arg(long, default_value_t = 50_000)]
        readings: usize,
        /// Where results.json and the plots go.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Print the argon2 hash of a password (read from standard input, or
    /// asked for at a terminal) for a broker user's `password_hash`.
    HashPassword,
    /// Print alerts as they are published over MQTT (until Ctrl-C).
    Watch {
        #[command(flatten)]
        broker: mqtt::BrokerArgs,
    },
}

/// How to reach the service.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the service (http:// or https://).
    #[arg(
        long,
        global = true,
        env = "ENERGYGUARD_URL",
        default_value = "http://127.0.0.1:5000"
    )]
    pub url: String,
    /// API token (default: ./data/admin.token, for a loopback --url only).
    #[arg(long, global = true, env = "ENERGYGUARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of CAs to trust for https:// (a self-signed certificate
    /// is its own CA).
    #[arg(long, global = true, env = "ENERGYGUARD_CA")]
    pub ca: Option<PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A request the client will send.
struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl Call {
    fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
        }
    }

    fn query(mut self, name: &'static str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.query.push((name, v.to_string()));
        }
        self
    }

    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// Percent-encodes a path segment (keys and ids are validated by the
/// server; this only keeps the URL well-formed).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `energyguard bench` and prints its table.
async fn bench(readings: usize, out: PathBuf) -> ExitCode {
    let options = crate::bench::BenchOptions { readings, out };
    match crate::bench::run(&options).await {
        Ok(results) => {
            print!("{}", results.table());
            println!(
                "results: {}  plots: operation_time.png, throughput.png, recovery.png",
                options.out.join("results.json").display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a client command; answers the process exit code.
pub async fn run_client(command: Command, client: ClientArgs) -> ExitCode {
    let command = match command {
        Command::Publish { file, broker } => {
            let broker = mqtt::BrokerArgs {
                ca: client.ca,
                ..broker
            };
            return mqtt::publish(file, broker).await;
        }
        Command::Watch { broker } => {
            let broker = mqtt::BrokerArgs {
                ca: client.ca.clone(),
                ..broker
            };
            return mqtt::watch(broker, client.json).await;
        }
        Command::Bench { readings, out } => return bench(readings, out).await,
        Command::HashPassword => return password::hash_password(),
        other => other,
    };
    let call = match build(command) {
        Some(built) => built,
        None => return ExitCode::from(2),
    };
    match send(&call, &client).await {
        Ok(value) => {
            if client.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                println!("{}", output::render(&value));
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn build(command: Command) -> Option<Call> {
    use Method as M;
    Some(match command {
        Command::Serve { .. }
        | Command::Node { .. }
        | Command::Publish { .. }
        | Command::Watch { .. }
        | Command::HashPassword
        | Command::Bench { .. } => return None,
        Command::Put {
            sensor_id,
            value,
            timestamp,
            unit,
        } => {
            let mut body = json!({"sensor_id": sensor_id, "value": value});
            if let Some(ts) = timestamp {
                body["timestamp"] = ts
                    .parse::<f64>()
                    .map(Value::from)
                    .unwrap_or(Value::String(ts));
            }
            if let Some(unit) = unit {
                body["unit"] = Value::String(unit);
            }
            Call::new(M::POST, "/ingest".into()).body(body)
        }
        Command::Get { key } => Call::new(M::GET, format!("/measurement/{}", segment(&key))),
        Command::Update { key, value, unit } => {
            let mut body = json!({"value": value});
            if let Some(unit) = unit {
                body["unit"] = Value::String(unit);
            }
            Call::new(M::PUT, format!("/measurement/{}", segment(&key))).body(body)
        }
        Command::Delete { key } => Call::new(M::DELETE, format!("/delete/{}", segment(&key))),
        Command::List {
            sensor_id,
            from,
            to,
            limit,
            after,
        } => Call::new(M::GET, "/measurements".into())
            .query("sensor_id", sensor_id)
            .query("from", from)
            .query("to", to)
            .query("limit", limit)
            .query("after", after),
        Command::History {
            sensor_id,
            from,
            to,
            every,
            agg,
            tz,
            limit,
        } => Call::new(M::GET, format!("/sensor/{}/history", segment(&sensor_id)))
            .query("from", from)
            .query("to", to)
            .query("every", every)
            .query("agg", agg)
            .query("tz", tz)
            .query("limit", limit),
        Command::Threshold {
            sensor_id,
            max,
            min,
            hysteresis,
        } => {
            let mut body = json!({"sensor_id": sensor_id});
            for (name, value) in [("max", max), ("min", min), ("hysteresis", hysteresis)] {
                if let Some(v) = value {
                    body[name] = json!(v);
                }
            }
            Call::new(M::POST, "/set_threshold".into()).body(body)
        }
        Command::Alerts {
            sensor_id,
            state,
            since,
            limit,
        } => Call::new(M::GET, "/alerts".into())
            .query("sensor_id", sensor_id)
            .query("state", state)
            .query("since", since)
            .query("limit", limit),
        Command::Replication { strategy: None, .. } => Call::new(M::GET, "/replication".into()),
        Command::Replication {
            strategy: Some(strategy),
            replication_factor,
            virtual_nodes,
            write_quorum,
        } => {
            let mut body = json!({"strategy": strategy});
            if let Some(rf) = replication_factor {
                body["replication_factor"] = json!(rf);
            }
            if let Some(v) = virtual_nodes {
                body["virtual_nodes"] = json!(v);
            }
            if let Some(w) = write_quorum {
                body["write_quorum"] = json!(w);
            }
            Call::new(M::POST, "/configure_replication".into()).body(body)
        }
        Command::Nodes {} => Call::new(M::GET, "/nodes_status".into()),
        Command::Fail { node } => Call::new(M::POST, format!("/fail_node/{}", segment(&node))),
        Command::Recover { node } => {
            Call::new(M::POST, format!("/recover_node/{}", segment(&node)))
        }
        Command::Replicas { key } => Call::new(M::GET, format!("/replica_nodes/{}", segment(&key))),
    })
}

/// `--token`, or the generated admin token in `./data/admin.token`, which
/// is sent only to a service on this machine (a loopback `--url`).
fn token(client: &ClientArgs) -> Option<String> {
    client.token.clone().or_else(|| {
        is_loopback(&client.url)
            .then(|| std::fs::read_to_string("data/admin.token").ok())
            .flatten()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    })
}

fn is_loopback(url: &str) -> bool {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The HTTP client, trusting the system's CAs and `--ca`.
fn http_client(client: &ClientArgs) -> Result<reqwest::Client, String> {
    let tls = crate::tls::client_config(client.ca.as_deref()).map_err(|e| format!("--ca {e}"))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("the HTTP client: {e}"))
}

async fn send(call: &Call, client: &ClientArgs) -> Result<Value, String> {
    let url = format!("{}{}", client.url.trim_end_matches('/'), call.path);
    let http = http_client(client)?;
    let mut request = http.request(call.method.clone(), &url).query(&call.query);
    if let Some(token) = token(client) {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("reading the answer from {url}: {e}"))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        Ok(value)
    } else {
        Err(server_message(status, &value))
    }
}

fn server_message(status: StatusCode, body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(error) => format!("{error} ({status})"),
        None => format!("{status}: {body}"),
    }
}
