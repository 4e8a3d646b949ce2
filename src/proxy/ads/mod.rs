//! What `meridian proxy` does with what Meridian sends over ADS (the protocol is the shared
//! client's, `runtime::xds_client`): subscribes to clusters and listeners by wildcard, follows
//! them to endpoints, route configurations and secrets, compiles what arrives, binds
//! listeners, caches each applied response and then publishes its snapshot. What it cannot
//! honour is rejected naming resource and field; the rest of the response applies, as in Envoy.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

use super::cache::ConfigCache;
use super::compiler::Compiler;
use super::config::{Accepted, Config};
use super::listeners::Listeners;
use super::ProxyState;
use crate::core::dataplane::balancer::{Assignment, Discovery, Endpoint};
use crate::runtime::log_budget::{bounded, LogBudget};
use crate::runtime::xds_client::resources::{
    short_name, CLUSTERS, ENDPOINTS, LISTENERS, ROUTES, SECRETS,
};
use crate::runtime::xds_client::{Applied, Names, Subscriber};

/// The order resources apply in (and are cached in).
const ORDER: [&str; 5] = [CLUSTERS, ENDPOINTS, SECRETS, LISTENERS, ROUTES];

pub struct ProxySubscriber {
    pub state: Arc<ProxyState>,
    pub listeners: Listeners,
    pub cache: Option<ConfigCache>,
    pub accepted: Accepted,
    /// Where route configurations are compiled, and replaced configs freed, away from the
    /// workers' turns.
    pub compiler: Compiler,
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
        let replaced = self.state.publish(Config::build(
            &self.accepted,
            &self.state.stats,
            &self.state.loads,
            &self.state.config.load(),
        ));
        self.compiler.free(replaced);
        self.state.mark_cached();
        tracing::info!(
            listeners = self.accepted.listeners.len(),
            clusters = self.accepted.clusters.len(),
            "serving the cached config until Meridian answers"
        );
    }

    /// After a response of `kind` is applied: counts it, records the version when all of it
    /// applied, caches it and publishes the new snapshot. Cached first: whatever the proxy
    /// served is on disk should it be killed the next moment (a cache holding listeners
    /// without the routes they had served would leave a restart answering 404).
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
        if let Some(cache) = &self.cache {
            if let Err(error) = cache.save(accepted, &ORDER) {
                static SAVE: LogBudget = LogBudget::new(2, Duration::from_secs(60));
                if let Some(suppressed) = SAVE.allow() {
                    tracing::warn!(%error, suppressed, "cannot write the config cache");
                }
            }
        }
        let replaced = self.state.publish(Config::build(
            accepted,
            &self.state.stats,
            &self.state.loads,
            &self.state.config.load(),
        ));
        self.compiler.free(replaced);
    }

    async fn apply_response(
        &mut self,
        kind: &'static str,
        response: &DiscoveryResponse,
        names: &mut Names,
    ) -> Applied {
        let accepted = &mut self.accepted;
        let mut errors = Vec::new();
        let resources = &response.resources;
        let follow = match kind {
            CLUSTERS => {
                let follow = accepted.apply_clusters(resources, names, &mut errors);
                // DNS clusters: their hosts resolved, as endpoints of their own.
                for plan in accepted.clusters.values() {
                    if let Discovery::Dns(assignment) = &plan.discovery {
                        let resolved = resolve(assignment).await;
                        accepted.assignments.insert(plan.name.clone(), resolved);
                    }
                }
                follow
            }
            ENDPOINTS => {
                accepted.apply_endpoints(resources, &mut errors);
                Vec::new()
            }
            SECRETS => {
                accepted.apply_secrets(resources, &mut errors);
                Vec::new()
            }
            LISTENERS => {
                // Binding can fail (the port is taken): the listener it replaces keeps serving.
                let (listeners, state) = (&mut self.listeners, &self.state);
                accepted.apply_listeners(resources, names, &mut errors, |plans| {
                    listeners.reconcile(plans, state)
                })
            }
            ROUTES => {
                // Compiled away from the workers' turns, then applied in the response's order.
                let compiled = self.compiler.routes(resources, &accepted.routes).await;
                let mut compiled: Vec<_> = compiled.into_iter().map(Some).collect();
                accepted.apply_routes(resources, &mut errors, |index, _, _| {
                    compiled
                        .get_mut(index)
                        .and_then(Option::take)
                        .unwrap_or_else(|| Err("route configuration not compiled".to_owned()))
                });
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
