//! The engine's state as `status.rollout`: per stage and per cluster, with what it waits for.

use std::collections::BTreeMap;

use crate::api::rollout::{ClusterRollout, RolloutStatus, StageStatus};
use crate::core::model::ObjectKey;

use super::{stages_with_remainder, Observation, Phase, Plan, RolloutState};

/// What one rollout reports.
pub struct Report<'a> {
    pub key: &'a ObjectKey,
    pub state: &'a RolloutState,
    pub plan: &'a Plan,
    pub placed: &'a [String],
    pub observations: &'a BTreeMap<String, Observation>,
    /// The spec's revision while it is held back in shadow mode.
    pub shadowed: Option<&'a str>,
    /// An operator paused it (`meridian rollout pause`).
    pub paused: bool,
}

impl Report<'_> {
    pub fn status(&self) -> RolloutStatus {
        let state = self.state;
        let stages = stages_with_remainder(self.plan, self.placed);
        let current = stages.get(state.stage);
        let (phase, message) = match self.shadowed {
            Some(revision) => (
                "Shadow".to_owned(),
                Some(format!(
                    "revision {revision} is computed but not served (mode: Shadow); `meridian diff {} -n {}` shows what it changes",
                    self.key.name, self.key.namespace
                )),
            ),
            None if self.paused && !state.phase.is_final() => (
                "Paused".to_owned(),
                Some(format!(
                    "paused{}; resume it with `meridian rollout resume {} -n {}`",
                    current.map_or(String::new(), |s| format!(" in stage {}", s.name)),
                    self.key.name,
                    self.key.namespace
                )),
            ),
            None => (format!("{:?}", state.phase), self.message(current)),
        };
        RolloutStatus {
            revision: self.shadowed.unwrap_or(&state.revision).to_owned(),
            completed_revision: state.completed.clone(),
            phase,
            stage: match state.phase {
                Phase::Succeeded | Phase::RolledBack => None,
                _ => current.map(|s| s.name.clone()),
            },
            message,
            since: timestamp(state.since_ms),
            stages: stages
                .iter()
                .enumerate()
                .map(|(i, stage)| StageStatus {
                    name: stage.name.clone(),
                    state: self.stage_state(i).to_owned(),
                    clusters: stage.clusters.clone(),
                })
                .collect(),
            clusters: state
                .served
                .iter()
                .map(|(cluster, revision)| self.cluster(cluster, revision))
                .collect(),
            controls: None,
        }
    }

    fn message(&self, current: Option<&super::Stage>) -> Option<String> {
        let state = self.state;
        if state.reason.is_some() {
            return state.reason.clone();
        }
        let stage = current?;
        match state.phase {
            Phase::AwaitingApproval => Some(format!(
                "stage {} is done; approve it with `meridian approve {} -n {} --stage {}`",
                stage.name, self.key.name, self.key.namespace, stage.name
            )),
            Phase::Soaking => Some(format!(
                "stage {} soaks for {}s",
                stage.name,
                stage.soak_ms / 1000
            )),
            Phase::Progressing => Some(format!(
                "waiting for the gateways of stage {} to acknowledge revision {}",
                stage.name, state.revision
            )),
            _ => None,
        }
    }

    fn stage_state(&self, index: usize) -> &'static str {
        let state = self.state;
        if state.phase == Phase::Succeeded || index < state.stage {
            return "Succeeded";
        }
        if index > state.stage {
            return "Pending";
        }
        match state.phase {
            Phase::Progressing => "Progressing",
            Phase::Soaking => "Soaking",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Halted => "Halted",
            Phase::RolledBack => "RolledBack",
            Phase::Succeeded => "Succeeded",
        }
    }

    fn cluster(&self, cluster: &str, revision: &str) -> ClusterRollout {
        let state = self.state;
        let observed = self.observations.get(cluster);
        let write_error = observed.and_then(|o| o.applied.clone()?.err());
        let failure = observed.and_then(|o| o.nack.clone().or_else(|| o.unhealthy.clone()));
        let failure = failure.or(write_error);
        let (cluster_state, message) = if revision != state.revision {
            let why = match state.phase {
                Phase::RolledBack => "RolledBack",
                _ => "Pending",
            };
            (why, None)
        } else if state.failed.contains(cluster) {
            ("Halted", failure)
        } else if observed.is_some_and(|o| o.programmed) {
            ("Succeeded", None)
        } else {
            ("Progressing", failure)
        };
        ClusterRollout {
            name: cluster.to_owned(),
            revision: revision.to_owned(),
            state: cluster_state.to_owned(),
            message,
            applied: observed.and_then(|o| o.applied.as_ref()).map(Result::is_ok),
        }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339.
fn timestamp(ms: u64) -> Option<String> {
    let ms = i64::try_from(ms).ok()?;
    Some(
        k8s_openapi::jiff::Timestamp::from_millisecond(ms)
            .ok()?
            .to_string(),
    )
}
