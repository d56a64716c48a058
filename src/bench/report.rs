//! What a bench run found: the figures (written as `results.json`), the
//! machine they were measured on, and the table printed at the end.

use comfy_table::Table;
use serde::{Deserialize, Serialize};

/// Everything one `energyguard bench` run measured. Latencies are medians of
/// per-request times over all repetitions' requests unless named otherwise;
/// rates are medians over repetitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub version: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub machine: Machine,
    pub parameters: Parameters,
    /// The ceilings measured in the same run, to compare against.
    pub limits: Limits,
    pub strategies: Vec<StrategyResults>,
    pub rebalance: Rebalance,
    pub node_processes: NodeProcesses,
    /// MQTT through an external mosquitto, when one is installed.
    pub external_broker: Option<ExternalBroker>,
    pub console: Console,
}

/// The web console: the server's time to draw a sensor's chart (800 px
/// wide) from one-minute readings, and a sensor page's weight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Console {
    pub chart_day_ms: f64,
    pub chart_day_points: usize,
    /// The sensor's whole history: a year of minutes in a full run.
    pub chart_all_ms: f64,
    pub chart_all_points: usize,
    /// The page's HTML without its chart, its stylesheet and its script.
    pub page_bytes_without_chart: usize,
    pub chart_bytes: usize,
}

/// EnergyGuard (`consistent`, RF 2) consuming from mosquitto, next to
/// mosquitto's own publish→subscribe rate, in the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalBroker {
    pub broker: String,
    /// mosquitto's `max_inflight_messages`.
    pub in_flight_window: usize,
    pub raw_messages_per_s: f64,
    /// One reading per message, publisher to durably stored.
    pub mqtt_readings_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub os: String,
    pub arch: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parameters {
    /// `--readings`: the size of every bulk workload but batched ingest.
    pub readings: usize,
    pub repetitions: usize,
    /// Single-reading requests per repetition (and point reads).
    pub requests: usize,
    /// Concurrent HTTP clients in throughput runs.
    pub http_concurrency: usize,
    /// Sequential requests in latency runs (one client).
    pub latency_requests: usize,
    pub batch_size: usize,
    /// Readings per repetition of batched ingest: four times `readings`, so
    /// that a repetition lasts long enough to include the nodes' checkpoints.
    pub batch_readings: usize,
    /// Batched requests in flight: a few gateways posting at once, so that
    /// the service's batcher can combine them as it does in production.
    pub batch_concurrency: usize,
    pub history_points: usize,
    /// One-minute readings of the console's chart sensor (a year in a full
    /// run).
    pub chart_points: usize,
    pub sensors: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// An axum server whose one handler does nothing, same load generator.
    pub http_empty_handler_per_s: f64,
    /// The embedded broker passing QoS 1 messages from a publisher to a
    /// subscriber, same clients, same message size as the MQTT workload.
    pub broker_raw_messages_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StrategyResults {
    /// `full` or `consistent`.
    pub strategy: String,
    /// Copies of each reading.
    pub copies: usize,
    pub write: Write,
    pub read: Read,
    pub fail: Fail,
    /// One entry per size of outage, smallest first.
    pub recover: Vec<Recovery>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Write {
    /// One client, one reading per `POST /ingest`.
    pub http_single_p50_ms: f64,
    pub http_single_p99_ms: f64,
    pub http_single_mean_ms: f64,
    /// Concurrent clients, one reading per request.
    pub http_single_per_s: f64,
    /// Readings per second in `POST /ingest` batches of `batch_size`.
    pub http_batch_readings_per_s: f64,
    /// QoS 1 publisher to durably stored, one reading per message.
    pub mqtt_readings_per_s: f64,
    /// The same with a JSON array of 10 readings per message.
    pub mqtt_10_per_message_readings_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Read {
    /// One client, `GET /measurement/<key>`.
    pub point_p50_ms: f64,
    pub point_p99_ms: f64,
    pub point_mean_ms: f64,
    /// Concurrent clients.
    pub point_per_s: f64,
    /// `GET /sensor/<id>/history` over one day of 1 s readings.
    pub history_day_ms: f64,
    pub history_day_points: usize,
    /// The same sensor's whole history.
    pub history_all_ms: f64,
    pub history_all_points: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fail {
    /// `POST /fail_node/<id>` until the node is out of service.
    pub fail_node_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recovery {
    /// Readings written while the node was down.
    pub written: usize,
    /// Records the node had missed (hints replayed plus repaired).
    pub missed: u64,
    /// `POST /recover_node/<id>` until it answered.
    pub ms: f64,
    pub keys_per_s: f64,
}

/// The cluster with its nodes in processes of their own (see `nodes.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeProcesses {
    pub batch_readings_per_s: f64,
    /// Against the in-process `consistent` cluster's batched ingest of the
    /// same run.
    pub batch_ratio_to_in_process: f64,
    /// A node that missed `readings` readings.
    pub recovery: Recovery,
    /// From a node's SIGKILL until `/nodes_status` says `down`.
    pub kill_to_down_ms: f64,
    /// From its restart until `/nodes_status` says `up`.
    pub restart_to_up_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rebalance {
    /// Readings stored under `consistent` RF 1 before switching to `full`.
    pub readings: usize,
    /// From the switch until the move finished.
    pub ms: f64,
    pub readings_per_s: f64,
}

impl Machine {
    /// This machine, from the standard library and `/proc` where present.
    pub fn current() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split(':').nth(1))
            .map(|model| model.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kb = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        Self {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mb: memory_kb / 1024,
        }
    }
}

/// Thousands with a separator and no decimals: `12,345`.
fn count(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

impl Results {
    /// The seed-shaped comparison: write, read, fail and recover figures
    /// (rows) for each strategy (columns).
    pub fn table(&self) -> String {
        let mut table = Table::new();
        let mut header = vec!["".to_string()];
        header.extend(
            self.strategies
                .iter()
                .map(|s| format!("{} ({} copies)", s.strategy, s.copies)),
        );
        table.set_header(header);
        type Figure = fn(&StrategyResults) -> String;
        let rows: [(&str, Figure); 12] = [
            ("write: 1 reading per POST, p50 / p99", |s| {
                format!(
                    "{:.2} / {:.2} ms",
                    s.write.http_single_p50_ms, s.write.http_single_p99_ms
                )
            }),
            ("write: 1 reading per POST, concurrent", |s| {
                format!("{} req/s", count(s.write.http_single_per_s))
            }),
            ("write: batches of 5,000 per POST", |s| {
                format!("{} readings/s", count(s.write.http_batch_readings_per_s))
            }),
            ("write: MQTT QoS 1, 1 reading per message", |s| {
                format!("{} readings/s", count(s.write.mqtt_readings_per_s))
            }),
            ("write: MQTT QoS 1, 10 readings per message", |s| {
                format!(
                    "{} readings/s",
                    count(s.write.mqtt_10_per_message_readings_per_s)
                )
            }),
            ("read: one key, p50 / p99", |s| {
                format!("{:.2} / {:.2} ms", s.read.point_p50_ms, s.read.point_p99_ms)
            }),
            ("read: one key, concurrent", |s| {
                format!("{} req/s", count(s.read.point_per_s))
            }),
            ("read: history, one day", |s| {
                format!(
                    "{:.1} ms ({} points)",
                    s.read.history_day_ms,
                    count(s.read.history_day_points as f64)
                )
            }),
            ("read: history, all", |s| {
                format!(
                    "{:.1} ms ({} points)",
                    s.read.history_all_ms,
                    count(s.read.history_all_points as f64)
                )
            }),
            ("fail: a node out of service", |s| {
                format!("{:.2} ms", s.fail.fail_node_ms)
            }),
            ("recover: a node that missed the most", |s| {
                s.recover.last().map_or("-".into(), |r| {
                    format!("{:.0} ms for {} records", r.ms, count(r.missed as f64))
                })
            }),
            ("recover: rate", |s| {
                s.recover
                    .last()
                    .map_or("-".into(), |r| format!("{} keys/s", count(r.keys_per_s)))
            }),
        ];
        for (name, figure) in rows {
            let mut row = vec![name.to_string()];
            row.extend(self.strategies.iter().map(figure));
            table.add_row(row);
        }
        let external = match &self.external_broker {
            Some(e) => format!(
                "external {} (in-flight window {}): QoS 1 pub→sub {} msg/s; \
                 EnergyGuard consistent RF 2 through it {} readings/s ({:.2} of raw)\n",
                e.broker,
                e.in_flight_window,
                count(e.raw_messages_per_s),
                count(e.mqtt_readings_per_s),
                e.mqtt_readings_per_s / e.raw_messages_per_s.max(1.0),
            ),
            None => "external broker: mosquitto is not installed, not measured\n".into(),
        };
        let raw = self.limits.broker_raw_messages_per_s.max(1.0);
        let mqtt_ratios: Vec<String> = self
            .strategies
            .iter()
            .map(|s| format!("{} {:.2}", s.strategy, s.write.mqtt_readings_per_s / raw))
            .collect();
        format!(
            "{table}\nlimits measured in the same run: empty axum handler {} req/s; \
             embedded broker QoS 1 pub→sub {} msg/s (MQTT 1 reading per message against it: {})\n\
             rebalance consistent RF 1 → full: {} readings in {:.0} ms ({} readings/s)\n\
             node processes (consistent RF 2, gRPC on loopback): batched ingest {} readings/s \
             ({:.2} of in-process); recovery of {} records {} keys/s; \
             SIGKILL to down {:.0} ms, restart to up {:.0} ms (failure_timeout 1s)\n\
             console (800 px chart): a day of minutes ({} points) drawn in {:.1} ms, \
             {} points in {:.1} ms; a sensor page weighs {} KB without its chart ({} KB)\n{external}",
            count(self.limits.http_empty_handler_per_s),
            count(self.limits.broker_raw_messages_per_s),
            mqtt_ratios.join(", "),
            count(self.rebalance.readings as f64),
            self.rebalance.ms,
            count(self.rebalance.readings_per_s),
            count(self.node_processes.batch_readings_per_s),
            self.node_processes.batch_ratio_to_in_process,
            count(self.node_processes.recovery.missed as f64),
            count(self.node_processes.recovery.keys_per_s),
            self.node_processes.kill_to_down_ms,
            self.node_processes.restart_to_up_ms,
            count(self.console.chart_day_points as f64),
            self.console.chart_day_ms,
            count(self.console.chart_all_points as f64),
            self.console.chart_all_ms,
            self.console.page_bytes_without_chart / 1_000,
            self.console.chart_bytes / 1_000,
        )
    }
}

/// The median of some figures (0 for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(count(1234567.4), "1,234,567");
        assert_eq!(count(999.0), "999");
    }
}
