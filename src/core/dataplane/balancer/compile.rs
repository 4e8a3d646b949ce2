//! Compiling a `Cluster` into a [`ClusterPlan`] and a `ClusterLoadAssignment` into an
//! [`Assignment`]: each honoured field is taken out of the message, and whatever is left is
//! refused by name.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    common_lb_config::LocalityConfigSpecifier, ClusterDiscoveryType, DiscoveryType, LbConfig,
    LbPolicy, MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::{Assignment, ClusterPlan, Discovery, Endpoint, Locality, Policy};
use crate::core::dataplane::breakers::Limits;
use crate::core::dataplane::maglev;
use crate::core::dataplane::outlier::OutlierPolicy;
use crate::core::dataplane::ring_hash::{self, Ring};
use crate::core::dataplane::{refuse_leftovers, CompileError};

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
                Ok(LbPolicy::RingHash) => ring_hash_policy(rest.lb_config.take(), &resource)?,
                Ok(LbPolicy::Maglev) => maglev_policy(rest.lb_config.take(), &resource)?,
                _ => return Err(CompileError::new(
                    &resource,
                    "lb_policy",
                    "only ROUND_ROBIN, RANDOM, LEAST_REQUEST, RING_HASH and MAGLEV are supported \
                     by meridian proxy",
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
        let super::http_options::UpstreamHttp {
            http2,
            max_requests_per_connection,
        } = super::http_options::take(&mut rest, &resource)?;
        let mut locality_weighted = false;
        let mut panic_threshold = 50.0;
        if let Some(mut common) = rest.common_lb_config.take() {
            if let Some(threshold) = common.healthy_panic_threshold.take() {
                panic_threshold = threshold.value.clamp(0.0, 100.0);
            }
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
        let outlier = rest
            .outlier_detection
            .take()
            .map(|od| OutlierPolicy::compile(&od, &resource))
            .transpose()?;
        let limits = rest
            .circuit_breakers
            .take()
            .map(|breakers| Limits::compile(&breakers, &resource))
            .transpose()?
            .unwrap_or_default();
        refuse_leftovers(&rest, &resource, "")?;
        Ok(ClusterPlan {
            name,
            policy,
            connect_timeout,
            http2,
            max_requests_per_connection,
            locality_weighted,
            discovery,
            panic_threshold,
            outlier,
            limits,
        })
    }
}

fn ring_hash_policy(config: Option<LbConfig>, resource: &str) -> Result<Policy, CompileError> {
    let mut config = match config {
        None => RingHashLbConfig::default(),
        Some(LbConfig::RingHashLbConfig(config)) => config,
        Some(_) => {
            return Err(CompileError::new(
                resource,
                "lb_config",
                "a RING_HASH cluster takes ring_hash_lb_config only",
            ))
        }
    };
    if config.hash_function != 0 {
        return Err(CompileError::new(
            resource,
            "ring_hash_lb_config.hash_function",
            "only XX_HASH is supported by meridian proxy",
        ));
    }
    let minimum = config
        .minimum_ring_size
        .take()
        .map_or(ring_hash::DEFAULT_MINIMUM_SIZE, |v| v.value);
    let maximum = config
        .maximum_ring_size
        .take()
        .map_or(ring_hash::DEFAULT_MAXIMUM_SIZE, |v| v.value);
    if let Err(error) = Ring::build(&[], minimum, maximum) {
        return Err(CompileError::new(
            resource,
            "ring_hash_lb_config",
            error.to_string(),
        ));
    }
    refuse_leftovers(&config, resource, "ring_hash_lb_config")?;
    Ok(Policy::RingHash { minimum, maximum })
}

fn maglev_policy(config: Option<LbConfig>, resource: &str) -> Result<Policy, CompileError> {
    let mut config = match config {
        None => MaglevLbConfig::default(),
        Some(LbConfig::MaglevLbConfig(config)) => config,
        Some(_) => {
            return Err(CompileError::new(
                resource,
                "lb_config",
                "a MAGLEV cluster takes maglev_lb_config only",
            ))
        }
    };
    let table_size = config
        .table_size
        .take()
        .map_or(maglev::DEFAULT_TABLE_SIZE, |v| v.value);
    if let Err(error) = maglev::check_size(table_size, 0) {
        return Err(CompileError::new(
            resource,
            "maglev_lb_config.table_size",
            error.to_string(),
        ));
    }
    refuse_leftovers(&config, resource, "maglev_lb_config")?;
    Ok(Policy::Maglev { table_size })
}

impl Assignment {
    /// An EDS resource: its cluster's name and its endpoints.
    pub fn compile_named(cla: ClusterLoadAssignment) -> Result<(String, Assignment), CompileError> {
        let resource = format!("ClusterLoadAssignment {}", cla.cluster_name);
        let assignment = Assignment::compile(&cla, &resource)?;
        Ok((cla.cluster_name, assignment))
    }

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
}
