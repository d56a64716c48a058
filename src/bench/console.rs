//! The console's figures: the server's time to draw a sensor's chart over a
//! day and over a year of one-minute readings (both sized for an 800 px
//! chart), and what a sensor page weighs without its chart.

use std::time::Instant;

use reqwest::Method;
use serde_json::{Value, json};

use super::BenchError;
use super::report::{Console, Parameters, median};
use super::service::ServiceProcess;

const MINUTE_MS: i64 = 60_000;
const SENSOR: &str = "console.year";
/// The chart's width in pixels, as a desk browser asks for it.
const WIDTH: u32 = 800;
/// Chart draws timed per window, after one to warm up.
const DRAWS: usize = 7;

pub async fn run(service: &ServiceProcess, p: &Parameters) -> Result<Console, BenchError> {
    let now = chrono::Utc::now().timestamp_millis();
    let first = now - (p.chart_points as i64 - 1) * MINUTE_MS;
    let readings: Vec<Value> = (0..p.chart_points as i64)
        .map(|i| {
            let value = 2_000.0 + 500.0 * (i as f64 / 30.0).sin();
            json!({"sensor_id": SENSOR, "timestamp": first + i * MINUTE_MS, "value": value, "unit": "W"})
        })
        .collect();
    service.api.ingest(&readings).await?;
    let session = service.api.console_session().await?;

    let day = format!("from={}&to={}", now - 1_440 * MINUTE_MS, now + 1);
    let all = format!("from={}&to={}", first, now + 1);
    let chart_day_ms = draw_time(service, &session, &day).await?;
    let chart_all_ms = draw_time(service, &session, &all).await?;

    let page = get_text(
        service,
        &session,
        &format!("/ui/sensors/{SENSOR}?range=24h"),
    )
    .await?;
    let chart_bytes = page
        .find("<svg class=\"chart\"")
        .and_then(|start| page[start..].find("</svg>").map(|end| end + "</svg>".len()))
        .unwrap_or(0);
    let stylesheet = get_text(service, &session, "/ui/static/console.css").await?;
    let script = get_text(service, &session, "/ui/static/console.js").await?;
    Ok(Console {
        chart_day_ms,
        chart_day_points: 1_440.min(p.chart_points),
        chart_all_ms,
        chart_all_points: p.chart_points,
        page_bytes_without_chart: page.len() - chart_bytes + stylesheet.len() + script.len(),
        chart_bytes,
    })
}

/// The median time to draw the chart over `window` (a query string).
async fn draw_time(
    service: &ServiceProcess,
    session: &str,
    window: &str,
) -> Result<f64, BenchError> {
    let path = format!("/ui/sensors/{SENSOR}/chart?{window}&w={WIDTH}");
    let mut times = Vec::with_capacity(DRAWS);
    get_text(service, session, &path).await?;
    for _ in 0..DRAWS {
        let started = Instant::now();
        get_text(service, session, &path).await?;
        times.push(started.elapsed().as_secs_f64() * 1_000.0);
    }
    Ok(median(times))
}

async fn get_text(
    service: &ServiceProcess,
    session: &str,
    path: &str,
) -> Result<String, BenchError> {
    let response = service
        .api
        .plain(Method::GET, path)
        .header("cookie", session)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        return Err(BenchError::Service(format!(
            "{path} answered {status}: {text}"
        )));
    }
    Ok(text)
}
