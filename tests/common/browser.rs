//! A headless Chromium driven through WebDriver (`chromedriver`, started on
//! a free port, killed on drop) for the console's browser tests.
//!
//! The browser is required: without `chromium` and `chromium-driver`
//! (Debian's packages; `.ci/run` installs them) the tests fail, saying so.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use super::service::free_port;
use super::wait_until;

const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long an element or a navigation is waited for.
const WAIT: Duration = Duration::from_secs(15);

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Where screenshots go.
    pub shots: PathBuf,
}

impl Browser {
    /// A browser window `width` × `height` CSS pixels in UTC, saving
    /// screenshots under `shots`.
    pub async fn start(width: u32, height: u32, shots: &Path) -> Self {
        Self::start_in_zone(width, height, shots, "UTC").await
    }

    /// Like [`Self::start`], with the browser's clock in time `zone`.
    pub async fn start_in_zone(width: u32, height: u32, shots: &Path, zone: &str) -> Self {
        let port = free_port();
        // In a process group of its own, so that dropping the browser ends
        // chromium too, whatever state the test left the session in.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("TZ", zone)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {CHROMEDRIVER} ({e}): install Debian's chromium and chromium-driver"
                )
            });
        let url = format!("http://127.0.0.1:{port}");
        wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        let mut options = serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--hide-scrollbars",
                format!("--window-size={width},{height}"),
            ],
        });
        // A window is at least 500 pixels wide: narrower is a phone's
        // viewport, emulated.
        if width < 500 {
            options["mobileEmulation"] = serde_json::json!({
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0},
            });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a chromium session through chromedriver");
        std::fs::create_dir_all(shots).expect("screenshot directory");
        Self {
            client,
            driver,
            shots: shots.to_path_buf(),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The first element `css` selects, waiting up to [`WAIT`] for it.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    /// The text of the first element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        self.on_element(css, |e| async move { e.text().await })
            .await
    }

    /// Runs `act` on what `css` selects. A live page may swap the element
    /// for a fresh copy between finding and acting on it: then it is found
    /// again.
    async fn on_element<T, F>(
        &self,
        css: &str,
        act: impl Fn(fantoccini::elements::Element) -> F,
    ) -> T
    where
        F: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match act(self.element(css).await).await {
                Ok(done) => return done,
                Err(e)
                    if e.is_stale_element_reference() && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{css} on {}: {e}", self.path().await),
            }
        }
    }

    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, |e| async move { e.click().await })
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.element(css).await.send_keys(text).await.expect("type");
    }

    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_string()
    }

    /// Waits until the browser shows `path`: a click's navigation can end
    /// after the click is answered.
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        while self.path().await != path {
            assert!(
                std::time::Instant::now() < deadline,
                "still on {} instead of {path}",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.element("body").await;
    }

    /// Waits until the text of what `css` selects satisfies `test`;
    /// answers the text.
    pub async fn wait_for_text(&self, css: &str, test: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
                && test(&text)
            {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{css} on {} never showed what was waited for",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks the page now shown, so [`Self::still_the_same_page`] can
    /// tell that it was not loaded again since.
    pub async fn mark_page(&self) {
        self.script("window.egMarked = true; return true;").await;
    }

    pub async fn still_the_same_page(&self) -> bool {
        self.script("return window.egMarked === true;").await == serde_json::json!(true)
    }

    /// What `js` (a function body) returns, run in the page.
    pub async fn script(&self, js: &str) -> serde_json::Value {
        self.client.execute(js, vec![]).await.expect("script")
    }

    /// The viewport's width in CSS pixels.
    pub async fn viewport_width(&self) -> u64 {
        let width = self.script("return window.innerWidth;").await;
        width.as_u64().expect("a width")
    }

    /// Whether the page is wider than the window (a horizontal scroll).
    pub async fn scrolls_sideways(&self) -> bool {
        let js = "return document.documentElement.scrollWidth > window.innerWidth;";
        self.script(js).await.as_bool().expect("a boolean")
    }

    /// Every resource the page loaded, as the browser's performance
    /// entries name them, plus the page itself.
    pub async fn loaded_urls(&self) -> Vec<String> {
        let js = "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));";
        let urls = self.script(js).await;
        let urls = urls.as_array().expect("a list");
        urls.iter()
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect()
    }

    /// Saves a PNG of the window as `<shots>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("save screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}
