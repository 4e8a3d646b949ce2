//! What the gateways report back: which config each acknowledged (ADS), and how their
//! upstreams fared (LRS). Input to status, DNS health and rollouts alike, so it sits below
//! all of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::model::ObjectKey;

/// What one connected gateway proxy has acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayAck {
    pub node_id: String,
    pub gateway: ObjectKey,
    pub cluster: String,
    /// For each AccessPoint the proxy serves, the `metadata.generation` it has acknowledged.
    /// Replica-independent, so reports from every replica can be merged. Shared by the
    /// proxies of a cluster that acknowledged the same snapshot.
    pub acked: Arc<BTreeMap<ObjectKey, i64>>,
    /// The proxy's NACK of the latest config, if it rejected it.
    pub nack: Option<String>,
    /// The AccessPoint generations the rejected config carried (as `acked`); `None` when not
    /// known. A NACK of a push made before an AccessPoint's current version says nothing of it.
    pub nack_of: Option<Arc<BTreeMap<ObjectKey, i64>>>,
    /// Its recent load reports (requests and failures per upstream), oldest first.
    pub load: Vec<UpstreamLoad>,
}

/// What one proxy reported about one upstream (Envoy cluster) for one reporting interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamLoad {
    /// The Envoy cluster, `outbound|port|subset|host`.
    pub upstream: String,
    /// When the report arrived, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Requests that completed in the interval, failed ones included.
    pub requests: u64,
    /// Requests that failed: 5xx responses, connection failures, timeouts.
    pub errors: u64,
}
