//! I/O plumbing every program shares: listeners that bound connections and handshakes, the
//! budget that bounds what input can make us log, mutual TLS to Meridian with its identity
//! pinned, shutdown signalling, and the ADS client the data planes share ([`xds_client`]:
//! the protocol only; what resources mean is each program's). Nothing here knows about
//! Kubernetes or the model.

pub mod connections;
pub mod kube_client;
pub mod log_budget;
pub mod pinned_tls;
pub mod xds_client;

use tokio::sync::watch;

/// Resolves when `stopped` turns true (or its sender is gone).
pub async fn stopped_signal(mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow_and_update() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

/// A data plane's `/stats/prometheus`: its registry as Prometheus text.
pub fn prometheus_response(
    registry: &prometheus_client::registry::Registry,
) -> (axum::http::StatusCode, String) {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => (axum::http::StatusCode::OK, text),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
