//! Clusters and endpoint choice: a `Cluster` compiled into how to reach its endpoints and how
//! to choose among them, and a `ClusterLoadAssignment` into groups of endpoints with their
//! share of the traffic — by priority and locality, less what outlier detection ejected
//! ([`health`]): with every endpoint healthy, priority 0 takes everything when it has
//! endpoints, else the next one, as in Envoy.
//! Ring-hash and Maglev clusters choose by the request's hash (the route's hash policies)
//! over one table of the serving priority's endpoints, locality weights folded into theirs.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::breakers::Limits;
use super::maglev::{self, MaglevTable};
use super::outlier::OutlierPolicy;
use super::ring_hash::Ring;

/// How a cluster's endpoints are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Random,
    /// Power of two choices: of two random endpoints, the one with fewer active requests.
    LeastRequest,
    /// Consistent hashing on a ring (Envoy's defaults: 1024 ..= 8M entries).
    RingHash {
        minimum: u64,
        maximum: u64,
    },
    /// Consistent hashing with a Maglev table of this (prime) size.
    Maglev {
        table_size: u64,
    },
}

/// Where a cluster's endpoints come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Discovery {
    /// From EDS, under the cluster's name.
    Eds,
    /// Listed in the cluster itself.
    Static(Assignment),
    /// Host names in the cluster, resolved (IPv4 preferred) by the proxy.
    Dns(Assignment),
}

/// A compiled cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPlan {
    pub name: String,
    pub policy: Policy,
    pub connect_timeout: Duration,
    /// Upstream HTTP/2 (prior knowledge): gRPC and h2c backends.
    pub http2: bool,
    /// Requests (HTTP/2: streams) an upstream connection carries before it is closed.
    pub max_requests_per_connection: Option<u32>,
    pub locality_weighted: bool,
    pub discovery: Discovery,
    /// Below this healthy percentage a priority uses all its endpoints (Envoy's default 50).
    pub panic_threshold: f64,
    pub outlier: Option<OutlierPolicy>,
    pub limits: Limits,
}

/// One endpoint: a host (an address, or a name for DNS clusters) and port, with its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

impl Endpoint {
    /// How outlier detection and hash tables know it: `host:port`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The endpoints of one locality at one priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locality {
    pub zone: String,
    pub weight: u32,
    pub priority: u32,
    pub endpoints: Vec<Endpoint>,
}

/// A compiled load assignment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub localities: Vec<Locality>,
}

/// Chooses endpoints of one cluster. Shared by the requests of a worker; counters are atomics.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    /// (locality weight, endpoints with their weights) of the serving priority; one group
    /// unless localities are weighted.
    groups: Vec<(u64, Vec<Endpoint>)>,
    active: Vec<Vec<AtomicU32>>,
    turn: AtomicU64,
    /// Ring-hash and Maglev clusters: the table over the one group's endpoints.
    table: Option<HashTable>,
}

#[derive(Debug)]
enum HashTable {
    Ring(Ring),
    Maglev(MaglevTable),
}

impl HashTable {
    fn build(policy: Policy, endpoints: &[Endpoint]) -> Option<HashTable> {
        let ids: Vec<String> = endpoints.iter().map(Endpoint::id).collect();
        let backends: Vec<maglev::Backend<'_>> = ids
            .iter()
            .zip(endpoints)
            .map(|(id, e)| maglev::Backend {
                id,
                weight: e.weight,
            })
            .collect();
        // Sizes were checked when the cluster compiled; a table too small for this many
        // endpoints leaves the cluster without endpoints rather than half-balanced.
        match policy {
            Policy::RingHash { minimum, maximum } => Ring::build(&backends, minimum, maximum)
                .ok()
                .map(HashTable::Ring),
            Policy::Maglev { table_size } => MaglevTable::build(&backends, table_size)
                .ok()
                .map(HashTable::Maglev),
            _ => None,
        }
    }

    fn get(&self, hash: u64) -> Option<usize> {
        match self {
            HashTable::Ring(ring) => ring.get(hash),
            HashTable::Maglev(table) => table.get(hash),
        }
    }
}

/// Which endpoint: (group, index in the group).
pub type Pick = (usize, usize);

impl Balancer {
    /// A balancer over every endpoint of `assignment`.
    pub fn new(plan: &ClusterPlan, assignment: &Assignment) -> Balancer {
        Balancer::with_ejected(plan, assignment, &BTreeSet::new())
    }

    /// A balancer over `assignment` but the `ejected` endpoints (by id), with Envoy's priority
    /// spill-over and panic mode ([`health`]).
    pub fn with_ejected(
        plan: &ClusterPlan,
        assignment: &Assignment,
        ejected: &BTreeSet<String>,
    ) -> Balancer {
        let groups = health::serving_groups(
            assignment,
            plan.locality_weighted,
            ejected,
            plan.panic_threshold,
        );
        let hashing = matches!(plan.policy, Policy::RingHash { .. } | Policy::Maglev { .. });
        let groups: Vec<(u64, Vec<Endpoint>)> = if hashing {
            // One table over every serving group; a group's share scales its endpoints'
            // weights (to at most 1000 times theirs).
            let all: Vec<Endpoint> = groups
                .iter()
                .flat_map(|(share, endpoints)| {
                    let scale = u32::try_from((share / 1000).max(1)).unwrap_or(1000);
                    endpoints.iter().map(move |e| Endpoint {
                        weight: e.weight.saturating_mul(scale),
                        ..e.clone()
                    })
                })
                .collect();
            if all.is_empty() {
                Vec::new()
            } else {
                vec![(1, all)]
            }
        } else {
            groups
        };
        let active = groups
            .iter()
            .map(|(_, e)| e.iter().map(|_| AtomicU32::new(0)).collect())
            .collect();
        let table = groups
            .first()
            .and_then(|(_, endpoints)| HashTable::build(plan.policy, endpoints));
        let groups = if hashing && table.is_none() {
            Vec::new()
        } else {
            groups
        };
        Balancer {
            policy: plan.policy,
            groups,
            active,
            turn: AtomicU64::new(0),
            table,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// An endpoint for the next request; `draws` are uniformly random numbers, `hash` the
    /// request's hash (its route's hash policies) for ring-hash and Maglev clusters, which
    /// without one choose at random as Envoy's do.
    pub fn pick(&self, draws: [u64; 3], hash: Option<u64>) -> Option<Pick> {
        if let Some(table) = &self.table {
            return table.get(hash.unwrap_or(draws[0])).map(|index| (0, index));
        }
        let total: u64 = self.groups.iter().map(|(w, _)| *w).sum();
        if total == 0 {
            return None;
        }
        let mut point = draws[0] % total;
        let group = self
            .groups
            .iter()
            .position(|(w, _)| {
                let hit = point < *w;
                point = point.saturating_sub(*w);
                hit
            })
            .unwrap_or(0);
        let endpoints = &self.groups[group].1;
        let index = match self.policy {
            Policy::RoundRobin => {
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                weighted(endpoints, turn)
            }
            // Hashing clusters answer from their table above.
            Policy::Random | Policy::RingHash { .. } | Policy::Maglev { .. } => {
                weighted(endpoints, draws[1])
            }
            Policy::LeastRequest => {
                let a = weighted(endpoints, draws[1]);
                let b = weighted(endpoints, draws[2]);
                let load = |i: usize| self.active[group][i].load(Ordering::Relaxed);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        };
        Some((group, index))
    }

    pub fn endpoint(&self, (group, index): Pick) -> &Endpoint {
        &self.groups[group].1[index]
    }

    /// Counts a request on `pick` until the returned guard is dropped.
    pub fn start(&self, (group, index): Pick) -> ActiveRequest<'_> {
        let counter = &self.active[group][index];
        counter.fetch_add(1, Ordering::Relaxed);
        ActiveRequest { counter }
    }
}

/// A request in flight on one endpoint (for least-request choice).
pub struct ActiveRequest<'a> {
    counter: &'a AtomicU32,
}

impl Drop for ActiveRequest<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoint at `point` on the line of endpoint weights.
fn weighted(endpoints: &[Endpoint], point: u64) -> usize {
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    let mut point = point % total.max(1);
    for (i, e) in endpoints.iter().enumerate() {
        let weight = u64::from(e.weight);
        if point < weight {
            return i;
        }
        point -= weight;
    }
    0
}

mod compile;
mod health;
mod http_options;
#[cfg(test)]
mod tests;
