//! What every gateway proxy has acknowledged: the proxies connected to this replica, plus (in
//! Kubernetes mode) the live reports of the other replicas. Status and DNS health read it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::ack_reports::{Report, HEARTBEAT};
use crate::core::status::GatewayAck;
use crate::xds::server::XdsState;

/// How long a follower lets acknowledgements accumulate before it looks again.
pub const COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// A follower of the fleet's acknowledgements; each clone follows changes on its own.
#[derive(Clone)]
pub struct FleetAcks {
    xds: Arc<XdsState>,
    identity: String,
    proxies: watch::Receiver<u64>,
    /// Absent in standalone mode: this process sees every proxy.
    reports: Option<watch::Receiver<BTreeMap<String, Report>>>,
}

impl FleetAcks {
    /// Only the proxies connected to this process.
    pub fn local(xds: Arc<XdsState>) -> FleetAcks {
        let proxies = xds.proxies.subscribe();
        FleetAcks {
            xds,
            identity: String::new(),
            proxies,
            reports: None,
        }
    }

    /// This replica's proxies and every other replica's reports.
    pub fn with_reports(
        xds: Arc<XdsState>,
        identity: String,
        reports: watch::Receiver<BTreeMap<String, Report>>,
    ) -> FleetAcks {
        FleetAcks {
            reports: Some(reports),
            identity,
            ..FleetAcks::local(xds)
        }
    }

    /// Every proxy's acknowledgements now; a proxy reported by several replicas counts once,
    /// from the freshest report, and this replica's own view wins.
    pub fn current(&mut self) -> Vec<GatewayAck> {
        self.gather(false)
    }

    /// [`FleetAcks::current`] with each proxy's recent load reports (other replicas report
    /// only the upstreams a staged rollout watches).
    pub fn current_with_load(&mut self) -> Vec<GatewayAck> {
        self.gather(true)
    }

    fn gather(&mut self, with_load: bool) -> Vec<GatewayAck> {
        self.proxies.borrow_and_update();
        let snapshot = self.xds.snapshots.borrow().clone();
        let mut acks = if with_load {
            self.xds.acks_with_load(&snapshot, |_| true)
        } else {
            self.xds.acks(&snapshot)
        };
        let Some(reports) = &mut self.reports else {
            return acks;
        };
        let reports = reports.borrow_and_update();
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut remote: Vec<(&str, GatewayAck)> = reports
            .values()
            .filter(|r| r.replica != self.identity)
            .flat_map(|r| {
                r.live_acks(now).into_iter().map(move |mut a| {
                    if !with_load {
                        a.load.clear();
                    }
                    (r.heartbeat.as_str(), a)
                })
            })
            .collect();
        remote.sort_by(|a, b| b.0.cmp(a.0));
        for (_, ack) in remote {
            if !acks.iter().any(|a| a.node_id == ack.node_id) {
                acks.push(ack);
            }
        }
        acks
    }

    /// Resolves when a proxy's state or a report changed, or (with reports) a heartbeat
    /// period passed, since reports of vanished replicas expire without any event. A burst of
    /// changes (thousands of proxies acknowledging one push) resolves once: it waits
    /// [`COALESCE`] after the first.
    pub async fn changed(&mut self) {
        self.first_change().await;
        tokio::time::sleep(COALESCE).await;
    }

    async fn first_change(&mut self) {
        let proxies = async {
            if self.proxies.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        };
        match &mut self.reports {
            None => proxies.await,
            Some(reports) => {
                let reports = async {
                    if reports.changed().await.is_err() {
                        std::future::pending::<()>().await
                    }
                };
                tokio::select! {
                    _ = proxies => {}
                    _ = reports => {}
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
        }
    }
}
