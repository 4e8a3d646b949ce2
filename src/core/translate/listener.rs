//! Listeners: one per gateway (bind address, port), with an HTTP connection manager per route
//! scope whose routes come over RDS. TLS servers get their own filter chain, matched on SNI,
//! with certificates fetched over SDS.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{
    address, api_config_source, config_source, socket_address, transport_socket, Address,
    AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, SocketAddress,
    TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue};

use std::time::Duration as StdDuration;

use super::XdsTransport;
use super::{REST_REQUEST_TIMEOUT, XDS_CLUSTER};
use crate::core::binding::GatewayPort;
use crate::core::duration;
use crate::core::model::tls::{TlsMode, TlsServer};
use crate::core::resources::Resource;
use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
};

/// Where a proxy that talks xDS over `xds` fetches the resources a listener or cluster names.
pub fn config_source(xds: XdsTransport) -> ConfigSource {
    let specifier = match xds {
        XdsTransport::Ads => config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {}),
        XdsTransport::Rest { refresh_delay_ms } => {
            config_source::ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
                api_type: api_config_source::ApiType::Rest as i32,
                transport_api_version: ApiVersion::V3 as i32,
                cluster_names: vec![XDS_CLUSTER.to_owned()],
                refresh_delay: Some(duration::to_proto(StdDuration::from_millis(
                    refresh_delay_ms,
                ))),
                request_timeout: Some(duration::to_proto(REST_REQUEST_TIMEOUT)),
                ..Default::default()
            })
        }
    };
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(specifier),
        ..Default::default()
    }
}

pub fn socket_address(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// One listener for the scopes sharing a (bind, port): a filter chain per scope. TLS chains
/// match on SNI; a later scope claiming a name an earlier one holds loses it (Envoy rejects
/// duplicate matches), and the plaintext chain then only takes non-TLS connections.
pub fn build(scopes: &[&GatewayPort], xds: XdsTransport) -> Option<Resource> {
    let first = scopes.first()?;
    let has_tls = scopes.iter().any(|s| s.tls.is_some());
    let mut claimed: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut claimed_names: BTreeSet<String> = BTreeSet::new();
    let mut filter_chains = Vec::new();
    for scope in scopes {
        let hcm = Filter {
            name: "envoy.filters.network.http_connection_manager".to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(any(&connection_manager(
                scope, xds,
            )))),
        };
        match &scope.tls {
            None => filter_chains.push(FilterChain {
                filter_chain_match: has_tls.then(|| FilterChainMatch {
                    transport_protocol: "raw_buffer".to_owned(),
                    ..Default::default()
                }),
                filters: vec![hcm],
                ..Default::default()
            }),
            Some(tls) => {
                let all = scope.server_names();
                let names: Vec<String> = all
                    .iter()
                    .filter(|n| !claimed_names.contains(*n))
                    .cloned()
                    .collect();
                if (!all.is_empty() && names.is_empty()) || !claimed.insert(names.clone()) {
                    continue;
                }
                claimed_names.extend(names.iter().cloned());
                filter_chains.push(FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: names,
                        transport_protocol: "tls".to_owned(),
                        ..Default::default()
                    }),
                    filters: vec![hcm],
                    transport_socket: Some(downstream_tls(tls, xds)),
                    ..Default::default()
                });
            }
        }
    }
    // The PROXY header comes first on the wire, before any TLS ClientHello.
    let mut listener_filters = Vec::new();
    if scopes.iter().any(|s| s.proxy_protocol) {
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.proxy_protocol".to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                &ProxyProtocol::default(),
            ))),
            ..Default::default()
        });
    }
    if has_tls {
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
    let listener = Listener {
        name: first.listener_name(),
        address: Some(socket_address(&first.bind, first.number)),
        listener_filters,
        filter_chains,
        ..Default::default()
    };
    Some(Resource::new(first.listener_name(), &listener))
}

fn connection_manager(scope: &GatewayPort, xds: XdsTransport) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: scope.route_name(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(config_source(xds)),
            route_config_name: scope.route_name(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        use_remote_address: Some(BoolValue { value: true }),
        strip_port_mode: Some(http_connection_manager::StripPortMode::StripAnyHostPort(
            true,
        )),
        ..Default::default()
    }
}

/// The server side of TLS: certificate (and client CA for `MUTUAL`) fetched over SDS.
fn downstream_tls(tls: &TlsServer, xds: XdsTransport) -> TransportSocket {
    let sds = |name: &str| SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(config_source(xds)),
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(&tls.certificate)],
            alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
            validation_context_type: tls.validation.as_deref().map(|name| {
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    name,
                ))
            }),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue {
            value: tls.mode == TlsMode::Mutual,
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

pub fn any<M: prost::Message + prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}
