//! Listeners: where to accept connections and which route configuration serves them. A
//! listener Meridian emits holds one HTTP connection manager per filter chain, its routes over
//! RDS; TLS filter chains (SNI, SDS certificates) are not served by this proxy yet and refused.

use prost::Message;
use xds_api::pb::envoy::config::core::v3::address::Address as AddressKind;
use xds_api::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use xds_api::pb::envoy::config::listener::v3::filter::ConfigType;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier, StripPortMode,
};
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};

use super::{refuse_leftovers, CompileError};

const CONNECTION_MANAGER: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// A compiled listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerPlan {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// The route configuration (RDS) its requests are routed by.
    pub route_config: String,
    /// Append the client's address to `x-forwarded-for` (Envoy's `use_remote_address`).
    pub use_remote_address: bool,
}

impl ListenerPlan {
    pub fn compile(listener: &Listener) -> Result<ListenerPlan, CompileError> {
        let resource = format!("Listener {}", listener.name);
        let mut rest = listener.clone();
        let name = std::mem::take(&mut rest.name);
        let (address, port) = match rest.address.take().and_then(|a| a.address) {
            Some(AddressKind::SocketAddress(socket)) => {
                let port = match socket.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
                    _ => None,
                };
                match port {
                    Some(port) => (socket.address, port),
                    None => return Err(CompileError::new(&resource, "address", "no valid port")),
                }
            }
            _ => {
                return Err(CompileError::new(
                    &resource,
                    "address",
                    "only socket addresses are supported by meridian proxy",
                ))
            }
        };
        let chains = std::mem::take(&mut rest.filter_chains);
        let [chain] = chains.as_slice() else {
            return Err(CompileError::new(
                &resource,
                "filter_chains",
                "exactly one filter chain is supported by meridian proxy (TLS servers are not yet)",
            ));
        };
        refuse_leftovers(&rest, &resource, "")?;
        let mut chain = chain.clone();
        let filters = std::mem::take(&mut chain.filters);
        refuse_leftovers(&chain, &resource, "filter_chains[0]")?;
        let [filter] = filters.as_slice() else {
            return Err(CompileError::new(
                &resource,
                "filter_chains[0].filters",
                "exactly one filter, the HTTP connection manager, is supported by meridian proxy",
            ));
        };
        let field = "filter_chains[0].filters[0]";
        let manager = match &filter.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url == CONNECTION_MANAGER => {
                HttpConnectionManager::decode(any.value.as_slice())
                    .map_err(|e| CompileError::new(&resource, field, e.to_string()))?
            }
            _ => {
                return Err(CompileError::new(
                    &resource,
                    field,
                    "only the HTTP connection manager is supported by meridian proxy",
                ))
            }
        };
        let (route_config, use_remote_address) =
            connection_manager(manager, &resource, &format!("{field}.typed_config"))?;
        Ok(ListenerPlan {
            name,
            address,
            port,
            route_config,
            use_remote_address,
        })
    }
}

fn connection_manager(
    mut rest: HttpConnectionManager,
    resource: &str,
    field: &str,
) -> Result<(String, bool), CompileError> {
    rest.stat_prefix.clear();
    if CodecType::try_from(rest.codec_type) != Ok(CodecType::Auto) {
        return Err(CompileError::new(
            resource,
            format!("{field}.codec_type"),
            "only AUTO is supported by meridian proxy",
        ));
    }
    rest.codec_type = 0;
    let route_config = match rest.route_specifier.take() {
        Some(RouteSpecifier::Rds(rds)) => rds.route_config_name,
        _ => {
            return Err(CompileError::new(
                resource,
                format!("{field}.route_specifier"),
                "only RDS is supported by meridian proxy",
            ))
        }
    };
    let filters = std::mem::take(&mut rest.http_filters);
    let router_only = matches!(filters.as_slice(), [f] if matches!(
        &f.config_type,
        Some(http_filter::ConfigType::TypedConfig(any)) if any.type_url == ROUTER
    ));
    if !router_only {
        return Err(CompileError::new(
            resource,
            format!("{field}.http_filters"),
            "only the router filter is supported by meridian proxy",
        ));
    }
    let use_remote_address = rest.use_remote_address.take().is_some_and(|b| b.value);
    // Hosts are matched without their port, whatever it is (Envoy's strip_any_host_port).
    if matches!(
        rest.strip_port_mode,
        Some(StripPortMode::StripAnyHostPort(true))
    ) {
        rest.strip_port_mode = None;
    }
    refuse_leftovers(&rest, resource, field)?;
    Ok((route_config, use_remote_address))
}
