//! The sensor list (`/ui/sensors`): every sensor's last value, unit, time
//! and age (coloured when stale) and its alert state; searched and paged on
//! the server from the in-memory [`crate::latest::LatestReadings`], so a
//! page costs the same with ten sensors or a million.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::session::Viewer;
use super::view::{Frame, Zone, age, number, render};
use crate::alerts::AlertQuery;
use crate::alerts::engine::{AlertKind, AlertState, kind_name};
use crate::http::AppState;
use crate::reading::{SensorId, now_ms};

/// Sensors per page.
pub const PAGE: usize = 50;
/// A sensor without a `stale_after` of its own is shown stale once silent
/// this long.
pub const DEFAULT_STALE_MS: i64 = 15 * 60_000;
/// Firing alerts read to mark sensors at most.
pub const FIRING_READ: usize = 10_000;

/// One row of the list.
pub struct SensorRow {
    pub id: String,
    pub value: String,
    pub unit: String,
    pub timestamp_ms: i64,
    pub time: String,
    pub age: String,
    pub stale: bool,
    pub stale_after_ms: i64,
    /// The kinds of its firing alerts (`above`, `stale`…), comma separated.
    pub alerts: String,
}

#[derive(Template)]
#[template(path = "console/sensors.html")]
struct SensorsPage {
    frame: Frame,
    search: String,
    rows: Vec<SensorRow>,
    /// The query string of the next page, if there is one.
    next: Option<String>,
    /// Whether this is not the first page.
    paged: bool,
    complete: bool,
    /// Sensors left out because the list holds its most.
    untracked: u64,
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    after: Option<String>,
    tz: Option<String>,
}

/// The kinds of alert firing now, by sensor.
pub async fn firing_by_sensor(state: &AppState) -> HashMap<SensorId, Vec<AlertKind>> {
    let firing = state
        .alerts
        .alerts(AlertQuery {
            state: Some(AlertState::Firing),
            limit: FIRING_READ,
            ..AlertQuery::default()
        })
        .await
        .unwrap_or_default();
    let mut by_sensor: HashMap<SensorId, Vec<AlertKind>> = HashMap::new();
    for alert in firing {
        by_sensor
            .entry(alert.sensor_id)
            .or_default()
            .push(alert.kind);
    }
    by_sensor
}

/// How long each sensor with a `stale_after` may be silent.
pub async fn stale_limits(state: &AppState) -> HashMap<SensorId, i64> {
    state
        .alerts
        .thresholds()
        .await
        .into_iter()
        .filter_map(|t| t.stale_after_ms.map(|ms| (t.sensor_id, ms)))
        .collect()
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let zone = Zone::of(query.tz.as_deref(), &headers);
    let search = query.q.trim().chars().take(64).collect::<String>();
    let after = query
        .after
        .as_deref()
        .and_then(|a| a.parse::<SensorId>().ok());
    let page = state.latest.page(&search, after.as_ref(), PAGE);
    let firing = firing_by_sensor(&state).await;
    let stale_after = stale_limits(&state).await;
    let now = now_ms();
    let rows = page
        .sensors
        .into_iter()
        .map(|(id, latest)| {
            let limit = stale_after.get(&id).copied().unwrap_or(DEFAULT_STALE_MS);
            SensorRow {
                value: number(latest.value),
                unit: latest
                    .unit
                    .map(|u| u.as_str().to_string())
                    .unwrap_or_default(),
                timestamp_ms: latest.timestamp_ms,
                time: zone.datetime(latest.timestamp_ms),
                age: age(now, latest.timestamp_ms),
                stale: now - latest.timestamp_ms > limit,
                stale_after_ms: limit,
                alerts: firing
                    .get(&id)
                    .map(|kinds| {
                        kinds
                            .iter()
                            .map(|k| kind_name(*k))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                id: id.to_string(),
            }
        })
        .collect::<Vec<_>>();
    let next = page.more.then(|| {
        let last = rows.last().map(|r| r.id.as_str()).unwrap_or_default();
        serde_urlencoded::to_string([("q", search.as_str()), ("after", last)]).unwrap_or_default()
    });
    let title = if search.is_empty() {
        "Sensors".to_string()
    } else {
        format!("Sensors matching “{search}”")
    };
    let page = SensorsPage {
        frame: Frame::new(title, "sensors", &viewer, &zone),
        search,
        rows,
        next,
        paged: after.is_some(),
        complete: state.latest.is_seeded(),
        untracked: state.latest.untracked(),
    };
    render(StatusCode::OK, &page)
}
