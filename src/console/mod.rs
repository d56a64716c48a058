//! The web console (`/ui/…`): server-rendered pages for people, from the
//! same binary and port as the API, with nothing loaded from elsewhere.
//!
//! * `session`: sign-in with an API token, session cookies, the [`Viewer`]
//!   extractor and the same-origin check for actions.
//! * `view`: each page's frame, the viewer's time zone, rendering.
//! * `pages` (sign-in, overview), `sensors`, `sensor` (with `window`, the
//!   time it shows, and `chart`, its SVG), `alerts`, `nodes`: the handlers
//!   and their askama templates (`templates/console/`, checked at compile
//!   time).
//! * `live`: values, alerts and node states pushed to open pages (server-
//!   sent events, or polling).
//!
//! Every response carries a Content-Security-Policy of `'self'` and is
//! never cached; the stylesheet and the script are compiled into the
//! binary. Pages work without the script; it adds live updates, the
//! viewer's time zone and charts sized to the screen.

mod alerts;
mod chart;
mod live;
mod nodes;
mod pages;
mod sensor;
mod sensors;
pub mod session;
mod view;
mod window;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::http::AppState;
pub use live::{Live, Sources as LiveSources};
pub use session::{Sessions, Viewer};

const STYLESHEET: &str = include_str!("../../assets/console.css");
const SCRIPT: &str = include_str!("../../assets/console.js");

/// What a console page may load: its own origin's styles and scripts, and
/// images drawn inline; no frames around it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The console's routes; `/` redirects to it.
pub fn router() -> Router<AppState> {
    let console = Router::new()
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/", get(pages::overview))
        .route("/ui/sensors", get(sensors::list))
        .route("/ui/sensors/{id}", get(sensor::page))
        .route("/ui/sensors/{id}/{figure}", get(sensor::figure))
        .route("/ui/sensors/{id}/export.csv", get(sensor::export))
        .route("/ui/sensors/{id}/threshold", post(sensor::set_threshold))
        .route(
            "/ui/sensors/{id}/threshold/remove",
            post(sensor::remove_threshold),
        )
        .route("/ui/alerts", get(alerts::page))
        .route("/ui/nodes", get(nodes::page))
        .route(
            "/ui/nodes/{node}/{action}",
            get(nodes::confirm).post(nodes::act),
        )
        .route("/ui/events", get(live::events))
        .route("/ui/live", get(live::poll))
        .route("/ui/static/console.css", get(stylesheet))
        .route("/ui/static/console.js", get(script))
        .layer(middleware::from_fn(security_headers));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .merge(console)
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
