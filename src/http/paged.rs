//! Long answers (a sensor's raw history, up to a million points) read and
//! rendered page by page: while one page is rendered to JSON or CSV on a
//! blocking thread, the next is read from storage on another, so a long
//! read keeps both halves of its work (SQLite, serialization) going at once
//! instead of one after the other.

use std::sync::Arc;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::error::ApiError;
use crate::reading::{Measurement, format_timestamp};
use crate::replication::Replicator;
use crate::storage::{Pages, Record, Scan};

/// Points read and rendered per step.
const PAGE: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Csv,
}

/// The live measurements in `range`, at most `limit`, as a JSON array of
/// measurement objects or as CSV with a header line, streamed: the answer
/// holds two pages in memory at most, however long it is. A failure before
/// the first page is an error answer; one after it ends the body early.
pub(crate) async fn measurements(
    replicator: Arc<Replicator>,
    range: Scan,
    limit: usize,
    format: Format,
) -> Result<Response, ApiError> {
    let mut pages = Pages::new(Scan { limit, ..range }, PAGE);
    let first_page = match pages.request() {
        Some(request) => replicator.scan(request).await?,
        None => Vec::new(),
    };
    pages.advance(&first_page);
    let (sender, body) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tokio::spawn(stream_pages(replicator, pages, format, first_page, sender));
    let body = Body::from_stream(futures::stream::unfold(body, |mut body| async {
        body.recv().await.map(|page| (page, body))
    }));
    Ok(match format {
        Format::Json => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Format::Csv => csv_response(body),
    })
}

/// Renders page after page into `sender`, each on a blocking thread while
/// the next is read, until `pages` is complete.
async fn stream_pages(
    replicator: Arc<Replicator>,
    mut pages: Pages,
    format: Format,
    first_page: Vec<Record>,
    sender: mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let opening = match format {
        Format::Json => b"[".to_vec(),
        Format::Csv => b"key,sensor_id,timestamp,value,unit\n".to_vec(),
    };
    if sender.send(Ok(opening)).await.is_err() {
        return;
    }
    let fail = |error: ApiError| Err(std::io::Error::other(format!("{error:?}")));
    let mut page = first_page;
    let mut rendered_points = 0;
    loop {
        let first = rendered_points == 0;
        let rendering = tokio::task::spawn_blocking(move || render(page, format, first));
        let next = match pages.request() {
            Some(request) => Some(replicator.scan(request).await),
            None => None,
        };
        match rendered_page(rendering).await {
            Ok((bytes, points)) => {
                rendered_points += points;
                if sender.send(Ok(bytes)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = sender.send(fail(error)).await;
                return;
            }
        }
        match next {
            Some(Ok(next)) => {
                pages.advance(&next);
                page = next;
            }
            None => break,
            Some(Err(error)) => {
                let _ = sender.send(fail(error.into())).await;
                return;
            }
        }
    }
    if format == Format::Json {
        let _ = sender.send(Ok(b"]".to_vec())).await;
    }
}

async fn rendered_page(
    task: tokio::task::JoinHandle<Result<(Vec<u8>, usize), String>>,
) -> Result<(Vec<u8>, usize), ApiError> {
    task.await
        .map_err(|e| ApiError::Internal(format!("rendering a page: {e}")))?
        .map_err(ApiError::Internal)
}

/// One page of records as JSON objects (comma-separated, a leading comma
/// unless `first`: no point was rendered before) or as CSV lines, and how
/// many points it held (tombstones are left out).
fn render(page: Vec<Record>, format: Format, first: bool) -> Result<(Vec<u8>, usize), String> {
    let mut out = Vec::with_capacity(page.len() * 128);
    let points = page.into_iter().filter_map(|record| {
        let key = record.key;
        record.sample.map(|sample| Measurement::new(key, sample))
    });
    let mut count = 0;
    for (i, point) in points.enumerate() {
        count += 1;
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
    Ok((out, count))
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

pub(crate) fn csv_response(body: impl Into<axum::body::Body>) -> Response {
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
