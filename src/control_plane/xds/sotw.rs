//! State-of-the-world ADS, as a sans-IO state machine: requests and new configurations in,
//! responses out. The gRPC stream in `server.rs` only moves messages.
//!
//! Protocol rules kept here (xds_protocol.rst): a request whose nonce is not the latest sent for
//! its type is stale and ignored; an `error_detail` is a NACK and the rejected version is not
//! resent until the configuration changes; unchanged resources are not resent, but newly
//! subscribed names are; LDS/CDS are full-state, EDS/RDS answer only the names asked for and
//! remember names that do not exist yet. Pushes go CDS, EDS, LDS, RDS, and clusters that
//! disappear are removed only after the listeners and routes that stopped using them are ACKed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::status::{Events, Nack, SyncState, TypeStatus};
use crate::core::resources::{content_hash, GatewayConfig, Resource, ResourceType};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Subscription {
    Wildcard,
    Names(BTreeSet<String>),
}

#[derive(Clone, Debug)]
struct Sent {
    version: String,
    nonce: String,
    resources: BTreeMap<String, Arc<Resource>>,
}

#[derive(Clone, Debug)]
struct TypeState {
    subscription: Subscription,
    sent: Option<Sent>,
    acked_version: Option<String>,
    last_nack: Option<Nack>,
    nacked_latest: bool,
}

/// One SotW ADS stream's protocol state.
#[derive(Debug)]
pub struct SotwSession {
    config: Arc<GatewayConfig>,
    types: BTreeMap<ResourceType, TypeState>,
    next_nonce: u64,
    /// Nonces of LDS/RDS responses that must be ACKed before stale clusters are removed.
    removal_waits_for: BTreeSet<String>,
    events: Events,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SotwError {
    #[error("unsupported resource type {0:?}")]
    UnsupportedType(String),
}

impl SotwSession {
    pub fn new(config: Arc<GatewayConfig>) -> SotwSession {
        SotwSession {
            config,
            types: BTreeMap::new(),
            next_nonce: 0,
            removal_waits_for: BTreeSet::new(),
            events: Events::default(),
        }
    }

    /// Handles one request from the proxy.
    pub fn on_request(
        &mut self,
        request: &DiscoveryRequest,
    ) -> Result<Vec<DiscoveryResponse>, SotwError> {
        let kind = ResourceType::from_type_url(&request.type_url)
            .ok_or_else(|| SotwError::UnsupportedType(request.type_url.clone()))?;
        let subscription = subscription_of(kind, &request.resource_names);
        let mut out = Vec::new();
        match self.types.get_mut(&kind) {
            None => {
                // First request of this type on this stream: always answer.
                self.types.insert(
                    kind,
                    TypeState {
                        subscription,
                        sent: None,
                        acked_version: None,
                        last_nack: None,
                        nacked_latest: false,
                    },
                );
                out.extend(self.respond(kind, true));
            }
            Some(state) => {
                let latest = state.sent.as_ref().map(|s| s.nonce.as_str());
                if !request.response_nonce.is_empty()
                    && Some(request.response_nonce.as_str()) != latest
                {
                    return Ok(out); // stale nonce: superseded by a newer response
                }
                if let Some(sent) = &state.sent {
                    if request.response_nonce == sent.nonce {
                        match &request.error_detail {
                            Some(status) => {
                                let nack = Nack {
                                    version: sent.version.clone(),
                                    nonce: sent.nonce.clone(),
                                    message: status.message.clone(),
                                };
                                self.events.nacks.push((kind, nack.clone()));
                                state.last_nack = Some(nack);
                                state.nacked_latest = true;
                            }
                            None => {
                                state.acked_version = Some(request.version_info.clone());
                                state.nacked_latest = false;
                                self.events.acks.push((kind, request.version_info.clone()));
                            }
                        }
                        let nonce = request.response_nonce.clone();
                        if self.removal_waits_for.remove(&nonce)
                            && self.removal_waits_for.is_empty()
                        {
                            out.extend(self.respond(ResourceType::Cluster, false));
                        }
                    }
                }
                let state = self.types.get_mut(&kind).expect("present");
                let newly_subscribed = match (&state.subscription, &subscription) {
                    (Subscription::Names(old), Subscription::Names(new)) => !new.is_subset(old),
                    (Subscription::Names(_), Subscription::Wildcard) => true,
                    _ => false,
                };
                state.subscription = subscription;
                out.extend(self.respond(kind, newly_subscribed));
            }
        }
        Ok(out)
    }

    /// A new configuration for this gateway: push what changed, in make-before-break order.
    /// A changed cluster or listener warms in Envoy until its endpoints or routes arrive, so
    /// those are sent again even when unchanged (xDS "Resource warming").
    pub fn on_config(&mut self, config: Arc<GatewayConfig>) -> Vec<DiscoveryResponse> {
        let removed_clusters = self
            .types
            .get(&ResourceType::Cluster)
            .and_then(|s| s.sent.as_ref())
            .is_some_and(|sent| {
                sent.resources
                    .keys()
                    .any(|name| config.get(ResourceType::Cluster, name).is_none())
            });
        self.config = config;
        // A new push supersedes any removal still waiting on an older one.
        self.removal_waits_for.clear();
        let changed_clusters = self.changed_names(ResourceType::Cluster);
        let changed_listeners = self.changed_names(ResourceType::Listener);
        let mut out = Vec::new();
        let keep_stale = removed_clusters
            && [ResourceType::Listener, ResourceType::Route]
                .iter()
                .any(|k| self.would_change(*k));
        let clusters_sent = self
            .respond_with(ResourceType::Cluster, false, keep_stale)
            .map(|r| out.push(r))
            .is_some();
        for kind in ResourceType::AFTER_CLUSTERS {
            let warming = match kind {
                ResourceType::Endpoint => {
                    clusters_sent
                        && changed_clusters
                            .iter()
                            .any(|name| self.config.get(kind, name).is_some())
                }
                ResourceType::Route => !changed_listeners.is_empty(),
                _ => false,
            };
            if let Some(r) = self.respond(kind, warming) {
                if keep_stale && matches!(kind, ResourceType::Listener | ResourceType::Route) {
                    self.removal_waits_for.insert(r.nonce.clone());
                }
                out.push(r);
            }
        }
        out
    }

    /// Names of `kind` the current config has in another version than the proxy was sent
    /// (new names too).
    fn changed_names(&self, kind: ResourceType) -> Vec<String> {
        let Some(sent) = self.types.get(&kind).and_then(|s| s.sent.as_ref()) else {
            return Vec::new();
        };
        self.desired(kind, false)
            .into_iter()
            .filter(|(name, r)| {
                sent.resources
                    .get(name)
                    .is_none_or(|s| s.version != r.version)
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// Drains ACK/NACK events since the last call (for metrics and logs).
    pub fn take_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    pub fn status(&self) -> Vec<TypeStatus> {
        ResourceType::ALL
            .iter()
            .filter(|k| **k != ResourceType::Secret || self.types.contains_key(k))
            .map(|kind| {
                match self
                    .types
                    .get(kind)
                    .and_then(|s| s.sent.as_ref().map(|sent| (s, sent)))
                {
                    None => TypeStatus::not_sent(*kind),
                    Some((state, sent)) => TypeStatus {
                        kind: kind.short_name().to_owned(),
                        state: SyncState::of(
                            state.nacked_latest,
                            state.acked_version.as_deref(),
                            &sent.version,
                        ),
                        sent_version: Some(sent.version.clone()),
                        sent_nonce: Some(sent.nonce.clone()),
                        acked_version: state.acked_version.clone(),
                        resources: sent.resources.len(),
                        last_nack: state.last_nack.clone(),
                    },
                }
            })
            .collect()
    }

    fn desired(&self, kind: ResourceType, keep_stale: bool) -> BTreeMap<String, Arc<Resource>> {
        let Some(state) = self.types.get(&kind) else {
            return BTreeMap::new();
        };
        let all = self.config.resources(kind);
        let mut chosen: BTreeMap<String, Arc<Resource>> = match &state.subscription {
            Subscription::Wildcard => all.clone(),
            Subscription::Names(names) => names
                .iter()
                .filter_map(|n| all.get(n).map(|r| (n.clone(), r.clone())))
                .collect(),
        };
        if keep_stale {
            if let Some(sent) = &state.sent {
                for (name, resource) in &sent.resources {
                    chosen
                        .entry(name.clone())
                        .or_insert_with(|| resource.clone());
                }
            }
        }
        chosen
    }

    fn would_change(&self, kind: ResourceType) -> bool {
        let Some(state) = self.types.get(&kind) else {
            return false;
        };
        let version = version_of(&self.desired(kind, false));
        state.sent.as_ref().map(|s| &s.version) != Some(&version)
    }

    fn respond(&mut self, kind: ResourceType, force: bool) -> Option<DiscoveryResponse> {
        let keep_stale = kind == ResourceType::Cluster && !self.removal_waits_for.is_empty();
        self.respond_with(kind, force, keep_stale)
    }

    /// Builds the response for `kind` if it differs from what was last sent (or `force`).
    fn respond_with(
        &mut self,
        kind: ResourceType,
        force: bool,
        keep_stale: bool,
    ) -> Option<DiscoveryResponse> {
        if !self.types.contains_key(&kind) {
            return None;
        }
        let resources = self.desired(kind, keep_stale);
        let version = version_of(&resources);
        let state = self.types.get_mut(&kind)?;
        let unchanged = state.sent.as_ref().is_some_and(|s| s.version == version);
        if unchanged && !force {
            return None;
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: resources.values().map(|r| r.body.clone()).collect(),
            type_url: kind.type_url(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        state.sent = Some(Sent {
            version,
            nonce,
            resources,
        });
        state.nacked_latest = false;
        Some(response)
    }
}

fn subscription_of(kind: ResourceType, names: &[String]) -> Subscription {
    if names.iter().any(|n| n == "*") || (names.is_empty() && kind.is_wildcard_by_default()) {
        Subscription::Wildcard
    } else {
        Subscription::Names(names.iter().cloned().collect())
    }
}

/// The type-level version: a hash over the (name, version) pairs of a response, in name order
/// (so the same resources have the same version however they were gathered).
pub(super) fn version_of(resources: &BTreeMap<String, Arc<Resource>>) -> String {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(resources.len() * 2);
    for (name, r) in resources {
        parts.push(name.as_bytes());
        parts.push(r.version.as_bytes());
    }
    content_hash(parts)
}

#[cfg(test)]
#[path = "sotw_tests.rs"]
mod tests;
