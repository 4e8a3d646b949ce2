//! Every staged rollout at once: one round reads the model, the proxies' acknowledgements, the
//! operators' controls and the time, and returns what to persist, what each cluster is served
//! and what to report. The edge task only persists, publishes and repeats.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::rollout::{Approval, RolloutControls, RolloutMode, RolloutStatus};
use crate::api::AccessPoint;
use crate::core::model::{Model, ObjectKey};
use crate::core::observed::GatewayAck;
use crate::core::placement::placed_clusters;
use crate::core::refs::ClusterRefs;
use crate::core::status::MemberWrites;

use super::observe::{observations, HealthWindow};
use super::plan::{plan, staged};
use super::report::Report;
use super::{advance, stages_with_remainder, Controls, RolloutState};
use crate::core::model::revision::{Pin, Pins};

/// What a restart must find: the engine's state and the AccessPoint at every revision a
/// cluster may still be served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    pub state: RolloutState,
    pub revisions: BTreeMap<String, Arc<AccessPoint>>,
}

impl RolloutRecord {
    /// What the index serves for this record: each cluster's revision; clusters not yet
    /// placed by the rollout get the last completed one.
    pub fn pin(&self) -> Pin {
        let state = &self.state;
        Pin {
            clusters: state.served.clone(),
            fallback: state
                .completed
                .clone()
                .unwrap_or_else(|| state.revision.clone()),
            revisions: self.revisions.clone(),
            ..Pin::default()
        }
    }
}

pub type Records = BTreeMap<ObjectKey, RolloutRecord>;

/// The outcome of one round.
#[derive(Debug, Default, PartialEq)]
pub struct Round {
    pub records: Records,
    pub pins: Pins,
    pub statuses: BTreeMap<ObjectKey, RolloutStatus>,
}

/// Advances every staged rollout to `now_ms`. AccessPoints no longer staged (or gone) drop
/// out: they are served their current spec everywhere.
pub fn round(
    model: &Model,
    previous: &Records,
    controls: &BTreeMap<ObjectKey, RolloutControls>,
    proxies: &[GatewayAck],
    writes: &MemberWrites,
    now_ms: u64,
) -> Round {
    let mut out = Round::default();
    let mut refs: BTreeMap<String, ClusterRefs<'_>> = BTreeMap::new();
    for (key, ap) in &model.access_points {
        let Some(spec) = staged(ap) else { continue };
        let Some(revision) = model.revisions.get(key) else {
            continue;
        };
        let placed = placed_clusters(model, ap);
        for cluster in &placed {
            if !refs.contains_key(cluster) {
                refs.insert(cluster.clone(), ClusterRefs::new(model, cluster));
            }
        }
        let plan = plan(spec, model, &placed);
        let generation = ap.metadata.generation.unwrap_or(0);
        let record = previous.get(key);
        // Traffic counts from the start of the current stage of this revision, never before.
        let health = plan.health.as_ref().map(|check| HealthWindow {
            check,
            since_ms: record
                .map(|r| &r.state)
                .filter(|s| &s.revision == revision)
                .map_or(now_ms, |s| s.since_ms),
            now_ms,
        });
        let observed = observations(key, generation, &placed, &refs, proxies, writes, health);
        let shadowed = (spec.mode == RolloutMode::Shadow)
            .then_some(record)
            .flatten()
            .filter(|r| &r.state.revision != revision);
        let state = match shadowed {
            // Shadow mode: the new revision is computed (and diffed) but nobody moves.
            Some(record) => record.state.clone(),
            None => {
                let controls = engine_controls(controls.get(key), revision);
                advance(
                    record.map(|r| &r.state),
                    revision,
                    &placed,
                    &plan,
                    &observed,
                    &controls,
                    now_ms,
                )
            }
        };
        let mut revisions = record.map(|r| r.revisions.clone()).unwrap_or_default();
        revisions
            .entry(revision.clone())
            .or_insert_with(|| Arc::new(ap.clone()));
        let referenced = state.referenced();
        revisions.retain(|r, _| referenced.contains(r.as_str()));
        let status = Report {
            key,
            state: &state,
            plan: &plan,
            placed: &placed,
            observations: &observed,
            shadowed: shadowed.map(|_| revision.as_str()),
            paused: controls.get(key).is_some_and(|c| c.paused),
        }
        .status();
        // The acts in force, shown with the status (and kept there by its writer).
        let status = RolloutStatus {
            controls: controls.get(key).cloned(),
            ..status
        };
        let record = RolloutRecord { state, revisions };
        out.pins.insert(key.clone(), record.pin());
        out.statuses.insert(key.clone(), status);
        out.records.insert(key.clone(), record);
    }
    out
}

/// The destination hosts of every AccessPoint whose rollout watches health: the only
/// upstreams whose load reports matter.
pub fn watched_hosts(model: &Model) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    let mut refs: BTreeMap<String, ClusterRefs<'_>> = BTreeMap::new();
    for (key, ap) in &model.access_points {
        if staged(ap).is_none_or(|spec| spec.health.is_none()) {
            continue;
        }
        for cluster in placed_clusters(model, ap) {
            let refs = refs
                .entry(cluster.clone())
                .or_insert_with(|| ClusterRefs::new(model, &cluster));
            hosts.extend(refs.destination_hosts(key));
        }
    }
    hosts
}

/// What a restart serves before the first round: the persisted assignments.
pub fn pins_of(records: &Records) -> Pins {
    records
        .iter()
        .map(|(key, record)| (key.clone(), record.pin()))
        .collect()
}

fn engine_controls(controls: Option<&RolloutControls>, revision: &str) -> Controls {
    let Some(controls) = controls else {
        return Controls::default();
    };
    Controls {
        approved: controls
            .approvals
            .iter()
            .filter(|a| a.revision == revision)
            .map(|a| a.stage.clone())
            .collect(),
        paused: controls.paused,
        undo: controls.undo.as_deref() == Some(revision),
    }
}

/// An operator's act on one rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Approve { stage: String, by: Option<String> },
    Pause,
    Resume,
    Undo,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("AccessPoint {0} not found")]
    NotFound(ObjectKey),
    #[error("AccessPoint {0} has no staged rollout (spec.rollout.strategy is not Staged)")]
    NotStaged(ObjectKey),
    #[error("AccessPoint {key} has no stage {stage:?}; its stages are {stages}")]
    NoSuchStage {
        key: ObjectKey,
        stage: String,
        stages: String,
    },
    #[error(
        "AccessPoint {0}: no revision ever reached every cluster, so there is nothing to undo to"
    )]
    NothingToUndo(ObjectKey),
}

/// Records `command` in `controls` (the caller persists them); `now` is RFC 3339.
pub fn apply_command(
    model: &Model,
    records: &Records,
    controls: &mut RolloutControls,
    key: &ObjectKey,
    command: Command,
    now: &str,
) -> Result<(), CommandError> {
    let ap = model
        .access_points
        .get(key)
        .ok_or_else(|| CommandError::NotFound(key.clone()))?;
    let spec = staged(ap).ok_or_else(|| CommandError::NotStaged(key.clone()))?;
    let record = records.get(key);
    let revision = record
        .map(|r| r.state.revision.clone())
        .or_else(|| model.revisions.get(key).cloned())
        .unwrap_or_default();
    match command {
        Command::Approve { stage, by } => {
            let placed = placed_clusters(model, ap);
            let names: Vec<String> = stages_with_remainder(&plan(spec, model, &placed), &placed)
                .into_iter()
                .map(|s| s.name)
                .collect();
            if !names.contains(&stage) {
                return Err(CommandError::NoSuchStage {
                    key: key.clone(),
                    stage,
                    stages: names.join(", "),
                });
            }
            controls.approvals.retain(|a| a.revision == revision);
            if !controls.approvals.iter().any(|a| a.stage == stage) {
                controls.approvals.push(Approval {
                    revision,
                    stage,
                    by,
                    at: Some(now.to_owned()),
                });
            }
        }
        Command::Pause => controls.paused = true,
        Command::Resume => controls.paused = false,
        Command::Undo => {
            if record.and_then(|r| r.state.completed.as_ref()).is_none() {
                return Err(CommandError::NothingToUndo(key.clone()));
            }
            controls.undo = Some(revision);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
