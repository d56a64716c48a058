//! The console's pages and actions. Each handler names a [`Viewer`] (a live
//! session) and renders a template; actions that change state also check
//! the role and the origin, and answer with a redirect (POST, then GET).

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::session::{Viewer, same_origin, session_id};
use crate::alerts::AlertQuery;
use crate::alerts::engine::{AlertKind, AlertState};
use crate::config::Role;
use crate::http::AppState;
use crate::replication::{NodeReport, NodeStatus, RebalanceProgress, ReplicationSettings};

/// Renders `page` with `status`, or a plain 500 if the template fails.
fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be drawn",
            )
                .into_response()
        }
    }
}

/// What every page's frame shows.
struct Frame {
    title: &'static str,
    role: &'static str,
}

impl Frame {
    fn new(title: &'static str, viewer: &Viewer) -> Self {
        Self {
            title,
            role: viewer.role.as_str(),
        }
    }
}

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
    healthy: bool,
    version: &'static str,
    nodes_up: usize,
    nodes_total: usize,
    rebalancing: bool,
    /// (connected, subscribed, readings parked) of the MQTT consumer.
    mqtt: Option<(bool, bool, u64)>,
    firing: usize,
    stale: usize,
}

pub async fn overview(State(state): State<AppState>, viewer: Viewer) -> Response {
    let nodes = state.replicator.node_states();
    let nodes_up = nodes.iter().filter(|n| n.status == NodeStatus::Up).count();
    let firing = state
        .alerts
        .alerts(AlertQuery {
            sensor_id: None,
            state: Some(AlertState::Firing),
            since_ms: None,
            limit: 10_000,
        })
        .await
        .unwrap_or_default();
    let stale = firing.iter().filter(|a| a.kind == AlertKind::Stale).count();
    let page = OverviewPage {
        frame: Frame::new("Overview", &viewer),
        healthy: nodes_up == nodes.len(),
        version: env!("CARGO_PKG_VERSION"),
        nodes_up,
        nodes_total: nodes.len(),
        rebalancing: state.replicator.rebalance_progress().is_some(),
        mqtt: state
            .mqtt
            .as_ref()
            .map(|m| (m.connected(), m.subscribed(), m.parked())),
        firing: firing.len(),
        stale,
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "console/nodes.html")]
struct NodesPage {
    frame: Frame,
    nodes: Vec<NodeReport>,
    settings: ReplicationSettings,
    rebalance: Option<RebalanceProgress>,
    admin: bool,
}

pub async fn nodes(State(state): State<AppState>, viewer: Viewer) -> Response {
    let page = NodesPage {
        frame: Frame::new("Nodes", &viewer),
        nodes: state.replicator.node_reports().await,
        settings: state.replicator.placement().settings(),
        rebalance: state.replicator.rebalance_progress(),
        admin: viewer.is_admin(),
    };
    render(StatusCode::OK, &page)
}

/// Taking a node out or bringing it back.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeAction {
    Fail,
    Recover,
}

impl NodeAction {
    fn verb(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Recover => "recover",
        }
    }

    fn question(self) -> &'static str {
        match self {
            Self::Fail => {
                "Take this node out of service? It serves no reads or writes until recovered; writes meant for it are kept as hints."
            }
            Self::Recover => {
                "Bring this node back? Its hints are replayed, then it is repaired from its peers."
            }
        }
    }
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
struct ConfirmPage {
    frame: Frame,
    node: String,
    verb: &'static str,
    question: &'static str,
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct MessagePage {
    frame: Frame,
    message: String,
}

fn admin_only(viewer: &Viewer) -> Option<Response> {
    (!viewer.is_admin()).then(|| {
        let page = MessagePage {
            frame: Frame::new("Not allowed", viewer),
            message: format!(
                "Your token's role ({}) may not do this: it needs {}.",
                viewer.role.as_str(),
                Role::Admin.as_str()
            ),
        };
        render(StatusCode::FORBIDDEN, &page)
    })
}

pub async fn confirm_node_action(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((node, action)): Path<(String, NodeAction)>,
) -> Response {
    if let Some(refused) = admin_only(&viewer) {
        return refused;
    }
    let Ok(id) = state.replicator.node_id(&node) else {
        return not_found(&viewer, &node);
    };
    let page = ConfirmPage {
        frame: Frame::new("Confirm", &viewer),
        node: id.to_string(),
        verb: action.verb(),
        question: action.question(),
    };
    render(StatusCode::OK, &page)
}

pub async fn node_action(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((node, action)): Path<(String, NodeAction)>,
) -> Response {
    if !same_origin(&headers) {
        return forbidden_origin();
    }
    if let Some(refused) = admin_only(&viewer) {
        return refused;
    }
    let Ok(id) = state.replicator.node_id(&node) else {
        return not_found(&viewer, &node);
    };
    let outcome = match action {
        NodeAction::Fail => state.replicator.fail(&id).await,
        NodeAction::Recover => state.replicator.recover(&id).await.map(|_| ()),
    };
    match outcome {
        Ok(()) => Redirect::to("/ui/nodes").into_response(),
        Err(error) => {
            let page = MessagePage {
                frame: Frame::new("Not done", &viewer),
                message: format!("Could not {} {id}: {error}", action.verb()),
            };
            render(StatusCode::CONFLICT, &page)
        }
    }
}

fn not_found(viewer: &Viewer, node: &str) -> Response {
    let page = MessagePage {
        frame: Frame::new("Not found", viewer),
        message: format!("There is no node {node:?}."),
    };
    render(StatusCode::NOT_FOUND, &page)
}

fn forbidden_origin() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: this request did not come from the console's own pages",
    )
        .into_response()
}
