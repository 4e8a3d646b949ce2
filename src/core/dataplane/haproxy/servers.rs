//! A backend's servers as fixed slots, so that endpoint changes are Runtime API commands and
//! never a reload: an endpoint keeps its slot while it stays, a new one takes a free slot, a
//! gone one's slot goes to maintenance (in-flight requests finish). Priority 0 endpoints take
//! active slots (`a1`…), the others backup slots (`b1`…), which HAProxy uses only when no
//! active server is up — Envoy's failover to the next priority. Capacity grows by doubling;
//! only a growth changes the configuration (and needs a reload).

use std::collections::HashMap;

use crate::core::dataplane::balancer::Assignment;

/// The fewest slots of each kind a backend has.
pub const MIN_SLOTS: usize = 4;

/// One endpoint in a slot: address, port and HAProxy weight (1-256; [`haproxy_weight`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    pub address: String,
    pub port: u16,
    pub weight: u32,
}

/// The slots of one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotTable {
    pub active: Vec<Option<Server>>,
    pub backup: Vec<Option<Server>>,
}

impl SlotTable {
    /// The slots for `assignment`, keeping each endpoint that stays where `previous` had it.
    pub fn assign(previous: &SlotTable, assignment: &Assignment) -> SlotTable {
        let (mut active, mut backup) = (Vec::new(), Vec::new());
        let weights = || {
            assignment
                .localities
                .iter()
                .flat_map(|l| &l.endpoints)
                .map(|e| e.weight.max(1))
        };
        let (min, max) = (weights().min().unwrap_or(1), weights().max().unwrap_or(1));
        for locality in &assignment.localities {
            let list = if locality.priority == 0 {
                &mut active
            } else {
                &mut backup
            };
            for e in &locality.endpoints {
                list.push(Server {
                    address: e.host.clone(),
                    port: e.port,
                    weight: haproxy_weight(e.weight, (min, max)),
                });
            }
        }
        SlotTable {
            active: place(&previous.active, active),
            backup: place(&previous.backup, backup),
        }
    }

    /// Slot counts: what the configuration holds.
    pub fn capacity(&self) -> (usize, usize) {
        (self.active.len(), self.backup.len())
    }

    /// Runtime API commands turning `before` into `self` for backend `backend`; `None` when
    /// the capacity differs (a reload renders the new slots).
    pub fn commands(&self, before: &SlotTable, backend: &str) -> Option<Vec<String>> {
        if self.capacity() != before.capacity() {
            return None;
        }
        let mut out = Vec::new();
        for (prefix, now, was) in [
            ("a", &self.active, &before.active),
            ("b", &self.backup, &before.backup),
        ] {
            for (i, (now, was)) in now.iter().zip(was).enumerate() {
                let server = format!("{backend}/{prefix}{}", i + 1);
                match (was, now) {
                    (Some(_), None) => out.push(format!("set server {server} state maint")),
                    (None, Some(s)) => {
                        out.push(format!(
                            "set server {server} addr {} port {}",
                            s.address, s.port
                        ));
                        out.push(format!("set server {server} weight {}", s.weight));
                        out.push(format!("set server {server} state ready"));
                    }
                    (Some(w), Some(s)) if w.address != s.address || w.port != s.port => {
                        out.push(format!("set server {server} state maint"));
                        out.push(format!(
                            "set server {server} addr {} port {}",
                            s.address, s.port
                        ));
                        out.push(format!("set server {server} weight {}", s.weight));
                        out.push(format!("set server {server} state ready"));
                    }
                    (Some(w), Some(s)) if w.weight != s.weight => {
                        out.push(format!("set server {server} weight {}", s.weight));
                    }
                    _ => {}
                }
            }
        }
        Some(out)
    }
}

/// An endpoint's weight as HAProxy's (1-256): 100 when all weigh alike, so that the node
/// agent's `NN%` has room; else in proportion, the heaviest at 256.
fn haproxy_weight(weight: u32, (min, max): (u32, u32)) -> u32 {
    if min == max {
        return 100;
    }
    let weight = u64::from(weight.max(1));
    let max = u64::from(max.max(1));
    u32::try_from((weight * 256).div_ceil(max))
        .unwrap_or(256)
        .clamp(1, 256)
}

/// `servers` in `previous`'s slots: those already placed stay, the rest fill free slots in
/// order; the capacity doubles until they fit.
fn place(previous: &[Option<Server>], mut servers: Vec<Server>) -> Vec<Option<Server>> {
    servers.sort();
    servers.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    let mut capacity = previous.len().max(MIN_SLOTS);
    while capacity < servers.len() {
        capacity = capacity.saturating_mul(2);
    }
    // Where each endpoint was: one lookup per endpoint, not a scan of every slot.
    let was: HashMap<(&str, u16), usize> = previous
        .iter()
        .enumerate()
        .filter_map(|(i, slot)| slot.as_ref().map(|s| ((s.address.as_str(), s.port), i)))
        .collect();
    let mut slots: Vec<Option<Server>> = vec![None; capacity];
    let mut waiting = Vec::new();
    for server in servers {
        match was.get(&(server.address.as_str(), server.port)).copied() {
            Some(i) if slots[i].is_none() => slots[i] = Some(server),
            _ => waiting.push(server),
        }
    }
    // A freed slot is reused last: its server may still be finishing requests.
    let mut free: Vec<usize> = (0..capacity).filter(|i| slots[*i].is_none()).collect();
    free.sort_by_key(|i| previous.get(*i).is_some_and(Option::is_some));
    for (server, i) in waiting.into_iter().zip(free) {
        slots[i] = Some(server);
    }
    slots
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::dataplane::balancer::{Endpoint, Locality};

    fn assignment(active: &[&str], backup: &[&str]) -> Assignment {
        let locality = |priority, hosts: &[&str]| Locality {
            zone: String::new(),
            weight: 1,
            priority,
            endpoints: hosts
                .iter()
                .map(|h| Endpoint {
                    host: (*h).to_owned(),
                    port: 30080,
                    weight: 1,
                })
                .collect(),
        };
        Assignment {
            localities: vec![locality(0, active), locality(1, backup)],
        }
    }

    fn hosts(slots: &[Option<Server>]) -> Vec<Option<&str>> {
        slots
            .iter()
            .map(|s| s.as_ref().map(|s| s.address.as_str()))
            .collect()
    }

    #[test]
    fn endpoints_keep_their_slots_and_changes_are_runtime_commands() {
        let first = SlotTable::assign(
            &SlotTable::default(),
            &assignment(&["10.0.0.1", "10.0.0.2"], &["10.0.1.1"]),
        );
        assert_eq!(first.capacity(), (4, 4));
        let second = SlotTable::assign(
            &first,
            &assignment(&["10.0.0.2", "10.0.0.3"], &["10.0.1.1"]),
        );
        assert_eq!(
            hosts(&second.active),
            [None, Some("10.0.0.2"), Some("10.0.0.3"), None]
        );
        let commands = second.commands(&first, "be").unwrap();
        assert_eq!(
            commands,
            [
                "set server be/a1 state maint",
                "set server be/a3 addr 10.0.0.3 port 30080",
                "set server be/a3 weight 100",
                "set server be/a3 state ready",
            ]
        );
        assert_eq!(second.commands(&second, "be"), Some(Vec::new()));
    }

    #[test]
    fn weights_leave_room_for_the_agents_percentages_and_keep_proportions() {
        assert_eq!(haproxy_weight(1, (1, 1)), 100);
        assert_eq!(haproxy_weight(7, (7, 7)), 100);
        assert_eq!(haproxy_weight(1, (1, 4)), 64);
        assert_eq!(haproxy_weight(4, (1, 4)), 256);
        assert_eq!(haproxy_weight(1, (1, 100_000)), 1);
    }

    #[test]
    fn growing_past_the_capacity_needs_a_reload() {
        let first = SlotTable::assign(&SlotTable::default(), &assignment(&["a", "b"], &[]));
        let many: Vec<String> = (0..9).map(|i| format!("10.0.0.{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let grown = SlotTable::assign(&first, &assignment(&refs, &[]));
        assert_eq!(grown.capacity(), (16, 4));
        assert_eq!(grown.commands(&first, "be"), None);
    }

    proptest! {
        /// Whatever the changes, an endpoint present before and after keeps its slot, every
        /// endpoint has exactly one slot, and the capacity never shrinks.
        #[test]
        fn staying_endpoints_never_move(
            before in proptest::collection::btree_set(0u8..40, 0..20),
            after in proptest::collection::btree_set(0u8..40, 0..20),
        ) {
            let names = |set: &std::collections::BTreeSet<u8>| -> Vec<String> {
                set.iter().map(|i| format!("10.0.0.{i}")).collect()
            };
            let (b, a) = (names(&before), names(&after));
            let b_refs: Vec<&str> = b.iter().map(String::as_str).collect();
            let a_refs: Vec<&str> = a.iter().map(String::as_str).collect();
            let first = SlotTable::assign(&SlotTable::default(), &assignment(&b_refs, &[]));
            let second = SlotTable::assign(&first, &assignment(&a_refs, &[]));
            prop_assert!(second.active.len() >= first.active.len());
            for (i, slot) in first.active.iter().enumerate() {
                if let Some(s) = slot {
                    if a.contains(&s.address) {
                        prop_assert_eq!(second.active[i].as_ref(), Some(s));
                    }
                }
            }
            let mut placed: Vec<&str> = second.active.iter().flatten().map(|s| s.address.as_str()).collect();
            placed.sort();
            let mut wanted = a_refs.clone();
            wanted.sort();
            prop_assert_eq!(placed, wanted);
        }
    }
}
