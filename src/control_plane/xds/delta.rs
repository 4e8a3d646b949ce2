//! Incremental (delta) ADS, as a sans-IO state machine.
//!
//! Per type the session tracks what the proxy has (name → version, seeded from
//! `initial_resource_versions`), sends only resources whose version differs, and names removals
//! explicitly. A NACKed version counts as "had", so it is not resent until it changes.
//! Newly subscribed names are (re)sent; cluster removals wait for the ACK of listener/route
//! updates in the same push (make-before-break).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};

use super::status::{Events, Nack, SyncState, TypeStatus};
use crate::core::resources::{content_hash, GatewayConfig, ResourceType};

/// Unanswered responses remembered per type; a proxy that never answers cannot grow this.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Clone, Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds, by our account: name → version.
    known: BTreeMap<String, String>,
    /// Nonce → system version of responses not yet answered.
    in_flight: BTreeMap<String, String>,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    acked_version: Option<String>,
    last_nack: Option<Nack>,
    nacked_latest: bool,
}

impl TypeState {
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("unsupported resource type {0:?}")]
    UnsupportedType(String),
}

/// One delta ADS stream's protocol state.
#[derive(Debug)]
pub struct DeltaSession {
    config: Arc<GatewayConfig>,
    types: BTreeMap<ResourceType, TypeState>,
    next_nonce: u64,
    removal_waits_for: BTreeSet<String>,
    events: Events,
}

impl DeltaSession {
    pub fn new(config: Arc<GatewayConfig>) -> DeltaSession {
        DeltaSession {
            config,
            types: BTreeMap::new(),
            next_nonce: 0,
            removal_waits_for: BTreeSet::new(),
            events: Events::default(),
        }
    }

    pub fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
    ) -> Result<Vec<DeltaDiscoveryResponse>, DeltaError> {
        let kind = ResourceType::from_type_url(&request.type_url)
            .ok_or_else(|| DeltaError::UnsupportedType(request.type_url.clone()))?;
        let first = !self.types.contains_key(&kind);
        let state = self.types.entry(kind).or_default();
        let mut out = Vec::new();
        if first {
            state.known = request
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if request.resource_names_subscribe.is_empty() && kind.is_wildcard_by_default() {
                state.wildcard = true;
            }
        }
        if !request.response_nonce.is_empty() {
            if let Some(version) = state.in_flight.remove(&request.response_nonce) {
                match &request.error_detail {
                    Some(status) => {
                        let nack = Nack {
                            version,
                            nonce: request.response_nonce.clone(),
                            message: status.message.clone(),
                        };
                        self.events.nacks.push((kind, nack.clone()));
                        state.last_nack = Some(nack);
                        state.nacked_latest =
                            state.sent_nonce.as_deref() == Some(request.response_nonce.as_str());
                    }
                    None => {
                        if state.sent_nonce.as_deref() == Some(request.response_nonce.as_str()) {
                            state.nacked_latest = false;
                        }
                        state.acked_version = Some(version.clone());
                        self.events.acks.push((kind, version));
                    }
                }
                if self.removal_waits_for.remove(&request.response_nonce)
                    && self.removal_waits_for.is_empty()
                {
                    out.extend(self.respond(ResourceType::Cluster));
                }
            }
        }
        let state = self.types.get_mut(&kind).expect("inserted above");
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
                // An explicit (re)subscription is answered even if the proxy had it.
                if !first {
                    state.known.remove(name);
                }
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
            }
            if !state.subscribed(name) {
                state.known.remove(name);
            }
        }
        out.extend(self.respond(kind));
        if first && out.iter().all(|r| r.type_url != kind.type_url()) {
            // Answer the first request even when there is nothing to send, so the proxy
            // does not wait out its initial fetch timeout.
            out.push(self.build(kind, Vec::new(), Vec::new()));
        }
        Ok(out)
    }

    /// A new configuration: push what changed, in make-before-break order. A changed cluster
    /// or listener warms in Envoy until its endpoints or routes arrive, so those are sent again
    /// even when the proxy has them (xDS "Resource warming").
    pub fn on_config(&mut self, config: Arc<GatewayConfig>) -> Vec<DeltaDiscoveryResponse> {
        self.config = config;
        // A new push supersedes any removal still waiting on an older one.
        self.removal_waits_for.clear();
        let mut out = Vec::new();
        let removes_clusters = self.removals(ResourceType::Cluster).next().is_some();
        let routing_changes = [ResourceType::Listener, ResourceType::Route]
            .iter()
            .any(|k| self.changes(*k).next().is_some() || self.removals(*k).next().is_some());
        let defer = removes_clusters && routing_changes;
        let cluster_update = if defer {
            let added: Vec<_> = self.changes(ResourceType::Cluster).collect();
            (!added.is_empty()).then(|| self.build(ResourceType::Cluster, added, Vec::new()))
        } else {
            self.respond(ResourceType::Cluster)
        };
        if let Some(update) = &cluster_update {
            let warming: Vec<String> = update.resources.iter().map(|r| r.name.clone()).collect();
            self.forget(ResourceType::Endpoint, warming);
        }
        out.extend(cluster_update);
        for kind in ResourceType::AFTER_CLUSTERS {
            if let Some(r) = self.respond(kind) {
                if defer && matches!(kind, ResourceType::Listener | ResourceType::Route) {
                    self.removal_waits_for.insert(r.nonce.clone());
                }
                if kind == ResourceType::Listener && !r.resources.is_empty() {
                    let routes = self.config.resources(ResourceType::Route);
                    let routes: Vec<String> = routes.keys().cloned().collect();
                    self.forget(ResourceType::Route, routes);
                }
                out.push(r);
            }
        }
        out
    }

    /// Counts `names` of `kind` as not held by the proxy, so the next response sends them.
    fn forget(&mut self, kind: ResourceType, names: Vec<String>) {
        if let Some(state) = self.types.get_mut(&kind) {
            for name in names {
                if self.config.get(kind, &name).is_some() {
                    state.known.remove(&name);
                }
            }
        }
    }

    pub fn take_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    pub fn status(&self) -> Vec<TypeStatus> {
        ResourceType::ALL
            .iter()
            .filter(|k| **k != ResourceType::Secret || self.types.contains_key(k))
            .map(
                |kind| match self.types.get(kind).filter(|s| s.sent_version.is_some()) {
                    None => TypeStatus::not_sent(*kind),
                    Some(state) => TypeStatus {
                        kind: kind.short_name().to_owned(),
                        state: SyncState::of(
                            state.nacked_latest,
                            state.acked_version.as_deref(),
                            state.sent_version.as_deref().unwrap_or_default(),
                        ),
                        sent_version: state.sent_version.clone(),
                        sent_nonce: state.sent_nonce.clone(),
                        acked_version: state.acked_version.clone(),
                        resources: state.known.len(),
                        last_nack: state.last_nack.clone(),
                    },
                },
            )
            .collect()
    }

    /// Subscribed resources whose version the proxy does not have.
    fn changes(&self, kind: ResourceType) -> impl Iterator<Item = DeltaResource> + '_ {
        let state = self.types.get(&kind);
        self.config
            .resources(kind)
            .iter()
            .filter(move |(name, r)| {
                state.is_some_and(|s| s.subscribed(name) && s.known.get(*name) != Some(&r.version))
            })
            .map(|(name, r)| DeltaResource {
                name: name.clone(),
                version: r.version.clone(),
                resource: Some(r.body.clone()),
                ..Default::default()
            })
    }

    /// Names the proxy has that no longer exist.
    fn removals(&self, kind: ResourceType) -> impl Iterator<Item = String> + '_ {
        let config = &self.config;
        self.types
            .get(&kind)
            .into_iter()
            .flat_map(|s| s.known.keys())
            .filter(move |name| config.get(kind, name).is_none())
            .cloned()
    }

    fn respond(&mut self, kind: ResourceType) -> Option<DeltaDiscoveryResponse> {
        let changes: Vec<_> = self.changes(kind).collect();
        let removals: Vec<_> =
            if kind == ResourceType::Cluster && !self.removal_waits_for.is_empty() {
                Vec::new()
            } else {
                self.removals(kind).collect()
            };
        if changes.is_empty() && removals.is_empty() {
            return None;
        }
        Some(self.build(kind, changes, removals))
    }

    fn build(
        &mut self,
        kind: ResourceType,
        changes: Vec<DeltaResource>,
        removals: Vec<String>,
    ) -> DeltaDiscoveryResponse {
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let state = self.types.entry(kind).or_default();
        for r in &changes {
            state.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &removals {
            state.known.remove(name);
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        for (name, version) in &state.known {
            parts.push(name.as_bytes());
            parts.push(version.as_bytes());
        }
        let version = content_hash(parts);
        state.in_flight.insert(nonce.clone(), version.clone());
        while state.in_flight.len() > MAX_IN_FLIGHT {
            state.in_flight.pop_first();
        }
        state.sent_version = Some(version.clone());
        state.sent_nonce = Some(nonce.clone());
        state.nacked_latest = false;
        DeltaDiscoveryResponse {
            system_version_info: version,
            resources: changes,
            type_url: kind.type_url(),
            removed_resources: removals,
            nonce,
            ..Default::default()
        }
    }
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
