//! A cluster's lookup table for the L4 data path: the gateways that may take new connections
//! (not failed by their checks, not ejected) and the Maglev table over them, built from ids and
//! weights only, so every node with the same view picks the same gateway for a 5-tuple.
//!
//! Priorities: the lowest priority with an available gateway serves (Meridian sends one). When
//! the available share falls below the panic threshold, every gateway of that priority takes
//! connections (Meridian sets the threshold to 0: never).

use ::core::net::{IpAddr, SocketAddr};
use std::collections::BTreeSet;

use super::super::balancer::Assignment;
use super::super::maglev::{Backend, MaglevError, MaglevTable};

/// Attempts after the first walk the table this far at most before falling back to the
/// first gateway not tried.
const WALK_LIMIT: u64 = 256;

/// A gateway as the data path connects to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// `host:port`, as health checks and outlier detection know it.
    pub id: String,
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Table {
    gateways: Vec<Gateway>,
    table: MaglevTable,
}

impl L4Table {
    /// The table for `assignment` without the gateways in `excluded` (failed or ejected).
    /// Endpoints whose host is not an IP address are left out (L4 endpoints are pod IPs).
    pub fn build(
        assignment: &Assignment,
        excluded: &BTreeSet<String>,
        panic_threshold: f64,
        size: u64,
    ) -> Result<L4Table, MaglevError> {
        let mut priorities: Vec<u32> = assignment.localities.iter().map(|l| l.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let mut gateways = Vec::new();
        for priority in priorities {
            let all = gateways_of(assignment, Some(priority));
            let available: Vec<Gateway> = all
                .iter()
                .filter(|g| !excluded.contains(&g.id))
                .cloned()
                .collect();
            let share = if all.is_empty() {
                0.0
            } else {
                available.len() as f64 * 100.0 / all.len() as f64
            };
            if !all.is_empty() && share < panic_threshold {
                gateways = all;
                break;
            }
            if !available.is_empty() {
                gateways = available;
                break;
            }
        }
        let backends: Vec<Backend<'_>> = gateways
            .iter()
            .map(|g| Backend {
                id: &g.id,
                weight: g.weight,
            })
            .collect();
        let table = MaglevTable::build(&backends, size)?;
        Ok(L4Table { gateways, table })
    }

    /// A table with no gateway: it picks nothing.
    pub fn empty() -> L4Table {
        L4Table::default()
    }

    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty()
    }

    pub fn gateways(&self) -> &[Gateway] {
        &self.gateways
    }

    /// The Maglev table over [`L4Table::gateways`].
    pub fn maglev(&self) -> &MaglevTable {
        &self.table
    }

    /// The gateway for a connection whose 5-tuple hashes to `hash`, not one of `tried` (ids
    /// of gateways that refused it already): the table's choice first, then the entries after
    /// it, so every node retries alike.
    pub fn pick(&self, hash: u64, tried: &[String]) -> Option<&Gateway> {
        let fresh = |g: &&Gateway| !tried.contains(&g.id);
        for step in 0..WALK_LIMIT {
            let index = self.table.get(hash.wrapping_add(step))?;
            if let Some(gateway) = self.gateways.get(index).filter(fresh) {
                return Some(gateway);
            }
        }
        self.gateways.iter().find(fresh)
    }
}

/// The gateways of `assignment` (of one priority, or all), whatever their health.
pub fn gateways_of(assignment: &Assignment, priority: Option<u32>) -> Vec<Gateway> {
    assignment
        .localities
        .iter()
        .filter(|l| priority.is_none_or(|p| l.priority == p))
        .flat_map(|l| &l.endpoints)
        .filter_map(|e| {
            let ip = e.host.parse::<IpAddr>().ok()?;
            Some(Gateway {
                id: e.id(),
                address: SocketAddr::new(ip, e.port),
                weight: e.weight,
            })
        })
        .collect()
}
