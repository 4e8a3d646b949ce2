//! What the packet path of `meridian l4` (the XDP program of `src/l4/xdp`) looks up, computed
//! from the user-space tables. This is Katran's split: user space computes, the datapath only
//! looks up.
//!
//! - services: VIP:port:protocol → where its Maglev table sits, its size, the idle timeout;
//! - backends: gateways by slot. A slot stays its gateway's while the gateway is in its
//!   cluster's table, so a tracked flow that names the slot keeps its gateway (the
//!   connection-tracking rule). The slot of a gateway that left every table is marked
//!   unavailable, and the flows that name it are hashed again;
//! - maglev: each service's entries, as backend slots.
//!
//! [`PacketTables::update`] returns only the writes that change something (Maglev's minimal
//! disruption makes a health change a few hundred entries, not 65,537). Their order never
//! lets a packet find an entry that names a slot not written yet.

use ::core::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::table::L4Table;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// A VIP:port the packet path serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: u8,
}

/// A service as the user-space path serves it.
#[derive(Clone, Copy, Debug)]
pub struct PacketService<'a> {
    pub key: ServiceKey,
    pub cluster: &'a str,
    /// `None`: flows never idle out.
    pub idle_timeout: Option<Duration>,
    pub table: &'a L4Table,
}

/// How much the packet path's maps hold (their sizes are fixed when they are created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub services: u32,
    pub backends: u32,
    /// The largest Maglev table of one service.
    pub table_size: u32,
}

/// One change to the packet path's maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Backend {
        slot: u32,
        address: SocketAddrV4,
        available: bool,
    },
    /// `maglev[index] = backend slot`, for each pair.
    Entries(Vec<(u32, u32)>),
    Service {
        key: ServiceKey,
        offset: u32,
        size: u32,
        idle_timeout: Option<Duration>,
    },
    RemoveService(ServiceKey),
}

/// Why a service stays on the user-space path only.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("its Maglev table has {size} entries; the packet path holds {limit} per VIP:port (--xdp-table-size)")]
    TableTooLarge { size: usize, limit: u32 },
    #[error("the packet path holds {limit} VIP:ports (--xdp-services)")]
    NoServiceSlot { limit: u32 },
    #[error("the packet path holds {limit} gateways")]
    NoBackendSlot { limit: u32 },
    #[error("gateway {0} is not an IPv4 address; the packet path forwards IPv4 only")]
    NotIpv4(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Installed {
    slot: u32,
    entries: Vec<u32>,
    idle_timeout: Option<Duration>,
}

/// The slots an update hands out.
#[derive(Debug, Default)]
struct Allocation {
    /// (cluster, gateway) → slot, for the gateways placed so far.
    backends: BTreeMap<(String, SocketAddrV4), u32>,
    used_backends: BTreeSet<u32>,
    used_services: BTreeSet<u32>,
    /// Slots of gateways and services still wanted: not handed to others.
    reserved_backends: BTreeSet<u32>,
    reserved_services: BTreeSet<u32>,
}

/// What the packet path's maps hold, so that an update writes only the difference.
#[derive(Debug)]
pub struct PacketTables {
    limits: Limits,
    services: BTreeMap<ServiceKey, Installed>,
    /// (cluster, gateway) → slot, for the gateways in a table now.
    backends: BTreeMap<(String, SocketAddrV4), u32>,
}

/// What the maps hold once a plan's writes are made.
#[derive(Debug)]
pub struct Planned {
    services: BTreeMap<ServiceKey, Installed>,
    backends: BTreeMap<(String, SocketAddrV4), u32>,
}

/// The result of [`PacketTables::update`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub writes: Vec<Write>,
    pub skipped: Vec<(ServiceKey, Skipped)>,
}

impl PacketTables {
    pub fn new(limits: Limits) -> PacketTables {
        PacketTables {
            limits,
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
        }
    }

    /// Services installed now.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Makes the maps serve `wanted` (any order) and nothing else: [`PacketTables::plan`]
    /// and [`PacketTables::commit`] at once, for when the writes cannot fail.
    pub fn update(&mut self, wanted: &[PacketService<'_>]) -> Update {
        let (update, next) = self.plan(wanted);
        self.commit(next);
        update
    }

    /// Takes the state a [`PacketTables::plan`] leads to, once its writes were all made. Until
    /// then the next plan is computed against what the maps held before, so a write that
    /// failed is made again.
    pub fn commit(&mut self, next: Planned) {
        self.services = next.services;
        self.backends = next.backends;
    }

    /// The writes that make the maps serve `wanted` (any order) and nothing else, and the
    /// state they lead to.
    pub fn plan(&self, wanted: &[PacketService<'_>]) -> (Update, Planned) {
        let mut wanted: Vec<&PacketService<'_>> = wanted.iter().collect();
        // Services and gateways already installed keep their slots; the rest take free ones
        // in key order, so the outcome does not depend on the caller's order.
        wanted.sort_by_key(|s| (!self.services.contains_key(&s.key), s.key));
        wanted.dedup_by_key(|s| s.key);
        let mut update = Update::default();
        let mut services: BTreeMap<ServiceKey, Installed> = BTreeMap::new();
        // Slots of gateways still in a table are not handed to another one in this update.
        let kept: BTreeSet<(String, SocketAddrV4)> = wanted
            .iter()
            .flat_map(|s| {
                s.table
                    .gateways()
                    .iter()
                    .filter_map(|g| ipv4(g.address).map(|a| (s.cluster.to_owned(), a)))
            })
            .collect();
        let reserved_backends: BTreeSet<u32> = self
            .backends
            .iter()
            .filter(|(key, _)| kept.contains(*key))
            .map(|(_, slot)| *slot)
            .collect();
        let reserved_services: BTreeSet<u32> = wanted
            .iter()
            .filter_map(|s| self.services.get(&s.key).map(|i| i.slot))
            .collect();
        let mut allocation = Allocation {
            reserved_backends,
            reserved_services,
            ..Allocation::default()
        };
        for service in wanted {
            match self.place(service, &mut allocation) {
                Ok(installed) => {
                    services.insert(service.key, installed);
                }
                Err(why) => update.skipped.push((service.key, why)),
            }
        }
        let Allocation {
            backends,
            used_backends,
            ..
        } = allocation;
        for ((_, address), slot) in &backends {
            let known = self
                .backends
                .iter()
                .find(|(_, s)| *s == slot)
                .is_some_and(|((_, a), _)| a == address);
            if !known {
                update.writes.push(Write::Backend {
                    slot: *slot,
                    address: *address,
                    available: true,
                });
            }
        }
        for (key, installed) in &services {
            let previous = self.services.get(key);
            let offset = installed.slot.saturating_mul(self.limits.table_size);
            let old = previous
                .filter(|p| p.slot == installed.slot)
                .map(|p| p.entries.as_slice())
                .unwrap_or(&[]);
            let changes: Vec<(u32, u32)> = installed
                .entries
                .iter()
                .enumerate()
                .filter(|(i, entry)| old.get(*i) != Some(entry))
                .filter_map(|(i, entry)| {
                    let index = offset.checked_add(u32::try_from(i).ok()?)?;
                    Some((index, *entry))
                })
                .collect();
            if !changes.is_empty() {
                update.writes.push(Write::Entries(changes));
            }
            if previous.is_none_or(|p| {
                p.slot != installed.slot
                    || p.entries.len() != installed.entries.len()
                    || p.idle_timeout != installed.idle_timeout
            }) {
                update.writes.push(Write::Service {
                    key: *key,
                    offset,
                    size: u32::try_from(installed.entries.len()).unwrap_or(0),
                    idle_timeout: installed.idle_timeout,
                });
            }
        }
        for key in self.services.keys() {
            if !services.contains_key(key) {
                update.writes.push(Write::RemoveService(*key));
            }
        }
        for ((_, address), slot) in &self.backends {
            if !used_backends.contains(slot) {
                update.writes.push(Write::Backend {
                    slot: *slot,
                    address: *address,
                    available: false,
                });
            }
        }
        (update, Planned { services, backends })
    }

    /// Gives `service` a slot, and its gateways slots, or says why it cannot have them. Takes
    /// nothing when it fails.
    fn place(
        &self,
        service: &PacketService<'_>,
        allocation: &mut Allocation,
    ) -> Result<Installed, Skipped> {
        let Allocation {
            backends,
            used_backends,
            used_services,
            reserved_backends: reserved,
            reserved_services,
        } = allocation;
        let limits = self.limits;
        let entries = service.table.maglev().entries();
        if u32::try_from(entries.len()).map_or(true, |size| size > limits.table_size) {
            return Err(Skipped::TableTooLarge {
                size: entries.len(),
                limit: limits.table_size,
            });
        }
        let slot = match self.services.get(&service.key) {
            Some(installed) => installed.slot,
            None => (0..limits.services)
                .find(|s| !used_services.contains(s) && !reserved_services.contains(s))
                .ok_or(Skipped::NoServiceSlot {
                    limit: limits.services,
                })?,
        };
        let mut taken: Vec<((String, SocketAddrV4), u32)> = Vec::new();
        let mut gateway_slots = Vec::with_capacity(service.table.gateways().len());
        for gateway in service.table.gateways() {
            let address =
                ipv4(gateway.address).ok_or_else(|| Skipped::NotIpv4(gateway.id.clone()))?;
            let key = (service.cluster.to_owned(), address);
            let known = backends
                .get(&key)
                .or_else(|| self.backends.get(&key))
                .copied()
                .or_else(|| taken.iter().find(|(k, _)| *k == key).map(|(_, s)| *s));
            let slot = match known {
                Some(slot) => slot,
                None => (0..limits.backends)
                    .find(|s| {
                        !used_backends.contains(s)
                            && !reserved.contains(s)
                            && !taken.iter().any(|(_, t)| t == s)
                    })
                    .ok_or(Skipped::NoBackendSlot {
                        limit: limits.backends,
                    })?,
            };
            taken.push((key, slot));
            gateway_slots.push(slot);
        }
        let entries = entries
            .iter()
            .map(|e| {
                usize::try_from(*e)
                    .ok()
                    .and_then(|e| gateway_slots.get(e).copied())
                    .unwrap_or(u32::MAX)
            })
            .collect();
        used_services.insert(slot);
        for (key, slot) in taken {
            used_backends.insert(slot);
            backends.insert(key, slot);
        }
        Ok(Installed {
            slot,
            entries,
            idle_timeout: service.idle_timeout,
        })
    }
}

fn ipv4(address: ::core::net::SocketAddr) -> Option<SocketAddrV4> {
    match address.ip() {
        IpAddr::V4(ip) => Some(SocketAddrV4::new(ip, address.port())),
        IpAddr::V6(ip) => ip
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, address.port())),
    }
}

#[cfg(test)]
#[path = "packet_tables_tests.rs"]
mod tests;
