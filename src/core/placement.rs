//! Which clusters an AccessPoint is placed on.
//!
//! Precedence: an absent placement means the hub's own `local` cluster; `excludeClusters`
//! always wins; a cluster is selected when it is listed in `clusters`, or its zone is in
//! `zones`, or its labels match `clusterSelector`, or it runs the `followDeployment`
//! Deployment. A placement with none of these selects nothing.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use k8s_openapi::api::apps::v1::Deployment;

use super::model::{Model, ObjectKey, ObjectMap};
use crate::api::access_point::Placement;
use crate::api::{AccessPoint, LOCAL_CLUSTER};

/// What placement needs to know about a cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterFacts<'a> {
    pub name: &'a str,
    pub zone: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
    /// Every known Deployment (the model's map), for `followDeployment`.
    pub deployments: Option<&'a ObjectMap<Deployment>>,
}

impl<'a> ClusterFacts<'a> {
    /// What the model knows about `cluster`.
    pub fn of(model: &'a Model, cluster: &'a str) -> ClusterFacts<'a> {
        let member = model.member_clusters.get(&ObjectKey::new("", cluster));
        ClusterFacts {
            name: cluster,
            zone: member.map(|m| m.spec.zone.as_str()).unwrap_or_default(),
            labels: member.and_then(|m| m.metadata.labels.as_ref()),
            deployments: Some(&model.deployments),
        }
    }

    /// Whether Deployment `namespace/name` exists in this cluster.
    fn runs(&self, namespace: &str, name: &str) -> bool {
        let key = if self.name == LOCAL_CLUSTER {
            ObjectKey::new(namespace, name)
        } else {
            ObjectKey::new(namespace, format!("{name}@{}", self.name))
        };
        self.deployments.is_some_and(|d| d.contains_key(&key))
    }
}

/// Whether `placement` (of an AccessPoint in `namespace`) selects `cluster`.
pub fn is_placed(
    placement: Option<&Placement>,
    namespace: &str,
    cluster: &ClusterFacts<'_>,
) -> bool {
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
        || placement
            .follow_deployment
            .as_ref()
            .is_some_and(|d| cluster.runs(d.namespace.as_deref().unwrap_or(namespace), &d.name))
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

/// The clusters `ap` is placed on.
pub fn placed_clusters(model: &Model, ap: &AccessPoint) -> Vec<String> {
    model
        .cluster_names()
        .into_iter()
        .filter(|name| {
            let namespace = ap.metadata.namespace.as_deref().unwrap_or_default();
            is_placed(
                ap.spec.placement.as_ref(),
                namespace,
                &ClusterFacts::of(model, name),
            )
        })
        .collect()
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
        assert!(is_placed(None, "default", &local));
        assert!(!is_placed(None, "default", &east));
        assert!(
            !is_placed(Some(&Placement::default()), "default", &local),
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
            deployments: None,
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
        assert!(is_placed(Some(&placement), "default", &east));
        placement.exclude_clusters = vec!["east".into()];
        assert!(!is_placed(Some(&placement), "default", &east));
    }

    #[test]
    fn follow_deployment_places_where_the_deployment_runs() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {meridian.dev/cluster: east}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: other, namespace: shop, labels: {meridian.dev/cluster: west}}
"#;
        let model = crate::core::test_support::model_of(yaml, "shop");
        let placement = Placement {
            follow_deployment: Some(crate::api::access_point::DeploymentRef {
                name: "web".into(),
                namespace: None,
            }),
            exclude_clusters: vec!["local".into()],
            ..Default::default()
        };
        let placed =
            |cluster: &str| is_placed(Some(&placement), "shop", &ClusterFacts::of(&model, cluster));
        assert!(placed("east"));
        assert!(!placed("west"), "another Deployment");
        assert!(!placed("local"), "excluded, though it runs there");
        assert!(!is_placed(
            Some(&placement),
            "elsewhere",
            &ClusterFacts::of(&model, "east")
        ));
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
