//! The proxy's admin listener: `/ready` (200 `LIVE` once a first config is applied — from the
//! cache too, unless `--wait-first-config` — 503 before, saying which), and `/config_dump`:
//! what is applied, per type and version, and `/stats/prometheus`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use super::{ProxyState, Readiness};

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ProxyState>,
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

async fn ready(State(state): State<Arc<ProxyState>>) -> (StatusCode, &'static str) {
    match (state.readiness(), state.wait_first_config) {
        (Readiness::Live, _) => (StatusCode::OK, "LIVE\n"),
        (Readiness::Cached, false) => (
            StatusCode::OK,
            "LIVE: serving the cached config; Meridian not reached yet\n",
        ),
        (Readiness::Cached, true) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVING_CACHED_CONFIG: waiting for Meridian's (--wait-first-config)\n",
        ),
        (Readiness::Initializing, _) => (StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n"),
    }
}

async fn prometheus(State(state): State<Arc<ProxyState>>) -> (StatusCode, String) {
    crate::runtime::prometheus_response(&state.stats.registry)
}

async fn config_dump(State(state): State<Arc<ProxyState>>) -> Json<serde_json::Value> {
    let config = state.config.load_full();
    let listeners: Vec<serde_json::Value> = config
        .listeners
        .values()
        .map(|l| {
            serde_json::json!({
                "name": l.name, "address": l.address, "port": l.port,
                "routeConfigs": l.route_configs().collect::<Vec<_>>(),
                "tls": l.has_tls(),
            })
        })
        .collect();
    let mut routes: Vec<&String> = config.routes.keys().collect();
    routes.sort();
    let mut clusters: Vec<serde_json::Value> = config
        .clusters
        .iter()
        .map(|(name, upstream)| {
            serde_json::json!({"name": name, "policy": format!("{:?}", upstream.plan.policy), "http2": upstream.plan.http2, "serving": !upstream.balancer.load().is_empty(), "ejected": upstream.ejected()})
        })
        .collect();
    clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(serde_json::json!({
        "versions": config.versions,
        "listeners": listeners,
        "routes": routes,
        "clusters": clusters,
    }))
}
