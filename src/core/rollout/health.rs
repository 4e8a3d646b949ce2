//! The health signal of a rollout: the share of requests a cluster's gateways forwarded to an
//! AccessPoint's route destinations that failed, over a sliding window. The gateways report
//! their upstream traffic over Envoy's load reporting service (LRS); this module only counts.

use std::collections::BTreeSet;

use crate::api::rollout::{
    HealthThreshold, DEFAULT_HEALTH_MIN_REQUESTS, DEFAULT_HEALTH_WINDOW_SECONDS,
};
use crate::core::observed::UpstreamLoad;

/// `spec.rollout.health` with its defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub max_error_percent: u32,
    pub min_requests: u64,
    pub window_ms: u64,
}

impl From<&HealthThreshold> for HealthCheck {
    fn from(threshold: &HealthThreshold) -> HealthCheck {
        HealthCheck {
            max_error_percent: threshold.max_error_percent,
            min_requests: u64::from(
                threshold
                    .min_requests
                    .unwrap_or(DEFAULT_HEALTH_MIN_REQUESTS),
            ),
            window_ms: u64::from(
                threshold
                    .window_seconds
                    .unwrap_or(DEFAULT_HEALTH_WINDOW_SECONDS),
            ) * 1000,
        }
    }
}

/// The host an Envoy cluster built by Meridian sends to.
pub fn upstream_host(upstream: &str) -> Option<&str> {
    upstream.strip_prefix("outbound|")?.splitn(3, '|').nth(2)
}

/// Why the traffic to `hosts` in `loads` is unhealthy, counting reports since
/// `max(since_ms, now_ms - window)`; `None` when it is healthy or too little was seen.
pub fn verdict<'a>(
    check: &HealthCheck,
    loads: impl IntoIterator<Item = &'a UpstreamLoad>,
    hosts: &BTreeSet<String>,
    since_ms: u64,
    now_ms: u64,
) -> Option<String> {
    let from = since_ms.max(now_ms.saturating_sub(check.window_ms));
    let (requests, errors) = loads
        .into_iter()
        .filter(|l| l.at_ms >= from && l.at_ms <= now_ms)
        .filter(|l| upstream_host(&l.upstream).is_some_and(|h| hosts.contains(h)))
        .fold((0u64, 0u64), |(r, e), l| {
            (r.saturating_add(l.requests), e.saturating_add(l.errors))
        });
    if requests == 0 || requests < check.min_requests {
        return None;
    }
    // errors / requests > max% without floating point.
    if u128::from(errors) * 100 <= u128::from(check.max_error_percent) * u128::from(requests) {
        return None;
    }
    Some(format!(
        "{errors} of {requests} requests to its destinations failed in the last {}s ({}%, limit {}%)",
        now_ms.saturating_sub(from).div_ceil(1000),
        u128::from(errors) * 100 / u128::from(requests),
        check.max_error_percent
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "outbound|80||web.shop.svc.cluster.local";

    fn load(upstream: &str, at_ms: u64, requests: u64, errors: u64) -> UpstreamLoad {
        UpstreamLoad {
            upstream: upstream.into(),
            at_ms,
            requests,
            errors,
        }
    }

    fn check() -> HealthCheck {
        HealthCheck::from(&HealthThreshold {
            max_error_percent: 10,
            min_requests: Some(20),
            window_seconds: Some(30),
        })
    }

    fn hosts() -> BTreeSet<String> {
        ["web.shop.svc.cluster.local".to_owned()].into()
    }

    #[test]
    fn names_the_failures_over_the_threshold_in_the_window() {
        let loads = [
            // Before the window: a burst of errors long gone.
            load(WEB, 10_000, 100, 100),
            load(WEB, 95_000, 20, 2),
            load(WEB, 100_000, 20, 6),
        ];
        let why = verdict(&check(), &loads, &hosts(), 0, 100_000).unwrap();
        assert_eq!(
            why,
            "8 of 40 requests to its destinations failed in the last 30s (20%, limit 10%)"
        );
    }

    #[test]
    fn at_the_limit_too_few_requests_or_other_hosts_are_healthy() {
        let at_limit = [load(WEB, 100_000, 40, 4)];
        assert_eq!(verdict(&check(), &at_limit, &hosts(), 0, 100_000), None);
        let few = [load(WEB, 100_000, 19, 19)];
        assert_eq!(verdict(&check(), &few, &hosts(), 0, 100_000), None);
        let elsewhere = [
            load("outbound|80||db.shop.svc.cluster.local", 100_000, 50, 50),
            load("meridian_xds", 100_000, 50, 50),
        ];
        assert_eq!(verdict(&check(), &elsewhere, &hosts(), 0, 100_000), None);
    }

    #[test]
    fn counts_nothing_from_before_the_stage_started() {
        let loads = [load(WEB, 90_000, 50, 50), load(WEB, 99_000, 50, 0)];
        assert_eq!(verdict(&check(), &loads, &hosts(), 95_000, 100_000), None);
        assert!(verdict(&check(), &loads, &hosts(), 80_000, 100_000).is_some());
    }

    #[test]
    fn reads_the_host_of_subset_clusters() {
        assert_eq!(
            upstream_host("outbound|8080|v2|web.shop.svc.cluster.local"),
            Some("web.shop.svc.cluster.local")
        );
        assert_eq!(upstream_host("meridian_xds"), None);
    }
}
