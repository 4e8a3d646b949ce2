//! The input model: every object Meridian was given, keyed by kind and name.
//!
//! Both providers (the standalone file watcher and the Kubernetes watchers) feed this same
//! model; nothing downstream knows which mode produced it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use std::sync::Arc;

pub mod export;
pub mod node;
pub mod revision;
pub mod tls;
pub mod vip;

use self::export::ExportPolicy;
use self::revision::{revision_of, Pins};
use self::tls::{SecretMaterial, TlsSecret};
use self::vip::{VipError, VipTable};
use crate::api::access_point::AccessPointTemplate;
use crate::api::{AccessPoint, MemberCluster, NameService, LOCAL_CLUSTER};

/// Objects by key, in key order. A persistent map: cloning the model for a snapshot shares
/// its nodes, so publishing after one edit copies only the edited path, not every object.
pub type ObjectMap<T> = imbl::OrdMap<ObjectKey, T>;

/// `namespace/name`; cluster-scoped objects have an empty namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    AccessPoint,
    MemberCluster,
    NameService,
    Service,
    EndpointSlice,
    /// Only its existence matters (`placement.followDeployment`).
    Deployment,
    /// TLS material a Gateway server names in `credentialName`.
    Secret,
    /// A node of the hub or a member cluster: NodePort subsets choose among them.
    Node,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AccessPoint => "AccessPoint",
            Kind::MemberCluster => "MemberCluster",
            Kind::NameService => "NameService",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Deployment => "Deployment",
            Kind::Secret => "Secret",
            Kind::Node => "Node",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One input object of any supported kind. (Moved rarely; boxing would only add noise.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum InputObject {
    AccessPoint(AccessPoint),
    MemberCluster(MemberCluster),
    NameService(NameService),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Deployment(Deployment),
    Secret(TlsSecret),
    Node(Node),
}

impl InputObject {
    pub fn kind(&self) -> Kind {
        match self {
            InputObject::AccessPoint(_) => Kind::AccessPoint,
            InputObject::MemberCluster(_) => Kind::MemberCluster,
            InputObject::NameService(_) => Kind::NameService,
            InputObject::Service(_) => Kind::Service,
            InputObject::EndpointSlice(_) => Kind::EndpointSlice,
            InputObject::Deployment(_) => Kind::Deployment,
            InputObject::Secret(_) => Kind::Secret,
            InputObject::Node(_) => Kind::Node,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            InputObject::AccessPoint(o) => &mut o.metadata,
            InputObject::MemberCluster(o) => &mut o.metadata,
            InputObject::NameService(o) => &mut o.metadata,
            InputObject::Service(o) => &mut o.metadata,
            InputObject::EndpointSlice(o) => &mut o.metadata,
            InputObject::Deployment(o) => &mut o.metadata,
            InputObject::Secret(o) => &mut o.metadata,
            InputObject::Node(o) => &mut o.metadata,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            InputObject::AccessPoint(o) => &o.metadata,
            InputObject::MemberCluster(o) => &o.metadata,
            InputObject::NameService(o) => &o.metadata,
            InputObject::Service(o) => &o.metadata,
            InputObject::EndpointSlice(o) => &o.metadata,
            InputObject::Deployment(o) => &o.metadata,
            InputObject::Secret(o) => &o.metadata,
            InputObject::Node(o) => &o.metadata,
        }
    }

    /// `namespace/name`; objects read from a member cluster (EndpointSlices, Deployments,
    /// Nodes) are keyed `namespace/name@cluster`, since clusters reuse names.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        match member_of(meta) {
            Some(cluster) if self.is_member_data() => {
                ObjectKey::new(namespace, format!("{name}@{cluster}"))
            }
            _ => ObjectKey::new(namespace, name),
        }
    }

    /// Whether objects of this kind are read from member clusters as well as the hub.
    pub fn is_member_data(&self) -> bool {
        matches!(
            self,
            InputObject::EndpointSlice(_) | InputObject::Deployment(_) | InputObject::Node(_)
        )
    }
}

/// Label naming the member cluster an object was read from (absent: the hub, `local`).
pub const CLUSTER_LABEL: &str = "meridian.dev/cluster";

/// The member cluster an object was read from, unless it is the hub's own.
pub fn member_of(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()?
        .get(CLUSTER_LABEL)
        .map(String::as_str)
        .filter(|c| *c != LOCAL_CLUSTER)
}

/// Ready endpoint addresses among `slices` that were read from `cluster`.
pub fn ready_addresses<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    cluster: &str,
) -> usize {
    slices
        .into_iter()
        .filter(|slice| member_of(&slice.metadata).unwrap_or(LOCAL_CLUSTER) == cluster)
        .flat_map(|slice| &slice.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .map(|e| e.addresses.len())
        .sum()
}

/// The objects currently in force. Cheap to clone behind an `Arc`; rebuilt by the index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub access_points: ObjectMap<AccessPoint>,
    pub member_clusters: BTreeMap<ObjectKey, MemberCluster>,
    pub name_services: ObjectMap<NameService>,
    pub services: ObjectMap<Service>,
    pub endpoint_slices: ObjectMap<EndpointSlice>,
    /// Deployments of the hub and of member clusters (metadata only).
    pub deployments: ObjectMap<Deployment>,
    /// TLS Secrets Gateway servers name in `credentialName`.
    pub secrets: BTreeMap<ObjectKey, TlsSecret>,
    /// Nodes of the hub and of member clusters, trimmed to what subsets read
    /// ([`node::trimmed`]), keyed `name` or `name@cluster`.
    pub nodes: ObjectMap<Node>,
    /// Certificates Meridian issued, by SDS name (fed by the certificate manager).
    pub issued: BTreeMap<String, Arc<SecretMaterial>>,
    /// Why certificates Meridian owes could not be issued, by SDS name (fed by the
    /// certificate manager; shown in status, never read by translation).
    pub issue_errors: Arc<BTreeMap<String, String>>,
    /// VIPs allocated per (AccessPoint, cluster, family), and what could not be allocated
    /// (fed by the VIP allocator).
    pub vips: Arc<VipTable>,
    pub vip_errors: Arc<Vec<VipError>>,
    /// Derived: the template each (AccessPoint, cluster) gets where overrides select the
    /// cluster. Absent: the AccessPoint's own template. See
    /// [`refresh_overrides`](super::overrides::refresh_overrides).
    pub cluster_templates: BTreeMap<(ObjectKey, String), ClusterTemplate>,
    /// Mesh-wide `exportTo` defaults (configuration, not input).
    pub export: ExportPolicy,
    /// Derived: overrides that failed, per (AccessPoint, cluster).
    pub override_errors: BTreeMap<(ObjectKey, String), OverrideError>,
    /// Derived: the revision of each accepted AccessPoint's current spec.
    pub revisions: ObjectMap<String>,
    /// Which revision each cluster is served, for AccessPoints under a staged rollout (fed by
    /// the rollout task). Others are served their current spec everywhere.
    pub pins: Arc<Pins>,
}

/// What overrides made of a template for one cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterTemplate {
    /// The patched template (after a failure: the last one that patched cleanly).
    Patched(Arc<AccessPointTemplate>),
    /// Overrides failed and nothing patched cleanly before, or the cluster's gateways rejected
    /// the only version there is (withheld by the quarantine): not expanded in that cluster.
    Blocked,
}

/// Why an override could not patch a template for one cluster.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spec.overrides[{index}]: {message}")]
pub struct OverrideError {
    /// Index of the failing override in `spec.overrides`.
    pub index: usize,
    pub message: String,
}

impl Model {
    /// Inserts or replaces an object; returns whether the model changed.
    pub fn apply(&mut self, object: InputObject) -> bool {
        let key = object.key();
        fn put<T: PartialEq + Clone, M: ObjectStore<T>>(
            map: &mut M,
            key: ObjectKey,
            value: T,
        ) -> bool {
            if map.get(&key) == Some(&value) {
                return false;
            }
            map.insert(key, value);
            true
        }
        match object {
            InputObject::AccessPoint(o) => {
                self.revisions.insert(key.clone(), revision_of(&o.spec));
                put(&mut self.access_points, key, o)
            }
            InputObject::MemberCluster(o) => put(&mut self.member_clusters, key, o),
            InputObject::NameService(o) => put(&mut self.name_services, key, o),
            InputObject::Service(o) => put(&mut self.services, key, o),
            InputObject::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o),
            InputObject::Deployment(o) => put(&mut self.deployments, key, o),
            InputObject::Secret(o) => put(&mut self.secrets, key, o),
            InputObject::Node(o) => put(&mut self.nodes, key, node::trimmed(o)),
        }
    }

    /// Removes an object; returns whether it was present.
    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::AccessPoint => {
                self.revisions.remove(key);
                self.access_points.remove(key).is_some()
            }
            Kind::MemberCluster => self.member_clusters.remove(key).is_some(),
            Kind::NameService => self.name_services.remove(key).is_some(),
            Kind::Service => self.services.remove(key).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).is_some(),
            Kind::Deployment => self.deployments.remove(key).is_some(),
            Kind::Secret => self.secrets.remove(key).is_some(),
            Kind::Node => self.nodes.remove(key).is_some(),
        }
    }

    /// The version of an AccessPoint `cluster` is served, and whether a rollout or the
    /// quarantine holds it to another revision than the current spec's. `None`: none is.
    pub fn served_version(&self, key: &ObjectKey, cluster: &str) -> Option<(&AccessPoint, bool)> {
        let current = self.access_points.get(key)?;
        let Some(pin) = self.pins.get(key) else {
            return Some((current, false));
        };
        if pin.withheld.contains(cluster) {
            return None;
        }
        let revision = pin.revision(cluster);
        if self.revisions.get(key).map(String::as_str) == Some(revision) {
            return Some((current, false));
        }
        match pin.revisions.get(revision) {
            Some(held) => Some((held, true)),
            None => Some((current, false)),
        }
    }

    /// The revision of `key` that `cluster` is served.
    pub fn served_revision(&self, key: &ObjectKey, cluster: &str) -> Option<&str> {
        let pin = self.pins.get(key);
        if pin.is_some_and(|p| p.withheld.contains(cluster)) {
            return None;
        }
        match pin {
            Some(pin)
                if self
                    .served_version(key, cluster)
                    .is_some_and(|(_, held)| held) =>
            {
                Some(pin.revision(cluster))
            }
            _ => self.revisions.get(key).map(String::as_str),
        }
    }

    /// (namespace, name) of the AccessPoint's template Service, if it has one.
    pub fn template_service(&self, access_point: &ObjectKey) -> Option<(String, String)> {
        let service = self
            .access_points
            .get(access_point)?
            .spec
            .template
            .service
            .as_ref()?;
        let namespace = service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| access_point.namespace.clone());
        Some((namespace, service.metadata.name.clone()))
    }

    /// Every known cluster: the hub's own (`local`) plus each MemberCluster, sorted.
    pub fn cluster_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self
            .member_clusters
            .keys()
            .map(|k| k.name.clone())
            .collect();
        names.insert(LOCAL_CLUSTER.to_owned());
        names.into_iter().collect()
    }

    pub fn len(&self) -> usize {
        self.access_points.len()
            + self.member_clusters.len()
            + self.name_services.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.deployments.len()
            + self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The maps [`Model::apply`] stores objects in: persistent for the many, plain for the few.
trait ObjectStore<T> {
    fn get(&self, key: &ObjectKey) -> Option<&T>;
    fn insert(&mut self, key: ObjectKey, value: T);
}

impl<T: Clone> ObjectStore<T> for ObjectMap<T> {
    fn get(&self, key: &ObjectKey) -> Option<&T> {
        imbl::OrdMap::get(self, key)
    }
    fn insert(&mut self, key: ObjectKey, value: T) {
        imbl::OrdMap::insert(self, key, value);
    }
}

impl<T> ObjectStore<T> for BTreeMap<ObjectKey, T> {
    fn get(&self, key: &ObjectKey) -> Option<&T> {
        BTreeMap::get(self, key)
    }
    fn insert(&mut self, key: ObjectKey, value: T) {
        BTreeMap::insert(self, key, value);
    }
}
