//! Virtual IPs: the table of addresses allocated per AccessPoint, cluster and IP family, and
//! what could not be allocated. Model data; [`crate::core::vip_allocation`] computes it.

use ::core::net::IpAddr;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ObjectKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(address: &IpAddr) -> Family {
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
    /// Two AccessPoints on one VIP whose Services claim the same ports: the older keeps them
    /// (L4 nodes forward them to its gateways), the younger gets this error.
    PortClash {
        access_point: ObjectKey,
        cluster: String,
        holder: ObjectKey,
        ports: Vec<String>,
    },
}

impl VipError {
    /// The AccessPoint this error is about, if any.
    pub fn access_point(&self) -> Option<&ObjectKey> {
        match self {
            VipError::BadCidr { .. } => None,
            VipError::Exhausted { access_point, .. }
            | VipError::NoSuchPool { access_point, .. }
            | VipError::ShareTargetMissing { access_point, .. }
            | VipError::PortClash { access_point, .. } => Some(access_point),
        }
    }

    pub fn cluster(&self) -> &str {
        match self {
            VipError::BadCidr { cluster, .. }
            | VipError::Exhausted { cluster, .. }
            | VipError::NoSuchPool { cluster, .. }
            | VipError::ShareTargetMissing { cluster, .. }
            | VipError::PortClash { cluster, .. } => cluster,
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
            VipError::PortClash {
                cluster,
                holder,
                ports,
                ..
            } => write!(
                f,
                "template.service: port(s) {} of the VIP in cluster {cluster} belong to the \
                 older AccessPoint {holder} sharing it; L4 nodes forward them there",
                ports.join(", ")
            ),
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
