//! What `meridian proxy` does with what Meridian sends over ADS (the protocol is the shared
//! client's, `runtime::xds_client`): subscribes to clusters and listeners by wildcard, follows
//! them to endpoints, route configurations and secrets, compiles what arrives, binds
//! listeners, publishes one snapshot per applied response and caches it. What it cannot honour
//! is rejected naming resource and field; the rest of the response applies, as in Envoy.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

use super::cache::ConfigCache;
use super::config::{Accepted, Config};
use super::listeners::Listeners;
use super::ProxyState;
use crate::core::dataplane::balancer::{Assignment, ClusterPlan, Discovery, Endpoint};
use crate::core::dataplane::listeners::ListenerPlan;
use crate::core::dataplane::routes::RouteTable;
use crate::core::dataplane::secrets::SecretPlan;
use crate::runtime::log_budget::{bounded, LogBudget};
use crate::runtime::xds_client::resources::{
    compile_each, compile_whole_set, decode, follow_by_name, keep_previous, short_name, CLUSTERS,
    ENDPOINTS, LISTENERS, ROUTES, SECRETS,
};
use crate::runtime::xds_client::{Applied, Names, Subscriber};

/// The order resources apply in (and are cached in).
const ORDER: [&str; 5] = [CLUSTERS, ENDPOINTS, SECRETS, LISTENERS, ROUTES];

pub struct ProxySubscriber {
    pub state: Arc<ProxyState>,
    pub listeners: Listeners,
    pub cache: Option<ConfigCache>,
    pub accepted: Accepted,
}

impl Subscriber for ProxySubscriber {
    fn types(&self) -> &'static [&'static str] {
        &ORDER
    }

    fn wildcard(&self) -> &'static [&'static str] {
        &[CLUSTERS, LISTENERS]
    }

    async fn apply(
        &mut self,
        kind: &'static str,
        response: &DiscoveryResponse,
        names: &mut Names,
    ) -> Applied {
        self.apply_response(kind, response, names).await
    }

    fn settle(&mut self, kind: &'static str, version: &str, applied: &Applied) {
        self.settle_response(kind, version, applied);
    }

    fn version(&self, kind: &str) -> String {
        self.accepted
            .versions
            .get(kind)
            .cloned()
            .unwrap_or_default()
    }

    async fn restore(&mut self) {
        self.serve_cache().await;
    }

    fn initialized(&mut self) {
        self.state.mark_ready();
    }

    fn stop(&mut self) {
        self.listeners.stop_all();
    }
}

impl ProxySubscriber {
    /// Applies the cached config, if there is one, before Meridian answers.
    async fn serve_cache(&mut self) {
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
        let mut names = Names::new();
        for response in &responses {
            let Some(kind) = ORDER.into_iter().find(|kind| *kind == response.type_url) else {
                continue;
            };
            let applied = self.apply_response(kind, response, &mut names).await;
            if !applied.errors.is_empty() {
                tracing::warn!(r#type = kind, errors = %bounded(&applied.errors.join("; ")), "cached resources this version cannot honour are left out");
            }
            self.accepted
                .versions
                .insert(kind, response.version_info.clone());
        }
        self.state.config.store(Arc::new(Config::build(
            &self.accepted,
            &self.state.stats,
            &self.state.loads,
            &self.state.config.load(),
        )));
        self.state.config_changed.notify_waiters();
        self.state.mark_cached();
        tracing::info!(
            listeners = self.accepted.listeners.len(),
            clusters = self.accepted.clusters.len(),
            "serving the cached config until Meridian answers"
        );
    }

    /// After a response of `kind` is applied: counts it, records the version when all of it
    /// applied, publishes the new snapshot and caches it.
    fn settle_response(&mut self, kind: &'static str, version: &str, applied: &Applied) {
        let accepted = &mut self.accepted;
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
        if let Some(cache) = &self.cache {
            if let Err(error) = cache.save(accepted, &ORDER) {
                static SAVE: LogBudget = LogBudget::new(2, Duration::from_secs(60));
                if let Some(suppressed) = SAVE.allow() {
                    tracing::warn!(%error, suppressed, "cannot write the config cache");
                }
            }
        }
    }

    async fn apply_response(
        &mut self,
        kind: &'static str,
        response: &DiscoveryResponse,
        names: &mut Names,
    ) -> Applied {
        let accepted = &mut self.accepted;
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
                follow_by_name(ENDPOINTS, eds, names).into_iter().collect()
            }
            ENDPOINTS => {
                compile_each(
                    &response.resources,
                    kind,
                    |cla: ClusterLoadAssignment| {
                        Assignment::compile_named(cla).map_err(|e| e.to_string())
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
                keep_previous(
                    self.listeners.reconcile(&plans, &self.state),
                    ("Listener", "address"),
                    (&mut plans, &mut raw),
                    (&accepted.listeners, &old_raw),
                    &mut errors,
                );
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
                [
                    follow_by_name(ROUTES, routes, names),
                    follow_by_name(SECRETS, secrets, names),
                ]
                .into_iter()
                .flatten()
                .collect()
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
