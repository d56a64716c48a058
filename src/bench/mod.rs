//! `energyguard bench`: the performance tests of both replication
//! strategies, end to end against the real service.
//!
//! For each strategy (`full`; `consistent` with RF 2) it starts this binary
//! as a child service on free ports in a temporary directory and measures
//! writes (single and batched HTTP ingest, MQTT QoS 1 end to end), reads
//! (point reads, one sensor's history), failing a node and recovering one
//! that missed readings; then rebalancing from `consistent` RF 1 to `full`.
//! Next to those it measures, in the same run, the ceilings they are judged
//! against: an empty axum handler and the embedded broker's own pub→sub
//! rate. The console's chart is timed over a day and a year of
//! one-minute readings. When mosquitto is installed, the MQTT measurement is repeated
//! through it (a broker whose in-flight window is configurable). Results go
//! to `results.json` and PNG plots in the output directory.
//!
//! * `load`: the HTTP and MQTT load generators;
//! * `service`: the child service and the calls made to it;
//! * `workloads`: the measurements; [`baseline`]: the empty handler;
//! * [`report`]: the figures and the printed table; `plots`: the PNGs.

pub mod baseline;
mod console;
mod load;
mod mosquitto;
mod nodes;
mod plots;
pub mod report;
mod service;
mod workloads;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use report::{Limits, Machine, Parameters, Results};
use service::ServiceProcess;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write to {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("service: {0}")]
    Service(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error("results.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// What to run and where the results go.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The size of every bulk workload (MQTT, recovery, rebalance; batched
    /// ingest four times it); request counts are derived from it.
    pub readings: usize,
    pub out: PathBuf,
}

impl Parameters {
    fn from_options(options: &BenchOptions) -> Self {
        let readings = options.readings.max(100);
        Self {
            readings,
            repetitions: 3,
            requests: (readings / 5).max(100),
            http_concurrency: 32,
            latency_requests: (readings / 50).clamp(50, 2_000),
            batch_size: service::BATCH,
            batch_readings: 4 * readings,
            batch_concurrency: 4,
            history_points: 100_000,
            chart_points: (readings * 11).min(525_600),
            sensors: 100,
        }
    }
}

/// The replication section of each strategy's service.
const STRATEGIES: [(&str, &str, usize); 2] = [
    ("full", "strategy = \"full\"", 3),
    (
        "consistent",
        "strategy = \"consistent\"\nreplication_factor = 2",
        2,
    ),
];

/// Runs every workload, writes `results.json` and the plots into
/// `options.out`, and answers the results.
pub async fn run(options: &BenchOptions) -> Result<Results, BenchError> {
    let output = |source| BenchError::Output {
        path: options.out.clone(),
        source,
    };
    std::fs::create_dir_all(&options.out).map_err(output)?;
    let p = Parameters::from_options(options);
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let progress = ProgressBar::new(5 + 5 * STRATEGIES.len() as u64 + 1);
    progress.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let step = |message: String| {
        progress.set_message(message);
        progress.inc(1);
    };

    progress.set_message("HTTP ceiling: an empty axum handler");
    let http_empty_handler_per_s = baseline::empty_handler_rate(&p).await?;
    let mut broker_raw_messages_per_s = None;
    let mut strategies = Vec::new();
    for (strategy, section, copies) in STRATEGIES {
        let dir = tempfile::tempdir()?;
        let service = ServiceProcess::start(dir.path(), section).await?;
        if broker_raw_messages_per_s.is_none() {
            step("MQTT ceiling: the embedded broker alone".into());
            broker_raw_messages_per_s =
                Some(workloads::broker_raw_rate(service.mqtt_port, &p).await?);
        }
        step(format!("{strategy}: writes"));
        let write = workloads::write(&service, &p).await?;
        step(format!("{strategy}: reads"));
        let read = workloads::read(&service, &p).await?;
        step(format!("{strategy}: failing a node"));
        let fail = workloads::fail(&service, &p).await?;
        step(format!("{strategy}: recovering a node"));
        let recover = workloads::recover(&service, &p).await?;
        step(format!("{strategy}: done"));
        strategies.push(report::StrategyResults {
            strategy: strategy.into(),
            copies,
            write,
            read,
            fail,
            recover,
        });
    }
    step("rebalance: consistent RF 1 → full".into());
    let dir = tempfile::tempdir()?;
    let service = ServiceProcess::start(
        dir.path(),
        "strategy = \"consistent\"\nreplication_factor = 1",
    )
    .await?;
    let rebalance = workloads::rebalance(&service, &p).await?;
    drop(service);
    step("console: drawing a sensor's chart".into());
    let dir = tempfile::tempdir()?;
    let service = ServiceProcess::start(dir.path(), STRATEGIES[1].1).await?;
    let console = console::run(&service, &p).await?;
    drop(service);
    step("node processes: consistent RF 2 over gRPC".into());
    let in_process_batch = strategies
        .iter()
        .find(|s| s.strategy == "consistent")
        .map_or(0.0, |s| s.write.http_batch_readings_per_s);
    let dir = tempfile::tempdir()?;
    let node_processes = nodes::run(dir.path(), &p, in_process_batch).await?;
    step("MQTT through an external mosquitto".into());
    let external_broker = external_broker(&p).await?;

    let results = Results {
        version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        machine: Machine::current(),
        parameters: p,
        limits: Limits {
            http_empty_handler_per_s,
            broker_raw_messages_per_s: broker_raw_messages_per_s.unwrap_or(0.0),
        },
        strategies,
        rebalance,
        node_processes,
        external_broker,
        console,
    };
    step("writing results and plots".into());
    write_results(&results, &options.out)?;
    progress.finish_and_clear();
    Ok(results)
}

/// EnergyGuard (`consistent`, RF 2) consuming from mosquitto, and
/// mosquitto's raw rate; `None` when mosquitto is not installed.
async fn external_broker(p: &Parameters) -> Result<Option<report::ExternalBroker>, BenchError> {
    let dir = tempfile::tempdir()?;
    let Some(broker) = mosquitto::Mosquitto::start(dir.path()).await? else {
        return Ok(None);
    };
    let raw_messages_per_s = workloads::broker_raw_rate(broker.port, p).await?;
    let service = ServiceProcess::start_external(dir.path(), STRATEGIES[1].1, broker.port).await?;
    let mqtt_readings_per_s = workloads::mqtt_rate(&service, p, 1).await?;
    Ok(Some(report::ExternalBroker {
        broker: broker.version.clone(),
        in_flight_window: mosquitto::WINDOW,
        raw_messages_per_s,
        mqtt_readings_per_s,
    }))
}

fn write_results(results: &Results, out: &Path) -> Result<(), BenchError> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    plots::draw_all(results, out)
}
