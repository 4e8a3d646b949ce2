//! The rollout engine against a simulated fleet and clock.

use super::*;

const CLUSTERS: [&str; 4] = ["canary", "east", "west", "south"];

fn clusters() -> Vec<String> {
    CLUSTERS.iter().map(|c| c.to_string()).collect()
}

fn plan() -> Plan {
    Plan {
        stages: vec![
            Stage {
                name: "canary".into(),
                clusters: vec!["canary".into()],
                max_concurrency: 1,
                require_approval: true,
                soak_ms: 30_000,
            },
            Stage {
                name: "rest".into(),
                clusters: vec!["east".into(), "west".into(), "south".into()],
                max_concurrency: 2,
                require_approval: false,
                soak_ms: 0,
            },
        ],
        progress_deadline_ms: 600_000,
        max_failures: 0,
        health: None,
        revert_failed: false,
    }
}

/// A fleet whose gateways acknowledge whatever they are assigned, unless told otherwise.
struct Sim {
    state: Option<RolloutState>,
    now: u64,
    controls: Controls,
    nack: BTreeMap<String, String>,
    /// Clusters whose traffic fails on the new revision.
    unhealthy: BTreeMap<String, String>,
    slow: BTreeSet<String>,
    placement: Vec<String>,
    plan: Plan,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            state: None,
            now: 0,
            controls: Controls::default(),
            nack: BTreeMap::new(),
            unhealthy: BTreeMap::new(),
            slow: BTreeSet::new(),
            placement: clusters(),
            plan: plan(),
        }
    }

    /// One tick with `revision` as the spec's revision; observations reflect what the
    /// previous tick assigned.
    fn tick(&mut self, revision: &str) -> &RolloutState {
        let observations = self
            .state
            .as_ref()
            .map(|s| {
                s.served
                    .iter()
                    .map(|(c, rev)| {
                        let nack = (rev == revision)
                            .then(|| self.nack.get(c).cloned())
                            .flatten();
                        let programmed = nack.is_none() && !self.slow.contains(c);
                        let unhealthy = (rev == revision)
                            .then(|| self.unhealthy.get(c).cloned())
                            .flatten();
                        (
                            c.clone(),
                            Observation {
                                programmed,
                                nack,
                                unhealthy,
                                applied: None,
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let next = advance(
            self.state.as_ref(),
            revision,
            &self.placement,
            &self.plan,
            &observations,
            &self.controls,
            self.now,
        );
        self.state = Some(next);
        self.state.as_ref().unwrap()
    }

    fn run(&mut self, revision: &str, ticks: usize, step_ms: u64) -> &RolloutState {
        for _ in 0..ticks {
            self.tick(revision);
            self.now += step_ms;
        }
        self.state.as_ref().unwrap()
    }

    fn served(&self) -> Vec<(&str, &str)> {
        self.state
            .as_ref()
            .unwrap()
            .served
            .iter()
            .map(|(c, r)| (c.as_str(), r.as_str()))
            .collect()
    }
}

#[test]
fn the_first_revision_goes_everywhere_at_once() {
    let mut sim = Sim::new();
    let state = sim.tick("r1");
    assert_eq!(state.phase, Phase::Succeeded);
    assert!(state.served.values().all(|r| r == "r1"));
}

#[test]
fn canary_soaks_then_waits_for_approval_while_the_rest_keep_the_old_revision() {
    let mut sim = Sim::new();
    sim.tick("r1");
    let state = sim.run("r2", 3, 1_000);
    assert_eq!(state.phase, Phase::Soaking);
    assert_eq!(
        sim.served(),
        [
            ("canary", "r2"),
            ("east", "r1"),
            ("south", "r1"),
            ("west", "r1")
        ]
    );
    let state = sim.run("r2", 40, 1_000);
    assert_eq!(state.phase, Phase::AwaitingApproval);
    assert_eq!(state.stage, 0);
    // Waiting changes nothing, however long.
    let state = sim.run("r2", 100, 60_000);
    assert_eq!(state.phase, Phase::AwaitingApproval);
    assert_eq!(sim.served()[1], ("east", "r1"));

    sim.controls.approved.insert("canary".into());
    let state = sim.tick("r2");
    assert_eq!((state.stage, state.phase), (1, Phase::Progressing));
    // At most two of the rest move at once.
    let moved = state.served.values().filter(|r| *r == "r2").count();
    assert_eq!(moved, 3, "canary plus two");
    let state = sim.run("r2", 5, 1_000);
    assert_eq!(state.phase, Phase::Succeeded);
    assert_eq!(state.completed.as_deref(), Some("r2"));
    assert!(state.served.values().all(|r| r == "r2"));
}

#[test]
fn a_nack_in_the_canary_halts_and_undo_restores_everyone() {
    let mut sim = Sim::new();
    sim.tick("r1");
    sim.nack.insert("canary".into(), "invalid regex".into());
    let state = sim.run("r2", 5, 1_000);
    assert_eq!(state.phase, Phase::Halted);
    let reason = state.reason.clone().unwrap();
    assert!(
        reason.contains("stage canary") && reason.contains("invalid regex"),
        "{reason}"
    );
    assert_eq!(
        sim.served()[1..],
        [("east", "r1"), ("south", "r1"), ("west", "r1")]
    );
    // Approving a halted rollout does nothing.
    sim.controls.approved.insert("canary".into());
    assert_eq!(sim.run("r2", 3, 1_000).phase, Phase::Halted);

    sim.controls.undo = true;
    let state = sim.tick("r2");
    assert_eq!(state.phase, Phase::RolledBack);
    assert!(state.served.values().all(|r| r == "r1"));
    // A fixed revision starts over from stage 0.
    sim.controls = Controls::default();
    sim.nack.clear();
    let state = sim.run("r3", 2, 1_000);
    assert_eq!((state.stage, state.phase), (0, Phase::Soaking));
    assert_eq!(sim.served()[0], ("canary", "r3"));
}

#[test]
fn a_failed_cluster_goes_back_to_the_completed_revision_when_the_plan_reverts() {
    let mut sim = Sim::new();
    sim.plan.revert_failed = true;
    sim.tick("r1");
    sim.nack.insert("canary".into(), "invalid regex".into());
    let state = sim.run("r2", 5, 1_000);
    assert_eq!(state.phase, Phase::Halted);
    assert_eq!(
        state.reason.as_deref(),
        Some("stage canary: cluster canary rejected revision r2: invalid regex; canary back on r1")
    );
    assert!(
        state.served.values().all(|r| r == "r1"),
        "{:?}",
        state.served
    );
    // It stays halted on r2, and nothing moves: no cluster retries the rejected revision.
    let state = sim.run("r2", 5, 1_000);
    assert_eq!(
        (state.revision.as_str(), state.phase),
        ("r2", Phase::Halted)
    );
    assert!(state.served.values().all(|r| r == "r1"));

    // A missed deadline names no cluster: nothing is reverted, the rollout just halts.
    let mut sim = Sim::new();
    sim.plan.revert_failed = true;
    sim.tick("r1");
    sim.slow.insert("canary".into());
    let state = sim.run("r2", 700, 1_000);
    assert_eq!(state.phase, Phase::Halted);
    assert_eq!(sim.served()[0], ("canary", "r2"));
}

#[test]
fn bad_health_halts_while_awaiting_approval_and_after_the_canary_stage() {
    let mut sim = Sim::new();
    sim.tick("r1");
    let state = sim.run("r2", 40, 1_000);
    assert_eq!(state.phase, Phase::AwaitingApproval);
    sim.unhealthy
        .insert("canary".into(), "9 of 20 requests failed".into());
    let state = sim.tick("r2");
    assert_eq!(state.phase, Phase::Halted);
    assert_eq!(
        state.reason.as_deref(),
        Some("stage canary: cluster canary unhealthy: 9 of 20 requests failed")
    );
    assert_eq!(sim.served()[1], ("east", "r1"), "later stages untouched");

    // A cluster of an earlier stage stays watched while the next stage runs.
    let mut sim = Sim::new();
    sim.tick("r1");
    sim.controls.approved.insert("canary".into());
    sim.slow.insert("west".into());
    let state = sim.run("r2", 40, 1_000);
    assert_eq!((state.stage, state.phase), (1, Phase::Progressing));
    sim.unhealthy.insert("canary".into(), "errors".into());
    let state = sim.tick("r2");
    assert_eq!(state.phase, Phase::Halted);
    assert_eq!(
        state.reason.as_deref(),
        Some("stage rest: cluster canary unhealthy: errors")
    );
}

#[test]
fn missing_the_progress_deadline_halts() {
    let mut sim = Sim::new();
    sim.tick("r1");
    sim.slow.insert("canary".into());
    let state = sim.run("r2", 12, 60_000);
    assert_eq!(state.phase, Phase::Halted);
    assert!(state
        .reason
        .as_deref()
        .unwrap()
        .contains("not programmed within 600s"));
}

#[test]
fn pause_holds_and_resume_continues() {
    let mut sim = Sim::new();
    sim.tick("r1");
    sim.controls.approved.insert("canary".into());
    sim.controls.paused = true;
    let state = sim.run("r2", 5, 1_000);
    assert_eq!(state.phase, Phase::Progressing);
    assert!(
        state.served.values().all(|r| r == "r1"),
        "paused before anything moved"
    );
    sim.controls.paused = false;
    let state = sim.run("r2", 40, 1_000);
    assert_eq!(state.phase, Phase::Succeeded);
}

#[test]
fn a_cluster_joining_mid_rollout_gets_the_last_completed_revision() {
    let mut sim = Sim::new();
    sim.tick("r1");
    sim.run("r2", 3, 1_000);
    sim.placement.push("north".into());
    sim.tick("r2");
    assert_eq!(sim.state.as_ref().unwrap().served("north"), Some("r1"));
    // It is rolled with the remainder once the canary is approved.
    sim.controls.approved.insert("canary".into());
    let state = sim.run("r2", 60, 1_000);
    assert_eq!(state.phase, Phase::Succeeded);
    assert_eq!(state.served("north"), Some("r2"));
}

#[test]
fn state_survives_a_restart_through_serialization() {
    let mut sim = Sim::new();
    sim.tick("r1");
    sim.run("r2", 3, 1_000);
    let saved = serde_json::to_string(sim.state.as_ref().unwrap()).unwrap();
    let restored: RolloutState = serde_json::from_str(&saved).unwrap();
    assert_eq!(&restored, sim.state.as_ref().unwrap());
    sim.state = Some(restored);
    let state = sim.tick("r2");
    assert_eq!(
        state.served("east"),
        Some("r1"),
        "no cluster jumps revision"
    );
}
