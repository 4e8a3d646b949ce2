//! Envoy's load reporting service (LRS, `envoy.service.load_stats.v3`): every gateway streams,
//! per reporting interval, how many requests each upstream completed and how many failed.
//! Meridian keeps the last few minutes per proxy: the health signal of staged rollouts.
//!
//! The bootstrap `meridian bootstrap` prints enables it (`cluster_manager.load_stats_config`);
//! Meridian answers the first request with `send_all_clusters` and its reporting interval.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::config::endpoint::v3::ClusterStats;
use xds_api::pb::envoy::service::load_stats::v3::load_reporting_service_server::{
    LoadReportingService, LoadReportingServiceServer,
};
use xds_api::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};

use super::identity::{verified_identity, IdentityError};
use super::server::{BoxStream, XdsState};
use crate::core::model::ObjectKey;
use crate::core::rollout::health::UpstreamLoad;

/// How long reports are kept: the longest health window that can be counted.
pub const RETENTION: Duration = Duration::from_secs(300);

/// The reporting interval gateways are asked for, unless configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// One proxy's recent reports.
struct History {
    gateway: ObjectKey,
    loads: VecDeque<UpstreamLoad>,
}

/// Recent load reports by node id.
pub struct LoadRegistry {
    interval: Duration,
    reports: Mutex<HashMap<String, History>>,
    changes: watch::Sender<u64>,
}

impl LoadRegistry {
    pub fn new(interval: Duration) -> LoadRegistry {
        LoadRegistry {
            interval,
            reports: Mutex::default(),
            changes: watch::channel(0).0,
        }
    }

    /// Ticks whenever a report arrives.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Records one report of `node` (serving `gateway`) received at `at_ms`. Upstreams that
    /// completed no request are left out; so are reports older than [`RETENTION`].
    pub fn record(&self, node: &str, gateway: &ObjectKey, stats: &[ClusterStats], at_ms: u64) {
        let loads = stats.iter().filter_map(|cluster| {
            let (successes, errors) =
                cluster
                    .upstream_locality_stats
                    .iter()
                    .fold((0u64, 0u64), |(s, e), l| {
                        // Counts come from the proxy: they may be anything.
                        (
                            s.saturating_add(l.total_successful_requests),
                            e.saturating_add(l.total_error_requests),
                        )
                    });
            let requests = successes.saturating_add(errors);
            (requests > 0).then(|| UpstreamLoad {
                upstream: cluster.cluster_name.clone(),
                at_ms,
                requests,
                errors,
            })
        });
        let oldest = at_ms.saturating_sub(RETENTION.as_millis() as u64);
        let mut reports = lock(&self.reports);
        let history = reports.entry(node.to_owned()).or_insert_with(|| History {
            gateway: gateway.clone(),
            loads: VecDeque::new(),
        });
        if &history.gateway != gateway {
            history.gateway = gateway.clone();
            history.loads.clear();
        }
        history.loads.extend(loads);
        reports.retain(|_, h| {
            while h.loads.front().is_some_and(|l| l.at_ms < oldest) {
                h.loads.pop_front();
            }
            !h.loads.is_empty()
        });
        drop(reports);
        self.changes.send_modify(|n| *n += 1);
    }

    /// What `node` reported while serving `gateway` about the upstreams `keep` accepts,
    /// oldest first.
    pub fn recent(
        &self,
        node: &str,
        gateway: &ObjectKey,
        keep: impl Fn(&UpstreamLoad) -> bool,
    ) -> Vec<UpstreamLoad> {
        lock(&self.reports)
            .get(node)
            .filter(|h| &h.gateway == gateway)
            .map(|h| h.loads.iter().filter(|l| keep(l)).cloned().collect())
            .unwrap_or_default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct LoadStatsService {
    state: Arc<XdsState>,
}

impl LoadStatsService {
    pub fn new(state: Arc<XdsState>) -> LoadReportingServiceServer<LoadStatsService> {
        LoadReportingServiceServer::new(LoadStatsService { state })
    }
}

#[tonic::async_trait]
impl LoadReportingService for LoadStatsService {
    type StreamLoadStatsStream = BoxStream<LoadStatsResponse>;

    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        let certified = self
            .state
            .certified(&request)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        let state = self.state.clone();
        tokio::spawn(async move {
            if let Err(status) = receive(&state, certified.as_ref(), &mut incoming, &tx).await {
                tracing::warn!(code = ?status.code(), message = status.message(), "load report stream ended with error");
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Answers the first request with what to report, then records every report.
async fn receive(
    state: &XdsState,
    certified: Option<&ObjectKey>,
    incoming: &mut Streaming<LoadStatsRequest>,
    tx: &mpsc::Sender<Result<LoadStatsResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = incoming.message().await? else {
        return Ok(());
    };
    let identity = verified_identity(first.node.as_ref(), certified).map_err(|e| match e {
        IdentityError::Mismatch { .. } => Status::permission_denied(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    })?;
    let node = first.node.map(|n| n.id).unwrap_or_default();
    let interval = state.loads.interval;
    let response = LoadStatsResponse {
        send_all_clusters: true,
        load_reporting_interval: Some(xds_api::pb::google::protobuf::Duration {
            seconds: interval.as_secs() as i64,
            nanos: interval.subsec_nanos() as i32,
        }),
        ..Default::default()
    };
    if tx.send(Ok(response)).await.is_err() {
        return Ok(());
    }
    tracing::debug!(%node, gateway = %identity.gateway, "load reports started");
    state
        .loads
        .record(&node, &identity.gateway, &first.cluster_stats, now_ms());
    // The stream ends with the config (as ADS streams do), so a shutdown is not held up.
    let mut snapshots = state.snapshots.clone();
    let config_gone = async move { while snapshots.changed().await.is_ok() {} };
    tokio::pin!(config_gone);
    loop {
        let report = tokio::select! {
            report = incoming.message() => report?,
            _ = &mut config_gone => None,
        };
        let Some(report) = report else { return Ok(()) };
        state
            .loads
            .record(&node, &identity.gateway, &report.cluster_stats, now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_api::pb::envoy::config::endpoint::v3::UpstreamLocalityStats;

    fn stats(cluster: &str, localities: &[(u64, u64)]) -> ClusterStats {
        ClusterStats {
            cluster_name: cluster.to_owned(),
            upstream_locality_stats: localities
                .iter()
                .map(|(ok, failed)| UpstreamLocalityStats {
                    total_successful_requests: *ok,
                    total_error_requests: *failed,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_busy_upstreams_per_gateway_for_the_retention() {
        let registry = LoadRegistry::new(DEFAULT_INTERVAL);
        let public = ObjectKey::new("shop", "public");
        let web = "outbound|80||web.shop.svc.cluster.local";
        registry.record(
            "gw-1",
            &public,
            &[stats(web, &[(7, 1), (2, 0)]), stats("idle", &[(0, 0)])],
            1_000,
        );
        assert_eq!(
            registry.recent("gw-1", &public, |_| true),
            [UpstreamLoad {
                upstream: web.to_owned(),
                at_ms: 1_000,
                requests: 10,
                errors: 1
            }]
        );
        // Another gateway's claim to the same node id sees nothing of it.
        assert!(registry
            .recent("gw-1", &ObjectKey::new("shop", "other"), |_| true)
            .is_empty());
        let later = 1_000 + RETENTION.as_millis() as u64 + 1;
        registry.record("gw-2", &public, &[stats(web, &[(1, 0)])], later);
        assert!(registry.recent("gw-1", &public, |_| true).is_empty());
        assert_eq!(registry.recent("gw-2", &public, |_| true).len(), 1);
        assert!(registry
            .recent("gw-2", &public, |l| l.upstream != web)
            .is_empty());
    }
}
