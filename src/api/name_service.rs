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
    /// Where the records go. Absent: Meridian's embedded DNS server (`--dns-zone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<DnsProvider>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsProvider {
    /// Dynamic updates (RFC 2136) with TSIG to an external authoritative server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<Rfc2136Provider>,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rfc2136Provider {
    /// `host:port` of the primary server.
    pub server: String,
    /// The zone the name is updated in.
    pub zone: String,
    pub tsig_key: TsigKey,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TsigKey {
    /// The key's name, as the server knows it.
    pub name: String,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// A file holding the base64 secret (as in a BIND `key` clause), read by Meridian.
    pub secret_file: String,
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
