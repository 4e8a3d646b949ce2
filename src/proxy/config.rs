//! What the proxy serves: the resources it accepted, compiled, and the snapshot of them that
//! requests read. A snapshot is rebuilt whole after every accepted response and swapped in by
//! pointer, so a request sees one consistent config from start to end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::breakers::Breakers;

use super::loads::{Counts, Loads};
use super::stats::{ClusterMetrics, Stats};
use crate::core::dataplane::balancer::{Assignment, Balancer, ClusterPlan, Discovery, Endpoint};
use crate::core::dataplane::listeners::ListenerPlan;
use crate::core::dataplane::outlier::{Outcome, OutlierDetector};
use crate::core::dataplane::routes::RouteTable;
use crate::core::dataplane::FastMap;
use crate::runtime::xds_client::gateway::GatewayResources;

/// The accepted resources of each type, compiled, with the version of each type (and, in
/// `assignments`, DNS clusters' resolved endpoints).
pub type Accepted = GatewayResources<Arc<RouteTable>>;

/// One cluster as requests use it.
#[derive(Debug)]
pub struct Upstream {
    pub plan: ClusterPlan,
    assignment: Assignment,
    /// Shared with the same cluster in the configs before and after this one, so that an
    /// ejection seen by a request of any of them rebalances the one in use; rebuilt only when
    /// the cluster, its endpoints or its ejections change.
    pub balancer: Arc<ArcSwap<Balancer>>,
    pub metrics: ClusterMetrics,
    /// Its requests since the last load report.
    pub load: Arc<Counts>,
    /// Its outlier detection, carried from config to config while the cluster has it.
    outliers: Option<Arc<Mutex<Outliers>>>,
    /// Its circuit breakers, carried from config to config while its limits stay.
    pub breakers: Arc<Breakers>,
    /// How its connections are made and reused.
    pub settings: super::upstream::Settings,
}

/// A cluster's outlier detector, with the cluster and endpoints of the newest config, which
/// its balancer is rebuilt from when the ejected set changes.
#[derive(Debug)]
struct Outliers {
    detector: OutlierDetector,
    plan: ClusterPlan,
    assignment: Assignment,
}

impl Upstream {
    /// Whether attempts' outcomes are wanted ([`Upstream::record`]).
    pub fn detects_outliers(&self) -> bool {
        self.outliers.is_some()
    }

    /// Records an attempt's outcome on `endpoint` (an [`Endpoint::id`]); an ejection rebuilds
    /// the balancer at once.
    pub fn record(&self, endpoint: &str, outcome: Outcome, now: Duration) {
        let Some(outliers) = &self.outliers else {
            return;
        };
        let mut outliers = outliers.lock().unwrap_or_else(|e| e.into_inner());
        if outliers.detector.record(endpoint, outcome, now) {
            tracing::info!(cluster = %self.plan.name, endpoint, "outlier ejected");
            self.rebalance(&outliers);
        }
    }

    /// The interval's outlier work; brings back endpoints whose ejection ended.
    pub fn tick(&self, now: Duration) {
        let Some(outliers) = &self.outliers else {
            return;
        };
        let mut outliers = outliers.lock().unwrap_or_else(|e| e.into_inner());
        if outliers.detector.tick_if_due(now) {
            self.rebalance(&outliers);
        }
    }

    /// The endpoints outlier detection ejected (for `/config_dump`).
    pub fn ejected(&self) -> BTreeSet<String> {
        ejected_by(self.outliers.as_ref())
    }

    fn rebalance(&self, outliers: &Outliers) {
        let ejected = outliers.detector.ejected();
        let balancer = Balancer::with_ejected(&outliers.plan, &outliers.assignment, &ejected);
        self.balancer.store(Arc::new(balancer));
    }
}

/// The snapshot requests read.
#[derive(Debug, Default)]
pub struct Config {
    pub listeners: BTreeMap<String, ListenerPlan>,
    pub routes: FastMap<String, Arc<RouteTable>>,
    pub clusters: FastMap<String, Arc<Upstream>>,
    /// TLS of each (listener, chain) whose secrets have arrived.
    pub tls: HashMap<(String, usize), Arc<tokio_rustls::rustls::ServerConfig>>,
    pub versions: BTreeMap<&'static str, String>,
}

impl Config {
    /// A snapshot of `accepted`. A cluster is usable once its endpoints arrived (EDS) or were
    /// resolved (DNS); until then requests for it get 503, as for an unknown cluster.
    /// `previous` hands on its clusters' balancers, outlier state, breakers and metrics.
    pub fn build(accepted: &Accepted, stats: &Stats, loads: &Loads, previous: &Config) -> Config {
        let clusters = accepted
            .clusters
            .iter()
            .filter_map(|(name, plan)| {
                let assignment = match &plan.discovery {
                    Discovery::Static(assignment) => assignment,
                    Discovery::Eds | Discovery::Dns(_) => accepted.assignments.get(name)?,
                };
                let before = previous.clusters.get(name);
                let outliers = plan.outlier.clone().map(|policy| {
                    let ids = assignment
                        .localities
                        .iter()
                        .flat_map(|l| l.endpoints.iter().map(Endpoint::id))
                        .collect();
                    let carried = before.and_then(|u| u.outliers.clone());
                    let outliers = carried.unwrap_or_else(|| {
                        Arc::new(Mutex::new(Outliers {
                            detector: OutlierDetector::new(policy.clone()),
                            plan: plan.clone(),
                            assignment: assignment.clone(),
                        }))
                    });
                    {
                        let mut state = outliers.lock().unwrap_or_else(|e| e.into_inner());
                        state.detector.update(policy, &ids);
                        state.plan = plan.clone();
                        state.assignment = assignment.clone();
                    }
                    outliers
                });
                let ejected = ejected_by(outliers.as_ref());
                // The balancer (with its round-robin turn and requests in flight) stays while
                // the cluster and its endpoints do; a Maglev table is not rebuilt for nothing.
                let balancer = match before {
                    Some(u) if u.plan == *plan && u.assignment == *assignment => u.balancer.clone(),
                    Some(u) => {
                        let rebuilt = Balancer::with_ejected(plan, assignment, &ejected);
                        u.balancer.store(Arc::new(rebuilt));
                        u.balancer.clone()
                    }
                    None => Arc::new(ArcSwap::from_pointee(Balancer::with_ejected(
                        plan, assignment, &ejected,
                    ))),
                };
                let breakers = before
                    .map(|u| u.breakers.clone())
                    .filter(|b| b.limits() == plan.limits)
                    .unwrap_or_else(|| Arc::new(Breakers::new(plan.limits)));
                let upstream = Upstream {
                    breakers,
                    settings: super::upstream::Settings::of(plan),
                    plan: plan.clone(),
                    assignment: assignment.clone(),
                    balancer,
                    metrics: before.map_or_else(|| stats.cluster(name), |u| u.metrics.clone()),
                    load: before.map_or_else(|| loads.cluster(name), |u| u.load.clone()),
                    outliers,
                };
                Some((name.clone(), Arc::new(upstream)))
            })
            .collect();
        let mut tls = HashMap::new();
        for (name, listener) in &accepted.listeners {
            for (i, chain) in listener.chains.iter().enumerate() {
                let Some(plan) = &chain.tls else { continue };
                match super::tls::server_config(plan, &accepted.secrets) {
                    Ok(config) => {
                        tls.insert((name.clone(), i), config);
                    }
                    // Until its secrets arrive a chain refuses handshakes, as Envoy warms it.
                    Err(error) => {
                        tracing::debug!(listener = %name, chain = i, %error, "TLS chain not ready")
                    }
                }
            }
        }
        Config {
            tls,
            listeners: accepted.listeners.clone(),
            routes: accepted
                .routes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            clusters,
            versions: accepted.versions.clone(),
        }
    }
}

/// The endpoints a cluster's outlier detector (if it has one) holds ejected.
fn ejected_by(outliers: Option<&Arc<Mutex<Outliers>>>) -> BTreeSet<String> {
    outliers
        .map(|o| {
            o.lock()
                .unwrap_or_else(|e| e.into_inner())
                .detector
                .ejected()
        })
        .unwrap_or_default()
}
