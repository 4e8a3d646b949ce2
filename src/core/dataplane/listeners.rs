//! Listeners: where to accept connections, and per filter chain which connections it takes
//! (TLS by SNI, or plaintext), how TLS is terminated (certificates by SDS name) and which route
//! configuration serves them. Meridian emits one HTTP connection manager per chain, its routes
//! over RDS.

use prost::Message;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{listener_filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier, StripPortMode,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};

use super::{refuse_leftovers, CompileError};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, SdsSecretConfig,
};

const CONNECTION_MANAGER: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const PROXY_PROTOCOL: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// A compiled listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerPlan {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// In Envoy's order: the first that takes a connection serves it.
    pub chains: Vec<ChainPlan>,
    /// Every connection starts with a PROXY protocol header (v1 or v2), which names the
    /// client; a connection without one is closed.
    pub proxy_protocol: bool,
}

/// One filter chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainPlan {
    /// SNI names it takes (`*.x` wildcards included); empty: any name, or none.
    pub server_names: Vec<String>,
    /// TLS termination; `None`: plaintext connections.
    pub tls: Option<TlsPlan>,
    /// The route configuration (RDS) its requests are routed by.
    pub route_config: String,
    /// Append the client's address to `x-forwarded-for` (Envoy's `use_remote_address`).
    pub use_remote_address: bool,
}

/// How a chain terminates TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPlan {
    /// SDS name of the server certificate and key.
    pub certificate: String,
    /// SDS name of the CA bundle client certificates must chain to.
    pub validation: Option<String>,
    pub require_client_certificate: bool,
    pub alpn: Vec<String>,
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
        // The TLS inspector only reads the SNI name, which this proxy always does. A PROXY
        // protocol header, when required, is read first.
        let mut proxy_protocol = false;
        for (i, filter) in std::mem::take(&mut rest.listener_filters)
            .iter()
            .enumerate()
        {
            let field = format!("listener_filters[{i}]");
            match &filter.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any))
                    if any.type_url == TLS_INSPECTOR => {}
                Some(listener_filter::ConfigType::TypedConfig(any))
                    if any.type_url == PROXY_PROTOCOL && i == 0 =>
                {
                    let settings = ProxyProtocol::decode(any.value.as_slice())
                        .map_err(|e| CompileError::new(&resource, &field, e.to_string()))?;
                    refuse_leftovers(
                        &ProxyProtocol {
                            stat_prefix: String::new(),
                            ..settings
                        },
                        &resource,
                        &field,
                    )?;
                    proxy_protocol = true;
                }
                _ => {
                    return Err(CompileError::new(
                        &resource,
                        field,
                        "only the PROXY protocol filter (first) and the TLS inspector are \
                         supported by meridian proxy",
                    ))
                }
            }
        }
        let chains = std::mem::take(&mut rest.filter_chains)
            .iter()
            .enumerate()
            .map(|(i, chain)| chain_plan(chain, &resource, &format!("filter_chains[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if chains.is_empty() {
            return Err(CompileError::new(&resource, "filter_chains", "none"));
        }
        refuse_leftovers(&rest, &resource, "")?;
        Ok(ListenerPlan {
            name,
            address,
            port,
            chains,
            proxy_protocol,
        })
    }

    /// The route configurations its chains are routed by.
    pub fn route_configs(&self) -> impl Iterator<Item = &str> {
        self.chains.iter().map(|c| c.route_config.as_str())
    }

    /// The SDS names its chains need.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .filter_map(|c| c.tls.as_ref())
            .flat_map(|t| std::iter::once(t.certificate.as_str()).chain(t.validation.as_deref()))
    }

    pub fn has_tls(&self) -> bool {
        self.chains.iter().any(|c| c.tls.is_some())
    }

    /// The chain a TLS connection asking for `sni` goes to, as Envoy matches server names:
    /// exact, then the longest wildcard, then a chain without names.
    pub fn tls_chain(&self, sni: Option<&str>) -> Option<usize> {
        let sni = sni.map(str::to_ascii_lowercase);
        let tls = || {
            self.chains
                .iter()
                .enumerate()
                .filter(|(_, c)| c.tls.is_some())
        };
        if let Some(sni) = &sni {
            if let Some((i, _)) = tls().find(|(_, c)| c.server_names.iter().any(|n| n == sni)) {
                return Some(i);
            }
            let wildcard = tls()
                .flat_map(|(i, c)| c.server_names.iter().map(move |n| (i, n)))
                .filter_map(|(i, n)| {
                    let suffix = n.strip_prefix('*')?;
                    (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some((i, suffix.len()))
                })
                .max_by_key(|(_, len)| *len);
            if let Some((i, _)) = wildcard {
                return Some(i);
            }
        }
        tls()
            .find(|(_, c)| c.server_names.is_empty())
            .map(|(i, _)| i)
    }

    /// The chain a plaintext connection goes to.
    pub fn plaintext_chain(&self) -> Option<usize> {
        self.chains
            .iter()
            .position(|c| c.tls.is_none() && c.server_names.is_empty())
    }
}

fn chain_plan(chain: &FilterChain, resource: &str, field: &str) -> Result<ChainPlan, CompileError> {
    let mut rest = chain.clone();
    let mut server_names = Vec::new();
    let mut transport = String::new();
    if let Some(mut matcher) = rest.filter_chain_match.take() {
        server_names = std::mem::take(&mut matcher.server_names)
            .into_iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        transport = std::mem::take(&mut matcher.transport_protocol);
        refuse_leftovers(&matcher, resource, &format!("{field}.filter_chain_match"))?;
    }
    let tls = match rest.transport_socket.take() {
        Some(socket) => Some(tls_plan(
            socket,
            resource,
            &format!("{field}.transport_socket"),
        )?),
        None => None,
    };
    let consistent = match transport.as_str() {
        "" => true,
        "tls" => tls.is_some(),
        "raw_buffer" => tls.is_none(),
        _ => false,
    };
    if !consistent {
        return Err(CompileError::new(
            resource,
            format!("{field}.filter_chain_match.transport_protocol"),
            format!("{transport:?} does not fit the chain's transport socket"),
        ));
    }
    let filters = std::mem::take(&mut rest.filters);
    refuse_leftovers(&rest, resource, field)?;
    let [filter] = filters.as_slice() else {
        return Err(CompileError::new(
            resource,
            format!("{field}.filters"),
            "exactly one filter, the HTTP connection manager, is supported by meridian proxy",
        ));
    };
    let field = format!("{field}.filters[0]");
    let manager = match &filter.config_type {
        Some(ConfigType::TypedConfig(any)) if any.type_url == CONNECTION_MANAGER => {
            HttpConnectionManager::decode(any.value.as_slice())
                .map_err(|e| CompileError::new(resource, &field, e.to_string()))?
        }
        _ => {
            return Err(CompileError::new(
                resource,
                field,
                "only the HTTP connection manager is supported by meridian proxy",
            ))
        }
    };
    let (route_config, use_remote_address) =
        connection_manager(manager, resource, &format!("{field}.typed_config"))?;
    Ok(ChainPlan {
        server_names,
        tls,
        route_config,
        use_remote_address,
    })
}

/// TLS termination: one certificate and an optional client CA, both over ADS-delivered SDS.
/// Every other field of the context is refused by name.
fn tls_plan(
    socket: envoy_types::pb::envoy::config::core::v3::TransportSocket,
    resource: &str,
    field: &str,
) -> Result<TlsPlan, CompileError> {
    let mut context = match socket.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) if any.type_url == DOWNSTREAM_TLS => {
            DownstreamTlsContext::decode(any.value.as_slice())
                .map_err(|e| CompileError::new(resource, field, e.to_string()))?
        }
        _ => {
            return Err(CompileError::new(
                resource,
                field,
                "only a DownstreamTlsContext is supported by meridian proxy",
            ))
        }
    };
    let mut common = context.common_tls_context.take().unwrap_or_default();
    let common_field = format!("{field}.common_tls_context");
    let certificates = std::mem::take(&mut common.tls_certificate_sds_secret_configs);
    let [certificate] = certificates.as_slice() else {
        return Err(CompileError::new(
            resource,
            format!("{common_field}.tls_certificate_sds_secret_configs"),
            "exactly one certificate over SDS is supported by meridian proxy",
        ));
    };
    let certificate = sds_name(
        certificate,
        resource,
        &format!("{common_field}.tls_certificate_sds_secret_configs[0]"),
    )?;
    let validation = match common.validation_context_type.take() {
        None => None,
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => Some(sds_name(
            &sds,
            resource,
            &format!("{common_field}.validation_context_sds_secret_config"),
        )?),
        Some(_) => {
            return Err(CompileError::new(
                resource,
                format!("{common_field}.validation_context"),
                "only a validation context over SDS is supported by meridian proxy",
            ))
        }
    };
    let alpn = std::mem::take(&mut common.alpn_protocols);
    refuse_leftovers(&common, resource, &common_field)?;
    let require_client_certificate = context
        .require_client_certificate
        .take()
        .is_some_and(|b| b.value);
    refuse_leftovers(&context, resource, field)?;
    Ok(TlsPlan {
        certificate,
        validation,
        require_client_certificate,
        alpn,
    })
}

/// The name of a secret fetched over ADS; a secret from any other source is refused.
fn sds_name(sds: &SdsSecretConfig, resource: &str, field: &str) -> Result<String, CompileError> {
    let over_ads = sds.sds_config.as_ref().is_some_and(|source| {
        matches!(
            source.config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(_))
        )
    });
    if !over_ads {
        return Err(CompileError::new(
            resource,
            format!("{field}.sds_config"),
            "only secrets over ADS are supported by meridian proxy",
        ));
    }
    Ok(sds.name.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(names: &[&str], tls: bool) -> ChainPlan {
        ChainPlan {
            server_names: names.iter().map(|n| n.to_string()).collect(),
            tls: tls.then(|| TlsPlan {
                certificate: format!("cert-{}", names.join(",")),
                validation: None,
                require_client_certificate: false,
                alpn: Vec::new(),
            }),
            route_config: "r".into(),
            use_remote_address: true,
        }
    }

    #[test]
    fn sni_picks_exact_then_longest_wildcard_then_the_unnamed_chain() {
        let listener = ListenerPlan {
            name: "l".into(),
            address: "0.0.0.0".into(),
            port: 443,
            chains: vec![
                chain(&[], false),
                chain(&["*.example.com"], true),
                chain(&["*.shop.example.com"], true),
                chain(&["shop.example.com"], true),
                chain(&[], true),
            ],
            proxy_protocol: false,
        };
        assert_eq!(listener.tls_chain(Some("Shop.Example.com")), Some(3));
        assert_eq!(listener.tls_chain(Some("a.shop.example.com")), Some(2));
        assert_eq!(listener.tls_chain(Some("a.example.com")), Some(1));
        assert_eq!(listener.tls_chain(Some("other.org")), Some(4));
        assert_eq!(listener.tls_chain(None), Some(4));
        assert_eq!(listener.plaintext_chain(), Some(0));
        let secrets: Vec<&str> = listener.secret_names().collect();
        assert_eq!(secrets.len(), 4);
    }

    /// The plaintext listener Meridian translates for the shop fixture's gateway.
    fn plain_listener() -> Listener {
        let model = crate::core::test_support::model_of(
            include_str!("../../../tests/fixtures/shop.yaml"),
            "default",
        );
        let identity = crate::core::translate::GatewayIdentity {
            gateway: crate::core::model::ObjectKey::new("edge", "public"),
            cluster: "local".into(),
            zone: String::new(),
            role: crate::core::translate::NodeRole::Gateway,
            xds: crate::core::translate::XdsTransport::Ads,
        };
        let view = crate::core::expand::cluster_view(&model, "local");
        let translation = crate::core::translate::translate(&view, &identity);
        let resources = translation
            .config
            .resources(crate::core::resources::ResourceType::Listener);
        let (_, resource) = resources.iter().next().expect("a listener");
        Listener::decode(resource.body.value.as_slice()).unwrap()
    }

    #[test]
    fn a_proxy_protocol_filter_first_is_honoured_and_its_options_refused() {
        use envoy_types::pb::envoy::config::listener::v3::ListenerFilter;
        let filter = |settings: &ProxyProtocol| ListenerFilter {
            name: "envoy.filters.listener.proxy_protocol".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: PROXY_PROTOCOL.into(),
                    value: settings.encode_to_vec(),
                },
            )),
            ..Default::default()
        };
        let inspector = ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: TLS_INSPECTOR.into(),
                    value: Vec::new(),
                },
            )),
            ..Default::default()
        };
        let translated = |filters: Vec<ListenerFilter>| {
            let mut listener = plain_listener();
            listener.listener_filters = filters;
            ListenerPlan::compile(&listener)
        };
        let plan = translated(vec![filter(&ProxyProtocol::default()), inspector.clone()]).unwrap();
        assert!(plan.proxy_protocol);
        assert!(!translated(vec![]).unwrap().proxy_protocol);

        let lenient = ProxyProtocol {
            allow_requests_without_proxy_protocol: true,
            ..Default::default()
        };
        let error = translated(vec![filter(&lenient)]).unwrap_err();
        assert!(
            error.field == "listener_filters[0]"
                && error.message.contains("allowRequestsWithoutProxyProtocol"),
            "{error}"
        );
        let error = translated(vec![inspector, filter(&ProxyProtocol::default())]).unwrap_err();
        assert_eq!(error.field, "listener_filters[1]", "{error}");
    }
}
