//! Which endpoints take traffic, and how much each group of them takes, given the endpoints
//! outlier detection ejected — Envoy's priority and locality arithmetic:
//! - a priority's health is 1.4 × its healthy share (the overprovisioning factor), at most
//!   100 %; priorities take traffic in order, each as much as its health, until 100 % is
//!   given; when all together are below 100 %, each takes its share of their sum;
//! - when the cluster's total health (the sum of the priorities', at most 100 %) is below the
//!   panic threshold, every priority uses all its endpoints (panic mode), as if none were
//!   ejected;
//! - with locality weights, a locality's weight is scaled by its own health the same way.

use std::collections::BTreeSet;

use super::{Assignment, Endpoint, Locality};

/// Envoy's overprovisioning factor.
const OVERPROVISIONING: f64 = 1.4;

/// Groups of endpoints with their share of the traffic (parts per million of the cluster's).
pub(super) fn serving_groups(
    assignment: &Assignment,
    locality_weighted: bool,
    ejected: &BTreeSet<String>,
    panic_threshold: f64,
) -> Vec<(u64, Vec<Endpoint>)> {
    let mut priorities: Vec<u32> = assignment.localities.iter().map(|l| l.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let levels: Vec<Vec<&Locality>> = priorities
        .iter()
        .map(|p| {
            assignment
                .localities
                .iter()
                .filter(|l| l.priority == *p && !l.endpoints.is_empty())
                .collect()
        })
        .filter(|level: &Vec<&Locality>| !level.is_empty())
        .collect();
    let is_healthy = |e: &Endpoint| !ejected.contains(&e.id());
    let counts = |localities: &[&Locality]| {
        let total: usize = localities.iter().map(|l| l.endpoints.len()).sum();
        let healthy: usize = localities
            .iter()
            .map(|l| l.endpoints.iter().filter(|e| is_healthy(e)).count())
            .sum();
        (healthy, total)
    };
    let health: Vec<f64> = levels
        .iter()
        .map(|level| scaled_health(counts(level)))
        .collect();
    let sum: f64 = health.iter().sum();
    let panic = sum.min(1.0) * 100.0 < panic_threshold;
    let loads: Vec<f64> = if sum <= 0.0 {
        // Nothing healthy anywhere: in panic mode the first priority takes everything with all
        // its endpoints; without it there is nothing to send to.
        levels
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 && panic { 1.0 } else { 0.0 })
            .collect()
    } else if sum >= 1.0 {
        let mut left = 1.0f64;
        health
            .iter()
            .map(|h| {
                let take = h.min(left);
                left -= take;
                take
            })
            .collect()
    } else {
        health.iter().map(|h| h / sum).collect()
    };
    let mut groups = Vec::new();
    for (level, load) in levels.iter().zip(loads) {
        if load <= 0.0 {
            continue;
        }
        let usable = |l: &Locality| -> Vec<Endpoint> {
            l.endpoints
                .iter()
                .filter(|e| panic || is_healthy(e))
                .cloned()
                .collect()
        };
        let ppm = load * 1_000_000.0;
        if locality_weighted {
            let weights: Vec<f64> = level
                .iter()
                .map(|l| {
                    let health = if panic {
                        1.0
                    } else {
                        let healthy = l.endpoints.iter().filter(|e| is_healthy(e)).count();
                        scaled_health((healthy, l.endpoints.len()))
                    };
                    f64::from(l.weight) * health
                })
                .collect();
            let total_weight: f64 = weights.iter().sum();
            if total_weight <= 0.0 {
                continue;
            }
            for (locality, weight) in level.iter().zip(weights) {
                let share = (ppm * weight / total_weight).round() as u64;
                let endpoints = usable(locality);
                if share > 0 && !endpoints.is_empty() {
                    groups.push((share, endpoints));
                }
            }
        } else {
            let endpoints: Vec<Endpoint> = level.iter().flat_map(|l| usable(l)).collect();
            if !endpoints.is_empty() {
                groups.push((ppm.round() as u64, endpoints));
            }
        }
    }
    groups
}

/// 1.4 × the healthy share, at most 1.
fn scaled_health((healthy, total): (usize, usize)) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (OVERPROVISIONING * healthy as f64 / total as f64).min(1.0)
}
