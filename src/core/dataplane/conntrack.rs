//! Connection tracking for the L4 balancer (issue 21), with the rule of the eBay L4 design: a
//! flow keeps the backend it was given while that backend stays in the table and healthy, even
//! after the Maglev table changed; a flow whose backend failed or left is hashed again. New
//! flows go where the table says, so every L4 node sends a flow to the same backend without
//! sharing state.
//!
//! A sans-IO table over the L4 node's [`FlowTable`]: the caller passes the time, the backends
//! and the Maglev table built from them. Flows idle longer than the timeout are forgotten; when
//! the table is full, a new flow takes the place of the least recently used one, so a flood of
//! new flows costs the oldest flows their state (they are hashed again, most often to the same
//! backend), never a scan of the table.

use std::time::Duration;

use xxhash_rust::xxh64::xxh64;

use super::l4::flows::FlowTable;
use super::maglev::{Backend, MaglevTable};

/// A flow's 5-tuple, addresses as 16 bytes (IPv4 mapped into IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: u8,
    pub source: [u8; 16],
    pub source_port: u16,
    pub destination: [u8; 16],
    pub destination_port: u16,
}

/// Every node must hash a flow alike: a fixed seed.
const FLOW_SEED: u64 = 0x4d65_7269_6469_616e;

impl FlowKey {
    /// The hash the Maglev table is looked up with.
    pub fn hash(&self) -> u64 {
        let mut bytes = [0u8; 37];
        bytes[0] = self.protocol;
        bytes[1..17].copy_from_slice(&self.source);
        bytes[17..19].copy_from_slice(&self.source_port.to_be_bytes());
        bytes[19..35].copy_from_slice(&self.destination);
        bytes[35..37].copy_from_slice(&self.destination_port.to_be_bytes());
        xxh64(&bytes, FLOW_SEED)
    }
}

/// Tracked flows and the backend (its stable id) each was given.
#[derive(Debug)]
pub struct ConnTrack {
    flows: FlowTable<FlowKey, Box<str>>,
}

impl ConnTrack {
    pub fn new(idle_timeout: Duration, capacity: usize) -> ConnTrack {
        ConnTrack {
            flows: FlowTable::new(capacity, idle_timeout),
        }
    }

    /// The backend (index into `backends`) for a packet or connection of `key` at `now`:
    /// the tracked one while it is in `backends` and `healthy`, else the table's choice.
    /// `table` must have been built from `backends`, over the healthy ones.
    pub fn choose(
        &mut self,
        key: FlowKey,
        now: Duration,
        backends: &[Backend<'_>],
        table: &MaglevTable,
        healthy: &dyn Fn(&str) -> bool,
    ) -> Option<usize> {
        if let Some(slot) = self.flows.find(&key) {
            let kept = self.flows.get(slot).and_then(|(_, backend)| {
                let backend: &str = backend;
                healthy(backend)
                    .then(|| backends.iter().position(|b| b.id == backend))
                    .flatten()
            });
            if let Some(index) = kept {
                self.flows.touch(slot, now);
                return Some(index);
            }
        }
        let index = table.get(key.hash())?;
        let backend = backends.get(index)?.id;
        self.flows.insert(key, backend.into(), now);
        Some(index)
    }

    /// Forgets flows idle for longer than the timeout.
    pub fn expire(&mut self, now: Duration) {
        self.flows.expire(now);
    }

    /// Forgets a flow (its connection closed).
    pub fn close(&mut self, key: &FlowKey) {
        if let Some(slot) = self.flows.find(key) {
            self.flows.remove(slot);
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Whether `key` is tracked.
    pub fn tracks(&self, key: &FlowKey) -> bool {
        self.flows.find(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            protocol: 6,
            source: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1],
            source_port: port,
            destination: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10],
            destination_port: 443,
        }
    }

    fn backends(ids: &[&'static str]) -> Vec<Backend<'static>> {
        ids.iter().map(|id| Backend { id, weight: 1 }).collect()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_flow_keeps_its_backend_when_the_table_changes_while_the_backend_is_healthy() {
        let mut track = ConnTrack::new(Duration::from_secs(60), 1000);
        let three = backends(&["a:80", "b:80", "c:80"]);
        let table = MaglevTable::build(&three, 251).unwrap();
        let all = |_: &str| true;
        let first: Vec<&str> = (0..50)
            .map(|p| three[track.choose(key(p), SECOND, &three, &table, &all).unwrap()].id)
            .collect();
        // A fourth backend joins: the table moves some flows, the tracked ones stay.
        let four = backends(&["a:80", "b:80", "c:80", "d:80"]);
        let grown = MaglevTable::build(&four, 251).unwrap();
        for (p, was) in (0..50).zip(&first) {
            let now = four[track
                .choose(key(p), SECOND * 2, &four, &grown, &all)
                .unwrap()]
            .id;
            assert_eq!(now, *was);
        }
        // A new flow follows the new table.
        let fresh = key(9999);
        let index = track
            .choose(fresh, SECOND * 2, &four, &grown, &all)
            .unwrap();
        assert_eq!(Some(index), grown.get(fresh.hash()));
    }

    #[test]
    fn a_flow_whose_backend_failed_or_left_is_hashed_again() {
        let mut track = ConnTrack::new(Duration::from_secs(60), 1000);
        let two = backends(&["a:80", "b:80"]);
        let table = MaglevTable::build(&two, 251).unwrap();
        let p = (0..100)
            .find(|p| table.get(key(*p).hash()) == Some(0))
            .unwrap();
        assert_eq!(
            track.choose(key(p), SECOND, &two, &table, &|_| true),
            Some(0)
        );
        // a:80 fails its health checks: the table is rebuilt without it, the flow moves.
        let only_b = backends(&["b:80"]);
        let b_table = MaglevTable::build(&only_b, 251).unwrap();
        let healthy = |id: &str| id != "a:80";
        assert_eq!(
            track.choose(key(p), SECOND * 2, &only_b, &b_table, &healthy),
            Some(0)
        );
        // a:80 comes back: the flow stays on b:80, which is still healthy.
        assert_eq!(
            track.choose(key(p), SECOND * 3, &two, &table, &|_| true),
            Some(1)
        );
    }

    #[test]
    fn idle_flows_expire_and_a_full_table_forgets_the_least_recently_used() {
        let mut track = ConnTrack::new(Duration::from_secs(10), 2);
        let two = backends(&["a:80", "b:80"]);
        let table = MaglevTable::build(&two, 251).unwrap();
        let all = |_: &str| true;
        track.choose(key(1), SECOND, &two, &table, &all);
        track.choose(key(2), SECOND * 2, &two, &table, &all);
        track.choose(key(1), SECOND * 3, &two, &table, &all);
        // Full: the third flow takes the place of flow 2, the least recently used.
        assert!(track
            .choose(key(3), SECOND * 4, &two, &table, &all)
            .is_some());
        assert_eq!(track.len(), 2);
        assert!(track.tracks(&key(1)) && track.tracks(&key(3)) && !track.tracks(&key(2)));
        track.choose(key(1), SECOND * 8, &two, &table, &all);
        track.expire(SECOND * 15);
        assert_eq!(track.len(), 1, "flow 3 idled out, flow 1 was seen at 8 s");
        track.close(&key(1));
        assert!(track.is_empty());
    }

    #[test]
    fn a_flood_of_new_flows_keeps_the_table_at_its_size() {
        let two = backends(&["a:80", "b:80"]);
        let table = MaglevTable::build(&two, 251).unwrap();
        let all = |_: &str| true;
        let mut track = ConnTrack::new(Duration::from_secs(30), 1 << 12);
        for n in 0..200_000u32 {
            let mut flow = key(n as u16);
            flow.source[0] = (n >> 16) as u8;
            let now = Duration::from_micros(u64::from(n) * 10);
            assert!(track.choose(flow, now, &two, &table, &all).is_some());
        }
        assert_eq!(track.len(), 1 << 12);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Two nodes that never share state send every new flow to the same backend.
        #[test]
        fn two_nodes_agree_on_new_flows(ports in proptest::collection::vec(any::<u16>(), 1..40)) {
            let list = backends(&["a:80", "b:80", "c:80"]);
            let mut reversed = list.clone();
            reversed.reverse();
            let (t1, t2) = (
                MaglevTable::build(&list, 4093).unwrap(),
                MaglevTable::build(&reversed, 4093).unwrap(),
            );
            let (mut n1, mut n2) = (ConnTrack::new(SECOND * 60, 100), ConnTrack::new(SECOND * 60, 100));
            for p in ports {
                let a = n1.choose(key(p), SECOND, &list, &t1, &|_| true).map(|i| list[i].id);
                let b = n2.choose(key(p), SECOND, &reversed, &t2, &|_| true).map(|i| reversed[i].id);
                prop_assert_eq!(a, b);
            }
        }
    }
}
