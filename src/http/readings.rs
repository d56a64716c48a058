//! Handlers for readings: ingest, point reads and writes, listing, history.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{Authorized, Reader, Writer};
use super::error::ApiError;
use super::extract::{BodyBytes, JsonBody, PathText, QueryParams, not_json};
use super::paged::{self, Format, csv_response};
use crate::history::{self, Aggregate, Bucket};
use crate::ingest::Door;
use crate::reading::body::{BodyError, Parsed, parse_body};
use crate::reading::{
    Key, Measurement, SensorId, format_timestamp, now_ms, parse_unit, parse_value,
    reject_unknown_fields,
};
use crate::storage::{Record, Scan};

/// Most readings accepted in one `POST /ingest`.
pub const MAX_BATCH: usize = 10_000;
const LIST_DEFAULT: usize = 1_000;
const LIST_MAX: usize = 100_000;
const HISTORY_DEFAULT: usize = 100_000;
const HISTORY_MAX: usize = 1_000_000;

fn parse_key(text: &str) -> Result<Key, ApiError> {
    Ok(text.parse::<Key>()?)
}

fn measurement(record: Record) -> Option<Measurement> {
    let key = record.key;
    record.sample.map(|s| Measurement::new(key, s))
}

/// Bodies up to this size are parsed where they arrive (tens of
/// microseconds); larger ones on a blocking thread.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

pub async fn ingest(
    State(state): State<AppState>,
    _: Authorized<Writer>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    let received = now_ms();
    // A large body is parsed on a blocking thread, so a few of them at once
    // cannot stall every request on the async workers.
    let parsed = if body.len() > INLINE_PARSE_BYTES {
        tokio::task::spawn_blocking(move || parse_body(&body, None, received, MAX_BATCH))
            .await
            .map_err(|e| ApiError::Internal(format!("parsing the body: {e}")))?
    } else {
        parse_body(&body, None, received, MAX_BATCH)
    };
    let parsed = parsed.map_err(|error| match error {
        BodyError::NotUtf8(e) => ApiError::bad("body", format!("not valid UTF-8: {e}")),
        BodyError::NotJson(e) => not_json(e),
        BodyError::TooMany { max } => {
            ApiError::bad("body", format!("at most {max} readings per request"))
        }
        BodyError::Invalid {
            index,
            readings,
            error,
        } => {
            rejected(readings);
            match index {
                Some(i) => ApiError::bad(format!("[{i}].{}", error.field), error.reason),
                None => error.into(),
            }
        }
    })?;
    match parsed {
        Parsed::Many(readings) => {
            let keys = state.ingestor.ingest(readings, Door::Http).await?;
            let count = keys.len();
            Ok((StatusCode::CREATED, Json(Stored { count, keys })).into_response())
        }
        Parsed::One(reading) => {
            let keys = state.ingestor.ingest(vec![reading], Door::Http).await?;
            Ok((StatusCode::CREATED, Json(StoredOne { key: &keys[0] })).into_response())
        }
    }
}

/// The answer to a single reading: its key.
#[derive(Serialize)]
struct StoredOne<'a> {
    key: &'a Key,
}

/// The answer to a batch: how many readings were stored, and their keys.
#[derive(Serialize)]
struct Stored {
    count: usize,
    keys: Vec<Key>,
}

fn rejected(count: usize) {
    metrics::counter!("energyguard_readings_rejected_total", "door" => Door::Http.as_str(), "reason" => "invalid")
        .increment(count as u64);
}

pub async fn get_measurement(
    State(state): State<AppState>,
    _: Authorized<Reader>,
    PathText(key): PathText,
) -> Result<Json<Measurement>, ApiError> {
    let key = parse_key(&key)?;
    match state.replicator.get(&key).await? {
        Some(sample) => Ok(Json(Measurement::new(key, sample))),
        None => Err(ApiError::NotFound(format!("no measurement with key {key}"))),
    }
}

pub async fn update_measurement(
    State(state): State<AppState>,
    _: Authorized<Writer>,
    PathText(key): PathText,
    JsonBody(body): JsonBody,
) -> Result<Json<Measurement>, ApiError> {
    let key = parse_key(&key)?;
    let object = body.as_object().ok_or_else(|| {
        ApiError::bad("body", "must be a JSON object {\"value\": x, \"unit\"?: u}")
    })?;
    reject_unknown_fields(object, &["value", "unit"])?;
    let value = parse_value("value", object.get("value").unwrap_or(&Value::Null))?;
    let unit = parse_unit(object.get("unit"))?;
    if !state.replicator.update(&key, value, unit).await? {
        return Err(ApiError::NotFound(format!("no measurement with key {key}")));
    }
    let sample = state
        .replicator
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no measurement with key {key}")))?;
    state.latest.record(&[crate::reading::Reading {
        key: key.clone(),
        sample: sample.clone(),
    }]);
    Ok(Json(Measurement::new(key, sample)))
}

pub async fn delete_measurement(
    State(state): State<AppState>,
    _: Authorized<Writer>,
    PathText(key): PathText,
) -> Result<Json<Value>, ApiError> {
    let key = parse_key(&key)?;
    if state.replicator.delete(&key).await? {
        let held = state.latest.get(&key.sensor);
        if held.is_some_and(|latest| latest.timestamp_ms == key.timestamp_ms)
            && let Err(error) = state.latest.refresh(&state.replicator, &key.sensor).await
        {
            tracing::warn!(%error, sensor = %key.sensor, "could not look the sensor's newest reading up again");
        }
        Ok(Json(json!({"deleted": key})))
    } else {
        Err(ApiError::NotFound(format!("no measurement with key {key}")))
    }
}

pub async fn list_measurements(
    State(state): State<AppState>,
    _: Authorized<Reader>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Measurement>>, ApiError> {
    let q = QueryParams::parse(
        query.as_deref(),
        &["sensor_id", "from", "to", "limit", "after"],
    )?;
    let scan = Scan {
        sensor: q.parsed::<SensorId>("sensor_id")?,
        from_ms: q.time("from")?,
        to_ms: q.time("to")?,
        after: q.parsed::<Key>("after")?,
        limit: q.limit(LIST_DEFAULT, LIST_MAX)?,
        tombstones: false,
    };
    let records = state.replicator.scan(scan).await?;
    Ok(Json(records.into_iter().filter_map(measurement).collect()))
}

pub async fn history(
    State(state): State<AppState>,
    _: Authorized<Reader>,
    PathText(sensor): PathText,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let sensor: SensorId = sensor.parse()?;
    let q = QueryParams::parse(
        query.as_deref(),
        &[
            "from", "to", "limit", "every", "agg", "max_gap", "format", "tz",
        ],
    )?;
    let csv = match q.text("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad("format", "must be json or csv")),
    };
    let every = q
        .text("every")
        .map(|e| history::parse_duration("every", e))
        .transpose()?;
    if every.is_some_and(|ms| !(history::MIN_EVERY_MS..=history::MAX_EVERY_MS).contains(&ms)) {
        return Err(ApiError::bad("every", "must be between 1s and 366d"));
    }
    let agg = q.parsed::<Aggregate>("agg")?;
    let max_gap = q
        .text("max_gap")
        .map(|g| history::parse_duration("max_gap", g))
        .transpose()?
        .unwrap_or(history::DEFAULT_MAX_GAP_MS);
    let zone = q
        .text("tz")
        .map(|name| {
            jiff::tz::TimeZone::get(name)
                .map_err(|_| ApiError::bad("tz", "must be an IANA time zone such as Europe/Rome"))
        })
        .transpose()?;
    if zone.is_some() && every.is_none() {
        return Err(ApiError::bad("tz", "is used with every (e.g. every=1d)"));
    }
    if agg.is_some() && every.is_none() {
        return Err(ApiError::bad(
            "every",
            "is required with agg (e.g. every=15m)",
        ));
    }
    let limit = q.limit(HISTORY_DEFAULT, HISTORY_MAX)?;
    let range = Scan {
        sensor: Some(sensor.clone()),
        from_ms: q.time("from")?,
        to_ms: q.time("to")?,
        ..Scan::default()
    };
    let probe = Scan {
        sensor: Some(sensor.clone()),
        limit: 1,
        ..Scan::default()
    };
    if state.replicator.scan(probe).await?.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no measurements for sensor {sensor}"
        )));
    }

    match every {
        None => {
            let format = if csv { Format::Csv } else { Format::Json };
            paged::measurements(state.replicator.clone(), range, limit, format).await
        }
        Some(every) => {
            if let (Some(from), Some(to)) = (range.from_ms, range.to_ms)
                && (to - from) / every >= history::MAX_BUCKETS as i64
            {
                return Err(ApiError::TooManyBuckets {
                    limit: history::MAX_BUCKETS,
                });
            }
            let buckets = history::Buckets::new(every, zone)?;
            let aggregator =
                history::Aggregator::new(buckets, agg.unwrap_or(Aggregate::Mean), max_gap);
            let mut buckets = aggregate_pages(&state, range, aggregator).await?;
            buckets.truncate(limit);
            Ok(if csv {
                buckets_csv(&buckets)
            } else {
                Json(buckets).into_response()
            })
        }
    }
}

/// The buckets of every reading in the range, read page by page (a page at
/// a time in memory, whatever the range holds).
async fn aggregate_pages(
    state: &AppState,
    range: Scan,
    mut aggregator: history::Aggregator,
) -> Result<Vec<history::Bucket>, ApiError> {
    match history::aggregate_range(&state.replicator, range, &mut aggregator).await? {
        Ok(()) => Ok(aggregator.finish()),
        Err(history::TooManyBuckets) => Err(ApiError::TooManyBuckets {
            limit: history::MAX_BUCKETS,
        }),
    }
}

fn buckets_csv(buckets: &[Bucket]) -> Response {
    let mut out = String::from("timestamp,value,count\n");
    for b in buckets {
        out.push_str(&format!(
            "{},{},{}\n",
            format_timestamp(b.timestamp),
            b.value,
            b.count
        ));
    }
    csv_response(out)
}
