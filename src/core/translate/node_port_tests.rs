//! Services reached through node ports: EDS holds each cluster's stable subset of nodes.

use super::*;
use crate::core::json::config_to_json;
use crate::core::model::Model;

const CLUSTER: &str = "outbound|80||web.shop.svc.cluster.local";

fn access_point(annotations: &str) -> String {
    format!(
        r#"
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {{name: east}}
spec: {{region: r1, zone: z1}}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {{name: west}}
spec: {{region: r2, zone: z2}}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  placement: {{clusters: [east, west]}}
  template:
    service:
      metadata: {{name: web, annotations: {{{annotations}}}}}
      spec: {{type: NodePort, ports: [{{name: http, port: 80, nodePort: 30080}}]}}
    gateways:
    - metadata: {{name: edge}}
      spec: {{servers: [{{port: {{number: 8080, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: shop}}
      spec: {{hosts: [shop.example.com], gateways: [edge], http: [{{route: [{{destination: {{host: web}}}}]}}]}}
"#
    )
}

fn node(cluster: &str, name: &str, address: &str, extra: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Node
metadata: {{name: {name}, labels: {{meridian.dev/cluster: {cluster}}}}}
spec: {{{extra}}}
status:
  conditions: [{{type: Ready, status: "True"}}]
  addresses: [{{type: InternalIP, address: {address}}}]
"#
    )
}

fn slice(cluster: &str, nodes: &[&str]) -> String {
    let endpoints: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!(r#"{{addresses: ["10.9.{i}.1"], nodeName: {n}}}"#))
        .collect();
    format!(
        r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-{cluster}
  namespace: shop
  labels: {{kubernetes.io/service-name: web, meridian.dev/cluster: {cluster}}}
addressType: IPv4
endpoints: [{}]
ports: [{{name: http, port: 8080}}]
"#,
        endpoints.join(", ")
    )
}

/// (zone, address:port) of every endpoint the `east` gateway gets for web.
fn endpoints(yaml: &str) -> Vec<(String, String)> {
    let model: Model = crate::core::test_support::model_of(yaml, "default");
    let gateway = GatewayIdentity {
        role: NodeRole::Gateway,
        xds: XdsTransport::Ads,
        gateway: ObjectKey::new("shop", "edge"),
        cluster: "east".into(),
        zone: String::new(),
    };
    let json = config_to_json(&scope::translate_checked(&model, &gateway).config).unwrap();
    let mut out = Vec::new();
    for locality in json["EDS"][CLUSTER]["endpoints"].as_array().unwrap() {
        for e in locality["lbEndpoints"].as_array().unwrap() {
            let socket = &e["endpoint"]["address"]["socketAddress"];
            out.push((
                locality["locality"]["zone"].as_str().unwrap().to_owned(),
                format!(
                    "{}:{}",
                    socket["address"].as_str().unwrap(),
                    socket["portValue"]
                ),
            ));
        }
    }
    out.sort();
    out
}

fn nodes(cluster: &str, count: usize, first_octet: u8) -> String {
    (0..count)
        .map(|i| {
            node(
                cluster,
                &format!("{cluster}-{i}"),
                &format!("10.{first_octet}.0.{i}"),
                "",
            )
        })
        .collect()
}

#[test]
fn each_cluster_with_endpoints_is_reached_through_its_node_subset() {
    let yaml = format!(
        "{}{}{}{}{}",
        access_point("meridian.dev/destination: node-ports, meridian.dev/node-subset-size: '2'"),
        nodes("east", 5, 1),
        nodes("west", 5, 2),
        slice("east", &["east-0"]),
        slice("west", &["west-3"]),
    );
    let got = endpoints(&yaml);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|(_, a)| a.ends_with(":30080")), "{got:?}");
    assert_eq!(got.iter().filter(|(z, _)| z == "z1").count(), 2);
    assert_eq!(got.iter().filter(|(z, _)| z == "z2").count(), 2);
    // The same inputs in another order: the same subsets.
    let reordered = format!(
        "{}{}{}{}{}",
        slice("west", &["west-3"]),
        nodes("west", 5, 2),
        access_point("meridian.dev/destination: node-ports, meridian.dev/node-subset-size: '2'"),
        slice("east", &["east-0"]),
        nodes("east", 5, 1),
    );
    assert_eq!(endpoints(&reordered), got);
}

#[test]
fn cordoned_and_unready_nodes_are_left_out_and_a_newcomer_moves_one_member() {
    let base =
        access_point("meridian.dev/destination: node-ports, meridian.dev/node-subset-size: '3'");
    let mut yaml = format!("{base}{}", slice("east", &["east-0"]));
    yaml.push_str(&node("east", "east-0", "10.1.0.0", "unschedulable: true"));
    yaml.push_str(&node("east", "east-1", "10.1.0.1", "").replace("\"True\"", "\"False\""));
    for i in 2..6 {
        yaml.push_str(&node(
            "east",
            &format!("east-{i}"),
            &format!("10.1.0.{i}"),
            "",
        ));
    }
    let before = endpoints(&yaml);
    assert_eq!(before.len(), 3);
    assert!(before
        .iter()
        .all(|(_, a)| !a.starts_with("10.1.0.0:") && !a.starts_with("10.1.0.1:")));
    yaml.push_str(&node("east", "east-9", "10.1.0.9", ""));
    let after = endpoints(&yaml);
    let moved = before.iter().filter(|e| !after.contains(e)).count();
    assert!(moved <= 1, "{before:?} -> {after:?}");
}

#[test]
fn external_traffic_policy_local_keeps_to_nodes_running_endpoints() {
    let yaml = format!(
        "{}{}{}",
        access_point("meridian.dev/destination: node-ports, meridian.dev/node-subset-size: '3'")
            .replace(
                "type: NodePort,",
                "type: NodePort, externalTrafficPolicy: Local,"
            ),
        nodes("east", 6, 1),
        slice("east", &["east-4"]),
    );
    assert_eq!(
        endpoints(&yaml),
        [("z1".to_owned(), "10.1.0.4:30080".to_owned())]
    );
}

#[test]
fn without_the_annotation_the_pods_are_reached() {
    let yaml = format!(
        "{}{}{}",
        access_point(""),
        nodes("east", 3, 1),
        slice("east", &["east-0"])
    );
    assert_eq!(
        endpoints(&yaml),
        [("z1".to_owned(), "10.9.0.1:8080".to_owned())]
    );
}

#[test]
fn a_template_service_without_node_ports_is_rejected_naming_the_field() {
    let yaml =
        access_point("meridian.dev/destination: node-ports").replace(", nodePort: 30080", "");
    let objects = crate::core::manifest::parse_documents(&yaml, "default").unwrap();
    let Some(crate::core::model::InputObject::AccessPoint(ap)) = objects.last() else {
        panic!("no AccessPoint");
    };
    let errors = crate::core::validate::validate_access_point(&ap.spec);
    assert!(
        errors
            .iter()
            .any(|e| e.path == "spec.template.service.spec.ports[0].nodePort"),
        "{errors:?}"
    );
}
