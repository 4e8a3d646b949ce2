//! Virtual IPs: one per AccessPoint, cluster and IP family, from the cluster's VIP pools.
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
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::model::{Model, ObjectKey};
use super::refs::placed_clusters;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(address: &IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// One allocated address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    pub address: IpAddr,
    pub pool: String,
}

/// (AccessPoint, cluster, family).
pub type VipKey = (ObjectKey, String, Family);

/// Every allocated VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipTable {
    #[serde(with = "entries")]
    pub vips: BTreeMap<VipKey, Vip>,
}

impl VipTable {
    /// The addresses of `access_point` in `cluster` (IPv4 first).
    pub fn of(&self, access_point: &ObjectKey, cluster: &str) -> Vec<IpAddr> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|family| {
                self.vips
                    .get(&(access_point.clone(), cluster.to_owned(), family))
                    .map(|v| v.address)
            })
            .collect()
    }

    /// Every (cluster, address) of `access_point`, by cluster.
    pub fn all_of<'t>(
        &'t self,
        access_point: &'t ObjectKey,
    ) -> impl Iterator<Item = (&'t String, IpAddr)> + 't {
        self.vips
            .range((access_point.clone(), String::new(), Family::V4)..)
            .take_while(move |((owner, _, _), _)| owner == access_point)
            .map(|((_, cluster, _), vip)| (cluster, vip.address))
    }

    pub fn len(&self) -> usize {
        self.vips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vips.is_empty()
    }
}

/// Why an AccessPoint lacks a VIP somewhere, or a pool is unusable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VipError {
    /// `MemberCluster <cluster>: spec.vipPools[i].cidrs[j]` does not parse.
    BadCidr {
        cluster: String,
        path: String,
        value: String,
    },
    Exhausted {
        access_point: ObjectKey,
        cluster: String,
        pools: Vec<String>,
        family: Family,
    },
    NoSuchPool {
        access_point: ObjectKey,
        cluster: String,
        pool: String,
    },
    ShareTargetMissing {
        access_point: ObjectKey,
        cluster: String,
        target: ObjectKey,
    },
}

impl VipError {
    /// The AccessPoint this error is about, if any.
    pub fn access_point(&self) -> Option<&ObjectKey> {
        match self {
            VipError::BadCidr { .. } => None,
            VipError::Exhausted { access_point, .. }
            | VipError::NoSuchPool { access_point, .. }
            | VipError::ShareTargetMissing { access_point, .. } => Some(access_point),
        }
    }

    pub fn cluster(&self) -> &str {
        match self {
            VipError::BadCidr { cluster, .. }
            | VipError::Exhausted { cluster, .. }
            | VipError::NoSuchPool { cluster, .. }
            | VipError::ShareTargetMissing { cluster, .. } => cluster,
        }
    }
}

impl fmt::Display for VipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VipError::BadCidr {
                cluster,
                path,
                value,
            } => write!(
                f,
                "MemberCluster {cluster}: {path}: {value:?} is not a CIDR"
            ),
            VipError::Exhausted {
                cluster,
                pools,
                family,
                ..
            } => write!(
                f,
                "VIP pool {} of cluster {cluster} has no free {family:?} address",
                pools.join(", ")
            ),
            VipError::NoSuchPool { cluster, pool, .. } => {
                write!(f, "cluster {cluster} has no VIP pool {pool:?}")
            }
            VipError::ShareTargetMissing {
                cluster, target, ..
            } => write!(
                f,
                "spec.vip.shareWith: AccessPoint {target} has no VIP in cluster {cluster}"
            ),
        }
    }
}

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
            }
        }
    }
    errors.sort();
    (table, errors)
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

/// The table as a list on the wire (JSON maps need string keys).
mod entries {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        access_point: String,
        cluster: String,
        address: IpAddr,
        pool: String,
    }

    pub fn serialize<S: Serializer>(
        vips: &BTreeMap<VipKey, Vip>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let entries: Vec<Entry> = vips
            .iter()
            .map(|((ap, cluster, _), vip)| Entry {
                access_point: ap.to_string(),
                cluster: cluster.clone(),
                address: vip.address,
                pool: vip.pool.clone(),
            })
            .collect();
        entries.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<VipKey, Vip>, D::Error> {
        let entries = Vec::<Entry>::deserialize(deserializer)?;
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let (ns, name) = e.access_point.split_once('/')?;
                Some((
                    (ObjectKey::new(ns, name), e.cluster, Family::of(&e.address)),
                    Vip {
                        address: e.address,
                        pool: e.pool,
                    },
                ))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
