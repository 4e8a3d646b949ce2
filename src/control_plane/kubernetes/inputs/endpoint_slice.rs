//! EndpointSlices from apiservers that serve only `discovery.k8s.io/v1beta1` (Kubernetes
//! before 1.21) are converted to the `v1` shape the model uses. The versions differ only in
//! where topology lives: v1beta1's `endpoints[].topology` map becomes v1's `zone`, `nodeName`
//! and `deprecatedTopology`.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Map, Value};

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Converts a v1beta1 EndpointSlice (as JSON) to v1.
pub fn from_v1beta1(mut object: Value) -> Result<EndpointSlice, serde_json::Error> {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".to_owned(), Value::from("discovery.k8s.io/v1"));
        if let Some(Value::Array(endpoints)) = map.get_mut("endpoints") {
            for endpoint in endpoints.iter_mut().filter_map(Value::as_object_mut) {
                convert_endpoint(endpoint);
            }
        }
    }
    serde_json::from_value(object)
}

fn convert_endpoint(endpoint: &mut Map<String, Value>) {
    let Some(Value::Object(topology)) = endpoint.remove("topology") else {
        return;
    };
    if let Some(zone) = topology.get(ZONE_LABEL) {
        endpoint.insert("zone".to_owned(), zone.clone());
    }
    if let Some(node) = topology.get(HOSTNAME_LABEL) {
        endpoint
            .entry("nodeName".to_owned())
            .or_insert_with(|| node.clone());
    }
    endpoint.insert("deprecatedTopology".to_owned(), Value::Object(topology));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_moves_to_zone_and_node_name() {
        let slice = from_v1beta1(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["10.0.0.7"],
                "conditions": {"ready": true},
                "topology": {"topology.kubernetes.io/zone": "eu-1a", "kubernetes.io/hostname": "node-1"}
            }],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        let endpoint = &slice.endpoints[0];
        assert_eq!(endpoint.zone.as_deref(), Some("eu-1a"));
        assert_eq!(endpoint.node_name.as_deref(), Some("node-1"));
        assert_eq!(endpoint.addresses, ["10.0.0.7"]);
        assert_eq!(
            endpoint.deprecated_topology.as_ref().unwrap()[ZONE_LABEL],
            "eu-1a"
        );
        assert_eq!(slice.ports.unwrap()[0].port, Some(8080));
    }
}
