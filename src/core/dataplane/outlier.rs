//! Outlier detection, as Envoy's consecutive-error detectors do it: an endpoint that answers
//! N 5xx in a row (or N gateway errors in a row, when enforced) is ejected from balancing for
//! the base ejection time × the number of times it was ejected (at most `max_ejection_time`),
//! unless that would eject more than `max_ejection_percent` of the cluster (so with Envoy's
//! default of 10 %, a cluster of fewer than ten endpoints ejects none). Failures to connect, resets and timeouts count as 5xx and gateway errors
//! (Envoy's default, `split_external_local_origin_errors: false`).
//!
//! Every `interval`, Envoy's success-rate and failure-percentage detectors look at what each
//! endpoint answered since the last: with enough endpoints of enough requests, an endpoint
//! whose success rate is below the mean by more than `success_rate_stdev_factor` / 1000
//! standard deviations, or whose failures reach `failure_percentage_threshold` %, is ejected
//! the same way ([`interval_outliers`]). Enforcement is all or nothing: 0 or 100 %.
//!
//! A sans-IO state machine: the caller passes the time (any monotonic clock, paused in tests),
//! reports outcomes with [`OutlierDetector::record`] and calls [`OutlierDetector::tick`] every
//! `interval`; both say when the set of ejected endpoints changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;

use super::{refuse_leftovers, CompileError};

/// Envoy's defaults.
const DEFAULT_CONSECUTIVE: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
const DEFAULT_SUCCESS_RATE: SuccessRate = SuccessRate {
    minimum_hosts: 5,
    request_volume: 100,
    stdev_factor: 1900,
};
const DEFAULT_FAILURE_PERCENTAGE: FailurePercentage = FailurePercentage {
    minimum_hosts: 5,
    request_volume: 50,
    threshold: 85,
};

/// Envoy's success-rate detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuccessRate {
    /// Endpoints with `request_volume` requests in the interval needed to judge any.
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Standard deviations below the mean that eject, in thousandths.
    pub stdev_factor: u32,
}

/// Envoy's failure-percentage detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailurePercentage {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Failures, in percent of the interval's requests, that eject.
    pub threshold: u32,
}

/// A cluster's outlier detection, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// 5xx in a row that eject; `None` when not enforced (or 0).
    pub consecutive_5xx: Option<u32>,
    /// 502/503/504 in a row that eject; `None` unless enforced.
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
    /// `None` when not enforced (Envoy enforces it unless told 0).
    pub success_rate: Option<SuccessRate>,
    /// `None` when not enforced (Envoy's default).
    pub failure_percentage: Option<FailurePercentage>,
}

impl OutlierPolicy {
    /// Compiles a cluster's `outlier_detection`; fields Meridian never sets (success-rate and
    /// failure-percentage detectors' tuning and the like) are refused by name.
    pub fn compile(od: &OutlierDetection, resource: &str) -> Result<OutlierPolicy, CompileError> {
        let mut rest = od.clone();
        let value = |v: Option<envoy_types::pb::google::protobuf::UInt32Value>| v.map(|v| v.value);
        let duration = |d: Option<envoy_types::pb::google::protobuf::Duration>, default| {
            d.map_or(default, |d| {
                Duration::new(
                    u64::try_from(d.seconds).unwrap_or(0),
                    u32::try_from(d.nanos).unwrap_or(0),
                )
            })
        };
        let enforcing_5xx = value(rest.enforcing_consecutive_5xx.take()).unwrap_or(100);
        let consecutive_5xx = value(rest.consecutive_5xx.take()).unwrap_or(DEFAULT_CONSECUTIVE);
        let enforcing_gateway =
            value(rest.enforcing_consecutive_gateway_failure.take()).unwrap_or(0);
        let consecutive_gateway =
            value(rest.consecutive_gateway_failure.take()).unwrap_or(DEFAULT_CONSECUTIVE);
        let enforcing_success_rate = value(rest.enforcing_success_rate.take()).unwrap_or(100);
        let enforcing_failure_percentage =
            value(rest.enforcing_failure_percentage.take()).unwrap_or(0);
        let success_rate = SuccessRate {
            minimum_hosts: value(rest.success_rate_minimum_hosts.take())
                .unwrap_or(DEFAULT_SUCCESS_RATE.minimum_hosts),
            request_volume: value(rest.success_rate_request_volume.take())
                .unwrap_or(DEFAULT_SUCCESS_RATE.request_volume),
            stdev_factor: value(rest.success_rate_stdev_factor.take())
                .unwrap_or(DEFAULT_SUCCESS_RATE.stdev_factor),
        };
        let failure_percentage = FailurePercentage {
            minimum_hosts: value(rest.failure_percentage_minimum_hosts.take())
                .unwrap_or(DEFAULT_FAILURE_PERCENTAGE.minimum_hosts),
            request_volume: value(rest.failure_percentage_request_volume.take())
                .unwrap_or(DEFAULT_FAILURE_PERCENTAGE.request_volume),
            threshold: value(rest.failure_percentage_threshold.take())
                .unwrap_or(DEFAULT_FAILURE_PERCENTAGE.threshold),
        };
        if failure_percentage.threshold > 100 {
            return Err(CompileError::new(
                resource,
                "outlier_detection.failure_percentage_threshold",
                "a percentage: 0 to 100",
            ));
        }
        for (field, enforcing) in [
            ("enforcing_consecutive_5xx", enforcing_5xx),
            ("enforcing_consecutive_gateway_failure", enforcing_gateway),
            ("enforcing_success_rate", enforcing_success_rate),
            ("enforcing_failure_percentage", enforcing_failure_percentage),
        ] {
            if enforcing != 0 && enforcing != 100 {
                return Err(CompileError::new(
                    resource,
                    format!("outlier_detection.{field}"),
                    "only 0 and 100 are supported",
                ));
            }
        }
        let policy = OutlierPolicy {
            consecutive_5xx: (enforcing_5xx == 100 && consecutive_5xx > 0)
                .then_some(consecutive_5xx),
            consecutive_gateway: (enforcing_gateway == 100 && consecutive_gateway > 0)
                .then_some(consecutive_gateway),
            interval: duration(rest.interval.take(), DEFAULT_INTERVAL)
                .max(Duration::from_millis(1)),
            base_ejection: duration(rest.base_ejection_time.take(), DEFAULT_BASE_EJECTION),
            max_ejection: duration(rest.max_ejection_time.take(), DEFAULT_MAX_EJECTION),
            max_ejection_percent: value(rest.max_ejection_percent.take())
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT)
                .min(100),
            success_rate: (enforcing_success_rate == 100).then_some(success_rate),
            failure_percentage: (enforcing_failure_percentage == 100).then_some(failure_percentage),
        };
        refuse_leftovers(&rest, resource, "outlier_detection")?;
        Ok(policy)
    }
}

/// What an upstream attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No response: connect failure, reset or timeout.
    LocalFailure,
}

#[derive(Clone, Debug, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// When its ejection ends.
    ejected_until: Option<Duration>,
    times_ejected: u32,
    /// This interval's attempts and failures (5xx and local failures).
    requests: u64,
    failures: u64,
}

/// The outlier state of one cluster's endpoints, by endpoint id (`host:port`).
#[derive(Clone, Debug)]
pub struct OutlierDetector {
    policy: OutlierPolicy,
    hosts: BTreeMap<String, Host>,
    last_tick: Duration,
}

impl OutlierDetector {
    pub fn new(policy: OutlierPolicy) -> OutlierDetector {
        OutlierDetector {
            policy,
            hosts: BTreeMap::new(),
            last_tick: Duration::ZERO,
        }
    }

    pub fn policy(&self) -> &OutlierPolicy {
        &self.policy
    }

    /// Keeps the state of `endpoints` (an EDS update), forgets the others; a new policy applies
    /// from now on.
    pub fn update(&mut self, policy: OutlierPolicy, endpoints: &BTreeSet<String>) {
        self.policy = policy;
        self.hosts.retain(|id, _| endpoints.contains(id));
        for id in endpoints {
            self.hosts.entry(id.clone()).or_default();
        }
    }

    /// Records an attempt's outcome on `endpoint`; `true` when this ejected it.
    pub fn record(&mut self, endpoint: &str, outcome: Outcome, now: Duration) -> bool {
        let total = self.hosts.len();
        let ejected = self.ejected_count();
        let policy = self.policy.clone();
        let Some(host) = self.hosts.get_mut(endpoint) else {
            return false;
        };
        let (server_error, gateway_error) = match outcome {
            Outcome::Status(status) => ((500..600).contains(&status), matches!(status, 502..=504)),
            Outcome::LocalFailure => (true, true),
        };
        host.requests = host.requests.saturating_add(1);
        host.failures = host.failures.saturating_add(u64::from(server_error));
        host.consecutive_5xx = if server_error {
            host.consecutive_5xx.saturating_add(1)
        } else {
            0
        };
        host.consecutive_gateway = if gateway_error {
            host.consecutive_gateway.saturating_add(1)
        } else {
            0
        };
        if host.ejected_until.is_some() {
            return false;
        }
        let tripped = policy
            .consecutive_5xx
            .is_some_and(|n| host.consecutive_5xx >= n)
            || policy
                .consecutive_gateway
                .is_some_and(|n| host.consecutive_gateway >= n);
        if !tripped {
            return false;
        }
        // Within max_ejection_percent of the cluster (Envoy 1.40 without always_eject_one_host).
        let allowed = (ejected + 1).saturating_mul(100)
            <= total.saturating_mul(policy.max_ejection_percent as usize);
        if !allowed {
            return false;
        }
        eject(host, &policy, now);
        true
    }

    /// The interval's work: brings back endpoints whose ejection ended, and lowers the
    /// ejection count of endpoints that stayed in; `true` when an endpoint came back.
    pub fn tick(&mut self, now: Duration) -> bool {
        let mut changed = false;
        for host in self.hosts.values_mut() {
            match host.ejected_until {
                Some(until) if until <= now => {
                    host.ejected_until = None;
                    changed = true;
                }
                Some(_) => {}
                None => host.times_ejected = host.times_ejected.saturating_sub(1),
            }
        }
        let counts: Vec<(&str, u64, u64)> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.ejected_until.is_none())
            .map(|(id, h)| (id.as_str(), h.requests, h.failures))
            .collect();
        let outliers: Vec<String> = interval_outliers(&self.policy, &counts)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let total = self.hosts.len();
        for id in outliers {
            let ejected = self.ejected_count();
            let allowed = (ejected + 1).saturating_mul(100)
                <= total.saturating_mul(self.policy.max_ejection_percent as usize);
            if !allowed {
                break;
            }
            let policy = self.policy.clone();
            if let Some(host) = self.hosts.get_mut(&id) {
                eject(host, &policy, now);
                changed = true;
            }
        }
        for host in self.hosts.values_mut() {
            host.requests = 0;
            host.failures = 0;
        }
        changed
    }

    /// [`OutlierDetector::tick`] once an interval has passed since the last.
    pub fn tick_if_due(&mut self, now: Duration) -> bool {
        if now.saturating_sub(self.last_tick) < self.policy.interval {
            return false;
        }
        self.last_tick = now;
        self.tick(now)
    }

    pub fn is_ejected(&self, endpoint: &str) -> bool {
        self.hosts
            .get(endpoint)
            .is_some_and(|h| h.ejected_until.is_some())
    }

    /// The ejected endpoints' ids.
    pub fn ejected(&self) -> BTreeSet<String> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.ejected_until.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn ejected_count(&self) -> usize {
        self.hosts
            .values()
            .filter(|h| h.ejected_until.is_some())
            .count()
    }
}

/// Ejects `host` for the base time × the times it was ejected (at most the maximum).
fn eject(host: &mut Host, policy: &OutlierPolicy, now: Duration) {
    host.times_ejected = host.times_ejected.saturating_add(1);
    let time = policy
        .base_ejection
        .saturating_mul(host.times_ejected)
        .min(policy.max_ejection.max(policy.base_ejection));
    host.ejected_until = Some(now.saturating_add(time));
    host.consecutive_5xx = 0;
    host.consecutive_gateway = 0;
}

/// The endpoints the interval detectors eject, from each one's (id, requests, failures) in the
/// interval: success rate below mean − factor × standard deviation (population), or failures
/// at the failure-percentage threshold, each judged only with enough endpoints of enough
/// requests. In id order, success-rate outliers first.
pub fn interval_outliers<'a>(
    policy: &OutlierPolicy,
    counts: &[(&'a str, u64, u64)],
) -> Vec<&'a str> {
    let rate = |requests: u64, failures: u64| {
        100.0 * (requests.saturating_sub(failures)) as f64 / requests.max(1) as f64
    };
    let mut out: Vec<&str> = Vec::new();
    if let Some(sr) = policy.success_rate {
        let judged: Vec<(&str, f64)> = counts
            .iter()
            .filter(|(_, requests, _)| *requests >= u64::from(sr.request_volume))
            .map(|(id, requests, failures)| (*id, rate(*requests, *failures)))
            .collect();
        if !judged.is_empty() && judged.len() >= sr.minimum_hosts as usize {
            let n = judged.len() as f64;
            let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
            let variance = judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
            let threshold = mean - f64::from(sr.stdev_factor) / 1000.0 * variance.sqrt();
            out.extend(
                judged
                    .iter()
                    .filter(|(_, r)| *r < threshold)
                    .map(|(id, _)| *id),
            );
        }
    }
    if let Some(fp) = policy.failure_percentage {
        let judged: Vec<(&str, f64)> = counts
            .iter()
            .filter(|(_, requests, _)| *requests >= u64::from(fp.request_volume))
            .map(|(id, requests, failures)| (*id, 100.0 - rate(*requests, *failures)))
            .collect();
        if !judged.is_empty() && judged.len() >= fp.minimum_hosts as usize {
            for (id, failed) in judged {
                if failed >= f64::from(fp.threshold) && !out.contains(&id) {
                    out.push(id);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn policy(consecutive: u32, max_percent: u32) -> OutlierPolicy {
        OutlierPolicy::compile(
            &OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: consecutive }),
                max_ejection_percent: Some(UInt32Value { value: max_percent }),
                ..Default::default()
            },
            "Cluster c",
        )
        .unwrap()
    }

    fn detector(policy: OutlierPolicy, hosts: &[&str]) -> OutlierDetector {
        let mut detector = OutlierDetector::new(policy.clone());
        detector.update(policy, &hosts.iter().map(|h| h.to_string()).collect());
        detector
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn consecutive_5xx_eject_for_the_base_time_then_longer_each_time() {
        let mut d = detector(policy(3, 100), &["a:80", "b:80"]);
        assert!(!d.record("a:80", Outcome::Status(503), S(0)));
        assert!(!d.record("a:80", Outcome::LocalFailure, S(0)));
        // A success in between starts the count again.
        assert!(!d.record("a:80", Outcome::Status(200), S(0)));
        assert!(!d.record("a:80", Outcome::Status(500), S(0)));
        assert!(!d.record("a:80", Outcome::Status(500), S(0)));
        assert!(d.record("a:80", Outcome::Status(500), S(1)));
        assert!(d.is_ejected("a:80"));
        // 30 s (Envoy's default base), checked at interval ticks.
        assert!(!d.tick(S(30)));
        assert!(d.tick(S(31)));
        assert!(!d.is_ejected("a:80"));
        // Ejected again at once: twice the base time.
        for _ in 0..3 {
            d.record("a:80", Outcome::Status(500), S(32));
        }
        assert!(d.is_ejected("a:80"));
        assert!(!d.tick(S(91)));
        assert!(d.tick(S(92)));
    }

    #[test]
    fn ticks_come_once_an_interval() {
        let mut d = detector(policy(1, 100), &["a:80"]);
        assert!(d.record("a:80", Outcome::Status(500), S(0)));
        // The 10 s interval: nothing before it; the ejection ends at the first tick after 30 s.
        assert!(!d.tick_if_due(S(5)));
        assert!(!d.tick_if_due(S(10))); // a tick, too early to end the ejection
        assert!(!d.tick_if_due(S(29))); // a tick, still too early
        assert!(!d.tick_if_due(S(31))); // no tick: 2 s since the last
        assert!(d.is_ejected("a:80"));
        assert!(d.tick_if_due(S(39)));
        assert!(!d.is_ejected("a:80"));
    }

    #[test]
    fn max_ejection_percent_caps_ejections() {
        // 10 % of three endpoints: none may go (the conformance suite saw Envoy 1.40 agree).
        let mut few = detector(policy(1, 10), &["a:80", "b:80", "c:80"]);
        assert!(!few.record("a:80", Outcome::Status(500), S(0)));
        let mut d = detector(policy(1, 50), &["a:80", "b:80", "c:80", "d:80"]);
        assert!(d.record("a:80", Outcome::Status(500), S(0)));
        assert!(d.record("b:80", Outcome::Status(500), S(0)));
        assert!(!d.record("c:80", Outcome::Status(500), S(0)));
        assert_eq!(d.ejected().len(), 2);
        let mut all = detector(policy(1, 100), &["a:80", "b:80"]);
        assert!(all.record("a:80", Outcome::Status(500), S(0)));
        assert!(all.record("b:80", Outcome::Status(500), S(0)));
    }

    #[test]
    fn gateway_errors_eject_only_when_enforced_and_4xx_never() {
        let enforced = OutlierPolicy::compile(
            &OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: 0 }),
                consecutive_gateway_failure: Some(UInt32Value { value: 2 }),
                enforcing_consecutive_gateway_failure: Some(UInt32Value { value: 100 }),
                max_ejection_percent: Some(UInt32Value { value: 100 }),
                ..Default::default()
            },
            "Cluster c",
        )
        .unwrap();
        assert_eq!(enforced.consecutive_5xx, None);
        let mut d = detector(enforced, &["a:80"]);
        assert!(!d.record("a:80", Outcome::Status(500), S(0)));
        assert!(!d.record("a:80", Outcome::Status(502), S(0)));
        assert!(d.record("a:80", Outcome::Status(504), S(0)));
        let mut d = detector(policy(1, 100), &["a:80"]);
        assert!(!d.record("a:80", Outcome::Status(404), S(0)));
        // Gateway errors are not enforced by default.
        let default = policy(5, 100);
        assert_eq!(default.consecutive_gateway, None);
    }

    #[test]
    fn endpoints_that_leave_are_forgotten_and_unknown_ones_ignored() {
        let mut d = detector(policy(1, 100), &["a:80", "b:80"]);
        assert!(d.record("a:80", Outcome::Status(500), S(0)));
        let p = d.policy().clone();
        d.update(p, &BTreeSet::from(["b:80".to_string()]));
        assert!(d.ejected().is_empty());
        assert!(!d.record("z:80", Outcome::Status(500), S(0)));
    }

    #[test]
    fn unsupported_tuning_is_refused_by_name() {
        let error = OutlierPolicy::compile(
            &OutlierDetection {
                split_external_local_origin_errors: true,
                ..Default::default()
            },
            "Cluster c",
        )
        .unwrap_err();
        assert_eq!(error.field, "outlier_detection");
        assert!(
            error.message.contains("splitExternalLocalOriginErrors"),
            "{error}"
        );
        let error = OutlierPolicy::compile(
            &OutlierDetection {
                enforcing_consecutive_5xx: Some(UInt32Value { value: 50 }),
                ..Default::default()
            },
            "Cluster c",
        )
        .unwrap_err();
        assert_eq!(error.field, "outlier_detection.enforcing_consecutive_5xx");
        let error = OutlierPolicy::compile(
            &OutlierDetection {
                enforcing_success_rate: Some(UInt32Value { value: 50 }),
                ..Default::default()
            },
            "Cluster c",
        )
        .unwrap_err();
        assert_eq!(error.field, "outlier_detection.enforcing_success_rate");
    }

    /// The interval detectors with Envoy's defaults (success rate enforced unless set to 0,
    /// failure percentage only when enforced) and `max_ejection_percent` 100.
    fn interval_policy(failure_percentage: bool) -> OutlierPolicy {
        OutlierPolicy::compile(
            &OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: 0 }),
                max_ejection_percent: Some(UInt32Value { value: 100 }),
                enforcing_failure_percentage: failure_percentage
                    .then_some(UInt32Value { value: 100 }),
                enforcing_success_rate: failure_percentage.then_some(UInt32Value { value: 0 }),
                ..Default::default()
            },
            "Cluster c",
        )
        .unwrap()
    }

    /// `requests` to each of `hosts` in one interval, `failing` of them 5xx on the first host.
    fn interval(d: &mut OutlierDetector, hosts: &[&str], requests: u64, failing: u64) {
        for (i, host) in hosts.iter().enumerate() {
            for n in 0..requests {
                let status = if i == 0 && n < failing { 503 } else { 200 };
                d.record(host, Outcome::Status(status), S(0));
            }
        }
    }

    const FIVE: [&str; 5] = ["a:80", "b:80", "c:80", "d:80", "e:80"];

    #[test]
    fn success_rate_ejects_an_endpoint_far_below_the_others_at_the_interval() {
        let policy = interval_policy(false);
        assert_eq!(policy.success_rate, Some(DEFAULT_SUCCESS_RATE));
        let mut d = detector(policy, &FIVE);
        // 70 % against 100 %: mean 94 %, standard deviation 12: below 94 − 1.9 × 12.
        interval(&mut d, &FIVE, 100, 30);
        assert!(!d.is_ejected("a:80"), "only at the interval");
        assert!(d.tick(S(10)));
        assert_eq!(d.ejected(), BTreeSet::from(["a:80".to_owned()]));
        // The counts start again each interval: nothing more to eject.
        assert!(!d.tick(S(20)));
    }

    #[test]
    fn success_rate_needs_enough_endpoints_of_enough_requests() {
        let mut d = detector(interval_policy(false), &FIVE);
        interval(&mut d, &FIVE, 99, 60);
        assert!(!d.tick(S(10)), "99 requests each: below the request volume");
        let four = &FIVE[..4];
        let mut d = detector(interval_policy(false), four);
        interval(&mut d, four, 100, 60);
        assert!(!d.tick(S(10)), "four endpoints: below the minimum of five");
    }

    #[test]
    fn failure_percentage_ejects_at_its_threshold_when_enforced() {
        let mut d = detector(interval_policy(true), &FIVE);
        assert_eq!(d.policy().success_rate, None);
        interval(&mut d, &FIVE, 50, 43);
        assert!(d.tick(S(10)), "86 % failures, at least 85");
        assert!(d.is_ejected("a:80"));
        let mut d = detector(interval_policy(true), &FIVE);
        interval(&mut d, &FIVE, 50, 42);
        assert!(!d.tick(S(10)), "84 %");
    }

    #[test]
    fn interval_ejections_respect_max_ejection_percent() {
        let mut policy = interval_policy(true);
        policy.max_ejection_percent = 20;
        let mut d = detector(policy, &FIVE);
        for host in ["a:80", "b:80"] {
            for _ in 0..50 {
                d.record(host, Outcome::LocalFailure, S(0));
            }
        }
        for host in &FIVE[2..] {
            for _ in 0..50 {
                d.record(host, Outcome::Status(200), S(0));
            }
        }
        assert!(d.tick(S(10)));
        assert_eq!(d.ejected().len(), 1, "20 % of five");
    }

    #[test]
    fn success_rate_switched_off_is_accepted() {
        let policy = OutlierPolicy::compile(
            &OutlierDetection {
                enforcing_success_rate: Some(UInt32Value { value: 0 }),
                enforcing_failure_percentage: Some(UInt32Value { value: 0 }),
                ..Default::default()
            },
            "Cluster c",
        )
        .unwrap();
        assert_eq!(policy.consecutive_5xx, Some(DEFAULT_CONSECUTIVE));
    }
}
