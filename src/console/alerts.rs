//! The alerts page (`/ui/alerts`): episodes firing now and the latest past
//! ones, each with its start, end and peak, linked to its sensor.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::session::Viewer;
use super::view::{Frame, Zone, age, number, render};
use crate::alerts::AlertQuery;
use crate::alerts::engine::{Alert, AlertState, kind_name};
use crate::http::AppState;
use crate::reading::{SensorId, now_ms};

/// Firing episodes listed at most.
const FIRING_SHOWN: usize = 1_000;
/// Past episodes listed at most (the API pages further back).
const PAST_SHOWN: usize = 200;

/// One episode, as a row.
pub struct EpisodeRow {
    pub sensor: String,
    pub kind: &'static str,
    pub started: String,
    pub duration: String,
    pub ended: String,
    pub peak: String,
    pub threshold: String,
    pub readings: u64,
}

impl EpisodeRow {
    pub fn of(alert: &Alert, zone: &Zone, now_ms: i64) -> Self {
        let end = alert.resolved_at.unwrap_or(now_ms);
        Self {
            sensor: alert.sensor_id.to_string(),
            kind: kind_name(alert.kind),
            started: zone.datetime(alert.started_at),
            duration: age(end, alert.started_at),
            ended: alert
                .resolved_at
                .map(|t| zone.datetime(t))
                .unwrap_or_default(),
            peak: number(alert.peak),
            threshold: number(alert.threshold),
            readings: alert.readings,
        }
    }
}

#[derive(Template)]
#[template(path = "console/alerts.html")]
struct AlertsPage {
    frame: Frame,
    sensor: String,
    firing: Vec<EpisodeRow>,
    past: Vec<EpisodeRow>,
    past_shown: usize,
}

#[derive(Deserialize)]
pub struct AlertsQuery {
    sensor: Option<String>,
    tz: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(query): Query<AlertsQuery>,
) -> Response {
    let zone = Zone::of(query.tz.as_deref(), &headers);
    let sensor = query
        .sensor
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse::<SensorId>().ok());
    let read = |alert_state, limit| AlertQuery {
        sensor_id: sensor.clone(),
        state: Some(alert_state),
        since_ms: None,
        limit,
    };
    let now = now_ms();
    let rows = |alerts: Vec<Alert>| -> Vec<EpisodeRow> {
        alerts
            .iter()
            .map(|a| EpisodeRow::of(a, &zone, now))
            .collect()
    };
    let firing = state
        .alerts
        .alerts(read(AlertState::Firing, FIRING_SHOWN))
        .await;
    let past = state
        .alerts
        .alerts(read(AlertState::Resolved, PAST_SHOWN))
        .await;
    let (firing, past) = match (firing, past) {
        (Ok(firing), Ok(past)) => (rows(firing), rows(past)),
        (Err(error), _) | (_, Err(error)) => {
            return super::pages::message(
                &viewer,
                &zone,
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                format!("Alerts cannot be read now: {error}"),
            );
        }
    };
    let title = match &sensor {
        Some(sensor) => format!("Alerts of {sensor}"),
        None => "Alerts".to_string(),
    };
    let page = AlertsPage {
        frame: Frame::new(title, "alerts", &viewer, &zone),
        sensor: sensor.map(|s| s.to_string()).unwrap_or_default(),
        firing,
        past,
        past_shown: PAST_SHOWN,
    };
    render(StatusCode::OK, &page)
}
