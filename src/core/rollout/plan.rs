//! `spec.rollout` → the engine's [`Plan`]: stage clusters resolved against the placement and
//! MemberCluster labels, defaults filled in.

use crate::api::access_point::AccessPoint;
use crate::api::rollout::{RolloutSpec, DEFAULT_PROGRESS_DEADLINE_SECONDS};
use crate::core::model::{Model, ObjectKey};
use crate::core::placement::selector_matches;

use super::health::HealthCheck;
use super::{Plan, Stage};

/// The plan of `spec` over the `placed` clusters (a cluster may also be named before it
/// joins; it is skipped until it is placed).
pub fn plan(spec: &RolloutSpec, model: &Model, placed: &[String]) -> Plan {
    let labels_of = |cluster: &str| {
        model
            .member_clusters
            .get(&ObjectKey::new("", cluster))
            .and_then(|m| m.metadata.labels.clone())
            .unwrap_or_default()
    };
    let stages = spec
        .stages
        .iter()
        .map(|stage| {
            let mut clusters: Vec<String> = stage.clusters.clone();
            if let Some(selector) = &stage.cluster_selector {
                clusters.extend(
                    placed
                        .iter()
                        .filter(|c| !clusters.contains(c))
                        .filter(|c| selector_matches(selector, &labels_of(c)))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
            }
            Stage {
                name: stage.name.clone(),
                clusters,
                max_concurrency: stage
                    .max_concurrency
                    .map(|n| n as usize)
                    .unwrap_or(usize::MAX),
                require_approval: stage.require_approval,
                soak_ms: u64::from(stage.soak_seconds.unwrap_or(0)) * 1000,
            }
        })
        .collect();
    Plan {
        stages,
        progress_deadline_ms: u64::from(
            spec.progress_deadline_seconds
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
        ) * 1000,
        max_failures: spec.max_failures.unwrap_or(0) as usize,
        health: spec.health.as_ref().map(HealthCheck::from),
        revert_failed: spec.on_failure == crate::api::rollout::OnFailure::Revert,
    }
}

/// The rollout settings of an AccessPoint that is rolled out in stages.
pub fn staged(ap: &AccessPoint) -> Option<&RolloutSpec> {
    use crate::api::rollout::RolloutStrategy;
    ap.spec
        .rollout
        .as_ref()
        .filter(|r| r.strategy == RolloutStrategy::Staged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::parse_documents;
    use crate::core::model::InputObject;

    #[test]
    fn stages_take_named_clusters_then_label_matches_with_defaults() {
        let yaml = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east, labels: {tier: edge}}
spec: {zone: z1}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: west, labels: {tier: core}}
spec: {zone: z2}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template: {}
  rollout:
    strategy: Staged
    progressDeadlineSeconds: 30
    stages:
    - {name: canary, clusters: [north], requireApproval: true, soakSeconds: 5}
    - {name: edge, clusterSelector: {matchLabels: {tier: edge}}, maxConcurrency: 1}
"#;
        let mut model = Model::default();
        let mut access_point = None;
        for object in parse_documents(yaml, "default").unwrap() {
            match object {
                InputObject::AccessPoint(ap) => access_point = Some(ap),
                other => {
                    model.apply(other);
                }
            }
        }
        let ap = access_point.unwrap();
        let placed = ["east".to_owned(), "north".to_owned(), "west".to_owned()];
        let plan = plan(staged(&ap).unwrap(), &model, &placed);
        assert_eq!(plan.progress_deadline_ms, 30_000);
        assert_eq!(plan.max_failures, 0);
        let canary = &plan.stages[0];
        assert_eq!(
            (
                canary.clusters.clone(),
                canary.require_approval,
                canary.soak_ms
            ),
            (vec!["north".to_owned()], true, 5000)
        );
        assert_eq!(canary.max_concurrency, usize::MAX);
        let edge = &plan.stages[1];
        assert_eq!(
            (edge.clusters.clone(), edge.max_concurrency),
            (vec!["east".to_owned()], 1)
        );
    }
}
