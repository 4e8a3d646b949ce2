use super::*;
use crate::core::model::vip::VipTable;
use crate::core::test_support::model_of;
use crate::core::vip_allocation::allocate;

const FLEET: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east}
spec: {zone: east-1, vipPools: [{name: main, cidrs: ["192.0.2.0/24", "2001:db8::/120"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: west}
spec: {zone: west-1, vipPools: [{name: main, cidrs: ["198.51.100.0/24"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  placement: {clusters: [east, west]}
  template: {}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: shop, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {fqdn: Shop.Example.Test., ttl: 60, target: {accessPoint: shop}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: static, namespace: shop}
spec: {fqdn: static.example.test, target: {addresses: ["203.0.113.7", "nope"]}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: copy, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {fqdn: shop.example.test, target: {addresses: ["203.0.113.8"]}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: outside, namespace: shop}
spec: {fqdn: www.elsewhere.test, target: {addresses: ["203.0.113.9"]}}
"#;

fn model() -> Model {
    let mut model = model_of(FLEET, "shop");
    let (vips, _) = allocate(&model, &VipTable::default());
    model.vips = std::sync::Arc::new(vips);
    model
}

#[test]
fn an_access_point_name_answers_its_vips_in_every_cluster_with_the_ttl() {
    let records = records(
        &model(),
        &ServingClusters::new(),
        &["example.test".to_owned()],
    );
    let shop = &records.names["shop.example.test"];
    assert_eq!(shop.ttl, 60);
    assert_eq!(
        shop.v4,
        [
            "192.0.2.1".parse::<Ipv4Addr>().unwrap(),
            "198.51.100.1".parse().unwrap()
        ]
    );
    assert_eq!(shop.v6, ["2001:db8::1".parse::<Ipv6Addr>().unwrap()]);
    let static_ = &records.names["static.example.test"];
    assert_eq!((static_.ttl, static_.v4.len()), (30, 1));
}

#[test]
fn problems_name_the_name_service_and_field() {
    let records = records(
        &model(),
        &ServingClusters::new(),
        &["example.test.".to_owned()],
    );
    let problems: Vec<String> = records.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        [
            "NameService shop/outside: spec.fqdn: www.elsewhere.test is in no zone Meridian serves (example.test)",
            "NameService shop/static: spec.target.addresses[1]: \"nope\" is not an IP address",
            "NameService shop/copy: spec.fqdn: shop.example.test is already served by NameService shop/shop",
        ]
    );
    assert_eq!(records.names.len(), 2);
}

const FAILOVER: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east}
spec: {zone: east-1, vipPools: [{name: main, cidrs: ["192.0.2.0/24"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: west}
spec: {zone: west-1, vipPools: [{name: main, cidrs: ["198.51.100.0/24"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  placement: {clusters: [east, west]}
  template:
    service:
      metadata: {name: web}
      spec: {ports: [{name: http, port: 80}]}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: shop, namespace: shop}
spec: {fqdn: shop.example.test, policy: Failover, target: {accessPoint: shop}}
"#;

fn east_slice(ready: bool) -> String {
    format!(
        r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-east
  namespace: shop
  labels: {{kubernetes.io/service-name: web, meridian.dev/cluster: east}}
addressType: IPv4
endpoints: [{{addresses: ["10.0.0.1"], conditions: {{ready: {ready}}}}}]
"#
    )
}

fn name_records(yaml: &str, serving: &ServingClusters) -> NameRecords {
    let mut model = model_of(yaml, "shop");
    let (vips, _) = allocate(&model, &VipTable::default());
    model.vips = std::sync::Arc::new(vips);
    records(&model, serving, &["example.test".to_owned()]).names["shop.example.test"].clone()
}

fn answered_with(yaml: &str, serving: &ServingClusters) -> Vec<String> {
    name_records(yaml, serving)
        .v4
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn answered(yaml: &str) -> Vec<String> {
    answered_with(yaml, &ServingClusters::new())
}

fn served_in(clusters: &[&str]) -> ServingClusters {
    let acks: Vec<GatewayAck> = clusters
        .iter()
        .map(|cluster| GatewayAck {
            node_id: format!("envoy-{cluster}"),
            gateway: ObjectKey::new("shop", "public"),
            cluster: cluster.to_string(),
            acked: BTreeMap::from([(ObjectKey::new("shop", "shop"), 1)]).into(),
            load: Vec::new(),
            nack: None,
            nack_of: None,
        })
        .collect();
    serving_clusters(&acks)
}

#[test]
fn failover_answers_only_clusters_with_ready_endpoints_and_fails_open() {
    assert_eq!(
        answered(&format!("{FAILOVER}{}", east_slice(true))),
        ["192.0.2.1"],
        "only east has ready endpoints"
    );
    assert_eq!(
        answered(&format!("{FAILOVER}{}", east_slice(false))),
        ["192.0.2.1", "198.51.100.1"],
        "none healthy: every VIP, rather than none"
    );
    assert_eq!(
        answered(&FAILOVER.replace("policy: Failover, ", "")),
        ["192.0.2.1", "198.51.100.1"],
        "All answers every cluster"
    );
}

#[test]
fn failover_needs_a_gateway_proxy_serving_the_access_point_where_any_does() {
    let both_ready = format!(
        "{FAILOVER}{}{}",
        east_slice(true),
        east_slice(true).replace("east", "west")
    );
    assert_eq!(
        answered_with(&both_ready, &served_in(&["west"])),
        ["198.51.100.1"],
        "east has endpoints but no proxy serving the AccessPoint"
    );
    assert_eq!(
        answered_with(&both_ready, &served_in(&["east", "west"])),
        ["192.0.2.1", "198.51.100.1"]
    );
    assert_eq!(
        answered_with(&both_ready, &ServingClusters::new()),
        ["192.0.2.1", "198.51.100.1"],
        "no proxy serves it anywhere (no gateway, or all gone): endpoints alone decide"
    );
    assert_eq!(
        answered_with(
            &format!("{FAILOVER}{}", east_slice(true)),
            &served_in(&["west"])
        ),
        ["192.0.2.1", "198.51.100.1"],
        "no cluster has both: fail open"
    );
}

#[test]
fn zones_carry_their_preferences_and_source_networks_are_most_specific_first() {
    let yaml = FAILOVER.replace(
        "policy: Failover, ",
        "zones: [{zone: west-1, weight: 99}, {zone: north-1, priority: 1}], \
         sourceZones: [{zone: east-1, cidrs: [10.0.0.0/8]}, {zone: west-1, cidrs: [10.9.0.0/16]}], ",
    );
    let shop = name_records(&yaml, &ServingClusters::new());
    let zones: Vec<(&str, u32, u32, String)> = shop
        .zones
        .iter()
        .map(|z| (z.zone.as_str(), z.priority, z.weight, z.v4[0].to_string()))
        .collect();
    assert_eq!(
        zones,
        [
            ("west-1", 0, 99, "198.51.100.1".to_owned()),
            ("east-1", u32::MAX, 1, "192.0.2.1".to_owned()),
        ],
        "a listed zone first; an unlisted one after every listed one"
    );
    let sources: Vec<String> = shop
        .sources
        .iter()
        .map(|(n, z)| format!("{n}={z}"))
        .collect();
    assert_eq!(sources, ["10.9.0.0/16=west-1", "10.0.0.0/8=east-1"]);
    let client = "10.1.2.3".parse().ok();
    let chosen = shop.answer(answer::Family::V4, client, 0);
    assert_eq!(chosen[0].zone, "east-1");
}

#[test]
fn a_bad_source_network_is_a_problem_naming_the_field() {
    let yaml = format!(
        "{FAILOVER}---\napiVersion: meridian.dev/v1alpha1\nkind: NameService\n\
         metadata: {{name: geo, namespace: shop}}\n\
         spec: {{fqdn: geo.example.test, target: {{addresses: [203.0.113.1]}}, \
         sourceZones: [{{zone: east-1, cidrs: [10.0.0.0/33]}}]}}\n"
    );
    let mut model = model_of(&yaml, "shop");
    model.vips = std::sync::Arc::new(allocate(&model, &VipTable::default()).0);
    let records = records(
        &model,
        &ServingClusters::new(),
        &["example.test".to_owned()],
    );
    let problems: Vec<String> = records.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        ["NameService shop/geo: spec.sourceZones[0].cidrs[0]: \"10.0.0.0/33\" is not a CIDR"]
    );
}
