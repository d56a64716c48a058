//! Handlers for thresholds and alerts.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};

use super::AppState;
use super::auth::{Authorized, Reader, Writer};
use super::error::ApiError;
use super::extract::{JsonBody, PathText, QueryParams};
use crate::alerts::AlertQuery;
use crate::alerts::engine::{Alert, AlertState, Threshold};
use crate::ingest::record_alert_metrics;
use crate::reading::{InvalidInput, SensorId, now_ms, parse_value, reject_unknown_fields};

const ALERTS_DEFAULT: usize = 100;
const ALERTS_MAX: usize = 10_000;

/// A threshold from its JSON form (the API's body, and the console's form
/// turned into it): `{"sensor_id", "threshold"}` (the upper limit), or the full form
/// `{"sensor_id", "max"?, "min"?, "hysteresis"?}`.
pub fn parse_threshold(body: &Value) -> Result<Threshold, InvalidInput> {
    let object = body
        .as_object()
        .ok_or_else(|| InvalidInput::new("body", "must be a JSON object"))?;
    reject_unknown_fields(
        object,
        &[
            "sensor_id",
            "threshold",
            "max",
            "min",
            "hysteresis",
            "for",
            "stale_after",
        ],
    )?;
    let sensor_id: SensorId = match object.get("sensor_id") {
        Some(Value::String(s)) => s.parse()?,
        _ => {
            return Err(InvalidInput::new(
                "sensor_id",
                "is required and must be a string",
            ));
        }
    };
    let optional = |field: &str| match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_value(field, v).map(Some),
    };
    if object.contains_key("threshold") && object.contains_key("max") {
        return Err(InvalidInput::new(
            "threshold",
            "give either threshold or max, not both",
        ));
    }
    let max = optional("threshold")?.or(optional("max")?);
    let min = optional("min")?;
    let hysteresis = optional("hysteresis")?.unwrap_or(0.0);
    if hysteresis < 0.0 {
        return Err(InvalidInput::new("hysteresis", "must not be negative"));
    }
    if let (Some(max), Some(min)) = (max, min)
        && min >= max
    {
        return Err(InvalidInput::new("min", "must be below max"));
    }
    let duration = |field: &str| match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => crate::history::parse_duration(field, text).map(Some),
        Some(_) => Err(InvalidInput::new(
            field,
            "must be a duration such as \"30s\", \"15m\" or \"1h\"",
        )),
    };
    let for_ms = duration("for")?;
    let stale_after_ms = duration("stale_after")?;
    if max.is_none() && min.is_none() && stale_after_ms.is_none() {
        return Err(InvalidInput::new(
            "max",
            "a threshold needs max (or threshold), min, stale_after, or several",
        ));
    }
    Ok(Threshold {
        sensor_id,
        max,
        min,
        hysteresis,
        for_ms,
        stale_after_ms,
    })
}

pub async fn set_threshold(
    State(state): State<AppState>,
    _: Authorized<Writer>,
    JsonBody(body): JsonBody,
) -> Result<Json<Threshold>, ApiError> {
    let threshold = parse_threshold(&body)?;
    Ok(Json(state.alerts.set_threshold(threshold).await?))
}

pub async fn thresholds(
    State(state): State<AppState>,
    _: Authorized<Reader>,
) -> Json<Vec<Threshold>> {
    Json(state.alerts.thresholds().await)
}

pub async fn delete_threshold(
    State(state): State<AppState>,
    _: Authorized<Writer>,
    PathText(sensor): PathText,
) -> Result<Json<Value>, ApiError> {
    let sensor: SensorId = sensor.parse()?;
    match state.alerts.remove_threshold(&sensor, now_ms()).await? {
        Some(changes) => {
            record_alert_metrics(&changes);
            Ok(Json(json!({"deleted": sensor, "resolved": changes.len()})))
        }
        None => Err(ApiError::NotFound(format!(
            "no threshold for sensor {sensor}"
        ))),
    }
}

pub async fn alerts(
    State(state): State<AppState>,
    _: Authorized<Reader>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Alert>>, ApiError> {
    let q = QueryParams::parse(query.as_deref(), &["sensor_id", "state", "since", "limit"])?;
    let alert_state = match q.text("state") {
        None => None,
        Some("firing") => Some(AlertState::Firing),
        Some("resolved") => Some(AlertState::Resolved),
        Some(_) => return Err(ApiError::bad("state", "must be firing or resolved")),
    };
    let query = AlertQuery {
        sensor_id: q.parsed::<SensorId>("sensor_id")?,
        state: alert_state,
        since_ms: q.time("since")?,
        limit: q.limit(ALERTS_DEFAULT, ALERTS_MAX)?,
    };
    Ok(Json(state.alerts.alerts(query).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_and_full_threshold_forms() {
        let short = parse_threshold(&json!({"sensor_id": "s", "threshold": 70})).expect("valid");
        assert_eq!(
            (short.max, short.min, short.hysteresis),
            (Some(70.0), None, 0.0)
        );
        let full =
            parse_threshold(&json!({"sensor_id": "s", "max": 70, "min": 5, "hysteresis": 1}))
                .expect("valid");
        assert_eq!(
            (full.max, full.min, full.hysteresis),
            (Some(70.0), Some(5.0), 1.0)
        );
        for (bad, field) in [
            (json!({"threshold": 1}), "sensor_id"),
            (json!({"sensor_id": "s"}), "max"),
            (json!({"sensor_id": "s", "threshold": "x"}), "threshold"),
            (json!({"sensor_id": "s", "max": 1, "min": 2}), "min"),
            (
                json!({"sensor_id": "s", "max": 1, "hysteresis": -1}),
                "hysteresis",
            ),
            (json!({"sensor_id": "s", "max": 1, "maxx": 2}), "maxx"),
        ] {
            assert_eq!(
                parse_threshold(&bad).expect_err("invalid").field,
                field,
                "{bad}"
            );
        }
    }
}
