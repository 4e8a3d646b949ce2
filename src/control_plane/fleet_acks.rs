//! What every gateway proxy has acknowledged: the proxies connected to this replica, plus (in
//! Kubernetes mode) the live reports of the other replicas. Status and DNS health read it.
//! [`Report`] is what one replica tells the others (carried by the Kubernetes adapter
//! `ack_reports`).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::control_plane::xds::server::XdsState;
use crate::core::model::ObjectKey;
use crate::core::observed::{GatewayAck, UpstreamLoad};

/// How long a follower lets acknowledgements accumulate before it looks again.
pub const COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// How often a replica rewrites its report, changed or not.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// Reports older than this are ignored: the replica is gone and its proxies reconnect elsewhere.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

/// One replica's report, as stored in its ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub replica: String,
    /// RFC 3339 time of the last write.
    pub heartbeat: String,
    pub proxies: Vec<ReportedProxy>,
    /// Acknowledged sets, each written once however many proxies hold it (the proxies of one
    /// cluster at one generation share theirs), referenced by [`ReportedProxy::acked_set`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked_sets: Vec<BTreeMap<String, i64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedProxy {
    pub node_id: String,
    /// `namespace/name` of the Gateway it serves.
    pub gateway: String,
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<String>,
    /// With a NACK: the AccessPoint generations the rejected config carried.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nack_of: BTreeMap<String, i64>,
    /// `namespace/name` of each AccessPoint → acknowledged `metadata.generation` (empty when
    /// `acked_set` names the set instead).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acked: BTreeMap<String, i64>,
    /// Index of its acknowledged set in [`Report::acked_sets`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_set: Option<usize>,
    /// Recent load reports on upstreams a staged rollout watches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load: Vec<UpstreamLoad>,
}

impl From<&GatewayAck> for ReportedProxy {
    fn from(ack: &GatewayAck) -> ReportedProxy {
        ReportedProxy {
            node_id: ack.node_id.clone(),
            gateway: ack.gateway.to_string(),
            cluster: ack.cluster.clone(),
            nack: ack.nack.clone(),
            nack_of: ack
                .nack_of
                .iter()
                .flat_map(|set| set.iter())
                .map(|(k, g)| (k.to_string(), *g))
                .collect(),
            acked: ack.acked.iter().map(|(k, g)| (k.to_string(), *g)).collect(),
            acked_set: None,
            load: ack.load.clone(),
        }
    }
}

impl Report {
    /// The report of `acks`, each distinct acknowledged set written once.
    pub fn of(replica: &str, heartbeat: String, acks: &[GatewayAck]) -> Report {
        let mut index: BTreeMap<BTreeMap<String, i64>, usize> = BTreeMap::new();
        let mut acked_sets = Vec::new();
        let proxies = acks
            .iter()
            .map(|ack| {
                let mut proxy = ReportedProxy::from(ack);
                let set = std::mem::take(&mut proxy.acked);
                let at = *index.entry(set.clone()).or_insert_with(|| {
                    acked_sets.push(set);
                    acked_sets.len() - 1
                });
                proxy.acked_set = Some(at);
                proxy
            })
            .collect();
        Report {
            replica: replica.to_owned(),
            heartbeat,
            proxies,
            acked_sets,
        }
    }

    /// The same report, ignoring when it was written.
    pub fn same_content(&self, other: &Report) -> bool {
        self.proxies == other.proxies && self.acked_sets == other.acked_sets
    }
}

impl ReportedProxy {
    fn to_ack(&self, sets: &[BTreeMap<String, i64>]) -> Option<GatewayAck> {
        let acked = match self.acked_set {
            Some(at) => sets.get(at)?,
            None => &self.acked,
        };
        let key = |text: &str| {
            let (namespace, name) = text.split_once('/')?;
            Some(ObjectKey::new(namespace, name))
        };
        Some(GatewayAck {
            node_id: self.node_id.clone(),
            gateway: key(&self.gateway)?,
            cluster: self.cluster.clone(),
            nack: self.nack.clone(),
            // Reports from before this field: not known.
            nack_of: (self.nack.is_some() && !self.nack_of.is_empty()).then(|| {
                Arc::new(
                    self.nack_of
                        .iter()
                        .filter_map(|(k, g)| Some((key(k)?, *g)))
                        .collect(),
                )
            }),
            load: self.load.clone(),
            acked: Arc::new(
                acked
                    .iter()
                    .filter_map(|(k, g)| Some((key(k)?, *g)))
                    .collect(),
            ),
        })
    }
}

impl Report {
    /// The acknowledgements of a report still fresh at `now`.
    pub fn live_acks(&self, now: Timestamp) -> Vec<GatewayAck> {
        let fresh = self
            .heartbeat
            .parse::<Timestamp>()
            .ok()
            .and_then(|at| now.duration_since(at).try_into().ok())
            .is_some_and(|age: std::time::Duration| age < STALE_AFTER);
        if !fresh {
            return Vec::new();
        }
        self.proxies
            .iter()
            .filter_map(|p| p.to_ack(&self.acked_sets))
            .collect()
    }
}

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
