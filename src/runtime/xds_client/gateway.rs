//! What an L7 gateway data plane (`meridian proxy`, `meridian haproxy`) accepts over ADS, and
//! how each response type updates it: clusters (following their EDS names), endpoints and
//! secrets (each on its own), listeners (following their route configurations and secrets,
//! whose entries no listener names any more are dropped) and route configurations, compiled as
//! the data plane needs them (`R`). What does not compile is rejected with its error and keeps
//! its previous version.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;

use super::resources::{
    compile_each, compile_whole_set, follow_by_name, keep_previous, value_of, CLUSTERS, ENDPOINTS,
    LISTENERS, ROUTES, SECRETS,
};
use super::Names;
use crate::core::dataplane::balancer::{Assignment, ClusterPlan, Discovery};
use crate::core::dataplane::listeners::ListenerPlan;
use crate::core::dataplane::secrets::SecretPlan;

/// The accepted resources, compiled, with the version of each type.
#[derive(Clone, Debug)]
pub struct GatewayResources<R> {
    pub listeners: BTreeMap<String, ListenerPlan>,
    pub routes: BTreeMap<String, R>,
    pub clusters: BTreeMap<String, ClusterPlan>,
    /// EDS assignments by cluster name (and whatever the data plane adds, such as resolved
    /// DNS clusters).
    pub assignments: BTreeMap<String, Assignment>,
    pub secrets: BTreeMap<String, SecretPlan>,
    pub versions: BTreeMap<&'static str, String>,
    /// The accepted resources as received, by type and name (what a config cache keeps).
    pub raw: BTreeMap<&'static str, BTreeMap<String, Any>>,
}

impl<R> Default for GatewayResources<R> {
    fn default() -> Self {
        GatewayResources {
            listeners: BTreeMap::new(),
            routes: BTreeMap::new(),
            clusters: BTreeMap::new(),
            assignments: BTreeMap::new(),
            secrets: BTreeMap::new(),
            versions: BTreeMap::new(),
            raw: BTreeMap::new(),
        }
    }
}

impl<R> GatewayResources<R> {
    /// A CDS response; returns the types to follow (EDS, when its names changed). Assignments
    /// of clusters that are no longer EDS clusters are dropped.
    pub fn apply_clusters(
        &mut self,
        resources: &[Any],
        names: &mut Names,
        errors: &mut Vec<String>,
    ) -> Vec<&'static str> {
        let old_raw = self.raw.remove(CLUSTERS).unwrap_or_default();
        let (clusters, raw) = compile_whole_set(
            resources,
            CLUSTERS,
            (&self.clusters, &old_raw),
            |c: &Cluster| c.name.clone(),
            |c| ClusterPlan::compile(c).map_err(|e| e.to_string()),
            errors,
        );
        self.clusters = clusters;
        self.raw.insert(CLUSTERS, raw);
        let eds: BTreeSet<String> = self
            .clusters
            .values()
            .filter(|p| p.discovery == Discovery::Eds)
            .map(|p| p.name.clone())
            .collect();
        self.assignments.retain(|name, _| eds.contains(name));
        self.raw
            .entry(ENDPOINTS)
            .or_default()
            .retain(|name, _| eds.contains(name));
        follow_by_name(ENDPOINTS, eds, names).into_iter().collect()
    }

    /// An EDS response.
    pub fn apply_endpoints(&mut self, resources: &[Any], errors: &mut Vec<String>) {
        compile_each(
            resources,
            ENDPOINTS,
            |cla: ClusterLoadAssignment| Assignment::compile_named(cla).map_err(|e| e.to_string()),
            (
                &mut self.assignments,
                self.raw.entry(ENDPOINTS).or_default(),
            ),
            errors,
        );
    }

    /// An SDS response.
    pub fn apply_secrets(&mut self, resources: &[Any], errors: &mut Vec<String>) {
        compile_each(
            resources,
            SECRETS,
            |secret: Secret| SecretPlan::compile(&secret).map_err(|e| e.to_string()),
            (&mut self.secrets, self.raw.entry(SECRETS).or_default()),
            errors,
        );
    }

    /// An LDS response. `apply` puts the compiled listeners in place (binding them, or
    /// checking they could be bound) and returns those it could not, with why: each keeps its
    /// previous version. Returns the types to follow (RDS, SDS).
    pub fn apply_listeners(
        &mut self,
        resources: &[Any],
        names: &mut Names,
        errors: &mut Vec<String>,
        apply: impl FnOnce(&BTreeMap<String, ListenerPlan>) -> Vec<(String, String)>,
    ) -> Vec<&'static str> {
        let old_raw = self.raw.remove(LISTENERS).unwrap_or_default();
        let (mut plans, mut raw) = compile_whole_set(
            resources,
            LISTENERS,
            (&self.listeners, &old_raw),
            |l: &Listener| l.name.clone(),
            |l| ListenerPlan::compile(l).map_err(|e| e.to_string()),
            errors,
        );
        keep_previous(
            apply(&plans),
            ("Listener", "address"),
            (&mut plans, &mut raw),
            (&self.listeners, &old_raw),
            errors,
        );
        self.listeners = plans;
        self.raw.insert(LISTENERS, raw);
        let routes: BTreeSet<String> = self
            .listeners
            .values()
            .flat_map(|l| l.route_configs().map(str::to_owned))
            .collect();
        let secrets: BTreeSet<String> = self
            .listeners
            .values()
            .flat_map(|l| l.secret_names().map(str::to_owned))
            .collect();
        self.secrets.retain(|name, _| secrets.contains(name));
        self.raw
            .entry(SECRETS)
            .or_default()
            .retain(|name, _| secrets.contains(name));
        self.routes.retain(|name, _| routes.contains(name));
        self.raw
            .entry(ROUTES)
            .or_default()
            .retain(|name, _| routes.contains(name));
        [
            follow_by_name(ROUTES, routes, names),
            follow_by_name(SECRETS, secrets, names),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// An RDS response: each route configuration compiled by `compile` from its index in the
    /// response and its encoding (seeing the others accepted) into its name and plan,
    /// replacing its previous version, or rejected with its error.
    pub fn apply_routes(
        &mut self,
        resources: &[Any],
        errors: &mut Vec<String>,
        mut compile: impl FnMut(usize, &[u8], &BTreeMap<String, R>) -> Result<(String, R), String>,
    ) {
        for (index, any) in resources.iter().enumerate() {
            let compiled =
                value_of(any, ROUTES).and_then(|value| compile(index, value, &self.routes));
            match compiled {
                Ok((name, plan)) => {
                    self.raw
                        .entry(ROUTES)
                        .or_default()
                        .insert(name.clone(), any.clone());
                    self.routes.insert(name, plan);
                }
                Err(error) => errors.push(error),
            }
        }
    }
}
