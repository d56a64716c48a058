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
use crate::alerts::AlertService;
use crate::alerts::engine::{Alert, AlertState, kind_name};
use crate::http::AppState;
use crate::latest::Latest;
use crate::reading::{SensorId, now_ms};

/// Sensors per page.
pub const PAGE: usize = 50;
/// A sensor without a `stale_after` of its own is shown stale once silent
/// this long.
pub const DEFAULT_STALE_MS: i64 = 15 * 60_000;
/// Firing alerts read to mark sensors at most.
pub const FIRING_READ: usize = 10_000;

/// A sensor's last reading as the pages show it.
pub struct LastReading {
    pub value: String,
    pub unit: String,
    pub timestamp_ms: i64,
    pub time: String,
    pub age: String,
    /// Silent longer than `stale_after_ms`.
    pub stale: bool,
    pub stale_after_ms: i64,
}

impl LastReading {
    pub fn of(latest: &Latest, stale_after_ms: i64, zone: &Zone, now_ms: i64) -> Self {
        Self {
            value: number(latest.value),
            unit: latest
                .unit
                .as_ref()
                .map(|u| u.as_str().to_string())
                .unwrap_or_default(),
            timestamp_ms: latest.timestamp_ms,
            time: zone.datetime(latest.timestamp_ms),
            age: age(now_ms, latest.timestamp_ms),
            stale: now_ms - latest.timestamp_ms > stale_after_ms,
            stale_after_ms,
        }
    }
}

/// One row of the list.
pub struct SensorRow {
    pub id: String,
    pub last: LastReading,
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

/// The alert episodes firing now (at most [`FIRING_READ`]); none if the
/// alert store cannot be read.
pub async fn firing_now(alerts: &AlertService) -> Vec<Alert> {
    alerts
        .alerts(AlertQuery {
            state: Some(AlertState::Firing),
            limit: FIRING_READ,
            ..AlertQuery::default()
        })
        .await
        .unwrap_or_default()
}

/// The kinds of alert firing now, by sensor, comma separated.
pub async fn firing_by_sensor(alerts: &AlertService) -> HashMap<SensorId, String> {
    let mut by_sensor: HashMap<SensorId, String> = HashMap::new();
    for alert in firing_now(alerts).await {
        let kinds = by_sensor.entry(alert.sensor_id).or_default();
        if !kinds.is_empty() {
            kinds.push_str(", ");
        }
        kinds.push_str(kind_name(alert.kind));
    }
    by_sensor
}

/// How long each sensor may be silent before it is shown stale: its
/// `stale_after`, else [`DEFAULT_STALE_MS`].
pub struct StaleLimits(HashMap<SensorId, i64>);

impl StaleLimits {
    pub async fn read(alerts: &AlertService) -> Self {
        Self(
            alerts
                .thresholds()
                .await
                .into_iter()
                .filter_map(|t| t.stale_after_ms.map(|ms| (t.sensor_id, ms)))
                .collect(),
        )
    }

    pub fn of(&self, sensor: &SensorId) -> i64 {
        self.0.get(sensor).copied().unwrap_or(DEFAULT_STALE_MS)
    }
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
    let mut firing = firing_by_sensor(&state.alerts).await;
    let limits = StaleLimits::read(&state.alerts).await;
    let now = now_ms();
    let rows = page
        .sensors
        .into_iter()
        .map(|(id, latest)| SensorRow {
            last: LastReading::of(&latest, limits.of(&id), &zone, now),
            alerts: firing.remove(&id).unwrap_or_default(),
            id: id.to_string(),
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
