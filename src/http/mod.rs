//! The REST API (docs/api.md) on axum: `router(state)` builds every route; each
//! handler names the role it needs with an [`auth::Authorized`] extractor
//! and fails with an [`error::ApiError`], mapped to a status only at the
//! edge. Handlers call the library (`Ingestor`, `Replicator`,
//! `AlertService`); they hold no logic of their own beyond parsing.

pub mod admin;
mod alerts;
pub mod auth;
pub mod error;
mod extract;
pub(crate) mod paged;
mod readings;
pub mod serve;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use metrics::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::alerts::AlertService;
use crate::ingest::Ingestor;
use crate::replication::Replicator;
use auth::Auth;
use error::ApiError;
use extract::BodyLimit;

pub use alerts::parse_threshold;
pub use readings::MAX_BATCH;

/// What every handler can reach: one shared [`Services`], so the clone each
/// extractor takes is a single reference count.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

pub struct Services {
    pub replicator: Arc<Replicator>,
    pub ingestor: Arc<Ingestor>,
    pub alerts: Arc<AlertService>,
    pub auth: Arc<Auth>,
    pub metrics: PrometheusHandle,
    /// The MQTT consumer's connection, when one runs.
    pub mqtt: Option<Arc<crate::mqtt::ConsumerStatus>>,
    /// Node key counts for `/metrics`, taken at most every few seconds.
    pub key_counts: Arc<admin::KeyCounts>,
    /// Every sensor's newest reading, for the console.
    pub latest: Arc<crate::latest::LatestReadings>,
    /// The console's live updates.
    pub live: Arc<crate::console::Live>,
    /// The web console's signed-in sessions.
    pub sessions: Arc<crate::console::Sessions>,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/ingest", post(readings::ingest))
        .route(
            "/measurement/{key}",
            get(readings::get_measurement)
                .put(readings::update_measurement)
                .delete(readings::delete_measurement),
        )
        .route("/delete/{key}", delete(readings::delete_measurement))
        .route("/measurements", get(readings::list_measurements))
        .route("/sensor/{sensor_id}/history", get(readings::history))
        .route("/set_threshold", post(alerts::set_threshold))
        .route("/thresholds", get(alerts::thresholds))
        .route("/thresholds/{sensor_id}", delete(alerts::delete_threshold))
        .route("/alerts", get(alerts::alerts))
        .route("/replication", get(admin::replication))
        .route("/configure_replication", post(admin::configure_replication))
        .route("/nodes_status", get(admin::nodes_status))
        .route("/fail_node/{id}", post(admin::fail_node))
        .route("/recover_node/{id}", post(admin::recover_node))
        .route("/replica_nodes/{key}", get(admin::replica_nodes))
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Observer {
                body_limit: BodyLimit(max_body_bytes),
                histograms: LatencyHistograms::default(),
            },
            observe,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::NotFound("no such endpoint for this method".into())
}

/// The latency histogram of each route, method and status, so that a request
/// records into a handle instead of building a metrics key.
#[derive(Clone, Default)]
struct LatencyHistograms(Arc<RwLock<HashMap<String, ByMethodAndStatus>>>);

type ByMethodAndStatus = HashMap<(&'static str, u16), Histogram>;

impl LatencyHistograms {
    fn get(&self, route: &str, method: &Method, status: u16) -> Histogram {
        let known = self.0.read().ok().and_then(|routes| {
            routes
                .get(route)?
                .get(&(method_label(method), status))
                .cloned()
        });
        if let Some(histogram) = known {
            return histogram;
        }
        let histogram = metrics::histogram!(
            "energyguard_http_request_duration_seconds",
            "route" => route.to_string(),
            "method" => method_label(method),
            "status" => status.to_string()
        );
        if let Ok(mut routes) = self.0.write() {
            routes
                .entry(route.to_string())
                .or_default()
                .insert((method_label(method), status), histogram.clone());
        }
        histogram
    }
}

/// A method as a label value: the standard ones by name, anything a client
/// made up as `other`, so clients cannot grow `/metrics` at will.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// What the outermost middleware needs.
#[derive(Clone)]
struct Observer {
    body_limit: BodyLimit,
    histograms: LatencyHistograms,
}

/// Records a latency histogram per route, method and status, and tells body
/// extractors the limit (for the 413 message).
async fn observe(State(observer): State<Observer>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    request.extensions_mut().insert(observer.body_limit);
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    observer
        .histograms
        .get(route, &method, response.status().as_u16())
        .record(started.elapsed().as_secs_f64());
    response
}
