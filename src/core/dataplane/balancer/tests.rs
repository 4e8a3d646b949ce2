use super::*;
use xds_api::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use xds_api::pb::envoy::config::core::v3::{Address, Locality as EnvoyLocality, SocketAddress};
use xds_api::pb::envoy::config::endpoint::v3::{
    Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use xds_api::pb::google::protobuf::UInt32Value;

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
                .endpoint(balancer.pick([*d, 0, 0], None).unwrap())
                .host
                == "10.0.0.1"
        })
        .count();
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
    use xds_api::pb::envoy::config::cluster::v3::cluster::MaglevLbConfig;
    use xds_api::pb::google::protobuf::UInt64Value;
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
        outlier_detection: Some(Default::default()),
        ..Default::default()
    };
    let error = ClusterPlan::compile(&outlier).unwrap_err();
    assert_eq!(error.field, "outlierDetection", "{error}");
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
