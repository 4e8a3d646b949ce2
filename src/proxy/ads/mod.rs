//! The proxy's ADS client (state of the world, or delta in [`delta`]): subscribes to clusters
//! and listeners, follows
//! them to endpoints and route configurations, compiles what arrives, ACKs what it applies and
//! NACKs, naming resource and field, what it cannot honour — applying the rest of the response
//! as Envoy does. When the stream fails it keeps serving and reconnects with backoff and jitter.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::bootstrap::Bootstrap;
use super::cache::ConfigCache;
use super::config::{Accepted, Config};
use super::listeners::Listeners;
use super::ProxyState;
use crate::core::dataplane::balancer::{Assignment, ClusterPlan, Discovery, Endpoint};
use crate::core::dataplane::listeners::ListenerPlan;
use crate::core::dataplane::routes::RouteTable;
use crate::core::dataplane::secrets::SecretPlan;
use crate::runtime::log_budget::{bounded, LogBudget};
use crate::runtime::pinned_tls::{self, ClientCredentials, PinnedTlsError};

mod delta;

const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LISTENERS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTES: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const SECRETS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The order resources apply in (and are cached in).
const ORDER: [&str; 5] = [CLUSTERS, ENDPOINTS, SECRETS, LISTENERS, ROUTES];

/// Backoff between reconnects: from 500 ms, doubling, to 30 s, with up to half of it as jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl From<tonic::Status> for StreamError {
    fn from(status: tonic::Status) -> StreamError {
        StreamError::Status(Box::new(status))
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum StreamError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("ADS stream: {0}")]
    Status(Box<tonic::Status>),
    #[error("mutual TLS to Meridian: {0}")]
    Tls(#[from] PinnedTlsError),
    #[error("mutual TLS to Meridian: {0}")]
    Credentials(String),
    #[error("ADS stream: the request channel closed")]
    Closed,
}

/// What is subscribed to, and the last nonce, per type.
#[derive(Default)]
struct Subscriptions {
    names: BTreeMap<&'static str, BTreeSet<String>>,
    nonces: BTreeMap<&'static str, String>,
}

/// The outcome of applying one response.
struct Applied {
    errors: Vec<String>,
    /// The type whose subscription it changed (EDS after CDS, RDS after LDS).
    follow: Vec<&'static str>,
}

pub struct AdsClient {
    pub bootstrap: Bootstrap,
    pub state: Arc<ProxyState>,
    pub listeners: Listeners,
    pub cache: Option<ConfigCache>,
}

impl AdsClient {
    /// Streams until `stopped`; each failed stream is retried after a backoff.
    pub async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut accepted = Accepted::default();
        self.serve_cache(&mut accepted).await;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let streamed = tokio::select! {
                result = self.stream(&mut accepted) => result,
                _ = crate::runtime::stopped_signal(stopped.clone()) => {
                    self.listeners.stop_all();
                    return;
                }
            };
            let error = match streamed {
                Ok(true) => {
                    backoff = FIRST_BACKOFF;
                    "the server ended the stream".to_owned()
                }
                Ok(false) => "the server ended the stream before any response".to_owned(),
                Err(error) => error.to_string(),
            };
            let jitter = backoff.mul_f64(rand::random::<f64>() / 2.0);
            let wait = backoff + jitter;
            tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "xDS stream lost; serving the last accepted config");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => {
                    self.listeners.stop_all();
                    return;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Applies the cached config, if there is one, before Meridian answers.
    async fn serve_cache(&mut self, accepted: &mut Accepted) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let responses = match cache.load() {
            Ok(responses) => responses,
            Err(error) => {
                tracing::warn!(%error, "config cache unreadable; starting without it");
                return;
            }
        };
        if responses.is_empty() {
            return;
        }
        let mut subscriptions = Subscriptions::default();
        for response in &responses {
            let Some(kind) = known(&response.type_url) else {
                continue;
            };
            let applied = self
                .apply(kind, response, accepted, &mut subscriptions)
                .await;
            if !applied.errors.is_empty() {
                tracing::warn!(r#type = kind, errors = %bounded(&applied.errors.join("; ")), "cached resources this version cannot honour are left out");
            }
            accepted
                .versions
                .insert(kind, response.version_info.clone());
        }
        self.state.config.store(Arc::new(Config::build(
            accepted,
            &self.state.stats,
            &self.state.loads,
            &self.state.config.load(),
        )));
        self.state.config_changed.notify_waiters();
        self.state.mark_cached();
        tracing::info!(
            listeners = accepted.listeners.len(),
            clusters = accepted.clusters.len(),
            "serving the cached config until Meridian answers"
        );
    }

    /// One stream, state of the world or delta as the bootstrap says; whether any response
    /// arrived on it.
    async fn stream(&mut self, accepted: &mut Accepted) -> Result<bool, StreamError> {
        if self.bootstrap.delta {
            return self.stream_delta(accepted).await;
        }
        let channel = connect(&self.bootstrap).await?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let mut subscriptions = Subscriptions::default();
        // Clusters and listeners first (wildcard); what they reference follows.
        for (kind, names) in [(CLUSTERS, BTreeSet::new()), (LISTENERS, BTreeSet::new())] {
            subscriptions.names.insert(kind, names);
            self.request(&tx, accepted, &subscriptions, kind, None)
                .await?;
        }
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut any = false;
        while let Some(response) = responses.message().await? {
            any = true;
            let kind = match known(&response.type_url) {
                Some(kind) => kind,
                None => {
                    let other = response.type_url.as_str();
                    tracing::warn!(type_url = %bounded(other), "ignoring a response of a type never asked for");
                    continue;
                }
            };
            subscriptions.nonces.insert(kind, response.nonce.clone());
            let applied = self
                .apply(kind, &response, accepted, &mut subscriptions)
                .await;
            let detail = self.settle(kind, &response.version_info, &applied, accepted);
            self.request(&tx, accepted, &subscriptions, kind, detail)
                .await?;
            for follow in applied.follow {
                self.request(&tx, accepted, &subscriptions, follow, None)
                    .await?;
            }
        }
        Ok(any)
    }

    /// After a response of `kind` is applied: counts it, records the version when all of it
    /// applied, publishes the new snapshot and caches it; returns the NACK's detail, if any.
    fn settle(
        &self,
        kind: &'static str,
        version: &str,
        applied: &Applied,
        accepted: &mut Accepted,
    ) -> Option<Status> {
        let result = if applied.errors.is_empty() {
            "ack"
        } else {
            "nack"
        };
        let update = super::stats::Update {
            r#type: short_name(kind),
            result,
        };
        self.state.stats.config_updates.get_or_create(&update).inc();
        if applied.errors.is_empty() {
            accepted.versions.insert(kind, version.to_owned());
        } else {
            tracing::warn!(r#type = kind, version = %bounded(version), errors = %bounded(&applied.errors.join("; ")), "rejected (NACK); the rest of the response is applied");
        }
        self.state.config.store(Arc::new(Config::build(
            accepted,
            &self.state.stats,
            &self.state.loads,
            &self.state.config.load(),
        )));
        self.state.config_changed.notify_waiters();
        if accepted.versions.contains_key(LISTENERS) && accepted.versions.contains_key(CLUSTERS) {
            self.state.mark_ready();
        }
        if let Some(cache) = &self.cache {
            if let Err(error) = cache.save(accepted, &ORDER) {
                static SAVE: LogBudget = LogBudget::new(2, Duration::from_secs(60));
                if let Some(suppressed) = SAVE.allow() {
                    tracing::warn!(%error, suppressed, "cannot write the config cache");
                }
            }
        }
        (!applied.errors.is_empty()).then(|| Status {
            code: tonic::Code::InvalidArgument as i32,
            message: applied.errors.join("; "),
            details: Vec::new(),
        })
    }

    /// Asks for `kind` (its current names, the version accepted, the last nonce): an ACK, a
    /// NACK with `error`, or a subscription change.
    async fn request(
        &self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        accepted: &Accepted,
        subscriptions: &Subscriptions,
        kind: &'static str,
        error: Option<Status>,
    ) -> Result<(), StreamError> {
        let request = DiscoveryRequest {
            version_info: accepted.versions.get(kind).cloned().unwrap_or_default(),
            node: Some(self.bootstrap.node.clone()),
            resource_names: subscriptions
                .names
                .get(kind)
                .map(|n| n.iter().cloned().collect())
                .unwrap_or_default(),
            type_url: kind.to_owned(),
            response_nonce: subscriptions.nonces.get(kind).cloned().unwrap_or_default(),
            error_detail: error,
            ..Default::default()
        };
        tx.send(request).await.map_err(|_| StreamError::Closed)
    }

    async fn apply(
        &mut self,
        kind: &'static str,
        response: &DiscoveryResponse,
        accepted: &mut Accepted,
        subscriptions: &mut Subscriptions,
    ) -> Applied {
        let mut errors = Vec::new();
        let follow = match kind {
            CLUSTERS => {
                let old_raw = accepted.raw.remove(CLUSTERS).unwrap_or_default();
                let (clusters, raw) = compile_whole_set(
                    &response.resources,
                    kind,
                    (&accepted.clusters, &old_raw),
                    |c: &Cluster| c.name.clone(),
                    |c| ClusterPlan::compile(c).map_err(|e| e.to_string()),
                    &mut errors,
                );
                for plan in clusters.values() {
                    if let Discovery::Dns(assignment) = &plan.discovery {
                        let resolved = resolve(assignment).await;
                        accepted.assignments.insert(plan.name.clone(), resolved);
                    }
                }
                accepted.clusters = clusters;
                accepted.raw.insert(CLUSTERS, raw);
                let eds: BTreeSet<String> = accepted
                    .clusters
                    .values()
                    .filter(|p| p.discovery == Discovery::Eds)
                    .map(|p| p.name.clone())
                    .collect();
                let dns: BTreeSet<&String> = accepted
                    .clusters
                    .values()
                    .filter(|p| matches!(p.discovery, Discovery::Dns(_)))
                    .map(|p| &p.name)
                    .collect();
                accepted
                    .assignments
                    .retain(|name, _| eds.contains(name) || dns.contains(name));
                accepted
                    .raw
                    .entry(ENDPOINTS)
                    .or_default()
                    .retain(|name, _| eds.contains(name));
                let changed = subscriptions.names.get(ENDPOINTS) != Some(&eds);
                subscriptions.names.insert(ENDPOINTS, eds);
                changed.then_some(ENDPOINTS).into_iter().collect()
            }
            ENDPOINTS => {
                compile_each(
                    &response.resources,
                    kind,
                    |cla: ClusterLoadAssignment| {
                        let resource = format!("ClusterLoadAssignment {}", cla.cluster_name);
                        Assignment::compile(&cla, &resource)
                            .map(|a| (cla.cluster_name, a))
                            .map_err(|e| e.to_string())
                    },
                    (
                        &mut accepted.assignments,
                        accepted.raw.entry(ENDPOINTS).or_default(),
                    ),
                    &mut errors,
                );
                Vec::new()
            }
            SECRETS => {
                compile_each(
                    &response.resources,
                    kind,
                    |secret: Secret| SecretPlan::compile(&secret).map_err(|e| e.to_string()),
                    (
                        &mut accepted.secrets,
                        accepted.raw.entry(SECRETS).or_default(),
                    ),
                    &mut errors,
                );
                Vec::new()
            }
            LISTENERS => {
                let old_raw = accepted.raw.remove(LISTENERS).unwrap_or_default();
                let (mut plans, mut raw) = compile_whole_set(
                    &response.resources,
                    kind,
                    (&accepted.listeners, &old_raw),
                    |l: &Listener| l.name.clone(),
                    |l| ListenerPlan::compile(l).map_err(|e| e.to_string()),
                    &mut errors,
                );
                // Binding can fail (the port is taken): the listener it replaces keeps serving.
                for (name, error) in self.listeners.reconcile(&plans, &self.state) {
                    errors.push(format!("Listener {name}: address: {error}"));
                    match (accepted.listeners.get(&name), old_raw.get(&name)) {
                        (Some(old), Some(old_any)) => {
                            raw.insert(name.clone(), old_any.clone());
                            plans.insert(name, old.clone());
                        }
                        _ => {
                            raw.remove(&name);
                            plans.remove(&name);
                        }
                    }
                }
                accepted.listeners = plans;
                accepted.raw.insert(LISTENERS, raw);
                let routes: BTreeSet<String> = accepted
                    .listeners
                    .values()
                    .flat_map(|l| l.route_configs().map(str::to_owned))
                    .collect();
                let secrets: BTreeSet<String> = accepted
                    .listeners
                    .values()
                    .flat_map(|l| l.secret_names().map(str::to_owned))
                    .collect();
                accepted.secrets.retain(|name, _| secrets.contains(name));
                accepted
                    .raw
                    .entry(SECRETS)
                    .or_default()
                    .retain(|name, _| secrets.contains(name));
                accepted.routes.retain(|name, _| routes.contains(name));
                accepted
                    .raw
                    .entry(ROUTES)
                    .or_default()
                    .retain(|name, _| routes.contains(name));
                let mut follow = Vec::new();
                if subscriptions.names.get(ROUTES) != Some(&routes) {
                    follow.push(ROUTES);
                }
                if subscriptions.names.get(SECRETS) != Some(&secrets) {
                    follow.push(SECRETS);
                }
                subscriptions.names.insert(ROUTES, routes);
                subscriptions.names.insert(SECRETS, secrets);
                follow
            }
            ROUTES => {
                for any in &response.resources {
                    let compiled = decode::<RouteConfiguration>(any, kind)
                        .and_then(|r| RouteTable::compile(&r).map_err(|e| e.to_string()));
                    match compiled {
                        Ok(table) => {
                            let raw = accepted.raw.entry(ROUTES).or_default();
                            raw.insert(table.name.clone(), any.clone());
                            accepted.routes.insert(table.name.clone(), Arc::new(table));
                        }
                        Err(error) => errors.push(error),
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        Applied { errors, follow }
    }
}

/// A channel to Meridian: plain, or mutual TLS with the server's identity pinned (the
/// credential files are read at every connect, so rotated ones are picked up).
pub(super) async fn connect(
    bootstrap: &Bootstrap,
) -> Result<tonic::transport::Channel, StreamError> {
    let (host, port) = (&bootstrap.xds_host, bootstrap.xds_port);
    let address = format!("{host}:{port}");
    let Some(tls) = &bootstrap.tls else {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|source| StreamError::Connect {
                address: address.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        return endpoint
            .connect()
            .await
            .map_err(|source| StreamError::Connect { address, source });
    };
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| StreamError::Credentials(format!("{path}: {e}")))
    };
    let (ca_pem, cert_pem, key_pem) = (
        read(&tls.ca_file)?,
        read(&tls.cert_file)?,
        read(&tls.key_file)?,
    );
    let credentials = ClientCredentials {
        ca_pem: &ca_pem,
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    };
    let connecting = pinned_tls::connect(host, port, credentials, &tls.server_identity);
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(channel) => Ok(channel?),
        Err(_) => Err(StreamError::Credentials(format!(
            "{address}: TLS connect timed out"
        ))),
    }
}

/// `CDS`, `EDS`, `LDS`, `RDS` or `SDS`.
fn short_name(kind: &str) -> &'static str {
    match kind {
        CLUSTERS => "CDS",
        ENDPOINTS => "EDS",
        LISTENERS => "LDS",
        ROUTES => "RDS",
        _ => "SDS",
    }
}

/// The type a response is of, if it is one this client asks for.
fn known(type_url: &str) -> Option<&'static str> {
    ORDER.into_iter().find(|kind| *kind == type_url)
}

/// Compiles a state-of-the-world set of resources (clusters, listeners): each compiled one
/// with the `Any` it came from; one that does not compile is NACKed (its error pushed) and
/// keeps its previous version, as Envoy keeps a resource whose update it rejects.
fn compile_whole_set<M: Message + Default, P: Clone>(
    resources: &[Any],
    kind: &str,
    (old_plans, old_raw): (&BTreeMap<String, P>, &BTreeMap<String, Any>),
    name_of: impl Fn(&M) -> String,
    compile: impl Fn(&M) -> Result<P, String>,
    errors: &mut Vec<String>,
) -> (BTreeMap<String, P>, BTreeMap<String, Any>) {
    let mut plans = BTreeMap::new();
    let mut raw = BTreeMap::new();
    for any in resources {
        let message = match decode::<M>(any, kind) {
            Ok(message) => message,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        let name = name_of(&message);
        match compile(&message) {
            Ok(plan) => {
                raw.insert(name.clone(), any.clone());
                plans.insert(name, plan);
            }
            Err(error) => {
                errors.push(error);
                if let (Some(old), Some(old_any)) = (old_plans.get(&name), old_raw.get(&name)) {
                    raw.insert(name.clone(), old_any.clone());
                    plans.insert(name, old.clone());
                }
            }
        }
    }
    (plans, raw)
}

/// Compiles resources that each stand alone (endpoints, secrets): one that compiles replaces
/// its previous version, with the `Any` it came from; one that does not is NACKed (its error
/// pushed) and leaves its previous version in place.
fn compile_each<M: Message + Default, P>(
    resources: &[Any],
    kind: &str,
    compile: impl Fn(M) -> Result<(String, P), String>,
    (plans, raw): (&mut BTreeMap<String, P>, &mut BTreeMap<String, Any>),
    errors: &mut Vec<String>,
) {
    for any in resources {
        match decode::<M>(any, kind).and_then(&compile) {
            Ok((name, plan)) => {
                raw.insert(name.clone(), any.clone());
                plans.insert(name, plan);
            }
            Err(error) => errors.push(error),
        }
    }
}

fn decode<M: Message + Default>(any: &Any, kind: &str) -> Result<M, String> {
    if any.type_url != kind {
        return Err(format!("a {} in a {kind} response", any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("undecodable {kind}: {e}"))
}

/// A DNS cluster's hosts resolved to addresses (IPv4 first); a name that does not resolve
/// contributes no endpoint.
async fn resolve(assignment: &Assignment) -> Assignment {
    let mut resolved = assignment.clone();
    for locality in &mut resolved.localities {
        let mut endpoints = Vec::new();
        for endpoint in &locality.endpoints {
            let found = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await;
            let mut addresses: Vec<std::net::SocketAddr> =
                found.map(|a| a.collect()).unwrap_or_default();
            addresses.sort_by_key(|a| !a.is_ipv4());
            if let Some(address) = addresses.first() {
                endpoints.push(Endpoint {
                    host: address.ip().to_string(),
                    port: endpoint.port,
                    weight: endpoint.weight,
                });
            }
        }
        locality.endpoints = endpoints;
    }
    resolved
}
