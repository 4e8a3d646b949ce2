//! Per-cluster overrides: ordered RFC 6902 patches applied to an AccessPoint's template for
//! the clusters they select (by name or label selector), after placement.
//!
//! Every matching override applies, in the order written. A patch that fails (a path that does
//! not exist, a failed `test`, a result that is no longer a valid template) fails only that
//! cluster; the error names the override and the patch.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::{ClusterTemplate, Model, ObjectKey, OverrideError};
use super::placement::{selector_matches, ClusterFacts};
use crate::api::access_point::{AccessPointTemplate, ClusterOverride};
use crate::api::AccessPointSpec;

/// Whether `o` applies to `cluster`.
pub fn selects(o: &ClusterOverride, cluster: &ClusterFacts<'_>) -> bool {
    let by_name = o.cluster_name.as_deref() == Some(cluster.name);
    let empty = Default::default();
    let by_labels = o
        .cluster_selector
        .as_ref()
        .is_some_and(|s| selector_matches(s, cluster.labels.unwrap_or(&empty)));
    by_name || by_labels
}

/// The template `cluster` gets: the spec's own, or a patched copy.
pub fn template_for<'a>(
    spec: &'a AccessPointSpec,
    cluster: &ClusterFacts<'_>,
) -> Result<Cow<'a, AccessPointTemplate>, OverrideError> {
    let mut selected = spec
        .overrides
        .iter()
        .enumerate()
        .filter(|(_, o)| selects(o, cluster))
        .peekable();
    if selected.peek().is_none() {
        return Ok(Cow::Borrowed(&spec.template));
    }
    let mut document = serde_json::to_value(&spec.template).map_err(|e| OverrideError {
        index: 0,
        message: e.to_string(),
    })?;
    let mut last = 0;
    for (index, o) in selected {
        last = index;
        let fail = |message: String| OverrideError { index, message };
        let operations = serde_json::to_value(&o.patches).map_err(|e| fail(e.to_string()))?;
        let patch: json_patch::Patch =
            serde_json::from_value(operations).map_err(|e| fail(format!("patches: {e}")))?;
        json_patch::patch(&mut document, &patch).map_err(|e| fail(describe(&e)))?;
    }
    serde_path_to_error::deserialize(document)
        .map(Cow::Owned)
        .map_err(|e| OverrideError {
            index: last,
            message: format!(
                "the patched template is invalid at `{}`: {}",
                e.path(),
                e.inner()
            ),
        })
}

/// Recomputes the overridden templates of `only` (or of every AccessPoint) in
/// [`Model::cluster_templates`]. A cluster whose patches fail keeps the last template that
/// patched cleanly, so a bad override blocks only that cluster and withdraws nothing.
pub fn refresh_overrides(model: &mut Model, only: Option<&ObjectKey>) {
    refresh(model, only, None)
}

/// [`refresh_overrides`] for a new version of AccessPoint `key`, whose previous version
/// served `previous` (its template) where no override applied: a cluster whose override fails
/// with the new version, and had no patched template, keeps that.
pub fn refresh_overrides_after(
    model: &mut Model,
    key: &ObjectKey,
    previous: Option<Arc<AccessPointTemplate>>,
) {
    refresh(model, Some(key), previous)
}

/// (name, zone, labels) of a cluster, owned.
type KnownCluster = (String, String, Option<BTreeMap<String, String>>);

/// (name, zone, labels) of every known cluster, owned (the caller mutates the model).
fn cluster_facts(model: &Model) -> Vec<KnownCluster> {
    model
        .cluster_names()
        .into_iter()
        .map(|name| {
            let member = model
                .member_clusters
                .get(&ObjectKey::new("", name.as_str()));
            let zone = member.map(|m| m.spec.zone.clone()).unwrap_or_default();
            let labels = member.and_then(|m| m.metadata.labels.clone());
            (name, zone, labels)
        })
        .collect()
}

fn refresh(
    model: &mut Model,
    only: Option<&ObjectKey>,
    previous: Option<Arc<AccessPointTemplate>>,
) {
    let clusters = cluster_facts(model);
    let keys: Vec<ObjectKey> = match only {
        Some(key) => vec![key.clone()],
        None => model.access_points.keys().cloned().collect(),
    };
    for key in keys {
        if !model.access_points.contains_key(&key) {
            model.cluster_templates.retain(|(k, _), _| k != &key);
            model.override_errors.retain(|(k, _), _| k != &key);
            continue;
        }
        for (name, zone, labels) in &clusters {
            let facts = ClusterFacts {
                name,
                zone,
                labels: labels.as_ref(),
                deployments: None,
            };
            let id = (key.clone(), name.clone());
            let Some((ap, pinned)) = model.served_version(&key, name) else {
                // Withheld from the cluster (its gateways rejected the only version there is).
                model
                    .cluster_templates
                    .insert(id.clone(), ClusterTemplate::Blocked);
                model.override_errors.remove(&id);
                continue;
            };
            if !pinned && !ap.spec.overrides.iter().any(|o| selects(o, &facts)) {
                model.cluster_templates.remove(&id);
                model.override_errors.remove(&id);
                continue;
            }
            let patched = template_for(&ap.spec, &facts).map(|t| t.into_owned());
            match patched {
                Ok(template) => {
                    let template = ClusterTemplate::Patched(Arc::new(template));
                    model.cluster_templates.insert(id.clone(), template);
                    model.override_errors.remove(&id);
                }
                Err(error) => {
                    let last_good = match &previous {
                        Some(template) => ClusterTemplate::Patched(template.clone()),
                        None => ClusterTemplate::Blocked,
                    };
                    model
                        .cluster_templates
                        .entry(id.clone())
                        .or_insert(last_good);
                    model.override_errors.insert(id, error);
                }
            }
        }
    }
}

fn describe(error: &json_patch::PatchError) -> String {
    format!(
        "patches[{}] ({}): {}",
        error.operation, error.path, error.kind
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::parse_documents;
    use crate::core::model::InputObject;
    use crate::core::test_support::labels;

    fn spec(overrides: &str) -> AccessPointSpec {
        let yaml = format!(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: gw}}
      spec: {{servers: [{{port: {{number: 8080, protocol: HTTP}}, hosts: ["*"]}}]}}
  overrides:
{overrides}
"#
        );
        let InputObject::AccessPoint(ap) = parse_documents(&yaml, "default").unwrap().remove(0)
        else {
            panic!()
        };
        ap.spec
    }

    fn port(template: &AccessPointTemplate) -> u32 {
        template.gateways[0].spec.servers[0].port.number
    }

    #[test]
    fn matching_overrides_apply_in_order_by_name_or_selector() {
        let spec = spec(
            r#"
  - clusterName: east-1
    patches: [{op: replace, path: /gateways/0/spec/servers/0/port/number, value: 9000}]
  - clusterSelector: {matchLabels: {tier: edge}}
    patches: [{op: replace, path: /gateways/0/spec/servers/0/port/number, value: 9100}]
"#,
        );
        let edge = labels(&[("tier", "edge")]);
        let at = |name, labels| ClusterFacts {
            name,
            zone: "",
            labels,
            deployments: None,
        };
        assert_eq!(port(&template_for(&spec, &at("west", None)).unwrap()), 8080);
        assert!(matches!(
            template_for(&spec, &at("west", None)).unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            port(&template_for(&spec, &at("east-1", None)).unwrap()),
            9000
        );
        assert_eq!(
            port(&template_for(&spec, &at("west", Some(&edge))).unwrap()),
            9100
        );
        // Both select east-1 with the label: the later patch wins.
        assert_eq!(
            port(&template_for(&spec, &at("east-1", Some(&edge))).unwrap()),
            9100
        );
    }

    #[test]
    fn a_failing_patch_names_the_override_and_the_operation() {
        let spec = spec(
            r#"
  - clusterName: east-1
    patches:
    - {op: test, path: /gateways/0/spec/servers/0/port/number, value: 8080}
    - {op: replace, path: /gateways/3/spec, value: {}}
  - clusterName: west
    patches: [{op: add, path: /gateways/0/spec/servers/0/port/number, value: "http"}]
"#,
        );
        let at = |name| ClusterFacts {
            name,
            zone: "",
            labels: None,
            deployments: None,
        };
        let error = template_for(&spec, &at("east-1")).unwrap_err();
        assert_eq!(error.index, 0);
        assert!(
            error
                .to_string()
                .starts_with("spec.overrides[0]: patches[1] (/gateways/3/spec)"),
            "{error}"
        );
        let error = template_for(&spec, &at("west")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("invalid at `gateways[0].spec.servers[0].port.number`"),
            "{error}"
        );
    }
}
