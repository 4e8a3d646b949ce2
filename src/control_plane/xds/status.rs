//! What a stream knows about its proxy's sync state, per type: the `proxy-status` table.

use serde::{Deserialize, Serialize};

use crate::core::resources::{GatewayConfig, ResourceType};

/// The last NACK a proxy sent for one type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// Version (SotW `version_info` / delta system version) that was rejected.
    pub version: String,
    pub nonce: String,
    pub message: String,
}

/// Per-type sync state, as `istioctl proxy-status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    /// The proxy acknowledged the latest response.
    Synced,
    /// A response is awaiting acknowledgement.
    Stale,
    /// The proxy rejected the latest response.
    Nacked,
    /// Nothing was sent for this type (not subscribed).
    NotSent,
}

impl SyncState {
    /// The state of a type to which `sent` was the latest response.
    pub fn of(nacked_latest: bool, acked: Option<&str>, sent: &str) -> SyncState {
        if nacked_latest {
            SyncState::Nacked
        } else if acked == Some(sent) {
            SyncState::Synced
        } else {
            SyncState::Stale
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStatus {
    #[serde(rename = "type")]
    pub kind: String,
    pub state: SyncState,
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    pub resources: usize,
    pub last_nack: Option<Nack>,
}

impl TypeStatus {
    pub fn not_sent(kind: ResourceType) -> TypeStatus {
        TypeStatus {
            kind: kind.short_name().to_owned(),
            state: SyncState::NotSent,
            sent_version: None,
            sent_nonce: None,
            acked_version: None,
            resources: 0,
            last_nack: None,
        }
    }
}

/// Counts events a session produced, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Types ACKed (with the version acknowledged) since last drained.
    pub acks: Vec<(ResourceType, String)>,
    pub nacks: Vec<(ResourceType, Nack)>,
}

/// Whether the proxy has acknowledged all of `config`: every type it was sent is ACKed, and
/// no type that has resources is still unrequested.
pub fn fully_synced(types: &[TypeStatus], config: &GatewayConfig) -> bool {
    types.iter().all(|t| match t.state {
        SyncState::Synced => true,
        SyncState::NotSent => ResourceType::ALL
            .iter()
            .find(|kind| kind.short_name() == t.kind)
            .is_none_or(|kind| config.resources(*kind).is_empty()),
        SyncState::Stale | SyncState::Nacked => false,
    })
}
