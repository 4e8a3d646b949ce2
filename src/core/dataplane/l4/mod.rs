//! What `meridian l4` compiles from the configuration an L4 node is served
//! (`core::translate::l4`): listeners on VIP:port whose one filter is a TCP proxy to a cluster,
//! and clusters of gateways balanced by Maglev over the connection's 5-tuple, health-checked
//! actively ([`health`]) and passively (outlier detection), optionally sending a PROXY protocol
//! v2 header first. [`table`] turns a cluster's endpoints and health into the lookup table
//! the data path uses.
//!
//! As for the proxy, every field is honoured or refused by name (the node NACKs with it).

pub mod announce;
pub mod flows;
pub mod health;
pub mod packet_tables;
pub mod table;

use ::core::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    proxy_protocol_config, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, listener_filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    udp_proxy_config, Route as UdpRoute, UdpProxyConfig,
};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::xds::r#type::matcher::v3::{matcher, Matcher};
use prost::{Message, Name};

use self::health::HealthCheckPlan;
use super::balancer::Assignment;
use super::maglev;
use super::outlier::OutlierPolicy;
use super::{refuse_leftovers_of, CompileError};

const PROGRAM: &str = "meridian l4";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

const UDP_PROXY: &str = "envoy.filters.udp_listener.udp_proxy";

/// Envoy's defaults: one connect attempt, a 5 s connect timeout, a 1 h idle timeout (a
/// minute for UDP sessions).
const DEFAULT_CONNECT_ATTEMPTS: u32 = 1;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a listener carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Connections, each relayed to one gateway.
    Tcp,
    /// Datagrams, grouped in flows by client address and port, each flow to one gateway.
    Udp,
}

/// A VIP:port listener, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4ListenerPlan {
    pub name: String,
    pub address: SocketAddr,
    pub transport: Transport,
    /// Bind even when the address is not (yet) on an interface (`IP_FREEBIND`).
    pub freebind: bool,
    pub cluster: String,
    /// Gateways tried per new connection before it is closed.
    pub connect_attempts: u32,
    /// A connection (a UDP flow) with no bytes either way for this long is closed (`None`:
    /// never).
    pub idle_timeout: Option<Duration>,
}

/// A cluster of gateways, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct L4ClusterPlan {
    pub name: String,
    pub connect_timeout: Duration,
    /// The Maglev table's (prime) size.
    pub table_size: u64,
    pub health_check: Option<HealthCheckPlan>,
    pub outlier: Option<OutlierPolicy>,
    /// Below this percentage of available gateways, all of them take connections (0: never).
    pub panic_threshold: f64,
    /// Start every connection to a gateway with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
    /// Endpoints listed in the cluster itself; `None`: from EDS under the cluster's name.
    pub static_assignment: Option<Assignment>,
}

fn duration(d: envoy_types::pb::google::protobuf::Duration) -> Duration {
    Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    )
}

fn decode<M: Message + Name + Default>(
    any: &Any,
    resource: &str,
    field: &str,
) -> Result<M, CompileError> {
    if any.type_url != M::type_url() {
        return Err(CompileError::new(
            resource,
            field,
            format!("{} is not supported by {PROGRAM}", any.type_url),
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| CompileError::new(resource, field, e.to_string()))
}

impl L4ListenerPlan {
    pub fn compile(listener: &Listener) -> Result<L4ListenerPlan, CompileError> {
        let resource = format!("Listener {}", listener.name);
        let mut rest = listener.clone();
        let name = std::mem::take(&mut rest.name);
        let (address, transport) = match rest.address.take().and_then(|a| a.address) {
            Some(AddressKind::SocketAddress(mut socket)) => {
                let port = match socket.port_specifier.take() {
                    Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
                    _ => None,
                };
                let ip = socket.address.parse::<IpAddr>().ok();
                socket.address.clear();
                let transport = match socket_address::Protocol::try_from(socket.protocol) {
                    Ok(socket_address::Protocol::Tcp) => Transport::Tcp,
                    Ok(socket_address::Protocol::Udp) => Transport::Udp,
                    Err(_) => {
                        return Err(CompileError::new(
                            &resource,
                            "address.socket_address.protocol",
                            "TCP or UDP",
                        ))
                    }
                };
                socket.protocol = 0;
                refuse_leftovers_of(PROGRAM, &socket, &resource, "address.socket_address")?;
                match (ip, port) {
                    (Some(ip), Some(port)) => (SocketAddr::new(ip, port), transport),
                    _ => {
                        return Err(CompileError::new(
                            &resource,
                            "address.socket_address",
                            "an IP address and a port are required",
                        ))
                    }
                }
            }
            _ => {
                return Err(CompileError::new(
                    &resource,
                    "address",
                    format!("only socket addresses are supported by {PROGRAM}"),
                ))
            }
        };
        if transport == Transport::Udp {
            return compile_udp(name, address, rest, &resource);
        }
        let freebind = rest.freebind.take().is_some_and(|b| b.value);
        let chains = std::mem::take(&mut rest.filter_chains);
        let [chain] = chains.as_slice() else {
            return Err(CompileError::new(
                &resource,
                "filter_chains",
                format!("exactly one filter chain is supported by {PROGRAM}"),
            ));
        };
        let mut chain = chain.clone();
        let filters = std::mem::take(&mut chain.filters);
        refuse_leftovers_of(PROGRAM, &chain, &resource, "filter_chains[0]")?;
        let proxy = match filters.as_slice() {
            [only] if only.name == TCP_PROXY || only.name.is_empty() => match &only.config_type {
                Some(filter::ConfigType::TypedConfig(any)) => {
                    decode::<TcpProxy>(any, &resource, "filter_chains[0].filters[0]")?
                }
                _ => {
                    return Err(CompileError::new(
                        &resource,
                        "filter_chains[0].filters[0]",
                        "a typed TCP proxy configuration is required",
                    ))
                }
            },
            _ => {
                return Err(CompileError::new(
                    &resource,
                    "filter_chains[0].filters",
                    format!("exactly one filter, the TCP proxy, is supported by {PROGRAM}"),
                ))
            }
        };
        let mut proxy_rest = proxy;
        proxy_rest.stat_prefix.clear();
        let cluster = match proxy_rest.cluster_specifier.take() {
            Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) if !cluster.is_empty() => cluster,
            _ => {
                return Err(CompileError::new(
                    &resource,
                    "filter_chains[0].filters[0].cluster",
                    "one cluster is required (weighted clusters are not supported)",
                ))
            }
        };
        let connect_attempts = proxy_rest
            .max_connect_attempts
            .take()
            .map_or(DEFAULT_CONNECT_ATTEMPTS, |v| v.value)
            .max(1);
        let idle_timeout = match proxy_rest.idle_timeout.take().map(duration) {
            None => Some(DEFAULT_IDLE_TIMEOUT),
            Some(Duration::ZERO) => None,
            Some(timeout) => Some(timeout),
        };
        refuse_leftovers_of(
            PROGRAM,
            &proxy_rest,
            &resource,
            "filter_chains[0].filters[0]",
        )?;
        refuse_leftovers_of(PROGRAM, &rest, &resource, "")?;
        Ok(L4ListenerPlan {
            name,
            address,
            transport: Transport::Tcp,
            freebind,
            cluster,
            connect_attempts,
            idle_timeout,
        })
    }
}

/// A UDP listener: one listener filter, the UDP proxy, routing every datagram to one cluster.
fn compile_udp(
    name: String,
    address: SocketAddr,
    mut rest: Listener,
    resource: &str,
) -> Result<L4ListenerPlan, CompileError> {
    let freebind = rest.freebind.take().is_some_and(|b| b.value);
    if let Some(config) = rest.udp_listener_config.take() {
        refuse_leftovers_of(PROGRAM, &config, resource, "udp_listener_config")?;
    }
    let filters = std::mem::take(&mut rest.listener_filters);
    let config = match filters.as_slice() {
        [only] if only.name == UDP_PROXY || only.name.is_empty() => match &only.config_type {
            Some(listener_filter::ConfigType::TypedConfig(any)) => {
                decode::<UdpProxyConfig>(any, resource, "listener_filters[0]")?
            }
            _ => {
                return Err(CompileError::new(
                    resource,
                    "listener_filters[0]",
                    "a typed UDP proxy configuration is required",
                ))
            }
        },
        _ => {
            return Err(CompileError::new(
                resource,
                "listener_filters",
                format!("exactly one listener filter, the UDP proxy, is supported by {PROGRAM}"),
            ))
        }
    };
    const FIELD: &str = "listener_filters[0]";
    let mut config = config;
    config.stat_prefix.clear();
    let cluster = match config.route_specifier.take() {
        #[allow(deprecated)]
        Some(udp_proxy_config::RouteSpecifier::Cluster(cluster)) => cluster,
        Some(udp_proxy_config::RouteSpecifier::Matcher(matcher)) => {
            matched_cluster(&matcher, resource)?
        }
        None => String::new(),
    };
    if cluster.is_empty() {
        return Err(CompileError::new(
            resource,
            format!("{FIELD}.matcher"),
            "one cluster is required",
        ));
    }
    let idle_timeout = match config.idle_timeout.take().map(duration) {
        None => Some(DEFAULT_UDP_IDLE_TIMEOUT),
        Some(Duration::ZERO) => None,
        Some(timeout) => Some(timeout),
    };
    refuse_leftovers_of(PROGRAM, &config, resource, FIELD)?;
    refuse_leftovers_of(PROGRAM, &rest, resource, "")?;
    Ok(L4ListenerPlan {
        name,
        address,
        transport: Transport::Udp,
        freebind,
        cluster,
        connect_attempts: 1,
        idle_timeout,
    })
}

/// The cluster of a matcher that matches nothing and routes everything to one cluster (what
/// Meridian sends); any other tree is refused.
fn matched_cluster(matcher: &Matcher, resource: &str) -> Result<String, CompileError> {
    const FIELD: &str = "listener_filters[0].matcher";
    let refused = || {
        CompileError::new(
            resource,
            FIELD,
            format!("only on_no_match with one route action is supported by {PROGRAM}"),
        )
    };
    if matcher.matcher_type.is_some() {
        return Err(refused());
    }
    let action = match matcher
        .on_no_match
        .as_deref()
        .and_then(|m| m.on_match.as_ref())
    {
        Some(matcher::on_match::OnMatch::Action(action)) => action,
        _ => return Err(refused()),
    };
    let any = action.typed_config.as_ref().ok_or_else(refused)?;
    let mut route = decode::<UdpRoute>(any, resource, FIELD)?;
    let cluster = std::mem::take(&mut route.cluster);
    refuse_leftovers_of(PROGRAM, &route, resource, FIELD)?;
    Ok(cluster)
}

impl L4ClusterPlan {
    pub fn compile(cluster: &Cluster) -> Result<L4ClusterPlan, CompileError> {
        let resource = format!("Cluster {}", cluster.name);
        let mut rest = cluster.clone();
        let name = std::mem::take(&mut rest.name);
        if LbPolicy::try_from(rest.lb_policy) != Ok(LbPolicy::Maglev) {
            return Err(CompileError::new(
                &resource,
                "lb_policy",
                format!("only MAGLEV is supported by {PROGRAM} (it hashes the 5-tuple)"),
            ));
        }
        rest.lb_policy = 0;
        let table_size = match rest.lb_config.take() {
            None => maglev::DEFAULT_TABLE_SIZE,
            Some(LbConfig::MaglevLbConfig(mut config)) => {
                let size = config
                    .table_size
                    .take()
                    .map_or(maglev::DEFAULT_TABLE_SIZE, |v| v.value);
                maglev::check_size(size, 0).map_err(|e| {
                    CompileError::new(&resource, "maglev_lb_config.table_size", e.to_string())
                })?;
                refuse_leftovers_of(PROGRAM, &config, &resource, "maglev_lb_config")?;
                size
            }
            Some(_) => {
                return Err(CompileError::new(
                    &resource,
                    "lb_config",
                    "a MAGLEV cluster takes maglev_lb_config only",
                ))
            }
        };
        let connect_timeout = rest
            .connect_timeout
            .take()
            .map_or(DEFAULT_CONNECT_TIMEOUT, duration);
        let static_assignment = match rest.cluster_discovery_type.take() {
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32 => {
                rest.eds_cluster_config = None;
                None
            }
            None | Some(ClusterDiscoveryType::Type(0)) => Some(
                rest.load_assignment
                    .take()
                    .map(|cla| Assignment::compile(&cla, &resource))
                    .transpose()?
                    .unwrap_or_default(),
            ),
            _ => {
                return Err(CompileError::new(
                    &resource,
                    "type",
                    format!("only EDS and STATIC are supported by {PROGRAM}"),
                ))
            }
        };
        let checks = std::mem::take(&mut rest.health_checks);
        let health_check = match checks.as_slice() {
            [] => None,
            [check] => Some(HealthCheckPlan::compile(check, &resource)?),
            _ => {
                return Err(CompileError::new(
                    &resource,
                    "health_checks",
                    format!("at most one health check is supported by {PROGRAM}"),
                ))
            }
        };
        let outlier = rest
            .outlier_detection
            .take()
            .map(|od| OutlierPolicy::compile(&od, &resource))
            .transpose()?;
        let mut panic_threshold = 50.0;
        if let Some(mut common) = rest.common_lb_config.take() {
            if let Some(threshold) = common.healthy_panic_threshold.take() {
                panic_threshold = threshold.value.clamp(0.0, 100.0);
            }
            refuse_leftovers_of(PROGRAM, &common, &resource, "common_lb_config")?;
        }
        let proxy_protocol = match rest.transport_socket.take() {
            None => false,
            Some(socket) => proxy_protocol_socket(&socket, &resource)?,
        };
        refuse_leftovers_of(PROGRAM, &rest, &resource, "")?;
        Ok(L4ClusterPlan {
            name,
            connect_timeout,
            table_size,
            health_check,
            outlier,
            panic_threshold,
            proxy_protocol,
            static_assignment,
        })
    }
}

/// Whether a cluster's transport socket sends a PROXY protocol v2 header (over plain TCP, the
/// only other thing accepted).
fn proxy_protocol_socket(
    socket: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    resource: &str,
) -> Result<bool, CompileError> {
    const FIELD: &str = "transport_socket";
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Err(CompileError::new(
            resource,
            FIELD,
            "a typed config is required",
        ));
    };
    if any.type_url == RawBuffer::type_url() {
        return Ok(false);
    }
    let mut upstream = decode::<ProxyProtocolUpstreamTransport>(any, resource, FIELD)?;
    let version = upstream.config.take().map(|c| (c.version, c));
    match version {
        Some((v, mut config)) if v == proxy_protocol_config::Version::V2 as i32 => {
            config.version = 0;
            refuse_leftovers_of(PROGRAM, &config, resource, "transport_socket.config")?;
        }
        _ => {
            return Err(CompileError::new(
                resource,
                "transport_socket.config.version",
                format!("only PROXY protocol version 2 is sent by {PROGRAM}"),
            ))
        }
    }
    if let Some(inner) = upstream.transport_socket.take() {
        match &inner.config_type {
            Some(transport_socket::ConfigType::TypedConfig(any))
                if any.type_url == RawBuffer::type_url() => {}
            _ => {
                return Err(CompileError::new(
                    resource,
                    "transport_socket.transport_socket",
                    format!("only raw_buffer is supported by {PROGRAM}"),
                ))
            }
        }
    }
    refuse_leftovers_of(PROGRAM, &upstream, resource, FIELD)?;
    Ok(true)
}

#[cfg(test)]
mod tests;
