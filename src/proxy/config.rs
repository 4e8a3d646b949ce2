//! What the proxy serves: the resources it accepted, compiled, and the snapshot of them that
//! requests read. A snapshot is rebuilt whole after every accepted response and swapped in by
//! pointer, so a request sees one consistent config from start to end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::loads::{Counts, Loads};
use super::stats::{ClusterMetrics, Stats};
use crate::core::dataplane::balancer::{Assignment, Balancer, ClusterPlan, Discovery};
use crate::core::dataplane::listeners::ListenerPlan;
use crate::core::dataplane::routes::RouteTable;
use crate::core::dataplane::secrets::SecretPlan;

/// The accepted resources of each type, compiled, with the version of each type.
#[derive(Debug, Default)]
pub struct Accepted {
    pub listeners: BTreeMap<String, ListenerPlan>,
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    pub clusters: BTreeMap<String, ClusterPlan>,
    /// EDS assignments by cluster name, and DNS clusters' resolved endpoints.
    pub assignments: BTreeMap<String, Assignment>,
    pub secrets: BTreeMap<String, SecretPlan>,
    pub versions: BTreeMap<&'static str, String>,
    /// The accepted resources as received, by type and name: what the config cache keeps.
    pub raw: BTreeMap<&'static str, BTreeMap<String, xds_api::pb::google::protobuf::Any>>,
}

/// One cluster as requests use it.
#[derive(Debug)]
pub struct Upstream {
    pub plan: ClusterPlan,
    pub balancer: Balancer,
    pub metrics: ClusterMetrics,
    /// Its requests since the last load report.
    pub load: Arc<Counts>,
}

/// The snapshot requests read.
#[derive(Debug, Default)]
pub struct Config {
    pub listeners: BTreeMap<String, ListenerPlan>,
    pub routes: HashMap<String, Arc<RouteTable>>,
    pub clusters: HashMap<String, Arc<Upstream>>,
    /// TLS of each (listener, chain) whose secrets have arrived.
    pub tls: HashMap<(String, usize), Arc<tokio_rustls::rustls::ServerConfig>>,
    pub versions: BTreeMap<&'static str, String>,
}

impl Config {
    /// A snapshot of `accepted`. A cluster is usable once its endpoints arrived (EDS) or were
    /// resolved (DNS); until then requests for it get 503, as for an unknown cluster.
    pub fn build(accepted: &Accepted, stats: &Stats, loads: &Loads) -> Config {
        let clusters = accepted
            .clusters
            .iter()
            .filter_map(|(name, plan)| {
                let assignment = match &plan.discovery {
                    Discovery::Static(assignment) => assignment,
                    Discovery::Eds | Discovery::Dns(_) => accepted.assignments.get(name)?,
                };
                let upstream = Upstream {
                    plan: plan.clone(),
                    balancer: Balancer::new(plan, assignment),
                    metrics: stats.cluster(name),
                    load: loads.cluster(name),
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
