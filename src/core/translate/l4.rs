//! L4 nodes: the tier in front of the gateways. Every VIP Meridian allocated in the node's
//! cluster becomes, per TCP port of the AccessPoint's Service, a listener on VIP:port whose TCP
//! proxy forwards to the gateway pods behind that Service in the same cluster.
//!
//! It is plain Envoy configuration, so an Envoy is a valid L4 node:
//! - listeners bind with `freebind`: a VIP need not be on an interface yet (the routers send it
//!   to the node once it is announced);
//! - clusters balance with Maglev and no hash policy, so Envoy picks per connection and
//!   `meridian l4` hashes the connection's 5-tuple;
//! - gateways are health-checked by TCP connect, at the same interval whether or not traffic
//!   flows, and panic mode is off: a failed gateway leaves the table within
//!   interval × unhealthy threshold, and is never sent connections because too few are healthy;
//! - passively, a gateway refusing connections in a row is ejected sooner, and a new connection
//!   that a gateway refuses tries another.
//!
//! - with `spec.vip.proxyProtocol`, connections to the gateways start with a PROXY protocol v2
//!   header, and the gateways' listeners require one (see `listener.rs`).
//!
//! UDP ports of a Service get a UDP proxy listener (`<vip>_<port>_udp`) to a cluster named with
//! `udp` where a subset would be, so a port number used by both protocols (DNS) is two.

use ::core::net::IpAddr;
use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::core::v3::{
    health_check, proxy_protocol_config, transport_socket, HealthCheck, ProxyProtocolConfig,
    TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, Listener, ListenerFilter, UdpListenerConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    udp_proxy_config, Route as UdpRoute, UdpProxyConfig,
};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::{matcher, Matcher};

use super::listener::{any, config_source, socket_address};
use super::XdsTransport;
use super::{cluster_name, endpoint, Translation};
use crate::core::expand::ClusterView;
use crate::core::hosts::service_host;
use crate::core::resources::{GatewayConfig, Resource, ResourceType};

/// How gateways are checked: a TCP connect every interval, failed after this many misses.
const CHECK_INTERVAL_SECONDS: i64 = 2;
const CHECK_TIMEOUT_SECONDS: i64 = 1;
const UNHEALTHY_THRESHOLD: u32 = 2;
const HEALTHY_THRESHOLD: u32 = 1;
const CONNECT_TIMEOUT_SECONDS: i64 = 2;
/// A new connection tries up to this many gateways.
const CONNECT_ATTEMPTS: u32 = 3;
/// Passive health: a gateway that fails this many connections in a row is ejected (for the
/// base ejection time, longer each time) before its next failed check.
const CONSECUTIVE_FAILURES: u32 = 2;
const EJECTION_SECONDS: i64 = 10;

/// What an L4 node in `view`'s cluster is served.
pub fn translate(view: &ClusterView<'_>, xds: XdsTransport) -> Translation {
    let mut config = GatewayConfig::default();
    let mut hosts = BTreeSet::new();
    for service in &view.services {
        let Some(access_point) = service.access_point else {
            continue;
        };
        let vips = view.vips.of(access_point, &view.cluster);
        if vips.is_empty() {
            continue;
        }
        let hostname = service_host(&service.key.namespace, &service.key.name);
        // Where AccessPoints compete for a Service, the registry holds the first to claim it.
        let Some(registered) = view
            .registry
            .get(&hostname)
            .filter(|r| r.key == service.key)
        else {
            continue;
        };
        for port in service.spec.ports.iter().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let Ok(number) = u32::try_from(port.port) else {
                continue;
            };
            let udp = protocol.eq_ignore_ascii_case("UDP");
            if !udp && !protocol.eq_ignore_ascii_case("TCP") {
                continue;
            }
            let port_name = port.name.as_deref().unwrap_or_default();
            let proxy_protocol = view.proxy_protocol.contains(access_point);
            let cluster = if udp {
                let cluster = cluster_name(number, "udp", &hostname);
                config.insert(ResourceType::Cluster, udp_gateway_cluster(&cluster, xds));
                cluster
            } else {
                let cluster = cluster_name(number, "", &hostname);
                let resource = gateway_cluster(&cluster, proxy_protocol, xds);
                config.insert(ResourceType::Cluster, resource);
                cluster
            };
            config.insert(
                ResourceType::Endpoint,
                endpoint::cluster_local(&cluster, registered, (number, port_name), view),
            );
            for vip in &vips {
                // On a shared VIP the older AccessPoint (first in the view) keeps a port both
                // claim; the younger is told so in its status (`VipError::PortClash`).
                let listener = if udp {
                    udp_vip_listener(*vip, number, &cluster)
                } else {
                    vip_listener(*vip, number, &cluster)
                };
                if config.get(ResourceType::Listener, &listener.name).is_none() {
                    config.insert(ResourceType::Listener, listener);
                }
            }
            hosts.insert(hostname.clone());
        }
    }
    Translation {
        config: std::sync::Arc::new(config),
        hosts,
        ..Default::default()
    }
}

/// `<vip>_<port>`, as gateways' listeners are named after their bind address.
pub(crate) fn vip_listener(vip: IpAddr, port: u32, cluster: &str) -> Resource {
    let name = format!("{vip}_{port}");
    let proxy = TcpProxy {
        stat_prefix: cluster.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
        // A gateway that just died refuses at once: try another before the client notices.
        max_connect_attempts: Some(UInt32Value {
            value: CONNECT_ATTEMPTS,
        }),
        ..Default::default()
    };
    let listener = Listener {
        name: name.clone(),
        address: Some(socket_address(&vip.to_string(), port)),
        freebind: Some(BoolValue { value: true }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Resource::new(name, &listener)
}

/// `<vip>_<port>_udp`: a UDP proxy to the cluster, one session per client address and port,
/// idle after Envoy's default minute.
pub(crate) fn udp_vip_listener(vip: IpAddr, port: u32, cluster: &str) -> Resource {
    let name = format!("{vip}_{port}_udp");
    let route = UdpRoute {
        cluster: cluster.to_owned(),
    };
    let action = TypedExtensionConfig {
        name: "route".to_owned(),
        typed_config: Some(any(&route)),
    };
    let proxy = UdpProxyConfig {
        stat_prefix: cluster.to_owned(),
        route_specifier: Some(udp_proxy_config::RouteSpecifier::Matcher(Matcher {
            on_no_match: Some(Box::new(matcher::OnMatch {
                on_match: Some(matcher::on_match::OnMatch::Action(action)),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut address = socket_address(&vip.to_string(), port);
    if let Some(address::Address::SocketAddress(socket)) = &mut address.address {
        socket.protocol = socket_address::Protocol::Udp as i32;
    }
    let listener = Listener {
        name: name.clone(),
        address: Some(address),
        freebind: Some(BoolValue { value: true }),
        udp_listener_config: Some(UdpListenerConfig::default()),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.udp_listener.udp_proxy".to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(&proxy))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Resource::new(name, &listener)
}

/// Gateways behind a UDP port: Maglev over EDS, no active check (Envoy has none for UDP), a
/// gateway refusing datagrams (ICMP port unreachable) ejected passively, panic mode off.
pub(crate) fn udp_gateway_cluster(name: &str, xds: XdsTransport) -> Resource {
    let mut cluster = gateway_cluster_message(name, false, xds);
    cluster.health_checks.clear();
    Resource::new(name, &cluster)
}

fn proxy_protocol_v2() -> TransportSocket {
    let upstream = ProxyProtocolUpstreamTransport {
        config: Some(ProxyProtocolConfig {
            version: proxy_protocol_config::Version::V2 as i32,
            ..Default::default()
        }),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.raw_buffer".to_owned(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                &RawBuffer::default(),
            ))),
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.upstream_proxy_protocol".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&upstream))),
    }
}

fn seconds(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

/// `proxy_protocol`: every connection to a gateway starts with a PROXY protocol v2 header
/// carrying the client's address (the gateways' listeners require it).
pub(crate) fn gateway_cluster(name: &str, proxy_protocol: bool, xds: XdsTransport) -> Resource {
    Resource::new(name, &gateway_cluster_message(name, proxy_protocol, xds))
}

fn gateway_cluster_message(name: &str, proxy_protocol: bool, xds: XdsTransport) -> Cluster {
    let check = HealthCheck {
        timeout: seconds(CHECK_TIMEOUT_SECONDS),
        interval: seconds(CHECK_INTERVAL_SECONDS),
        no_traffic_interval: seconds(CHECK_INTERVAL_SECONDS),
        unhealthy_threshold: Some(UInt32Value {
            value: UNHEALTHY_THRESHOLD,
        }),
        healthy_threshold: Some(UInt32Value {
            value: HEALTHY_THRESHOLD,
        }),
        health_checker: Some(health_check::HealthChecker::TcpHealthCheck(
            health_check::TcpHealthCheck::default(),
        )),
        ..Default::default()
    };
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(config_source(xds)),
            service_name: String::new(),
        }),
        connect_timeout: seconds(CONNECT_TIMEOUT_SECONDS),
        lb_policy: cluster::LbPolicy::Maglev as i32,
        health_checks: vec![check],
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(UInt32Value {
                value: CONSECUTIVE_FAILURES,
            }),
            interval: seconds(CHECK_INTERVAL_SECONDS),
            base_ejection_time: seconds(EJECTION_SECONDS),
            max_ejection_percent: Some(UInt32Value { value: 100 }),
            enforcing_success_rate: Some(UInt32Value { value: 0 }),
            ..Default::default()
        }),
        common_lb_config: Some(cluster::CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: 0.0 }),
            ..Default::default()
        }),
        transport_socket: proxy_protocol.then(proxy_protocol_v2),
        ..Default::default()
    }
}
