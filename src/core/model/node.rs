//! Nodes as the model keeps them: what NodePort subsets read (Ready, cordoned, addresses,
//! zone) and nothing else. A Node's status changes every few minutes with heartbeats and
//! image lists; trimmed, an unchanged node compares equal and changes nothing downstream.

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The label Kubernetes gives a node for its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// `node` with only what Meridian reads: name, the cluster and zone labels, whether it is
/// cordoned, its Ready condition's status and its addresses.
pub fn trimmed(node: Node) -> Node {
    let labels = node.metadata.labels.map(|labels| {
        labels
            .into_iter()
            .filter(|(k, _)| k == ZONE_LABEL || k == super::CLUSTER_LABEL)
            .collect()
    });
    let status = node.status.map(|status| NodeStatus {
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| NodeCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect()
        }),
        addresses: status.addresses,
        ..Default::default()
    });
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name,
            labels,
            ..Default::default()
        },
        spec: Some(NodeSpec {
            unschedulable: node.spec.and_then(|s| s.unschedulable),
            ..Default::default()
        }),
        status,
    }
}

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether the node is cordoned.
pub fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// The address edge traffic reaches the node at: its InternalIP, else its ExternalIP.
pub fn address(node: &Node) -> Option<&str> {
    let addresses: &[NodeAddress] = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
        addresses
            .iter()
            .find(|a| a.type_ == *kind && !a.address.is_empty())
            .map(|a| a.address.as_str())
    })
}

/// The node's zone label.
pub fn zone(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(ZONE_LABEL)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn trimming_keeps_what_subsets_read_and_drops_heartbeats() {
        let full = node(
            r#"
metadata:
  name: node-1
  resourceVersion: "42"
  labels: {topology.kubernetes.io/zone: zone-a, kubernetes.io/os: linux}
spec: {unschedulable: true, podCIDR: 10.244.0.0/24}
status:
  conditions:
  - {type: Ready, status: "True", lastHeartbeatTime: "2026-12-05T09:00:00Z", reason: KubeletReady}
  - {type: MemoryPressure, status: "False"}
  addresses:
  - {type: Hostname, address: node-1}
  - {type: ExternalIP, address: 203.0.113.7}
  - {type: InternalIP, address: 10.0.0.11}
  images: [{names: [nginx], sizeBytes: 1000}]
"#,
        );
        let mut later = full.clone();
        later.metadata.resource_version = Some("43".into());
        if let Some(c) = later
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .and_then(|c| c.first_mut())
        {
            c.last_heartbeat_time = None;
        }
        let trimmed_node = trimmed(full);
        assert_eq!(trimmed_node, trimmed(later));
        assert!(is_ready(&trimmed_node) && is_cordoned(&trimmed_node));
        assert_eq!(address(&trimmed_node), Some("10.0.0.11"));
        assert_eq!(zone(&trimmed_node), Some("zone-a"));
        let labels = trimmed_node.metadata.labels.unwrap();
        assert_eq!(labels.len(), 1);
        assert!(trimmed_node.status.unwrap().images.is_none());
    }

    #[test]
    fn the_external_address_serves_when_there_is_no_internal_one() {
        let n = node(
            "metadata: {name: n}\nstatus: {addresses: [{type: ExternalIP, address: 203.0.113.7}]}",
        );
        assert_eq!(address(&n), Some("203.0.113.7"));
        assert!(!is_ready(&n) && !is_cordoned(&n));
        assert_eq!(address(&node("metadata: {name: n}")), None);
    }
}
