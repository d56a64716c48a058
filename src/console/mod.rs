//! The web console (`/ui/…`): server-rendered pages for people, from the
//! same binary and port as the API, with nothing loaded from elsewhere.
//!
//! * `session`: sign-in with an API token, session cookies, the [`Viewer`]
//!   extractor and the same-origin check for actions.
//! * `pages`: the handlers and their askama templates (`templates/console/`,
//!   checked at compile time).
//!
//! Every response carries a Content-Security-Policy of `'self'` and is
//! never cached; the stylesheet is compiled into the binary.

mod pages;
pub mod session;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::http::AppState;
pub use session::{Sessions, Viewer};

const STYLESHEET: &str = include_str!("../../assets/console.css");

/// What a console page may load: its own origin's styles and scripts, and
/// images drawn inline; no frames around it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The console's routes; `/` redirects to it.
pub fn router() -> Router<AppState> {
    let console = Router::new()
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", axum::routing::post(pages::logout))
        .route("/ui/", get(pages::overview))
        .route("/ui/nodes", get(pages::nodes))
        .route(
            "/ui/nodes/{node}/{action}",
            get(pages::confirm_node_action).post(pages::node_action),
        )
        .route("/ui/static/console.css", get(stylesheet))
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
