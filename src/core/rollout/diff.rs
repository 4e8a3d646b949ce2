//! What a cluster's gateways would be served if it took the AccessPoint's current revision,
//! against what they are served now: per gateway, each listener, route, cluster and endpoint
//! set added, removed or changed, with a unified diff of its xDS JSON. Shadow mode's report,
//! and the preview before approving a stage.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::expand::cluster_view;
use crate::core::json::{config_to_json, JsonError};
use crate::core::model::{Model, ObjectKey};
use crate::core::overrides::refresh_overrides;
use crate::core::refs::ClusterRefs;
use crate::core::translate::{translate, GatewayIdentity, NodeRole};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayDiff {
    pub gateway: String,
    pub cluster: String,
    pub changes: Vec<ResourceChange>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceChange {
    /// LDS, RDS, CDS, EDS or SDS.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    /// Added, Removed or Changed.
    pub change: String,
    /// Unified diff of the resource's xDS JSON (served → candidate).
    pub diff: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("AccessPoint {0} not found")]
    NotFound(ObjectKey),
    #[error("AccessPoint {key} is not placed on cluster {cluster}")]
    NotPlaced { key: ObjectKey, cluster: String },
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// The diff of every gateway serving `key` in `cluster`.
pub fn diff(model: &Model, key: &ObjectKey, cluster: &str) -> Result<Vec<GatewayDiff>, DiffError> {
    let ap = model
        .access_points
        .get(key)
        .ok_or_else(|| DiffError::NotFound(key.clone()))?;
    if !crate::core::placement::placed_clusters(model, ap)
        .iter()
        .any(|c| c == cluster)
    {
        return Err(DiffError::NotPlaced {
            key: key.clone(),
            cluster: cluster.to_owned(),
        });
    }
    let candidate = released(model, key, cluster);
    let served_refs = ClusterRefs::new(model, cluster);
    let candidate_refs = ClusterRefs::new(&candidate, cluster);
    let gateways: BTreeSet<ObjectKey> = served_refs
        .bound_gateways(key)
        .into_iter()
        .chain(candidate_refs.bound_gateways(key))
        .collect();
    let zone = served_refs.view.zone.clone();
    let served_view = cluster_view(model, cluster);
    let candidate_view = cluster_view(&candidate, cluster);
    gateways
        .into_iter()
        .map(|gateway| {
            let identity = GatewayIdentity {
                gateway: gateway.clone(),
                cluster: cluster.to_owned(),
                zone: zone.clone(),
                role: NodeRole::Gateway,
                xds: crate::core::translate::XdsTransport::Ads,
            };
            let before = config_to_json(&translate(&served_view, &identity).config)?;
            let after = config_to_json(&translate(&candidate_view, &identity).config)?;
            Ok(GatewayDiff {
                gateway: gateway.to_string(),
                cluster: cluster.to_owned(),
                changes: changes(&before, &after),
            })
        })
        .collect()
}

/// `model` with `cluster` moved to the current revision of `key`.
fn released(model: &Model, key: &ObjectKey, cluster: &str) -> Model {
    let mut candidate = model.clone();
    let mut pins = (*candidate.pins).clone();
    if let (Some(pin), Some(revision)) = (pins.get_mut(key), model.revisions.get(key)) {
        pin.clusters.insert(cluster.to_owned(), revision.clone());
    }
    candidate.pins = Arc::new(pins);
    refresh_overrides(&mut candidate, Some(key));
    candidate
}

fn changes(before: &serde_json::Value, after: &serde_json::Value) -> Vec<ResourceChange> {
    let empty = serde_json::Map::new();
    let mut out = Vec::new();
    for kind in ["LDS", "RDS", "CDS", "EDS", "SDS"] {
        let old = before
            .get(kind)
            .and_then(|v| v.as_object())
            .unwrap_or(&empty);
        let new = after
            .get(kind)
            .and_then(|v| v.as_object())
            .unwrap_or(&empty);
        let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for name in names {
            let (a, b) = (old.get(name), new.get(name));
            let change = match (a, b) {
                (None, Some(_)) => "Added",
                (Some(_), None) => "Removed",
                (Some(a), Some(b)) if a != b => "Changed",
                _ => continue,
            };
            let text = |v: Option<&serde_json::Value>| {
                v.map(|v| serde_json::to_string_pretty(v).unwrap_or_default() + "\n")
                    .unwrap_or_default()
            };
            let (a, b) = (text(a), text(b));
            let diff = similar::TextDiff::from_lines(&a, &b)
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("served {kind} {name}"),
                    &format!("candidate {kind} {name}"),
                )
                .to_string();
            out.push(ResourceChange {
                kind: kind.to_owned(),
                name: name.clone(),
                change: change.to_owned(),
                diff,
            });
        }
    }
    out
}
