//! The nodes page (`/ui/nodes`): every storage node's status, reason,
//! address, keys and hints; the replication settings and rebalance
//! progress; which nodes hold a sensor; and, for admins only, taking a node
//! out or bringing it back, each behind a confirmation page.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::pages::{forbidden_origin, message, refused_below};
use super::session::{Viewer, same_origin};
use super::view::{Frame, Zone, render};
use crate::config::Role;
use crate::http::AppState;
use crate::reading::SensorId;
use crate::replication::{NodeReport, RebalanceProgress, ReplicationSettings};

#[derive(Template)]
#[template(path = "console/nodes.html")]
struct NodesPage {
    frame: Frame,
    nodes: Vec<NodeReport>,
    settings: ReplicationSettings,
    rebalance: Option<RebalanceProgress>,
    admin: bool,
    /// The sensor asked about, and the nodes holding it in order.
    replicas: Option<(String, Vec<String>)>,
    replicas_error: Option<String>,
}

#[derive(Deserialize)]
pub struct NodesQuery {
    /// A sensor whose replicas to show.
    sensor: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(query): Query<NodesQuery>,
) -> Response {
    let zone = Zone::of(None, &headers);
    let asked = query
        .sensor
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let (replicas, replicas_error) = match asked.map(|s| s.parse::<SensorId>()) {
        None => (None, None),
        Some(Ok(sensor)) => {
            let holders = state.replicator.placement().replicas(&sensor);
            let names = holders.iter().map(|n| n.to_string()).collect();
            (Some((sensor.to_string(), names)), None)
        }
        Some(Err(invalid)) => (None, Some(invalid.reason)),
    };
    let page = NodesPage {
        frame: Frame::new("Nodes", "nodes", &viewer, &zone),
        nodes: state.replicator.node_reports().await,
        settings: state.replicator.placement().settings(),
        rebalance: state.replicator.rebalance_progress(),
        admin: viewer.is_admin(),
        replicas,
        replicas_error,
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

fn not_found(viewer: &Viewer, zone: &Zone, node: &str) -> Response {
    message(
        viewer,
        zone,
        StatusCode::NOT_FOUND,
        "Not found",
        format!("There is no node {node:?}."),
    )
}

pub async fn confirm(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((node, action)): Path<(String, NodeAction)>,
) -> Response {
    let zone = Zone::of(None, &headers);
    if let Some(refused) = refused_below(&viewer, &zone, Role::Admin, "do this") {
        return refused;
    }
    let Ok(id) = state.replicator.node_id(&node) else {
        return not_found(&viewer, &zone, &node);
    };
    let page = ConfirmPage {
        frame: Frame::new("Confirm", "nodes", &viewer, &zone),
        node: id.to_string(),
        verb: action.verb(),
        question: action.question(),
    };
    render(StatusCode::OK, &page)
}

pub async fn act(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path((node, action)): Path<(String, NodeAction)>,
) -> Response {
    let zone = Zone::of(None, &headers);
    if !same_origin(&headers) {
        return forbidden_origin();
    }
    if let Some(refused) = refused_below(&viewer, &zone, Role::Admin, "do this") {
        return refused;
    }
    let Ok(id) = state.replicator.node_id(&node) else {
        return not_found(&viewer, &zone, &node);
    };
    let outcome = match action {
        NodeAction::Fail => state.replicator.fail(&id).await,
        NodeAction::Recover => state.replicator.recover(&id).await.map(|_| ()),
    };
    match outcome {
        Ok(()) => Redirect::to("/ui/nodes").into_response(),
        Err(error) => message(
            &viewer,
            &zone,
            StatusCode::CONFLICT,
            "Not done",
            format!("Could not {} {id}: {error}", action.verb()),
        ),
    }
}
