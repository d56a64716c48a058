//! Long answers (a sensor's raw history, up to a million points) read and
//! rendered page by page: while one page is rendered to JSON or CSV on a
//! blocking thread, the next is read from storage on another, so a long
//! read keeps both halves of its work (SQLite, serialization) going at once
//! instead of one after the other.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::reading::{Measurement, format_timestamp};
use crate::replication::Replicator;
use crate::storage::{Record, Scan};

/// Points read and rendered per step.
const PAGE: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Csv,
}

/// The live measurements in `range`, at most `limit`, as a JSON array of
/// measurement objects or as CSV with a header line.
pub(super) async fn measurements(
    replicator: &Replicator,
    range: Scan,
    limit: usize,
    format: Format,
) -> Result<Response, ApiError> {
    let mut body: Vec<u8> = match format {
        Format::Json => b"[".to_vec(),
        Format::Csv => b"key,sensor_id,timestamp,value,unit\n".to_vec(),
    };
    let mut rendering: Option<tokio::task::JoinHandle<Result<Vec<u8>, String>>> = None;
    let mut after = None;
    let mut rendered = 0;
    loop {
        let take = (limit - rendered).min(PAGE);
        let page = if take == 0 {
            Vec::new()
        } else {
            replicator
                .scan(Scan {
                    after: after.clone(),
                    limit: take,
                    ..range.clone()
                })
                .await?
        };
        if let Some(previous) = rendering.take() {
            body.extend(rendered_page(previous).await?);
        }
        let last_page = take == 0 || page.len() < take;
        after = page.last().map(|r| r.key.clone());
        let first = rendered == 0;
        rendered += page.len();
        rendering = Some(tokio::task::spawn_blocking(move || {
            render(page, format, first)
        }));
        if last_page {
            break;
        }
    }
    if let Some(previous) = rendering {
        body.extend(rendered_page(previous).await?);
    }
    Ok(match format {
        Format::Json => {
            body.push(b']');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Format::Csv => csv_response(body),
    })
}

async fn rendered_page(
    task: tokio::task::JoinHandle<Result<Vec<u8>, String>>,
) -> Result<Vec<u8>, ApiError> {
    task.await
        .map_err(|e| ApiError::Internal(format!("rendering a page: {e}")))?
        .map_err(ApiError::Internal)
}

/// One page of records as JSON objects (comma-separated, a leading comma
/// unless `first`) or as CSV lines.
fn render(page: Vec<Record>, format: Format, first: bool) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(page.len() * 128);
    let points = page.into_iter().filter_map(|record| {
        let key = record.key;
        record.sample.map(|sample| Measurement::new(key, sample))
    });
    for (i, point) in points.enumerate() {
        match format {
            Format::Json => {
                if i > 0 || !first {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, &point).map_err(|e| e.to_string())?;
            }
            Format::Csv => csv_line(&mut out, &point),
        }
    }
    Ok(out)
}

fn csv_line(out: &mut Vec<u8>, m: &Measurement) {
    use std::io::Write;
    let unit = m.unit.as_ref().map(|u| u.as_str()).unwrap_or("");
    // Writing to a Vec cannot fail.
    let _ = writeln!(
        out,
        "{},{},{},{},{}",
        m.key,
        m.sensor_id,
        format_timestamp(m.timestamp),
        m.value,
        csv_field(unit)
    );
}

pub(super) fn csv_response(body: impl Into<axum::body::Body>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// Quotes a CSV field when it needs it (units are free text).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
