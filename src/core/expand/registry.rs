//! The service registry one gateway's routes resolve against: Kubernetes Services (from the
//! AccessPoint template or plain inputs) and ServiceEntries, keyed by hostname.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::istio::{Resolution, ServiceEntrySpec, WorkloadEntrySpec};
use crate::core::expand::{ClusterView, ViewService};
use crate::core::hosts::DOMAIN_SUFFIX;
use crate::core::model::export::is_exported;
use crate::core::model::ObjectKey;
use crate::core::node_subsets::NodePortMode;

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePortInfo {
    pub number: u32,
    pub name: String,
    /// The port endpoints listen on, when known from the Service (`targetPort`).
    pub target: Option<IntOrString>,
    /// Whether its backends speak HTTP/2 (gRPC, HTTP/2, h2c), so the proxy must too.
    pub http2: bool,
    /// The node port a Service of type NodePort has for it.
    pub node_port: Option<u32>,
}

/// Whether an Istio protocol name (a ServiceEntry port's `protocol`, a Service port's
/// `appProtocol`, or the prefix of its name) means HTTP/2 to the backend, as Istio reads it.
pub fn speaks_http2(protocol: &str) -> bool {
    let protocol = protocol.to_ascii_lowercase();
    matches!(
        protocol.as_str(),
        "grpc" | "grpc-web" | "http2" | "h2c" | "kubernetes.io/h2c"
    )
}

/// A port's protocol as Istio selects it: `appProtocol` (or a ServiceEntry's `protocol`) when
/// set, else the port name's prefix before `-` (`grpc-api`, `http2`).
fn port_speaks_http2(protocol: Option<&str>, name: &str) -> bool {
    match protocol.filter(|p| !p.is_empty()) {
        Some(protocol) => speaks_http2(protocol),
        None => name.split('-').next().is_some_and(speaks_http2) || speaks_http2(name),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ServiceSource<'m> {
    /// A Kubernetes Service; endpoints come from its EndpointSlices.
    Kubernetes,
    /// A ServiceEntry with inline endpoints and/or selected WorkloadEntries.
    Entry {
        spec: &'m ServiceEntrySpec,
        workloads: Vec<&'m WorkloadEntrySpec>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredService<'m> {
    pub hostname: String,
    pub key: ObjectKey,
    /// Its `exportTo` (empty: the mesh default for its kind).
    pub export_to: Vec<String>,
    pub ports: Vec<ServicePortInfo>,
    pub source: ServiceSource<'m>,
    /// Reached through node ports rather than its endpoints.
    pub node_ports: Option<NodePortMode>,
}

impl RegisteredService<'_> {
    /// Whether a gateway in namespace `client` may route to it.
    pub fn visible_to(&self, client: &str, view: &ClusterView<'_>) -> bool {
        is_exported(
            &self.export_to,
            &view.export.service,
            &self.key.namespace,
            client,
        )
    }

    pub fn port(&self, number: u32) -> Option<&ServicePortInfo> {
        self.ports.iter().find(|p| p.number == number)
    }

    pub fn resolution(&self) -> Resolution {
        match &self.source {
            ServiceSource::Kubernetes => Resolution::Static,
            ServiceSource::Entry { spec, .. } => spec.resolution,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ServiceRegistry<'m> {
    by_host: BTreeMap<String, RegisteredService<'m>>,
}

impl<'m> ServiceRegistry<'m> {
    pub fn new(view: &ClusterView<'m>) -> ServiceRegistry<'m> {
        let mut by_host = BTreeMap::new();
        for ViewService {
            key,
            spec,
            export_to,
            node_ports,
            ..
        } in &view.services
        {
            let hostname = format!("{}.{}.svc.{DOMAIN_SUFFIX}", key.name, key.namespace);
            let ports = spec
                .ports
                .iter()
                .flatten()
                .map(|p| ServicePortInfo {
                    number: p.port as u32,
                    name: p.name.clone().unwrap_or_default(),
                    target: p.target_port.clone(),
                    http2: port_speaks_http2(
                        p.app_protocol.as_deref(),
                        p.name.as_deref().unwrap_or_default(),
                    ),
                    node_port: p.node_port.and_then(|n| u32::try_from(n).ok()),
                })
                .collect();
            by_host
                .entry(hostname.clone())
                .or_insert(RegisteredService {
                    hostname,
                    key: key.clone(),
                    export_to: export_to.clone(),
                    ports,
                    source: ServiceSource::Kubernetes,
                    node_ports: *node_ports,
                });
        }
        for entry in &view.service_entries {
            let workloads = match &entry.spec.workload_selector {
                Some(selector) => view
                    .workload_entries
                    .iter()
                    .filter(|w| w.key.namespace == entry.key.namespace)
                    .filter(|w| {
                        selector
                            .labels
                            .iter()
                            .all(|(k, v)| w.spec.labels.get(k).or(w.labels.get(k)) == Some(v))
                    })
                    .map(|w| w.spec)
                    .collect(),
                None => Vec::new(),
            };
            let ports: Vec<ServicePortInfo> = entry
                .spec
                .ports
                .iter()
                .map(|p| ServicePortInfo {
                    number: p.number,
                    name: p.name.clone(),
                    target: p.target_port.map(|t| IntOrString::Int(t as i32)),
                    http2: port_speaks_http2(Some(&p.protocol), &p.name),
                    node_port: None,
                })
                .collect();
            for host in &entry.spec.hosts {
                by_host.entry(host.clone()).or_insert(RegisteredService {
                    hostname: host.clone(),
                    key: entry.key.clone(),
                    export_to: entry.spec.export_to.clone(),
                    ports: ports.clone(),
                    source: ServiceSource::Entry {
                        spec: entry.spec,
                        workloads: workloads.clone(),
                    },
                    node_ports: None,
                });
            }
        }
        ServiceRegistry { by_host }
    }

    pub fn get(&self, host: &str) -> Option<&RegisteredService<'m>> {
        self.by_host.get(host)
    }
}
