//! One sensor's page (`/ui/sensors/<id>`): its last value, a chart of a
//! window of its history (min, mean and max per bucket, thresholds, alert
//! episodes), daily energy bars cut at the viewer's local midnight, CSV
//! export, its alert episodes, and threshold editing for the write role.
//!
//! The chart alone is also served (`…/chart`), for the page's script to
//! redraw it at the width the browser has or with new readings.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::chart::{self, DailyBars, Episode, HistoryChart, HistoryInput};
use super::pages::{forbidden_origin, message, refused_below};
use super::sensors::{DEFAULT_STALE_MS, LastReading, firing_by_sensor};
use super::session::{Viewer, same_origin};
use super::view::{Frame, Zone, number, render};
use super::window::{RANGES, Window, WindowQuery};
use crate::alerts::AlertQuery;
use crate::alerts::engine::{Alert, Threshold, kind_name};
use crate::config::Role;
use crate::history::{self, Aggregate, Aggregator, Buckets, Spread};
use crate::http::AppState;
use crate::http::paged::{self, Format};
use crate::reading::{SensorId, now_ms};
use crate::replication::ReplicationResult;
use crate::storage::Scan;

const DAY_MS: i64 = 86_400_000;
/// Rows a CSV export holds at most.
const EXPORT_MAX: usize = 1_000_000;
/// Days of energy bars at most, and at least.
const MOST_DAYS: i64 = 62;
const FEWEST_DAYS: i64 = 7;
/// Alert episodes listed on the page at most.
const EPISODES_SHOWN: usize = 50;

struct RangeLink {
    name: &'static str,
    current: bool,
}

/// A threshold as the form shows it.
#[derive(Default)]
struct ThresholdFields {
    max: String,
    min: String,
    hysteresis: String,
    for_: String,
    stale_after: String,
}

struct EpisodeRow {
    kind: &'static str,
    firing: bool,
    started: String,
    ended: String,
    peak: String,
    threshold: String,
}

#[derive(Template)]
#[template(path = "console/sensor.html")]
struct SensorPage {
    frame: Frame,
    id: String,
    last: Option<LastReading>,
    firing: String,
    ranges: Vec<RangeLink>,
    window_query: String,
    earlier: String,
    later: String,
    zoom_in: String,
    zoom_out: String,
    from_input: String,
    to_input: String,
    live: bool,
    chart: String,
    bars: Option<String>,
    bars_note: String,
    threshold: Option<ThresholdFields>,
    may_write: bool,
    episodes: Vec<EpisodeRow>,
}

/// `sensor`'s history over `window` as spreads of `every_ms`.
async fn spreads(
    state: &AppState,
    sensor: &SensorId,
    window: Window,
    every_ms: i64,
    zone: &Zone,
) -> ReplicationResult<Vec<Spread>> {
    let buckets =
        Buckets::new(every_ms, Some(zone.zone.clone())).unwrap_or(Buckets::Utc { every_ms });
    let mut aggregator = Aggregator::new(buckets, Aggregate::Mean, history::DEFAULT_MAX_GAP_MS);
    push_range(state, sensor, window.from_ms, window.to_ms, &mut aggregator).await?;
    Ok(aggregator.finish_spread())
}

/// Pushes every reading of `sensor` in `[from, to)` into `aggregator`.
async fn push_range(
    state: &AppState,
    sensor: &SensorId,
    from_ms: i64,
    to_ms: i64,
    aggregator: &mut Aggregator,
) -> ReplicationResult<()> {
    let range = Scan {
        sensor: Some(sensor.clone()),
        from_ms: Some(from_ms),
        to_ms: Some(to_ms),
        ..Scan::default()
    };
    // Buckets are few by construction (the chart's width, or days): the
    // cap cannot be reached.
    let _ = history::aggregate_range(&state.replicator, range, aggregator).await?;
    Ok(())
}

/// How a sensor's unit turns into energy per day: a power integrated over
/// time, or an energy counter's rise.
enum EnergyOf {
    /// Power in this unit; the integral is divided by `per` to give `unit`.
    Power { per: f64, unit: &'static str },
    /// A counter in `unit`: the day's highest minus its lowest reading.
    Counter { unit: &'static str },
}

fn energy_of(unit: &str) -> Option<EnergyOf> {
    Some(match unit {
        "W" => EnergyOf::Power {
            per: 1_000.0,
            unit: "kWh",
        },
        "kW" => EnergyOf::Power {
            per: 1.0,
            unit: "kWh",
        },
        "MW" => EnergyOf::Power {
            per: 1.0,
            unit: "MWh",
        },
        "Wh" => EnergyOf::Counter { unit: "Wh" },
        "kWh" => EnergyOf::Counter { unit: "kWh" },
        "MWh" => EnergyOf::Counter { unit: "MWh" },
        _ => return None,
    })
}

/// Energy per local day over the days `window` covers (at least the last
/// [`FEWEST_DAYS`] before its end, at most the last [`MOST_DAYS`]), in the
/// answered unit; days without readings are drawn as zero.
async fn daily_energy(
    state: &AppState,
    sensor: &SensorId,
    how: &EnergyOf,
    window: Window,
    zone: &Zone,
) -> ReplicationResult<(Vec<(i64, f64)>, &'static str)> {
    let days = chart::ceil_div(window.span_ms(), DAY_MS).clamp(FEWEST_DAYS, MOST_DAYS);
    let Ok(buckets) = Buckets::new(DAY_MS, Some(zone.zone.clone())) else {
        return Ok((Vec::new(), ""));
    };
    let last_day = buckets.start_of(window.to_ms - 1);
    let mut first_day = last_day;
    for _ in 1..days {
        first_day = buckets.start_of(first_day - 1);
    }
    let day_starts: Vec<i64> = std::iter::successors(Some(first_day), |&d| {
        let next = buckets.next_start(d);
        (next <= last_day).then_some(next)
    })
    .collect();
    let end = buckets.next_start(last_day);
    let (agg, unit, per) = match how {
        EnergyOf::Power { per, unit } => (Aggregate::Energy, *unit, *per),
        EnergyOf::Counter { unit } => (Aggregate::Mean, *unit, 1.0),
    };
    let mut aggregator = Aggregator::new(buckets, agg, history::DEFAULT_MAX_GAP_MS);
    push_range(state, sensor, first_day, end, &mut aggregator).await?;
    let per_day: std::collections::HashMap<i64, f64> = match how {
        EnergyOf::Power { .. } => aggregator
            .finish()
            .into_iter()
            .map(|b| (b.timestamp, b.value / per))
            .collect(),
        EnergyOf::Counter { .. } => aggregator
            .finish_spread()
            .into_iter()
            .map(|s| (s.start_ms, s.max - s.min))
            .collect(),
    };
    let days = day_starts
        .into_iter()
        .map(|day| (day, per_day.get(&day).copied().unwrap_or(0.0)))
        .collect();
    Ok((days, unit))
}

/// The chart of `sensor` over `window` at `width` pixels.
async fn draw_chart(
    state: &AppState,
    sensor: &SensorId,
    unit: &str,
    window: Window,
    width: u32,
    zone: &Zone,
) -> ReplicationResult<HistoryChart> {
    let every_ms = chart::bucket_ms(window.span_ms(), width);
    let spreads = spreads(state, sensor, window, every_ms, zone).await?;
    let threshold = threshold_of(state, sensor).await;
    let episodes: Vec<Episode> = episodes_in(state, sensor, window)
        .await
        .into_iter()
        .map(|a| Episode {
            kind: a.kind,
            start_ms: a.started_at,
            end_ms: a.resolved_at,
        })
        .collect();
    Ok(HistoryChart::draw(&HistoryInput {
        sensor: sensor.as_str(),
        unit,
        from_ms: window.from_ms,
        to_ms: window.to_ms,
        every_ms,
        spreads: &spreads,
        max: threshold.as_ref().and_then(|t| t.max),
        min: threshold.as_ref().and_then(|t| t.min),
        episodes: &episodes,
        zone,
        width,
    }))
}

/// The daily energy bars of `sensor`, or why there are none.
async fn draw_bars(
    state: &AppState,
    sensor: &SensorId,
    unit: &str,
    window: Window,
    width: u32,
    zone: &Zone,
) -> ReplicationResult<Result<String, String>> {
    let Some(how) = energy_of(unit) else {
        let reports = if unit.is_empty() {
            "no unit".to_string()
        } else {
            unit.to_string()
        };
        return Ok(Err(format!(
            "Daily energy is drawn for sensors reporting power (W, kW, MW) or an energy counter (Wh, kWh, MWh); this one reports {reports}."
        )));
    };
    let (days, energy_unit) = daily_energy(state, sensor, &how, window, zone).await?;
    Ok(
        DailyBars::draw(sensor.as_str(), &days, energy_unit, zone, width)
            .render()
            .map_err(|_| "The bars could not be drawn.".to_string()),
    )
}

async fn threshold_of(state: &AppState, sensor: &SensorId) -> Option<Threshold> {
    state
        .alerts
        .thresholds()
        .await
        .into_iter()
        .find(|t| t.sensor_id == *sensor)
}

/// `sensor`'s alert episodes that overlap `window`, newest first.
async fn episodes_in(state: &AppState, sensor: &SensorId, window: Window) -> Vec<Alert> {
    let query = AlertQuery {
        sensor_id: Some(sensor.clone()),
        since_ms: Some(window.from_ms),
        limit: 1_000,
        ..AlertQuery::default()
    };
    let mut episodes = state.alerts.alerts(query).await.unwrap_or_default();
    episodes.retain(|a| a.started_at < window.to_ms);
    episodes
}

/// Whether `sensor` has any live reading stored.
async fn has_readings(state: &AppState, sensor: &SensorId) -> ReplicationResult<bool> {
    if state.latest.get(sensor).is_some() {
        return Ok(true);
    }
    let probe = Scan {
        sensor: Some(sensor.clone()),
        limit: 1,
        ..Scan::default()
    };
    Ok(!state.replicator.scan(probe).await?.is_empty())
}

/// The sensor named in the path, if it is valid and has readings; else the
/// page to answer.
async fn known_sensor(
    state: &AppState,
    viewer: &Viewer,
    zone: &Zone,
    id: &str,
) -> Result<SensorId, Response> {
    let unknown = || {
        message(
            viewer,
            zone,
            StatusCode::NOT_FOUND,
            "Not found",
            format!("There is no sensor {id:?} with readings."),
        )
    };
    let Ok(sensor) = id.parse::<SensorId>() else {
        return Err(unknown());
    };
    match has_readings(state, &sensor).await {
        Ok(true) => Ok(sensor),
        Ok(false) => Err(unknown()),
        Err(error) => Err(unavailable(viewer, zone, &error)),
    }
}

fn unavailable(
    viewer: &Viewer,
    zone: &Zone,
    error: &crate::replication::ReplicationError,
) -> Response {
    message(
        viewer,
        zone,
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        format!("The sensor's readings cannot be read now: {error}"),
    )
}

/// What every handler of a sensor's page starts from: the viewer's zone,
/// the sensor (valid, with readings) and the window asked for; else the
/// page to answer.
async fn open_sensor(
    state: &AppState,
    viewer: &Viewer,
    headers: &HeaderMap,
    id: &str,
    query: &WindowQuery,
) -> Result<(Zone, SensorId, Window), Response> {
    let zone = Zone::of(query.tz.as_deref(), headers);
    let sensor = known_sensor(state, viewer, &zone, id).await?;
    let window = Window::of(query, &zone, now_ms());
    Ok((zone, sensor, window))
}

fn unit_of(state: &AppState, sensor: &SensorId) -> String {
    state
        .latest
        .get(sensor)
        .and_then(|l| l.unit)
        .map(|u| u.as_str().to_string())
        .unwrap_or_default()
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<WindowQuery>,
) -> Response {
    let (zone, sensor, window) = match open_sensor(&state, &viewer, &headers, &id, &query).await {
        Ok(opened) => opened,
        Err(page) => return page,
    };
    let now = now_ms();
    let unit = unit_of(&state, &sensor);
    let width = chart::clamp_width(query.w);
    let chart = match draw_chart(&state, &sensor, &unit, window, width, &zone).await {
        Ok(chart) => chart.render().unwrap_or_default(),
        Err(error) => return unavailable(&viewer, &zone, &error),
    };
    let (bars, bars_note) = match draw_bars(&state, &sensor, &unit, window, width, &zone).await {
        Ok(Ok(bars)) => (Some(bars), String::new()),
        Ok(Err(note)) => (None, note),
        Err(error) => return unavailable(&viewer, &zone, &error),
    };
    let threshold = threshold_of(&state, &sensor).await;
    let stale_after_ms = threshold
        .as_ref()
        .and_then(|t| t.stale_after_ms)
        .unwrap_or(DEFAULT_STALE_MS);
    let last = state
        .latest
        .get(&sensor)
        .map(|l| LastReading::of(&l, stale_after_ms, &zone, now));
    let firing = firing_by_sensor(&state.alerts)
        .await
        .remove(&sensor)
        .unwrap_or_default();
    let episodes = episodes_in(&state, &sensor, window)
        .await
        .into_iter()
        .take(EPISODES_SHOWN)
        .map(|a| EpisodeRow {
            kind: kind_name(a.kind),
            firing: a.resolved_at.is_none(),
            started: zone.datetime(a.started_at),
            ended: a
                .resolved_at
                .map_or_else(|| "firing".into(), |t| zone.datetime(t)),
            peak: number(a.peak),
            threshold: number(a.threshold),
        })
        .collect();
    let page = SensorPage {
        frame: Frame::new(sensor.to_string(), "sensors", &viewer, &zone),
        id: sensor.to_string(),
        last,
        firing,
        ranges: RANGES
            .iter()
            .map(|(name, _)| RangeLink {
                name,
                current: window.range == Some(*name),
            })
            .collect(),
        window_query: window.query(),
        earlier: window.shifted(-0.5),
        later: window.shifted(0.5),
        zoom_in: window.zoomed(0.5),
        zoom_out: window.zoomed(2.0),
        from_input: zone.input_value(window.from_ms),
        to_input: zone.input_value(window.to_ms),
        live: window.range.is_some(),
        chart,
        bars,
        bars_note,
        threshold: threshold.map(|t| fields_of(&t)),
        may_write: viewer.may_write(),
        episodes,
    };
    render(StatusCode::OK, &page)
}

fn fields_of(t: &Threshold) -> ThresholdFields {
    let duration = |ms: Option<i64>| ms.map(chart::duration_name).unwrap_or_default();
    ThresholdFields {
        max: t.max.map(number).unwrap_or_default(),
        min: t.min.map(number).unwrap_or_default(),
        hysteresis: number(t.hysteresis),
        for_: duration(t.for_ms),
        stale_after: duration(t.stale_after_ms),
    }
}

/// Which figure of the page to draw alone.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Figure {
    Chart,
    Daily,
}

/// One figure of the page alone, as SVG (`…/chart`, `…/daily`).
pub async fn figure(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((id, figure)): Path<(String, Figure)>,
    Query(query): Query<WindowQuery>,
) -> Response {
    let (zone, sensor, window) = match open_sensor(&state, &viewer, &headers, &id, &query).await {
        Ok(opened) => opened,
        Err(page) => return page,
    };
    let unit = unit_of(&state, &sensor);
    let width = chart::clamp_width(query.w);
    let svg = match figure {
        Figure::Chart => draw_chart(&state, &sensor, &unit, window, width, &zone)
            .await
            .map(|chart| {
                chart
                    .render()
                    .map_err(|_| "The chart could not be drawn.".to_string())
            }),
        Figure::Daily => draw_bars(&state, &sensor, &unit, window, width, &zone).await,
    };
    match svg {
        Ok(Ok(svg)) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Ok(Err(note)) => (StatusCode::NOT_FOUND, note).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

/// The window's raw readings as CSV.
pub async fn export(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<WindowQuery>,
) -> Response {
    let (_, sensor, window) = match open_sensor(&state, &viewer, &headers, &id, &query).await {
        Ok(opened) => opened,
        Err(page) => return page,
    };
    let range = Scan {
        sensor: Some(sensor.clone()),
        from_ms: Some(window.from_ms),
        to_ms: Some(window.to_ms),
        ..Scan::default()
    };
    match paged::measurements(state.replicator.clone(), range, EXPORT_MAX, Format::Csv).await {
        Ok(mut response) => {
            let disposition = format!("attachment; filename=\"{sensor}.csv\"");
            if let Ok(value) = disposition.parse() {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        // A download: the API's error answer says what failed.
        Err(error) => error.into_response(),
    }
}

/// The threshold form: every field is text, empty meaning "none".
#[derive(Deserialize)]
pub struct ThresholdForm {
    #[serde(default)]
    max: String,
    #[serde(default)]
    min: String,
    #[serde(default)]
    hysteresis: String,
    #[serde(default, rename = "for")]
    for_: String,
    #[serde(default)]
    stale_after: String,
}

impl ThresholdForm {
    /// The JSON body `POST /set_threshold` would take, so both doors share
    /// one validation.
    fn as_json(&self, sensor: &SensorId) -> Value {
        let mut object = Map::new();
        object.insert("sensor_id".into(), Value::String(sensor.to_string()));
        for (name, text) in [
            ("max", &self.max),
            ("min", &self.min),
            ("hysteresis", &self.hysteresis),
        ] {
            let text = text.trim();
            if !text.is_empty() {
                let value = text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| Value::String(text.to_string()), Value::Number);
                object.insert(name.into(), value);
            }
        }
        for (name, text) in [("for", &self.for_), ("stale_after", &self.stale_after)] {
            let text: String = text.split_whitespace().collect();
            if !text.is_empty() {
                object.insert(name.into(), Value::String(short_duration(&text)));
            }
        }
        Value::Object(object)
    }
}

/// `10minutes` or `2hours` (as the form shows durations) as `10m`, `2h`;
/// anything else as given.
fn short_duration(text: &str) -> String {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (count, unit) = text.split_at(split);
    let count = if count.is_empty() { "1" } else { count };
    let short = match unit.trim_end_matches('s') {
        "second" | "sec" => "s",
        "minute" | "min" => "m",
        "hour" => "h",
        "day" => "d",
        _ => return text.to_string(),
    };
    format!("{count}{short}")
}

pub async fn set_threshold(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ThresholdForm>,
) -> Response {
    let zone = Zone::of(None, &headers);
    if !same_origin(&headers) {
        return forbidden_origin();
    }
    if let Some(refused) = refused_below(&viewer, &zone, Role::Write, "change thresholds") {
        return refused;
    }
    let sensor = match known_sensor(&state, &viewer, &zone, &id).await {
        Ok(sensor) => sensor,
        Err(page) => return page,
    };
    let threshold = match crate::http::parse_threshold(&form.as_json(&sensor)) {
        Ok(threshold) => threshold,
        Err(invalid) => {
            return message(
                &viewer,
                &zone,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Threshold not saved",
                format!("{}: {}", invalid.field, invalid.reason),
            );
        }
    };
    match state.alerts.set_threshold(threshold).await {
        Ok(_) => Redirect::to(&format!("/ui/sensors/{sensor}")).into_response(),
        Err(error) => message(
            &viewer,
            &zone,
            StatusCode::SERVICE_UNAVAILABLE,
            "Threshold not saved",
            format!("{error}"),
        ),
    }
}

pub async fn remove_threshold(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let zone = Zone::of(None, &headers);
    if !same_origin(&headers) {
        return forbidden_origin();
    }
    if let Some(refused) = refused_below(&viewer, &zone, Role::Write, "change thresholds") {
        return refused;
    }
    let Ok(sensor) = id.parse::<SensorId>() else {
        return message(
            &viewer,
            &zone,
            StatusCode::NOT_FOUND,
            "Not found",
            format!("There is no sensor {id:?}."),
        );
    };
    match state.alerts.remove_threshold(&sensor, now_ms()).await {
        Ok(Some(changes)) => {
            crate::ingest::record_alert_metrics(&changes);
            Redirect::to(&format!("/ui/sensors/{sensor}")).into_response()
        }
        Ok(None) => message(
            &viewer,
            &zone,
            StatusCode::NOT_FOUND,
            "Not found",
            format!("Sensor {sensor} has no threshold."),
        ),
        Err(error) => message(
            &viewer,
            &zone,
            StatusCode::SERVICE_UNAVAILABLE,
            "Not removed",
            format!("{error}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_the_apis_threshold() {
        let form = ThresholdForm {
            max: " 70 ".into(),
            min: String::new(),
            hysteresis: "1.5".into(),
            for_: "10 minutes".into(),
            stale_after: "hour".into(),
        };
        let sensor: SensorId = "s1".parse().expect("an id");
        let threshold = crate::http::parse_threshold(&form.as_json(&sensor)).expect("valid");
        assert_eq!(threshold.max, Some(70.0));
        assert_eq!(threshold.min, None);
        assert_eq!(threshold.for_ms, Some(600_000));
        assert_eq!(threshold.stale_after_ms, Some(3_600_000));
        // What the page shows reads back as the same threshold.
        let shown = fields_of(&threshold);
        let again = ThresholdForm {
            max: shown.max,
            min: shown.min,
            hysteresis: shown.hysteresis,
            for_: shown.for_,
            stale_after: shown.stale_after,
        };
        assert_eq!(
            crate::http::parse_threshold(&again.as_json(&sensor)).expect("valid"),
            threshold
        );
        let bad = ThresholdForm {
            max: "lots".into(),
            ..again
        };
        assert_eq!(
            crate::http::parse_threshold(&bad.as_json(&sensor))
                .expect_err("invalid")
                .field,
            "max"
        );
    }
}
