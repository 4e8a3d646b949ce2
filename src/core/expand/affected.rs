//! Which gateways a model change can affect, so that translations of the others are reused.
//!
//! A gateway's configuration depends on the Gateways of its name, the VirtualServices naming
//! it, and the services, ServiceEntries, DestinationRules and endpoints of the hosts its
//! routes reference (recorded in `core::translate::Translation::hosts`). A change is mapped to the
//! gateway names and hosts it touches, looking at the changed AccessPoint both before and
//! after (every per-cluster template included). Whatever is not mapped that finely — cluster
//! facts, certificates, Secrets, wildcard DestinationRules, workload selection — touches
//! everything.

use std::collections::BTreeSet;

use crate::api::access_point::AccessPointTemplate;
use crate::core::hosts::{service_host, DOMAIN_SUFFIX, SERVICE_NAME_LABEL};
use crate::core::model::{ClusterTemplate, Model, ObjectKey};
use crate::core::node_subsets::DESTINATION_ANNOTATION;

/// What changed in the model between two snapshots, as translation needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelChanges {
    /// Something every gateway may depend on changed.
    pub everything: bool,
    pub access_points: BTreeSet<ObjectKey>,
    pub services: BTreeSet<ObjectKey>,
    pub endpoint_slices: BTreeSet<ObjectKey>,
    /// A node changed: what node-port Services reach may have.
    pub nodes: bool,
}

impl ModelChanges {
    pub fn is_empty(&self) -> bool {
        *self == ModelChanges::default()
    }

    pub fn merge(&mut self, other: &ModelChanges) {
        self.everything |= other.everything;
        self.access_points
            .extend(other.access_points.iter().cloned());
        self.services.extend(other.services.iter().cloned());
        self.endpoint_slices
            .extend(other.endpoint_slices.iter().cloned());
        self.nodes |= other.nodes;
    }
}

/// The gateways and hosts a change touches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Touched {
    pub everything: bool,
    pub gateways: BTreeSet<ObjectKey>,
    pub hosts: BTreeSet<String>,
}

impl Touched {
    /// Whether the translation of `gateway`, made before the change and referencing `hosts`,
    /// may be out of date.
    pub fn affects(&self, gateway: &ObjectKey, hosts: &BTreeSet<String>) -> bool {
        self.everything
            || self.gateways.contains(gateway)
            || hosts.iter().any(|h| self.hosts.contains(h))
    }
}

/// What `changes`, which turned `before` into `after`, touch.
pub fn touched(before: &Model, after: &Model, changes: &ModelChanges) -> Touched {
    let mut out = Touched {
        everything: changes.everything,
        ..Touched::default()
    };
    if out.everything {
        return out;
    }
    for key in &changes.access_points {
        for model in [before, after] {
            for template in templates(model, key) {
                touch_template(&mut out, &key.namespace, template);
            }
        }
    }
    for key in &changes.services {
        out.hosts.insert(service_host(&key.namespace, &key.name));
    }
    if changes.nodes {
        for model in [before, after] {
            node_port_hosts(model, &mut out.hosts);
        }
    }
    for key in &changes.endpoint_slices {
        for model in [before, after] {
            let Some(slice) = model.endpoint_slices.get(key) else {
                continue;
            };
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            match service {
                Some(name) => {
                    out.hosts.insert(service_host(&key.namespace, name));
                }
                None => out.everything = true,
            }
        }
    }
    out
}

/// The hosts of every Service gateways reach through node ports, whatever cluster it is in.
fn node_port_hosts(model: &Model, hosts: &mut BTreeSet<String>) {
    for (key, service) in &model.services {
        let annotations = service.metadata.annotations.as_ref();
        if annotations.is_some_and(|a| a.contains_key(DESTINATION_ANNOTATION)) {
            hosts.insert(service_host(&key.namespace, &key.name));
        }
    }
    for key in model.access_points.keys() {
        for template in templates(model, key) {
            if let Some(service) = &template.service {
                if service
                    .metadata
                    .annotations
                    .contains_key(DESTINATION_ANNOTATION)
                {
                    let service = super::resolve_key(&key.namespace, &service.metadata);
                    hosts.insert(service_host(&service.namespace, &service.name));
                }
            }
        }
    }
}

/// The AccessPoint's own template and every per-cluster one overrides made of it.
pub(super) fn templates<'m>(model: &'m Model, key: &ObjectKey) -> Vec<&'m AccessPointTemplate> {
    let Some(ap) = model.access_points.get(key) else {
        return Vec::new();
    };
    let mut out = vec![&ap.spec.template];
    let overridden = model
        .cluster_templates
        .range((key.clone(), String::new())..)
        .take_while(|((k, _), _)| k == key);
    for (_, template) in overridden {
        if let ClusterTemplate::Patched(template) = template {
            out.push(&**template);
        }
    }
    out
}

/// Every Gateway an AccessPoint defines or binds routes to, in any cluster's template: the
/// gateways whose proxies serve it.
pub fn gateways_named(model: &Model, key: &ObjectKey) -> BTreeSet<ObjectKey> {
    let mut gateways = BTreeSet::new();
    let mut scratch = String::new();
    for template in templates(model, key) {
        for_each_reference(&key.namespace, template, &mut scratch, |reference| {
            if let Reference::Gateway { namespace, name } = reference {
                gateways.insert(ObjectKey::new(namespace, name));
            }
        });
    }
    gateways
}

pub(super) fn touch_template(out: &mut Touched, namespace: &str, template: &AccessPointTemplate) {
    for_each_reference(
        namespace,
        template,
        &mut String::new(),
        |reference| match reference {
            Reference::Gateway { namespace, name } => {
                out.gateways.insert(ObjectKey::new(namespace, name));
            }
            Reference::Host(host) => {
                out.hosts.insert(host.to_owned());
            }
            Reference::Unscoped => out.everything = true,
        },
    );
}

/// Something a gateway's translation may read, named by an AccessPoint's template.
pub(super) enum Reference<'r> {
    /// A Gateway it defines, or one its VirtualServices bind to.
    Gateway { namespace: &'r str, name: &'r str },
    /// A host it serves (Service, ServiceEntry) or has a DestinationRule for.
    Host(&'r str),
    /// Something no gateway name or host pins down: WorkloadEntries (which ServiceEntries
    /// select them is not tracked by host), selecting ServiceEntries, wildcard rules.
    Unscoped,
}

/// Calls `visit` with every [`Reference`] `template`, of an AccessPoint in `namespace`, makes.
/// Hostnames that must be spelled out are written into `scratch`, so a caller looking at many
/// templates allocates once.
pub(super) fn for_each_reference(
    namespace: &str,
    template: &AccessPointTemplate,
    scratch: &mut String,
    mut visit: impl FnMut(Reference<'_>),
) {
    for gateway in &template.gateways {
        visit(Reference::Gateway {
            namespace: gateway.metadata.namespace.as_deref().unwrap_or(namespace),
            name: &gateway.metadata.name,
        });
    }
    for vs in &template.virtual_services {
        let vs_namespace = vs.metadata.namespace.as_deref().unwrap_or(namespace);
        for gateway in &vs.spec.gateways {
            visit(match gateway.split_once('/') {
                Some((namespace, name)) => Reference::Gateway { namespace, name },
                None => Reference::Gateway {
                    namespace: vs_namespace,
                    name: gateway,
                },
            });
        }
    }
    if let Some(service) = &template.service {
        let service_namespace = service.metadata.namespace.as_deref().unwrap_or(namespace);
        write_service_host(scratch, service_namespace, &service.metadata.name);
        visit(Reference::Host(scratch));
    }
    for entry in &template.service_entries {
        for host in &entry.spec.hosts {
            visit(Reference::Host(host));
        }
        if entry.spec.workload_selector.is_some() {
            visit(Reference::Unscoped);
        }
    }
    if !template.workload_entries.is_empty() {
        visit(Reference::Unscoped);
    }
    for rule in &template.destination_rules {
        let host = &rule.spec.host;
        if host.contains('*') {
            visit(Reference::Unscoped);
        }
        // As `hosts::resolve_host` spells it.
        if host.contains('.') || host == "*" {
            visit(Reference::Host(host));
        } else {
            let rule_namespace = rule.metadata.namespace.as_deref().unwrap_or(namespace);
            write_service_host(scratch, rule_namespace, host);
            visit(Reference::Host(scratch));
        }
    }
}

/// Writes the hostname of Service `name` in `namespace` into `out` (replacing its text).
fn write_service_host(out: &mut String, namespace: &str, name: &str) {
    out.clear();
    out.push_str(name);
    out.push('.');
    out.push_str(namespace);
    out.push_str(".svc.");
    out.push_str(DOMAIN_SUFFIX);
}
