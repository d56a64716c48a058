//! What the service tells Prometheus: every metric family it exports,
//! described once at start so that each carries `# HELP` and `# TYPE` and
//! its unit, the build it runs as an info metric, and the process's own
//! figures (CPU, memory, descriptors, start time) taken at each scrape.
//!
//! Rules for a new metric: its name ends in its base unit (`_seconds`,
//! `_bytes`) or `_total` for a counter; its labels take a bounded set of
//! values (node ids, doors, route templates, never a sensor id or a raw
//! path); and it is described here.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use crate::ingest::Door;
use crate::storage::NodeId;

/// The commit this binary was built from (`unknown` outside a git
/// checkout).
pub const COMMIT: &str = env!("EG_GIT_COMMIT");

/// Counters, as (name, help, whether it has labels).
const COUNTERS: &[(&str, &str, bool)] = &[
    (
        "energyguard_readings_accepted_total",
        "Readings stored on their write quorum, by door (http, mqtt).",
        true,
    ),
    (
        "energyguard_readings_rejected_total",
        "Readings not stored, by reason (invalid: bad input; unavailable: no write quorum).",
        true,
    ),
    (
        "energyguard_alerts_total",
        "Alert episodes that fired or resolved, by transition.",
        true,
    ),
    (
        "energyguard_alert_evaluation_errors_total",
        "Stored batches whose alert evaluation failed (the readings are stored).",
        false,
    ),
    (
        "energyguard_http_connections_refused_total",
        "HTTP connections closed at once because max_connections were open.",
        false,
    ),
    (
        "energyguard_mqtt_messages_total",
        "MQTT messages taken from the broker on the readings topics.",
        false,
    ),
    (
        "energyguard_mqtt_dead_letters_total",
        "MQTT messages that held no valid reading, republished on the dead-letter topic.",
        false,
    ),
    (
        "energyguard_mqtt_retained_copies_skipped_total",
        "Retained MQTT copies of readings already stored, skipped.",
        false,
    ),
    (
        "energyguard_mqtt_parked_total",
        "Readings kept on disk because their sensor had no write quorum.",
        false,
    ),
    (
        "energyguard_mqtt_unparked_total",
        "Parked readings stored once their quorum was back.",
        false,
    ),
    (
        "energyguard_mqtt_publishers_held_total",
        "Times a publisher was held back because the intake backlog was full.",
        false,
    ),
    (
        "energyguard_mqtt_broker_skips_total",
        "Messages the embedded broker's in-process reader skipped.",
        false,
    ),
    (
        "energyguard_mqtt_connections_refused_total",
        "MQTT connections refused because the broker's connection limit was reached.",
        false,
    ),
    (
        "energyguard_mqtt_refused_total",
        "MQTT packets refused by the broker's checks (credentials, topic rights), by packet.",
        true,
    ),
    (
        "energyguard_recoveries_total",
        "Recoveries of a storage node that ended, by node and outcome (succeeded, failed).",
        true,
    ),
    (
        "energyguard_recovery_hints_replayed_total",
        "Hinted records replayed to a recovering node, by node, as they are applied.",
        true,
    ),
    (
        "energyguard_recovery_records_repaired_total",
        "Records copied from peers to a recovering node, by node, as they are copied.",
        true,
    ),
];

/// Gauges, as (name, help, unit).
const GAUGES: &[(&str, &str, Unit)] = &[
    (
        "energyguard_node_status",
        "1 for each node's current status (up, down, recovering), by node and status.",
        Unit::Count,
    ),
    (
        "energyguard_node_hints_pending",
        "Writes kept for a node that is down, to replay when it is back.",
        Unit::Count,
    ),
    (
        "energyguard_node_keys",
        "Live measurements a node holds, as last counted (every 30 s, less often when counting takes over 1 % of the time).",
        Unit::Count,
    ),
    (
        "energyguard_node_down_reason",
        "1 for the reason a node is down (admin, unreachable, disk), by node and reason.",
        Unit::Count,
    ),
    (
        "energyguard_node_last_seen_timestamp_seconds",
        "When a node last answered a call or a probe (Unix time).",
        Unit::Seconds,
    ),
    (
        "energyguard_alerts_firing",
        "Alert episodes firing now, by kind (above, below, stale).",
        Unit::Count,
    ),
    (
        "energyguard_rebalance_sensors_planned",
        "Sensors the rebalance in progress moves (0 when none is).",
        Unit::Count,
    ),
    (
        "energyguard_rebalance_sensors_moved",
        "Sensors the rebalance in progress has moved.",
        Unit::Count,
    ),
    (
        "energyguard_rebalance_records_copied",
        "Records the rebalance in progress has copied.",
        Unit::Count,
    ),
    (
        "energyguard_rebalance_in_progress",
        "1 while readings move to a new placement.",
        Unit::Count,
    ),
    (
        "energyguard_mqtt_connected",
        "1 while the MQTT consumer is connected to its broker.",
        Unit::Count,
    ),
    (
        "energyguard_mqtt_parked_readings",
        "Readings on disk waiting for their sensor's write quorum.",
        Unit::Count,
    ),
    (
        "energyguard_mqtt_backlog_bytes",
        "Bytes of MQTT messages taken in but not yet stored.",
        Unit::Bytes,
    ),
    (
        "energyguard_mqtt_consumer_lag_seconds",
        "Age of the oldest MQTT message taken in and not yet stored (0 when none waits).",
        Unit::Seconds,
    ),
    (
        "energyguard_console_sessions",
        "Web console sessions kept (at most 10,000; unused ones expire after 12 hours).",
        Unit::Count,
    ),
    (
        "energyguard_console_streams",
        "Web console live event streams open (at most 64; pages beyond that poll).",
        Unit::Count,
    ),
    (
        "energyguard_build_info",
        "The running build: 1, labelled with its version and commit.",
        Unit::Count,
    ),
];

/// Histograms, as (name, help).
const HISTOGRAMS: &[(&str, &str)] = &[
    (
        "energyguard_http_request_duration_seconds",
        "Time to answer an HTTP request, by route template, method and status.",
    ),
    (
        "energyguard_node_commit_duration_seconds",
        "Time for a storage node to make a batch of writes durable, as the coordinator waits for it (a node process's network included), by node.",
    ),
];

/// The process collector, made by [`describe`].
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Describes every family, sets the build info and starts the process
/// collector. Call once, after the recorder is installed.
pub fn describe() {
    for &(name, help, _) in COUNTERS {
        describe_counter!(name, Unit::Count, help);
    }
    for &(name, help, unit) in GAUGES {
        describe_gauge!(name, unit, help);
    }
    for &(name, help) in HISTOGRAMS {
        describe_histogram!(name, Unit::Seconds, help);
    }
    start_counters_at_zero();
    metrics::gauge!(
        "energyguard_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => COMMIT
    )
    .set(1.0);
    PROCESS
        .get_or_init(metrics_process::Collector::default)
        .describe();
}

/// Counters start at zero (with the label sets known in advance), so a
/// rate or an alert on one works before its first event.
fn start_counters_at_zero() {
    for &(name, _, labelled) in COUNTERS {
        if !labelled {
            metrics::counter!(name).absolute(0);
        }
    }
    for door in [Door::Http, Door::Mqtt] {
        metrics::counter!("energyguard_readings_accepted_total", "door" => door.as_str())
            .absolute(0);
        for reason in ["invalid", "unavailable"] {
            metrics::counter!("energyguard_readings_rejected_total", "door" => door.as_str(), "reason" => reason)
                .absolute(0);
        }
    }
    for transition in ["fired", "resolved"] {
        metrics::counter!("energyguard_alerts_total", "transition" => transition).absolute(0);
    }
}

/// The per-node counters start at zero for each configured node (an
/// increment by zero: one counted already keeps its count).
pub fn start_node_counters_at_zero<'a>(nodes: impl IntoIterator<Item = &'a NodeId>) {
    for node in nodes {
        let node = node.to_string();
        for outcome in ["succeeded", "failed"] {
            metrics::counter!("energyguard_recoveries_total", "node" => node.clone(), "outcome" => outcome)
                .increment(0);
        }
        for name in [
            "energyguard_recovery_hints_replayed_total",
            "energyguard_recovery_records_repaired_total",
        ] {
            metrics::counter!(name, "node" => node.clone()).increment(0);
        }
    }
}

/// Reads the process's CPU time, resident memory, open and maximum
/// descriptors and start time from the OS now, for the scrape being
/// answered.
pub fn collect_process() {
    if let Some(collector) = PROCESS.get() {
        collector.collect();
    }
}
