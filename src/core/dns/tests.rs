use super::*;
use crate::core::test_support::model_of;
use crate::core::vip::{allocate, VipTable};

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
    let records = records(&model(), &["example.test".to_owned()]);
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
    let records = records(&model(), &["example.test.".to_owned()]);
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

fn answered(yaml: &str) -> Vec<String> {
    let mut model = model_of(yaml, "shop");
    let (vips, _) = allocate(&model, &VipTable::default());
    model.vips = std::sync::Arc::new(vips);
    records(&model, &["example.test".to_owned()]).names["shop.example.test"]
        .v4
        .iter()
        .map(ToString::to_string)
        .collect()
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
