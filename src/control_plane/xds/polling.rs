//! REST xDS polling, sans-IO: the answer to one poll, and what each polling proxy holds.
//!
//! A REST client (Envoy with `api_type: REST`) POSTs one DiscoveryRequest per subscription
//! every refresh delay, carrying the version it holds. The answer is `304 Not Modified` when
//! that is the version of what the subscription selects now, else the whole selection at its
//! version. Versions hash the (name, content) pairs in name order, so an unchanged config
//! always has the same version, whatever order its sources were read in.
//!
//! Envoy says nothing when it rejects a REST answer: it keeps the version it held and asks
//! again. A subscription that is answered a version and comes back holding another one is
//! therefore reported as having rejected it; one that comes back holding nothing, only after
//! a few answers (it may be new). A client that sends `error_detail` is believed at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::sotw::version_of;
use super::status::{Nack, SyncState, TypeStatus};
use crate::core::resources::{content_hash, GatewayConfig, Resource, ResourceType};
use crate::core::translate::GatewayIdentity;

/// Subscriptions one poller may hold (an Envoy polls one per EDS cluster); past it, a new one
/// takes the place of the one polled least recently.
const MAX_SUBSCRIPTIONS: usize = 65_536;

/// Answers a client holding nothing gets before it is judged to reject them.
const EMPTY_HANDED_ANSWERS: u32 = 3;

/// What one poll is answered.
#[derive(Clone, Debug, PartialEq)]
pub enum PollAnswer {
    /// The client holds the current version: `304 Not Modified`.
    Unchanged,
    /// The subscription's resources (by name) at `version`.
    Changed {
        version: String,
        resources: Vec<Arc<Resource>>,
    },
}

/// One subscription: a type and the names it asks for (sorted; empty is the wildcard of
/// LDS and CDS).
type SubscriptionKey = (ResourceType, Vec<String>);

#[derive(Clone, Debug)]
struct Subscription {
    /// The version the client said it holds at its last poll.
    held: String,
    /// The version last answered with resources, and how many polls it was answered to.
    answered: Option<(String, u32)>,
    /// Set when the client did not take `answered`.
    rejected: Option<Nack>,
    last_poll: Instant,
    /// The version the subscription selects from the config of the stamp it was last
    /// compared with.
    current: (u64, String),
    resources: usize,
}

/// A polling proxy: its identity and every subscription it polls.
#[derive(Clone, Debug)]
pub struct Poller {
    pub node_id: String,
    pub identity: GatewayIdentity,
    pub refresh_delay: Duration,
    /// The snapshot generation it was last answered from.
    pub generation: u64,
    /// The latest generation whose whole config it held.
    pub synced_generation: Option<u64>,
    /// Whether it was last reported as having stopped polling.
    pub reported_stopped: bool,
    subscriptions: BTreeMap<SubscriptionKey, Subscription>,
    last_poll: Instant,
    /// When subscriptions no longer polled were last dropped.
    swept_at: Instant,
    /// Per type sync state, as last computed.
    types: Vec<TypeStatus>,
    /// The config stamp `types` was computed against; `None` after a poll that may have
    /// changed them.
    types_stamp: Option<u64>,
}

impl Poller {
    pub fn new(
        node_id: String,
        identity: GatewayIdentity,
        refresh_delay: Duration,
        now: Instant,
    ) -> Poller {
        Poller {
            node_id,
            identity,
            refresh_delay,
            generation: 0,
            synced_generation: None,
            reported_stopped: false,
            subscriptions: BTreeMap::new(),
            last_poll: now,
            swept_at: now,
            types: Vec::new(),
            types_stamp: None,
        }
    }

    pub fn last_poll(&self) -> Instant {
        self.last_poll
    }

    /// Per type sync state as last computed by [`Poller::status`].
    pub fn types(&self) -> &[TypeStatus] {
        &self.types
    }

    /// Answers `request` (for `kind`) from `config`, which `stamp` names: a number that
    /// changes whenever the config may have. Subscriptions not polled within `forget_after`
    /// are dropped (a cluster removed from CDS stops polling its EDS).
    pub fn poll(
        &mut self,
        kind: ResourceType,
        request: &DiscoveryRequest,
        (config, stamp): (&GatewayConfig, u64),
        now: Instant,
        forget_after: Duration,
    ) -> PollAnswer {
        self.last_poll = now;
        // Swept a few times per window, not on every poll: an Envoy with thousands of EDS
        // clusters polls each of them every refresh delay.
        if now.saturating_duration_since(self.swept_at) >= forget_after / 4 {
            self.swept_at = now;
            let before = self.subscriptions.len();
            self.subscriptions
                .retain(|_, s| now.saturating_duration_since(s.last_poll) <= forget_after);
            if self.subscriptions.len() != before {
                self.types_stamp = None;
            }
        }
        let key = (kind, requested_names(&request.resource_names));
        // A client holding the version already worked out for this config needs no selection.
        let known = self
            .subscriptions
            .get(&key)
            .filter(|s| s.current.0 == stamp && s.current.1 == request.version_info)
            .map(|s| s.current.1.clone());
        let (version, selected) = match known {
            Some(version) => (version, None),
            None => {
                let selected = select(config, kind, &key.1);
                (version_of(&selected), Some(selected))
            }
        };
        if !self.subscriptions.contains_key(&key) && self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            let oldest = self
                .subscriptions
                .iter()
                .min_by_key(|(_, s)| s.last_poll)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.subscriptions.remove(&oldest);
            }
        }
        let subscription = self
            .subscriptions
            .entry(key)
            .or_insert_with(|| Subscription {
                held: String::new(),
                answered: None,
                rejected: None,
                last_poll: now,
                current: (stamp, String::new()),
                resources: 0,
            });
        subscription.last_poll = now;
        let settled = subscription.held == version
            && subscription.current == (stamp, version.clone())
            && subscription.rejected.is_none();
        subscription.held = request.version_info.clone();
        subscription.current = (stamp, version.clone());
        if let Some(selected) = &selected {
            subscription.resources = selected.len();
        }
        if request.version_info == version {
            subscription.rejected = None;
            if !settled {
                self.types_stamp = None;
            }
            return PollAnswer::Unchanged;
        }
        self.types_stamp = None;
        let reported = request.error_detail.as_ref().map(|e| e.message.clone());
        let answers = match &subscription.answered {
            Some((answered, count)) if *answered == version => count.saturating_add(1),
            _ => 1,
        };
        // Not taken after being answered: rejected. A client that holds nothing may also be a
        // new subscription under an old name (Envoy re-creates a cluster's EDS subscription
        // when the cluster changes), so it is given more answers before being judged.
        let judged_after = if request.version_info.is_empty() {
            EMPTY_HANDED_ANSWERS
        } else {
            1
        };
        subscription.rejected = match reported {
            Some(message) => Some(Nack {
                version: version.clone(),
                nonce: String::new(),
                message,
            }),
            None if answers > judged_after => Some(Nack {
                version: version.clone(),
                nonce: String::new(),
                message: format!(
                    "the proxy did not take version {version} after {} answer(s); REST clients \
                     do not say why, see the proxy's log",
                    answers - 1
                ),
            }),
            None => None,
        };
        subscription.answered = Some((version.clone(), answers));
        PollAnswer::Changed {
            version,
            resources: selected.unwrap_or_default().into_values().collect(),
        }
    }

    /// Per type, whether the proxy holds what `config` (named by `stamp`) selects for its
    /// subscriptions; and whether that changed since last asked. Costs nothing while the
    /// proxy only hears `304`s.
    pub fn status(&mut self, (config, stamp): (&GatewayConfig, u64)) -> (&[TypeStatus], bool) {
        if self.types_stamp != Some(stamp) {
            for ((kind, names), subscription) in &mut self.subscriptions {
                if subscription.current.0 != stamp {
                    let selected = select(config, *kind, names);
                    subscription.resources = selected.len();
                    subscription.current = (stamp, version_of(&selected));
                }
            }
            let mut by_type: BTreeMap<ResourceType, Vec<&Subscription>> = BTreeMap::new();
            for ((kind, _), subscription) in &self.subscriptions {
                by_type.entry(*kind).or_default().push(subscription);
            }
            let types = ResourceType::ALL
                .iter()
                .filter(|k| **k != ResourceType::Secret || by_type.contains_key(k))
                .map(|kind| match by_type.get(kind) {
                    None => TypeStatus::not_sent(*kind),
                    Some(subscriptions) => type_status(*kind, subscriptions),
                })
                .collect();
            let changed = self.types != types;
            self.types = types;
            self.types_stamp = Some(stamp);
            return (&self.types, changed);
        }
        (&self.types, false)
    }

    /// Whether the proxy stopped polling: nothing for `stale_after`.
    pub fn stopped(&self, now: Instant, stale_after: Duration) -> bool {
        now.saturating_duration_since(self.last_poll) > stale_after
    }
}

/// The polling proxies by node id, at most `capacity` of them: a new node past that takes
/// the place of the one that polled least recently (node ids are whatever clients say).
#[derive(Debug)]
pub struct PollerTable {
    pollers: HashMap<String, Poller>,
    capacity: usize,
}

impl PollerTable {
    pub fn new(capacity: usize) -> PollerTable {
        PollerTable {
            pollers: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The poller of `node_id`, started afresh when new or when the node now says it is
    /// someone else.
    pub fn entry(
        &mut self,
        node_id: &str,
        identity: &GatewayIdentity,
        refresh_delay: Duration,
        now: Instant,
    ) -> &mut Poller {
        if self
            .pollers
            .get(node_id)
            .is_some_and(|p| p.identity != *identity)
        {
            self.pollers.remove(node_id);
        }
        if !self.pollers.contains_key(node_id) && self.pollers.len() >= self.capacity {
            let oldest = self
                .pollers
                .iter()
                .min_by_key(|(_, p)| p.last_poll)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.pollers.remove(&oldest);
            }
        }
        let poller = self.pollers.entry(node_id.to_owned()).or_insert_with(|| {
            Poller::new(node_id.to_owned(), identity.clone(), refresh_delay, now)
        });
        poller.refresh_delay = refresh_delay;
        poller
    }

    pub fn iter(&self) -> impl Iterator<Item = &Poller> {
        self.pollers.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Poller> {
        self.pollers.values_mut()
    }

    /// Drops the pollers `gone` says are gone for good; how many.
    pub fn forget(&mut self, gone: impl Fn(&Poller) -> bool) -> usize {
        let before = self.pollers.len();
        self.pollers.retain(|_, p| !gone(p));
        before - self.pollers.len()
    }

    pub fn len(&self) -> usize {
        self.pollers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pollers.is_empty()
    }
}

/// A type's state over its subscriptions: NACKED if any rejected the current version, else
/// STALE if any holds another, else SYNCED. Versions of several subscriptions are summed up
/// in one hash (equal on both sides exactly when all are).
fn type_status(kind: ResourceType, subscriptions: &[&Subscription]) -> TypeStatus {
    let state_of = |s: &Subscription| {
        let nacked = s
            .rejected
            .as_ref()
            .is_some_and(|n| n.version == s.current.1);
        SyncState::of(nacked, Some(&s.held), &s.current.1)
    };
    let states: Vec<SyncState> = subscriptions.iter().map(|s| state_of(s)).collect();
    let state = if states.contains(&SyncState::Nacked) {
        SyncState::Nacked
    } else if states.contains(&SyncState::Stale) {
        SyncState::Stale
    } else {
        SyncState::Synced
    };
    let summed = |pick: fn(&Subscription) -> &str| -> String {
        match subscriptions {
            [one] => pick(one).to_owned(),
            many => content_hash(many.iter().map(|s| pick(s).as_bytes())),
        }
    };
    TypeStatus {
        kind: kind.short_name().to_owned(),
        state,
        sent_version: Some(summed(|s| &s.current.1)),
        sent_nonce: None,
        acked_version: Some(summed(|s| &s.held)),
        resources: subscriptions.iter().map(|s| s.resources).sum(),
        last_nack: subscriptions.iter().find_map(|s| s.rejected.clone()),
    }
}

/// The names a request asks for, sorted and without repeats (`*` is the wildcard).
fn requested_names(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    names
}

/// What a subscription to `names` of `kind` selects from `config`.
fn select(
    config: &GatewayConfig,
    kind: ResourceType,
    names: &[String],
) -> BTreeMap<String, Arc<Resource>> {
    let all = config.resources(kind);
    let wildcard = names.iter().any(|n| n == "*") || names.is_empty();
    if wildcard && kind.is_wildcard_by_default() {
        return all.clone();
    }
    names
        .iter()
        .filter_map(|n| all.get(n).map(|r| (n.clone(), r.clone())))
        .collect()
}

#[cfg(test)]
#[path = "polling_tests.rs"]
mod tests;
