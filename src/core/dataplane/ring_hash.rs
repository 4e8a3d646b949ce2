//! Ring-hash (Ketama) consistent hashing, as Envoy's RING_HASH clusters do it: every backend
//! puts entries on a ring of 64-bit hashes, as many as its share of the weight asks for, and a
//! request goes to the first entry at or after its own hash. The ring depends only on the
//! backends' ids and weights, so the same key finds the same backend on every proxy, and a
//! backend that leaves only hands its own arcs to its neighbours.

use xxhash_rust::xxh64::xxh64;

use super::maglev::Backend;

/// Envoy's defaults for `minimum_ring_size` and `maximum_ring_size`.
pub const DEFAULT_MINIMUM_SIZE: u64 = 1024;
pub const DEFAULT_MAXIMUM_SIZE: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("minimum_ring_size {minimum} is above maximum_ring_size {maximum}")]
    MinimumAboveMaximum { minimum: u64, maximum: u64 },
    #[error("maximum_ring_size {0} is above the limit of {DEFAULT_MAXIMUM_SIZE}")]
    TooLarge(u64),
}

/// A built ring: (hash, backend index) sorted by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    entries: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds the ring for `backends`: the lightest gets at least one entry per
    /// `minimum / (its share of the weight)`, within `maximum` entries in all.
    pub fn build(backends: &[Backend<'_>], minimum: u64, maximum: u64) -> Result<Ring, RingError> {
        if minimum > maximum {
            return Err(RingError::MinimumAboveMaximum { minimum, maximum });
        }
        if maximum > DEFAULT_MAXIMUM_SIZE {
            return Err(RingError::TooLarge(maximum));
        }
        let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
        let lightest = backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| f64::from(b.weight) / total)
            .fold(f64::INFINITY, f64::min);
        if !lightest.is_finite() {
            return Ok(Ring {
                entries: Vec::new(),
            });
        }
        // Scale so the lightest backend gets about `minimum`·share entries, capped at `maximum`.
        let scale = ((minimum as f64 * lightest).ceil() / lightest).min(maximum as f64);
        let mut entries = Vec::new();
        let mut wanted = 0.0;
        for (index, backend) in backends.iter().enumerate() {
            if backend.weight == 0 {
                continue;
            }
            wanted += scale * f64::from(backend.weight) / total;
            let mut placed = 0u64;
            // Each backend places entries until the running total catches up, so rounding
            // never adds up to more than `scale` entries.
            while (entries.len() as f64) < wanted.floor() || placed == 0 {
                let key = format!("{}_{placed}", backend.id);
                entries.push((
                    xxh64(key.as_bytes(), 0),
                    u32::try_from(index).unwrap_or(u32::MAX),
                ));
                placed += 1;
            }
        }
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| backends[a.1 as usize].id.cmp(backends[b.1 as usize].id))
        });
        Ok(Ring { entries })
    }

    /// The backend (its index in the slice the ring was built from) for a request's hash.
    pub fn get(&self, hash: u64) -> Option<usize> {
        let at = self.entries.partition_point(|(h, _)| *h < hash);
        let (_, backend) = self.entries.get(at).or_else(|| self.entries.first())?;
        usize::try_from(*backend).ok()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn shares(ring: &Ring, n: usize, samples: u64) -> Vec<f64> {
        let mut counts = vec![0u64; n];
        for i in 0..samples {
            let hash = xxh64(&i.to_le_bytes(), 7);
            counts[ring.get(hash).unwrap()] += 1;
        }
        counts.iter().map(|c| *c as f64 / samples as f64).collect()
    }

    #[test]
    fn weights_set_the_shares_and_sizes_follow_envoy() {
        let ids = ids(3);
        let backends: Vec<Backend<'_>> = ids
            .iter()
            .zip([1, 1, 2])
            .map(|(id, weight)| Backend { id, weight })
            .collect();
        let ring = Ring::build(&backends, 1024, DEFAULT_MAXIMUM_SIZE).unwrap();
        // The lightest (a quarter) gets 256 entries; the ring holds 1024 in all.
        assert_eq!(ring.len(), 1024);
        let got = shares(&ring, 3, 40_000);
        for (share, want) in got.iter().zip([0.25, 0.25, 0.5]) {
            assert!((share - want).abs() < 0.05, "{got:?}");
        }
        // A very light backend would need a huge ring: `maximum` caps it.
        let skewed = [
            Backend { id: "a", weight: 1 },
            Backend {
                id: "b",
                weight: 1000,
            },
        ];
        let capped = Ring::build(&skewed, 100, 200).unwrap();
        assert_eq!(capped.len(), 200);
    }

    #[test]
    fn the_same_key_finds_the_same_backend_whatever_the_order() {
        let ids = ids(5);
        let list: Vec<Backend<'_>> = ids.iter().map(|id| Backend { id, weight: 1 }).collect();
        let mut reversed = list.clone();
        reversed.reverse();
        let a = Ring::build(&list, 1024, DEFAULT_MAXIMUM_SIZE).unwrap();
        let b = Ring::build(&reversed, 1024, DEFAULT_MAXIMUM_SIZE).unwrap();
        for i in 0..2000u64 {
            let hash = xxh64(&i.to_le_bytes(), 0);
            assert_eq!(
                list[a.get(hash).unwrap()].id,
                reversed[b.get(hash).unwrap()].id
            );
        }
    }

    #[test]
    fn a_backend_leaving_moves_only_its_own_keys() {
        let ids = ids(5);
        let before: Vec<Backend<'_>> = ids.iter().map(|id| Backend { id, weight: 1 }).collect();
        let after: Vec<Backend<'_>> = before[1..].to_vec();
        let a = Ring::build(&before, 1024, DEFAULT_MAXIMUM_SIZE).unwrap();
        let b = Ring::build(&after, 1024, DEFAULT_MAXIMUM_SIZE).unwrap();
        let mut moved = 0;
        for i in 0..5000u64 {
            let hash = xxh64(&i.to_le_bytes(), 0);
            let was = before[a.get(hash).unwrap()].id;
            let now = after[b.get(hash).unwrap()].id;
            if was != ids[0] && was != now {
                moved += 1;
            }
        }
        // The survivors' shares grow, so each places more entries and those take arcs from
        // the others too (as in Envoy, whose ring is rescaled alike): about a tenth of the
        // keys move besides the departed backend's fifth.
        assert!(moved < 750, "{moved}");
    }

    #[test]
    fn bad_sizes_are_refused_and_empty_rings_answer_nothing() {
        assert!(Ring::build(&[], 10, 5).is_err());
        assert!(Ring::build(&[], 10, DEFAULT_MAXIMUM_SIZE + 1).is_err());
        assert_eq!(
            Ring::build(&[], 1024, DEFAULT_MAXIMUM_SIZE).unwrap().get(1),
            None
        );
    }
}
