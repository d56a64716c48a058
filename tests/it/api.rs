//! The REST API, end to end: the real binary on a free port in a temp dir,
//! driven over HTTP. Every endpoint, every error status docs/api.md
//! lists, restarts, SIGKILL and SIGTERM.

use crate::common;

use common::service::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const T0: i64 = 1_751_738_400_000; // 2025-07-05T18:00:00Z
const MIN: i64 = 60_000;

fn service() -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    (dir, service)
}

fn reading(sensor: &str, ts_ms: i64, value: f64) -> Value {
    json!({"sensor_id": sensor, "timestamp": ts_ms as f64 / 1000.0, "value": value})
}

async fn ingest(s: &Service, body: Value) {
    let (status, answer) = s.post("/ingest", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

#[tokio::test]
async fn ingest_and_read_one_measurement() {
    let (_dir, s) = service();
    let (status, body) = s
        .post("/ingest", json!({"sensor_id": "sensor1", "timestamp": "2025-07-05T18:00:00Z", "value": 75.5, "unit": "W"}))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::CREATED, json!({"key": "sensor1:1751738400000"}))
    );
    let (status, body) = s.get("/measurement/sensor1:1751738400000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"key": "sensor1:1751738400000", "sensor_id": "sensor1",
               "timestamp": "2025-07-05T18:00:00.000Z", "value": 75.5, "unit": "W"})
    );
}

#[tokio::test]
async fn re_ingesting_the_same_reading_stores_it_once() {
    let (_dir, s) = service();
    for value in [1.0, 1.0, 2.0] {
        ingest(&s, reading("s", T0, value)).await;
    }
    let (_, list) = s.get("/measurements?sensor_id=s").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["value"], 2.0, "a later write to the same key wins");
}

#[tokio::test]
async fn a_batch_is_validated_whole_and_stores_nothing_when_one_item_is_bad() {
    let (_dir, s) = service();
    let (status, body) = s
        .post("/ingest", json!([reading("a", T0, 1.0), reading("a", T0 + 1, 2.0), {"sensor_id": "a", "value": "x"}]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "[2].value");
    let (_, list) = s.get("/measurements").await;
    assert_eq!(list, json!([]), "nothing stored");

    let (status, body) = s
        .post(
            "/ingest",
            json!([reading("a", T0, 1.0), reading("b", T0, 2.0)]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body,
        json!({"count": 2, "keys": ["a:1751738400000", "b:1751738400000"]})
    );

    let too_many: Vec<Value> = (0..10_001).map(|i| reading("c", T0 + i, 1.0)).collect();
    let (status, body) = s.post("/ingest", Value::Array(too_many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field() {
    let (_dir, s) = service();
    let cases = [
        (
            json!({"sensor_id": "s", "value": 1, "colour": "red"}),
            "colour",
        ),
        (json!({"sensor_id": "bad id", "value": 1}), "sensor_id"),
        (
            json!({"sensor_id": "s", "value": 1, "timestamp": "soon"}),
            "timestamp",
        ),
        (json!({"sensor_id": "s"}), "value"),
        (json!("text"), "reading"),
    ];
    for (body, field) in cases {
        let (status, answer) = s.post("/ingest", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let raw = s
        .http
        .post(format!("{}/ingest", s.url))
        .bearer_auth(WRITE_TOKEN)
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    for path in [
        "/measurement/nocolon",
        "/measurement/s:abc",
        "/measurements?limit=0",
        "/measurements?colour=red",
        "/measurements?from=soon",
    ] {
        assert_eq!(s.get(path).await.0, StatusCode::BAD_REQUEST, "{path}");
    }
}

#[tokio::test]
async fn tokens_and_roles() {
    let (_dir, s) = service();
    let response = s
        .http
        .get(format!("{}/measurements", s.url))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().ok()),
        Some(Some("Bearer"))
    );
    assert_eq!(
        s.call(
            Method::GET,
            "/measurements",
            Some("wrong-token-0000000000"),
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );

    let body = reading("s", T0, 1.0);
    assert_eq!(
        s.call(
            Method::POST,
            "/ingest",
            Some(READ_TOKEN),
            Some(body.clone())
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.call(Method::POST, "/ingest", Some(WRITE_TOKEN), Some(body))
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, answer) = s
        .call(Method::POST, "/fail_node/node1", Some(WRITE_TOKEN), None)
        .await;
    assert_eq!(
        (status, answer["required"].clone()),
        (StatusCode::FORBIDDEN, json!("admin"))
    );
    let configure = json!({"strategy": "full"});
    assert_eq!(
        s.call(
            Method::POST,
            "/configure_replication",
            Some(WRITE_TOKEN),
            Some(configure)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.call(Method::GET, "/nodes_status", Some(READ_TOKEN), None)
            .await
            .0,
        StatusCode::OK
    );

    for open in ["/healthz", "/metrics"] {
        assert_eq!(
            s.call(Method::GET, open, None, None).await.0,
            StatusCode::OK,
            "{open} needs no token"
        );
    }
}

#[tokio::test]
async fn unknown_things_are_404() {
    let (_dir, s) = service();
    assert_eq!(s.get("/measurement/s:1").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        s.get("/sensor/nobody/history").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.get("/no/such/endpoint").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        s.admin(Method::POST, "/fail_node/node9").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.admin(Method::POST, "/recover_node/..%2Fetc").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.admin(Method::DELETE, "/delete/s:1").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.admin(Method::DELETE, "/thresholds/s").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = s
        .call(
            Method::PUT,
            "/measurement/s:1",
            Some(WRITE_TOKEN),
            Some(json!({"value": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "max_body_bytes = 4096");
    let big: Vec<Value> = (0..200).map(|i| reading("s", T0 + i, 1.0)).collect();
    let (status, body) = s.post("/ingest", Value::Array(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["limit"], 4096);
    assert_eq!(s.get("/measurements").await.1, json!([]));
}

#[tokio::test]
async fn an_unmet_write_quorum_is_503_with_required_and_available() {
    let (_dir, s) = service();
    let (status, _) = s
        .post(
            "/configure_replication",
            json!({"strategy": "consistent", "replication_factor": 2, "write_quorum": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, replicas) = s.get("/replica_nodes/s:1751738400000").await;
    let first = replicas["nodes"][0].as_str().expect("node").to_string();
    assert_eq!(
        s.admin(Method::POST, &format!("/fail_node/{first}"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        s.admin(Method::POST, &format!("/fail_node/{first}"))
            .await
            .0,
        StatusCode::CONFLICT,
        "already down"
    );

    let (status, body) = s.post("/ingest", reading("s", T0, 1.0)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (body["required"].clone(), body["available"].clone()),
        (json!(2), json!(1))
    );

    let (status, report) = s
        .admin(Method::POST, &format!("/recover_node/{first}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["status"], "up");
    for field in ["hints_replayed", "repaired", "took_ms"] {
        assert!(report[field].is_u64(), "{field} in {report}");
    }
    ingest(&s, reading("s", T0, 1.0)).await;
}

#[tokio::test]
async fn hinted_writes_come_back_with_recovery() {
    let (_dir, s) = service();
    let (_, replicas) = s.get("/replica_nodes/s:1").await;
    let second = replicas["nodes"][1].as_str().expect("node").to_string();
    s.admin(Method::POST, &format!("/fail_node/{second}")).await;
    ingest(
        &s,
        json!([reading("s", T0, 1.0), reading("s", T0 + 1, 2.0)]),
    )
    .await;
    let (_, nodes) = s.get("/nodes_status").await;
    let line = nodes
        .as_array()
        .expect("list")
        .iter()
        .find(|n| n["id"] == second.as_str())
        .expect("node")
        .clone();
    assert_eq!(
        (line["status"].clone(), line["hints_pending"].clone()),
        (json!("down"), json!(2))
    );
    let (_, report) = s
        .admin(Method::POST, &format!("/recover_node/{second}"))
        .await;
    assert_eq!(report["hints_replayed"], 2);
    let (_, health) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn update_and_delete() {
    let (_dir, s) = service();
    ingest(
        &s,
        json!({"sensor_id": "s", "timestamp": T0 / 1000, "value": 1.0, "unit": "W"}),
    )
    .await;
    let key = format!("s:{T0}");
    let (status, body) = s
        .call(
            Method::PUT,
            &format!("/measurement/{key}"),
            Some(WRITE_TOKEN),
            Some(json!({"value": 3.5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["value"].clone(), body["unit"].clone()),
        (json!(3.5), json!("W"))
    );
    let (status, body) = s
        .call(
            Method::PUT,
            &format!("/measurement/{key}"),
            Some(WRITE_TOKEN),
            Some(json!({"valeu": 3})),
        )
        .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("valeu"))
    );

    let (status, body) = s
        .call(
            Method::DELETE,
            &format!("/delete/{key}"),
            Some(WRITE_TOKEN),
            None,
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": key})));
    assert_eq!(
        s.get(&format!("/measurement/{key}")).await.0,
        StatusCode::NOT_FOUND
    );
    ingest(&s, reading("s", T0 + 1, 1.0)).await;
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/measurement/s:{}", T0 + 1),
            Some(WRITE_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.get("/measurements").await.1, json!([]));
}

#[tokio::test]
async fn measurements_page_in_key_order() {
    let (_dir, s) = service();
    let batch: Vec<Value> = (0..25)
        .map(|i| reading(&format!("s{}", i % 5), T0 + i, i as f64))
        .collect();
    ingest(&s, Value::Array(batch)).await;
    let mut keys: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/measurements?limit=4&after={a}"),
            None => "/measurements?limit=4".to_string(),
        };
        let (_, page) = s.get(&path).await;
        let page = page.as_array().expect("list").clone();
        if page.is_empty() {
            break;
        }
        after = page
            .last()
            .and_then(|m| m["key"].as_str())
            .map(str::to_string);
        keys.extend(
            page.iter()
                .filter_map(|m| m["key"].as_str().map(str::to_string)),
        );
    }
    assert_eq!(keys.len(), 25);
    let mut sorted = keys.clone();
    sorted.sort_by_key(|k| {
        let (sensor, ts) = k.rsplit_once(':').expect("key");
        (sensor.to_string(), ts.parse::<i64>().expect("ts"))
    });
    assert_eq!(keys, sorted);
    let (_, one_sensor) = s
        .get(&format!(
            "/measurements?sensor_id=s2&from={}&to={}",
            T0 / 1000,
            (T0 + 20) as f64 / 1000.0
        ))
        .await;
    assert_eq!(
        one_sensor.as_array().map(Vec::len),
        Some(4),
        "s2 at +2, +7, +12, +17 ms"
    );
}

#[tokio::test]
async fn a_long_history_comes_whole_and_in_order_across_pages() {
    let (_dir, s) = service();
    // More than two of the pages the history is read and rendered in.
    const POINTS: i64 = 45_000;
    for first in (0..POINTS).step_by(10_000) {
        let batch: Vec<Value> = (first..(first + 10_000).min(POINTS))
            .map(|n| reading("long", T0 + n * 1_000, n as f64))
            .collect();
        ingest(&s, Value::Array(batch)).await;
    }
    let values = |answer: &Value| -> Vec<f64> {
        answer
            .as_array()
            .expect("list")
            .iter()
            .map(|m| m["value"].as_f64().expect("value"))
            .collect()
    };

    let (status, all) = s.get("/sensor/long/history").await;
    assert_eq!(status, StatusCode::OK);
    let expected: Vec<f64> = (0..POINTS).map(|n| n as f64).collect();
    assert_eq!(values(&all), expected);

    let (_, limited) = s.get("/sensor/long/history?limit=30001").await;
    assert_eq!(values(&limited), expected[..30_001].to_vec());

    let csv = s
        .http
        .get(format!(
            "{}/sensor/long/history?format=csv&limit=40000",
            s.url
        ))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 40_001, "header and 40,000 points");
    assert_eq!(
        lines[40_000],
        format!(
            "long:{},long,2025-07-06T05:06:39.000Z,39999,",
            T0 + 39_999 * 1_000
        )
    );
}

#[tokio::test]
async fn history_ranges_aggregates_and_csv() {
    let (_dir, s) = service();
    // 1,000 W for 30 minutes, then 2,000 W for 30 minutes, a reading a minute.
    let batch: Vec<Value> = (0..=60)
        .map(|m| reading("pv", T0 + m * MIN, if m < 30 { 1_000.0 } else { 2_000.0 }))
        .collect();
    ingest(&s, Value::Array(batch)).await;

    let (_, raw) = s
        .get(&format!(
            "/sensor/pv/history?from={}&to={}",
            T0 / 1000,
            (T0 + 10 * MIN) / 1000
        ))
        .await;
    assert_eq!(
        raw.as_array().map(Vec::len),
        Some(10),
        "from inclusive, to exclusive"
    );
    assert_eq!(raw[0]["timestamp"], "2025-07-05T18:00:00.000Z");

    let (_, mean) = s.get("/sensor/pv/history?every=15m&agg=mean").await;
    let values: Vec<(f64, u64)> = mean
        .as_array()
        .expect("list")
        .iter()
        .map(|b| {
            (
                b["value"].as_f64().expect("v"),
                b["count"].as_u64().expect("c"),
            )
        })
        .collect();
    assert_eq!(
        values,
        vec![
            (1_000.0, 15),
            (1_000.0, 15),
            (2_000.0, 15),
            (2_000.0, 15),
            (2_000.0, 1)
        ]
    );

    let (_, energy) = s.get("/sensor/pv/history?every=1h&agg=energy").await;
    // 29 minutes at 1 kW, the 29→30 minute ramp averaging 1.5 kW, 30 minutes at 2 kW.
    let expected = 1_000.0 * 29.0 / 60.0 + 1_500.0 / 60.0 + 2_000.0 * 30.0 / 60.0;
    let total: f64 = energy
        .as_array()
        .expect("list")
        .iter()
        .map(|b| b["value"].as_f64().expect("v"))
        .sum();
    assert!(
        (total - expected).abs() < 1e-9,
        "{total} Wh, expected {expected}"
    );

    let (_, max) = s.get("/sensor/pv/history?every=1d&agg=max").await;
    assert_eq!(max[0]["value"], 2_000.0);

    let csv = s
        .http
        .get(format!("{}/sensor/pv/history?format=csv&limit=2", s.url))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .expect("request");
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/csv")
    );
    let text = csv.text().await.expect("body");
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec![
            "key,sensor_id,timestamp,value,unit",
            "pv:1751738400000,pv,2025-07-05T18:00:00.000Z,1000,",
            "pv:1751738460000,pv,2025-07-05T18:01:00.000Z,1000,",
        ]
    );
    assert_eq!(
        s.get("/sensor/pv/history?agg=mean").await.0,
        StatusCode::BAD_REQUEST,
        "agg needs every"
    );
    assert_eq!(
        s.get("/sensor/pv/history?every=7x").await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn daily_history_in_a_time_zone_starts_at_local_midnight() {
    let (_dir, s) = service();
    // A reading an hour from 2025-03-29T12:00Z for two days: Rome moves its
    // clocks forward on the 30th, a day of 23 hours.
    let first = 1_743_249_600_000;
    let batch: Vec<Value> = (0..48)
        .map(|h| reading("meter", first + h * 60 * MIN, 1.0))
        .collect();
    ingest(&s, Value::Array(batch)).await;

    let (status, days) = s
        .get("/sensor/meter/history?every=1d&agg=count&tz=Europe/Rome")
        .await;
    assert_eq!(status, StatusCode::OK, "{days}");
    let starts_and_counts: Vec<(&str, f64)> = days
        .as_array()
        .expect("list")
        .iter()
        .map(|b| {
            (
                b["timestamp"].as_str().expect("ts"),
                b["value"].as_f64().expect("v"),
            )
        })
        .collect();
    assert_eq!(
        starts_and_counts,
        vec![
            ("2025-03-28T23:00:00.000Z", 11.0),
            ("2025-03-29T23:00:00.000Z", 23.0),
            ("2025-03-30T22:00:00.000Z", 14.0),
        ]
    );
    let (_, utc) = s.get("/sensor/meter/history?every=1d&agg=count").await;
    assert_eq!(utc[0]["timestamp"], "2025-03-29T00:00:00.000Z");

    for bad in [
        "every=1d&tz=Mars/Olympus",
        "tz=Europe/Rome",
        "every=90m&tz=Europe/Rome",
    ] {
        let (status, body) = s.get(&format!("/sensor/meter/history?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("tz") || e.contains("every")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn the_spec_alert_example_end_to_end() {
    let (_dir, s) = service();
    let (status, threshold) = s
        .post(
            "/set_threshold",
            json!({"sensor_id": "sensor1", "max": 70, "hysteresis": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(threshold["max"], 70.0);
    for (i, value) in [75.0, 80.0, 69.5].iter().enumerate() {
        ingest(&s, reading("sensor1", T0 + i as i64 * 1_000, *value)).await;
    }
    let (_, firing) = s.get("/alerts?state=firing").await;
    assert_eq!(firing.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (firing[0]["value"].clone(), firing[0]["peak"].clone()),
        (json!(75.0), json!(80.0))
    );
    ingest(&s, reading("sensor1", T0 + 3_000, 68.5)).await;
    let (_, all) = s.get("/alerts?sensor_id=sensor1").await;
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(1),
        "one episode, not one alert per reading"
    );
    let alert = &all[0];
    assert_eq!(alert["state"], "resolved");
    assert_eq!(
        (
            alert["kind"].clone(),
            alert["readings"].clone(),
            alert["peak"].clone()
        ),
        (json!("above"), json!(2), json!(80.0))
    );
    assert_eq!(alert["started_at"], "2025-07-05T18:00:00.000Z");
    assert_eq!(alert["resolved_at"], "2025-07-05T18:00:03.000Z");

    let (_, thresholds) = s.get("/thresholds").await;
    assert_eq!(thresholds[0]["sensor_id"], "sensor1");
    let (status, _) = s
        .post(
            "/set_threshold",
            json!({"sensor_id": "sensor2", "threshold": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    ingest(&s, reading("sensor2", T0, 11.0)).await;
    let (status, removed) = s.admin(Method::DELETE, "/thresholds/sensor2").await;
    assert_eq!(
        (status, removed["resolved"].clone()),
        (StatusCode::OK, json!(1)),
        "removing a threshold resolves its alert"
    );
    assert_eq!(s.get("/alerts?state=firing").await.1, json!([]));
    assert_eq!(
        s.get("/alerts?state=sideways").await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_burst_of_concurrent_out_of_range_readings_is_one_episode() {
    let (_dir, s) = service();
    s.post("/set_threshold", json!({"sensor_id": "hot", "max": 10}))
        .await;
    let requests = (0..1_000).map(|i| {
        let (client, url) = (s.http.clone(), s.url.clone());
        tokio::spawn(async move {
            let body = json!({"sensor_id": "hot", "timestamp": (T0 + i) as f64 / 1000.0, "value": 20.0 + i as f64});
            client.post(format!("{url}/ingest")).bearer_auth(WRITE_TOKEN).json(&body).send().await.map(|r| r.status())
        })
    });
    for request in futures::future::join_all(requests).await {
        assert_eq!(
            request.expect("task").expect("request"),
            StatusCode::CREATED
        );
    }
    let (_, alerts) = s.get("/alerts?sensor_id=hot").await;
    assert_eq!(
        alerts.as_array().map(Vec::len),
        Some(1),
        "one episode: {alerts}"
    );
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(alerts[0]["peak"], 1_019.0);
}

#[tokio::test]
async fn replication_can_be_read_and_changed() {
    let (_dir, s) = service();
    let (_, current) = s.get("/replication").await;
    assert_eq!(
        (
            current["strategy"].clone(),
            current["replication_factor"].clone()
        ),
        (json!("consistent"), json!(2))
    );
    ingest(
        &s,
        Value::Array(
            (0..50)
                .map(|i| reading(&format!("s{i}"), T0, 1.0))
                .collect(),
        ),
    )
    .await;

    let (status, answer) = s
        .post("/configure_replication", json!({"strategy": "full"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            answer["strategy"].clone(),
            answer["replication_factor"].clone()
        ),
        (json!("full"), json!(3))
    );
    let (_, replicas) = s.get("/replica_nodes/s1:1751738400000").await;
    assert_eq!(replicas["strategy"], "full");
    assert_eq!(replicas["nodes"].as_array().map(Vec::len), Some(3));
    for _ in 0..200 {
        let (_, nodes) = s.get("/nodes_status").await;
        if nodes
            .as_array()
            .expect("list")
            .iter()
            .all(|n| n["keys"] == 50)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, nodes) = s.get("/nodes_status").await;
    assert!(
        nodes
            .as_array()
            .expect("list")
            .iter()
            .all(|n| n["keys"] == 50),
        "every node holds everything: {nodes}"
    );

    let (status, body) = s
        .post(
            "/configure_replication",
            json!({"strategy": "consistent", "replication_factor": 9}),
        )
        .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("replication_factor"))
    );
    let (status, _) = s
        .post("/configure_replication", json!({"strategy": "rings"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (_dir, s) = service();
    ingest(&s, reading("s", T0, 1.0)).await;
    let _ = s.post("/ingest", json!({"value": 1})).await;
    let text = s.metrics_text().await;
    for needle in [
        "energyguard_readings_accepted_total{door=\"http\"} 1",
        "energyguard_readings_rejected_total{door=\"http\",reason=\"invalid\"} 1",
        "energyguard_alerts_firing{kind=\"above\"} 0",
        "energyguard_node_down_reason{node=\"node1\",reason=\"disk\"} 0",
        "energyguard_rebalance_sensors_moved 0",
        "energyguard_node_status{node=\"node1\",status=\"up\"} 1",
        "energyguard_node_hints_pending{node=\"node2\"} 0",
        "energyguard_http_request_duration_seconds_bucket",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "energyguard_build_info{version=\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // Every family says what it is and what it means; counters end in
    // `_total`, and nothing else does.
    let typed: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    assert!(typed.len() >= 10, "{text}");
    for (family, kind) in typed {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP"
        );
        assert_eq!(
            kind == "counter",
            family.ends_with("_total"),
            "{family} is a {kind}"
        );
    }
}

#[tokio::test]
async fn a_restart_keeps_data_thresholds_alerts_and_replication() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let s = Service::start_in(dir.path(), "");
        ingest(&s, reading("s", T0, 90.0)).await;
        s.post("/set_threshold", json!({"sensor_id": "s", "threshold": 70}))
            .await;
        ingest(&s, reading("s", T0 + 1_000, 95.0)).await;
        s.post(
            "/configure_replication",
            json!({"strategy": "full", "write_quorum": 2}),
        )
        .await;
        let (_, fail) = s.admin(Method::POST, "/fail_node/node3").await;
        assert_eq!(fail["status"], "down");
        assert!(s.terminate().success(), "clean exit on SIGTERM");
    }
    let s = Service::start_in(dir.path(), "");
    assert_eq!(
        s.get(&format!("/measurement/s:{T0}")).await.1["value"],
        90.0
    );
    assert_eq!(s.get("/thresholds").await.1[0]["max"], 70.0);
    let (_, replication) = s.get("/replication").await;
    assert_eq!(
        (
            replication["strategy"].clone(),
            replication["write_quorum"].clone()
        ),
        (json!("full"), json!(2))
    );
    let (_, nodes) = s.get("/nodes_status").await;
    assert_eq!(
        nodes[2]["status"], "down",
        "a failed node stays down across restarts"
    );
    // The open episode survived: a further high reading does not fire again
    // (no alert is fired by this process at all).
    ingest(&s, reading("s", T0 + 2_000, 99.0)).await;
    let (_, alerts) = s.get("/alerts").await;
    assert_eq!(alerts.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (alerts[0]["state"].clone(), alerts[0]["readings"].clone()),
        (json!("firing"), json!(2))
    );
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains("energyguard_alerts_total{transition=\"fired\"} 0\n"),
        "nothing re-fired after the restart:\n{metrics}"
    );
}

#[tokio::test]
async fn every_acknowledged_reading_survives_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let client = s.http.clone();
    let url = s.url.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..10_000i64 {
                let body = json!({"sensor_id": format!("w{w}"), "timestamp": (T0 + i) as f64 / 1000.0, "value": i});
                match client.post(format!("{url}/ingest")).bearer_auth(WRITE_TOKEN).json(&body).send().await {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let _ = tx.send(format!("w{w}:{}", T0 + i));
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acknowledged = Vec::new();
    while let Some(key) = rx.recv().await {
        acknowledged.push(key);
        if acknowledged.len() == 400 {
            break;
        }
    }
    s.kill();
    while let Some(key) = rx.recv().await {
        acknowledged.push(key);
    }
    for w in writers {
        let _ = w.await;
    }
    let s = Service::start_in(dir.path(), "");
    for key in &acknowledged {
        assert_eq!(
            s.get(&format!("/measurement/{key}")).await.0,
            StatusCode::OK,
            "{key} was acknowledged and lost"
        );
    }
    assert!(acknowledged.len() >= 400);
}

#[tokio::test]
async fn sigterm_stops_in_order() {
    let (_dir, s) = service();
    ingest(&s, reading("s", T0, 1.0)).await;
    let (status, log) = s.terminate_with_log();
    assert!(status.success(), "exit status {status}");
    let steps = [
        "SIGTERM received",
        "no new requests",
        "closing the alert store",
        "closing storage nodes",
        "shutdown complete",
    ];
    let positions: Vec<usize> = steps
        .iter()
        .map(|step| {
            log.iter()
                .position(|line| line.contains(step))
                .unwrap_or_else(|| panic!("{step:?} not logged: {log:#?}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "steps out of order: {log:#?}"
    );
}

#[tokio::test]
async fn a_silent_sensor_raises_stale_and_its_next_reading_resolves_it() {
    let (_dir, s) = service();
    let (status, threshold) = s
        .post(
            "/set_threshold",
            json!({"sensor_id": "quiet", "stale_after": "1s"}),
        )
        .await;
    assert_eq!(
        (status, threshold["stale_after"].clone()),
        (StatusCode::OK, json!("1s"))
    );
    ingest(&s, json!({"sensor_id": "quiet", "value": 1})).await;
    let mut stale = Value::Null;
    for _ in 0..100 {
        let (_, firing) = s.get("/alerts?sensor_id=quiet&state=firing").await;
        if firing.as_array().is_some_and(|a| !a.is_empty()) {
            stale = firing[0].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        (stale["kind"].clone(), stale["state"].clone()),
        (json!("stale"), json!("firing")),
        "{stale}"
    );
    ingest(&s, json!({"sensor_id": "quiet", "value": 2})).await;
    let (_, all) = s.get("/alerts?sensor_id=quiet").await;
    assert_eq!(all[0]["state"], "resolved", "{all}");
    assert_eq!(all.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn for_keeps_short_spikes_quiet_and_fires_sustained_excursions() {
    let (_dir, s) = service();
    let (status, threshold) = s
        .post(
            "/set_threshold",
            json!({"sensor_id": "f", "max": 10, "for": "30s"}),
        )
        .await;
    assert_eq!(
        (status, threshold["for"].clone()),
        (StatusCode::OK, json!("30s"))
    );
    for (offset_s, value) in [(0, 20.0), (10, 25.0), (20, 5.0)] {
        ingest(&s, reading("f", T0 + offset_s * 1_000, value)).await;
    }
    assert_eq!(
        s.get("/alerts?sensor_id=f").await.1,
        json!([]),
        "a 20 s spike with for = 30 s"
    );
    for (offset_s, value) in [(100, 20.0), (115, 30.0), (130, 20.0)] {
        ingest(&s, reading("f", T0 + offset_s * 1_000, value)).await;
    }
    let (_, alerts) = s.get("/alerts?sensor_id=f").await;
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts}");
    assert_eq!(
        (alerts[0]["peak"].clone(), alerts[0]["readings"].clone()),
        (json!(30.0), json!(3))
    );
    assert_eq!(alerts[0]["started_at"], "2025-07-05T18:01:40.000Z");
    let (status, body) = s
        .post(
            "/set_threshold",
            json!({"sensor_id": "f", "max": 10, "for": "soon"}),
        )
        .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("for"))
    );
}

#[tokio::test]
async fn a_pending_excursion_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let s = Service::start_in(dir.path(), "");
        s.post(
            "/set_threshold",
            json!({"sensor_id": "p", "max": 10, "for": "1m"}),
        )
        .await;
        ingest(&s, reading("p", T0, 20.0)).await;
        assert_eq!(
            s.get("/alerts").await.1,
            json!([]),
            "pending excursions are not alerts"
        );
        assert!(s.terminate().success());
    }
    let s = Service::start_in(dir.path(), "");
    ingest(&s, reading("p", T0 + 60_000, 25.0)).await;
    let (_, alerts) = s.get("/alerts").await;
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts}");
    assert_eq!(
        (
            alerts[0]["started_at"].clone(),
            alerts[0]["readings"].clone()
        ),
        (json!("2025-07-05T18:00:00.000Z"), json!(2))
    );
}
