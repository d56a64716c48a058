//! The web console in a real browser: headless Chromium through WebDriver,
//! against the real binary on free ports. Screenshots of every page are
//! saved under the test's temporary directory (`CONSOLE_SHOTS` keeps them
//! elsewhere).

use crate::common;

use std::path::PathBuf;

use common::browser::Browser;
use common::service::{ADMIN_TOKEN, READ_TOKEN, Service, WRITE_TOKEN};
use serde_json::json;

fn shots_dir(dir: &std::path::Path) -> PathBuf {
    std::env::var_os("CONSOLE_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("shots"))
}

/// No action was taken: every node is still up.
async fn assert_all_nodes_up(service: &Service) {
    let (_, nodes) = service.get("/nodes_status").await;
    let nodes = nodes.as_array().expect("nodes");
    assert!(nodes.iter().all(|n| n["status"] == "up"), "{nodes:?}");
}

async fn sign_in(browser: &Browser, service: &Service, token: &str) {
    browser.goto(&format!("{}/ui/login", service.url)).await;
    browser.type_into("#token", token).await;
    browser.click("button[type=submit]").await;
}

#[tokio::test]
async fn sign_in_overview_and_nodes_as_admin_and_as_reader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    let (status, _) = service
        .post(
            "/ingest",
            json!([{"sensor_id": "meter1", "timestamp": 1_751_738_400, "value": 5.0}]),
        )
        .await;
    assert!(status.is_success());
    let browser = Browser::start(1280, 900, &shots_dir(dir.path())).await;

    // Any console page leads to the login form first.
    browser.goto(&format!("{}/", service.url)).await;
    browser.wait_for_path("/ui/login").await;
    browser.screenshot("login").await;
    sign_in(&browser, &service, "not-a-token-of-this-service").await;
    browser.wait_for_path("/ui/login").await;
    assert!(browser.text(".error").await.contains("not valid"));

    sign_in(&browser, &service, ADMIN_TOKEN).await;
    browser.wait_for_path("/ui/").await;
    assert_eq!(browser.text("#nodes .value").await, "3 / 3");
    assert_eq!(browser.text("#health .value").await, "ok");
    assert_eq!(browser.text("#mqtt .value").await, "consuming");
    browser.screenshot("overview").await;

    // Fail a node from the nodes page, with a confirmation, then recover it.
    browser.click("a[href='/ui/nodes']").await;
    assert_eq!(browser.text("#node-node2 .status").await, "up");
    let mut keys = 0;
    for node in ["node1", "node2", "node3"] {
        let cell = browser.text(&format!("#node-{node} td:nth-child(3)")).await;
        keys += cell.parse::<u64>().expect("a key count");
    }
    let (_, nodes) = service.get("/nodes_status").await;
    let stored: u64 = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["keys"].as_u64())
        .sum();
    assert!(keys >= 1, "the reading is on some node");
    assert_eq!(keys, stored, "the page shows what the nodes hold");
    browser.click("#node-node2 a.button").await;
    browser.wait_for_path("/ui/nodes/node2/fail").await;
    browser.click("#confirm").await;
    browser.wait_for_path("/ui/nodes").await;
    assert_eq!(browser.text("#node-node2 .status").await, "down (admin)");
    browser.screenshot("nodes").await;
    browser.click("#node-node2 a.button").await;
    browser.click("#confirm").await;
    assert_eq!(browser.text("#node-node2 .status").await, "up");

    // Nothing was loaded from anywhere but the service.
    for url in browser.loaded_urls().await {
        assert!(url.starts_with(&service.url), "{url} left the origin");
    }

    // Sign out: the pages are closed again.
    browser.click(".signout button").await;
    browser.wait_for_path("/ui/login").await;
    browser.goto(&format!("{}/ui/nodes", service.url)).await;
    browser.wait_for_path("/ui/login").await;

    // A reader sees the nodes but is offered no action, and none is taken.
    sign_in(&browser, &service, READ_TOKEN).await;
    browser.wait_for_path("/ui/").await;
    browser.goto(&format!("{}/ui/nodes", service.url)).await;
    assert!(browser.exists("#node-node2").await);
    assert!(!browser.exists("#node-node2 a.button").await);
    browser
        .goto(&format!("{}/ui/nodes/node2/fail", service.url))
        .await;
    assert!(browser.text(".error").await.contains("may not"));
    assert_all_nodes_up(&service).await;
}

const MINUTE_MS: i64 = 60_000;

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Stores `readings` (JSON objects) over HTTP, in batches.
async fn ingest(service: &Service, readings: Vec<serde_json::Value>) {
    for batch in readings.chunks(5_000) {
        let (status, body) = service.post("/ingest", json!(batch)).await;
        assert!(status.is_success(), "{body}");
    }
}

/// The last day of one-minute readings of a meter drawing 1.5 to 2.5 kW,
/// its last reading `minutes_ago`.
fn a_day_of_power(sensor: &str, minutes_ago: i64) -> Vec<serde_json::Value> {
    let end = now_ms() - minutes_ago * MINUTE_MS;
    (0..1_440)
        .map(|i| {
            let value = 2_000.0 + 500.0 * (i as f64 / 30.0).sin();
            json!({"sensor_id": sensor, "timestamp": end - (1_439 - i) * MINUTE_MS, "value": value, "unit": "W"})
        })
        .collect()
}

#[tokio::test]
async fn the_console_reads_well_at_390_pixels_wide() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    ingest(&service, a_day_of_power("meter.main", 0)).await;
    let (status, _) = service
        .post(
            "/set_threshold",
            json!({"sensor_id": "meter.main", "max": 2_400}),
        )
        .await;
    assert!(status.is_success());
    let browser = Browser::start(390, 844, &shots_dir(dir.path())).await;
    sign_in(&browser, &service, ADMIN_TOKEN).await;
    browser.wait_for_path("/ui/").await;
    assert_eq!(browser.viewport_width().await, 390);
    for (page, name) in [
        ("/ui/", "overview-390"),
        ("/ui/sensors", "sensors-390"),
        ("/ui/sensors/meter.main", "sensor-390"),
        ("/ui/alerts", "alerts-390"),
        ("/ui/nodes", "nodes-390"),
    ] {
        browser.goto(&format!("{}{page}", service.url)).await;
        browser.wait_for_text("#live-status", |s| s == "live").await;
        assert!(
            !browser.scrolls_sideways().await,
            "{page} scrolls sideways at 390 px"
        );
        browser.screenshot(name).await;
        if page == "/ui/sensors/meter.main" {
            // The chart is drawn again for the phone's width.
            let js = "const svg = document.querySelector('#chart svg'); \
                      return svg ? Number(svg.getAttribute('width')) : null;";
            let drawn_for_phone =
                || async { browser.script(js).await.as_f64().is_some_and(|w| w < 400.0) };
            common::wait_until(std::time::Duration::from_secs(15), drawn_for_phone).await;
        }
    }
}

/// The start of the local day `days_back` days before today in `zone`.
fn local_midnight(zone: &str, days_back: i64) -> i64 {
    let zone = jiff::tz::TimeZone::get(zone).expect("a zone");
    let today = jiff::Timestamp::now().to_zoned(zone.clone()).date();
    let day = today
        .checked_sub(jiff::Span::new().days(days_back))
        .expect("a date");
    day.to_zoned(zone)
        .expect("a midnight")
        .timestamp()
        .as_millisecond()
}

#[tokio::test]
async fn sensors_a_sensors_chart_and_alerts_show_what_was_ingested_and_follow_it_live() {
    const ZONE: &str = "Europe/Rome";
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    // A meter, a temperature, sixty small sensors (more than a page), and a
    // constant 1 kW load over the two last whole local days in Rome.
    ingest(&service, a_day_of_power("meter.main", 1)).await;
    let mut others = vec![
        json!({"sensor_id": "boiler.temp", "timestamp": now_ms(), "value": 61.5, "unit": "°C"}),
    ];
    others
        .extend((0..60).map(
            |i| json!({"sensor_id": format!("zz.{i:02}"), "timestamp": now_ms(), "value": i}),
        ));
    let from = local_midnight(ZONE, 2);
    let to = local_midnight(ZONE, 0);
    others.extend(
        (0..)
            .map(|i| from + i * MINUTE_MS)
            .take_while(|t| *t <= to)
            .map(|t| json!({"sensor_id": "load", "timestamp": t, "value": 1_000.0, "unit": "W"})),
    );
    ingest(&service, others).await;
    let (status, _) = service
        .post(
            "/set_threshold",
            json!({"sensor_id": "meter.main", "max": 3_000}),
        )
        .await;
    assert!(status.is_success());

    let browser = Browser::start_in_zone(1280, 900, &shots_dir(dir.path()), ZONE).await;
    sign_in(&browser, &service, WRITE_TOKEN).await;
    browser.wait_for_path("/ui/").await;
    // The page is written in the browser's zone.
    browser
        .wait_for_text("main .footnote:last-child", |t| t.contains(ZONE))
        .await;

    // The list: last values with units, searched and paged on the server.
    browser.goto(&format!("{}/ui/sensors", service.url)).await;
    let boiler = browser.text("tr[data-sensor='boiler.temp']").await;
    assert!(boiler.contains("61.5 °C"), "{boiler}");
    let meter = browser.text("tr[data-sensor='meter.main']").await;
    assert!(meter.contains(" W"), "{meter}");
    browser.screenshot("sensors").await;
    assert!(!browser.exists("tr[data-sensor='zz.59']").await, "paged");
    browser.click("#next-page").await;
    browser
        .wait_for_text("#sensor-table caption", |t| t.contains("continued"))
        .await;
    assert!(browser.exists("tr[data-sensor='zz.59']").await);
    browser.type_into("#q", "BOIL").await;
    browser.click(".search button").await;
    browser.wait_for_text("h1", |t| t.contains("BOIL")).await;
    let rows = browser
        .script("return document.querySelectorAll('#sensor-table tbody tr').length;")
        .await;
    assert_eq!(rows, json!(1));

    // A sensor: a chart with its title and description, daily energy bars
    // cut at the viewer's local midnight, a CSV link.
    browser
        .goto(&format!("{}/ui/sensors/load?range=7d", service.url))
        .await;
    let title = browser
        .script("return document.querySelector('#chart svg title').textContent;")
        .await;
    assert!(
        title.as_str().is_some_and(|t| t.starts_with("load")),
        "{title}"
    );
    let described = browser
        .script("return document.querySelector('#chart svg desc').textContent;")
        .await;
    assert!(
        described.as_str().is_some_and(|d| d.contains("1000 W")),
        "{described}"
    );
    let bars = browser
        .script("return [...document.querySelectorAll('#daily rect.bar title')].map(t => t.textContent);")
        .await;
    let whole_days = bars
        .as_array()
        .expect("bar titles")
        .iter()
        .filter(|t| t.as_str().is_some_and(|t| t.ends_with(": 24 kWh")))
        .count();
    assert_eq!(
        whole_days, 2,
        "two local days of 1 kW are 24 kWh each: {bars}"
    );
    let csv = browser
        .script("return document.querySelector('#csv').getAttribute('href');")
        .await;
    assert!(
        csv.as_str()
            .is_some_and(|h| h.starts_with("/ui/sensors/load/export.csv?")),
        "{csv}"
    );
    browser.screenshot("sensor-load").await;

    // A value posted over HTTP appears on the open page without a reload.
    browser
        .goto(&format!("{}/ui/sensors/meter.main", service.url))
        .await;
    browser.wait_for_text("#live-status", |s| s == "live").await;
    browser.mark_page().await;
    ingest(&service, vec![json!({"sensor_id": "meter.main", "timestamp": now_ms(), "value": 1_234.5, "unit": "W"})]).await;
    browser
        .wait_for_text("#now .value .value", |v| v == "1234.5")
        .await;
    assert!(
        browser.still_the_same_page().await,
        "the page was loaded again"
    );

    // The threshold, edited by the write role, is drawn on the chart.
    browser.click("details.edit summary").await;
    let max = browser
        .client
        .find(fantoccini::Locator::Css("#threshold-form input[name=max]"))
        .await
        .expect("max field");
    max.clear().await.expect("clear");
    max.send_keys("2600").await.expect("type");
    browser.click("#threshold-form button").await;
    browser
        .wait_for_text("#threshold", |t| t.contains("2600"))
        .await;
    let limits = browser.text("#chart svg .limits").await;
    assert!(limits.contains("max 2600 W"), "{limits}");
    browser.screenshot("sensor").await;

    // An alert appears on the open overview without a reload, and is listed
    // on the alerts page, linked to its sensor.
    browser.goto(&format!("{}/ui/", service.url)).await;
    browser.wait_for_text("#live-status", |s| s == "live").await;
    assert_eq!(browser.text("#firing .value").await, "0");
    browser.mark_page().await;
    ingest(&service, vec![json!({"sensor_id": "meter.main", "timestamp": now_ms(), "value": 2_900.0, "unit": "W"})]).await;
    browser.wait_for_text("#firing .value", |v| v == "1").await;
    browser
        .wait_for_text("#firing-list", |t| t.contains("meter.main"))
        .await;
    assert!(
        browser.still_the_same_page().await,
        "the page was loaded again"
    );
    browser.screenshot("overview-firing").await;
    browser.goto(&format!("{}/ui/alerts", service.url)).await;
    assert!(
        browser
            .exists("#firing-table a[href='/ui/sensors/meter.main']")
            .await
    );
    browser.screenshot("alerts").await;

    for url in browser.loaded_urls().await {
        assert!(url.starts_with(&service.url), "{url} left the origin");
    }
}

#[tokio::test]
async fn a_reader_is_offered_no_threshold_form_and_its_posts_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    ingest(&service, a_day_of_power("meter.main", 0)).await;
    let browser = Browser::start(1280, 900, &shots_dir(dir.path())).await;
    sign_in(&browser, &service, READ_TOKEN).await;
    browser.wait_for_path("/ui/").await;
    browser
        .goto(&format!("{}/ui/sensors/meter.main", service.url))
        .await;
    assert!(browser.exists("#chart svg").await);
    assert!(!browser.exists("#threshold-form").await);
    // Posted anyway, from the page's own origin: refused, nothing set.
    let posted = browser
        .script(
            "return fetch('/ui/sensors/meter.main/threshold', {method: 'POST', \
             headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'max=1'}) \
             .then(r => r.status);",
        )
        .await;
    assert_eq!(posted, json!(403));
    let (_, thresholds) = service.get("/thresholds").await;
    assert_eq!(thresholds, json!([]));
}

#[tokio::test]
async fn actions_from_another_origin_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let login = |origin: &'static str| {
        http.post(format!("{}/ui/login", service.url))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={ADMIN_TOKEN}"))
            .send()
    };
    let refused = login("http://evil.example").await.expect("request");
    assert_eq!(refused.status(), 403);
    let origin: &'static str = Box::leak(service.url.clone().into_boxed_str());
    let signed_in = login(origin).await.expect("request");
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    for part in ["HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let session = cookie.split(';').next().expect("pair").to_string();
    let csp = signed_in.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");

    // With the session but from elsewhere: nothing happens.
    let forged = http
        .post(format!("{}/ui/nodes/node2/fail", service.url))
        .header("cookie", &session)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("request");
    assert_eq!(forged.status(), 403);
    assert_all_nodes_up(&service).await;
}

#[tokio::test]
async fn live_snapshots_event_streams_and_csv_exports_need_a_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    ingest(&service, a_day_of_power("meter.main", 0)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let get = |path: &str, cookie: Option<&str>| {
        let request = http.get(format!("{}{path}", service.url));
        match cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        }
        .send()
    };
    for path in [
        "/ui/live",
        "/ui/events",
        "/ui/sensors/meter.main/export.csv",
    ] {
        let refused = get(path, None).await.expect("request");
        assert_eq!(refused.status(), 303, "{path} without a session");
    }
    let session = service.console_session(READ_TOKEN).await;

    // The snapshot polling pages read: the watched sensor's last value,
    // the nodes, what is firing.
    let live: serde_json::Value = get("/ui/live?sensors=meter.main,not-a-sensor", Some(&session))
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(live["nodes_up"], 3);
    assert_eq!(live["firing_total"], 0);
    assert_eq!(live["sensors"]["meter.main"]["unit"], "W");
    assert!(live["sensors"].get("not-a-sensor").is_none());

    // The event stream sends the same snapshot.
    let mut events = get("/ui/events?sensors=meter.main", Some(&session))
        .await
        .expect("request");
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut received = String::new();
    while !received.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), events.chunk())
            .await
            .expect("an event within 10 s")
            .expect("a chunk")
            .expect("the stream goes on");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = received
        .lines()
        .find_map(|line| line.strip_prefix("data:"))
        .expect("a data line");
    let event: serde_json::Value = serde_json::from_str(data.trim()).expect("json");
    assert_eq!(event["sensors"]["meter.main"]["unit"], "W");

    // The CSV export holds the window's raw readings.
    let csv = get(
        "/ui/sensors/meter.main/export.csv?range=24h",
        Some(&session),
    )
    .await
    .expect("request");
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("meter.main.csv")
    );
    let csv = csv.text().await.expect("text");
    let rows = csv.lines().count() - 1;
    assert!((1_439..=1_440).contains(&rows), "{rows} rows");
}

#[tokio::test]
async fn a_page_polls_while_it_cannot_hold_a_stream_and_goes_live_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    ingest(&service, a_day_of_power("meter.main", 0)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let session = service.console_session(READ_TOKEN).await;
    // Every stream the service allows is taken.
    let mut streams = Vec::new();
    loop {
        let stream = http
            .get(format!("{}/ui/events", service.url))
            .header("cookie", &session)
            .send()
            .await
            .expect("request");
        if stream.status() == 503 {
            break;
        }
        assert_eq!(stream.status(), 200);
        streams.push(stream);
        assert!(streams.len() <= 1_000, "the streams are bounded");
    }

    let browser = Browser::start(1280, 900, &shots_dir(dir.path())).await;
    sign_in(&browser, &service, READ_TOKEN).await;
    browser.wait_for_path("/ui/").await;
    browser
        .goto(&format!("{}/ui/sensors/meter.main", service.url))
        .await;
    browser
        .wait_for_text("#live-status", |s| s == "polling")
        .await;
    browser.mark_page().await;
    ingest(
        &service,
        vec![json!({"sensor_id": "meter.main", "timestamp": now_ms(), "value": 4_321.0, "unit": "W"})],
    )
    .await;
    browser
        .wait_for_text("#now .value .value", |v| v == "4321")
        .await;

    // Streams free again: the page goes back to live by itself.
    drop(streams);
    let live = || async { browser.text("#live-status").await == "live" };
    common::wait_until(std::time::Duration::from_secs(30), live).await;
    assert!(
        browser.still_the_same_page().await,
        "the page was loaded again"
    );
}
