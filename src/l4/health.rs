//! The I/O of health: active checks of every gateway of a cluster each interval (a TCP
//! connect, or an HTTP GET whose status must be expected, within the timeout), their results
//! fed to the cluster's tracker; and outlier detection's interval work for every cluster.
//!
//! A cluster's checks run while its [`Upstream`] is in use: when a new config replaces it, the
//! loop of the old one ends and the new one's starts (the health it knew carried over).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::upstream::Upstream;
use super::L4State;
use crate::core::dataplane::l4::health::{CheckKind, HealthCheckPlan};

/// Checks `upstream`'s gateways every interval while it is in use and the node runs.
pub fn spawn_checks(
    upstream: &Arc<Upstream>,
    state: &Arc<L4State>,
    stopped: watch::Receiver<bool>,
) {
    let Some(plan) = upstream.plan.health_check.clone() else {
        return;
    };
    let upstream = Arc::downgrade(upstream);
    let state = Arc::downgrade(state);
    tokio::spawn(async move {
        tokio::select! {
            _ = check_loop(upstream, state, plan) => {}
            _ = crate::runtime::stopped_signal(stopped) => {}
        }
    });
}

async fn check_loop(upstream: Weak<Upstream>, state: Weak<L4State>, plan: HealthCheckPlan) {
    let mut ticks = tokio::time::interval(plan.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(gateways) = upstream.upgrade().map(|u| u.all_gateways()) else {
            return;
        };
        let mut checks = JoinSet::new();
        for gateway in gateways {
            let plan = plan.clone();
            let host = upstream
                .upgrade()
                .map(|u| u.plan.name.clone())
                .unwrap_or_default();
            checks.spawn(async move {
                let passed = check(&plan, gateway.address, &host).await;
                (gateway.id, passed)
            });
        }
        while let Some(result) = checks.join_next().await {
            let (Some(upstream), Some(state), Ok((id, passed))) =
                (upstream.upgrade(), state.upgrade(), result)
            else {
                continue;
            };
            upstream.record_check(&id, passed, &state.stats);
        }
    }
}

/// One check of the gateway at `address`: whether it passed within the timeout.
pub async fn check(plan: &HealthCheckPlan, address: SocketAddr, cluster: &str) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(address).await.ok()?;
        match &plan.kind {
            CheckKind::Tcp => Some(true),
            CheckKind::Http { host, path, .. } => {
                let host = if host.is_empty() { cluster } else { host };
                let status = http_status(stream, host, path).await?;
                Some(plan.expects(status))
            }
        }
    };
    matches!(
        tokio::time::timeout(plan.timeout, attempt).await,
        Ok(Some(true))
    )
}

async fn http_status(stream: TcpStream, host: &str, path: &str) -> Option<u16> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "meridian-l4-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok();
    connection.abort();
    response.map(|r| r.status().as_u16())
}

/// Outlier detection's interval work for every cluster that has it. Each cluster ticks at its
/// own interval; this only wakes often enough for the shortest.
pub async fn outlier_ticks(state: Arc<L4State>, stopped: watch::Receiver<bool>) {
    let ticks = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let snapshot = state.snapshot.load();
            for upstream in snapshot.clusters.values() {
                upstream.tick(state.clock(), &state.stats);
            }
        }
    };
    tokio::select! {
        _ = ticks => {}
        _ = crate::runtime::stopped_signal(stopped) => {}
    }
}
