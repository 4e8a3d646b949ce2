//! Gateway scope: the part of a cluster one gateway's translation may read — its Gateway's
//! name, and the hosts its routes reference. [`scoped_view`](super::scoped_view) builds a view of
//! just that; `core::translate::translate_scoped` explains why and checks it is exact.

use std::collections::{BTreeSet, HashSet};

use super::affected::{for_each_reference, Reference};
use super::references::ReferenceIndex;
use crate::api::access_point::AccessPointTemplate;
use crate::core::hosts::DOMAIN_SUFFIX;
use crate::core::model::ObjectKey;

/// What one gateway's translation may read: its Gateway's name, and the hosts its routes
/// reference.
pub struct Scope<'a> {
    gateway: &'a ObjectKey,
    /// Hashed: every AccessPoint's hosts are looked up in it.
    hosts: HashSet<&'a str>,
    /// Where to find the AccessPoints it may want; without it, every one is looked at.
    index: Option<&'a ReferenceIndex>,
}

impl<'a> Scope<'a> {
    pub fn new(gateway: &'a ObjectKey, hosts: &'a BTreeSet<String>) -> Scope<'a> {
        Scope {
            gateway,
            hosts: hosts.iter().map(String::as_str).collect(),
            index: None,
        }
    }

    /// Looks candidates up in `index` (which must describe the model the view is built from).
    pub fn with_index(self, index: Option<&'a ReferenceIndex>) -> Scope<'a> {
        Scope { index, ..self }
    }

    pub fn gateway(&self) -> &ObjectKey {
        self.gateway
    }

    pub fn hosts(&self) -> impl Iterator<Item = &str> + '_ {
        self.hosts.iter().copied()
    }

    /// The AccessPoints to look at: those the index names, or `None` for all of them.
    pub fn candidates(&self) -> Option<BTreeSet<&'a ObjectKey>> {
        self.index.map(|index| index.candidates(self))
    }

    /// Whether `template`, of an AccessPoint in `namespace`, may contribute to the gateway's
    /// translation. `scratch` is room to spell hostnames in, reused across calls.
    pub fn wants(
        &self,
        namespace: &str,
        template: &AccessPointTemplate,
        scratch: &mut String,
    ) -> bool {
        let mut wanted = false;
        for_each_reference(namespace, template, scratch, |reference| {
            wanted = wanted
                || match reference {
                    Reference::Gateway { namespace, name } => {
                        self.gateway.namespace == namespace && self.gateway.name == name
                    }
                    Reference::Host(host) => self.hosts.contains(host),
                    Reference::Unscoped => true,
                }
        });
        wanted
    }

    /// The keys of the Services whose hostname is one of the hosts, in key order: every way
    /// of reading a host as `<name>.<namespace>.svc.<domain suffix>`.
    pub fn service_keys(&self) -> BTreeSet<ObjectKey> {
        let suffix = format!(".svc.{DOMAIN_SUFFIX}");
        let mut keys = BTreeSet::new();
        for host in &self.hosts {
            let Some(name_and_namespace) = host.strip_suffix(suffix.as_str()) else {
                continue;
            };
            for (dot, _) in name_and_namespace.match_indices('.') {
                keys.insert(ObjectKey::new(
                    &name_and_namespace[dot + 1..],
                    &name_and_namespace[..dot],
                ));
            }
        }
        keys
    }
}
