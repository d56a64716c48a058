//! The web console in a real browser: headless Chromium through WebDriver,
//! against the real binary on free ports. Screenshots of every page are
//! saved under the test's temporary directory (`CONSOLE_SHOTS` keeps them
//! elsewhere).

mod common;

use std::path::PathBuf;

use common::browser::Browser;
use common::service::{ADMIN_TOKEN, READ_TOKEN, Service};
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

#[tokio::test]
async fn the_console_reads_well_at_390_pixels_wide() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = Service::start_in(dir.path(), "");
    let browser = Browser::start(390, 844, &shots_dir(dir.path())).await;
    sign_in(&browser, &service, ADMIN_TOKEN).await;
    browser.wait_for_path("/ui/").await;
    assert_eq!(browser.viewport_width().await, 390);
    for (page, name) in [("/ui/", "overview-390"), ("/ui/nodes", "nodes-390")] {
        browser.goto(&format!("{}{page}", service.url)).await;
        assert!(
            !browser.scrolls_sideways().await,
            "{page} scrolls sideways at 390 px"
        );
        browser.screenshot(name).await;
    }
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
