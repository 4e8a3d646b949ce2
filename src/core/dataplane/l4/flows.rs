//! The UDP flows of an L4 node: a table of bounded size from a flow's key to what the data path
//! keeps for it, in least-recently-used order. A flow idle for the timeout is forgotten; when
//! the table is full, a new flow takes the place of the least recently used one, so a flood of
//! new flows costs the oldest flows their state, never the node its memory.
//!
//! Sans-IO: the caller passes the time. Every operation is O(1) but [`FlowTable::expire`],
//! which is O(flows expired). Slots are numbered, so the data path can name a flow by its slot
//! (an event token) without hashing its key again.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

const NONE: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    last_seen: Duration,
    /// Towards the most recently used end, and towards the least.
    newer: u32,
    older: u32,
}

#[derive(Debug)]
pub struct FlowTable<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Option<Slot<K, V>>>,
    free: Vec<u32>,
    newest: u32,
    oldest: u32,
    capacity: usize,
    idle_timeout: Duration,
}

impl<K: Hash + Eq + Clone, V> FlowTable<K, V> {
    /// A table of at most `capacity` flows (at least one), each forgotten after `idle_timeout`
    /// without a packet.
    pub fn new(capacity: usize, idle_timeout: Duration) -> FlowTable<K, V> {
        let capacity = capacity.clamp(1, NONE as usize - 1);
        // Reserved whole up front (pages are touched only as flows arrive): growing by doubling
        // would copy the table and leave the old copies' pages resident.
        let reserved = capacity.min(1 << 22);
        FlowTable {
            index: HashMap::with_capacity(reserved),
            slots: Vec::with_capacity(reserved),
            free: Vec::new(),
            newest: NONE,
            oldest: NONE,
            capacity,
            idle_timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The slot of `key`'s flow, if it is tracked.
    pub fn find(&self, key: &K) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// The key and value in `slot`.
    pub fn get(&self, slot: u32) -> Option<(&K, &V)> {
        let slot = self.slots.get(slot as usize)?.as_ref()?;
        Some((&slot.key, &slot.value))
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut V> {
        Some(&mut self.slots.get_mut(slot as usize)?.as_mut()?.value)
    }

    /// A packet of the flow in `slot` at `now`: it becomes the most recently used.
    pub fn touch(&mut self, slot: u32, now: Duration) {
        if let Some(Some(entry)) = self.slots.get_mut(slot as usize) {
            entry.last_seen = now;
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    /// Tracks a new flow (replacing `key`'s, if any); returns its slot and the flow that had
    /// to leave to make room (the least recently used), if one did.
    pub fn insert(&mut self, key: K, value: V, now: Duration) -> (u32, Option<(K, V)>) {
        let replaced = self.find(&key).and_then(|slot| self.remove(slot));
        let mut evicted = replaced;
        if self.index.len() >= self.capacity {
            let oldest = self.oldest;
            evicted = self.remove(oldest).or(evicted);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(NONE)
            }
        };
        self.slots[slot as usize] = Some(Slot {
            key: key.clone(),
            value,
            last_seen: now,
            newer: NONE,
            older: NONE,
        });
        self.link_newest(slot);
        self.index.insert(key, slot);
        (slot, evicted)
    }

    /// Forgets the flow in `slot`.
    pub fn remove(&mut self, slot: u32) -> Option<(K, V)> {
        self.slots.get(slot as usize)?.as_ref()?;
        self.unlink(slot);
        let entry = self.slots[slot as usize].take()?;
        self.index.remove(&entry.key);
        self.free.push(slot);
        Some((entry.key, entry.value))
    }

    /// Forgets the flows idle for longer than the timeout at `now`, returning them.
    pub fn expire(&mut self, now: Duration) -> Vec<(K, V)> {
        let mut expired = Vec::new();
        while let Some(Some(oldest)) = self.slots.get(self.oldest as usize) {
            if now.saturating_sub(oldest.last_seen) <= self.idle_timeout {
                break;
            }
            let slot = self.oldest;
            match self.remove(slot) {
                Some(flow) => expired.push(flow),
                None => break,
            }
        }
        expired
    }

    fn unlink(&mut self, slot: u32) {
        let Some(Some(entry)) = self.slots.get(slot as usize) else {
            return;
        };
        let (newer, older) = (entry.newer, entry.older);
        match self.slots.get_mut(newer as usize) {
            Some(Some(n)) => n.older = older,
            _ => self.newest = older,
        }
        match self.slots.get_mut(older as usize) {
            Some(Some(o)) => o.newer = newer,
            _ => self.oldest = newer,
        }
        if let Some(Some(entry)) = self.slots.get_mut(slot as usize) {
            entry.newer = NONE;
            entry.older = NONE;
        }
    }

    fn link_newest(&mut self, slot: u32) {
        let previous = self.newest;
        if let Some(Some(entry)) = self.slots.get_mut(slot as usize) {
            entry.older = previous;
            entry.newer = NONE;
        }
        match self.slots.get_mut(previous as usize) {
            Some(Some(p)) => p.newer = slot,
            _ => self.oldest = slot,
        }
        self.newest = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_full_table_makes_room_by_dropping_the_least_recently_used_flow() {
        let mut flows = FlowTable::new(2, IDLE);
        let (a, _) = flows.insert("a", 1, secs(0));
        flows.insert("b", 2, secs(1));
        // `a` is used again: `b` is now the least recently used.
        flows.touch(a, secs(2));
        let (_, evicted) = flows.insert("c", 3, secs(3));
        assert_eq!(evicted, Some(("b", 2)));
        assert_eq!(flows.len(), 2);
        assert!(flows.find(&"a").is_some() && flows.find(&"c").is_some());
    }

    #[test]
    fn idle_flows_expire_oldest_first_and_used_ones_stay() {
        let mut flows = FlowTable::new(10, IDLE);
        flows.insert("a", 1, secs(0));
        let (b, _) = flows.insert("b", 2, secs(10));
        flows.insert("c", 3, secs(20));
        flows.touch(b, secs(50));
        assert_eq!(flows.expire(secs(75)), [("a", 1)]);
        assert_eq!(flows.expire(secs(81)), [("c", 3)]);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows.get(b), Some((&"b", &2)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Touch(u8),
        Remove(u8),
        Expire,
    }

    proptest! {
        /// The table behaves as a list ordered by last use, cut to its capacity, and never
        /// holds more.
        #[test]
        fn matches_a_model_in_use_order(
            capacity in 1usize..6,
            ops in proptest::collection::vec(
                prop_oneof![
                    (0u8..8).prop_map(Op::Insert),
                    (0u8..8).prop_map(Op::Touch),
                    (0u8..8).prop_map(Op::Remove),
                    Just(Op::Expire),
                ],
                0..60,
            ),
        ) {
            let mut flows = FlowTable::new(capacity, secs(5));
            // Model: (key, last seen), most recent last.
            let mut model: Vec<(u8, u64)> = Vec::new();
            for (tick, op) in ops.into_iter().enumerate() {
                let now = tick as u64;
                match op {
                    Op::Insert(k) => {
                        model.retain(|(key, _)| *key != k);
                        if model.len() >= capacity {
                            model.remove(0);
                        }
                        model.push((k, now));
                        flows.insert(k, u32::from(k), secs(now));
                    }
                    Op::Touch(k) => {
                        if let Some(at) = model.iter().position(|(key, _)| *key == k) {
                            model.remove(at);
                            model.push((k, now));
                        }
                        if let Some(slot) = flows.find(&k) {
                            flows.touch(slot, secs(now));
                        }
                    }
                    Op::Remove(k) => {
                        model.retain(|(key, _)| *key != k);
                        if let Some(slot) = flows.find(&k) {
                            flows.remove(slot);
                        }
                    }
                    Op::Expire => {
                        let expired: Vec<u8> =
                            flows.expire(secs(now)).into_iter().map(|(k, _)| k).collect();
                        let kept: Vec<(u8, u64)> =
                            model.iter().copied().filter(|(_, seen)| now - seen <= 5).collect();
                        let gone: Vec<u8> = model
                            .iter()
                            .filter(|(_, seen)| now - seen > 5)
                            .map(|(k, _)| *k)
                            .collect();
                        prop_assert_eq!(expired, gone);
                        model = kept;
                    }
                }
                prop_assert!(flows.len() <= capacity);
                prop_assert_eq!(flows.len(), model.len());
                for (key, _) in &model {
                    let slot = flows.find(key);
                    prop_assert!(slot.is_some());
                    prop_assert_eq!(flows.get(slot.unwrap()).map(|(k, v)| (*k, *v)), Some((*key, u32::from(*key))));
                }
            }
        }
    }
}
