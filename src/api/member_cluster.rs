//! `MemberCluster`: a Kubernetes cluster (or standalone site) that AccessPoints expand into.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meridian.dev",
    derive = "PartialEq",
    version = "v1alpha1",
    kind = "MemberCluster",
    status = "MemberClusterStatus",
    shortname = "mc",
    category = "meridian",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberClusterSpec {
    /// Availability zone (`topology.kubernetes.io/zone`) of the cluster's gateways.
    pub zone: String,
    /// Region (`topology.kubernetes.io/region`).
    #[serde(default)]
    pub region: String,
    /// How Meridian reaches the cluster's API server. Absent: Meridian only serves the
    /// cluster's gateways (standalone sites, or endpoints supplied as files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<MemberConnection>,
    /// Address pools the cluster's AccessPoint VIPs come from, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vip_pools: Vec<VipPool>,
}

/// A named set of CIDRs (IPv4 or IPv6) VIPs are allocated from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VipPool {
    pub name: String,
    /// e.g. `192.0.2.0/24`, `2001:db8::/120`.
    pub cidrs: Vec<String>,
}

/// Exactly one way to reach a member's API server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberConnection {
    /// A Secret in Meridian's namespace holding a kubeconfig for the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret: Option<KubeconfigSecretRef>,
    /// The hub's own API server (the member is the cluster Meridian runs in).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeconfigSecretRef {
    pub name: String,
    /// Key in the Secret's data. Default: `kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Written by the Meridian leader from its periodic health probe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// `Ready`: the API server answered the last probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}
