//! The L4 node's admin listener:
//! - `/ready`: 200 once a first config is applied, 503 before. Its body lists every VIP
//!   listener with whether it can take connections (`serving`, or why not: no cluster, no
//!   endpoints yet, no available gateway) — what route announcement will follow;
//! - `/config_dump`: versions, listeners, clusters with their gateways by state;
//! - `/stats/prometheus`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use super::{L4State, Snapshot};

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<L4State>,
    stopped: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/config_dump", get(config_dump))
        .route("/stats/prometheus", get(prometheus))
        .with_state(state);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(crate::runtime::stopped_signal(stopped))
        .await;
}

/// Whether the listener can take connections, or why not.
pub fn listener_state(snapshot: &Snapshot, cluster: &str) -> &'static str {
    match snapshot.clusters.get(cluster) {
        None => "no cluster",
        Some(upstream) if upstream.assignment.is_none() => "no endpoints yet",
        Some(upstream) if upstream.table().is_empty() => "no available gateway",
        Some(_) => "serving",
    }
}

async fn ready(State(state): State<Arc<L4State>>) -> (StatusCode, String) {
    if !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "PRE_INITIALIZING\n".to_owned(),
        );
    }
    let snapshot = state.snapshot.load();
    let mut body = String::from("LIVE\n");
    for (name, plan) in &snapshot.listeners {
        let verdict = listener_state(&snapshot, &plan.cluster);
        body.push_str(&format!(
            "{name} {} {verdict} ({})\n",
            plan.address, plan.cluster
        ));
    }
    (StatusCode::OK, body)
}

async fn prometheus(State(state): State<Arc<L4State>>) -> (StatusCode, String) {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.stats.registry) {
        Ok(()) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn config_dump(State(state): State<Arc<L4State>>) -> Json<serde_json::Value> {
    let snapshot = state.snapshot.load_full();
    let listeners: Vec<serde_json::Value> = snapshot
        .listeners
        .values()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "address": l.address.to_string(),
                "freebind": l.freebind,
                "cluster": l.cluster,
                "connectAttempts": l.connect_attempts,
                "state": listener_state(&snapshot, &l.cluster),
            })
        })
        .collect();
    let mut clusters: Vec<serde_json::Value> = snapshot
        .clusters
        .iter()
        .map(|(name, upstream)| {
            let (failed, ejected) = upstream.unavailable();
            let available: Vec<String> = upstream
                .table()
                .gateways()
                .iter()
                .map(|g| g.id.clone())
                .collect();
            serde_json::json!({
                "name": name,
                "tableSize": upstream.plan.table_size,
                "proxyProtocol": upstream.plan.proxy_protocol,
                "healthChecked": upstream.plan.health_check.is_some(),
                "endpointsArrived": upstream.assignment.is_some(),
                "available": available,
                "failed": failed,
                "ejected": ejected,
            })
        })
        .collect();
    clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(serde_json::json!({
        "versions": snapshot.versions,
        "listeners": listeners,
        "clusters": clusters,
    }))
}
