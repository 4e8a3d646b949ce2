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
        let pick = balancer.pick([turn, turn, turn]).unwrap();
        assert_eq!(balancer.endpoint(pick).host, "10.0.0.1");
    }
    let failover =
        Assignment::compile(&cla(&[("a", 1, 0, &[]), ("b", 1, 1, &["10.0.0.2"])]), "c").unwrap();
    let balancer = Balancer::new(&p, &failover);
    assert_eq!(
        balancer.endpoint(balancer.pick([0, 0, 0]).unwrap()).host,
        "10.0.0.2"
    );
    assert!(Balancer::new(&p, &Assignment::default())
        .pick([0; 3])
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
        .filter(|d| balancer.endpoint(balancer.pick([*d, 0, 0]).unwrap()).host == "10.0.0.1")
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
        .map(|_| rr.endpoint(rr.pick([0; 3]).unwrap()).host.clone())
        .collect();
    assert_eq!(hosts.len(), 3);

    let lr = Balancer::new(&plan(LbPolicy::LeastRequest, false), &a);
    let busy = lr.start((0, 0));
    // Draws 0 and 1 name endpoints 0 and 1: the idle one wins.
    assert_eq!(lr.pick([0, 0, 1]), Some((0, 1)));
    drop(busy);
    assert_eq!(lr.pick([0, 0, 1]), Some((0, 0)));
}

#[test]
fn hash_policies_and_outlier_detection_are_refused_by_name() {
    let maglev = Cluster {
        name: "c".into(),
        lb_policy: LbPolicy::Maglev as i32,
        ..Default::default()
    };
    assert_eq!(
        ClusterPlan::compile(&maglev).unwrap_err().field,
        "lb_policy"
    );
    let outlier = Cluster {
        name: "c".into(),
        outlier_detection: Some(Default::default()),
        ..Default::default()
    };
    let error = ClusterPlan::compile(&outlier).unwrap_err();
    assert!(error.message.contains("outlierDetection"), "{error}");
}
