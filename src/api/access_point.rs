//! `AccessPoint`: one application's front door, written once and expanded wherever it is placed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::istio::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec,
};
use super::rollout::{RolloutSpec, RolloutStatus};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meridian.dev",
    derive = "PartialEq",
    version = "v1alpha1",
    kind = "AccessPoint",
    namespaced,
    status = "AccessPointStatus",
    shortname = "ap",
    category = "meridian",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Clusters","type":"integer","jsonPath":".status.clusterCount"}"#,
    printcolumn = r#"{"name":"Ready-Clusters","type":"integer","priority":1,"jsonPath":".status.readyClusters"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.rollout.stage"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","priority":1,"jsonPath":".status.rollout.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPointSpec {
    pub template: AccessPointTemplate,
    /// Where the AccessPoint is expanded. Absent: the hub's own (`local`) cluster only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Ordered RFC 6902 patches applied to the template per cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<ClusterOverride>,
    /// What to do when a member cluster already has an object Meridian did not create:
    /// `Abort` (default; reported on the status) or `Overwrite`.
    #[serde(default, skip_serializing_if = "ConflictPolicy::is_default")]
    pub conflict_policy: ConflictPolicy,
    /// Leave the objects created in member clusters behind when the AccessPoint is deleted or
    /// a cluster leaves its placement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orphan: bool,
    /// How the AccessPoint's virtual IPs are chosen in each cluster that has VIP pools.
    /// Absent: one address per IP family from the cluster's pools, in pool order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<VipRequest>,
    /// How changes reach the clusters. Absent: every cluster at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// Which VIPs an AccessPoint gets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VipRequest {
    /// Allocate only from the pool of this name (in each cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Use the VIPs of this AccessPoint (same namespace) instead of allocating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_with: Option<String>,
    /// L4 nodes send PROXY protocol v2 to the gateways behind the VIPs, and the listeners of
    /// the Gateways this AccessPoint defines require it, so gateways see the client's address
    /// (X-Forwarded-For) instead of the L4 node's. Every client of those listeners must then
    /// come through the L4 tier.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConflictPolicy {
    #[default]
    Abort,
    Overwrite,
}

impl ConflictPolicy {
    fn is_default(&self) -> bool {
        *self == ConflictPolicy::Abort
    }
}

/// The objects an AccessPoint stamps out. Object namespaces default to the AccessPoint's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPointTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Templated<ServiceSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Templated<GatewaySpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<Templated<VirtualServiceSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_rules: Vec<Templated<DestinationRuleSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_entries: Vec<Templated<ServiceEntrySpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_entries: Vec<Templated<WorkloadEntrySpec>>,
}

/// A templated object: the metadata Meridian needs plus the object's own spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Templated<S> {
    pub metadata: TemplateMeta,
    pub spec: S,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMeta {
    /// Object name (a DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which member clusters receive the AccessPoint: those listed in `clusters`, in `zones`,
/// matching `clusterSelector`, or running `followDeployment`; `excludeClusters` always wins; a
/// present but empty placement selects no cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_clusters: Vec<String>,
    /// Also place on every cluster where this Deployment exists (the hub's own included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_deployment: Option<DeploymentRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentRef {
    pub name: String,
    /// Default: the AccessPoint's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// RFC 6902 operations against the template (`/gateways/0/spec/servers/0/port/number`).
    pub patches: Vec<PatchOperation>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchOperation {
    /// add, remove, replace, move, copy or test.
    #[schemars(extend("enum" = ["add", "remove", "replace", "move", "copy", "test"]))]
    pub op: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Any JSON value (for add, replace and test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub value: Option<serde_json::Value>,
}

/// One cluster's view of an AccessPoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    pub ready: bool,
    /// Gateway proxies serving this AccessPoint there, and how many acknowledged this generation.
    pub proxies: i32,
    pub acknowledged: i32,
    /// Ready endpoints of the template's Service read from that cluster.
    pub endpoints: i32,
    /// Whether the expanded objects are in the member cluster (absent: nothing to write there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Virtual IPs allocated to the AccessPoint in this cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<String>,
    /// The certificate of each TLS server, as the gateways there are served it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
}

/// One TLS server's certificate in one cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// The SDS name gateways fetch it under.
    pub secret: String,
    /// `embedded` (Meridian's CA) or `secret` (the Secret named by `credentialName`).
    pub source: String,
    /// The issuer's distinguished name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Serial number, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Expiry, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// Why nothing is served yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Observed state, written by the Meridian controller that holds the leader lease.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPointStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many clusters the placement selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_count: Option<i32>,
    /// How many of them are ready: no problem there, and every gateway proxy serving it there
    /// acknowledged this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_clusters: Option<i32>,
    /// Per-cluster detail: every placed cluster when there are at most 32, otherwise only
    /// clusters that are not ready (at most 32), so large fleets keep the object small.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
    /// `Accepted`, `ResolvedRefs`, `Programmed` and the summary `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where a staged rollout stands, and the operator's approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}
