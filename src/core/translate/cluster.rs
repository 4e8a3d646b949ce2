//! Clusters: one per (service host, port, subset) that a bound route uses, shaped by the
//! DestinationRule that applies to the host.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers, cluster, CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
    RoutingPriority,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{hash_policy, HashPolicy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};

use super::destination_rule::policy_for;
use super::endpoint;
use super::listener::{any, config_source};
use super::locality;
use super::ClusterRef;
use super::XdsTransport;
use crate::api::istio::{Resolution, SimpleLb, TrafficPolicy};
use crate::core::duration;
use crate::core::expand::registry::{RegisteredService, ServiceRegistry};
use crate::core::expand::ClusterView;
use crate::core::resources::Resource;

/// Istio's default connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct BuiltCluster {
    pub resource: Resource,
    pub uses_eds: bool,
}

pub fn build(
    name: &str,
    service: &RegisteredService<'_>,
    cluster_ref: &ClusterRef,
    policy: &TrafficPolicy,
    xds: XdsTransport,
) -> BuiltCluster {
    let mut cluster = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(duration::to_proto(
            policy
                .connection_pool
                .as_ref()
                .and_then(|p| p.tcp.as_ref())
                .and_then(|t| t.connect_timeout.as_deref())
                .and_then(|t| duration::parse(t).ok())
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        )),
        ..Default::default()
    };
    let uses_eds = match service.resolution() {
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let kind = if service.resolution() == Resolution::Dns {
                cluster::DiscoveryType::StrictDns
            } else {
                cluster::DiscoveryType::LogicalDns
            };
            cluster.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(kind as i32));
            cluster.dns_lookup_family = cluster::DnsLookupFamily::V4Preferred as i32;
            cluster.load_assignment = Some(endpoint::dns_assignment(name, service, cluster_ref));
            false
        }
        Resolution::Static | Resolution::None => {
            cluster.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
            cluster.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(config_source(xds)),
                service_name: String::new(),
            });
            true
        }
    };
    apply_load_balancer(&mut cluster, policy);
    let locality_setting = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref());
    if uses_eds && locality::uses_weights(locality_setting) {
        cluster.common_lb_config = Some(cluster::CommonLbConfig {
            locality_config_specifier: Some(
                cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    cluster::common_lb_config::LocalityWeightedLbConfig {},
                ),
            ),
            ..Default::default()
        });
    }
    apply_connection_pool(&mut cluster, policy);
    apply_outlier_detection(&mut cluster, policy);
    let http2 = service.port(cluster_ref.port).is_some_and(|p| p.http2);
    apply_upstream_http_options(&mut cluster, policy, http2);
    BuiltCluster {
        resource: Resource::new(name, &cluster),
        uses_eds,
    }
}

fn apply_load_balancer(cluster: &mut Cluster, policy: &TrafficPolicy) {
    let lb = policy.load_balancer.as_ref();
    if let Some(hash) = lb.and_then(|l| l.consistent_hash.as_ref()) {
        if let Some(maglev) = &hash.maglev {
            cluster.lb_policy = cluster::LbPolicy::Maglev as i32;
            cluster.lb_config = maglev.table_size.map(|size| {
                cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                    table_size: Some(UInt64Value { value: size }),
                })
            });
        } else {
            cluster.lb_policy = cluster::LbPolicy::RingHash as i32;
            cluster.lb_config = hash
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .map(|size| {
                    cluster::LbConfig::RingHashLbConfig(cluster::RingHashLbConfig {
                        minimum_ring_size: Some(UInt64Value { value: size }),
                        ..Default::default()
                    })
                });
        }
        return;
    }
    // Istio's default is LEAST_REQUEST; ROUND_ROBIN and RANDOM on request.
    cluster.lb_policy = match lb.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => cluster::LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => cluster::LbPolicy::Random,
        _ => cluster::LbPolicy::LeastRequest,
    } as i32;
}

fn apply_connection_pool(cluster: &mut Cluster, policy: &TrafficPolicy) {
    let Some(pool) = &policy.connection_pool else {
        return;
    };
    let u32v = |v: Option<u32>| v.map(|value| UInt32Value { value });
    let tcp = pool.tcp.as_ref();
    let http = pool.http.as_ref();
    let thresholds = circuit_breakers::Thresholds {
        priority: RoutingPriority::Default as i32,
        max_connections: u32v(tcp.and_then(|t| t.max_connections)),
        max_pending_requests: u32v(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: u32v(http.and_then(|h| h.http2_max_requests)),
        max_retries: u32v(http.and_then(|h| h.max_retries)),
        ..Default::default()
    };
    if thresholds != (circuit_breakers::Thresholds::default()) {
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![thresholds],
            ..Default::default()
        });
    }
}

/// The upstream HTTP protocol (HTTP/2 for gRPC and `http2`/`grpc` ports, HTTP/1.1 otherwise)
/// and `maxRequestsPerConnection`, as Istio sets them: one `HttpProtocolOptions` extension.
fn apply_upstream_http_options(cluster: &mut Cluster, policy: &TrafficPolicy, http2: bool) {
    let max_requests_per_connection = policy
        .connection_pool
        .as_ref()
        .and_then(|pool| pool.http.as_ref())
        .and_then(|http| http.max_requests_per_connection)
        .map(|value| UInt32Value { value });
    if !http2 && max_requests_per_connection.is_none() {
        return;
    }
    let protocol = if http2 {
        explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
    } else {
        explicit_http_config::ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: max_requests_per_connection.map(|cap| CommonHttpOptions {
            max_requests_per_connection: Some(cap),
            ..Default::default()
        }),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(protocol),
            },
        )),
        ..Default::default()
    };
    cluster
        .typed_extension_protocol_options
        .insert(UPSTREAM_HTTP_OPTIONS.to_owned(), any(&options));
}

/// The key Envoy files upstream HTTP options under.
pub const UPSTREAM_HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn apply_outlier_detection(cluster: &mut Cluster, policy: &TrafficPolicy) {
    let Some(od) = &policy.outlier_detection else {
        return;
    };
    let u32v = |v: Option<u32>| v.map(|value| UInt32Value { value });
    let dur = |v: &Option<String>| {
        v.as_deref()
            .and_then(|d| duration::parse(d).ok())
            .map(duration::to_proto)
    };
    // Istio's reading of minHealthPercent: Envoy's panic threshold, 0 (no panic) by default,
    // so ejected hosts stay ejected however many there are.
    cluster
        .common_lb_config
        .get_or_insert_with(Default::default)
        .healthy_panic_threshold = Some(Percent {
        value: f64::from(od.min_health_percent.unwrap_or(0)),
    });
    cluster.outlier_detection = Some(EnvoyOutlier {
        // Istio's: success-rate ejection, which Envoy enforces by default, stays off, so an
        // endpoint is ejected only for what the DestinationRule names.
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        consecutive_5xx: u32v(od.consecutive_5xx_errors),
        consecutive_gateway_failure: u32v(od.consecutive_gateway_errors),
        enforcing_consecutive_gateway_failure: od
            .consecutive_gateway_errors
            .map(|_| UInt32Value { value: 100 }),
        interval: dur(&od.interval),
        base_ejection_time: dur(&od.base_ejection_time),
        max_ejection_percent: u32v(od.max_ejection_percent),
        ..Default::default()
    });
}

/// Route hash policies for consistent-hash load balancing of the referenced cluster.
pub fn hash_policy_for(
    view: &ClusterView<'_>,
    registry: &ServiceRegistry<'_>,
    cluster_ref: &ClusterRef,
) -> Vec<HashPolicy> {
    let Some(service) = registry.get(&cluster_ref.host) else {
        return Vec::new();
    };
    let policy = policy_for(view, service, cluster_ref);
    let Some(hash) = policy.load_balancer.and_then(|l| l.consistent_hash) else {
        return Vec::new();
    };
    let specifier = if let Some(header) = hash.http_header_name {
        hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: header,
            ..Default::default()
        })
    } else if let Some(param) = hash.http_query_parameter_name {
        hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: param })
    } else if hash.use_source_ip {
        hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
            source_ip: true,
        })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }]
}
