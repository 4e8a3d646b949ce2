//! The load reports gateways streamed over LRS ([`super::lrs`]): the last few minutes per
//! proxy, per upstream — the health signal of staged rollouts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::endpoint::v3::ClusterStats;
use tokio::sync::watch;

use crate::core::model::ObjectKey;
use crate::core::observed::UpstreamLoad;

/// How long reports are kept: the longest health window that can be counted.
pub const RETENTION: Duration = Duration::from_secs(300);

/// The reporting interval gateways are asked for, unless configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// One proxy's recent reports.
struct History {
    gateway: ObjectKey,
    loads: VecDeque<UpstreamLoad>,
}

/// Recent load reports by node id.
pub struct LoadRegistry {
    interval: Duration,
    reports: Mutex<HashMap<String, History>>,
    changes: watch::Sender<u64>,
}

impl LoadRegistry {
    /// The reporting interval gateways are asked for.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn new(interval: Duration) -> LoadRegistry {
        LoadRegistry {
            interval,
            reports: Mutex::default(),
            changes: watch::channel(0).0,
        }
    }

    /// Ticks whenever a report arrives.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Records one report of `node` (serving `gateway`) received at `at_ms`. Upstreams that
    /// completed no request are left out; so are reports older than [`RETENTION`].
    pub fn record(&self, node: &str, gateway: &ObjectKey, stats: &[ClusterStats], at_ms: u64) {
        let loads = stats.iter().filter_map(|cluster| {
            let (successes, errors) =
                cluster
                    .upstream_locality_stats
                    .iter()
                    .fold((0u64, 0u64), |(s, e), l| {
                        // Counts come from the proxy: they may be anything.
                        (
                            s.saturating_add(l.total_successful_requests),
                            e.saturating_add(l.total_error_requests),
                        )
                    });
            let requests = successes.saturating_add(errors);
            (requests > 0).then(|| UpstreamLoad {
                upstream: cluster.cluster_name.clone(),
                at_ms,
                requests,
                errors,
            })
        });
        let oldest = at_ms.saturating_sub(RETENTION.as_millis() as u64);
        let mut reports = lock(&self.reports);
        let history = reports.entry(node.to_owned()).or_insert_with(|| History {
            gateway: gateway.clone(),
            loads: VecDeque::new(),
        });
        if &history.gateway != gateway {
            history.gateway = gateway.clone();
            history.loads.clear();
        }
        history.loads.extend(loads);
        reports.retain(|_, h| {
            while h.loads.front().is_some_and(|l| l.at_ms < oldest) {
                h.loads.pop_front();
            }
            !h.loads.is_empty()
        });
        drop(reports);
        self.changes.send_modify(|n| *n += 1);
    }

    /// What `node` reported while serving `gateway` about the upstreams `keep` accepts,
    /// oldest first.
    pub fn recent(
        &self,
        node: &str,
        gateway: &ObjectKey,
        keep: impl Fn(&UpstreamLoad) -> bool,
    ) -> Vec<UpstreamLoad> {
        lock(&self.reports)
            .get(node)
            .filter(|h| &h.gateway == gateway)
            .map(|h| h.loads.iter().filter(|l| keep(l)).cloned().collect())
            .unwrap_or_default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::UpstreamLocalityStats;

    fn stats(cluster: &str, localities: &[(u64, u64)]) -> ClusterStats {
        ClusterStats {
            cluster_name: cluster.to_owned(),
            upstream_locality_stats: localities
                .iter()
                .map(|(ok, failed)| UpstreamLocalityStats {
                    total_successful_requests: *ok,
                    total_error_requests: *failed,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_busy_upstreams_per_gateway_for_the_retention() {
        let registry = LoadRegistry::new(DEFAULT_INTERVAL);
        let public = ObjectKey::new("shop", "public");
        let web = "outbound|80||web.shop.svc.cluster.local";
        registry.record(
            "gw-1",
            &public,
            &[stats(web, &[(7, 1), (2, 0)]), stats("idle", &[(0, 0)])],
            1_000,
        );
        assert_eq!(
            registry.recent("gw-1", &public, |_| true),
            [UpstreamLoad {
                upstream: web.to_owned(),
                at_ms: 1_000,
                requests: 10,
                errors: 1
            }]
        );
        // Another gateway's claim to the same node id sees nothing of it.
        assert!(registry
            .recent("gw-1", &ObjectKey::new("shop", "other"), |_| true)
            .is_empty());
        let later = 1_000 + RETENTION.as_millis() as u64 + 1;
        registry.record("gw-2", &public, &[stats(web, &[(1, 0)])], later);
        assert!(registry.recent("gw-1", &public, |_| true).is_empty());
        assert_eq!(registry.recent("gw-2", &public, |_| true).len(), 1);
        assert!(registry
            .recent("gw-2", &public, |l| l.upstream != web)
            .is_empty());
    }
}
