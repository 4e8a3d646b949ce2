//! Active health checking as Envoy does it, minus the I/O: a check per gateway every
//! interval (a TCP connect, or an HTTP request whose status must be expected), a gateway
//! failed after `unhealthy_threshold` misses in a row — or at its very first check — and back
//! after `healthy_threshold` passes in a row. A gateway new to the cluster serves until its
//! first check says otherwise.
//!
//! The caller runs the checks and reports each result to [`HealthTracker::record`], which says
//! when the set of failed gateways changed.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{health_check, HealthCheck};

use super::super::{refuse_leftovers_of, CompileError};
use super::{duration, PROGRAM};

/// Envoy's `expected_statuses` default: 200 only.
const DEFAULT_EXPECTED: Range<u16> = 200..201;

/// What is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect that succeeds within the timeout.
    Tcp,
    /// An HTTP/1.1 GET of `path` (with `host` as its Host, else the cluster's name) answered
    /// within the timeout with a status in one of `expected`.
    Http {
        host: String,
        path: String,
        expected: Vec<Range<u16>>,
    },
}

/// A cluster's health check, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckPlan {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub kind: CheckKind,
}

impl HealthCheckPlan {
    /// Compiles a cluster's `health_checks[0]`. The check runs every `interval` whether or not
    /// traffic flows, so `no_traffic_interval` is accepted and not needed.
    pub fn compile(check: &HealthCheck, resource: &str) -> Result<HealthCheckPlan, CompileError> {
        const FIELD: &str = "health_checks[0]";
        let mut rest = check.clone();
        let required = |value: Option<Duration>, field: &str| {
            value.filter(|d| !d.is_zero()).ok_or_else(|| {
                CompileError::new(resource, format!("{FIELD}.{field}"), "required, above 0")
            })
        };
        let interval = required(rest.interval.take().map(duration), "interval")?;
        let timeout = required(rest.timeout.take().map(duration), "timeout")?;
        rest.no_traffic_interval = None;
        let threshold = |value: Option<u32>, field: &str| {
            value.filter(|v| *v > 0).ok_or_else(|| {
                CompileError::new(resource, format!("{FIELD}.{field}"), "required, above 0")
            })
        };
        let unhealthy_threshold = threshold(
            rest.unhealthy_threshold.take().map(|v| v.value),
            "unhealthy_threshold",
        )?;
        let healthy_threshold = threshold(
            rest.healthy_threshold.take().map(|v| v.value),
            "healthy_threshold",
        )?;
        let kind = match rest.health_checker.take() {
            Some(health_check::HealthChecker::TcpHealthCheck(tcp)) => {
                refuse_leftovers_of(PROGRAM, &tcp, resource, "health_checks[0].tcp_health_check")?;
                CheckKind::Tcp
            }
            Some(health_check::HealthChecker::HttpHealthCheck(mut http)) => {
                let host = std::mem::take(&mut http.host);
                let path = std::mem::take(&mut http.path);
                if !path.starts_with('/') {
                    return Err(CompileError::new(
                        resource,
                        "health_checks[0].http_health_check.path",
                        "an absolute path is required",
                    ));
                }
                let mut expected = Vec::new();
                for range in std::mem::take(&mut http.expected_statuses) {
                    let (Ok(start), Ok(end)) =
                        (u16::try_from(range.start), u16::try_from(range.end))
                    else {
                        return Err(CompileError::new(
                            resource,
                            "health_checks[0].http_health_check.expected_statuses",
                            "statuses are 100 ..= 599",
                        ));
                    };
                    if !(100..=600).contains(&start) || !(start..=600).contains(&end) {
                        return Err(CompileError::new(
                            resource,
                            "health_checks[0].http_health_check.expected_statuses",
                            "statuses are 100 ..= 599, start before end",
                        ));
                    }
                    expected.push(start..end);
                }
                if expected.is_empty() {
                    expected.push(DEFAULT_EXPECTED);
                }
                refuse_leftovers_of(
                    PROGRAM,
                    &http,
                    resource,
                    "health_checks[0].http_health_check",
                )?;
                CheckKind::Http {
                    host,
                    path,
                    expected,
                }
            }
            _ => {
                return Err(CompileError::new(
                    resource,
                    format!("{FIELD}.health_checker"),
                    format!("only TCP and HTTP checks are supported by {PROGRAM}"),
                ))
            }
        };
        refuse_leftovers_of(PROGRAM, &rest, resource, FIELD)?;
        Ok(HealthCheckPlan {
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
            kind,
        })
    }

    /// Whether an HTTP check's answer passes.
    pub fn expects(&self, status: u16) -> bool {
        match &self.kind {
            CheckKind::Tcp => true,
            CheckKind::Http { expected, .. } => expected.iter().any(|r| r.contains(&status)),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Gateway {
    failed: bool,
    checked: bool,
    /// Passes in a row while failed, misses in a row while not.
    streak: u32,
}

/// The active-check state of one cluster's gateways, by id (`host:port`).
#[derive(Clone, Debug)]
pub struct HealthTracker {
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    gateways: BTreeMap<String, Gateway>,
}

impl HealthTracker {
    pub fn new(plan: &HealthCheckPlan) -> HealthTracker {
        HealthTracker {
            unhealthy_threshold: plan.unhealthy_threshold,
            healthy_threshold: plan.healthy_threshold,
            gateways: BTreeMap::new(),
        }
    }

    /// Follows a new check configuration, keeping what is known of the gateways.
    pub fn retune(&mut self, plan: &HealthCheckPlan) {
        self.unhealthy_threshold = plan.unhealthy_threshold;
        self.healthy_threshold = plan.healthy_threshold;
    }

    /// The gateways are now `ids`: new ones start serving and unchecked, gone ones are
    /// forgotten. Whether the failed set changed.
    pub fn track<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> bool {
        let ids: BTreeSet<&str> = ids.into_iter().collect();
        let before = self.failed();
        self.gateways.retain(|id, _| ids.contains(id.as_str()));
        for id in ids {
            self.gateways.entry(id.to_owned()).or_default();
        }
        before != self.failed()
    }

    /// A check of `id` passed or not; whether the failed set changed.
    pub fn record(&mut self, id: &str, passed: bool) -> bool {
        let Some(gateway) = self.gateways.get_mut(id) else {
            return false;
        };
        let first = !gateway.checked;
        gateway.checked = true;
        match (gateway.failed, passed) {
            (false, true) => {
                gateway.streak = 0;
                false
            }
            (false, false) => {
                gateway.streak = gateway.streak.saturating_add(1);
                if first || gateway.streak >= self.unhealthy_threshold {
                    gateway.failed = true;
                    gateway.streak = 0;
                    return true;
                }
                false
            }
            (true, true) => {
                gateway.streak = gateway.streak.saturating_add(1);
                if gateway.streak >= self.healthy_threshold {
                    gateway.failed = false;
                    gateway.streak = 0;
                    return true;
                }
                false
            }
            (true, false) => {
                gateway.streak = 0;
                false
            }
        }
    }

    /// The gateways failed by their checks.
    pub fn failed(&self) -> BTreeSet<String> {
        self.gateways
            .iter()
            .filter(|(_, g)| g.failed)
            .map(|(id, _)| id.clone())
            .collect()
    }
}
