//! Which gateways a model change can affect, so that translations of the others are reused.
//!
//! A gateway's configuration depends on the Gateways of its name, the VirtualServices naming
//! it, and the services, ServiceEntries, DestinationRules and endpoints of the hosts its
//! routes reference (recorded in [`super::Translation::hosts`]). A change is mapped to the
//! gateway names and hosts it touches, looking at the changed AccessPoint both before and
//! after (every per-cluster template included). Whatever is not mapped that finely — cluster
//! facts, certificates, Secrets, wildcard DestinationRules, workload selection — touches
//! everything.

use std::collections::BTreeSet;

use super::hosts::{resolve_host, DOMAIN_SUFFIX};
use super::{GatewayIdentity, Translation, SERVICE_NAME_LABEL};
use crate::api::access_point::AccessPointTemplate;
use crate::core::expand::resolve_key;
use crate::core::model::{ClusterTemplate, Model, ObjectKey};

/// What changed in the model between two snapshots, as translation needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelChanges {
    /// Something every gateway may depend on changed.
    pub everything: bool,
    pub access_points: BTreeSet<ObjectKey>,
    pub services: BTreeSet<ObjectKey>,
    pub endpoint_slices: BTreeSet<ObjectKey>,
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
    /// Whether `translation`, made for `identity` before the change, may be out of date.
    pub fn affects(&self, identity: &GatewayIdentity, translation: &Translation) -> bool {
        self.everything
            || self.gateways.contains(&identity.gateway)
            || translation.hosts.iter().any(|h| self.hosts.contains(h))
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
        out.hosts.insert(service_host(key));
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
                    out.hosts.insert(service_host(&ObjectKey::new(
                        key.namespace.clone(),
                        name.clone(),
                    )));
                }
                None => out.everything = true,
            }
        }
    }
    out
}

/// The AccessPoint's own template and every per-cluster one overrides made of it.
fn templates<'m>(model: &'m Model, key: &ObjectKey) -> Vec<&'m AccessPointTemplate> {
    let Some(ap) = model.access_points.get(key) else {
        return Vec::new();
    };
    let mut out = vec![&ap.spec.template];
    for ((k, _), template) in &model.cluster_templates {
        if k == key {
            if let ClusterTemplate::Patched(template) = template {
                out.push(&**template);
            }
        }
    }
    out
}

fn touch_template(out: &mut Touched, namespace: &str, template: &AccessPointTemplate) {
    for gateway in &template.gateways {
        out.gateways
            .insert(resolve_key(namespace, &gateway.metadata));
    }
    for vs in &template.virtual_services {
        let vs_namespace = resolve_key(namespace, &vs.metadata).namespace;
        for gateway in &vs.spec.gateways {
            out.gateways.insert(match gateway.split_once('/') {
                Some((ns, name)) => ObjectKey::new(ns, name),
                None => ObjectKey::new(vs_namespace.clone(), gateway.clone()),
            });
        }
    }
    if let Some(service) = &template.service {
        out.hosts
            .insert(service_host(&resolve_key(namespace, &service.metadata)));
    }
    for entry in &template.service_entries {
        out.hosts.extend(entry.spec.hosts.iter().cloned());
        // Which WorkloadEntries an entry selects is not tracked by host.
        out.everything |= entry.spec.workload_selector.is_some();
    }
    out.everything |= !template.workload_entries.is_empty();
    for rule in &template.destination_rules {
        let rule_namespace = resolve_key(namespace, &rule.metadata).namespace;
        let host = resolve_host(&rule.spec.host, &rule_namespace);
        out.everything |= host.contains('*');
        out.hosts.insert(host);
    }
}

fn service_host(key: &ObjectKey) -> String {
    format!("{}.{}.svc.{DOMAIN_SUFFIX}", key.name, key.namespace)
}
