//! Which DestinationRule applies to a cluster, by Istio's lookup order, and what it says: the
//! traffic policy (subset over top level) and the subset's labels.

use super::ClusterRef;
use crate::api::istio::TrafficPolicy;
use crate::core::expand::registry::RegisteredService;
use crate::core::expand::ClusterView;
use crate::core::model::export::is_exported;

/// The DestinationRule policy for a cluster: the rule found by Istio's lookup order (client
/// namespace, then the service's namespace, then any), with the subset's policy laid over the
/// top-level one field by field.
pub fn policy_for(
    view: &ClusterView<'_>,
    service: &RegisteredService<'_>,
    cluster_ref: &ClusterRef,
) -> TrafficPolicy {
    let Some(rule) = destination_rule(
        view,
        &service.hostname,
        &cluster_ref.client_namespace,
        &service.key.namespace,
    ) else {
        return TrafficPolicy::default();
    };
    let mut policy = rule.traffic_policy.clone().unwrap_or_default();
    if let Some(subset) = rule.subsets.iter().find(|s| s.name == cluster_ref.subset) {
        if let Some(sp) = &subset.traffic_policy {
            if sp.load_balancer.is_some() {
                policy.load_balancer = sp.load_balancer.clone();
            }
            if sp.connection_pool.is_some() {
                policy.connection_pool = sp.connection_pool.clone();
            }
            if sp.outlier_detection.is_some() {
                policy.outlier_detection = sp.outlier_detection.clone();
            }
        }
    }
    policy
}

/// The DestinationRule for `host` as Istio looks it up: among rules exported to the client
/// (gateway) namespace, the client's own namespace first, then the service's, then the root
/// namespace.
pub fn destination_rule<'m>(
    view: &ClusterView<'m>,
    host: &str,
    client_namespace: &str,
    service_namespace: &str,
) -> Option<&'m crate::api::istio::DestinationRuleSpec> {
    let candidates = view.rules_by_host.get(host);
    let visible = || {
        candidates
            .into_iter()
            .flatten()
            .map(|i| &view.destination_rules[*i])
            .filter(move |dr| {
                is_exported(
                    &dr.spec.export_to,
                    &view.export.destination_rule,
                    &dr.key.namespace,
                    client_namespace,
                )
            })
    };
    [
        client_namespace,
        service_namespace,
        view.export.root_namespace.as_str(),
    ]
    .into_iter()
    .find_map(|namespace| visible().find(|dr| dr.key.namespace == namespace))
    .map(|dr| dr.spec)
}

/// Subset labels from the DestinationRule, if the reference names a subset.
pub fn subset_labels<'m>(
    view: &ClusterView<'m>,
    service: &RegisteredService<'_>,
    cluster_ref: &ClusterRef,
) -> Option<&'m std::collections::BTreeMap<String, String>> {
    if cluster_ref.subset.is_empty() {
        return None;
    }
    destination_rule(
        view,
        &service.hostname,
        &cluster_ref.client_namespace,
        &service.key.namespace,
    )?
    .subsets
    .iter()
    .find(|s| s.name == cluster_ref.subset)
    .map(|s| &s.labels)
}
