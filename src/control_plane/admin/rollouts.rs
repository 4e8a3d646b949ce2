//! The rollout part of the admin API: statuses, the operator's commands and diffs. Standalone
//! mode's way to approve, pause, resume and undo (Kubernetes mode records them on the
//! AccessPoint's status instead, under the approver's own identity).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::AdminState;
use crate::core::model::ObjectKey;
use crate::core::rollout::diff::{diff, DiffError};
use crate::core::rollout::fleet::Command;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/rollouts", get(all))
        .route("/rollouts/:namespace/:name", get(one))
        .route("/rollouts/:namespace/:name/diff", get(show_diff))
        .route("/rollouts/:namespace/:name/:action", post(act))
}

async fn all(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let statuses = state.rollouts.statuses.borrow();
    Json(serde_json::Value::Object(
        statuses
            .iter()
            .map(|(key, status)| (key.to_string(), serde_json::json!(status)))
            .collect(),
    ))
}

async fn one(
    State(state): State<Arc<AdminState>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = ObjectKey::new(namespace, name);
    match state.rollouts.statuses.borrow().get(&key) {
        Some(status) => Json(status.clone()).into_response(),
        None => not_found(&key),
    }
}

fn not_found(key: &ObjectKey) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("AccessPoint {key} has no staged rollout\n"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ActQuery {
    stage: Option<String>,
    by: Option<String>,
}

async fn act(
    State(state): State<Arc<AdminState>>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    Query(query): Query<ActQuery>,
) -> Response {
    let key = ObjectKey::new(namespace, name);
    let command = match (action.as_str(), query.stage) {
        ("approve", Some(stage)) => Command::Approve {
            stage,
            by: query.by,
        },
        ("approve", None) => {
            return (StatusCode::BAD_REQUEST, "approve needs ?stage=NAME\n").into_response()
        }
        ("pause", _) => Command::Pause,
        ("resume", _) => Command::Resume,
        ("undo", _) => Command::Undo,
        (other, _) => {
            let message = format!("unknown action {other:?}: approve, pause, resume or undo\n");
            return (StatusCode::NOT_FOUND, message).into_response();
        }
    };
    match state.rollouts.command(key, command).await {
        Ok(()) => (StatusCode::OK, "recorded\n").into_response(),
        Err(message) => (StatusCode::CONFLICT, message + "\n").into_response(),
    }
}

#[derive(Deserialize)]
struct DiffQuery {
    cluster: Option<String>,
}

/// Every placed cluster's diff, or one cluster's.
async fn show_diff(
    State(state): State<Arc<AdminState>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<DiffQuery>,
) -> Response {
    let key = ObjectKey::new(namespace, name);
    let snapshot = state.xds.snapshots.borrow().clone();
    let clusters = match (&query.cluster, snapshot.model.access_points.get(&key)) {
        (Some(cluster), _) => vec![cluster.clone()],
        (None, Some(ap)) => crate::core::placement::placed_clusters(&snapshot.model, ap),
        (None, None) => Vec::new(),
    };
    let computed = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        if clusters.is_empty() {
            diff(&snapshot.model, &key, crate::api::LOCAL_CLUSTER)?;
        }
        for cluster in clusters {
            all.extend(diff(&snapshot.model, &key, &cluster)?);
        }
        Ok::<_, DiffError>(all)
    })
    .await;
    match computed {
        Ok(Ok(diffs)) => Json(diffs).into_response(),
        Ok(Err(error @ (DiffError::NotFound(_) | DiffError::NotPlaced { .. }))) => {
            (StatusCode::NOT_FOUND, format!("{error}\n")).into_response()
        }
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}
