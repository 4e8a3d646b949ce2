//! VIP allocation: one address per AccessPoint, cluster and IP family, from the cluster's VIP
//! pools (the table it fills is [`super::model::vip`]).
//!
//! Allocation is a pure function of the model and the previous table: an address once handed
//! out stays with its AccessPoint while it is still placed there and still inside a pool, so a
//! restart (which reloads the persisted table) or a re-apply changes nothing. New addresses go
//! to AccessPoints in age order, lowest free address first.
//!
//! Architecture Invariant: within one cluster no address belongs to two AccessPoints, unless
//! one names the other in `spec.vip.shareWith`.

use ::core::net::IpAddr;
use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::model::vip::{Family, Vip, VipError, VipTable};
use super::model::{Model, ObjectKey};
use super::placement::placed_clusters;

/// A cluster's pools, parsed.
struct Pool {
    name: String,
    networks: Vec<IpNet>,
}

fn pools_of(model: &Model, cluster: &str, errors: &mut Vec<VipError>) -> Vec<Pool> {
    let Some(member) = model.member_clusters.get(&ObjectKey::new("", cluster)) else {
        return Vec::new();
    };
    member
        .spec
        .vip_pools
        .iter()
        .enumerate()
        .map(|(i, pool)| Pool {
            name: pool.name.clone(),
            networks: pool
                .cidrs
                .iter()
                .enumerate()
                .filter_map(|(j, cidr)| match cidr.parse::<IpNet>() {
                    Ok(net) => Some(net.trunc()),
                    Err(_) => {
                        errors.push(VipError::BadCidr {
                            cluster: cluster.to_owned(),
                            path: format!("spec.vipPools[{i}].cidrs[{j}]"),
                            value: cidr.clone(),
                        });
                        None
                    }
                })
                .collect(),
        })
        .collect()
}

/// Addresses of `net` a VIP may take: not the IPv4 network or broadcast address (below /31),
/// not the IPv6 subnet-router anycast address (below /127).
fn usable(net: &IpNet, address: &IpAddr) -> bool {
    match net {
        IpNet::V4(v4) if v4.prefix_len() < 31 => {
            *address != IpAddr::V4(v4.network()) && *address != IpAddr::V4(v4.broadcast())
        }
        IpNet::V6(v6) if v6.prefix_len() < 127 => *address != IpAddr::V6(v6.network()),
        _ => true,
    }
}

/// Allocates VIPs for every placed AccessPoint, keeping what `previous` gave out.
pub fn allocate(model: &Model, previous: &VipTable) -> (VipTable, Vec<VipError>) {
    let mut errors = Vec::new();
    let mut table = VipTable::default();
    let mut access_points: Vec<_> = model
        .access_points
        .iter()
        .filter(|(_, ap)| ap.metadata.deletion_timestamp.is_none())
        .collect();
    access_points.sort_by_key(|(key, ap)| (ap.metadata.creation_timestamp.clone(), *key));
    let placements: BTreeMap<&ObjectKey, Vec<String>> = access_points
        .iter()
        .map(|(key, ap)| (*key, placed_clusters(model, ap)))
        .collect();

    for cluster in model.cluster_names() {
        let pools = pools_of(model, &cluster, &mut errors);
        if pools.is_empty() {
            continue;
        }
        let placed: Vec<&ObjectKey> = access_points
            .iter()
            .filter(|(key, _)| placements[key].contains(&cluster))
            .map(|(key, _)| *key)
            .collect();
        let mut used: BTreeSet<IpAddr> = BTreeSet::new();
        let wants = |key: &ObjectKey| {
            model.access_points[key]
                .spec
                .vip
                .clone()
                .unwrap_or_default()
        };
        let families: BTreeSet<Family> = pools
            .iter()
            .flat_map(|p| &p.networks)
            .map(|n| Family::of(&n.network()))
            .collect();

        // Keep what is still valid, oldest AccessPoint first.
        for key in placed.iter().filter(|k| wants(k).share_with.is_none()) {
            for family in &families {
                let id = ((*key).clone(), cluster.clone(), *family);
                let Some(vip) = previous.vips.get(&id) else {
                    continue;
                };
                let pool_ok = wants(key).pool.is_none_or(|p| p == vip.pool);
                let inside = pools.iter().any(|p| {
                    p.name == vip.pool
                        && p.networks
                            .iter()
                            .any(|n| n.contains(&vip.address) && usable(n, &vip.address))
                });
                if pool_ok && inside && used.insert(vip.address) {
                    table.vips.insert(id, vip.clone());
                }
            }
        }
        // Then give new addresses, lowest free first.
        let mut cursors: BTreeMap<(String, usize), Box<dyn Iterator<Item = IpAddr>>> =
            BTreeMap::new();
        for key in placed.iter().filter(|k| wants(k).share_with.is_none()) {
            let request = wants(key);
            let candidates: Vec<&Pool> = match &request.pool {
                Some(name) => {
                    let found: Vec<&Pool> = pools.iter().filter(|p| &p.name == name).collect();
                    if found.is_empty() {
                        errors.push(VipError::NoSuchPool {
                            access_point: (*key).clone(),
                            cluster: cluster.clone(),
                            pool: name.clone(),
                        });
                    }
                    found
                }
                None => pools.iter().collect(),
            };
            for family in &families {
                let id = ((*key).clone(), cluster.clone(), *family);
                if table.vips.contains_key(&id) {
                    continue;
                }
                let nets: Vec<(&Pool, usize)> = candidates
                    .iter()
                    .flat_map(|p| {
                        p.networks
                            .iter()
                            .enumerate()
                            .filter(|(_, n)| Family::of(&n.network()) == *family)
                            .map(move |(i, _)| (*p, i))
                    })
                    .collect();
                if nets.is_empty() {
                    continue;
                }
                let found = nets.iter().find_map(|(pool, i)| {
                    let net = pool.networks[*i];
                    let cursor = cursors
                        .entry((pool.name.clone(), *i))
                        .or_insert_with(|| Box::new(net.hosts_all()));
                    cursor
                        .find(|a| usable(&net, a) && !used.contains(a))
                        .map(|a| (pool.name.clone(), a))
                });
                match found {
                    Some((pool, address)) => {
                        used.insert(address);
                        table.vips.insert(id, Vip { address, pool });
                    }
                    None => errors.push(VipError::Exhausted {
                        access_point: (*key).clone(),
                        cluster: cluster.clone(),
                        pools: candidates.iter().map(|p| p.name.clone()).collect(),
                        family: *family,
                    }),
                }
            }
        }
        // Shared VIPs last: they copy their target's.
        for key in placed.iter() {
            let Some(target) = wants(key).share_with else {
                continue;
            };
            let target = ObjectKey::new(key.namespace.clone(), target);
            let mut any = false;
            for family in &families {
                let from = (target.clone(), cluster.clone(), *family);
                if let Some(vip) = table.vips.get(&from).cloned() {
                    table
                        .vips
                        .insert(((*key).clone(), cluster.clone(), *family), vip);
                    any = true;
                }
            }
            if !any {
                errors.push(VipError::ShareTargetMissing {
                    access_point: (*key).clone(),
                    cluster: cluster.clone(),
                    target,
                });
                continue;
            }
            let ports = shared_ports(model, key, &target);
            if !ports.is_empty() {
                let age = |k: &ObjectKey| placed.iter().position(|p| *p == k);
                let (younger, older) = if age(key) < age(&target) {
                    (target, (*key).clone())
                } else {
                    ((*key).clone(), target)
                };
                errors.push(VipError::PortClash {
                    access_point: younger,
                    cluster: cluster.clone(),
                    holder: older,
                    ports,
                });
            }
        }
    }
    errors.sort();
    (table, errors)
}

/// The ports (`80/TCP`) both AccessPoints' Services claim: on one VIP, only one can have them.
fn shared_ports(model: &Model, a: &ObjectKey, b: &ObjectKey) -> Vec<String> {
    let ports = |key: &ObjectKey| -> BTreeSet<String> {
        model
            .access_points
            .get(key)
            .and_then(|ap| ap.spec.template.service.as_ref())
            .and_then(|service| service.spec.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| {
                let protocol = p.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase();
                format!("{}/{protocol}", p.port)
            })
            .collect()
    };
    ports(a).intersection(&ports(b)).cloned().collect()
}

/// Every host address of a network, network address included (filtered by [`usable`]).
trait HostsAll {
    fn hosts_all(self) -> Box<dyn Iterator<Item = IpAddr>>;
}

impl HostsAll for IpNet {
    fn hosts_all(self) -> Box<dyn Iterator<Item = IpAddr>> {
        match self {
            IpNet::V4(v4) => {
                Box::new(ipnet::Ipv4AddrRange::new(v4.network(), v4.broadcast()).map(IpAddr::V4))
            }
            IpNet::V6(v6) => {
                Box::new(ipnet::Ipv6AddrRange::new(v6.network(), v6.broadcast()).map(IpAddr::V6))
            }
        }
    }
}

#[cfg(test)]
mod tests;
