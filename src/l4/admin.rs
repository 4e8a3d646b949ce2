//! The L4 node's admin listener:
//! - `/ready`: 200 once a first config is applied, 503 before. Its body lists every VIP
//!   listener with whether it can take connections (`serving`, or why not: no cluster, no
//!   endpoints yet, no available gateway) — what route announcement follows — and, with
//!   BGP, the VIPs announced and why the last change did not reach BIRD, if it did not; with
//!   the XDP packet path, its interfaces, the VIP:ports it forwards and those it leaves to
//!   user space (and why);
//! - `/config_dump`: versions, listeners, clusters with their gateways by state;
//! - `/stats/prometheus`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use super::L4State;

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
        let verdict = snapshot.serving(&plan.cluster);
        body.push_str(&format!(
            "{name} {} {verdict} ({})\n",
            plan.address, plan.cluster
        ));
    }
    if let Some(announcement) = state.announcement() {
        let vips: Vec<String> = announcement
            .announced
            .iter()
            .map(|v| v.to_string())
            .collect();
        body.push_str(&format!("bgp announced: {}\n", vips.join(" ")));
        if let Some(error) = announcement.error {
            body.push_str(&format!("bgp error: {error}\n"));
        }
    }
    if let Some(path) = state.packet_path() {
        body.push_str(&format!(
            "packet path: {} VIP:ports on {}\n",
            path.services,
            path.interfaces.join(" ")
        ));
        for only in &path.user_space_only {
            body.push_str(&format!("packet path leaves to user space: {only}\n"));
        }
        if let Some(error) = path.error {
            body.push_str(&format!("packet path error: {error}\n"));
        }
    }
    (StatusCode::OK, body)
}

async fn prometheus(State(state): State<Arc<L4State>>) -> (StatusCode, String) {
    crate::runtime::prometheus_response(&state.stats.registry)
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
                "state": snapshot.serving(&l.cluster),
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
    let announced: Option<Vec<String>> = state
        .announcement()
        .map(|a| a.announced.iter().map(|v| v.to_string()).collect());
    Json(serde_json::json!({
        "versions": snapshot.versions,
        "announced": announced,
        "listeners": listeners,
        "clusters": clusters,
    }))
}
