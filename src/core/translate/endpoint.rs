//! Endpoints: EndpointSlices and ServiceEntry/WorkloadEntry addresses, grouped by locality.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Locality as EnvoyLocality;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::destination_rule::subset_labels;
use super::listener::socket_address;
use super::locality::{self, Locality};
use super::ClusterRef;
use crate::api::istio::{LocalityLbSetting, WorkloadEntrySpec};
use crate::api::LOCAL_CLUSTER;
use crate::core::expand::registry::{RegisteredService, ServicePortInfo, ServiceSource};
use crate::core::expand::ClusterView;
use crate::core::model::{member_of, node, CLUSTER_LABEL};
use crate::core::node_subsets::{subset as node_subset, Node as SubsetNode, NodePortMode};
use crate::core::resources::Resource;

/// One backend address, before grouping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Backend {
    locality: Locality,
    address: String,
    port: u32,
    weight: u32,
}

/// The gateway an assignment is built for, and how it weighs localities.
pub struct Nearness<'a> {
    pub region: &'a str,
    pub zone: &'a str,
    pub setting: Option<&'a LocalityLbSetting>,
}

pub fn build(
    name: &str,
    service: &RegisteredService<'_>,
    cluster_ref: &ClusterRef,
    view: &ClusterView<'_>,
    nearness: &Nearness<'_>,
) -> Resource {
    let Some(port) = service.port(cluster_ref.port) else {
        return Resource::new(name, &assignment(name, Vec::new(), None));
    };
    let subset = subset_labels(view, service, cluster_ref);
    let backends = match &service.source {
        // Node ports reach every pod of the Service: a subset (pod labels) has no backend.
        ServiceSource::Kubernetes if service.node_ports.is_some() && subset.is_some() => Vec::new(),
        ServiceSource::Kubernetes => match service.node_ports {
            Some(mode) => node_port_backends(view, service, port, mode),
            None => kubernetes_backends(view, service, port, subset, None),
        },
        ServiceSource::Entry { spec, workloads } => spec
            .endpoints
            .iter()
            .chain(workloads.iter().copied())
            .filter(|w| subset.is_none_or(|s| labels_match(s, &w.labels)))
            .map(|w| workload_backend(w, port))
            .collect(),
    };
    Resource::new(name, &assignment(name, backends, Some(nearness)))
}

/// Inline endpoints for DNS-resolved ServiceEntries (Envoy resolves the names itself).
pub fn dns_assignment(
    name: &str,
    service: &RegisteredService<'_>,
    cluster_ref: &ClusterRef,
) -> ClusterLoadAssignment {
    let ServiceSource::Entry { spec, workloads } = &service.source else {
        return assignment(name, Vec::new(), None);
    };
    let Some(port) = service.port(cluster_ref.port) else {
        return assignment(name, Vec::new(), None);
    };
    let mut backends: Vec<Backend> = spec
        .endpoints
        .iter()
        .chain(workloads.iter().copied())
        .map(|w| workload_backend(w, port))
        .collect();
    if backends.is_empty() {
        backends.push(Backend {
            locality: Default::default(),
            address: service.hostname.clone(),
            port: port.target_number().unwrap_or(port.number),
            weight: 1,
        });
    }
    assignment(name, backends, None)
}

/// A port Envoy accepts: 1-65535. EndpointSlices are not validated like AccessPoints (they
/// come from Kubernetes or plain files), so an endpoint with another port is left out rather
/// than sent to be NACKed.
fn valid_port(port: i32) -> Option<u32> {
    u16::try_from(port).ok().filter(|p| *p > 0).map(u32::from)
}

impl ServicePortInfo {
    fn target_number(&self) -> Option<u32> {
        match &self.target {
            Some(IntOrString::Int(n)) => valid_port(*n),
            _ => None,
        }
    }
}

/// The endpoints of a Kubernetes Service read from the view's own cluster only (what an L4 node
/// forwards a VIP to: the gateway pods behind it there), grouped by zone, all of priority 0.
/// `port`: the Service port's number and name (a number may be both TCP and UDP).
pub fn cluster_local(
    name: &str,
    service: &RegisteredService<'_>,
    (port, port_name): (u32, &str),
    view: &ClusterView<'_>,
) -> Resource {
    let named = service
        .ports
        .iter()
        .find(|p| p.number == port && p.name == port_name);
    let backends = match (&service.source, named.or(service.port(port))) {
        (ServiceSource::Kubernetes, Some(port)) => {
            kubernetes_backends(view, service, port, None, Some(&view.cluster))
        }
        _ => Vec::new(),
    };
    Resource::new(name, &assignment(name, backends, None))
}

/// `only_from`: keep only slices read from that cluster.
fn kubernetes_backends(
    view: &ClusterView<'_>,
    service: &RegisteredService<'_>,
    port: &ServicePortInfo,
    subset: Option<&BTreeMap<String, String>>,
    only_from: Option<&str>,
) -> Vec<Backend> {
    let mut backends = Vec::new();
    let id = (service.key.namespace.clone(), service.key.name.clone());
    for slice in view.endpoint_slices.get(&id).into_iter().flatten() {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        if subset.is_some_and(|s| !labels_match(s, &labels)) {
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        let Some(slice_port) = slice_ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == port.name)
            .or(if slice_ports.len() == 1 {
                slice_ports.first()
            } else {
                None
            })
            .and_then(|p| p.port)
            .and_then(valid_port)
        else {
            continue;
        };
        let origin = labels
            .get(CLUSTER_LABEL)
            .map_or(LOCAL_CLUSTER, String::as_str);
        if only_from.is_some_and(|cluster| cluster != origin) {
            continue;
        }
        let (region, cluster_zone) = view.localities.get(origin).cloned().unwrap_or_default();
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready);
            if ready == Some(false) {
                continue;
            }
            let zone = endpoint
                .zone
                .clone()
                .unwrap_or_else(|| cluster_zone.clone());
            for address in &endpoint.addresses {
                backends.push(Backend {
                    locality: (region.clone(), zone.clone(), String::new()),
                    address: address.clone(),
                    port: slice_port,
                    weight: 1,
                });
            }
        }
    }
    backends
}

/// A node-port Service's backends: in each cluster where it has a ready endpoint, its subset
/// of that cluster's nodes (only those running one, under `externalTrafficPolicy: Local`), at
/// the node port, in the node's zone.
fn node_port_backends(
    view: &ClusterView<'_>,
    service: &RegisteredService<'_>,
    port: &ServicePortInfo,
    mode: NodePortMode,
) -> Vec<Backend> {
    let (Some(node_port), Some(nodes)) = (port.node_port, view.nodes) else {
        return Vec::new();
    };
    // Per cluster with a ready endpoint, the nodes running ready endpoints.
    let mut clusters: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let id = (service.key.namespace.clone(), service.key.name.clone());
    for slice in view.endpoint_slices.get(&id).into_iter().flatten() {
        let origin = member_of(&slice.metadata).unwrap_or(LOCAL_CLUSTER);
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready);
            if ready == Some(false) || endpoint.addresses.is_empty() {
                continue;
            }
            let hosting = clusters.entry(origin).or_default();
            if let Some(node) = &endpoint.node_name {
                hosting.insert(node.as_str());
            }
        }
    }
    let service_name = service.key.to_string();
    let mut backends = Vec::new();
    for (cluster, hosting) in clusters {
        let mut candidates = Vec::new();
        let mut where_ = BTreeMap::new();
        for node in nodes.values() {
            let (Some(name), Some(address)) = (node.metadata.name.as_deref(), node::address(node))
            else {
                continue;
            };
            if member_of(&node.metadata).unwrap_or(LOCAL_CLUSTER) != cluster
                || (mode.local_only && !hosting.contains(name))
            {
                continue;
            }
            candidates.push(SubsetNode {
                name: name.to_owned(),
                ready: node::is_ready(node),
                unschedulable: node::is_cordoned(node),
            });
            where_.insert(name, (address, node::zone(node)));
        }
        let (region, cluster_zone) = view.localities.get(cluster).cloned().unwrap_or_default();
        for name in node_subset(&service_name, &candidates, mode.subset_size) {
            let Some((address, zone)) = where_.get(name) else {
                continue;
            };
            backends.push(Backend {
                locality: (
                    region.clone(),
                    zone.map_or_else(|| cluster_zone.clone(), str::to_owned),
                    String::new(),
                ),
                address: (*address).to_owned(),
                port: node_port,
                weight: 1,
            });
        }
    }
    backends
}

fn workload_backend(w: &WorkloadEntrySpec, port: &ServicePortInfo) -> Backend {
    let number = w
        .ports
        .get(&port.name)
        .copied()
        .or(port.target_number())
        .unwrap_or(port.number);
    let mut parts = w.locality.as_deref().unwrap_or_default().splitn(3, '/');
    let mut next = || parts.next().unwrap_or_default().to_owned();
    Backend {
        locality: (next(), next(), next()),
        address: w.address.clone(),
        port: number,
        weight: w.weight.unwrap_or(1),
    }
}

fn labels_match(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Groups backends by locality; with `nearness`, localities get priorities (or weights) as
/// seen from that gateway.
fn assignment(
    name: &str,
    mut backends: Vec<Backend>,
    nearness: Option<&Nearness<'_>>,
) -> ClusterLoadAssignment {
    backends.sort();
    backends.dedup();
    let mut by_locality: BTreeMap<Locality, Vec<LbEndpoint>> = BTreeMap::new();
    for b in backends {
        by_locality.entry(b.locality).or_default().push(LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(&b.address, b.port)),
                ..Default::default()
            })),
            load_balancing_weight: Some(UInt32Value {
                value: b.weight.max(1),
            }),
            ..Default::default()
        });
    }
    let placement = nearness.map(|n| {
        let localities = by_locality.keys().cloned().collect();
        locality::place(&localities, (n.region, n.zone), n.setting)
    });
    let mut endpoints: Vec<LocalityLbEndpoints> = by_locality
        .into_iter()
        .map(|(locality, lb_endpoints)| {
            let placed = placement.as_ref().and_then(|p| p.get(&locality));
            let (region, zone, sub_zone) = locality;
            LocalityLbEndpoints {
                locality: Some(EnvoyLocality {
                    region,
                    zone,
                    sub_zone,
                }),
                lb_endpoints,
                priority: placed.map_or(0, |p| p.priority),
                load_balancing_weight: placed
                    .and_then(|p| p.weight)
                    .map(|value| UInt32Value { value }),
                ..Default::default()
            }
        })
        .collect();
    endpoints.sort_by_key(|e| e.priority);
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints,
        ..Default::default()
    }
}
