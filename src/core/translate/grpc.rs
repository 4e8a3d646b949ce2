//! Proxyless gRPC clients (gRFCs A27, A28, A42, A50): what a gRPC application that names a
//! gateway in its node metadata is served, derived from that gateway's own translation so the
//! routing (VirtualServices, exportTo, DestinationRules, localities) is the gateway's.
//!
//! A client dialing `xds:///<host>:<port>` asks LDS for `<host>:<port>`. For every host a
//! gateway server routes (wildcards excepted) it gets an API listener of that name: an HTTP
//! connection manager with RDS over ADS and the router filter; a host served on one port only
//! may also be dialled as `xds:///<host>`. Its route configuration, of the
//! same name, holds that host's routes, matched on `<host>` or `<host>:<port>` (gRPC matches
//! the whole target authority). Clusters and endpoints follow, adapted to what gRPC takes:
//! - a route timeout becomes the route's `max_stream_duration` (gRPC ignores `timeout`), and a
//!   retry policy of zero retries is dropped (gRPC refuses it);
//! - clusters balance by round robin, or ring hash where the gateway uses ring hash or Maglev;
//! - a cluster gRPC cannot reach as asked is left out (its RPCs fail): one that must be
//!   reached over TLS (gRPC would need certificate providers; plaintext is never substituted),
//!   or one resolved by DNS rather than EDS;
//! - every locality gets a weight (gRPC ignores localities without one: here, its endpoint
//!   count, as Envoy balances without locality weights), priorities are renumbered without
//!   gaps, and an address listed in several localities stays only in the nearest (gRPC
//!   refuses duplicates);
//!
//! Routes whose action gRPC does not take (redirects, direct responses) stay: gRPC fails the
//! RPCs they match, as the gateway would refuse them, rather than sending them elsewhere.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use prost::Message;

use super::listener::{any, config_source};
use super::{Translation, XdsTransport};
use crate::core::resources::{GatewayConfig, Resource, ResourceType};

/// What a proxyless gRPC client of the gateway whose translation is `gateway` is served.
pub(super) fn for_clients(gateway: &Translation) -> Translation {
    let mut config = GatewayConfig::default();
    let mut clusters: BTreeSet<String> = BTreeSet::new();
    // Each host's targets: a host served on one port may also be dialled without it.
    let mut ports_of: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for resource in gateway.config.resources(ResourceType::Route).values() {
        let Some(routes) = decode::<RouteConfiguration>(resource) else {
            continue;
        };
        for host in routes.virtual_hosts {
            let Some(target) = target_of(&host) else {
                continue;
            };
            if config.get(ResourceType::Listener, &target).is_some() {
                continue;
            }
            if let Some(domain) = host.domains.first() {
                ports_of
                    .entry(domain.clone())
                    .or_default()
                    .push(target.clone());
            }
            let host = client_host(host, &target);
            clusters.extend(host.routes.iter().flat_map(clusters_of));
            config.insert(ResourceType::Listener, api_listener(&target, &target));
            let routes = RouteConfiguration {
                name: target.clone(),
                virtual_hosts: vec![host],
                ..Default::default()
            };
            config.insert(ResourceType::Route, Resource::new(target, &routes));
        }
    }
    for (domain, targets) in &ports_of {
        if let [only] = targets.as_slice() {
            if config.get(ResourceType::Listener, domain).is_none() {
                config.insert(ResourceType::Listener, api_listener(domain, only));
            }
        }
    }
    for name in &clusters {
        let Some(cluster) = gateway
            .config
            .get(ResourceType::Cluster, name)
            .and_then(|r| decode::<Cluster>(r))
            .and_then(client_cluster)
        else {
            continue;
        };
        config.insert(ResourceType::Cluster, Resource::new(name.clone(), &cluster));
        if let Some(assignment) = gateway
            .config
            .get(ResourceType::Endpoint, name)
            .and_then(|r| decode::<ClusterLoadAssignment>(r))
        {
            let assignment = client_assignment(assignment);
            config.insert(
                ResourceType::Endpoint,
                Resource::new(name.clone(), &assignment),
            );
        }
    }
    Translation {
        config: Arc::new(config),
        unresolved: gateway.unresolved.clone(),
        secret_names: BTreeSet::new(),
        hosts: gateway.hosts.clone(),
    }
}

fn decode<M: Message + Default>(resource: &Resource) -> Option<M> {
    M::decode(resource.body.value.as_slice()).ok()
}

/// The `host:port` a client dials for a virtual host (named `<domain>:<port>` by the gateway's
/// translation); none for a wildcard domain.
fn target_of(host: &VirtualHost) -> Option<String> {
    let domain = host.domains.first()?;
    (!domain.contains('*') && host.name.starts_with(domain.as_str())).then(|| host.name.clone())
}

/// The gateway's virtual host as a client sees it: matched with or without the port, its
/// routes adapted to gRPC.
fn client_host(mut host: VirtualHost, target: &str) -> VirtualHost {
    host.name = target.to_owned();
    host.domains.push(target.to_owned());
    for route in &mut host.routes {
        if let Some(route::Action::Route(action)) = &mut route.action {
            adapt_route_action(action);
        }
    }
    host
}

fn adapt_route_action(action: &mut RouteAction) {
    if let Some(timeout) = action.timeout.take() {
        let limits = action
            .max_stream_duration
            .get_or_insert_with(Default::default);
        limits.max_stream_duration.get_or_insert(timeout);
    }
    let no_retries = action
        .retry_policy
        .as_ref()
        .is_some_and(|p| p.num_retries.as_ref().is_some_and(|n| n.value == 0));
    if no_retries {
        action.retry_policy = None;
    }
}

/// The clusters a route sends to.
fn clusters_of(route: &envoy_types::pb::envoy::config::route::v3::Route) -> Vec<String> {
    let Some(route::Action::Route(action)) = &route.action else {
        return Vec::new();
    };
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(name)) => vec![name.clone()],
        Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) => {
            weighted.clusters.iter().map(|c| c.name.clone()).collect()
        }
        _ => Vec::new(),
    }
}

/// An API listener named `name` whose routes come over RDS (ADS) as `routes`.
fn api_listener(name: &str, routes: &str) -> Resource {
    let manager = HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(config_source(XdsTransport::Ads)),
            route_config_name: routes.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&manager)),
        }),
        ..Default::default()
    };
    Resource::new(name, &listener)
}

/// The cluster as gRPC takes it, or none where gRPC cannot reach it as the gateway would.
fn client_cluster(mut cluster: Cluster) -> Option<Cluster> {
    let eds = cluster.cluster_discovery_type
        == Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        ));
    if !eds || cluster.transport_socket.is_some() || !cluster.transport_socket_matches.is_empty() {
        return None;
    }
    let hashed = [cluster::LbPolicy::RingHash, cluster::LbPolicy::Maglev]
        .map(|p| p as i32)
        .contains(&cluster.lb_policy);
    cluster.lb_policy = if hashed {
        cluster::LbPolicy::RingHash as i32
    } else {
        cluster::LbPolicy::RoundRobin as i32
    };
    if !matches!(
        cluster.lb_config,
        Some(cluster::LbConfig::RingHashLbConfig(_))
    ) {
        cluster.lb_config = None;
    }
    cluster.health_checks.clear();
    Some(cluster)
}

/// Endpoints as gRPC takes them: every locality weighted, priorities without gaps.
fn client_assignment(mut assignment: ClusterLoadAssignment) -> ClusterLoadAssignment {
    // gRPC refuses an address listed twice (Envoy takes it): the nearest locality keeps it.
    assignment.endpoints.sort_by_key(|l| l.priority);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for locality in &mut assignment.endpoints {
        locality
            .lb_endpoints
            .retain(|e| seen.insert(format!("{:?}", e.host_identifier)));
    }
    assignment.endpoints.retain(|l| !l.lb_endpoints.is_empty());
    let mut priorities: Vec<u32> = assignment.endpoints.iter().map(|e| e.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    for locality in &mut assignment.endpoints {
        if locality.load_balancing_weight.is_none_or(|w| w.value == 0) {
            let count = u32::try_from(locality.lb_endpoints.len()).unwrap_or(u32::MAX);
            locality.load_balancing_weight = Some(UInt32Value {
                value: count.max(1),
            });
        }
        let rank = priorities.partition_point(|p| *p < locality.priority);
        locality.priority = u32::try_from(rank).unwrap_or(u32::MAX);
    }
    assignment
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
