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
    shortname = "ns",
    category = "meridian",
    printcolumn = r#"{"name":"FQDN","type":"string","jsonPath":".spec.fqdn"}"#,
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".status.addresses"}"#,
    printcolumn = r#"{"name":"Published","type":"string","jsonPath":".status.conditions[?(@.type==\"Published\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
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
    /// Which zones' VIPs are preferred (embedded server only). Absent: every zone alike.
    /// Zones not listed come after every listed one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<ZonePreference>,
    /// Source-aware answers (embedded server only): a client in one of these networks, by its
    /// source address or the EDNS Client Subnet its resolver forwards, is answered its own
    /// zone's VIPs while that zone has any to answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_zones: Vec<SourceZone>,
}

/// How one zone's VIPs are preferred. Only the lowest `priority` among the zones with VIPs to
/// answer is answered; within it, when weights differ, each query gets one zone's VIPs chosen
/// in proportion to `weight` (the 99/1 local-versus-remote pattern), else all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZonePreference {
    /// A MemberCluster `spec.zone`.
    pub zone: String,
    /// Lower is preferred. Default 0.
    #[serde(default)]
    pub priority: u32,
    /// Share of the queries among zones of the same priority. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// Client networks that belong to a zone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceZone {
    /// A MemberCluster `spec.zone`.
    pub zone: String,
    /// e.g. `10.1.0.0/16`, `2001:db8:1::/48`.
    pub cidrs: Vec<String>,
}

fn default_weight() -> u32 {
    1
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
/// ready endpoints (read from that cluster) and a gateway proxy there serves the AccessPoint;
/// when no cluster qualifies, all of them (failing open, as a health-checked DNS record set
/// does). `zones` and `sourceZones` then choose among the clusters answered.
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

/// Written by the Meridian leader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameServiceStatus {
    /// `Published`: the name answers with `addresses`, from the embedded server or the
    /// provider's server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// Every address the name is published with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The RFC 2136 server's state, for a NameService with a provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderStatus>,
}

/// How the last attempt to bring an RFC 2136 server in line went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    pub server: String,
    pub zone: String,
    /// Whether the server holds what Meridian last wanted there.
    pub synced: bool,
    /// When it last did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
