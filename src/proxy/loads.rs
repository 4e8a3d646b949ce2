//! Requests per cluster since the last load report: counted on the request path (each
//! config resolves its clusters' counters once, so a request adds to an atomic) and taken by
//! the load-report stream ([`super::lrs`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamLocalityStats};

/// Requests per cluster since the last report; counted lock-free on the request path.
#[derive(Default)]
pub struct Loads {
    clusters: ArcSwap<HashMap<String, Arc<Counts>>>,
}

/// One cluster's counts since the last report.
#[derive(Debug, Default)]
pub struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    /// Counts one finished request; a 5xx or no response at all is a failure.
    pub fn record(&self, failed: bool) {
        let counter = if failed { &self.failed } else { &self.ok };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Loads {
    /// The counts of `cluster`, resolved once per config so requests only add to atomics.
    pub fn cluster(&self, cluster: &str) -> Arc<Counts> {
        if let Some(counts) = self.clusters.load().get(cluster) {
            return counts.clone();
        }
        let counts = Arc::new(Counts::default());
        self.clusters.rcu(|clusters| {
            let mut clusters = HashMap::clone(clusters);
            clusters
                .entry(cluster.to_owned())
                .or_insert_with(|| counts.clone());
            clusters
        });
        self.clusters.load().get(cluster).cloned().unwrap_or(counts)
    }

    /// What was counted since the last call, per cluster (zero ones left out).
    pub(super) fn take(&self, interval: Duration) -> Vec<ClusterStats> {
        let mut stats = Vec::new();
        for (cluster, counts) in self.clusters.load().iter() {
            let ok = counts.ok.swap(0, Ordering::Relaxed);
            let failed = counts.failed.swap(0, Ordering::Relaxed);
            if ok + failed == 0 {
                continue;
            }
            stats.push(ClusterStats {
                cluster_name: cluster.clone(),
                upstream_locality_stats: vec![UpstreamLocalityStats {
                    total_successful_requests: ok,
                    total_error_requests: failed,
                    total_issued_requests: ok + failed,
                    ..Default::default()
                }],
                load_report_interval: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: interval.as_secs() as i64,
                    nanos: interval.subsec_nanos() as i32,
                }),
                ..Default::default()
            });
        }
        stats
    }
}
