//! Snapshot tests of generated xDS: the fixture's full configuration as canonical JSON.

use super::*;
use crate::core::json::config_to_json;
use crate::core::model::Model;
use crate::core::resources::ResourceType;

fn model_of(yaml: &str) -> Model {
    crate::core::test_support::model_of(yaml, "default")
}

fn identity(ns: &str, name: &str) -> GatewayIdentity {
    GatewayIdentity {
        role: crate::core::translate::NodeRole::Gateway,
        xds: crate::core::translate::XdsTransport::Ads,
        gateway: ObjectKey::new(ns, name),
        cluster: "local".into(),
        zone: String::new(),
    }
}

fn translate_fixture(model: &Model, gateway: &GatewayIdentity) -> Translation {
    super::scope::translate_checked(model, gateway)
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

const FEDERATED: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east-1}
spec: {region: r1, zone: z1}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east-2}
spec: {region: r1, zone: z2}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: west}
spec: {region: r2, zone: z3}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  placement: {clusters: [east-1, east-2, west]}
  template:
    service:
      metadata: {name: web}
      spec: {ports: [{name: http, port: 80}]}
    gateways:
    - metadata: {name: public}
      spec: {servers: [{port: {number: 8080, protocol: HTTP}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com]
        gateways: [public]
        http: [{route: [{destination: {host: web}}]}]
    destinationRules:
    - metadata: {name: web}
      spec: {host: web, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}}
"#;

fn slice(cluster: &str, address: &str) -> String {
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
endpoints: [{{addresses: ["{address}"], conditions: {{ready: true}}}}]
ports: [{{name: http, port: 8080}}]
"#
    )
}

/// (zone, priority, weight) of each locality in the EDS of `shop`'s web cluster.
fn localities(yaml: &str, cluster: &str, zone: &str) -> Vec<(String, u64, u64)> {
    let model = model_of(yaml);
    let gateway = GatewayIdentity {
        role: crate::core::translate::NodeRole::Gateway,
        xds: crate::core::translate::XdsTransport::Ads,
        gateway: ObjectKey::new("shop", "public"),
        cluster: cluster.into(),
        zone: zone.into(),
    };
    let json = config_to_json(&translate_fixture(&model, &gateway).config).unwrap();
    let eds = &json["EDS"]["outbound|80||web.shop.svc.cluster.local"]["endpoints"];
    eds.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["locality"]["zone"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                l["priority"].as_u64().unwrap_or(0),
                l["loadBalancingWeight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn endpoints_of_every_member_cluster_fail_over_by_nearness() {
    let yaml = format!(
        "{FEDERATED}{}{}{}",
        slice("east-1", "10.1.0.1"),
        slice("east-2", "10.2.0.1"),
        slice("west", "10.3.0.1")
    );
    let p = |z: &str, prio| (z.to_owned(), prio, 0);
    assert_eq!(
        localities(&yaml, "east-1", ""),
        [p("z1", 0), p("z2", 1), p("z3", 2)]
    );
    assert_eq!(
        localities(&yaml, "west", ""),
        [p("z3", 0), p("z1", 1), p("z2", 1)]
    );
    // The proxy's own zone (node metadata) beats its cluster's default.
    assert_eq!(
        localities(&yaml, "east-1", "z2"),
        [p("z2", 0), p("z1", 1), p("z3", 2)]
    );
    // Local endpoints gone: the nearest remaining level is served first.
    let without_local = format!(
        "{FEDERATED}{}{}",
        slice("east-2", "10.2.0.1"),
        slice("west", "10.3.0.1")
    );
    assert_eq!(
        localities(&without_local, "east-1", ""),
        [p("z2", 0), p("z3", 1)]
    );
}

#[test]
fn distribute_weighs_localities_and_enables_weighted_clusters() {
    let yaml = format!(
        "{}{}{}",
        FEDERATED.replace(
            "trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}",
            r#"trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: "r1/z1/*", to: {"r1/z1/*": 99, "r1/z2/*": 1}}]}}}"#
        ),
        slice("east-1", "10.1.0.1"),
        slice("east-2", "10.2.0.1")
    );
    assert_eq!(
        localities(&yaml, "east-1", ""),
        [("z1".to_owned(), 0, 99_000), ("z2".to_owned(), 0, 1_000)]
    );
    let model = model_of(&yaml);
    let gateway = GatewayIdentity {
        role: crate::core::translate::NodeRole::Gateway,
        xds: crate::core::translate::XdsTransport::Ads,
        gateway: ObjectKey::new("shop", "public"),
        cluster: "east-1".into(),
        zone: String::new(),
    };
    let json = config_to_json(&translate_fixture(&model, &gateway).config).unwrap();
    let cluster = &json["CDS"]["outbound|80||web.shop.svc.cluster.local"];
    assert!(
        cluster["commonLbConfig"]["localityWeightedLbConfig"].is_object(),
        "{cluster}"
    );
}

/// The shop fixture's shape with exportTo knobs: Gateway in `edge`, everything else in `shop`
/// (plus an optional DestinationRule in `dr_namespace`).
fn export_case(vs_export: &str, svc_export: &str, dr_export: &str, dr_namespace: &str) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: edge, namespace: edge}}
spec:
  template:
    gateways:
    - metadata: {{name: public}}
      spec: {{servers: [{{port: {{number: 8080, protocol: HTTP}}, hosts: ["*/*"]}}]}}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  template:
    service:
      metadata: {{name: web, annotations: {{networking.istio.io/exportTo: "{svc_export}"}}}}
      spec: {{ports: [{{name: http, port: 80}}]}}
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.com]
        gateways: [edge/public]
        exportTo: [{vs_export}]
        http: [{{route: [{{destination: {{host: web}}}}]}}]
    destinationRules:
    - metadata: {{name: web, namespace: {dr_namespace}}}
      spec:
        host: web.shop.svc.cluster.local
        exportTo: [{dr_export}]
        trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}
"#
    )
}

/// (virtual hosts served, the web cluster exists, its LB policy) for the edge gateway.
fn export_outcome(model: &Model) -> (usize, bool, String) {
    let translation = translate_fixture(model, &identity("edge", "public"));
    let json = config_to_json(&translation.config).unwrap();
    let hosts = json["RDS"]["http.8080"]["virtualHosts"]
        .as_array()
        .map_or(0, |v| v.len());
    let cluster = &json["CDS"]["outbound|80||web.shop.svc.cluster.local"];
    let lb = cluster["lbPolicy"]
        .as_str()
        .unwrap_or("LEAST_REQUEST")
        .to_owned();
    (hosts, cluster.is_object(), lb)
}

#[test]
fn export_to_scopes_what_a_gateway_sees() {
    let random = "RANDOM".to_owned();
    let least = "LEAST_REQUEST".to_owned();
    // (case, vs exportTo, service exportTo, DR exportTo, DR namespace, expected)
    let cases = [
        (
            "all defaults",
            "\"*\"",
            "*",
            "\"*\"",
            "shop",
            (1, true, random.clone()),
        ),
        (
            "VS private",
            "\".\"",
            "*",
            "\"*\"",
            "shop",
            (0, false, least.clone()),
        ),
        (
            "VS to the gateway's namespace",
            "edge",
            "*",
            "\"*\"",
            "shop",
            (1, true, random.clone()),
        ),
        (
            "service private: 503",
            "\"*\"",
            ".",
            "\"*\"",
            "shop",
            (1, false, least.clone()),
        ),
        (
            "service to edge",
            "\"*\"",
            "edge",
            "\"*\"",
            "shop",
            (1, true, random.clone()),
        ),
        (
            "DR private: not applied",
            "\"*\"",
            "*",
            "\".\"",
            "shop",
            (1, true, least.clone()),
        ),
        (
            "DR own plus edge",
            "\"*\"",
            "*",
            "\".\", edge",
            "shop",
            (1, true, random.clone()),
        ),
        (
            "DR in the root namespace",
            "\"*\"",
            "*",
            "\"*\"",
            "meridian-system",
            (1, true, random.clone()),
        ),
        (
            "DR in an unrelated namespace",
            "\"*\"",
            "*",
            "\"*\"",
            "other",
            (1, true, least.clone()),
        ),
    ];
    for (case, vs, svc, dr, dr_ns, expected) in cases {
        let model = model_of(&export_case(vs, svc, dr, dr_ns));
        assert_eq!(export_outcome(&model), expected, "{case}");
    }
}

#[test]
fn mesh_default_export_applies_to_objects_without_export_to() {
    // The pitfall: with a mesh default of ".", a VirtualService that sets no exportTo is
    // invisible to a gateway in another namespace.
    let yaml = export_case("\"*\"", "*", "\"*\"", "shop")
        .replace("        exportTo: [\"*\"]\n        http", "        http");
    let mut model = model_of(&yaml);
    assert_eq!(export_outcome(&model).0, 1);
    model.export.virtual_service = vec![".".to_owned()];
    assert_eq!(export_outcome(&model).0, 0);
}

/// Services whose ports speak gRPC or HTTP/2, by each of the ways Istio infers a protocol, and
/// one that speaks HTTP/1.1.
const PROTOCOLS: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: rpc, namespace: edge}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 80, protocol: HTTP2}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: rpc}
      spec:
        hosts: [rpc.example.com]
        gateways: [gw]
        http:
        - match: [{uri: {prefix: /named}}]
          route: [{destination: {host: named}}]
        - match: [{uri: {prefix: /app}}]
          route: [{destination: {host: app}}]
        - match: [{uri: {prefix: /h2c}}]
          route: [{destination: {host: h2c}}]
        - match: [{uri: {prefix: /entry}}]
          route: [{destination: {host: entry.internal}}]
        - route: [{destination: {host: plain}}]
    serviceEntries:
    - metadata: {name: entry}
      spec:
        hosts: [entry.internal]
        ports: [{number: 9000, name: api, protocol: GRPC}]
        resolution: DNS
---
apiVersion: v1
kind: Service
metadata: {name: named, namespace: edge}
spec: {ports: [{name: grpc-api, port: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: edge}
spec: {ports: [{name: api, port: 9000, appProtocol: grpc}]}
---
apiVersion: v1
kind: Service
metadata: {name: h2c, namespace: edge}
spec: {ports: [{name: web, port: 9000, appProtocol: kubernetes.io/h2c}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: edge}
spec: {ports: [{name: http-web, port: 9000, appProtocol: http}]}
"#;

#[test]
fn grpc_and_http2_ports_are_reached_over_http2() {
    let model = model_of(PROTOCOLS);
    let translation = translate_fixture(&model, &identity("edge", "gw"));
    let http2 = |host: &str| {
        let name = format!("outbound|9000||{host}");
        let cluster = translation
            .config
            .get(ResourceType::Cluster, &name)
            .unwrap_or_else(|| panic!("no cluster {name}"));
        let json = crate::core::json::any_to_json(&cluster.body).unwrap();
        json.pointer(
            "/typedExtensionProtocolOptions/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\
             /explicitHttpConfig/http2ProtocolOptions",
        )
        .is_some()
    };
    for host in [
        "named.edge.svc.cluster.local",
        "app.edge.svc.cluster.local",
        "h2c.edge.svc.cluster.local",
        "entry.internal",
    ] {
        assert!(http2(host), "{host} should be reached over HTTP/2");
    }
    assert!(!http2("plain.edge.svc.cluster.local"));
}

#[test]
fn outlier_detection_sets_the_panic_threshold_from_min_health_percent() {
    let threshold = |policy: &str| {
        let yaml = PROTOCOLS.replace(
            "    serviceEntries:",
            &format!(
                "    destinationRules:\n    - metadata: {{name: plain}}\n      spec: {{host: plain, trafficPolicy: {policy}}}\n    serviceEntries:"
            ),
        );
        let model = model_of(&yaml);
        let translation = translate_fixture(&model, &identity("edge", "gw"));
        let cluster = translation
            .config
            .get(
                ResourceType::Cluster,
                "outbound|9000||plain.edge.svc.cluster.local",
            )
            .unwrap();
        let json = crate::core::json::any_to_json(&cluster.body).unwrap();
        // Proto3 JSON leaves out a zero: an empty Percent is 0%.
        json.pointer("/commonLbConfig/healthyPanicThreshold")
            .map(|p| p.get("value").and_then(|v| v.as_f64()).unwrap_or(0.0))
    };
    // Istio's default: no panic mode, so ejected hosts stay out however many there are.
    assert_eq!(
        threshold("{outlierDetection: {consecutive5xxErrors: 1}}"),
        Some(0.0)
    );
    assert_eq!(
        threshold("{outlierDetection: {consecutive5xxErrors: 1, minHealthPercent: 30}}"),
        Some(30.0)
    );
    // Without outlier detection Envoy's own default (50%) stands, as in Istio.
    assert_eq!(threshold("{loadBalancer: {simple: ROUND_ROBIN}}"), None);
}

#[test]
fn endpoints_on_ports_envoy_refuses_are_left_out() {
    let yaml = SHOP.replace(
        "ports: [{name: http, port: 8080}]",
        "ports: [{name: http, port: 70000}]",
    );
    let model = model_of(&yaml);
    let translation = translate_fixture(&model, &identity("edge", "public"));
    for assignment in translation
        .config
        .resources(ResourceType::Endpoint)
        .values()
    {
        let json = crate::core::json::any_to_json(&assignment.body).unwrap();
        assert!(!json.to_string().contains("70000"), "{json}");
    }
}
