use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{health_check, HealthCheck};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as ProtoDuration, UInt32Value};
use prost::Message;

use super::health::{CheckKind, HealthCheckPlan, HealthTracker};
use super::table::L4Table;
use super::*;
use crate::core::dataplane::balancer::{Endpoint, Locality};
use crate::core::translate::l4::{gateway_cluster, vip_listener};
use crate::core::translate::XdsTransport;

const CLUSTER: &str = "outbound|80||web.shop.svc.cluster.local";

fn listener() -> Listener {
    let resource = vip_listener("10.9.0.1".parse().unwrap(), 80, CLUSTER);
    Listener::decode(resource.body.value.as_slice()).unwrap()
}

fn cluster(proxy_protocol: bool) -> Cluster {
    let resource = gateway_cluster(CLUSTER, proxy_protocol, XdsTransport::Ads);
    Cluster::decode(resource.body.value.as_slice()).unwrap()
}

#[test]
fn what_meridian_serves_an_l4_node_compiles() {
    let plan = L4ListenerPlan::compile(&listener()).unwrap();
    assert_eq!(plan.name, "10.9.0.1_80");
    assert_eq!(plan.address, "10.9.0.1:80".parse().unwrap());
    assert!(plan.freebind);
    assert_eq!(plan.cluster, CLUSTER);
    assert_eq!(plan.connect_attempts, 3);
    assert_eq!(plan.idle_timeout, Some(Duration::from_secs(3600)));

    let plan = L4ClusterPlan::compile(&cluster(false)).unwrap();
    assert_eq!(plan.table_size, 65_537);
    assert_eq!(plan.connect_timeout, Duration::from_secs(2));
    assert_eq!(plan.panic_threshold, 0.0);
    assert!(!plan.proxy_protocol);
    assert_eq!(plan.static_assignment, None);
    assert_eq!(
        plan.health_check,
        Some(HealthCheckPlan {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 1,
            kind: CheckKind::Tcp,
        })
    );
    assert_eq!(plan.outlier.unwrap().consecutive_5xx, Some(2));
    assert!(
        L4ClusterPlan::compile(&cluster(true))
            .unwrap()
            .proxy_protocol
    );
}

#[test]
fn what_meridian_l4_cannot_honour_is_refused_by_name() {
    let mut two_chains = listener();
    two_chains
        .filter_chains
        .push(two_chains.filter_chains[0].clone());
    let error = L4ListenerPlan::compile(&two_chains).unwrap_err();
    assert_eq!(
        (error.resource.as_str(), error.field.as_str()),
        ("Listener 10.9.0.1_80", "filter_chains")
    );

    let mut transparent = listener();
    transparent.transparent = Some(BoolValue { value: true });
    let error = L4ListenerPlan::compile(&transparent).unwrap_err();
    assert_eq!(error.field, "transparent");
    assert!(error.message.contains("meridian l4"), "{error}");

    let mut round_robin = cluster(false);
    round_robin.lb_policy = cluster::LbPolicy::RoundRobin as i32;
    let error = L4ClusterPlan::compile(&round_robin).unwrap_err();
    assert_eq!(error.field, "lb_policy");

    let mut jittered = cluster(false);
    jittered.health_checks[0].interval_jitter = Some(ProtoDuration {
        seconds: 1,
        nanos: 0,
    });
    let error = L4ClusterPlan::compile(&jittered).unwrap_err();
    assert_eq!(
        (error.field.as_str(), error.message.as_str()),
        (
            "health_checks[0]",
            "not supported by meridian l4: intervalJitter"
        )
    );

    let mut no_interval = cluster(false);
    no_interval.health_checks[0].interval = None;
    let error = L4ClusterPlan::compile(&no_interval).unwrap_err();
    assert_eq!(error.field, "health_checks[0].interval");
}

#[test]
fn http_checks_compile_with_envoys_default_statuses() {
    let mut check = HealthCheck {
        interval: Some(ProtoDuration {
            seconds: 1,
            nanos: 0,
        }),
        timeout: Some(ProtoDuration {
            seconds: 1,
            nanos: 0,
        }),
        unhealthy_threshold: Some(UInt32Value { value: 3 }),
        healthy_threshold: Some(UInt32Value { value: 2 }),
        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
            health_check::HttpHealthCheck {
                path: "/healthz".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let plan = HealthCheckPlan::compile(&check, "Cluster c").unwrap();
    assert!(plan.expects(200) && !plan.expects(204) && !plan.expects(503));
    if let Some(health_check::HealthChecker::HttpHealthCheck(http)) = &mut check.health_checker {
        http.expected_statuses = vec![Int64Range {
            start: 200,
            end: 300,
        }];
    }
    let plan = HealthCheckPlan::compile(&check, "Cluster c").unwrap();
    assert!(plan.expects(204) && !plan.expects(300));
    if let Some(health_check::HealthChecker::HttpHealthCheck(http)) = &mut check.health_checker {
        http.path = "healthz".into();
    }
    let error = HealthCheckPlan::compile(&check, "Cluster c").unwrap_err();
    assert_eq!(error.field, "health_checks[0].http_health_check.path");
}

fn plan(unhealthy: u32, healthy: u32) -> HealthCheckPlan {
    HealthCheckPlan {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        unhealthy_threshold: unhealthy,
        healthy_threshold: healthy,
        kind: CheckKind::Tcp,
    }
}

#[test]
fn a_gateway_fails_at_its_first_miss_then_after_the_threshold_and_returns_after_passes() {
    let mut tracker = HealthTracker::new(&plan(2, 2));
    assert!(!tracker.track(["a:1", "b:1"]));
    // Never checked: its first miss fails it at once.
    assert!(tracker.record("a:1", false));
    assert_eq!(tracker.failed(), BTreeSet::from(["a:1".to_string()]));
    // Once checked, it takes the threshold of misses in a row.
    assert!(!tracker.record("b:1", true));
    assert!(!tracker.record("b:1", false));
    assert!(!tracker.record("b:1", true));
    assert!(!tracker.record("b:1", false));
    assert!(tracker.record("b:1", false));
    // Back after the healthy threshold of passes in a row.
    assert!(!tracker.record("a:1", true));
    assert!(!tracker.record("a:1", false));
    assert!(!tracker.record("a:1", true));
    assert!(tracker.record("a:1", true));
    assert_eq!(tracker.failed(), BTreeSet::from(["b:1".to_string()]));
    // A gateway that leaves is forgotten; unknown ids change nothing.
    assert!(tracker.track(["a:1"]));
    assert!(tracker.failed().is_empty());
    assert!(!tracker.record("b:1", false));
}

/// Gateways on port 8080 of weight 1, a locality per priority (also the packet tables' tests').
pub(super) fn assignment(priorities: &[(u32, &[&str])]) -> Assignment {
    Assignment {
        localities: priorities
            .iter()
            .map(|(priority, hosts)| Locality {
                zone: format!("z{priority}"),
                weight: 1,
                priority: *priority,
                endpoints: hosts
                    .iter()
                    .map(|h| Endpoint {
                        host: (*h).into(),
                        port: 8080,
                        weight: 1,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn ids(table: &L4Table) -> Vec<&str> {
    table.gateways().iter().map(|g| g.id.as_str()).collect()
}

#[test]
fn the_table_holds_available_gateways_of_the_first_priority_that_has_any() {
    let cla = assignment(&[(0, &["10.0.0.1", "10.0.0.2"]), (1, &["10.0.1.1"])]);
    let none = BTreeSet::new();
    let table = L4Table::build(&cla, &none, 0.0, 65_537).unwrap();
    assert_eq!(ids(&table), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    let one_failed = BTreeSet::from(["10.0.0.1:8080".to_string()]);
    let table = L4Table::build(&cla, &one_failed, 0.0, 65_537).unwrap();
    assert_eq!(ids(&table), ["10.0.0.2:8080"]);
    let both = BTreeSet::from(["10.0.0.1:8080".to_string(), "10.0.0.2:8080".to_string()]);
    let table = L4Table::build(&cla, &both, 0.0, 65_537).unwrap();
    assert_eq!(ids(&table), ["10.0.1.1:8080"]);
    // Below the panic threshold every gateway of the priority serves.
    let table = L4Table::build(&cla, &one_failed, 60.0, 65_537).unwrap();
    assert_eq!(ids(&table).len(), 2);
    // Nothing anywhere: an empty table picks nothing.
    let all = BTreeSet::from([
        "10.0.0.1:8080".to_string(),
        "10.0.0.2:8080".to_string(),
        "10.0.1.1:8080".to_string(),
    ]);
    let table = L4Table::build(&cla, &all, 0.0, 65_537).unwrap();
    assert!(table.is_empty());
    assert_eq!(table.pick(7, &[]), None);
}

#[test]
fn retries_walk_the_table_alike_on_every_node_and_never_repeat_a_gateway() {
    let hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
    let cla = assignment(&[(0, &hosts)]);
    let mut reversed = cla.clone();
    reversed.localities[0].endpoints.reverse();
    let none = BTreeSet::new();
    let a = L4Table::build(&cla, &none, 0.0, 251).unwrap();
    let b = L4Table::build(&reversed, &none, 0.0, 251).unwrap();
    for hash in 0..500u64 {
        let mut tried: Vec<String> = Vec::new();
        for _ in 0..hosts.len() {
            let first = a.pick(hash, &tried).unwrap().id.clone();
            assert_eq!(b.pick(hash, &tried).unwrap().id, first);
            assert!(!tried.contains(&first));
            tried.push(first);
        }
        assert_eq!(a.pick(hash, &tried), None);
    }
}

#[test]
fn a_udp_vip_listener_compiles_to_its_cluster_with_envoys_idle_minute() {
    use crate::core::translate::l4::udp_vip_listener;
    let resource = udp_vip_listener("10.9.0.1".parse().unwrap(), 53, "outbound|53|udp|dns");
    let listener = Listener::decode(resource.body.value.as_slice()).unwrap();
    let plan = L4ListenerPlan::compile(&listener).unwrap();
    assert_eq!(plan.transport, Transport::Udp);
    assert_eq!(plan.address, "10.9.0.1:53".parse().unwrap());
    assert_eq!(plan.cluster, "outbound|53|udp|dns");
    assert_eq!(plan.idle_timeout, Some(Duration::from_secs(60)));
    assert!(plan.freebind);

    let mut per_packet = listener.clone();
    let filter = &mut per_packet.listener_filters[0];
    let Some(listener_filter::ConfigType::TypedConfig(any)) = &mut filter.config_type else {
        panic!("a typed UDP proxy");
    };
    let mut config = UdpProxyConfig::decode(any.value.as_slice()).unwrap();
    config.use_per_packet_load_balancing = true;
    any.value = config.encode_to_vec();
    let error = L4ListenerPlan::compile(&per_packet).unwrap_err();
    assert_eq!(error.field, "listener_filters[0]");
    assert!(
        error.message.contains("usePerPacketLoadBalancing"),
        "{error}"
    );
}
