//! What L4 nodes are served: every VIP of their cluster, forwarding to that cluster's gateways.

use std::sync::Arc;

use super::*;
use crate::core::json::config_to_json;
use crate::core::model::Model;
use crate::core::resources::ResourceType;
use crate::core::vip_allocation::allocate;

/// Two AccessPoints placed on `east` and `west`: `shop` with a VIP pool in both clusters and
/// gateway pods in both, `intranet` in a pool-less cluster only. Plus port 53 over UDP and TCP,
/// on different target ports.
const TIER: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east}
spec:
  zone: east-1
  vipPools: [{name: public, cidrs: ["192.0.2.0/24", "2001:db8::/120"]}]
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: west}
spec:
  zone: west-1
  vipPools: [{name: public, cidrs: ["198.51.100.0/24"]}]
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: north}
spec: {zone: north-1}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  placement: {clusters: [east, west]}
  template:
    service:
      metadata: {name: shop-gateway}
      spec:
        ports:
        - {name: http, port: 80, targetPort: 8080}
        - {name: https, port: 443, targetPort: 8443}
        - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
        - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5354}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: intranet, namespace: shop}
spec:
  placement: {clusters: [north]}
  template:
    service:
      metadata: {name: intranet-gateway}
      spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-gateway-east
  namespace: shop
  labels: {kubernetes.io/service-name: shop-gateway, meridian.dev/cluster: east}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: https, port: 8443}]
endpoints:
- addresses: [10.1.0.1]
- addresses: [10.1.0.2]
  zone: east-2
- addresses: [10.1.0.3]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-gateway-west
  namespace: shop
  labels: {kubernetes.io/service-name: shop-gateway, meridian.dev/cluster: west}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: https, port: 8443}, {name: dns, port: 5353, protocol: UDP}, {name: dns-tcp, port: 5354}]
endpoints:
- addresses: [10.2.0.1]
"#;

fn model() -> Model {
    let mut model = crate::core::test_support::model_of(TIER, "default");
    let (vips, errors) = allocate(&model, &Default::default());
    assert_eq!(errors, vec![]);
    model.vips = Arc::new(vips);
    model
}

fn l4_node(cluster: &str) -> GatewayIdentity {
    GatewayIdentity {
        gateway: ObjectKey::new("meridian-system", "l4"),
        cluster: cluster.into(),
        zone: String::new(),
        role: NodeRole::L4,
        xds: crate::core::translate::XdsTransport::Ads,
    }
}

fn served(model: &Model, cluster: &str) -> Translation {
    translate(
        &crate::core::expand::cluster_view(model, cluster),
        &l4_node(cluster),
    )
}

#[test]
fn an_l4_node_serves_its_clusters_vips_to_its_clusters_gateways() {
    let translation = served(&model(), "east");
    assert!(translation.secret_names.is_empty());
    insta::assert_json_snapshot!(config_to_json(&translation.config).unwrap());
}

#[test]
fn each_cluster_gets_its_own_vips_and_gateways_only() {
    let model = model();
    let west = served(&model, "west");
    let names = |kind| {
        west.config
            .resources(kind)
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(ResourceType::Listener),
        [
            "198.51.100.1_443",
            "198.51.100.1_53",
            "198.51.100.1_53_udp",
            "198.51.100.1_80"
        ]
    );
    let json = config_to_json(&west.config).unwrap();
    // Port 53 is two clusters: its UDP one proxies datagrams, unchecked (Envoy cannot check
    // UDP), to the UDP target port; its TCP one to the TCP target port.
    let udp = "outbound|53|udp|shop-gateway.shop.svc.cluster.local";
    let listener = &json["LDS"]["198.51.100.1_53_udp"];
    assert_eq!(listener["address"]["socketAddress"]["protocol"], "UDP");
    let proxy = &listener["listenerFilters"][0]["typedConfig"];
    assert_eq!(
        proxy["matcher"]["onNoMatch"]["action"]["typedConfig"]["cluster"],
        udp
    );
    assert!(json["CDS"][udp]["healthChecks"].is_null());
    assert!(json["EDS"][udp].to_string().contains("5353"));
    let tcp = "outbound|53||shop-gateway.shop.svc.cluster.local";
    assert!(json["EDS"][tcp].to_string().contains("5354"));
    let endpoints = json["EDS"]["outbound|80||shop-gateway.shop.svc.cluster.local"].to_string();
    assert!(
        endpoints.contains("10.2.0.1") && !endpoints.contains("10.1.0."),
        "{endpoints}"
    );

    // A cluster without a VIP pool has nothing an L4 node could serve.
    assert!(served(&model, "north").config.is_empty());
}

#[test]
fn an_access_point_without_a_vip_or_a_gateway_role_gets_nothing_from_l4() {
    let model = crate::core::test_support::model_of(TIER, "default");
    assert!(
        served(&model, "east").config.is_empty(),
        "no VIPs allocated"
    );

    // A gateway with the tier's name is served as a gateway: no VIP listeners.
    let mut as_gateway = l4_node("east");
    as_gateway.role = NodeRole::Gateway;
    let view = crate::core::expand::cluster_view(&model, "east");
    assert!(translate(&view, &as_gateway).config.is_empty());
}

#[test]
fn proxy_protocol_is_sent_by_l4_nodes_and_required_by_the_gateways() {
    let yaml = TIER.replace(
        "  placement: {clusters: [east, west]}\n",
        "  placement: {clusters: [east, west]}\n  vip: {proxyProtocol: true}\n",
    ) + r#"---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: gateways, namespace: shop}
spec:
  placement: {clusters: [east]}
  vip: {proxyProtocol: true}
  template:
    gateways:
    - metadata: {name: public}
      spec:
        servers:
        - port: {number: 8443, protocol: HTTPS}
          hosts: ["*"]
          tls: {mode: SIMPLE}
        - port: {number: 8443, protocol: HTTP}
          hosts: ["*"]
"#;
    let mut model = crate::core::test_support::model_of(&yaml, "default");
    let (vips, _) = allocate(&model, &Default::default());
    model.vips = Arc::new(vips);
    super::tls_tests::issue_all(&mut model);
    let l4 = config_to_json(&served(&model, "east").config).unwrap();
    let socket = &l4["CDS"]["outbound|80||shop-gateway.shop.svc.cluster.local"]["transportSocket"];
    assert_eq!(
        socket["name"],
        "envoy.transport_sockets.upstream_proxy_protocol"
    );
    assert_eq!(socket["typedConfig"]["config"]["version"], "V2");

    let gateway = GatewayIdentity {
        gateway: ObjectKey::new("shop", "public"),
        cluster: "east".into(),
        zone: String::new(),
        role: NodeRole::Gateway,
        xds: crate::core::translate::XdsTransport::Ads,
    };
    let view = crate::core::expand::cluster_view(&model, "east");
    let json = config_to_json(&translate(&view, &gateway).config).unwrap();
    let filters: Vec<&str> = json["LDS"]["0.0.0.0_8443"]["listenerFilters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    // The PROXY header precedes the TLS ClientHello on the wire.
    assert_eq!(
        filters,
        [
            "envoy.filters.listener.proxy_protocol",
            "envoy.filters.listener.tls_inspector"
        ]
    );
}

#[test]
fn on_a_shared_vip_the_older_access_point_keeps_a_port_both_claim() {
    // `shop` (older) and `api` share shop's VIP; both Services claim 80/TCP, api also 8443.
    let yaml = TIER.to_owned()
        + r#"---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: api, namespace: shop, creationTimestamp: "2030-01-01T00:00:00Z"}
spec:
  placement: {clusters: [east]}
  vip: {shareWith: shop}
  template:
    service:
      metadata: {name: api-gateway}
      spec: {ports: [{name: http, port: 80}, {name: alt, port: 8443}]}
"#;
    let mut model = crate::core::test_support::model_of(&yaml, "default");
    let (vips, errors) = allocate(&model, &Default::default());
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "template.service: port(s) 80/TCP of the VIP in cluster east belong to the older \
          AccessPoint shop/shop sharing it; L4 nodes forward them there"
        ]
    );
    assert_eq!(
        errors[0].access_point(),
        Some(&ObjectKey::new("shop", "api"))
    );
    model.vips = Arc::new(vips);
    let json = config_to_json(&served(&model, "east").config).unwrap();
    let cluster_of = |listener: &str| {
        json["LDS"][listener]["filterChains"][0]["filters"][0]["typedConfig"]["cluster"].clone()
    };
    assert_eq!(
        cluster_of("192.0.2.1_80"),
        "outbound|80||shop-gateway.shop.svc.cluster.local"
    );
    assert_eq!(
        cluster_of("192.0.2.1_8443"),
        "outbound|8443||api-gateway.shop.svc.cluster.local"
    );
}
