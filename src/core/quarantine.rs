//! NACK quarantine: one AccessPoint's config that gateways reject must not hold back the
//! others'. Envoy rejects a whole resource, and the route configuration or listener of a shared
//! port carries every AccessPoint bound there, so one rejected change would block every later
//! change to the rest. When the gateways of a cluster reject a push, the AccessPoints that
//! changed in it are held there at what the cluster was served before (or withheld, if there
//! was nothing before), so the next push carries only config they accepted and the others move
//! on.
//!
//! Rules:
//! - A new revision of an AccessPoint is *unconfirmed* in each placed cluster until every proxy
//!   there serving it has acknowledged it.
//! - A proxy that rejects a push while behind on unconfirmed AccessPoints makes them suspects.
//!   A lone suspect is the culprit: it is held (confirmed). Several are all held, tentatively.
//! - While a cluster has nothing unconfirmed and no proxy rejecting, one tentative hold at a
//!   time is released, to be tried alone: acknowledged, it is done; rejected, it is the culprit.
//! - A new revision of a held AccessPoint lifts its holds: it is tried again everywhere.
//! - AccessPoints under a staged rollout belong to the rollout (a NACK halts it) and are never
//!   held here.
//! - Holds are persisted; what was served before an unconfirmed change is known only in memory,
//!   so a rejection right after a restart, of a change made before it, holds nothing.
//!
//! Sans-IO: the caller passes the model and the proxies' acknowledgements each round, persists
//! the returned records, then serves their [`pins`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::AccessPoint;
use crate::core::expand::gateways_named;
use crate::core::model::revision::{Pin, Pins};
use crate::core::model::{Model, ObjectKey};
use crate::core::observed::GatewayAck;
use crate::core::placement::placed_clusters;
use crate::core::rollout::plan::staged;

/// How much of a proxy's rejection message a hold keeps.
const MAX_REASON: usize = 512;

/// What a restart must find for one AccessPoint: where it is held back, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineRecord {
    /// The revision the gateways rejected: the AccessPoint's current one.
    pub rejected: String,
    /// Holds by cluster.
    pub clusters: BTreeMap<String, Hold>,
    /// The AccessPoint at each revision a hold serves.
    pub revisions: BTreeMap<String, Arc<AccessPoint>>,
}

/// One cluster held back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    /// The revision the cluster is served instead; `None`: none at all (it had none before).
    pub serving: Option<String>,
    /// The rejection, as a proxy reported it.
    pub reason: String,
    /// The rejection is this AccessPoint's alone. Otherwise it changed with others in one
    /// rejected push and will be tried alone when the cluster is quiet.
    pub confirmed: bool,
}

pub type QuarantineRecords = BTreeMap<ObjectKey, QuarantineRecord>;

/// A version a cluster was served.
#[derive(Clone, Debug, PartialEq)]
struct Version {
    revision: String,
    access_point: Arc<AccessPoint>,
}

/// What the quarantine remembers between rounds (in memory only).
#[derive(Debug, Default)]
pub struct Quarantine {
    /// The model of the previous round, to see which AccessPoints changed since.
    before: Option<Model>,
    /// Per (AccessPoint, cluster) with an unconfirmed revision: what the cluster was served
    /// before it (`None`: nothing).
    unconfirmed: BTreeMap<(ObjectKey, String), Option<Version>>,
}

impl Quarantine {
    /// Whether a round needs the proxies' acknowledgements: something is unconfirmed or held.
    pub fn watching(&self, records: &QuarantineRecords) -> bool {
        !self.unconfirmed.is_empty() || !records.is_empty()
    }

    /// One round over `model` (with the pins of `records` applied) and what `proxies`
    /// acknowledged; returns the records to persist and serve.
    pub fn round(
        &mut self,
        model: &Model,
        proxies: &[GatewayAck],
        records: &QuarantineRecords,
    ) -> QuarantineRecords {
        let mut records = records.clone();
        self.note_changes(model, &mut records);
        self.decide(model, proxies, &mut records);
        records
    }

    /// The first half of a round: new revisions since the last round become unconfirmed where
    /// they are placed, and holds of an AccessPoint that changed are lifted. Then
    /// [`Quarantine::watching`] tells whether [`Quarantine::decide`] needs the proxies.
    pub fn note_changes(&mut self, model: &Model, records: &mut QuarantineRecords) {
        let first = self.before.is_none();
        let before = self.before.take().unwrap_or_else(|| model.clone());
        self.unconfirmed
            .retain(|(key, _), _| model.access_points.get(key).is_some_and(unstaged));
        records.retain(|key, _| model.access_points.get(key).is_some_and(unstaged));
        for (key, ap) in model.access_points.iter().filter(|(_, ap)| unstaged(ap)) {
            let Some(revision) = model.revisions.get(key) else {
                continue;
            };
            let changed = match (first, records.get(key)) {
                (_, Some(record)) => &record.rejected != revision,
                (true, None) => false,
                (false, None) => before.revisions.get(key) != Some(revision),
            };
            if !changed {
                continue;
            }
            records.remove(key);
            for cluster in placed_clusters(model, ap) {
                let id = (key.clone(), cluster);
                // A change on top of an unconfirmed one falls back to what was there before both.
                if self.unconfirmed.contains_key(&id) {
                    continue;
                }
                let previous = served(&before, &id.0, &id.1);
                self.unconfirmed.insert(id, previous);
            }
        }
        self.before = Some(model.clone());
    }

    /// The second half of a round: confirms what the proxies acknowledged, holds what they
    /// rejected, and releases a tentative hold where a cluster is quiet.
    pub fn decide(
        &mut self,
        model: &Model,
        proxies: &[GatewayAck],
        records: &mut QuarantineRecords,
    ) {
        let suspects = self.observe(model, proxies);
        self.hold(model, suspects, records);
        self.probe(proxies, records);
    }

    /// Confirms what every serving proxy acknowledged; returns, per cluster, the unconfirmed
    /// AccessPoints a rejecting proxy is behind on, with its rejection.
    fn observe(
        &mut self,
        model: &Model,
        proxies: &[GatewayAck],
    ) -> BTreeMap<String, (BTreeSet<ObjectKey>, String)> {
        let mut gateways: BTreeMap<ObjectKey, BTreeSet<ObjectKey>> = BTreeMap::new();
        let mut suspects: BTreeMap<String, (BTreeSet<ObjectKey>, String)> = BTreeMap::new();
        let mut confirmed = Vec::new();
        for (key, cluster) in self.unconfirmed.keys() {
            // Until the snapshot serves the current version there (the pins of an earlier
            // round may not be applied yet), the proxies' acknowledgements say nothing of it.
            if model.served_revision(key, cluster) != model.revisions.get(key).map(String::as_str) {
                continue;
            }
            let named = gateways
                .entry(key.clone())
                .or_insert_with(|| gateways_named(model, key));
            // Unconfirmed means served the current version (the pins of the previous round may
            // still say otherwise: they are replaced after this round).
            let generation = model
                .access_points
                .get(key)
                .map(|ap| ap.metadata.generation.unwrap_or(0));
            let serving = proxies
                .iter()
                .filter(|p| &p.cluster == cluster && named.contains(&p.gateway));
            let mut behind = serving
                .filter(|p| generation.is_none() || p.acked.get(key) != generation.as_ref())
                .peekable();
            if behind.peek().is_none() {
                confirmed.push((key.clone(), cluster.clone()));
                continue;
            }
            for proxy in behind {
                // A rejection of a push that did not carry this version (it was edited right
                // after the push was rejected) is not this version's.
                let rejected_other = proxy
                    .nack_of
                    .as_ref()
                    .is_some_and(|pushed| pushed.get(key) != generation.as_ref());
                if rejected_other {
                    continue;
                }
                if let Some(nack) = &proxy.nack {
                    let entry = suspects
                        .entry(cluster.clone())
                        .or_insert_with(|| (BTreeSet::new(), reason(proxy, nack)));
                    entry.0.insert(key.clone());
                }
            }
        }
        for id in confirmed {
            self.unconfirmed.remove(&id);
        }
        suspects
    }

    /// Holds the suspects of each rejecting cluster at what it was served before.
    fn hold(
        &mut self,
        model: &Model,
        suspects: BTreeMap<String, (BTreeSet<ObjectKey>, String)>,
        records: &mut QuarantineRecords,
    ) {
        for (cluster, (keys, why)) in suspects {
            let confirmed = keys.len() == 1;
            for key in keys {
                let Some(revision) = model.revisions.get(&key) else {
                    continue;
                };
                let previous = self
                    .unconfirmed
                    .remove(&(key.clone(), cluster.clone()))
                    .flatten();
                let record = records
                    .entry(key.clone())
                    .or_insert_with(|| QuarantineRecord {
                        rejected: revision.clone(),
                        clusters: BTreeMap::new(),
                        revisions: BTreeMap::new(),
                    });
                let serving = previous.map(|version| {
                    record
                        .revisions
                        .insert(version.revision.clone(), version.access_point);
                    version.revision
                });
                let hold = Hold {
                    serving,
                    reason: why.clone(),
                    confirmed,
                };
                record.clusters.insert(cluster.clone(), hold);
            }
        }
    }

    /// In each quiet cluster (nothing unconfirmed, no proxy rejecting) with tentative holds,
    /// releases one to be tried alone.
    fn probe(&mut self, proxies: &[GatewayAck], records: &mut QuarantineRecords) {
        let busy: BTreeSet<&str> = self
            .unconfirmed
            .keys()
            .map(|(_, cluster)| cluster.as_str())
            .chain(
                proxies
                    .iter()
                    .filter(|p| p.nack.is_some())
                    .map(|p| p.cluster.as_str()),
            )
            .collect();
        let mut released: BTreeSet<String> = BTreeSet::new();
        let mut releases = Vec::new();
        for (key, record) in records.iter() {
            for (cluster, hold) in &record.clusters {
                if hold.confirmed || busy.contains(cluster.as_str()) || released.contains(cluster) {
                    continue;
                }
                released.insert(cluster.clone());
                releases.push((key.clone(), cluster.clone()));
            }
        }
        for (key, cluster) in releases {
            let Some(record) = records.get_mut(&key) else {
                continue;
            };
            let Some(hold) = record.clusters.remove(&cluster) else {
                continue;
            };
            let previous = hold.serving.and_then(|revision| {
                let access_point = record.revisions.get(&revision)?.clone();
                Some(Version {
                    revision,
                    access_point,
                })
            });
            self.unconfirmed.insert((key.clone(), cluster), previous);
            let kept: BTreeSet<&String> = record
                .clusters
                .values()
                .filter_map(|h| h.serving.as_ref())
                .collect();
            record.revisions.retain(|r, _| kept.contains(r));
            if record.clusters.is_empty() {
                records.remove(&key);
            }
        }
    }
}

/// What the index serves for the records: each held cluster's earlier revision, or nothing.
pub fn pins(records: &QuarantineRecords) -> Pins {
    records
        .iter()
        .map(|(key, record)| {
            let mut pin = Pin {
                fallback: record.rejected.clone(),
                revisions: record.revisions.clone(),
                ..Pin::default()
            };
            for (cluster, hold) in &record.clusters {
                match &hold.serving {
                    Some(revision) => {
                        pin.clusters.insert(cluster.clone(), revision.clone());
                    }
                    None => {
                        pin.withheld.insert(cluster.clone());
                    }
                }
                pin.rejected
                    .insert(cluster.clone(), describe(&record.rejected, hold));
            }
            (key.clone(), pin)
        })
        .collect()
}

/// The status message of one hold.
fn describe(rejected: &str, hold: &Hold) -> String {
    let instead = match &hold.serving {
        Some(revision) => format!("revision {revision} keeps serving there"),
        None => "it is withheld there".to_owned(),
    };
    let until = match hold.confirmed {
        true => "until the AccessPoint changes",
        false => "until it is tried alone (it changed with others in the rejected push)",
    };
    format!(
        "gateways rejected revision {rejected} ({}); {instead} {until}",
        hold.reason
    )
}

/// The version of `key` a cluster was served in `model`, if any.
fn served(model: &Model, key: &ObjectKey, cluster: &str) -> Option<Version> {
    let (access_point, _) = model.served_version(key, cluster)?;
    let revision = model.served_revision(key, cluster)?.to_owned();
    Some(Version {
        revision,
        access_point: Arc::new(access_point.clone()),
    })
}

fn unstaged(ap: &AccessPoint) -> bool {
    staged(ap).is_none()
}

/// `proxy <node>: <message>`, the message bounded.
fn reason(proxy: &GatewayAck, nack: &str) -> String {
    let mut end = nack.len().min(MAX_REASON);
    while !nack.is_char_boundary(end) {
        end -= 1;
    }
    let ellipsis = if end < nack.len() { "…" } else { "" };
    format!("proxy {}: {}{ellipsis}", proxy.node_id, &nack[..end])
}

#[cfg(test)]
mod tests;
