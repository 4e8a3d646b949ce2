//! One cluster of gateways as connections use it: its plan, its endpoints once they arrived,
//! the lookup table connections pick from, and the health that shapes the table (active
//! checks and passive ejections). A new config carries the health of the cluster it replaces,
//! so a changed endpoint list does not forget which gateways failed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::stats::{GatewayState, Stats};
use crate::core::dataplane::balancer::Assignment;
use crate::core::dataplane::l4::health::HealthTracker;
use crate::core::dataplane::l4::table::{gateways_of, Gateway, L4Table};
use crate::core::dataplane::l4::L4ClusterPlan;
use crate::core::dataplane::outlier::{Outcome, OutlierDetector};

/// What is known of the gateways' health.
#[derive(Clone, Debug, Default)]
pub struct Health {
    checks: Option<HealthTracker>,
    outliers: Option<OutlierDetector>,
}

impl Health {
    fn unavailable(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let failed = self
            .checks
            .as_ref()
            .map(HealthTracker::failed)
            .unwrap_or_default();
        let ejected = self
            .outliers
            .as_ref()
            .map(OutlierDetector::ejected)
            .unwrap_or_default();
        (failed, ejected)
    }
}

#[derive(Debug)]
pub struct Upstream {
    pub plan: L4ClusterPlan,
    /// `None` until its endpoints arrived: connections are not taken before.
    pub assignment: Option<Assignment>,
    table: ArcSwap<L4Table>,
    health: Mutex<Health>,
}

impl Upstream {
    /// The cluster for `plan` and `assignment`, with the health `previous` knew.
    pub fn new(
        plan: L4ClusterPlan,
        assignment: Option<Assignment>,
        previous: Option<&Upstream>,
        stats: &Stats,
    ) -> Upstream {
        let mut health = previous.map(Upstream::health).unwrap_or_default();
        health.checks = match (&plan.health_check, health.checks.take()) {
            (Some(check), Some(mut tracker)) => {
                tracker.retune(check);
                Some(tracker)
            }
            (Some(check), None) => Some(HealthTracker::new(check)),
            (None, _) => None,
        };
        health.outliers = match (&plan.outlier, health.outliers.take()) {
            (Some(policy), Some(mut detector)) => {
                detector.update(policy.clone(), &ids(assignment.as_ref()));
                Some(detector)
            }
            (Some(policy), None) => {
                let mut detector = OutlierDetector::new(policy.clone());
                detector.update(policy.clone(), &ids(assignment.as_ref()));
                Some(detector)
            }
            (None, _) => None,
        };
        if let Some(tracker) = &mut health.checks {
            tracker.track(ids(assignment.as_ref()).iter().map(String::as_str));
        }
        let upstream = Upstream {
            plan,
            assignment,
            table: ArcSwap::from_pointee(L4Table::empty()),
            health: Mutex::new(health),
        };
        upstream.rebuild(&upstream.lock(), stats);
        upstream
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn health(&self) -> Health {
        self.lock().clone()
    }

    /// The table new connections pick from.
    pub fn table(&self) -> Arc<L4Table> {
        self.table.load_full()
    }

    /// Every gateway of the cluster, available or not (what active checks visit).
    pub fn all_gateways(&self) -> Vec<Gateway> {
        self.assignment
            .as_ref()
            .map(|a| gateways_of(a, None))
            .unwrap_or_default()
    }

    /// An active check's result.
    pub fn record_check(&self, id: &str, passed: bool, stats: &Stats) {
        let mut health = self.lock();
        let changed = health.checks.as_mut().is_some_and(|t| t.record(id, passed));
        if changed {
            let verdict = if passed { "passed" } else { "failed" };
            tracing::info!(cluster = %self.plan.name, gateway = id, verdict, "gateway health changed");
            self.rebuild(&health, stats);
        }
    }

    /// A connection to `id` was made (or failed).
    pub fn record_connect(&self, id: &str, connected: bool, now: Duration, stats: &Stats) {
        let mut health = self.lock();
        let Some(detector) = health.outliers.as_mut() else {
            return;
        };
        // A connection made counts as a success, one refused or timed out as a local failure.
        let outcome = if connected {
            Outcome::Status(200)
        } else {
            Outcome::LocalFailure
        };
        if detector.record(id, outcome, now) {
            tracing::info!(cluster = %self.plan.name, gateway = id, "gateway ejected");
            self.rebuild(&health, stats);
        }
    }

    /// Outlier detection's interval work: ejections that ended bring gateways back.
    pub fn tick(&self, now: Duration, stats: &Stats) {
        let mut health = self.lock();
        if health.outliers.as_mut().is_some_and(|d| d.tick_if_due(now)) {
            self.rebuild(&health, stats);
        }
    }

    /// Gateways failed by checks and ejected, by id.
    pub fn unavailable(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        self.lock().unavailable()
    }

    fn rebuild(&self, health: &Health, stats: &Stats) {
        let (failed, ejected) = health.unavailable();
        let excluded: BTreeSet<String> = failed.union(&ejected).cloned().collect();
        let table = match &self.assignment {
            Some(assignment) => L4Table::build(
                assignment,
                &excluded,
                self.plan.panic_threshold,
                self.plan.table_size,
            )
            .unwrap_or_else(|error| {
                tracing::warn!(cluster = %self.plan.name, %error, "no lookup table; the cluster takes no connections");
                L4Table::empty()
            }),
            None => L4Table::empty(),
        };
        let available = table.gateways().len();
        self.table.store(Arc::new(table));
        for (state, count) in [
            ("available", available),
            ("failed", failed.len()),
            ("ejected", ejected.len()),
        ] {
            let label = GatewayState {
                cluster: self.plan.name.clone(),
                state,
            };
            stats
                .gateways
                .get_or_create(&label)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

fn ids(assignment: Option<&Assignment>) -> BTreeSet<String> {
    assignment
        .into_iter()
        .flat_map(|a| &a.localities)
        .flat_map(|l| &l.endpoints)
        .map(|e| e.id())
        .collect()
}
