use super::*;
use crate::core::test_support::model_of;

fn fleet(access_points: &[&str], pools: &str) -> Model {
    let mut yaml = format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {{name: east}}
spec:
  zone: east-1
  vipPools: {pools}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {{name: west}}
spec:
  zone: west-1
  vipPools: [{{name: west, cidrs: ["198.51.100.0/24"]}}]
"#
    );
    for (i, name) in access_points.iter().enumerate() {
        yaml.push_str(&format!(
            r#"---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: {name}, namespace: shop, creationTimestamp: "2026-01-01T00:00:0{i}Z"}}
spec:
  placement: {{clusters: [east, west]}}
  template: {{}}
"#
        ));
    }
    model_of(&yaml, "shop")
}

const EAST: &str = r#"[{name: main, cidrs: ["192.0.2.0/24"]}]"#;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("shop", name)
}

fn addresses(table: &VipTable, name: &str, cluster: &str) -> Vec<String> {
    table
        .of(&key(name), cluster)
        .iter()
        .map(|a| a.to_string())
        .collect()
}

#[test]
fn each_access_point_gets_its_own_lowest_free_address_per_cluster() {
    let model = fleet(&["a", "b"], EAST);
    let (table, errors) = allocate(&model, &VipTable::default());
    assert_eq!(errors, []);
    assert_eq!(addresses(&table, "a", "east"), ["192.0.2.1"]);
    assert_eq!(addresses(&table, "b", "east"), ["192.0.2.2"]);
    assert_eq!(addresses(&table, "a", "west"), ["198.51.100.1"]);
    assert_eq!(addresses(&table, "a", "local"), Vec::<String>::new());
}

#[test]
fn addresses_survive_reallocation_and_deletion_of_others() {
    let model = fleet(&["a", "b"], EAST);
    let (first, _) = allocate(&model, &VipTable::default());
    // Reloaded from its persisted form, the table allocates the same again.
    let reloaded: VipTable = serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
    assert_eq!(reloaded, first);
    assert_eq!(allocate(&model, &reloaded).0, first);

    // `a` goes away: `b` keeps .2; a newcomer takes the freed .1.
    let model = fleet(&["b", "c"], EAST);
    let (table, _) = allocate(&model, &first);
    assert_eq!(addresses(&table, "b", "east"), ["192.0.2.2"]);
    assert_eq!(addresses(&table, "c", "east"), ["192.0.2.1"]);
    assert_eq!(addresses(&table, "a", "east"), Vec::<String>::new());
}

#[test]
fn a_full_pool_is_an_error_naming_the_pool() {
    let model = fleet(
        &["a", "b", "c"],
        r#"[{name: tiny, cidrs: ["192.0.2.0/30"]}]"#,
    );
    let (table, errors) = allocate(&model, &VipTable::default());
    assert_eq!(addresses(&table, "a", "east"), ["192.0.2.1"]);
    assert_eq!(addresses(&table, "b", "east"), ["192.0.2.2"]);
    assert_eq!(
        errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["VIP pool tiny of cluster east has no free V4 address"]
    );
    assert_eq!(errors[0].access_point(), Some(&key("c")));
}

#[test]
fn dual_stack_pools_give_one_address_per_family_and_bad_cidrs_are_named() {
    let model = fleet(
        &["a"],
        r#"[{name: v4, cidrs: ["192.0.2.0/24", "not-a-cidr"]}, {name: v6, cidrs: ["2001:db8::/120"]}]"#,
    );
    let (table, errors) = allocate(&model, &VipTable::default());
    assert_eq!(addresses(&table, "a", "east"), ["192.0.2.1", "2001:db8::1"]);
    assert_eq!(
        errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["MemberCluster east: spec.vipPools[0].cidrs[1]: \"not-a-cidr\" is not a CIDR"]
    );
}

#[test]
fn a_pool_can_be_chosen_and_a_vip_shared() {
    let mut model = fleet(
        &["a", "b", "c"],
        r#"[{name: first, cidrs: ["192.0.2.0/24"]}, {name: second, cidrs: ["203.0.113.0/24"]}]"#,
    );
    let mut request = |name: &str, pool: Option<&str>, share_with: Option<&str>| {
        model.access_points.get_mut(&key(name)).unwrap().spec.vip =
            Some(crate::api::access_point::VipRequest {
                pool: pool.map(str::to_owned),
                share_with: share_with.map(str::to_owned),
                ..Default::default()
            });
    };
    request("a", Some("second"), None);
    request("b", None, Some("a"));
    request("c", Some("third"), None);
    let (table, errors) = allocate(&model, &VipTable::default());
    assert_eq!(addresses(&table, "a", "east"), ["203.0.113.1"]);
    assert_eq!(addresses(&table, "b", "east"), ["203.0.113.1"]);
    // `a` names a pool `west` lacks, so it (and `b`, sharing) gets nothing there.
    assert_eq!(addresses(&table, "b", "west"), Vec::<String>::new());
    assert_eq!(
        errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        [
            "cluster west has no VIP pool \"second\"",
            "cluster east has no VIP pool \"third\"",
            "cluster west has no VIP pool \"third\"",
            "spec.vip.shareWith: AccessPoint shop/a has no VIP in cluster west",
        ]
    );
}
