//! Envoy's load reporting service (LRS, `envoy.service.load_stats.v3`): every gateway streams,
//! per reporting interval, how many requests each upstream completed and how many failed;
//! [`LoadRegistry`](super::load_stats::LoadRegistry) keeps them.
//!
//! The bootstrap `meridian bootstrap` prints enables it (`cluster_manager.load_stats_config`);
//! Meridian answers the first request with `send_all_clusters` and its reporting interval.

use std::sync::Arc;

use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_server::{
    LoadReportingService, LoadReportingServiceServer,
};
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::identity::{verified_identity, IdentityError};
use super::load_stats::now_ms;
use super::server::{BoxStream, XdsState};
use crate::core::model::ObjectKey;

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
    let interval = state.loads.interval();
    let response = LoadStatsResponse {
        send_all_clusters: true,
        load_reporting_interval: Some(envoy_types::pb::google::protobuf::Duration {
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
