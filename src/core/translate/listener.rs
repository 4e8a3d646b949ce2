//! Listeners: one per gateway (bind address, port), each an HTTP connection manager whose
//! routes come over RDS.

use std::collections::BTreeMap;

use xds_api::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, SocketAddress,
};
use xds_api::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use xds_api::pb::envoy::extensions::filters::http::router::v3::Router;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use xds_api::pb::google::protobuf::{Any, BoolValue};

use crate::core::expand::ClusterView;
use crate::core::model::ObjectKey;
use crate::core::resources::Resource;

/// A server host as the Gateway wrote it: `[namespace/]host`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerHost {
    /// `*` (any), `.` (the gateway's namespace) or a namespace name.
    pub namespace: String,
    pub host: String,
}

impl ServerHost {
    pub fn parse(text: &str) -> ServerHost {
        match text.split_once('/') {
            Some((namespace, host)) => ServerHost {
                namespace: namespace.to_owned(),
                host: host.to_owned(),
            },
            None => ServerHost {
                namespace: "*".to_owned(),
                host: text.to_owned(),
            },
        }
    }

    /// Whether a VirtualService in `vs_namespace` may bind this host of a gateway in
    /// `gateway_namespace`.
    pub fn admits_namespace(&self, vs_namespace: &str, gateway_namespace: &str) -> bool {
        match self.namespace.as_str() {
            "*" => true,
            "." => vs_namespace == gateway_namespace,
            ns => vs_namespace == ns,
        }
    }
}

/// Everything one gateway listens for on one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPort {
    pub bind: String,
    pub number: u32,
    pub gateway: ObjectKey,
    pub hosts: Vec<ServerHost>,
}

impl GatewayPort {
    pub fn listener_name(&self) -> String {
        format!("{}_{}", self.bind, self.number)
    }

    pub fn route_name(&self) -> String {
        format!("http.{}", self.number)
    }
}

/// The ports `gateway` opens, merged across every AccessPoint that declares servers for it.
pub fn gateway_ports(view: &ClusterView<'_>, gateway: &ObjectKey) -> Vec<GatewayPort> {
    let mut ports: BTreeMap<(String, u32), GatewayPort> = BTreeMap::new();
    for gw in view.gateways.iter().filter(|g| &g.key == gateway) {
        for server in &gw.spec.servers {
            let bind = server.bind.clone().unwrap_or_else(|| "0.0.0.0".to_owned());
            let entry = ports
                .entry((bind.clone(), server.port.number))
                .or_insert_with(|| GatewayPort {
                    bind,
                    number: server.port.number,
                    gateway: gateway.clone(),
                    hosts: Vec::new(),
                });
            entry
                .hosts
                .extend(server.hosts.iter().map(|h| ServerHost::parse(h)));
        }
    }
    ports
        .into_values()
        .map(|mut p| {
            p.hosts.sort();
            p.hosts.dedup();
            p
        })
        .collect()
}

pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
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

pub fn build(port: &GatewayPort) -> Resource {
    let hcm = HttpConnectionManager {
        stat_prefix: port.route_name(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: port.route_name(),
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
    };
    let listener = Listener {
        name: port.listener_name(),
        address: Some(socket_address(&port.bind, port.number)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Resource::new(port.listener_name(), &listener)
}

pub fn any<M: prost::Message + prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}
