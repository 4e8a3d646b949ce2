//! Meridian's API (`meridian.dev/v1alpha1`), shared by standalone and Kubernetes mode.
//!
//! These are plain serde types; `kube::CustomResource` only derives the typed wrappers and CRD
//! schemas (kube-core, no client), so the pure core may depend on them.

pub mod access_point;
pub mod crds;
pub mod istio;
pub mod member_cluster;
pub mod name_service;
pub mod rollout;
pub mod rollout_action;

pub use access_point::{AccessPoint, AccessPointSpec, AccessPointStatus};
pub use member_cluster::{MemberCluster, MemberClusterSpec};
pub use name_service::{NameService, NameServiceSpec};

/// API group of every Meridian kind.
pub const GROUP: &str = "meridian.dev";
/// `apiVersion` of every Meridian kind.
pub const API_VERSION: &str = "meridian.dev/v1alpha1";
/// The hub's own cluster: where an AccessPoint without a placement is served.
pub const LOCAL_CLUSTER: &str = "local";

/// Node metadata a proxy (Envoy, `meridian proxy`, an L4 node) says who it is with.
pub mod node_metadata {
    /// `namespace/name` of the Gateway it serves (an L4 node: of its tier).
    pub const GATEWAY: &str = "meridian.dev/gateway";
    pub const CLUSTER: &str = "meridian.dev/cluster";
    pub const ZONE: &str = "meridian.dev/zone";
    /// `gateway` (the default) or `l4`.
    pub const ROLE: &str = "meridian.dev/role";
    /// A polling (REST) proxy's refresh delay, as a duration (`3s`).
    pub const REFRESH_DELAY: &str = "meridian.dev/refresh-delay";
}

/// The field manager of every write Meridian makes (server-side apply).
pub const FIELD_MANAGER: &str = "meridian";
