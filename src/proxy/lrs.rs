//! Load reports to Meridian (LRS, as Envoy sends them when its bootstrap says so): requests
//! that completed and failed per cluster, every interval Meridian asks for. Staged rollouts'
//! health gates read them, so they work with this proxy as with Envoy.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::loads::Loads;
use crate::runtime::xds_client::bootstrap::Bootstrap;
use crate::runtime::xds_client::connect;

/// Reports until `stopped`, reconnecting (with backoff) when the stream fails.
pub async fn run(bootstrap: Bootstrap, loads: Arc<Loads>, mut stopped: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = tokio::select! {
            result = stream(&bootstrap, &loads) => result,
            _ = crate::runtime::stopped_signal(stopped.clone()) => return,
        };
        if let Err(error) = result {
            tracing::debug!(%error, "load report stream lost");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn stream(bootstrap: &Bootstrap, loads: &Loads) -> Result<(), String> {
    let channel = connect(bootstrap).await.map_err(|e| e.to_string())?;
    let mut client = LoadReportingServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let first = LoadStatsRequest {
        node: Some(bootstrap.node.clone()),
        cluster_stats: Vec::new(),
    };
    tx.send(first).await.map_err(|_| "closed")?;
    let mut responses = client
        .stream_load_stats(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut interval = Duration::from_secs(5);
    loop {
        tokio::select! {
            response = responses.message() => {
                let Some(response) = response.map_err(|e| e.to_string())? else {
                    return Ok(());
                };
                if let Some(d) = response.load_reporting_interval {
                    let asked = Duration::new(u64::try_from(d.seconds).unwrap_or(5), u32::try_from(d.nanos).unwrap_or(0));
                    interval = asked.max(Duration::from_millis(100));
                }
            }
            _ = tokio::time::sleep(interval) => {
                let stats = loads.take(interval);
                if stats.is_empty() {
                    continue;
                }
                let report = LoadStatsRequest { node: None, cluster_stats: stats };
                tx.send(report).await.map_err(|_| "closed")?;
            }
        }
    }
}
