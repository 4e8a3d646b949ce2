//! What a node tells HAProxy's agent check about one service (`meridian node-agent`), as pure
//! decisions: the node's state and the Service's weight annotation in, the agent's one-line
//! answer out.
//!
//! HAProxy reads `drain` (administrative DRAIN: no new connections, in-flight ones finish),
//! `down` (a failed check), `ready` (back from DRAIN), `up` and a weight `NN%` of the
//! server's configured weight. A node that is not Ready is `down`; a cordoned node, or one
//! with a drain taint, is `drain`; otherwise `ready up`, with the service's
//! `meridian.dev/weight` annotation (0–100) as the weight. An unreadable weight is reported
//! and left out, so HAProxy keeps the weight it has.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

/// The Service annotation holding the weight, in percent of the server's configured weight.
pub const WEIGHT_ANNOTATION: &str = "meridian.dev/weight";
/// A taint that drains a node without cordoning it.
pub const DRAIN_TAINT: &str = "meridian.dev/drain";

/// What matters of the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Known at all (the node agent has seen its Node object).
    pub known: bool,
    pub ready: bool,
    /// Cordoned, or carrying a drain taint.
    pub draining: bool,
}

impl NodeState {
    /// The state of `node`; `drain_taints` are taint keys that drain it.
    pub fn of(node: &Node, drain_taints: &[String]) -> NodeState {
        let spec = node.spec.as_ref();
        let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let tainted = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .any(|t| drain_taints.contains(&t.key));
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        NodeState {
            known: true,
            ready,
            draining: cordoned || tainted,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Service {service}: annotation {WEIGHT_ANNOTATION} must be a whole number from 0 to 100, got {value:?}")]
pub struct WeightError {
    pub service: String,
    pub value: String,
}

/// The weight `annotations` of `service` set, if any.
pub fn weight_of(
    service: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<u8>, WeightError> {
    let Some(value) = annotations.and_then(|a| a.get(WEIGHT_ANNOTATION)) else {
        return Ok(None);
    };
    value
        .trim()
        .trim_end_matches('%')
        .parse::<u8>()
        .ok()
        .filter(|w| *w <= 100)
        .map(Some)
        .ok_or_else(|| WeightError {
            service: service.to_owned(),
            value: value.clone(),
        })
}

/// The agent's answer (one line, newline-terminated) for a service on this node. `weight` is
/// `None` for a service that is not known or has no weight.
pub fn answer(node: &NodeState, weight: Option<u8>) -> String {
    if !node.known || !node.ready {
        return "down\n".to_owned();
    }
    if node.draining {
        return "drain\n".to_owned();
    }
    // `ready` ends a DRAIN the node was in; `up` a failed check.
    match weight {
        Some(weight) => format!("ready up {weight}%\n"),
        None => "ready up\n".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};

    fn node(ready: &str, unschedulable: bool, taint: Option<&str>) -> Node {
        Node {
            spec: Some(NodeSpec {
                unschedulable: Some(unschedulable),
                taints: taint.map(|key| {
                    vec![Taint {
                        key: key.into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn not_ready_is_down_cordoned_or_tainted_drains_else_up_with_the_weight() {
        let taints = [DRAIN_TAINT.to_owned()];
        let state = |n: &Node| NodeState::of(n, &taints);
        assert_eq!(
            answer(&state(&node("True", false, None)), Some(40)),
            "ready up 40%\n"
        );
        assert_eq!(
            answer(&state(&node("True", false, None)), None),
            "ready up\n"
        );
        assert_eq!(
            answer(&state(&node("True", true, None)), Some(40)),
            "drain\n"
        );
        assert_eq!(
            answer(&state(&node("True", false, Some(DRAIN_TAINT))), None),
            "drain\n"
        );
        assert_eq!(
            answer(&state(&node("True", false, Some("other"))), None),
            "ready up\n"
        );
        assert_eq!(
            answer(&state(&node("False", true, None)), Some(40)),
            "down\n"
        );
        assert_eq!(
            answer(&state(&node("Unknown", false, None)), None),
            "down\n"
        );
        assert_eq!(
            answer(&NodeState::default(), Some(40)),
            "down\n",
            "a node never seen"
        );
    }

    #[test]
    fn weights_are_percentages_and_a_bad_one_names_service_and_annotation() {
        let annotations = |v: &str| BTreeMap::from([(WEIGHT_ANNOTATION.to_owned(), v.to_owned())]);
        assert_eq!(weight_of("shop/web", None), Ok(None));
        assert_eq!(
            weight_of("shop/web", Some(&annotations("25"))),
            Ok(Some(25))
        );
        assert_eq!(
            weight_of("shop/web", Some(&annotations("100%"))),
            Ok(Some(100))
        );
        for bad in ["lots", "101", "-1", "2.5"] {
            let error = weight_of("shop/web", Some(&annotations(bad))).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("Service shop/web: annotation meridian.dev/weight must be a whole number from 0 to 100, got {bad:?}")
            );
        }
    }
}
