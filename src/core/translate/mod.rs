//! Translation: one cluster's expanded objects → the Envoy resources one gateway is served.
//!
//! Istio's conventions are followed where Envoy users will look for them: listeners named
//! `<bind>_<port>`, route configurations `http.<port>`, clusters `outbound|<port>|<subset>|<host>`.
//! The output is a pure function of the input, so it can be snapshot-tested and diffed.

mod cluster;
mod destination_rule;
mod endpoint;
mod grpc;
pub(crate) mod l4;
#[cfg(test)]
mod l4_tests;
mod listener;
mod locality;
mod route;
mod scope;
mod secret;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::binding::{gateway_ports, GatewayPort};
use super::expand::ClusterView;
use super::model::tls::{SecretMaterial, TlsError, TlsServer};
use super::model::ObjectKey;
use super::resources::{GatewayConfig, ResourceType};

pub use scope::translate_scoped;
pub use secret::build as secret_resource;

/// Who a proxy is: the Gateway object it serves (for an L4 node, the name of its tier), in
/// which cluster and zone, and in which role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayIdentity {
    pub gateway: ObjectKey,
    pub cluster: String,
    pub zone: String,
    pub role: NodeRole,
    /// How it fetches what its listeners and clusters point at (routes, endpoints, secrets).
    pub xds: XdsTransport,
}

/// The static cluster through which a proxy reaches Meridian, as `meridian bootstrap` names it.
/// Polling proxies fetch routes, endpoints and secrets through it.
pub const XDS_CLUSTER: &str = "meridian_xds";

/// How long a polling proxy waits for one answer (Envoy's default, 1 s, is short for a large
/// gateway's first response).
pub const REST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a proxy talks xDS, which decides the config sources its resources name.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum XdsTransport {
    /// Over the ADS stream it holds (gRPC, SotW or delta): every source is `ads: {}`.
    #[default]
    Ads,
    /// By polling Meridian's REST endpoints through [`XDS_CLUSTER`] every `refresh_delay_ms`.
    Rest { refresh_delay_ms: u64 },
}

/// What a proxy does with what it is served.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// An L7 gateway: the listeners, routes and clusters of its Gateway's servers.
    #[default]
    Gateway,
    /// An L4 node in front of the gateways: every VIP of its cluster, forwarded over TCP to
    /// the gateway pods behind the AccessPoint's Service there.
    L4,
    /// A proxyless gRPC application: its Gateway's routes as API listeners, one per
    /// `host:port` it may dial (`xds:///host:port`).
    Grpc,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Gateway => "gateway",
            NodeRole::L4 => "l4",
            NodeRole::Grpc => "grpc",
        }
    }
}

/// The result of translating for one gateway: its resources, plus references that resolved
/// to nothing (served as 503s, reported to operators).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    pub config: Arc<GatewayConfig>,
    pub unresolved: Vec<String>,
    /// Every SDS name this gateway's listeners reference: the only secrets it may fetch.
    pub secret_names: BTreeSet<String>,
    /// Every host its routes reference, resolved or not: a change to one of them (its
    /// service, endpoints or DestinationRules) may change this translation.
    pub hosts: BTreeSet<String>,
}

/// A cluster a route refers to, recorded while routes are built.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ClusterRef {
    pub host: String,
    pub port: u32,
    pub subset: String,
    /// Namespace of the VirtualService that referenced it (first lookup for DestinationRules).
    pub client_namespace: String,
}

pub(crate) fn cluster_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Translates everything `identity` should be served from `view`.
pub fn translate(view: &ClusterView<'_>, identity: &GatewayIdentity) -> Translation {
    match identity.role {
        NodeRole::Gateway => translate_gateway(view, identity),
        NodeRole::L4 => l4::translate(view, identity.xds),
        NodeRole::Grpc => grpc::for_clients(&translate_gateway(view, identity)),
    }
}

fn translate_gateway(view: &ClusterView<'_>, identity: &GatewayIdentity) -> Translation {
    let registry = &view.registry;
    let mut config = GatewayConfig::default();
    let mut unresolved = Vec::new();
    let mut clusters: BTreeMap<String, ClusterRef> = BTreeMap::new();
    let mut hosts = BTreeSet::new();

    let mut secret_names = BTreeSet::new();
    let scopes = gateway_ports(view, &identity.gateway);
    let mut served: Vec<&GatewayPort> = Vec::new();
    for scope in &scopes {
        if let Some(tls) = &scope.tls {
            if !secrets_ready(view, tls, &mut config, &mut unresolved) {
                continue;
            }
            secret_names.extend(tls.secret_names().map(str::to_owned));
        }
        let routes = route::build_route_config(
            view,
            registry,
            identity,
            scope,
            &mut clusters,
            &mut hosts,
            &mut unresolved,
        );
        config.insert(ResourceType::Route, routes);
        served.push(scope);
    }
    for listener_scopes in served.chunk_by(|a, b| (&a.bind, a.number) == (&b.bind, b.number)) {
        if let Some(listener) = listener::build(listener_scopes, identity.xds) {
            config.insert(ResourceType::Listener, listener);
        }
    }

    for (name, cluster_ref) in &clusters {
        let Some(service) = registry.get(&cluster_ref.host) else {
            continue;
        };
        let policy = destination_rule::policy_for(view, service, cluster_ref);
        let built = cluster::build(name, service, cluster_ref, &policy, identity.xds);
        let is_eds = built.uses_eds;
        config.insert(ResourceType::Cluster, built.resource);
        if is_eds {
            let nearness = endpoint::Nearness {
                region: &view.region,
                zone: if identity.zone.is_empty() {
                    &view.zone
                } else {
                    &identity.zone
                },
                setting: policy
                    .load_balancer
                    .as_ref()
                    .and_then(|lb| lb.locality_lb_setting.as_ref()),
            };
            let assignment = endpoint::build(name, service, cluster_ref, view, &nearness);
            config.insert(ResourceType::Endpoint, assignment);
        }
    }
    unresolved.sort();
    unresolved.dedup();
    Translation {
        config: Arc::new(config),
        unresolved,
        secret_names,
        hosts,
    }
}

/// Adds the material of `tls`'s secrets to `config`. A certificate Meridian has yet to issue
/// is awaited (Envoy warms the listener until SDS delivers it); a user Secret that is missing
/// or unusable leaves the server out, so one bad Secret cannot hold back a shared listener.
fn secrets_ready(
    view: &ClusterView<'_>,
    tls: &TlsServer,
    config: &mut GatewayConfig,
    unresolved: &mut Vec<String>,
) -> bool {
    for name in tls.secret_names() {
        match view.tls.resolve(name) {
            Ok(material) => {
                config.insert(ResourceType::Secret, secret::build(name, &material));
                if matches!(material, SecretMaterial::Certificate { .. }) {
                    config.mark_private(name);
                }
            }
            Err(TlsError::NotIssued { .. }) => {}
            Err(error) => {
                unresolved.push(error.to_string());
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod node_port_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
