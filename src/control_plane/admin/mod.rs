//! Admin HTTP: health, readiness, Prometheus metrics and debug views of what is served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use tokio::sync::watch;

use crate::control_plane::problems::ConfigProblem;
use crate::control_plane::rollouts::RolloutChannel;
use crate::core::dns::status::{name_service_status, DnsPublication};
use crate::core::refs::ClusterRefs;
use crate::core::status::{access_point_keys, access_point_status, MemberWrites, StatusInput};
use crate::runtime::connections::GuardedStream;

pub mod guard;
pub mod ops;
mod rollouts;
use crate::control_plane::xds::server::XdsState;

/// What the admin server reads; written by the provider loop and the xDS server.
pub struct AdminState {
    pub xds: Arc<XdsState>,
    /// Set once the first configuration was loaded without a fatal error.
    pub ready: AtomicBool,
    pub problems: Mutex<Vec<ConfigProblem>>,
    /// What DNS publishes: the embedded server's records and each RFC 2136 server's.
    pub dns: watch::Sender<DnsPublication>,
    /// Staged rollouts: their statuses, and the operator's commands to the rollout task.
    pub rollouts: Arc<RolloutChannel>,
}

impl AdminState {
    pub fn new(xds: Arc<XdsState>) -> Arc<AdminState> {
        Arc::new(AdminState {
            xds,
            ready: AtomicBool::new(false),
            problems: Mutex::new(Vec::new()),
            dns: watch::Sender::new(DnsPublication::default()),
            rollouts: Arc::new(RolloutChannel::default()),
        })
    }

    /// Replaces the reported problems; returns the ones before.
    pub fn set_problems(&self, problems: Vec<ConfigProblem>) -> Vec<ConfigProblem> {
        self.xds.metrics.config_errors.set(problems.len() as i64);
        std::mem::replace(
            &mut *self.problems.lock().unwrap_or_else(|p| p.into_inner()),
            problems,
        )
    }
}

/// Serves the admin API on the connections `incoming` hands over, until `stopped`; requests
/// under way then get a few seconds to finish.
pub async fn serve(
    mut incoming: tokio::sync::mpsc::Receiver<std::io::Result<GuardedStream>>,
    state: Arc<AdminState>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let app = router(state);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = crate::runtime::stopped_signal(stopped.clone()) => break,
            accepted = incoming.recv() => accepted,
        };
        let Some(accepted) = accepted else { break };
        let Ok(stream) = accepted else { continue };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/problems", get(problems))
        .route("/debug/dns", get(dns))
        .route("/debug/status", get(access_point_statuses))
        .merge(rollouts::routes())
        .layer(axum::middleware::from_fn(guard::guard))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.xds.metrics.render(),
    )
        .into_response()
}

async fn syncz(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "generation": state.xds.snapshots.borrow().generation,
        "proxies": state.xds.proxies.list(),
    }))
}

async fn problems(State(state): State<Arc<AdminState>>) -> Json<Vec<ConfigProblem>> {
    Json(
        state
            .problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    )
}

/// What DNS answers: every name the embedded server serves with its records, each
/// NameService's status (as the Kubernetes leader writes it), and VIPs that could not be
/// allocated.
async fn dns(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let snapshot = state.xds.snapshots.borrow().clone();
    let publication = state.dns.borrow().clone();
    let embedded = publication.embedded.clone().unwrap_or_default();
    let names: serde_json::Map<String, serde_json::Value> = embedded
        .names
        .iter()
        .map(|(name, set)| {
            (
                name.clone(),
                serde_json::json!({
                    "nameService": set.owner.to_string(),
                    "ttl": set.ttl,
                    "a": set.v4,
                    "aaaa": set.v6,
                    "zones": set.zones.iter().map(|z| serde_json::json!({
                        "zone": z.zone,
                        "priority": z.priority,
                        "weight": z.weight,
                        "a": z.v4,
                        "aaaa": z.v6,
                    })).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let problems: Vec<String> = embedded
        .problems
        .iter()
        .chain(publication.external.values().flat_map(|r| &r.problems))
        .map(ToString::to_string)
        .collect();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let statuses: serde_json::Map<String, serde_json::Value> = snapshot
        .model
        .name_services
        .iter()
        .map(|(key, service)| {
            let status = name_service_status(&publication, key, service, None, &now);
            (key.to_string(), serde_json::json!(status))
        })
        .collect();
    let vip_errors: Vec<String> = snapshot
        .model
        .vip_errors
        .iter()
        .map(ToString::to_string)
        .collect();
    Json(serde_json::json!({
        "zones": publication.zones,
        "names": names,
        "problems": problems,
        "nameServices": statuses,
        "vipErrors": vip_errors,
    }))
}

async fn access_point_statuses(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let snapshot = state.xds.snapshots.borrow().clone();
    let acks = state.xds.acks(&snapshot);
    let clusters = ClusterRefs::all(&snapshot.model);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let rollouts = state.rollouts.statuses.borrow().clone();
    let statuses: serde_json::Map<String, serde_json::Value> =
        access_point_keys(snapshot.published())
            .iter()
            .map(|key| {
                let input = StatusInput {
                    key,
                    published: snapshot.published(),
                    clusters: &clusters,
                    proxies: &acks,
                    member_writes: &MemberWrites::new(),
                    rollout: rollouts.get(key),
                };
                let status = access_point_status(&input, None, &now);
                (
                    key.to_string(),
                    serde_json::to_value(status).unwrap_or_default(),
                )
            })
            .collect();
    Json(serde_json::Value::Object(statuses))
}

#[derive(Deserialize)]
struct NodeQuery {
    node: String,
}

async fn config_dump(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<NodeQuery>,
) -> Response {
    // The admin port authenticates nobody: it is for operators (keep it on loopback).
    let caller = crate::control_plane::xds::server::OpsCaller::Anyone;
    match crate::control_plane::admin::ops::config_dump(&state.xds, &caller, &query.node) {
        None => (
            StatusCode::NOT_FOUND,
            format!("no connected proxy with node id {:?}\n", query.node),
        )
            .into_response(),
        Some(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Some(Ok(json)) => Json(json).into_response(),
    }
}
