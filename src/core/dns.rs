//! DNS record sets from NameServices: the names Meridian answers (or publishes) and the
//! addresses behind them.
//!
//! A NameService targets an AccessPoint (its VIPs in every cluster it has one) or static
//! addresses. The oldest NameService of a name owns it; later ones are reported, not served.
//! The addresses come grouped by zone, so the embedded server can choose among them per
//! query ([`answer`]); an external server is given all of them.

use ::core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::hosts::SERVICE_NAME_LABEL;
use super::model::{ready_addresses, Model, ObjectKey};
use super::observed::GatewayAck;
use crate::api::name_service::{DnsPolicy, Rfc2136Provider};
use crate::api::NameService;

pub mod answer;
pub mod status;

/// The addresses of one name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameRecords {
    /// The NameService that owns the name.
    pub owner: ObjectKey,
    pub ttl: u32,
    /// Every address answered, over all zones (what an external server is given).
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    /// The same addresses by zone, most preferred first.
    pub zones: Vec<ZoneAddresses>,
    /// Client networks and the zone they belong to (`spec.sourceZones`).
    pub sources: Vec<(IpNet, String)>,
}

/// One zone's addresses of a name, and how it is preferred.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneAddresses {
    /// A MemberCluster zone; empty for static addresses.
    pub zone: String,
    pub priority: u32,
    pub weight: u32,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// For each AccessPoint, the clusters where a connected gateway proxy serves it (has
/// acknowledged a configuration holding it).
pub type ServingClusters = BTreeMap<ObjectKey, BTreeSet<String>>;

/// Which clusters serve what, from every proxy's acknowledgements.
pub fn serving_clusters(acks: &[GatewayAck]) -> ServingClusters {
    let mut out = ServingClusters::new();
    // Proxies that acknowledged the same snapshot in one cluster share their set; count it once.
    let mut counted = std::collections::HashSet::new();
    for ack in acks {
        if !counted.insert((ack.cluster.as_str(), std::sync::Arc::as_ptr(&ack.acked))) {
            continue;
        }
        for access_point in ack.acked.keys() {
            out.entry(access_point.clone())
                .or_default()
                .insert(ack.cluster.clone());
        }
    }
    out
}

/// A NameService that cannot be served as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnsProblem {
    pub name_service: ObjectKey,
    /// A condition reason: `NameInUse`, `TargetNotFound` or `Invalid`.
    pub reason: &'static str,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for DnsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NameService {}: {}: {}",
            self.name_service, self.path, self.message
        )
    }
}

/// Every served name (lowercase, no trailing dot), and the problems.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsRecords {
    pub names: BTreeMap<String, NameRecords>,
    pub problems: Vec<DnsProblem>,
}

/// Normalizes a DNS name: lowercase, without the trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` is `zone` or below it (both normalized).
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The record sets the embedded server answers: NameServices without a provider, in `zones`.
pub fn records(model: &Model, serving: &ServingClusters, zones: &[String]) -> DnsRecords {
    let embedded = model
        .name_services
        .iter()
        .filter(|(_, ns)| provider_of(ns).is_none());
    collect(model, serving, embedded, zones)
}

/// The RFC 2136 provider of a NameService, if it names one.
pub fn provider_of(service: &NameService) -> Option<&Rfc2136Provider> {
    service.spec.provider.as_ref()?.rfc2136.as_ref()
}

/// The record sets each external server should hold, by provider (server, zone, key).
pub fn rfc2136_records(
    model: &Model,
    serving: &ServingClusters,
) -> BTreeMap<Rfc2136Provider, DnsRecords> {
    let mut providers: BTreeMap<Rfc2136Provider, Vec<(&ObjectKey, &NameService)>> = BTreeMap::new();
    for (key, service) in &model.name_services {
        if let Some(provider) = provider_of(service) {
            providers
                .entry(provider.clone())
                .or_default()
                .push((key, service));
        }
    }
    providers
        .into_iter()
        .map(|(provider, services)| {
            let zones = [provider.zone.clone()];
            let records = collect(model, serving, services.into_iter(), &zones);
            (provider, records)
        })
        .collect()
}

fn collect<'m>(
    model: &Model,
    serving: &ServingClusters,
    services: impl Iterator<Item = (&'m ObjectKey, &'m NameService)>,
    zones: &[String],
) -> DnsRecords {
    let zones: Vec<String> = zones.iter().map(|z| normalize(z)).collect();
    let mut out = DnsRecords::default();
    let mut services: Vec<_> = services.collect();
    services.sort_by_key(|(key, ns)| (ns.metadata.creation_timestamp.clone(), *key));
    for (key, service) in services {
        let mut problem = |reason: &'static str, path: &str, message: String| {
            out.problems.push(DnsProblem {
                name_service: key.clone(),
                reason,
                path: path.to_owned(),
                message,
            })
        };
        let spec = &service.spec;
        let name = normalize(&spec.fqdn);
        if !valid_name(&name) {
            problem(
                "Invalid",
                "spec.fqdn",
                format!("{:?} is not a DNS name", spec.fqdn),
            );
            continue;
        }
        if !zones.iter().any(|z| in_zone(&name, z)) {
            problem(
                "Invalid",
                "spec.fqdn",
                format!(
                    "{name} is in no zone Meridian serves ({})",
                    if zones.is_empty() {
                        "none configured: --dns-zone".to_owned()
                    } else {
                        zones.join(", ")
                    }
                ),
            );
            continue;
        }
        if let Some(existing) = out.names.get(&name) {
            let owner = existing.owner.clone();
            problem(
                "NameInUse",
                "spec.fqdn",
                format!("{name} is already served by NameService {owner}"),
            );
            continue;
        }
        let target = &spec.target;
        let by_zone: Vec<(String, IpAddr)> =
            match (&target.access_point, target.addresses.is_empty()) {
                (Some(ap), true) => {
                    let ap = match ap.split_once('/') {
                        Some((ns, name)) => ObjectKey::new(ns, name),
                        None => ObjectKey::new(key.namespace.clone(), ap.clone()),
                    };
                    if !model.access_points.contains_key(&ap) {
                        problem(
                            "TargetNotFound",
                            "spec.target.accessPoint",
                            format!("AccessPoint {ap} does not exist"),
                        );
                    }
                    answered_vips(model, serving, &ap, spec.policy)
                }
                (None, false) => {
                    let mut parsed = Vec::new();
                    for (i, text) in target.addresses.iter().enumerate() {
                        match text.parse::<IpAddr>() {
                            Ok(address) => parsed.push((String::new(), address)),
                            Err(_) => problem(
                                "Invalid",
                                &format!("spec.target.addresses[{i}]"),
                                format!("{text:?} is not an IP address"),
                            ),
                        }
                    }
                    parsed
                }
                _ => {
                    problem(
                        "Invalid",
                        "spec.target",
                        "exactly one of accessPoint and addresses is required".to_owned(),
                    );
                    continue;
                }
            };
        let mut sources = Vec::new();
        for (i, source) in spec.source_zones.iter().enumerate() {
            for (j, cidr) in source.cidrs.iter().enumerate() {
                match cidr.parse::<IpNet>() {
                    Ok(net) => sources.push((net.trunc(), source.zone.clone())),
                    Err(_) => problem(
                        "Invalid",
                        &format!("spec.sourceZones[{i}].cidrs[{j}]"),
                        format!("{cidr:?} is not a CIDR"),
                    ),
                }
            }
        }
        // Longest prefix first, so the most specific network decides.
        sources.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let zones = zone_groups(service, by_zone);
        let mut records = NameRecords {
            owner: key.clone(),
            ttl: spec.ttl,
            sources,
            ..Default::default()
        };
        for zone in &zones {
            records.v4.extend(&zone.v4);
            records.v6.extend(&zone.v6);
        }
        records.v4.sort();
        records.v4.dedup();
        records.v6.sort();
        records.v6.dedup();
        records.zones = zones;
        out.names.insert(name, records);
    }
    out
}

/// The VIPs of `access_point` a name answers, with the zone of each cluster. `Failover` keeps
/// the healthy clusters, or all of them when none is.
fn answered_vips(
    model: &Model,
    serving: &ServingClusters,
    access_point: &ObjectKey,
    policy: DnsPolicy,
) -> Vec<(String, IpAddr)> {
    let zone_of = |cluster: &str| {
        model
            .member_clusters
            .values()
            .find(|mc| mc.metadata.name.as_deref() == Some(cluster))
            .map(|mc| mc.spec.zone.clone())
            .unwrap_or_default()
    };
    let all: Vec<(&String, IpAddr)> = model.vips.all_of(access_point).collect();
    let healthy: Vec<(&String, IpAddr)> = match policy {
        DnsPolicy::All => Vec::new(),
        DnsPolicy::Failover => {
            let proxies = serving.get(access_point);
            all.iter()
                .filter(|(cluster, _)| {
                    healthy_in(model, access_point, cluster)
                        && proxies.is_none_or(|clusters| clusters.contains(*cluster))
                })
                .copied()
                .collect()
        }
    };
    let chosen = if healthy.is_empty() { all } else { healthy };
    chosen
        .into_iter()
        .map(|(cluster, address)| (zone_of(cluster), address))
        .collect()
}

/// Groups addresses by zone with the NameService's preferences, most preferred first. Zones
/// not listed in `spec.zones` come after every listed one (all alike when none is listed).
fn zone_groups(service: &NameService, addresses: Vec<(String, IpAddr)>) -> Vec<ZoneAddresses> {
    let listed = &service.spec.zones;
    let mut groups: BTreeMap<String, ZoneAddresses> = BTreeMap::new();
    for (zone, address) in addresses {
        let group = groups.entry(zone.clone()).or_insert_with(|| {
            let (priority, weight) = match listed.iter().find(|z| z.zone == zone) {
                Some(preference) => (preference.priority, preference.weight),
                None if listed.is_empty() => (0, 1),
                None => (u32::MAX, 1),
            };
            ZoneAddresses {
                zone,
                priority,
                weight,
                ..Default::default()
            }
        });
        match address {
            IpAddr::V4(v4) => group.v4.push(v4),
            IpAddr::V6(v6) => group.v6.push(v6),
        }
    }
    let mut groups: Vec<ZoneAddresses> = groups.into_values().collect();
    for group in &mut groups {
        group.v4.sort();
        group.v4.dedup();
        group.v6.sort();
        group.v6.dedup();
    }
    groups.sort_by(|a, b| {
        (a.priority, std::cmp::Reverse(a.weight)).cmp(&(b.priority, std::cmp::Reverse(b.weight)))
    });
    groups
}

/// Whether `access_point`'s Service has a ready endpoint read from `cluster`.
fn healthy_in(model: &Model, access_point: &ObjectKey, cluster: &str) -> bool {
    let Some((namespace, name)) = model.template_service(access_point) else {
        return false;
    };
    let slices = model.endpoint_slices.values().filter(|slice| {
        slice.metadata.namespace.as_deref() == Some(namespace.as_str())
            && slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                == Some(&name)
    });
    ready_addresses(slices, cluster) > 0
}

#[cfg(test)]
mod tests;
