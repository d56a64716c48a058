//! The measurements, each against a running [`ServiceProcess`]: a warm-up,
//! then `repetitions` runs whose median is reported. Every run writes keys
//! of its own, so no measurement is of an idempotent no-op.

use std::sync::Arc;
use std::time::Instant;

use reqwest::Method;
use serde_json::Value;

use super::BenchError;
use super::load::{LoadRun, Publisher, RequestFactory, Subscriber, http_load, millis};
use super::report::{Fail, Parameters, Read, Rebalance, Recovery, Write, median};
use super::service::{Api, FIRST_SECOND, ServiceProcess, reading};

/// The node failed and recovered by the fail and recover workloads.
const VICTIM: &str = "node2";
/// Seconds in a day: the history workload's range.
const DAY: usize = 86_400;

/// `POST /ingest` of one reading per request, sensor `prefix<n % sensors>`,
/// readings numbered from `first`.
fn single_ingest(api: &Api, prefix: &str, first: usize, sensors: usize) -> RequestFactory {
    let (api, prefix) = (api.clone(), prefix.to_string());
    Arc::new(move |i| {
        let n = first + i;
        let body = reading(&format!("{prefix}{}", n % sensors), n);
        api.request(Method::POST, "/ingest").json(&body)
    })
}

/// The key of reading `n` of sensor `prefix<n % sensors>`.
fn key_of(prefix: &str, n: usize, sensors: usize) -> String {
    format!(
        "{prefix}{}:{}",
        n % sensors,
        (FIRST_SECOND + n as i64) * 1000
    )
}

/// Latency at one client, then throughput at many, for `request`s
/// numbered so that every run gets fresh ones.
async fn latency_and_rate(
    p: &Parameters,
    request: impl Fn(usize) -> RequestFactory,
) -> Result<(LoadRun, f64), BenchError> {
    http_load(p.requests / 10, p.http_concurrency, request(0)).await?;
    let mut offset = p.requests / 10;
    let mut latency = http_load(p.latency_requests, 1, request(offset)).await?;
    offset += p.latency_requests;
    let mut rates = Vec::new();
    for _ in 0..p.repetitions {
        rates.push(
            http_load(p.requests, p.http_concurrency, request(offset))
                .await?
                .per_second(1),
        );
        offset += p.requests;
    }
    latency.latencies.sort_unstable();
    Ok((latency, median(rates)))
}

/// Readings numbered so far by the single-ingest workload (its keys are the
/// point-read workload's).
fn single_written(p: &Parameters) -> usize {
    p.requests / 10 + p.latency_requests + p.requests * p.repetitions
}

pub async fn write(service: &ServiceProcess, p: &Parameters) -> Result<Write, BenchError> {
    let (latency, http_single_per_s) = latency_and_rate(p, |first| {
        single_ingest(&service.api, "single", first, p.sensors)
    })
    .await?;
    Ok(Write {
        http_single_p50_ms: latency.quantile_ms(0.5),
        http_single_p99_ms: latency.quantile_ms(0.99),
        http_single_mean_ms: latency.mean_ms(),
        http_single_per_s,
        http_batch_readings_per_s: batch_rate(service, p).await?,
        mqtt_readings_per_s: mqtt_rate(service, p, 1).await?,
        mqtt_10_per_message_readings_per_s: mqtt_rate(service, p, 10).await?,
    })
}

/// Runs `measure` once as a warm-up (told so with `true`), then
/// `p.repetitions` times, and answers the median of the measured figures.
async fn median_after_warm_up(
    p: &Parameters,
    mut measure: impl AsyncFnMut(bool) -> Result<f64, BenchError>,
) -> Result<f64, BenchError> {
    measure(true).await?;
    let mut figures = Vec::with_capacity(p.repetitions);
    for _ in 0..p.repetitions {
        figures.push(measure(false).await?);
    }
    Ok(median(figures))
}

/// `POST /ingest` with `batch_size` readings per request, `batch_concurrency`
/// in flight.
pub async fn batch_rate(service: &ServiceProcess, p: &Parameters) -> Result<f64, BenchError> {
    let mut first = 0;
    median_after_warm_up(p, async |_| {
        let bodies: Arc<Vec<String>> = Arc::new(
            (first..first + p.batch_readings)
                .map(|n| reading(&format!("batch{}", n % p.sensors), n))
                .collect::<Vec<Value>>()
                .chunks(p.batch_size)
                .map(|chunk| Value::from(chunk.to_vec()).to_string())
                .collect(),
        );
        first += p.batch_readings;
        let (api, all) = (service.api.clone(), bodies.clone());
        let factory: RequestFactory = Arc::new(move |i| {
            api.request(Method::POST, "/ingest")
                .header("content-type", "application/json")
                .body(all[i].clone())
        });
        let run = http_load(bodies.len(), p.batch_concurrency, factory).await?;
        Ok(p.batch_readings as f64 / run.elapsed.as_secs_f64())
    })
    .await
}

/// MQTT message `n`: readings `n * per_message ..` of one sensor (named in
/// the topic), a JSON object for one reading, an array for more.
fn mqtt_message(n: usize, sensors: usize, per_message: usize) -> (String, String) {
    let object = |i: usize| {
        format!(
            r#"{{"timestamp":{},"value":{}}}"#,
            FIRST_SECOND + i as i64,
            i as f64 * 0.5
        )
    };
    let first = n * per_message;
    let payload = if per_message == 1 {
        object(first)
    } else {
        let items: Vec<String> = (first..first + per_message).map(object).collect();
        format!("[{}]", items.join(","))
    };
    (format!("energyguard/readings/mqtt{}", n % sensors), payload)
}

/// Readings per second from the first QoS 1 publish until every reading is
/// stored, with `per_message` readings in each message.
pub async fn mqtt_rate(
    service: &ServiceProcess,
    p: &Parameters,
    per_message: usize,
) -> Result<f64, BenchError> {
    let client_id = format!("bench-readings-{per_message}");
    let mut publisher = Publisher::connect(service.mqtt_port, &client_id).await?;
    // Message numbers already used, so that every run stores new keys.
    let mut first = 1_000_000 * per_message;
    median_after_warm_up(p, async |warm_up| {
        let readings = if warm_up { p.readings / 10 } else { p.readings };
        let messages = readings / per_message;
        let before = service.api.accepted().await?;
        let started = Instant::now();
        publisher
            .publish_all(messages, |i| {
                mqtt_message(first + i, p.sensors, per_message)
            })
            .await?;
        service
            .api
            .wait_accepted(before + (messages * per_message) as u64)
            .await?;
        first += messages;
        Ok((messages * per_message) as f64 / started.elapsed().as_secs_f64())
    })
    .await
}

/// A broker alone: QoS 1 from a publisher to a subscriber, the same
/// clients and message size as [`mqtt_rate`], on topics EnergyGuard does
/// not consume.
pub async fn broker_raw_rate(port: u16, p: &Parameters) -> Result<f64, BenchError> {
    let mut subscriber = Subscriber::subscribe(port, "bench-raw-sub", "bench/raw/+").await?;
    let mut publisher = Publisher::connect(port, "bench-raw-pub").await?;
    median_after_warm_up(p, async |warm_up| {
        let count = if warm_up { p.readings / 10 } else { p.readings };
        let started = Instant::now();
        let publishing = publisher.publish_all(count, |n| {
            let (topic, payload) = mqtt_message(n, p.sensors, 1);
            (
                topic.replace("energyguard/readings/", "bench/raw/"),
                payload,
            )
        });
        let (published, received) = tokio::join!(publishing, subscriber.receive(count));
        published?;
        received?;
        Ok(count as f64 / started.elapsed().as_secs_f64())
    })
    .await
}

pub async fn read(service: &ServiceProcess, p: &Parameters) -> Result<Read, BenchError> {
    let written = single_written(p);
    let (latency, point_per_s) = latency_and_rate(p, |first| {
        let (api, sensors) = (service.api.clone(), p.sensors);
        Arc::new(move |i| {
            let key = key_of("single", (first + i) % written, sensors);
            api.request(Method::GET, &format!("/measurement/{key}"))
        })
    })
    .await?;
    let history: Vec<Value> = (0..p.history_points)
        .map(|n| reading("history", n))
        .collect();
    service.api.ingest(&history).await?;
    let day = format!(
        "/sensor/history/history?from={}&to={}&limit=1000000",
        FIRST_SECOND,
        FIRST_SECOND + DAY.min(p.history_points) as i64
    );
    let (history_day_ms, history_day_points) = history_time(&service.api, &day, p).await?;
    let (history_all_ms, history_all_points) =
        history_time(&service.api, "/sensor/history/history?limit=1000000", p).await?;
    Ok(Read {
        point_p50_ms: latency.quantile_ms(0.5),
        point_p99_ms: latency.quantile_ms(0.99),
        point_mean_ms: latency.mean_ms(),
        point_per_s,
        history_day_ms,
        history_day_points,
        history_all_ms,
        history_all_points,
    })
}

/// The median time until the whole answer to `path` arrived, and how many
/// points it held.
async fn history_time(api: &Api, path: &str, p: &Parameters) -> Result<(f64, usize), BenchError> {
    let mut points = 0;
    let time = median_after_warm_up(p, async |_| {
        let started = Instant::now();
        let body = api.request(Method::GET, path).send().await?.bytes().await?;
        let elapsed = millis(started.elapsed());
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| BenchError::Service(format!("{path}: not JSON: {e}")))?;
        points = answer.as_array().map_or(0, Vec::len);
        Ok(elapsed)
    })
    .await?;
    Ok((time, points))
}

/// `POST /fail_node` until the node is out; recovered (untimed) after each.
pub async fn fail(service: &ServiceProcess, p: &Parameters) -> Result<Fail, BenchError> {
    let mut times = Vec::new();
    for _ in 0..p.repetitions {
        let started = Instant::now();
        service
            .api
            .call(Method::POST, &format!("/fail_node/{VICTIM}"), None)
            .await?;
        times.push(millis(started.elapsed()));
        let nodes = service.api.call(Method::GET, "/nodes_status", None).await?;
        let down = nodes
            .as_array()
            .into_iter()
            .flatten()
            .any(|node| node["id"] == VICTIM && node["status"] == "down");
        if !down {
            return Err(BenchError::Service(format!(
                "{VICTIM} is not down after fail_node: {nodes}"
            )));
        }
        service
            .api
            .call(Method::POST, &format!("/recover_node/{VICTIM}"), None)
            .await?;
    }
    Ok(Fail {
        fail_node_ms: median(times),
    })
}

/// For outages of a quarter, half and all of `readings`: fail the node,
/// write while it is down, time its recovery.
pub async fn recover(
    service: &ServiceProcess,
    p: &Parameters,
) -> Result<Vec<Recovery>, BenchError> {
    let mut recoveries = Vec::new();
    let mut first = 0;
    for written in [p.readings / 4, p.readings / 2, p.readings] {
        service
            .api
            .call(Method::POST, &format!("/fail_node/{VICTIM}"), None)
            .await?;
        let missed: Vec<Value> = (first..first + written)
            .map(|n| reading(&format!("recover{}", n % p.sensors), n))
            .collect();
        service.api.ingest(&missed).await?;
        first += written;
        let started = Instant::now();
        let report = service
            .api
            .call(Method::POST, &format!("/recover_node/{VICTIM}"), None)
            .await?;
        let ms = millis(started.elapsed());
        let missed = report["hints_replayed"].as_u64().unwrap_or(0)
            + report["repaired"].as_u64().unwrap_or(0);
        recoveries.push(Recovery {
            written,
            missed,
            ms,
            keys_per_s: missed as f64 / (ms / 1e3),
        });
    }
    Ok(recoveries)
}

/// Stores `readings` under `consistent` RF 1, switches to `full` and times
/// the move until it finished; back to RF 1 between repetitions.
pub async fn rebalance(service: &ServiceProcess, p: &Parameters) -> Result<Rebalance, BenchError> {
    let stored: Vec<Value> = (0..p.readings)
        .map(|n| reading(&format!("move{}", n % p.sensors), n))
        .collect();
    service.api.ingest(&stored).await?;
    let single = serde_json::json!({"strategy": "consistent", "replication_factor": 1});
    let full = serde_json::json!({"strategy": "full"});
    let mut times = Vec::new();
    for _ in 0..p.repetitions {
        let started = Instant::now();
        service
            .api
            .call(Method::POST, "/configure_replication", Some(full.clone()))
            .await?;
        service.api.wait_rebalanced().await?;
        times.push(millis(started.elapsed()));
        service
            .api
            .call(Method::POST, "/configure_replication", Some(single.clone()))
            .await?;
        service.api.wait_rebalanced().await?;
    }
    let ms = median(times);
    Ok(Rebalance {
        readings: p.readings,
        ms,
        readings_per_s: p.readings as f64 / (ms / 1e3),
    })
}
