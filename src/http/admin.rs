//! Handlers for the cluster: replication settings, node status, fault
//! injection and recovery, placement look-ups, health and metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::auth::{Admin, Authorized, Reader};
use super::error::ApiError;
use super::extract::{JsonBody, PathText};
use crate::alerts::engine::{AlertKind, kind_name};
use crate::reading::{InvalidInput, Key, reject_unknown_fields};
use crate::replication::{
    DownReason, NodeReport, NodeStatus, RecoveryReport, ReplicationSettings, Replicator,
    StrategyKind,
};
use crate::storage::NodeId;

fn replication_json(state: &AppState) -> Value {
    let placement = state.replicator.placement();
    let settings = placement.settings();
    json!({
        "strategy": settings.strategy,
        "replication_factor": placement.copies(),
        "virtual_nodes": settings.virtual_nodes,
        "write_quorum": settings.write_quorum,
        "nodes": placement.nodes(),
        "rebalance": state.replicator.rebalance_progress(),
    })
}

pub async fn replication(State(state): State<AppState>, _: Authorized<Reader>) -> Json<Value> {
    Json(replication_json(&state))
}

pub async fn configure_replication(
    State(state): State<AppState>,
    _: Authorized<Admin>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad("body", "must be a JSON object"))?;
    reject_unknown_fields(
        object,
        &[
            "strategy",
            "replication_factor",
            "virtual_nodes",
            "write_quorum",
        ],
    )?;
    let current = state.replicator.placement().settings();
    let strategy: StrategyKind = object
        .get("strategy")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .parse()?;
    let number = |field: &str, default: usize| -> Result<usize, InvalidInput> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| InvalidInput::new(field, "must be a positive whole number")),
        }
    };
    let settings = ReplicationSettings {
        strategy,
        replication_factor: number("replication_factor", current.replication_factor)?,
        virtual_nodes: u32::try_from(number("virtual_nodes", current.virtual_nodes as usize)?)
            .map_err(|_| InvalidInput::new("virtual_nodes", "is too large"))?,
        write_quorum: number("write_quorum", current.write_quorum)?,
    };
    state.replicator.configure(settings).await?;
    Ok(Json(replication_json(&state)))
}

pub async fn nodes_status(
    State(state): State<AppState>,
    _: Authorized<Reader>,
) -> Json<Vec<NodeReport>> {
    Json(state.replicator.node_reports().await)
}

pub async fn fail_node(
    State(state): State<AppState>,
    _: Authorized<Admin>,
    PathText(id): PathText,
) -> Result<Json<Value>, ApiError> {
    let id = state.replicator.node_id(&id)?;
    state.replicator.fail(&id).await?;
    Ok(Json(json!({"id": id, "status": NodeStatus::Down})))
}

pub async fn recover_node(
    State(state): State<AppState>,
    _: Authorized<Admin>,
    PathText(id): PathText,
) -> Result<Json<RecoveryReport>, ApiError> {
    let id = state.replicator.node_id(&id)?;
    Ok(Json(state.replicator.recover(&id).await?))
}

pub async fn replica_nodes(
    State(state): State<AppState>,
    _: Authorized<Reader>,
    PathText(key): PathText,
) -> Result<Json<Value>, ApiError> {
    let key: Key = key.parse()?;
    let strategy = state.replicator.placement().settings().strategy;
    let nodes = state.replicator.replicas_for(&key);
    Ok(Json(
        json!({"key": key, "strategy": strategy, "nodes": nodes}),
    ))
}

pub async fn healthz(State(state): State<AppState>) -> Json<Value> {
    let reports = state.replicator.node_states();
    let count = |s: NodeStatus| reports.iter().filter(|r| r.status == s).count();
    let degraded = count(NodeStatus::Up) < reports.len();
    Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "nodes": {"up": count(NodeStatus::Up), "down": count(NodeStatus::Down), "recovering": count(NodeStatus::Recovering)},
        "rebalancing": state.replicator.rebalance_progress().is_some(),
        "mqtt": state.mqtt.as_ref().map(|m| json!({
            "connected": m.connected(),
            "subscribed": m.subscribed(),
            "parked": m.parked(),
            "backlog_bytes": m.backlog_bytes(),
        })),
    }))
}

/// How often the nodes' keys are counted for `/metrics` at most: counting
/// reads every record of every node, so it happens on a timer of its own,
/// never because a scrape (or a flood of them) asked.
const KEY_COUNT_EVERY: Duration = Duration::from_secs(30);
/// Counting may take this share of the time at most: on large nodes the
/// counts are taken less often than [`KEY_COUNT_EVERY`].
const KEY_COUNT_SHARE: u32 = 100;

/// The wait before the next count, after one that took `took`.
fn next_key_count_in(took: Duration) -> Duration {
    KEY_COUNT_EVERY.max(took * KEY_COUNT_SHARE)
}

/// Live keys per node (`None`: the node could not be asked).
type Counts = HashMap<NodeId, Option<u64>>;

/// The nodes' key counts last taken for `/metrics`.
#[derive(Default)]
pub struct KeyCounts {
    latest: std::sync::Mutex<Counts>,
}

impl KeyCounts {
    /// Counts the nodes' keys now and every 30 s, less often when counting
    /// would take over 1 % of the time, until aborted.
    pub fn spawn_refresh(
        self: Arc<Self>,
        replicator: Arc<Replicator>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let started = std::time::Instant::now();
                let counts: Counts = replicator
                    .node_reports()
                    .await
                    .into_iter()
                    .map(|report| (report.id, report.keys))
                    .collect();
                *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = counts;
                tokio::time::sleep(next_key_count_in(started.elapsed())).await;
            }
        })
    }

    fn latest(&self) -> Counts {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn refresh_node_gauges(state: &AppState) {
    let keys = state.key_counts.latest();
    for report in state.replicator.node_states() {
        let node = report.id.to_string();
        for status in [NodeStatus::Up, NodeStatus::Down, NodeStatus::Recovering] {
            let value = if report.status == status { 1.0 } else { 0.0 };
            metrics::gauge!("energyguard_node_status", "node" => node.clone(), "status" => status.as_str())
                .set(value);
        }
        for reason in DownReason::ALL {
            let value = if report.reason == Some(reason) {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("energyguard_node_down_reason", "node" => node.clone(), "reason" => reason.as_str())
                .set(value);
        }
        if let Some(seen) = report
            .last_seen
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            metrics::gauge!("energyguard_node_last_seen_timestamp_seconds", "node" => node.clone())
                .set(seen.timestamp_millis() as f64 / 1_000.0);
        }
        if let Some(keys) = keys.get(&report.id).copied().flatten() {
            metrics::gauge!("energyguard_node_keys", "node" => node.clone()).set(keys as f64);
        }
        metrics::gauge!("energyguard_node_hints_pending", "node" => node)
            .set(report.hints_pending as f64);
    }
}

fn refresh_rebalance_gauges(state: &AppState) {
    let progress = state.replicator.rebalance_progress();
    let figure = |f: fn(&crate::replication::RebalanceProgress) -> u64| {
        progress.as_ref().map_or(0.0, |p| f(p) as f64)
    };
    metrics::gauge!("energyguard_rebalance_in_progress").set(if progress.is_some() {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("energyguard_rebalance_sensors_planned").set(figure(|p| p.sensors_total));
    metrics::gauge!("energyguard_rebalance_sensors_moved").set(figure(|p| p.sensors_moved));
    metrics::gauge!("energyguard_rebalance_records_copied").set(figure(|p| p.records_copied));
}

/// Alert episodes firing now, by kind (every kind, zero included).
async fn refresh_alert_gauges(state: &AppState) {
    let query = crate::alerts::AlertQuery {
        state: Some(crate::alerts::engine::AlertState::Firing),
        limit: 1_000_000,
        ..Default::default()
    };
    let Ok(firing) = state.alerts.alerts(query).await else {
        return;
    };
    for kind in [AlertKind::Above, AlertKind::Below, AlertKind::Stale] {
        let count = firing.iter().filter(|a| a.kind == kind).count();
        metrics::gauge!("energyguard_alerts_firing", "kind" => kind_name(kind)).set(count as f64);
    }
}

/// Prometheus text. Node, rebalance, alert, MQTT lag and console gauges are
/// refreshed at scrape time from memory (and the alert store); key counts
/// come from the last count ([`KeyCounts::spawn_refresh`]).
pub async fn metrics(State(state): State<AppState>) -> Response {
    crate::telemetry::collect_process();
    refresh_node_gauges(&state);
    refresh_rebalance_gauges(&state);
    refresh_alert_gauges(&state).await;
    if let Some(mqtt) = &state.mqtt {
        metrics::gauge!("energyguard_mqtt_consumer_lag_seconds").set(mqtt.lag().as_secs_f64());
    }
    metrics::gauge!("energyguard_console_sessions").set(state.sessions.count() as f64);
    metrics::gauge!("energyguard_console_streams").set(state.live.streams_open() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_every_30_s_or_less_often_when_counting_is_slow() {
        assert_eq!(next_key_count_in(Duration::from_millis(5)), KEY_COUNT_EVERY);
        assert_eq!(
            next_key_count_in(Duration::from_millis(850)),
            Duration::from_secs(85)
        );
    }
}
