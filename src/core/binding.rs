//! What a Gateway binds in one cluster, by Istio's rules: the ports its servers open (plaintext
//! merged, one scope per TLS server), which VirtualServices bind to it, and which AccessPoint
//! owns each host on a port. Translation turns this into listeners and route configurations;
//! reference checking and status read the same answers, so they cannot disagree.

use std::collections::BTreeMap;

use super::expand::{ClusterView, Expanded};
use super::hosts::host_intersection;
use super::model::export::is_exported;
use super::model::tls::TlsServer;
use super::model::ObjectKey;
use super::resources::content_hash;
use crate::api::istio::VirtualServiceSpec;

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

/// One route scope of a gateway port: its plaintext servers (merged), or one TLS server
/// (one certificate). A listener holds a filter chain per scope on its (bind, port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPort {
    pub bind: String,
    pub number: u32,
    pub gateway: ObjectKey,
    pub hosts: Vec<ServerHost>,
    /// `None` for the plaintext scope.
    pub tls: Option<TlsServer>,
    /// Connections arrive from the L4 tier behind a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl GatewayPort {
    pub fn listener_name(&self) -> String {
        format!("{}_{}", self.bind, self.number)
    }

    /// `http.<port>` for plaintext; `https.<port>.<certificate hash>` per TLS server, so a
    /// request only reaches the routes of the server whose certificate it was sent under.
    pub fn route_name(&self) -> String {
        match &self.tls {
            None => format!("http.{}", self.number),
            Some(tls) => format!(
                "https.{}.{}",
                self.number,
                &content_hash([tls.certificate.as_bytes()])[..8]
            ),
        }
    }

    /// SNI names of a TLS scope: the hosts without namespace; none for `*` (any name).
    pub fn server_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.host != "*")
            .map(|h| h.host.to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The route scopes `gateway` opens, merged across every AccessPoint that declares servers
/// for it. Ordered by (bind, port), plaintext first, then TLS servers in AccessPoint age order,
/// so the oldest AccessPoint keeps an SNI name two of them claim.
pub fn gateway_ports(view: &ClusterView<'_>, gateway: &ObjectKey) -> Vec<GatewayPort> {
    let mut ports: Vec<GatewayPort> = Vec::new();
    for gw in view.gateways.iter().filter(|g| &g.key == gateway) {
        for server in &gw.spec.servers {
            let bind = server.bind.as_deref().unwrap_or("0.0.0.0");
            let tls = TlsServer::of(gateway, server);
            let hosts = server.hosts.iter().map(|h| ServerHost::parse(h));
            match ports
                .iter_mut()
                .find(|p| p.bind == bind && p.number == server.port.number && p.tls == tls)
            {
                Some(port) => port.hosts.extend(hosts),
                None => ports.push(GatewayPort {
                    bind: bind.to_owned(),
                    number: server.port.number,
                    gateway: gateway.clone(),
                    hosts: hosts.collect(),
                    tls,
                    proxy_protocol: view.proxy_protocol.contains(gw.origin),
                }),
            }
        }
    }
    ports.sort_by(|a, b| {
        (&a.bind, a.number, a.tls.is_some()).cmp(&(&b.bind, b.number, b.tls.is_some()))
    });
    for port in &mut ports {
        port.hosts.sort();
        port.hosts.dedup();
    }
    ports
}

/// Whether `vs` binds to `gateway`: it names the gateway, and it is exported to the gateway's
/// namespace (Istio binds only VirtualServices visible from there).
pub fn serves(
    view: &ClusterView<'_>,
    vs: &Expanded<'_, VirtualServiceSpec>,
    gateway: &ObjectKey,
) -> bool {
    binds_to(vs.spec, &vs.key.namespace, gateway)
        && is_exported(
            &vs.spec.export_to,
            &view.export.virtual_service,
            &vs.key.namespace,
            &gateway.namespace,
        )
}

/// Whether a VirtualService in `vs_namespace` names `gateway` in its `gateways` list.
pub fn binds_to(vs: &VirtualServiceSpec, vs_namespace: &str, gateway: &ObjectKey) -> bool {
    vs.gateways.iter().any(|g| match g.split_once('/') {
        Some((ns, name)) => ns == gateway.namespace && name == gateway.name,
        None => vs_namespace == gateway.namespace && g == &gateway.name,
    })
}

/// Which AccessPoint serves each host on `port`: the first (oldest) to claim it. VirtualServices
/// of that AccessPoint for the host merge, as Istio merges them; other AccessPoints' claims on
/// it are refused, so one team cannot take over another's host.
pub fn host_owners<'v>(
    view: &'v ClusterView<'_>,
    port: &GatewayPort,
) -> BTreeMap<String, &'v ObjectKey> {
    let mut owners = BTreeMap::new();
    for vs in view.virtual_services_naming(&port.gateway) {
        if serves(view, vs, &port.gateway) {
            for domain in bound_domains(vs, port) {
                owners.entry(domain).or_insert(vs.origin);
            }
        }
    }
    owners
}

/// The VirtualService hosts this port's servers expose to it.
pub fn bound_domains(vs: &Expanded<'_, VirtualServiceSpec>, port: &GatewayPort) -> Vec<String> {
    let mut domains = Vec::new();
    for server_host in &port.hosts {
        if !server_host.admits_namespace(&vs.key.namespace, &port.gateway.namespace) {
            continue;
        }
        for host in &vs.spec.hosts {
            if let Some(domain) = host_intersection(&server_host.host, host) {
                domains.push(domain);
            }
        }
    }
    domains.sort();
    domains.dedup();
    domains
}
