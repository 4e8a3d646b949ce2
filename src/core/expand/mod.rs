//! Expansion: the Istio-shaped objects in force in one cluster.
//!
//! Each placed AccessPoint contributes its templates, namespaced by default into the
//! AccessPoint's namespace; plain `Service`/`EndpointSlice` inputs join the service registry.
//! Order is deterministic (AccessPoint creation time, then key, then template index), so the
//! same input always produces the same Envoy configuration.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;

mod affected;
pub mod references;
pub mod registry;
mod scope;

pub use affected::{gateways_named, touched, ModelChanges, Touched};
pub use references::ReferenceIndex;
pub use registry::ServiceRegistry;
pub use scope::Scope;

use super::hosts::{resolve_host, SERVICE_NAME_LABEL};
use super::model::export::{from_annotation, ExportPolicy};
use super::model::tls::TlsSources;
use super::model::vip::VipTable;
use super::model::{ClusterTemplate, Model, ObjectKey, ObjectMap};
use super::node_subsets::{node_port_mode, NodePortMode};
use super::placement::{is_placed, placed_clusters, ClusterFacts};
use crate::api::access_point::{AccessPointTemplate, Templated};
use crate::api::istio::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec,
};
use crate::api::AccessPoint;

/// One expanded object: where it came from, its resolved key, and its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Expanded<'m, S> {
    /// The AccessPoint (or plain input object) this came from.
    pub origin: &'m ObjectKey,
    /// Index within the AccessPoint's template list, for error paths.
    pub index: usize,
    pub key: ObjectKey,
    pub labels: &'m std::collections::BTreeMap<String, String>,
    pub spec: &'m S,
}

/// A Kubernetes Service in force: from an AccessPoint template or a plain input.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewService<'m> {
    pub key: ObjectKey,
    /// The AccessPoint whose template holds it; `None` for a plain Service.
    pub access_point: Option<&'m ObjectKey>,
    pub spec: &'m ServiceSpec,
    /// From the `networking.istio.io/exportTo` annotation.
    pub export_to: Vec<String>,
    /// Set when gateways reach it through node ports (`core::node_subsets`).
    pub node_ports: Option<NodePortMode>,
}

/// Everything in force in one cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterView<'m> {
    pub cluster: String,
    /// Region and zone of the cluster (from its MemberCluster), the default endpoint locality.
    pub region: String,
    pub zone: String,
    /// Region and zone of every known cluster: the default locality of endpoints read from it.
    pub localities: BTreeMap<String, (String, String)>,
    /// Mesh-wide `exportTo` defaults.
    pub export: ExportPolicy,
    pub gateways: Vec<Expanded<'m, GatewaySpec>>,
    pub virtual_services: Vec<Expanded<'m, VirtualServiceSpec>>,
    pub destination_rules: Vec<Expanded<'m, DestinationRuleSpec>>,
    pub service_entries: Vec<Expanded<'m, ServiceEntrySpec>>,
    pub workload_entries: Vec<Expanded<'m, WorkloadEntrySpec>>,
    pub services: Vec<ViewService<'m>>,
    /// Every node of every cluster (what node-port Services choose their subsets from).
    pub nodes: Option<&'m ObjectMap<Node>>,
    /// EndpointSlices by (namespace, `kubernetes.io/service-name`).
    pub endpoint_slices: BTreeMap<(String, String), Vec<&'m EndpointSlice>>,
    /// Indexes into `virtual_services` by each gateway they name, in order.
    pub virtual_services_by_gateway: BTreeMap<ObjectKey, Vec<usize>>,
    /// Indexes into `destination_rules` by resolved host, in order.
    pub rules_by_host: BTreeMap<String, Vec<usize>>,
    /// TLS material: issued certificates and user Secrets.
    pub tls: TlsSources<'m>,
    /// Every allocated VIP (the AccessPoints' addresses in this cluster are what L4 nodes
    /// serve).
    pub vips: Arc<VipTable>,
    /// The AccessPoints in the view whose gateways take PROXY protocol from the L4 tier
    /// (`spec.vip.proxyProtocol`).
    pub proxy_protocol: BTreeSet<ObjectKey>,
    /// Every service in force by hostname (Kubernetes Services and ServiceEntry hosts),
    /// built once per view and shared by every gateway translated from it.
    pub registry: ServiceRegistry<'m>,
}

/// Every (AccessPoint, cluster, template) in force: AccessPoints not being deleted, on each
/// cluster they are placed on, with that cluster's overrides applied (clusters where overrides
/// never produced a template are skipped). Cheaper than a view when only templates matter.
pub fn placed_templates(
    model: &Model,
) -> impl Iterator<Item = (&ObjectKey, String, &AccessPointTemplate)> + '_ {
    model
        .access_points
        .iter()
        .filter(|(_, ap)| ap.metadata.deletion_timestamp.is_none())
        .flat_map(move |(key, ap)| {
            placed_clusters(model, ap)
                .into_iter()
                .filter_map(move |cluster| {
                    let template =
                        match model.cluster_templates.get(&(key.clone(), cluster.clone())) {
                            None => &ap.spec.template,
                            Some(ClusterTemplate::Patched(template)) => &**template,
                            Some(ClusterTemplate::Blocked) => return None,
                        };
                    Some((key, cluster, template))
                })
        })
}

/// Builds the view of `cluster` (the model holds only accepted AccessPoints).
pub fn cluster_view<'m>(model: &'m Model, cluster: &str) -> ClusterView<'m> {
    build_view(model, cluster, None).unwrap_or_default()
}

/// Builds the view of `cluster` holding only what `scope` wants: the AccessPoints whose
/// templates it wants, the plain Services of its hosts and their EndpointSlices. `None` when
/// that is most of the model (a full view, which other gateways can share, costs no more).
pub fn scoped_view<'m>(
    model: &'m Model,
    cluster: &str,
    scope: &Scope<'_>,
) -> Option<ClusterView<'m>> {
    build_view(model, cluster, Some(scope))
}

/// Below this many AccessPoints a scope is always used, however much it takes in.
const SMALL_MODEL: usize = 256;

fn build_view<'m>(
    model: &'m Model,
    cluster: &str,
    scope: Option<&Scope<'_>>,
) -> Option<ClusterView<'m>> {
    let member = model.member_clusters.get(&ObjectKey::new("", cluster));
    let facts = ClusterFacts::of(model, cluster);
    let mut view = ClusterView {
        cluster: cluster.to_owned(),
        region: member.map(|m| m.spec.region.clone()).unwrap_or_default(),
        zone: facts.zone.to_owned(),
        localities: model
            .member_clusters
            .iter()
            .map(|(key, m)| {
                (
                    key.name.clone(),
                    (m.spec.region.clone(), m.spec.zone.clone()),
                )
            })
            .collect(),
        export: model.export.clone(),
        vips: model.vips.clone(),
        nodes: Some(&model.nodes),
        tls: TlsSources {
            issued: &model.issued,
            secrets: &model.secrets,
            issue_errors: &model.issue_errors,
        },
        ..Default::default()
    };
    let overridden: HashMap<&ObjectKey, &ClusterTemplate> = model
        .cluster_templates
        .iter()
        .filter(|((_, c), _)| c == cluster)
        .map(|((key, _), template)| (key, template))
        .collect();
    let total = model.access_points.len();
    let candidates = scope.and_then(Scope::candidates);
    let too_many = |count: usize| total >= SMALL_MODEL && count * 2 > total;
    if candidates.as_ref().is_some_and(|c| too_many(c.len())) {
        return None;
    }
    let all: Box<dyn Iterator<Item = (&ObjectKey, &AccessPoint)>> = match candidates {
        Some(keys) => Box::new(
            keys.into_iter()
                .filter_map(|key| model.access_points.get_key_value(key)),
        ),
        None => Box::new(model.access_points.iter()),
    };
    let mut scratch = String::new();
    let mut access_points = Vec::new();
    for (key, ap) in all {
        // Being deleted (waiting for member cleanup): no longer served.
        if ap.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if !is_placed(ap.spec.placement.as_ref(), &key.namespace, &facts) {
            continue;
        }
        let template = match overridden.get(key) {
            None => &ap.spec.template,
            Some(ClusterTemplate::Patched(template)) => &**template,
            Some(ClusterTemplate::Blocked) => continue,
        };
        if scope.is_some_and(|scope| !scope.wants(&key.namespace, template, &mut scratch)) {
            continue;
        }
        access_points.push((key, ap, template));
    }
    if scope.is_some() && too_many(access_points.len()) {
        return None;
    }
    // Oldest first: where AccessPoints compete for a host, the first to claim it keeps it.
    access_points.sort_by_key(|(key, ap, _)| (ap.metadata.creation_timestamp.clone(), *key));
    for (key, ap, template) in access_points {
        if ap.spec.vip.as_ref().is_some_and(|vip| vip.proxy_protocol) {
            view.proxy_protocol.insert(key.clone());
        }
        let ns = key.namespace.as_str();
        expand_into(&mut view.gateways, key, ns, &template.gateways);
        expand_into(
            &mut view.virtual_services,
            key,
            ns,
            &template.virtual_services,
        );
        expand_into(
            &mut view.destination_rules,
            key,
            ns,
            &template.destination_rules,
        );
        expand_into(
            &mut view.service_entries,
            key,
            ns,
            &template.service_entries,
        );
        expand_into(
            &mut view.workload_entries,
            key,
            ns,
            &template.workload_entries,
        );
        if let Some(service) = &template.service {
            view.services.push(ViewService {
                key: resolve_key(ns, &service.metadata),
                access_point: Some(key),
                spec: &service.spec,
                export_to: from_annotation(Some(&service.metadata.annotations)),
                // Validated with the AccessPoint: an invalid mode never reaches a view.
                node_ports: node_port_mode(&service.metadata.annotations, &service.spec, true)
                    .ok()
                    .flatten(),
            });
        }
    }
    let plain_services: Box<dyn Iterator<Item = (&ObjectKey, &Service)>> = match scope {
        None => Box::new(model.services.iter()),
        Some(scope) => Box::new(
            scope
                .service_keys()
                .into_iter()
                .filter_map(|key| model.services.get_key_value(&key)),
        ),
    };
    for (key, service) in plain_services {
        if let Some(spec) = &service.spec {
            let annotations = service.metadata.annotations.clone().unwrap_or_default();
            view.services.push(ViewService {
                key: key.clone(),
                access_point: None,
                spec,
                export_to: from_annotation(service.metadata.annotations.as_ref()),
                node_ports: node_port_mode(&annotations, spec, false).ok().flatten(),
            });
        }
    }
    // Scoped, only the namespaces of the view's Services are looked at.
    let slices: Box<dyn Iterator<Item = &EndpointSlice>> = match scope {
        None => Box::new(model.endpoint_slices.values()),
        Some(_) => {
            let namespaces: BTreeSet<&str> = view
                .services
                .iter()
                .map(|s| s.key.namespace.as_str())
                .collect();
            Box::new(namespaces.into_iter().flat_map(|namespace| {
                model
                    .endpoint_slices
                    .range(ObjectKey::new(namespace, "")..)
                    .take_while(move |(key, _)| key.namespace == namespace)
                    .map(|(_, slice)| slice)
            }))
        }
    };
    // Scoped, only the Services in the view: a full view keeps every labelled slice.
    let in_view: Option<BTreeSet<(&str, &str)>> = scope.map(|_| {
        view.services
            .iter()
            .map(|s| (s.key.namespace.as_str(), s.key.name.as_str()))
            .collect()
    });
    for slice in slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(namespace), Some(service)) = (&slice.metadata.namespace, service) {
            if in_view
                .as_ref()
                .is_some_and(|wanted| !wanted.contains(&(namespace.as_str(), service.as_str())))
            {
                continue;
            }
            view.endpoint_slices
                .entry((namespace.clone(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    for (i, rule) in view.destination_rules.iter().enumerate() {
        view.rules_by_host
            .entry(resolve_host(&rule.spec.host, &rule.key.namespace))
            .or_default()
            .push(i);
    }
    for (i, vs) in view.virtual_services.iter().enumerate() {
        let mut named: Vec<ObjectKey> = vs
            .spec
            .gateways
            .iter()
            .map(|g| match g.split_once('/') {
                Some((namespace, name)) => ObjectKey::new(namespace, name),
                None => ObjectKey::new(vs.key.namespace.clone(), g.clone()),
            })
            .collect();
        named.sort();
        named.dedup();
        for gateway in named {
            view.virtual_services_by_gateway
                .entry(gateway)
                .or_default()
                .push(i);
        }
    }
    view.registry = ServiceRegistry::new(&view);
    Some(view)
}

impl<'m> ClusterView<'m> {
    /// The VirtualServices naming `gateway` in their `gateways`, in view order (whether they
    /// are exported to it is for the caller to check).
    pub fn virtual_services_naming<'v>(
        &'v self,
        gateway: &ObjectKey,
    ) -> impl Iterator<Item = &'v Expanded<'m, VirtualServiceSpec>> + 'v {
        self.virtual_services_by_gateway
            .get(gateway)
            .into_iter()
            .flatten()
            .map(|&i| &self.virtual_services[i])
    }
}

pub(crate) fn resolve_key(
    default_ns: &str,
    meta: &crate::api::access_point::TemplateMeta,
) -> ObjectKey {
    ObjectKey::new(
        meta.namespace
            .clone()
            .unwrap_or_else(|| default_ns.to_owned()),
        meta.name.clone(),
    )
}

fn expand_into<'m, S>(
    out: &mut Vec<Expanded<'m, S>>,
    origin: &'m ObjectKey,
    default_ns: &str,
    templates: &'m [Templated<S>],
) {
    out.extend(templates.iter().enumerate().map(|(index, t)| Expanded {
        origin,
        index,
        key: resolve_key(default_ns, &t.metadata),
        labels: &t.metadata.labels,
        spec: &t.spec,
    }));
}
