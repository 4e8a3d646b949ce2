//! Revisions: what changed in an AccessPoint's served configuration, by content.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::{AccessPoint, AccessPointSpec};
use crate::core::resources::content_hash;

/// The revision of a spec: a hash of everything but `rollout` (how a change travels is not
/// itself a change to serve). Equal specs have equal revisions on every replica.
pub fn revision_of(spec: &AccessPointSpec) -> String {
    let served = AccessPointSpec {
        rollout: None,
        ..spec.clone()
    };
    // Serializing plain data cannot fail; an empty body would still hash consistently.
    let bytes = serde_json::to_vec(&served).unwrap_or_default();
    content_hash([bytes.as_slice()])[..10].to_owned()
}

/// Which revision of one AccessPoint each cluster is served, as a staged rollout decided it,
/// or as the quarantine held it after the cluster's gateways rejected the current one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pin {
    /// Clusters the rollout has placed, with their revision.
    pub clusters: BTreeMap<String, String>,
    /// The revision of clusters not listed (the last completed one): a cluster joining the
    /// placement mid-rollout is not the first to get an unapproved change.
    pub fallback: String,
    /// The AccessPoint as it was at each revision named above (the current one may be absent).
    pub revisions: BTreeMap<String, Arc<AccessPoint>>,
    /// Clusters served no version at all: gateways there rejected the only one there is.
    pub withheld: BTreeSet<String>,
    /// Why each cluster held back by the quarantine is not served the current revision.
    pub rejected: BTreeMap<String, String>,
}

impl Pin {
    /// The revision `cluster` is served.
    pub fn revision(&self, cluster: &str) -> &str {
        self.clusters.get(cluster).unwrap_or(&self.fallback)
    }
}

/// Pins of every AccessPoint under a staged rollout; others are served their current spec.
pub type Pins = BTreeMap<crate::core::model::ObjectKey, Pin>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rollout::{RolloutSpec, RolloutStrategy};

    #[test]
    fn the_rollout_settings_are_not_part_of_the_revision() {
        let spec = AccessPointSpec::default();
        let staged = AccessPointSpec {
            rollout: Some(RolloutSpec {
                strategy: RolloutStrategy::Staged,
                ..RolloutSpec::default()
            }),
            ..spec.clone()
        };
        assert_eq!(revision_of(&spec), revision_of(&staged));
        let mut changed = spec.clone();
        changed.orphan = true;
        assert_ne!(revision_of(&spec), revision_of(&changed));
        assert_eq!(revision_of(&spec).len(), 10);
    }
}
