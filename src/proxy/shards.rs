//! Metrics sharded per worker, as Envoy's per-worker stats are: a request adds to its own
//! worker's slot (a cache line of atomics no other worker writes), so the request path takes
//! no lock and no cache line moves between cores; a scrape sums the slots. Counters and the
//! upstream latency histogram are built on [`Shards`].

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Slots per sharded metric: the number of workers, set once at start (1 until then).
static SHARD_COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The calling thread's slot: its worker index, 0 on other threads.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Gives sharded metrics created from now on one slot per worker.
pub fn set_shard_count(workers: usize) {
    SHARD_COUNT.store(workers.max(1), Ordering::Relaxed);
}

/// Makes the calling thread write to slot `index` (a worker, at its start).
pub fn enter_shard(index: usize) {
    SHARD.with(|shard| shard.set(index));
}

/// One slot: `N` counters on cache lines of their own.
#[repr(align(64))]
#[derive(Debug)]
struct Slot<const N: usize>([AtomicU64; N]);

/// `N` counters, one slot per worker.
#[derive(Debug)]
pub struct Shards<const N: usize> {
    slots: Box<[Slot<N>]>,
}

impl<const N: usize> Default for Shards<N> {
    fn default() -> Shards<N> {
        let count = SHARD_COUNT.load(Ordering::Relaxed);
        Shards {
            slots: (0..count)
                .map(|_| Slot(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl<const N: usize> Shards<N> {
    /// Adds `value` to counter `index` in the calling worker's slot.
    fn add(&self, index: usize, value: u64) {
        let shard = SHARD.with(Cell::get) % self.slots.len();
        if let Some(counter) = self.slots[shard].0.get(index) {
            counter.fetch_add(value, Ordering::Relaxed);
        }
    }

    /// Counter `index` summed over the slots.
    fn sum(&self, index: usize) -> u64 {
        self.slots
            .iter()
            .filter_map(|slot| slot.0.get(index))
            .fold(0u64, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

/// A Prometheus counter sharded per worker.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<Shards<1>>);

impl Counter {
    pub fn inc(&self) {
        self.0.add(0, 1);
    }

    pub fn get(&self) -> u64 {
        self.0.sum(0)
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of the latency buckets: 0.5 ms doubling to about 16 s, then +Inf.
const BOUNDS_SECONDS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096, 8.192, 16.384,
];
/// Bucket counts (the last one +Inf), then the sum in nanoseconds.
const LATENCY_SLOTS: usize = BOUNDS_SECONDS.len() + 2;
const SUM: usize = LATENCY_SLOTS - 1;

/// A latency histogram sharded per worker (a Prometheus histogram in seconds).
#[derive(Clone, Debug, Default)]
pub struct Latency(Arc<Shards<LATENCY_SLOTS>>);

impl Latency {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BOUNDS_SECONDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BOUNDS_SECONDS.len());
        self.0.add(bucket, 1);
        self.0
            .add(SUM, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// (sum in seconds, count, non-cumulative (upper bound, count) per bucket).
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = BOUNDS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .enumerate()
            .map(|(i, bound)| (bound, self.0.sum(i)))
            .collect();
        let count = buckets.iter().fold(0u64, |n, (_, c)| n.wrapping_add(*c));
        let sum = Duration::from_nanos(self.0.sum(SUM)).as_secs_f64();
        (sum, count, buckets)
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_write_their_own_slots_and_a_scrape_sums_them() {
        let shards = Shards::<2> {
            slots: (0..3)
                .map(|_| Slot(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        };
        std::thread::scope(|scope| {
            for worker in 0..3 {
                let shards = &shards;
                scope.spawn(move || {
                    enter_shard(worker);
                    for _ in 0..1000 {
                        shards.add(1, 2);
                    }
                });
            }
        });
        assert_eq!(shards.sum(1), 6000);
        assert_eq!(shards.sum(0), 0);
        for slot in shards.slots.iter() {
            assert_eq!(slot.0[1].load(Ordering::Relaxed), 2000);
        }
    }

    #[test]
    fn latency_falls_in_the_first_bucket_that_holds_it() {
        let latency = Latency::default();
        latency.observe(Duration::from_micros(400));
        latency.observe(Duration::from_micros(500));
        latency.observe(Duration::from_millis(3));
        latency.observe(Duration::from_secs(60));
        let (sum, count, buckets) = latency.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 60.0039).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.0005, 2));
        assert_eq!(buckets[2], (0.002, 0));
        assert_eq!(buckets[3], (0.004, 1));
        assert_eq!(buckets.last().map(|b| b.1), Some(1));
    }

    #[test]
    fn prometheus_text_has_the_sums_and_cumulative_buckets() {
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = Counter::default();
        let latency = Latency::default();
        registry.register("requests", "Requests", requests.clone());
        registry.register("latency_seconds", "Latency", latency.clone());
        requests.inc();
        requests.inc();
        latency.observe(Duration::from_micros(300));
        latency.observe(Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "requests_total 2",
            "latency_seconds_sum 0.0013",
            "latency_seconds_count 2",
            "latency_seconds_bucket{le=\"0.0005\"} 1",
            "latency_seconds_bucket{le=\"0.001\"} 2",
            "latency_seconds_bucket{le=\"+Inf\"} 2",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
