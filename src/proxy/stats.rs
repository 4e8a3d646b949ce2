//! The proxy's Prometheus metrics, rendered at `/stats/prometheus` on the admin listener:
//! responses by code class, upstream requests, failures and latency per cluster, open
//! connections, and config updates applied or rejected.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter as SharedCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::shards::{Counter, Latency};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeClass {
    pub code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Upstream {
    pub cluster: String,
    pub code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamFailure {
    pub cluster: String,
    /// `connect_failure`, `reset` or `timeout`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Update {
    pub r#type: &'static str,
    /// `ack` or `nack`.
    pub result: &'static str,
}

pub struct Stats {
    pub registry: Registry,
    pub downstream_responses: Family<CodeClass, Counter>,
    /// `downstream_responses` by code class 1xx…5xx, resolved once.
    downstream_by_class: [Counter; 5],
    pub downstream_connections: Gauge,
    pub downstream_connections_idle: Gauge,
    pub upstream_responses: Family<Upstream, Counter>,
    pub upstream_failures: Family<UpstreamFailure, Counter>,
    pub upstream_seconds: Family<ClusterLabel, Latency>,
    pub config_updates: Family<Update, SharedCounter>,
}

impl Default for Stats {
    fn default() -> Stats {
        let mut registry = Registry::with_prefix("meridian_proxy");
        let downstream_responses = Family::<CodeClass, Counter>::default();
        registry.register(
            "downstream_responses",
            "Responses sent to clients, by code class (2xx, 3xx, 4xx, 5xx)",
            downstream_responses.clone(),
        );
        let downstream_connections = Gauge::default();
        registry.register(
            "downstream_connections",
            "Client connections open",
            downstream_connections.clone(),
        );
        let downstream_connections_idle = Gauge::default();
        registry.register(
            "downstream_connections_idle",
            "HTTP/1 client connections idle with their HTTP state released (only the socket kept)",
            downstream_connections_idle.clone(),
        );
        let upstream_responses = Family::<Upstream, Counter>::default();
        registry.register(
            "upstream_responses",
            "Responses from upstreams, by cluster and code class (each attempt counted)",
            upstream_responses.clone(),
        );
        let upstream_failures = Family::<UpstreamFailure, Counter>::default();
        registry.register(
            "upstream_failures",
            "Upstream attempts that got no response, by cluster and reason",
            upstream_failures.clone(),
        );
        let upstream_seconds = Family::<ClusterLabel, Latency>::default();
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending an upstream request to its response headers, by cluster",
            upstream_seconds.clone(),
        );
        let config_updates = Family::<Update, SharedCounter>::default();
        registry.register(
            "config_updates",
            "xDS responses applied (ack) or rejected at least in part (nack), by type",
            config_updates.clone(),
        );
        let downstream_by_class = CLASSES.map(|code_class| {
            downstream_responses
                .get_or_create(&CodeClass { code_class })
                .clone()
        });
        Stats {
            registry,
            downstream_by_class,
            downstream_responses,
            downstream_connections,
            downstream_connections_idle,
            upstream_responses,
            upstream_failures,
            upstream_seconds,
            config_updates,
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`CLASSES`] of a status.
fn class_index(status: http::StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// `2xx` … `5xx` of a status.
pub fn code_class(status: http::StatusCode) -> &'static str {
    CLASSES[class_index(status)]
}

/// Why an upstream attempt got no response.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    ConnectFailure = 0,
    Reset = 1,
    Timeout = 2,
}

const FAILURES: [&str; 3] = ["connect_failure", "reset", "timeout"];

/// One cluster's metrics, resolved when a config is built, so a request only adds to atomics
/// (no label lookups, no allocation).
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    responses: [Counter; 5],
    failures: [Counter; 3],
    seconds: Latency,
}

impl ClusterMetrics {
    pub fn response(&self, status: http::StatusCode, took: std::time::Duration) {
        self.responses[class_index(status)].inc();
        self.seconds.observe(took);
    }

    pub fn failure(&self, failure: Failure) {
        self.failures[failure as usize].inc();
    }
}

impl Stats {
    /// Counts a response sent to a client.
    pub fn downstream_response(&self, status: http::StatusCode) {
        self.downstream_by_class[class_index(status)].inc();
    }

    /// The metrics of `cluster`.
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let responses = CLASSES.map(|code_class| {
            self.upstream_responses
                .get_or_create(&Upstream {
                    cluster: cluster.to_owned(),
                    code_class,
                })
                .clone()
        });
        let failures = FAILURES.map(|reason| {
            self.upstream_failures
                .get_or_create(&UpstreamFailure {
                    cluster: cluster.to_owned(),
                    reason,
                })
                .clone()
        });
        let seconds = self
            .upstream_seconds
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_owned(),
            })
            .clone();
        ClusterMetrics {
            responses,
            failures,
            seconds,
        }
    }
}
