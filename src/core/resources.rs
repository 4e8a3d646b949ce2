//! Envoy resources as served: typed, named, versioned by content.
//!
//! A resource's version is a hash of its encoded bytes, so identical input always yields identical
//! versions (across restarts and replicas) and "unchanged" is a string comparison.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};

/// The xDS resource types Meridian serves, in make-before-break push order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl ResourceType {
    /// Push order: clusters before the endpoints that fill them, listeners before the routes
    /// they load (Envoy warms CDS→EDS and LDS→RDS).
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    /// Everything pushed after clusters, in order.
    pub const AFTER_CLUSTERS: [ResourceType; 4] = [
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    pub fn type_url(self) -> String {
        match self {
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoint => ClusterLoadAssignment::type_url(),
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
            ResourceType::Secret => Secret::type_url(),
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Types whose state-of-the-world responses carry the full set (wildcard by default).
    pub fn is_wildcard_by_default(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
            ResourceType::Secret => "SDS",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// One named, encoded resource with its content version.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

impl Resource {
    pub fn new<M: Message + Name>(name: impl Into<String>, message: &M) -> Resource {
        let value = message.encode_to_vec();
        let version = content_hash([value.as_slice()]);
        Resource {
            name: name.into(),
            version,
            body: Any {
                type_url: M::type_url(),
                value,
            },
        }
    }
}

/// First 16 hex digits of the SHA-256 of the given parts, each length-prefixed.
pub fn content_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Everything one gateway is served, by type then name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayConfig {
    by_type: BTreeMap<ResourceType, BTreeMap<String, Arc<Resource>>>,
    /// Secrets that carry a private key.
    private: std::collections::BTreeSet<String>,
}

impl GatewayConfig {
    pub fn insert(&mut self, kind: ResourceType, resource: Resource) {
        self.by_type
            .entry(kind)
            .or_default()
            .insert(resource.name.clone(), Arc::new(resource));
    }

    /// Marks the Secret `name` as carrying a private key.
    pub fn mark_private(&mut self, name: &str) {
        self.private.insert(name.to_owned());
    }

    /// This configuration without the Secrets that carry private keys, and how many were
    /// left out (none: `None`, use this one as it is).
    pub fn without_private_keys(&self) -> Option<(GatewayConfig, usize)> {
        let secrets = self.by_type.get(&ResourceType::Secret)?;
        let withheld = secrets.keys().filter(|n| self.private.contains(*n)).count();
        if withheld == 0 {
            return None;
        }
        let mut config = self.clone();
        if let Some(secrets) = config.by_type.get_mut(&ResourceType::Secret) {
            secrets.retain(|name, _| !self.private.contains(name));
        }
        config.private.clear();
        Some((config, withheld))
    }

    pub fn resources(&self, kind: ResourceType) -> &BTreeMap<String, Arc<Resource>> {
        static EMPTY: BTreeMap<String, Arc<Resource>> = BTreeMap::new();
        self.by_type.get(&kind).unwrap_or(&EMPTY)
    }

    pub fn get(&self, kind: ResourceType, name: &str) -> Option<&Arc<Resource>> {
        self.by_type.get(&kind).and_then(|m| m.get(name))
    }

    /// Total number of resources across types.
    pub fn len(&self) -> usize {
        self.by_type.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
