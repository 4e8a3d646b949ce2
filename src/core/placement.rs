//! Which clusters an AccessPoint is placed on.
//!
//! Precedence: an absent placement means the hub's own `local` cluster; `excludeClusters`
//! always wins; a cluster is selected when it is listed in `clusters`, or its zone is in
//! `zones`, or its labels match `clusterSelector`. A placement with none of these selects nothing.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::access_point::Placement;
use crate::api::LOCAL_CLUSTER;

/// What placement needs to know about a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts<'a> {
    pub name: &'a str,
    pub zone: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

pub fn is_placed(placement: Option<&Placement>, cluster: &ClusterFacts<'_>) -> bool {
    let Some(placement) = placement else {
        return cluster.name == LOCAL_CLUSTER;
    };
    if placement.exclude_clusters.iter().any(|c| c == cluster.name) {
        return false;
    }
    let empty = BTreeMap::new();
    let labels = cluster.labels.unwrap_or(&empty);
    placement.clusters.iter().any(|c| c == cluster.name)
        || (!cluster.zone.is_empty() && placement.zones.iter().any(|z| z == cluster.zone))
        || placement
            .cluster_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, labels))
}

/// Kubernetes label selector semantics: all `matchLabels` and all `matchExpressions` must hold.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|expr| {
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::test_support::labels;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn absent_placement_means_local_only() {
        let local = ClusterFacts {
            name: "local",
            ..Default::default()
        };
        let east = ClusterFacts {
            name: "east",
            ..Default::default()
        };
        assert!(is_placed(None, &local));
        assert!(!is_placed(None, &east));
        assert!(
            !is_placed(Some(&Placement::default()), &local),
            "empty placement selects none"
        );
    }

    #[test]
    fn exclusion_beats_list_zone_and_selector() {
        let l = labels(&[("tier", "edge")]);
        let east = ClusterFacts {
            name: "east",
            zone: "z1",
            labels: Some(&l),
        };
        let mut placement = Placement {
            clusters: vec!["east".into()],
            zones: vec!["z1".into()],
            cluster_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("tier", "edge")])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(is_placed(Some(&placement), &east));
        placement.exclude_clusters = vec!["east".into()];
        assert!(!is_placed(Some(&placement), &east));
    }

    #[test]
    fn selector_expressions() {
        let l = labels(&[("env", "prod"), ("tier", "edge")]);
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let sel = |r: LabelSelectorRequirement| LabelSelector {
            match_expressions: Some(vec![r]),
            match_labels: None,
        };
        assert!(selector_matches(
            &sel(req("env", "In", &["prod", "stage"])),
            &l
        ));
        assert!(!selector_matches(&sel(req("env", "NotIn", &["prod"])), &l));
        assert!(selector_matches(&sel(req("zone", "NotIn", &["a"])), &l));
        assert!(selector_matches(&sel(req("tier", "Exists", &[])), &l));
        assert!(!selector_matches(
            &sel(req("tier", "DoesNotExist", &[])),
            &l
        ));
        assert!(!selector_matches(&sel(req("tier", "Bogus", &[])), &l));
    }
}
