//! Snapshot tests of generated xDS: the fixture's full configuration as canonical JSON.

use super::*;
use crate::core::expand::cluster_view;
use crate::core::json::config_to_json;
use crate::core::manifest::parse_documents;
use crate::core::model::Model;
use crate::core::resources::ResourceType;

fn model_of(yaml: &str) -> Model {
    let mut model = Model::default();
    for object in parse_documents(yaml, "default").unwrap() {
        model.apply(object);
    }
    model
}

fn identity(ns: &str, name: &str) -> GatewayIdentity {
    GatewayIdentity {
        gateway: ObjectKey::new(ns, name),
        cluster: "local".into(),
        zone: String::new(),
    }
}

fn translate_fixture(model: &Model, gateway: &GatewayIdentity) -> Translation {
    let view = cluster_view(model, &gateway.cluster);
    translate(&view, gateway)
}

const SHOP: &str = include_str!("../../../tests/fixtures/shop.yaml");

#[test]
fn shop_fixture_snapshot() {
    let model = model_of(SHOP);
    let translation = translate_fixture(&model, &identity("edge", "public"));
    assert_eq!(translation.unresolved, Vec::<String>::new());
    insta::assert_json_snapshot!(config_to_json(&translation.config).unwrap());
}

#[test]
fn translation_is_deterministic() {
    let model = model_of(SHOP);
    let a = translate_fixture(&model, &identity("edge", "public"));
    let b = translate_fixture(&model.clone(), &identity("edge", "public"));
    assert_eq!(a, b);
}

#[test]
fn other_gateways_get_nothing() {
    let model = model_of(SHOP);
    let translation = translate_fixture(&model, &identity("edge", "internal"));
    assert!(translation.config.is_empty());
}

#[test]
fn unplaced_clusters_get_nothing() {
    let model = model_of(SHOP);
    let mut gw = identity("edge", "public");
    gw.cluster = "east".into();
    assert!(translate_fixture(&model, &gw).config.is_empty());
}

#[test]
fn server_host_namespace_restricts_binding() {
    // The server admits only VirtualServices from namespace `shop`; move the AccessPoint.
    let yaml = SHOP.replacen("namespace: shop}", "namespace: other}", 1);
    let model = model_of(&yaml);
    let translation = translate_fixture(&model, &identity("edge", "public"));
    let routes = translation
        .config
        .get(ResourceType::Route, "http.8080")
        .unwrap();
    let json = crate::core::json::any_to_json(&routes.body).unwrap();
    assert!(json.get("virtualHosts").is_none(), "{json}");
}

#[test]
fn unknown_destination_is_reported_not_fatal() {
    let yaml = SHOP.replace(
        "{host: web, subset: v2}\n          rewrite",
        "{host: nowhere}\n          rewrite",
    );
    let model = model_of(&yaml);
    let translation = translate_fixture(&model, &identity("edge", "public"));
    assert_eq!(
        translation.unresolved,
        vec!["shop/shop: destination host nowhere.shop.svc.cluster.local is not a known service"]
    );
    assert!(translation
        .config
        .get(
            ResourceType::Cluster,
            "outbound|80|v1|web.shop.svc.cluster.local"
        )
        .is_some());
}

#[test]
fn service_entry_static_and_dns() {
    let yaml = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: ext, namespace: edge}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: ext}
      spec:
        hosts: [ext.example.com]
        gateways: [gw]
        http:
        - match: [{uri: {prefix: /static}}]
          route: [{destination: {host: static.internal}}]
        - route: [{destination: {host: dns.internal, port: {number: 443}}}]
    serviceEntries:
    - metadata: {name: static}
      spec:
        hosts: [static.internal]
        ports: [{number: 80, name: http, protocol: HTTP}]
        workloadSelector: {labels: {app: legacy}}
    - metadata: {name: dns}
      spec:
        hosts: [dns.internal]
        ports: [{number: 443, name: https, protocol: HTTP, targetPort: 8443}]
        resolution: DNS
    workloadEntries:
    - metadata: {name: vm1}
      spec: {address: 192.0.2.10, labels: {app: legacy}, locality: r1/z1, weight: 3, ports: {http: 8000}}
    - metadata: {name: vm2}
      spec: {address: 192.0.2.11, labels: {app: other}}
"#;
    let model = model_of(yaml);
    let translation = translate_fixture(&model, &identity("edge", "gw"));
    assert_eq!(translation.unresolved, Vec::<String>::new());
    insta::assert_json_snapshot!(config_to_json(&translation.config).unwrap());
}

#[test]
fn plain_service_objects_join_the_registry() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: edge}
spec: {ports: [{port: 9000}]}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: api, namespace: edge}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 80}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: api}
      spec: {hosts: ["*"], gateways: [gw], http: [{route: [{destination: {host: api}}]}]}
"#;
    let model = model_of(yaml);
    let translation = translate_fixture(&model, &identity("edge", "gw"));
    assert!(translation
        .config
        .get(
            ResourceType::Cluster,
            "outbound|9000||api.edge.svc.cluster.local"
        )
        .is_some());
}

#[test]
fn a_host_already_served_by_an_older_access_point_is_not_taken_over() {
    let thief = r#"
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: thief, namespace: shop, creationTimestamp: "2030-01-01T00:00:00Z"}
spec:
  template:
    virtualServices:
    - metadata: {name: thief}
      spec:
        hosts: [shop.example.com, other.example.com]
        gateways: [edge/public]
        http: [{directResponse: {status: 418}}]
"#;
    let before = translate_fixture(&model_of(SHOP), &identity("edge", "public"));
    let after = translate_fixture(
        &model_of(&format!("{SHOP}{thief}")),
        &identity("edge", "public"),
    );
    let routes = |t: &Translation| config_to_json(&t.config).unwrap()["RDS"].to_string();
    let (before, after) = (routes(&before), routes(&after));
    // The contested host keeps exactly its old routes; the uncontested one is served.
    let host_block = |json: &str, host: &str| {
        let start = json.find(&format!("[\"{host}\"]")).unwrap();
        json[start..]
            .split("\"domains\"")
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        host_block(&before, "shop.example.com"),
        host_block(&after, "shop.example.com")
    );
    assert!(
        host_block(&after, "other.example.com").contains("418"),
        "{after}"
    );
}
