//! Prometheus metrics (prometheus-client), rendered by the admin server at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub connected_proxies: Family<ModeLabel, Gauge>,
    pub pushes: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    pub push_seconds: Histogram,
    pub convergence_seconds: Histogram,
    pub config_generation: Gauge,
    pub config_errors: Gauge,
    pub config_syncs: Counter,
    pub certs_issued: Family<ReasonLabel, Counter>,
    pub certs_held: Gauge,
    pub cert_expiry_horizon_seconds: Gauge,
    pub sds_denied: Counter,
    pub rest_polls: Family<RestPollLabel, Counter>,
}

/// One REST poll's type and answer (`not_modified`, `changed`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestPollLabel {
    pub r#type: &'static str,
    pub answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meridian");
        let connected_proxies = Family::<ModeLabel, Gauge>::default();
        registry.register(
            "xds_connected_proxies",
            "ADS streams currently open, by mode (sotw, delta)",
            connected_proxies.clone(),
        );
        let pushes = Family::<TypeLabel, Counter>::default();
        registry.register("xds_pushes", "xDS responses sent, by type", pushes.clone());
        let nacks = Family::<TypeLabel, Counter>::default();
        registry.register(
            "xds_nacks",
            "xDS responses rejected by proxies, by type",
            nacks.clone(),
        );
        let push_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "xds_push_duration_seconds",
            "Time to translate and enqueue one stream's push after a config change",
            push_seconds.clone(),
        );
        let convergence_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "xds_convergence_seconds",
            "Time from a config snapshot being published to a proxy ACKing it",
            convergence_seconds.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the latest published config snapshot",
            config_generation.clone(),
        );
        let config_errors = Gauge::default();
        registry.register(
            "config_errors",
            "Input files or objects currently rejected (last good config is serving)",
            config_errors.clone(),
        );
        let config_syncs = Counter::default();
        registry.register(
            "config_syncs",
            "Times the configuration directory was read (on a change, and every 5 s)",
            config_syncs.clone(),
        );
        let certs_issued = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "certs_issued",
            "Gateway certificates issued by the embedded CA, by reason (new, rotate)",
            certs_issued.clone(),
        );
        let certs_held = Gauge::default();
        registry.register(
            "certs_held",
            "Gateway certificates currently issued and served",
            certs_held.clone(),
        );
        let cert_expiry_horizon_seconds = Gauge::default();
        registry.register(
            "cert_expiry_horizon_seconds",
            "Seconds until the earliest issued certificate expires",
            cert_expiry_horizon_seconds.clone(),
        );
        let sds_denied = Counter::default();
        registry.register(
            "sds_denied",
            "SDS requests for secrets the requesting gateway's listeners do not reference",
            sds_denied.clone(),
        );
        let rest_polls = Family::<RestPollLabel, Counter>::default();
        registry.register(
            "xds_rest_polls",
            "REST xDS polls, by type and answer (not_modified, changed, error)",
            rest_polls.clone(),
        );
        Metrics {
            registry,
            rest_polls,
            certs_issued,
            certs_held,
            cert_expiry_horizon_seconds,
            sds_denied,
            connected_proxies,
            pushes,
            nacks,
            push_seconds,
            convergence_seconds,
            config_generation,
            config_errors,
            config_syncs,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
