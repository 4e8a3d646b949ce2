//! `NameService`: a DNS name for an AccessPoint's VIPs or for static addresses.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meridian.dev",
    derive = "PartialEq",
    version = "v1alpha1",
    kind = "NameService",
    namespaced,
    status = "NameServiceStatus",
    shortname = "ns"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameServiceSpec {
    pub fqdn: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    pub target: NameServiceTarget,
    /// Which of an AccessPoint's VIPs are answered. Default `All`.
    #[serde(default, skip_serializing_if = "DnsPolicy::is_default")]
    pub policy: DnsPolicy,
}

/// `All`: every cluster's VIP. `Failover`: only clusters where the AccessPoint's Service has
/// ready endpoints (read from that cluster); when none has, all of them (failing open, as a
/// health-checked DNS record set does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DnsPolicy {
    #[default]
    All,
    Failover,
}

impl DnsPolicy {
    fn is_default(&self) -> bool {
        *self == DnsPolicy::All
    }
}

fn default_ttl() -> u32 {
    30
}

/// Exactly one of `accessPoint` (its VIPs) or `addresses` (static).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameServiceTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_point: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameServiceStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}
