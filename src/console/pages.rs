//! Signing in and out, the overview, and the message page other pages
//! answer with when they cannot show what was asked.

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::session::{Viewer, same_origin, session_id};
use super::view::{Frame, Zone, number, render};
use crate::config::Role;
use crate::http::AppState;

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    error: Option<&'static str>,
}

pub async fn login_form() -> Response {
    render(StatusCode::OK, &LoginPage { error: None })
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return forbidden_origin();
    }
    let Some(role) = state.auth.role_of(form.token.trim()) else {
        let page = LoginPage {
            error: Some("That token is not valid."),
        };
        return render(StatusCode::UNAUTHORIZED, &page);
    };
    let id = state.sessions.open(role);
    (
        [(header::SET_COOKIE, state.sessions.cookie(&id))],
        Redirect::to("/ui/"),
    )
        .into_response()
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return forbidden_origin();
    }
    if let Some(id) = session_id(&headers) {
        state.sessions.close(id);
    }
    (
        [(header::SET_COOKIE, state.sessions.removal_cookie())],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    frame: Frame,
    version: &'static str,
    nodes_up: usize,
    nodes_total: usize,
    rebalancing: bool,
    /// (connected, subscribed, readings parked) of the MQTT consumer.
    mqtt: Option<(bool, bool, u64)>,
    firing: usize,
    stale: usize,
    rate_http: String,
    rate_mqtt: String,
    sensors: usize,
    firing_list: Vec<FiringRow>,
}

struct FiringRow {
    sensor: String,
    kind: &'static str,
    started: String,
    peak: String,
}

pub async fn overview(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
) -> Response {
    let zone = Zone::of(None, &headers);
    let live = state.live.current();
    let nodes = state.replicator.node_states();
    let page = OverviewPage {
        frame: Frame::new("Overview", "overview", &viewer, &zone),
        version: env!("CARGO_PKG_VERSION"),
        nodes_up: nodes
            .iter()
            .filter(|n| n.status == crate::replication::NodeStatus::Up)
            .count(),
        nodes_total: nodes.len(),
        rebalancing: state.replicator.rebalance_progress().is_some(),
        mqtt: state
            .mqtt
            .as_ref()
            .map(|m| (m.connected(), m.subscribed(), m.parked())),
        firing: live.firing_total,
        stale: live.stale_sensors,
        rate_http: number(live.rate_http),
        rate_mqtt: number(live.rate_mqtt),
        sensors: state.latest.len(),
        firing_list: live
            .firing
            .iter()
            .map(|a| FiringRow {
                sensor: a.sensor.clone(),
                kind: a.kind,
                started: zone.datetime(a.started_ms),
                peak: a.peak.clone(),
            })
            .collect(),
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct MessagePage {
    frame: Frame,
    message: String,
}

/// A page saying `text` under `title`, answered with `status`.
pub fn message(
    viewer: &Viewer,
    zone: &Zone,
    status: StatusCode,
    title: &str,
    text: String,
) -> Response {
    let page = MessagePage {
        frame: Frame::new(title, "", viewer, zone),
        message: text,
    };
    render(status, &page)
}

/// The page refusing what a role below `needed` may not do (`doing`), or
/// `None` when the viewer's role suffices.
pub fn refused_below(viewer: &Viewer, zone: &Zone, needed: Role, doing: &str) -> Option<Response> {
    (viewer.role < needed).then(|| {
        message(
            viewer,
            zone,
            StatusCode::FORBIDDEN,
            "Not allowed",
            format!(
                "Your token's role ({}) may not {doing}: it needs {}.",
                viewer.role.as_str(),
                needed.as_str()
            ),
        )
    })
}

pub fn forbidden_origin() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: this request did not come from the console's own pages",
    )
        .into_response()
}
