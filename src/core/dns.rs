//! DNS record sets from NameServices: the names Meridian answers (or publishes) and the
//! addresses behind them.
//!
//! A NameService targets an AccessPoint (its VIPs in every cluster it has one) or static
//! addresses. The oldest NameService of a name owns it; later ones are reported, not served.

use ::core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::BTreeMap;

use super::model::{ready_addresses, Model, ObjectKey};
use super::translate::SERVICE_NAME_LABEL;
use crate::api::name_service::{DnsPolicy, Rfc2136Provider};
use crate::api::NameService;

/// The addresses of one name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameRecords {
    /// The NameService that owns the name.
    pub owner: ObjectKey,
    pub ttl: u32,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// A NameService that cannot be served as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnsProblem {
    pub name_service: ObjectKey,
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
pub fn records(model: &Model, zones: &[String]) -> DnsRecords {
    let embedded = model
        .name_services
        .iter()
        .filter(|(_, ns)| provider_of(ns).is_none());
    collect(model, embedded, zones)
}

/// The RFC 2136 provider of a NameService, if it names one.
pub fn provider_of(service: &NameService) -> Option<&Rfc2136Provider> {
    service.spec.provider.as_ref()?.rfc2136.as_ref()
}

/// The record sets each external server should hold, by provider (server, zone, key).
pub fn rfc2136_records(model: &Model) -> BTreeMap<Rfc2136Provider, DnsRecords> {
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
            let records = collect(model, services.into_iter(), &zones);
            (provider, records)
        })
        .collect()
}

fn collect<'m>(
    model: &Model,
    services: impl Iterator<Item = (&'m ObjectKey, &'m NameService)>,
    zones: &[String],
) -> DnsRecords {
    let zones: Vec<String> = zones.iter().map(|z| normalize(z)).collect();
    let mut out = DnsRecords::default();
    let mut services: Vec<_> = services.collect();
    services.sort_by_key(|(key, ns)| (ns.metadata.creation_timestamp.clone(), *key));
    for (key, service) in services {
        let mut problem = |path: &str, message: String| {
            out.problems.push(DnsProblem {
                name_service: key.clone(),
                path: path.to_owned(),
                message,
            })
        };
        let spec = &service.spec;
        let name = normalize(&spec.fqdn);
        if !valid_name(&name) {
            problem("spec.fqdn", format!("{:?} is not a DNS name", spec.fqdn));
            continue;
        }
        if !zones.iter().any(|z| in_zone(&name, z)) {
            problem(
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
                "spec.fqdn",
                format!("{name} is already served by NameService {owner}"),
            );
            continue;
        }
        let target = &spec.target;
        let addresses: Vec<IpAddr> = match (&target.access_point, target.addresses.is_empty()) {
            (Some(ap), true) => {
                let ap = match ap.split_once('/') {
                    Some((ns, name)) => ObjectKey::new(ns, name),
                    None => ObjectKey::new(key.namespace.clone(), ap.clone()),
                };
                if !model.access_points.contains_key(&ap) {
                    problem(
                        "spec.target.accessPoint",
                        format!("AccessPoint {ap} does not exist"),
                    );
                }
                let all: Vec<(&String, IpAddr)> = model.vips.all_of(&ap).collect();
                let healthy: Vec<IpAddr> = match spec.policy {
                    DnsPolicy::All => Vec::new(),
                    DnsPolicy::Failover => all
                        .iter()
                        .filter(|(cluster, _)| healthy_in(model, &ap, cluster))
                        .map(|(_, address)| *address)
                        .collect(),
                };
                if healthy.is_empty() {
                    all.into_iter().map(|(_, address)| address).collect()
                } else {
                    healthy
                }
            }
            (None, false) => {
                let mut parsed = Vec::new();
                for (i, text) in target.addresses.iter().enumerate() {
                    match text.parse::<IpAddr>() {
                        Ok(address) => parsed.push(address),
                        Err(_) => problem(
                            &format!("spec.target.addresses[{i}]"),
                            format!("{text:?} is not an IP address"),
                        ),
                    }
                }
                parsed
            }
            _ => {
                problem(
                    "spec.target",
                    "exactly one of accessPoint and addresses is required".to_owned(),
                );
                continue;
            }
        };
        let mut records = NameRecords {
            owner: key.clone(),
            ttl: spec.ttl,
            ..Default::default()
        };
        for address in addresses {
            match address {
                IpAddr::V4(v4) => records.v4.push(v4),
                IpAddr::V6(v6) => records.v6.push(v6),
            }
        }
        records.v4.sort();
        records.v4.dedup();
        records.v6.sort();
        records.v6.dedup();
        out.names.insert(name, records);
    }
    out
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
