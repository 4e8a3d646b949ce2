//! Clusters and endpoint choice: a `Cluster` compiled into how to reach its endpoints and how
//! to choose among them, and a `ClusterLoadAssignment` into the endpoints of the priority that
//! takes the traffic. With no health checking or outlier detection every endpoint is healthy,
//! so, as in Envoy, priority 0 takes everything when it has endpoints, else the next one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use xds_api::pb::envoy::config::cluster::v3::cluster::{
    common_lb_config::LocalityConfigSpecifier, ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::address::Address as AddressKind;
use xds_api::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use xds_api::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::{refuse_leftovers, CompileError};

/// How a cluster's endpoints are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Random,
    /// Power of two choices: of two random endpoints, the one with fewer active requests.
    LeastRequest,
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
    pub locality_weighted: bool,
    pub discovery: Discovery,
}

/// One endpoint: a host (an address, or a name for DNS clusters) and port, with its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub weight: u32,
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

impl ClusterPlan {
    pub fn compile(cluster: &Cluster) -> Result<ClusterPlan, CompileError> {
        let resource = format!("Cluster {}", cluster.name);
        let mut rest = cluster.clone();
        let name = std::mem::take(&mut rest.name);
        let policy =
            match LbPolicy::try_from(rest.lb_policy) {
                Ok(LbPolicy::RoundRobin) => Policy::RoundRobin,
                Ok(LbPolicy::Random) => Policy::Random,
                Ok(LbPolicy::LeastRequest) => Policy::LeastRequest,
                _ => return Err(CompileError::new(
                    &resource,
                    "lb_policy",
                    "only ROUND_ROBIN, RANDOM and LEAST_REQUEST are supported by meridian proxy",
                )),
            };
        rest.lb_policy = 0;
        let connect_timeout = rest
            .connect_timeout
            .take()
            .map(|d| {
                Duration::new(
                    u64::try_from(d.seconds).unwrap_or(0),
                    u32::try_from(d.nanos).unwrap_or(0),
                )
            })
            .unwrap_or(Duration::from_secs(5));
        // What translation sets for HTTP/2 upstreams (the typed extension options are issue 23).
        #[allow(deprecated)]
        let http2 = rest.http2_protocol_options.take().is_some();
        let mut locality_weighted = false;
        if let Some(mut common) = rest.common_lb_config.take() {
            // Panic mode needs unhealthy hosts; without health checking there are none.
            common.healthy_panic_threshold = None;
            locality_weighted = matches!(
                common.locality_config_specifier.take(),
                Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
            );
            refuse_leftovers(&common, &resource, "common_lb_config")?;
        }
        let kind = match rest.cluster_discovery_type.take() {
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).ok(),
            None => Some(DiscoveryType::Static),
            Some(_) => None,
        };
        let assignment = rest
            .load_assignment
            .take()
            .map(|cla| Assignment::compile(&cla, &resource))
            .transpose()?
            .unwrap_or_default();
        let discovery =
            match kind {
                Some(DiscoveryType::Eds) => {
                    rest.eds_cluster_config = None;
                    Discovery::Eds
                }
                Some(DiscoveryType::Static) => Discovery::Static(assignment),
                Some(DiscoveryType::StrictDns | DiscoveryType::LogicalDns) => {
                    // Resolution happens at the proxy's edge; the family preference is IPv4 first.
                    rest.dns_lookup_family = 0;
                    Discovery::Dns(assignment)
                }
                _ => return Err(CompileError::new(
                    &resource,
                    "type",
                    "only EDS, STATIC, STRICT_DNS and LOGICAL_DNS are supported by meridian proxy",
                )),
            };
        refuse_leftovers(&rest, &resource, "")?;
        Ok(ClusterPlan {
            name,
            policy,
            connect_timeout,
            http2,
            locality_weighted,
            discovery,
        })
    }
}

impl Assignment {
    pub fn compile(
        cla: &ClusterLoadAssignment,
        resource: &str,
    ) -> Result<Assignment, CompileError> {
        let mut localities = Vec::new();
        for (i, group) in cla.endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}]");
            let mut endpoints = Vec::new();
            for (j, lb) in group.lb_endpoints.iter().enumerate() {
                let field = format!("{field}.lb_endpoints[{j}]");
                let Some(HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                    return Err(CompileError::new(
                        resource,
                        field,
                        "only endpoints are supported",
                    ));
                };
                let socket = match endpoint.address.as_ref().and_then(|a| a.address.as_ref()) {
                    Some(AddressKind::SocketAddress(socket)) => socket,
                    _ => {
                        return Err(CompileError::new(
                            resource,
                            format!("{field}.endpoint.address"),
                            "only socket addresses are supported",
                        ))
                    }
                };
                let port = match socket.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok().filter(|p| *p != 0),
                    _ => None,
                }
                .ok_or_else(|| {
                    CompileError::new(
                        resource,
                        format!("{field}.endpoint.address"),
                        "no valid port",
                    )
                })?;
                let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
                if weight > 0 {
                    endpoints.push(Endpoint {
                        host: socket.address.clone(),
                        port,
                        weight,
                    });
                }
            }
            localities.push(Locality {
                zone: group
                    .locality
                    .as_ref()
                    .map(|l| l.zone.clone())
                    .unwrap_or_default(),
                weight: group.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                priority: group.priority,
                endpoints,
            });
        }
        Ok(Assignment { localities })
    }

    /// The localities of the priority that takes the traffic: the lowest with endpoints.
    pub fn serving(&self) -> Vec<&Locality> {
        let Some(priority) = self
            .localities
            .iter()
            .filter(|l| !l.endpoints.is_empty())
            .map(|l| l.priority)
            .min()
        else {
            return Vec::new();
        };
        self.localities
            .iter()
            .filter(|l| l.priority == priority && !l.endpoints.is_empty())
            .collect()
    }
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
}

/// Which endpoint: (group, index in the group).
pub type Pick = (usize, usize);

impl Balancer {
    pub fn new(plan: &ClusterPlan, assignment: &Assignment) -> Balancer {
        let serving = assignment.serving();
        let groups: Vec<(u64, Vec<Endpoint>)> = if plan.locality_weighted {
            serving
                .iter()
                .filter(|l| l.weight > 0)
                .map(|l| (u64::from(l.weight), l.endpoints.clone()))
                .collect()
        } else {
            let all: Vec<Endpoint> = serving.iter().flat_map(|l| l.endpoints.clone()).collect();
            if all.is_empty() {
                Vec::new()
            } else {
                vec![(1, all)]
            }
        };
        let active = groups
            .iter()
            .map(|(_, e)| e.iter().map(|_| AtomicU32::new(0)).collect())
            .collect();
        Balancer {
            policy: plan.policy,
            groups,
            active,
            turn: AtomicU64::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// An endpoint for the next request; `draws` are uniformly random numbers.
    pub fn pick(&self, draws: [u64; 3]) -> Option<Pick> {
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
            Policy::Random => weighted(endpoints, draws[1]),
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

#[cfg(test)]
mod tests;
