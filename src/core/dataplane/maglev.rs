//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size in which
//! each backend owns a share of entries proportional to its weight. The table depends only on
//! the backends' ids and weights — not on their order, nor on anything local — so every node
//! that sees the same backends builds the same table and sends a flow to the same backend; and
//! a backend that leaves gives up its own entries while the others keep nearly all of theirs.
//!
//! Used by `meridian proxy` for Maglev clusters and by the L4 balancer for its VIPs.

use xxhash_rust::xxh64::xxh64;

/// Envoy's default table size, and the L4 balancer's.
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;

/// The largest table Envoy accepts.
pub const MAX_TABLE_SIZE: u64 = 5_000_011;

/// Seeds of the two hashes that give each backend its place in the table (offset, then skip).
const OFFSET_SEED: u64 = 0;
const SKIP_SEED: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("table size {0} is not a prime number (65537 is the default)")]
    NotPrime(u64),
    #[error("table size {size} is outside 2 ..= {MAX_TABLE_SIZE}")]
    OutOfRange { size: u64 },
    #[error("table size {size} is smaller than the {backends} backends it must hold")]
    TooSmall { size: u64, backends: usize },
}

/// A backend as the table sees it: a stable id (the same on every node) and a weight.
#[derive(Debug, Clone, Copy)]
pub struct Backend<'a> {
    pub id: &'a str,
    pub weight: u32,
}

/// A built table: each entry is the index of a backend in the slice it was built from. The
/// default table is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaglevTable {
    entries: Vec<u32>,
}

impl MaglevTable {
    /// Builds the table of `size` entries for `backends` (those of weight 0 get none). With no
    /// backend of weight above 0 the table is empty and [`MaglevTable::get`] answers `None`.
    pub fn build(backends: &[Backend<'_>], size: u64) -> Result<MaglevTable, MaglevError> {
        check_size(size, backends.len())?;
        // The order backends are filled in must not depend on the caller's order.
        let mut order: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].weight > 0)
            .collect();
        order.sort_by(|&a, &b| backends[a].id.cmp(backends[b].id).then(a.cmp(&b)));
        if order.is_empty() {
            return Ok(MaglevTable {
                entries: Vec::new(),
            });
        }
        let max_weight = order
            .iter()
            .map(|&i| u64::from(backends[i].weight))
            .max()
            .unwrap_or(1);
        let mut walks: Vec<Walk> = order
            .iter()
            .map(|&i| Walk::new(backends[i].id, size))
            .collect();
        let mut placed = vec![0u64; order.len()];
        let mut entries = vec![u32::MAX; usize::try_from(size).unwrap_or(usize::MAX)];
        // Which entries are filled, as bits: probes (most of the work) stay within a bitmap
        // small enough for the L1 cache instead of the 4-byte entries.
        // A power-of-two length, so `& mask` keeps every index in bounds without a check.
        let mut taken = vec![0u64; entries.len().div_ceil(64).next_power_of_two()];
        let mask = taken.len() - 1;
        let mut filled: u64 = 0;
        // Round n lets a backend of weight w hold up to n·w/max_weight entries, so the heaviest
        // place one entry per round and the others in proportion.
        let mut round: u64 = 0;
        // Equal weights (the common case): every backend places one entry per round.
        let equal = order
            .iter()
            .all(|&i| u64::from(backends[i].weight) == max_weight);
        while filled < size {
            round += 1;
            for (k, &backend) in order.iter().enumerate() {
                let weight = u64::from(backends[backend].weight);
                // placed ≤ size ≤ 5,000,011 and weights fit in 32 bits: no overflow in u64.
                if !equal && placed[k] * max_weight >= round * weight {
                    continue;
                }
                // The walk's position stays in a register while it probes.
                let walk = &mut walks[k];
                let mut walked = *walk;
                let slot = loop {
                    let candidate = walked.next(size);
                    let (word, bit) = ((candidate / 64) & mask, 1u64 << (candidate % 64));
                    if taken[word] & bit == 0 {
                        taken[word] |= bit;
                        break candidate;
                    }
                };
                *walk = walked;
                entries[slot] = u32::try_from(backend).unwrap_or(u32::MAX);
                placed[k] += 1;
                filled += 1;
                if filled == size {
                    break;
                }
            }
        }
        Ok(MaglevTable { entries })
    }

    /// The backend (its index in the slice the table was built from) for a flow's hash.
    pub fn get(&self, hash: u64) -> Option<usize> {
        let len = u64::try_from(self.entries.len()).ok().filter(|l| *l > 0)?;
        let index = usize::try_from(hash % len).ok()?;
        usize::try_from(self.entries[index]).ok()
    }

    /// How many entries each backend holds, by index (for tests and status).
    pub fn shares(&self, backends: usize) -> Vec<u64> {
        let mut shares = vec![0u64; backends];
        for &entry in &self.entries {
            if let Some(share) = usize::try_from(entry).ok().and_then(|e| shares.get_mut(e)) {
                *share += 1;
            }
        }
        shares
    }
}

/// Refuses table sizes Envoy refuses: not prime, out of range, or too small for the backends.
pub fn check_size(size: u64, backends: usize) -> Result<(), MaglevError> {
    if !(2..=MAX_TABLE_SIZE).contains(&size) {
        return Err(MaglevError::OutOfRange { size });
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    if u64::try_from(backends).map_or(true, |b| b > size) {
        return Err(MaglevError::TooSmall { size, backends });
    }
    Ok(())
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A backend's preference list over the table: offset, offset + skip, offset + 2·skip, … (mod
/// size). As the size is prime and 0 < skip < size, it visits every entry once.
#[derive(Clone, Copy)]
struct Walk {
    next: u64,
    skip: u64,
}

impl Walk {
    fn new(id: &str, size: u64) -> Walk {
        Walk {
            next: xxh64(id.as_bytes(), OFFSET_SEED) % size,
            skip: xxh64(id.as_bytes(), SKIP_SEED) % (size - 1) + 1,
        }
    }

    fn next(&mut self, size: u64) -> usize {
        let at = self.next;
        // Both are below `size`, so one subtraction wraps it (no division on the hot loop).
        self.next += self.skip;
        if self.next >= size {
            self.next -= size;
        }
        usize::try_from(at).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn backends(ids: &[String], weight: u32) -> Vec<Backend<'_>> {
        ids.iter().map(|id| Backend { id, weight }).collect()
    }

    /// The textbook population loop (one probe at a time, entries as the record of what is
    /// taken), for checking the fast one against.
    fn reference(backends: &[Backend<'_>], size: u64) -> Vec<u32> {
        let mut order: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].weight > 0)
            .collect();
        order.sort_by(|&a, &b| backends[a].id.cmp(backends[b].id).then(a.cmp(&b)));
        let max_weight = order
            .iter()
            .map(|&i| u64::from(backends[i].weight))
            .max()
            .unwrap_or(1);
        let mut walks: Vec<Walk> = order
            .iter()
            .map(|&i| Walk::new(backends[i].id, size))
            .collect();
        let mut placed = vec![0u64; order.len()];
        let mut entries = vec![u32::MAX; size as usize];
        let (mut filled, mut round) = (0u64, 0u64);
        while filled < size && !order.is_empty() {
            round += 1;
            for (k, &backend) in order.iter().enumerate() {
                if placed[k] * max_weight >= round * u64::from(backends[backend].weight) {
                    continue;
                }
                let slot = loop {
                    let candidate = walks[k].next(size);
                    if entries[candidate] == u32::MAX {
                        break candidate;
                    }
                };
                entries[slot] = backend as u32;
                placed[k] += 1;
                filled += 1;
                if filled == size {
                    break;
                }
            }
        }
        entries
    }

    #[test]
    fn the_fast_build_places_every_entry_as_the_textbook_loop_does() {
        let names = ids(40);
        for size in [251u64, 4093, 65_537] {
            for weights in [[1u32, 1, 1, 1], [3, 1, 2, 5], [7, 0, 1, 1]] {
                let backends: Vec<Backend<'_>> = names
                    .iter()
                    .enumerate()
                    .map(|(i, id)| Backend {
                        id,
                        weight: weights[i % 4],
                    })
                    .collect();
                let table = MaglevTable::build(&backends, size).unwrap();
                assert!(
                    table.entries == reference(&backends, size),
                    "size {size}, weights {weights:?}"
                );
            }
        }
    }

    #[test]
    fn sizes_envoy_refuses_are_refused() {
        assert_eq!(check_size(65_536, 3), Err(MaglevError::NotPrime(65_536)));
        assert_eq!(check_size(1, 0), Err(MaglevError::OutOfRange { size: 1 }));
        assert_eq!(
            check_size(5, 6),
            Err(MaglevError::TooSmall {
                size: 5,
                backends: 6
            })
        );
        assert!(check_size(DEFAULT_TABLE_SIZE, 1000).is_ok());
        assert!(check_size(MAX_TABLE_SIZE, 1).is_ok());
    }

    #[test]
    fn equal_weights_share_the_table_evenly() {
        let ids = ids(10);
        let table = MaglevTable::build(&backends(&ids, 1), DEFAULT_TABLE_SIZE).unwrap();
        for share in table.shares(10) {
            // The paper's bound for equal weights: within a few percent of size / n.
            assert!((6400..=6700).contains(&share), "{share}");
        }
    }

    #[test]
    fn weights_set_the_shares() {
        let ids = ids(3);
        let weighted: Vec<Backend<'_>> = ids
            .iter()
            .zip([1, 2, 5])
            .map(|(id, weight)| Backend { id, weight })
            .collect();
        let table = MaglevTable::build(&weighted, 65_537).unwrap();
        let shares = table.shares(3);
        let total: u64 = shares.iter().sum();
        assert_eq!(total, 65_537);
        for (share, weight) in shares.iter().zip([1.0, 2.0, 5.0]) {
            let want = weight / 8.0;
            let got = *share as f64 / total as f64;
            assert!((got - want).abs() < 0.01, "{shares:?}");
        }
    }

    #[test]
    fn zero_weights_get_nothing_and_no_backends_give_no_answer() {
        let ids = ids(2);
        let mut list = backends(&ids, 1);
        list[0].weight = 0;
        let table = MaglevTable::build(&list, 251).unwrap();
        assert_eq!(table.shares(2), vec![0, 251]);
        let empty = MaglevTable::build(&backends(&ids, 0), 251).unwrap();
        assert_eq!(empty.get(42), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Every node builds the same table from the same backends, whatever their order.
        #[test]
        fn the_table_does_not_depend_on_the_order_of_backends(
            n in 1usize..20,
            rotation in 0usize..20,
            seed in any::<u64>(),
        ) {
            let ids = ids(n);
            let weights: Vec<u32> = (0..n).map(|i| 1 + ((seed >> (i % 60)) & 3) as u32).collect();
            let list: Vec<Backend<'_>> =
                ids.iter().zip(&weights).map(|(id, &weight)| Backend { id, weight }).collect();
            let mut rotated = list.clone();
            rotated.rotate_left(rotation % n);
            let a = MaglevTable::build(&list, 4093).unwrap();
            let b = MaglevTable::build(&rotated, 4093).unwrap();
            for hash in (0..4093u64).map(|h| h.wrapping_mul(seed | 1)) {
                let from_a = a.get(hash).map(|i| list[i].id);
                let from_b = b.get(hash).map(|i| rotated[i].id);
                prop_assert_eq!(from_a, from_b);
            }
        }

        /// A backend that leaves moves its own entries and few others: the rest keep theirs.
        #[test]
        fn removing_a_backend_moves_little_else(n in 3usize..30, gone in 0usize..30) {
            let ids = ids(n);
            let before_list = backends(&ids, 1);
            let gone = gone % n;
            let after_ids: Vec<String> =
                ids.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, id)| id.clone()).collect();
            let after_list = backends(&after_ids, 1);
            let before = MaglevTable::build(&before_list, DEFAULT_TABLE_SIZE).unwrap();
            let after = MaglevTable::build(&after_list, DEFAULT_TABLE_SIZE).unwrap();
            let mut moved_elsewhere = 0u64;
            for hash in 0..DEFAULT_TABLE_SIZE {
                let was = before.get(hash).map(|i| before_list[i].id);
                let now = after.get(hash).map(|i| after_list[i].id);
                if was != Some(ids[gone].as_str()) && was != now {
                    moved_elsewhere += 1;
                }
            }
            // The paper measures a few percent of disruption beyond the departed share.
            let share = DEFAULT_TABLE_SIZE / n as u64;
            prop_assert!(moved_elsewhere < share.max(DEFAULT_TABLE_SIZE / 20), "{moved_elsewhere} of {DEFAULT_TABLE_SIZE}");
        }
    }
}
