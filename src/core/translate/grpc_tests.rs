//! Proxyless gRPC clients: the gateway's routes as API listeners, adapted to what gRPC takes.

use super::super::*;
use crate::core::json::config_to_json;
use crate::core::model::Model;

const SHOP: &str = include_str!("../../../tests/fixtures/shop.yaml");

fn client(zone: &str) -> GatewayIdentity {
    GatewayIdentity {
        role: NodeRole::Grpc,
        xds: XdsTransport::Ads,
        gateway: ObjectKey::new("edge", "public"),
        cluster: "local".into(),
        zone: zone.into(),
    }
}

fn model() -> Model {
    crate::core::test_support::model_of(SHOP, "default")
}

fn served(identity: &GatewayIdentity) -> serde_json::Value {
    let translation = super::super::scope::translate_checked(&model(), identity);
    config_to_json(&translation.config).unwrap()
}

#[test]
fn each_routed_host_is_an_api_listener_with_its_routes_over_ads() {
    let json = served(&client("zone-a"));
    let target = "shop.example.com:8080";
    let listeners: Vec<&String> = json["LDS"].as_object().unwrap().keys().collect();
    assert_eq!(listeners, ["shop.example.com", target]);
    // Served on one port only, the host may be dialled without it: the same routes.
    assert_eq!(
        json["LDS"]["shop.example.com"]["apiListener"]["apiListener"]["rds"]["routeConfigName"],
        target
    );
    let manager = &json["LDS"][target]["apiListener"]["apiListener"];
    assert_eq!(manager["rds"]["routeConfigName"], target);
    assert!(
        manager["rds"]["configSource"]["ads"].is_object(),
        "{manager}"
    );
    let filters: Vec<&str> = manager["httpFilters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(filters, ["envoy.filters.http.router"]);
    assert!(json["LDS"][target]["address"].is_null(), "no socket");

    let host = &json["RDS"][target]["virtualHosts"][0];
    assert_eq!(
        host["domains"],
        serde_json::json!(["shop.example.com", target]),
        "gRPC matches the whole target authority"
    );
    let routes = host["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 4, "every route of the host, in order");
    // The timeout is a stream deadline for gRPC; retries stay.
    let api = &routes[0]["route"];
    assert!(api["timeout"].is_null(), "{api}");
    assert_eq!(api["maxStreamDuration"]["maxStreamDuration"], "2s");
    assert_eq!(api["retryPolicy"]["numRetries"], 3);
    // A redirect stays a redirect: gRPC fails those RPCs rather than sending them on.
    assert!(routes[1]["redirect"].is_object());
    assert_eq!(
        routes[3]["route"]["weightedClusters"]["clusters"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(json["SDS"].is_null(), "no secrets for applications");
}

#[test]
fn clusters_balance_as_grpc_can_and_every_locality_has_a_weight() {
    let json = served(&client("zone-a"));
    let v1 = "outbound|80|v1|web.shop.svc.cluster.local";
    let v2 = "outbound|80|v2|web.shop.svc.cluster.local";
    assert_eq!(
        json["CDS"][v1]["lbPolicy"]
            .as_str()
            .unwrap_or("ROUND_ROBIN"),
        "ROUND_ROBIN"
    );
    // The gateway's Maglev (consistent hash) is a ring hash for gRPC.
    assert_eq!(json["CDS"][v2]["lbPolicy"], "RING_HASH");
    assert!(json["CDS"][v2]["maglevLbConfig"].is_null());
    assert!(
        json["CDS"][v1]["outlierDetection"].is_object(),
        "A50 reads it"
    );
    for cluster in json["CDS"].as_object().unwrap().values() {
        assert!(cluster["healthChecks"].is_null(), "{cluster}");
    }

    let localities = json["EDS"][v1]["endpoints"].as_array().unwrap();
    assert_eq!(localities.len(), 2);
    for locality in localities {
        assert!(
            locality["loadBalancingWeight"].as_u64().unwrap() >= 1,
            "{locality}"
        );
    }
    // The client's own zone first, the other after it, with no gap.
    let priority_of = |zone: &str| {
        localities
            .iter()
            .find(|l| l["locality"]["zone"] == zone)
            .map(|l| l["priority"].as_u64().unwrap_or(0))
            .unwrap()
    };
    assert_eq!((priority_of("zone-a"), priority_of("zone-b")), (0, 1));
}

#[test]
fn a_cluster_grpc_cannot_reach_as_asked_is_left_out() {
    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    let eds = Cluster {
        name: "c".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        ..Default::default()
    };
    let adapted = super::client_cluster(eds.clone()).expect("an EDS cluster is served");
    assert_eq!(adapted.lb_policy, cluster::LbPolicy::RoundRobin as i32);
    // TLS to the upstream: never handed to gRPC as plaintext.
    let tls = Cluster {
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: None,
        }),
        ..eds.clone()
    };
    assert_eq!(super::client_cluster(tls), None);
    // Resolved by DNS: gRPC reads endpoints from EDS only.
    let dns = Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32,
        )),
        ..eds
    };
    assert_eq!(super::client_cluster(dns), None);
}

#[test]
fn an_address_in_two_localities_stays_only_in_the_nearest() {
    use envoy_types::pb::envoy::config::endpoint::v3::{
        lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    let endpoint = |port: u32| LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(super::super::listener::socket_address("127.0.0.1", port)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let locality = |priority: u32, ports: &[u32]| LocalityLbEndpoints {
        priority,
        lb_endpoints: ports.iter().map(|p| endpoint(*p)).collect(),
        ..Default::default()
    };
    let assignment = ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![
            locality(2, &[8080]),
            locality(0, &[8080, 8081]),
            locality(1, &[8081]),
        ],
        ..Default::default()
    };
    let adapted = super::client_assignment(assignment);
    assert_eq!(
        adapted.endpoints.len(),
        1,
        "the farther localities held only duplicates"
    );
    assert_eq!(adapted.endpoints[0].priority, 0);
    assert_eq!(adapted.endpoints[0].lb_endpoints.len(), 2);
}
