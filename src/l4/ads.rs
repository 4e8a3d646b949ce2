//! What `meridian l4` does with what Meridian sends over ADS (the protocol is the shared
//! client's, `runtime::xds_client`): clusters and listeners by wildcard, endpoints by the EDS
//! clusters' names. What compiles is applied — listeners bound, clusters rebuilt with the
//! health they had — and one snapshot published per response; what does not is rejected
//! naming resource and field, and its previous version keeps serving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

use super::listeners::Listeners;
use super::stats::Update;
use super::upstream::Upstream;
use super::{L4State, Snapshot};
use crate::core::dataplane::balancer::Assignment;
use crate::core::dataplane::l4::{L4ClusterPlan, L4ListenerPlan};
use crate::runtime::log_budget::bounded;
use crate::runtime::xds_client::resources::{
    compile_each, compile_whole_set, follow_by_name, keep_previous, short_name, CLUSTERS,
    ENDPOINTS, LISTENERS,
};
use crate::runtime::xds_client::{Applied, Names, Subscriber};

const TYPES: [&str; 3] = [CLUSTERS, ENDPOINTS, LISTENERS];

/// The accepted resources, compiled, with the version of each type.
#[derive(Debug, Default)]
struct Accepted {
    listeners: BTreeMap<String, L4ListenerPlan>,
    clusters: BTreeMap<String, L4ClusterPlan>,
    assignments: BTreeMap<String, Assignment>,
    versions: BTreeMap<&'static str, String>,
    raw: BTreeMap<&'static str, BTreeMap<String, Any>>,
}

pub struct L4Subscriber {
    state: Arc<L4State>,
    listeners: Listeners,
    accepted: Accepted,
    /// Ends the clusters' health checks when the node stops.
    stop: watch::Sender<bool>,
}

impl L4Subscriber {
    pub fn new(state: Arc<L4State>, fd_limit: u64, udp_flows: usize) -> L4Subscriber {
        // A fourth of the open-file limit stays free; each relayed connection holds two
        // descriptors, each UDP flow one: half the rest for each.
        let usable = fd_limit.saturating_sub((fd_limit / 4).max(32)) / 2;
        let max_connections = usize::try_from(usable / 2).unwrap_or(usize::MAX).max(1);
        let udp_flows = udp_flows.min(usize::try_from(usable).unwrap_or(usize::MAX).max(1));
        L4Subscriber {
            state,
            listeners: Listeners::new(max_connections, udp_flows),
            accepted: Accepted::default(),
            stop: watch::channel(false).0,
        }
    }

    /// The snapshot of what is accepted: clusters unchanged in plan and endpoints are the same
    /// objects as before (their checks go on); changed ones are rebuilt carrying their health.
    fn publish(&self) {
        let previous = self.state.snapshot.load_full();
        let mut clusters = HashMap::new();
        for (name, plan) in &self.accepted.clusters {
            let assignment = match &plan.static_assignment {
                Some(assignment) => Some(assignment.clone()),
                None => self.accepted.assignments.get(name).cloned(),
            };
            let old = previous.clusters.get(name);
            let upstream = match old {
                Some(old) if old.plan == *plan && old.assignment == assignment => old.clone(),
                _ => {
                    let upstream = Arc::new(Upstream::new(
                        plan.clone(),
                        assignment,
                        old.map(Arc::as_ref),
                        &self.state.stats,
                    ));
                    super::health::spawn_checks(&upstream, &self.state, self.stop.subscribe());
                    upstream
                }
            };
            clusters.insert(name.clone(), upstream);
        }
        self.state.snapshot.store(Arc::new(Snapshot {
            versions: self.accepted.versions.clone(),
            listeners: self.accepted.listeners.clone(),
            clusters,
        }));
    }

    fn apply_clusters(&mut self, response: &DiscoveryResponse, names: &mut Names) -> Applied {
        let mut errors = Vec::new();
        let accepted = &mut self.accepted;
        let old_raw = accepted.raw.remove(CLUSTERS).unwrap_or_default();
        let (clusters, raw) = compile_whole_set(
            &response.resources,
            CLUSTERS,
            (&accepted.clusters, &old_raw),
            |c: &Cluster| c.name.clone(),
            |c| L4ClusterPlan::compile(c).map_err(|e| e.to_string()),
            &mut errors,
        );
        accepted.clusters = clusters;
        accepted.raw.insert(CLUSTERS, raw);
        let eds: BTreeSet<String> = accepted
            .clusters
            .values()
            .filter(|p| p.static_assignment.is_none())
            .map(|p| p.name.clone())
            .collect();
        accepted.assignments.retain(|name, _| eds.contains(name));
        accepted
            .raw
            .entry(ENDPOINTS)
            .or_default()
            .retain(|name, _| eds.contains(name));
        Applied {
            errors,
            follow: follow_by_name(ENDPOINTS, eds, names).into_iter().collect(),
        }
    }

    fn apply_endpoints(&mut self, response: &DiscoveryResponse) -> Applied {
        let mut errors = Vec::new();
        let accepted = &mut self.accepted;
        compile_each(
            &response.resources,
            ENDPOINTS,
            |cla: ClusterLoadAssignment| Assignment::compile_named(cla).map_err(|e| e.to_string()),
            (
                &mut accepted.assignments,
                accepted.raw.entry(ENDPOINTS).or_default(),
            ),
            &mut errors,
        );
        Applied {
            errors,
            follow: Vec::new(),
        }
    }

    fn apply_listeners(&mut self, response: &DiscoveryResponse) -> Applied {
        let mut errors = Vec::new();
        let accepted = &mut self.accepted;
        let old_raw = accepted.raw.remove(LISTENERS).unwrap_or_default();
        let (mut plans, mut raw) = compile_whole_set(
            &response.resources,
            LISTENERS,
            (&accepted.listeners, &old_raw),
            |l: &Listener| l.name.clone(),
            |l| L4ListenerPlan::compile(l).map_err(|e| e.to_string()),
            &mut errors,
        );
        // Binding can fail (not bindable, taken): the listener it replaces keeps serving.
        keep_previous(
            self.listeners.reconcile(&plans, &self.state),
            ("Listener", "address"),
            (&mut plans, &mut raw),
            (&accepted.listeners, &old_raw),
            &mut errors,
        );
        accepted.listeners = plans;
        accepted.raw.insert(LISTENERS, raw);
        Applied {
            errors,
            follow: Vec::new(),
        }
    }
}

impl Subscriber for L4Subscriber {
    fn types(&self) -> &'static [&'static str] {
        &TYPES
    }

    fn wildcard(&self) -> &'static [&'static str] {
        &[CLUSTERS, LISTENERS]
    }

    async fn apply(
        &mut self,
        kind: &'static str,
        response: &DiscoveryResponse,
        names: &mut Names,
    ) -> Applied {
        match kind {
            CLUSTERS => self.apply_clusters(response, names),
            ENDPOINTS => self.apply_endpoints(response),
            LISTENERS => self.apply_listeners(response),
            _ => Applied::default(),
        }
    }

    fn settle(&mut self, kind: &'static str, version: &str, applied: &Applied) {
        let result = if applied.errors.is_empty() {
            "ack"
        } else {
            "nack"
        };
        let update = Update {
            r#type: short_name(kind),
            result,
        };
        self.state.stats.config_updates.get_or_create(&update).inc();
        if applied.errors.is_empty() {
            self.accepted.versions.insert(kind, version.to_owned());
        } else {
            tracing::warn!(r#type = kind, version = %bounded(version), errors = %bounded(&applied.errors.join("; ")), "rejected (NACK); the rest of the response is applied");
        }
        self.publish();
    }

    fn initialized(&mut self) {
        self.state.mark_ready();
    }

    fn version(&self, kind: &str) -> String {
        self.accepted
            .versions
            .get(kind)
            .cloned()
            .unwrap_or_default()
    }

    async fn restore(&mut self) {}

    fn stop(&mut self) {
        self.listeners.stop_all();
        self.stop.send_replace(true);
    }
}
