//! The staged-rollout engine: which revision of an AccessPoint each cluster is served, moved
//! forward stage by stage as gateways acknowledge, soak and operators approve, and halted when a
//! stage looks wrong. Sans-IO: the caller supplies observations and the time, persists the
//! returned [`RolloutState`], and serves [`RolloutState::served`].
//!
//! Rules:
//! - The first revision an AccessPoint ever has goes everywhere at once (nothing to protect).
//! - A new revision starts at stage 0; clusters not yet reached keep their revision exactly.
//! - Within a stage at most `max_concurrency` clusters are moving at a time; a cluster is done
//!   when its gateways acknowledged the new revision.
//! - A stage that is done soaks for `soak_ms` (halting on bad health meanwhile), then waits for
//!   approval if it requires one, then the next stage starts.
//! - NACKs, unhealthy signals, or missing the progress deadline count as failures; more than
//!   `max_failures` halts the rollout. Halted and paused rollouts assign nothing new.
//! - `undo` sends every cluster back to the last completed revision.
//! - A cluster that joins mid-rollout gets the last completed revision.

use std::collections::{BTreeMap, BTreeSet};

pub mod diff;
pub mod fleet;
pub mod health;
pub mod observe;
pub mod plan;
pub mod report;

use serde::{Deserialize, Serialize};

/// One stage, with its clusters already resolved against the placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    pub clusters: Vec<String>,
    pub max_concurrency: usize,
    pub require_approval: bool,
    pub soak_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub stages: Vec<Stage>,
    pub progress_deadline_ms: u64,
    pub max_failures: usize,
    /// When a cluster's traffic counts as unhealthy; `None`: never.
    pub health: Option<health::HealthCheck>,
    /// On halting, serve the clusters that failed the last completed revision again.
    pub revert_failed: bool,
}

/// What the gateways of one cluster report about the revision they were last assigned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Every gateway of the cluster acknowledged the assigned revision.
    pub programmed: bool,
    /// A gateway rejected it.
    pub nack: Option<String>,
    /// The health signal crossed its threshold.
    pub unhealthy: Option<String>,
    /// Whether the AccessPoint's Service reached the member cluster: `None` where Meridian
    /// writes none (or has not yet); `Some(Err)` holds the cluster as not programmed.
    pub applied: Option<Result<(), String>>,
}

/// The operator's inputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    /// Stages approved for the current revision, by name.
    pub approved: BTreeSet<String>,
    pub paused: bool,
    pub undo: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Progressing,
    Soaking,
    AwaitingApproval,
    Succeeded,
    Halted,
    RolledBack,
}

impl Phase {
    /// Nothing moves any more (until a new revision, or an undo).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Halted | Phase::RolledBack)
    }
}

/// Everything the engine remembers; persisted (status or state dir) so a restart resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// The revision being rolled out (or rolled out).
    pub revision: String,
    /// The last revision that reached every cluster.
    pub completed: Option<String>,
    pub stage: usize,
    pub phase: Phase,
    /// When the current stage (or its soak) started, in ms.
    pub since_ms: u64,
    /// The revision each cluster is served.
    pub served: BTreeMap<String, String>,
    /// Clusters (or `deadline`) that failed this revision; more than `max_failures` halts.
    pub failed: BTreeSet<String>,
    /// Why the rollout halted.
    pub reason: Option<String>,
}

impl RolloutState {
    /// The revision `cluster` is served.
    pub fn served(&self, cluster: &str) -> Option<&str> {
        self.served.get(cluster).map(String::as_str)
    }

    /// Every revision a cluster may be served now: the current one, the last completed one
    /// and any a cluster is still on.
    pub fn referenced(&self) -> BTreeSet<&str> {
        let mut revisions: BTreeSet<&str> = self.served.values().map(String::as_str).collect();
        revisions.insert(&self.revision);
        revisions.extend(self.completed.as_deref());
        revisions
    }
}

/// Advances the rollout to `now_ms`. `clusters` is the current placement.
pub fn advance(
    previous: Option<&RolloutState>,
    revision: &str,
    clusters: &[String],
    plan: &Plan,
    observations: &BTreeMap<String, Observation>,
    controls: &Controls,
    now_ms: u64,
) -> RolloutState {
    let Some(previous) = previous else {
        return everywhere(revision, clusters, now_ms);
    };
    let mut state = previous.clone();
    if state.revision != revision {
        state.completed = match state.phase {
            Phase::Succeeded => Some(state.revision.clone()),
            _ => state.completed.clone(),
        };
        state.revision = revision.to_owned();
        state.stage = 0;
        state.phase = Phase::Progressing;
        state.since_ms = now_ms;
        state.failed.clear();
        state.reason = None;
    }
    // Placement changes: newcomers get the last completed revision, leavers are forgotten.
    let fallback = state
        .completed
        .clone()
        .unwrap_or_else(|| revision.to_owned());
    state.served.retain(|c, _| clusters.contains(c));
    for cluster in clusters {
        state
            .served
            .entry(cluster.clone())
            .or_insert_with(|| fallback.clone());
    }
    if controls.undo && state.phase != Phase::RolledBack {
        if let Some(completed) = state.completed.clone() {
            for served in state.served.values_mut() {
                *served = completed.clone();
            }
            state.phase = Phase::RolledBack;
            state.reason = Some(format!("undone: every cluster is back on {completed}"));
            state.since_ms = now_ms;
        }
    }
    if state.phase.is_final() || controls.paused {
        return state;
    }
    let stages = stages_with_remainder(plan, clusters);
    loop {
        let Some(stage) = stages.get(state.stage) else {
            state.phase = Phase::Succeeded;
            state.completed = Some(state.revision.clone());
            return state;
        };
        for (culprit, reason) in failures(&state, plan, observations, now_ms) {
            state.failed.insert(culprit);
            if state.failed.len() > plan.max_failures {
                state.phase = Phase::Halted;
                state.reason = Some(format!("stage {}: {reason}", stage.name));
                revert_failed(&mut state, plan);
                return state;
            }
        }
        match state.phase {
            Phase::Progressing => {
                let done = stage.clusters.iter().all(|c| {
                    state.served(c) == Some(&state.revision)
                        && observations.get(c).is_some_and(|o| o.programmed)
                });
                if !done {
                    assign(&mut state, stage, observations);
                    return state;
                }
                state.phase = Phase::Soaking;
                state.since_ms = now_ms;
            }
            Phase::Soaking => {
                if now_ms.saturating_sub(state.since_ms) < stage.soak_ms {
                    return state;
                }
                state.phase = Phase::AwaitingApproval;
            }
            Phase::AwaitingApproval => {
                if stage.require_approval && !controls.approved.contains(&stage.name) {
                    return state;
                }
                state.stage += 1;
                state.phase = Phase::Progressing;
                state.since_ms = now_ms;
            }
            Phase::Succeeded | Phase::Halted | Phase::RolledBack => return state,
        }
    }
}

/// A halted rollout's failed clusters (not the deadline) go back to the last completed
/// revision, when the plan says so and there is one: a proxy that applied part of a rejected
/// update (Envoy in state-of-the-world mode keeps the resources it accepted) gets a config it
/// took before. The rollout stays halted on its revision.
fn revert_failed(state: &mut RolloutState, plan: &Plan) {
    let Some(completed) = state.completed.clone().filter(|_| plan.revert_failed) else {
        return;
    };
    let mut reverted = Vec::new();
    for cluster in &state.failed {
        if let Some(served) = state.served.get_mut(cluster) {
            if *served != completed {
                served.clone_from(&completed);
                reverted.push(cluster.as_str());
            }
        }
    }
    if !reverted.is_empty() {
        if let Some(reason) = &mut state.reason {
            *reason += &format!("; {} back on {completed}", reverted.join(", "));
        }
    }
}

fn everywhere(revision: &str, clusters: &[String], now_ms: u64) -> RolloutState {
    RolloutState {
        revision: revision.to_owned(),
        completed: Some(revision.to_owned()),
        stage: 0,
        phase: Phase::Succeeded,
        since_ms: now_ms,
        served: clusters
            .iter()
            .map(|c| (c.clone(), revision.to_owned()))
            .collect(),
        failed: BTreeSet::new(),
        reason: None,
    }
}

/// The plan's stages, each cluster in its first stage only, plus an implicit last stage for
/// placed clusters no stage names.
pub(crate) fn stages_with_remainder(plan: &Plan, clusters: &[String]) -> Vec<Stage> {
    let mut seen: BTreeSet<&String> = BTreeSet::new();
    let mut stages: Vec<Stage> = plan
        .stages
        .iter()
        .map(|s| Stage {
            clusters: s
                .clusters
                .iter()
                .filter(|c| clusters.contains(c) && seen.insert(*c))
                .cloned()
                .collect(),
            ..s.clone()
        })
        .collect();
    let rest: Vec<String> = clusters
        .iter()
        .filter(|c| !seen.contains(c))
        .cloned()
        .collect();
    if !rest.is_empty() || stages.is_empty() {
        stages.push(Stage {
            name: "remaining".to_owned(),
            clusters: rest,
            max_concurrency: usize::MAX,
            require_approval: false,
            soak_ms: 0,
        });
    }
    stages
}

/// Moves up to `max_concurrency` clusters of the stage to the new revision.
fn assign(state: &mut RolloutState, stage: &Stage, observations: &BTreeMap<String, Observation>) {
    let moving = stage
        .clusters
        .iter()
        .filter(|c| {
            state.served(c) == Some(&state.revision)
                && !observations.get(*c).is_some_and(|o| o.programmed)
        })
        .count();
    let room = stage.max_concurrency.max(1).saturating_sub(moving);
    let next: Vec<String> = stage
        .clusters
        .iter()
        .filter(|c| state.served(c) != Some(&state.revision))
        .take(room)
        .cloned()
        .collect();
    for cluster in next {
        state.served.insert(cluster, state.revision.clone());
    }
}

/// What is failing: any cluster already on the new revision (earlier stages' clusters stay
/// watched while later stages run), and the current stage's deadline. (culprit, why).
fn failures(
    state: &RolloutState,
    plan: &Plan,
    observations: &BTreeMap<String, Observation>,
    now_ms: u64,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (cluster, observed) in observations {
        if state.served(cluster) != Some(&state.revision) {
            continue;
        }
        if let Some(nack) = &observed.nack {
            let why = format!(
                "cluster {cluster} rejected revision {}: {nack}",
                state.revision
            );
            out.push((cluster.clone(), why));
        } else if let Some(unhealthy) = &observed.unhealthy {
            out.push((
                cluster.clone(),
                format!("cluster {cluster} unhealthy: {unhealthy}"),
            ));
        }
    }
    let late = state.phase == Phase::Progressing
        && now_ms.saturating_sub(state.since_ms) > plan.progress_deadline_ms;
    if late {
        let why = format!(
            "not programmed within {}s",
            plan.progress_deadline_ms / 1000
        );
        out.push(("deadline".to_owned(), why));
    }
    out
}

#[cfg(test)]
mod tests;
