use super::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    common_lb_config::LocalityConfigSpecifier, ClusterDiscoveryType, DiscoveryType, LbConfig,
    LbPolicy, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Locality as EnvoyLocality, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::{
    Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use std::collections::BTreeSet;

fn cla(groups: &[(&str, u32, u32, &[&str])]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: groups
            .iter()
            .map(|(zone, weight, priority, addresses)| LocalityLbEndpoints {
                locality: Some(EnvoyLocality {
                    zone: zone.to_string(),
                    ..Default::default()
                }),
                load_balancing_weight: Some(UInt32Value { value: *weight }),
                priority: *priority,
                lb_endpoints: addresses
                    .iter()
                    .map(|a| LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                            address: Some(Address {
                                address: Some(AddressKind::SocketAddress(SocketAddress {
                                    address: a.to_string(),
                                    port_specifier: Some(PortSpecifier::PortValue(80)),
                                    ..Default::default()
                                })),
                            }),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn plan(policy: LbPolicy, locality_weighted: bool) -> ClusterPlan {
    let mut cluster = Cluster {
        name: "c".into(),
        lb_policy: policy as i32,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Default::default()
    };
    if locality_weighted {
        cluster.common_lb_config = Some(CommonLbConfig {
            locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                Default::default(),
            )),
            ..Default::default()
        });
    }
    ClusterPlan::compile(&cluster).unwrap()
}

#[test]
fn priority_zero_takes_everything_until_it_is_empty() {
    let p = plan(LbPolicy::RoundRobin, false);
    let both = Assignment::compile(
        &cla(&[("a", 1, 0, &["10.0.0.1"]), ("b", 1, 1, &["10.0.0.2"])]),
        "c",
    )
    .unwrap();
    let balancer = Balancer::new(&p, &both);
    for turn in 0..10 {
        let pick = balancer.pick([turn, turn, turn], None).unwrap();
        assert_eq!(balancer.endpoint(pick).host, "10.0.0.1");
    }
    let failover =
        Assignment::compile(&cla(&[("a", 1, 0, &[]), ("b", 1, 1, &["10.0.0.2"])]), "c").unwrap();
    let balancer = Balancer::new(&p, &failover);
    assert_eq!(
        balancer
            .endpoint(balancer.pick([0, 0, 0], None).unwrap())
            .host,
        "10.0.0.2"
    );
    assert!(Balancer::new(&p, &Assignment::default())
        .pick([0; 3], None)
        .is_none());
}

#[test]
fn localities_are_chosen_by_weight_when_weighted() {
    let p = plan(LbPolicy::RoundRobin, true);
    let a = Assignment::compile(
        &cla(&[("a", 3, 0, &["10.0.0.1"]), ("b", 1, 0, &["10.0.0.2"])]),
        "c",
    )
    .unwrap();
    let balancer = Balancer::new(&p, &a);
    let to_a = (0..400)
        .filter(|d| {
            balancer
                .endpoint(balancer.pick([*d * 2500, 0, 0], None).unwrap())
                .host
                == "10.0.0.1"
        })
        .count();
    // Shares are parts per million: draws spread evenly over them.
    assert_eq!(to_a, 300);
}

#[test]
fn round_robin_visits_every_endpoint_and_least_request_avoids_the_busy_one() {
    let a = Assignment::compile(
        &cla(&[("a", 1, 0, &["10.0.0.1", "10.0.0.2", "10.0.0.3"])]),
        "c",
    )
    .unwrap();
    let rr = Balancer::new(&plan(LbPolicy::RoundRobin, false), &a);
    let hosts: std::collections::BTreeSet<String> = (0..3)
        .map(|_| rr.endpoint(rr.pick([0; 3], None).unwrap()).host.clone())
        .collect();
    assert_eq!(hosts.len(), 3);

    let lr = Balancer::new(&plan(LbPolicy::LeastRequest, false), &a);
    let busy = lr.start((0, 0));
    // Draws 0 and 1 name endpoints 0 and 1: the idle one wins.
    assert_eq!(lr.pick([0, 0, 1], None), Some((0, 1)));
    drop(busy);
    assert_eq!(lr.pick([0, 0, 1], None), Some((0, 0)));
}

#[test]
fn bad_hash_tables_and_outlier_detection_are_refused_by_name() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::MaglevLbConfig;
    use envoy_types::pb::google::protobuf::UInt64Value;
    let maglev = Cluster {
        name: "c".into(),
        lb_policy: LbPolicy::Maglev as i32,
        lb_config: Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
            table_size: Some(UInt64Value { value: 65_536 }),
        })),
        ..Default::default()
    };
    let error = ClusterPlan::compile(&maglev).unwrap_err();
    assert_eq!(error.field, "maglev_lb_config.table_size");
    assert!(error.message.contains("not a prime"), "{error}");
    let ring = Cluster {
        name: "c".into(),
        lb_policy: LbPolicy::RingHash as i32,
        lb_config: Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            hash_function: 1,
            ..Default::default()
        })),
        ..Default::default()
    };
    assert_eq!(
        ClusterPlan::compile(&ring).unwrap_err().field,
        "ring_hash_lb_config.hash_function"
    );
    let unknown = Cluster {
        name: "c".into(),
        lb_policy: LbPolicy::ClusterProvided as i32,
        ..Default::default()
    };
    assert_eq!(
        ClusterPlan::compile(&unknown).unwrap_err().field,
        "lb_policy"
    );
    let outlier = Cluster {
        name: "c".into(),
        outlier_detection: Some(
            envoy_types::pb::envoy::config::cluster::v3::OutlierDetection {
                enforcing_local_origin_success_rate: Some(UInt32Value { value: 100 }),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    let error = ClusterPlan::compile(&outlier).unwrap_err();
    assert_eq!(error.field, "outlier_detection", "{error}");
    assert!(
        error.message.contains("enforcingLocalOriginSuccessRate"),
        "{error}"
    );
}

#[test]
fn hashing_clusters_send_one_key_to_one_endpoint_and_spread_the_keys() {
    let a = Assignment::compile(
        &cla(&[
            ("a", 1, 0, &["10.0.0.1", "10.0.0.2"]),
            ("b", 1, 0, &["10.0.0.3"]),
            ("c", 1, 1, &["10.0.0.9"]),
        ]),
        "c",
    )
    .unwrap();
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let balancer = Balancer::new(&plan(policy, false), &a);
        let host = |hash, draw| {
            let pick = balancer.pick([draw, draw, draw], Some(hash)).unwrap();
            balancer.endpoint(pick).host.clone()
        };
        // The same hash finds the same endpoint whatever the random draws.
        for hash in [1u64, 77, u64::MAX] {
            assert!((0..20).all(|draw| host(hash, draw) == host(hash, 0)));
        }
        // Many keys reach every endpoint of the serving priority, none of priority 1.
        let hosts: std::collections::BTreeSet<String> = (0..300u64)
            .map(|k| host(xxhash_rust::xxh64::xxh64(&k.to_le_bytes(), 0), 0))
            .collect();
        assert_eq!(
            hosts.into_iter().collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            "{policy:?}"
        );
        // Without a hash (no header to hash) a random endpoint.
        assert!(balancer.pick([5, 5, 5], None).is_some());
    }
}

#[test]
fn hashing_clusters_fold_locality_weights_into_endpoint_weights() {
    let a = Assignment::compile(
        &cla(&[("a", 3, 0, &["10.0.0.1"]), ("b", 1, 0, &["10.0.0.2"])]),
        "c",
    )
    .unwrap();
    let balancer = Balancer::new(&plan(LbPolicy::Maglev, true), &a);
    let first = (0..4000u64)
        .filter(|k| {
            let pick = balancer.pick([0; 3], Some(*k)).unwrap();
            balancer.endpoint(pick).host == "10.0.0.1"
        })
        .count();
    assert!((2900..=3100).contains(&first), "{first}");
}

fn share_of(balancer: &Balancer, host: &str, draws: u64) -> f64 {
    let hits = (0..draws)
        .filter(|d| {
            let d = d.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            balancer
                .endpoint(balancer.pick([d, d, d], None).unwrap())
                .host
                == host
        })
        .count();
    hits as f64 / draws as f64
}

#[test]
fn ejected_endpoints_take_no_traffic_and_priorities_spill_over_as_in_envoy() {
    let p = plan(LbPolicy::Random, false);
    let a = Assignment::compile(
        &cla(&[
            ("a", 1, 0, &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            ("b", 1, 1, &["10.0.1.1"]),
        ]),
        "c",
    )
    .unwrap();
    let ejected =
        |hosts: &[&str]| -> BTreeSet<String> { hosts.iter().map(|h| format!("{h}:80")).collect() };
    // One of four ejected: 75 % × 1.4 ≥ 100 %, so priority 0 keeps everything.
    let b = Balancer::with_ejected(&p, &a, &ejected(&["10.0.0.1"]));
    assert_eq!(share_of(&b, "10.0.0.1", 4000), 0.0);
    assert_eq!(share_of(&b, "10.0.1.1", 4000), 0.0);
    // Three of four ejected: priority 0 takes 1.4 × 25 % = 35 %, priority 1 the rest (the
    // total health is 100 %: no panic).
    let b = Balancer::with_ejected(&p, &a, &ejected(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
    let local = share_of(&b, "10.0.0.4", 20_000);
    assert!((local - 0.35).abs() < 0.02, "{local}");
    assert!((share_of(&b, "10.0.1.1", 20_000) - 0.65).abs() < 0.02);
}

#[test]
fn panic_mode_uses_every_endpoint_below_the_threshold() {
    let a = Assignment::compile(&cla(&[("a", 1, 0, &["10.0.0.1", "10.0.0.2"])]), "c").unwrap();
    let all_gone: BTreeSet<String> = ["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()].into();
    let one_gone: BTreeSet<String> = ["10.0.0.1:80".to_string()].into();
    // Envoy's default threshold (50 %): half healthy is not panic; none healthy is.
    let default = plan(LbPolicy::Random, false);
    assert_eq!(default.panic_threshold, 50.0);
    let b = Balancer::with_ejected(&default, &a, &one_gone);
    assert_eq!(share_of(&b, "10.0.0.1", 2000), 0.0);
    let b = Balancer::with_ejected(&default, &a, &all_gone);
    assert!(share_of(&b, "10.0.0.1", 2000) > 0.3);
    // Meridian's outlier clusters set 0 (Istio's minHealthPercent default): no panic at all.
    let mut strict = plan(LbPolicy::Random, false);
    strict.panic_threshold = 0.0;
    assert!(Balancer::with_ejected(&strict, &a, &all_gone).is_empty());
}

#[test]
fn locality_weights_shrink_with_their_health() {
    let a = Assignment::compile(
        &cla(&[
            (
                "a",
                1,
                0,
                &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"],
            ),
            ("b", 1, 0, &["10.0.1.1"]),
        ]),
        "c",
    )
    .unwrap();
    let mut p = plan(LbPolicy::Random, true);
    p.panic_threshold = 0.0;
    // Zone a keeps 1 of 5: weight 1 × 1.4 × 0.2 = 0.28 against zone b's 1.
    let ejected: BTreeSet<String> = (1..=4).map(|i| format!("10.0.0.{i}:80")).collect();
    let b = Balancer::with_ejected(&p, &a, &ejected);
    let a_share = share_of(&b, "10.0.0.5", 20_000);
    assert!((a_share - 0.28 / 1.28).abs() < 0.02, "{a_share}");
}
