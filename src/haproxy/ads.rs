//! What `meridian haproxy` does with what Meridian sends over ADS (the protocol is the shared
//! client's, `runtime::xds_client`): it compiles each response as `meridian proxy` does, then
//! brings HAProxy in line — endpoint changes through the Runtime API, anything else by writing
//! the configuration, `haproxy -c`, and a reload. A response HAProxy refuses is NACKed with
//! HAProxy's reason, and the configuration before it keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use xxhash_rust::xxh64::xxh64;

use super::process::{runtime_command, write_atomically, write_private, SharedHaproxy};
use crate::core::dataplane::balancer::Discovery;
use crate::core::dataplane::haproxy::render::{
    check_agreement, render, secrets_of, Inputs, Settings,
};
use crate::core::dataplane::haproxy::routes::RouteRules;
use crate::core::dataplane::haproxy::servers::SlotTable;
use crate::core::dataplane::haproxy::{pem_file, section_name};
use crate::core::dataplane::listeners::ListenerPlan;
use crate::core::dataplane::secrets::SecretPlan;
use crate::runtime::log_budget::bounded;
use crate::runtime::xds_client::gateway::GatewayResources;
use crate::runtime::xds_client::resources::{
    decode_value, short_name, CLUSTERS, ENDPOINTS, LISTENERS, ROUTES, SECRETS,
};
use crate::runtime::xds_client::{Applied, Names, Subscriber};

const ORDER: [&str; 5] = [CLUSTERS, ENDPOINTS, SECRETS, LISTENERS, ROUTES];

/// The accepted resources, compiled.
type Accepted = GatewayResources<RouteRules>;

/// What HAProxy runs: the configuration's shape (servers left out) and each backend's slots.
#[derive(Clone, Debug, Default)]
struct Loaded {
    shape: String,
    config: String,
    slots: BTreeMap<String, SlotTable>,
}

pub struct HaproxySubscriber {
    accepted: Accepted,
    haproxy: SharedHaproxy,
    settings: Settings,
    files_dir: PathBuf,
    loaded: Option<Loaded>,
    /// The wildcard types a response of which arrived.
    answered: BTreeSet<&'static str>,
    /// Counts of what was done, for the log.
    pub reloads: u64,
    pub runtime_updates: u64,
}

impl HaproxySubscriber {
    pub fn new(haproxy: SharedHaproxy, settings: Settings) -> HaproxySubscriber {
        HaproxySubscriber {
            accepted: Accepted::default(),
            haproxy,
            files_dir: PathBuf::from(&settings.files_dir),
            settings,
            loaded: None,
            answered: BTreeSet::new(),
            reloads: 0,
            runtime_updates: 0,
        }
    }

    /// Brings HAProxy in line with what is accepted.
    async fn sync(&mut self, kind: &'static str) -> Result<(), String> {
        let accepted = &self.accepted;
        // As Envoy's warming: nothing before the first listeners and clusters, and the first
        // load waits for every EDS cluster's endpoints (an HAProxy found running keeps
        // serving what it has meanwhile).
        let endpoints_known = accepted
            .clusters
            .values()
            .all(|c| c.discovery != Discovery::Eds || accepted.assignments.contains_key(&c.name));
        let initialized = self.answered.contains(CLUSTERS) && self.answered.contains(LISTENERS);
        if !initialized || (self.loaded.is_none() && !endpoints_known) {
            return Ok(());
        }
        let previous = self.loaded.clone().unwrap_or_default();
        let mut slots = BTreeMap::new();
        for cluster in accepted.clusters.values() {
            let assignment = match &cluster.discovery {
                Discovery::Eds => accepted
                    .assignments
                    .get(&cluster.name)
                    .cloned()
                    .unwrap_or_default(),
                Discovery::Static(a) | Discovery::Dns(a) => a.clone(),
            };
            let before = previous
                .slots
                .get(&cluster.name)
                .cloned()
                .unwrap_or_default();
            slots.insert(
                cluster.name.clone(),
                SlotTable::assign(&before, &assignment),
            );
        }
        // Listeners wait for their certificates and routes, as Envoy's warm.
        let listeners: BTreeMap<String, ListenerPlan> = accepted
            .listeners
            .iter()
            .filter(|(_, l)| {
                secrets_of(l)
                    .iter()
                    .all(|s| accepted.secrets.contains_key(s))
            })
            .filter(|(_, l)| l.route_configs().all(|r| accepted.routes.contains_key(r)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let inputs = |slots| Inputs {
            listeners: &listeners,
            routes: &accepted.routes,
            clusters: &accepted.clusters,
            slots,
            settings: &self.settings,
        };
        let rendered = render(&inputs(&slots));
        // The shape: EDS servers emptied (their slots kept), secrets by content.
        let emptied: BTreeMap<String, SlotTable> = slots
            .iter()
            .map(|(name, table)| {
                let eds = accepted
                    .clusters
                    .get(name)
                    .is_some_and(|c| c.discovery == Discovery::Eds);
                let table = if eds {
                    SlotTable {
                        active: vec![None; table.active.len()],
                        backup: vec![None; table.backup.len()],
                    }
                } else {
                    table.clone()
                };
                (name.clone(), table)
            })
            .collect();
        let mut shape = render(&inputs(&emptied)).config;
        for (name, secret) in &accepted.secrets {
            shape.push_str(&format!(
                "# {name} {:016x}\n",
                xxh64(pem(secret).as_bytes(), 0)
            ));
        }
        if self.loaded.is_some() && previous.shape == shape {
            let mut commands = Vec::new();
            for (name, table) in &slots {
                let before = previous.slots.get(name).cloned().unwrap_or_default();
                commands.extend(
                    table
                        .commands(&before, &section_name(name))
                        .unwrap_or_default(),
                );
            }
            if commands.is_empty() {
                return Ok(());
            }
            let socket = PathBuf::from(&self.settings.runtime_socket);
            match runtime_command(&socket, &commands).await {
                Ok(()) => {
                    self.runtime_updates += 1;
                    tracing::info!(
                        after = short_name(kind),
                        commands = commands.len(),
                        "servers updated through the Runtime API"
                    );
                    let config = rendered.config;
                    // Kept current on disk, so that a restarted HAProxy starts where it was.
                    if let Err(error) =
                        write_atomically(self.haproxy.lock().await.config_path(), &config)
                    {
                        tracing::warn!(%error, "could not write the configuration");
                    }
                    self.loaded = Some(Loaded {
                        shape,
                        config,
                        slots,
                    });
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, "Runtime API update failed; reloading instead");
                }
            }
        }
        self.write_secrets().map_err(|e| e.to_string())?;
        for (file, content) in &rendered.crt_lists {
            write_atomically(&self.files_dir.join(file), content).map_err(|e| e.to_string())?;
        }
        let candidate = self.files_dir.join("haproxy.cfg.new");
        write_atomically(&candidate, &rendered.config).map_err(|e| e.to_string())?;
        self.haproxy
            .lock()
            .await
            .check(&candidate)
            .await
            .map_err(|e| e.to_string())?;
        std::fs::rename(&candidate, self.haproxy.lock().await.config_path())
            .map_err(|e| e.to_string())?;
        let mut haproxy = self.haproxy.lock().await;
        if let Err(error) = haproxy.load().await {
            // The configuration that serves goes back in place for the next reload.
            if let Some(loaded) = &self.loaded {
                let _ = write_atomically(haproxy.config_path(), &loaded.config);
            }
            return Err(error.to_string());
        }
        drop(haproxy);
        self.reloads += 1;
        tracing::info!(
            after = short_name(kind),
            listeners = ?listeners.keys().collect::<Vec<_>>(),
            routes = ?accepted.routes.keys().collect::<Vec<_>>(),
            clusters = slots.len(),
            reloads = self.reloads,
            "HAProxy (re)loaded"
        );
        let config = rendered.config;
        self.loaded = Some(Loaded {
            shape,
            config,
            slots,
        });
        Ok(())
    }

    /// Certificates as the PEM files crt-lists name (private keys readable by the owner only).
    fn write_secrets(&self) -> Result<(), super::process::HaproxyError> {
        for (name, secret) in &self.accepted.secrets {
            write_private(&self.files_dir.join(pem_file(name)), &pem(secret))?;
        }
        Ok(())
    }

    /// Applies one response to `accepted`; errors name what was refused.
    fn compile(
        &mut self,
        kind: &'static str,
        response: &DiscoveryResponse,
        names: &mut Names,
    ) -> Applied {
        let accepted = &mut self.accepted;
        let resources = &response.resources;
        let mut errors = Vec::new();
        let follow = match kind {
            CLUSTERS => accepted.apply_clusters(resources, names, &mut errors),
            ENDPOINTS => {
                accepted.apply_endpoints(resources, &mut errors);
                Vec::new()
            }
            SECRETS => {
                accepted.apply_secrets(resources, &mut errors);
                Vec::new()
            }
            // A port something else holds would fail HAProxy's reload (pausing its listeners
            // while it retries): refused here, naming the listener, instead.
            LISTENERS => accepted.apply_listeners(resources, names, &mut errors, |plans| {
                plans
                    .values()
                    .filter_map(|p| {
                        bindable(&p.address, p.port)
                            .err()
                            .map(|e| (p.name.clone(), e))
                    })
                    .collect()
            }),
            ROUTES => {
                accepted.apply_routes(resources, &mut errors, |_, encoded, others| {
                    let config: RouteConfiguration = decode_value(encoded, ROUTES)?;
                    let rules = RouteRules::compile(&config).map_err(|e| e.to_string())?;
                    check_agreement(&rules, others.values()).map_err(|e| e.to_string())?;
                    Ok((config.name, rules))
                });
                Vec::new()
            }
            _ => Vec::new(),
        };
        Applied { errors, follow }
    }
}

/// Whether HAProxy could bind `address:port`: binding it here as HAProxy does (with
/// `SO_REUSEPORT`, so a port the running HAProxy holds binds too).
fn bindable(address: &str, port: u16) -> Result<(), String> {
    let ip: std::net::IpAddr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IP address"))?;
    let addr = std::net::SocketAddr::new(ip, port);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(|e| e.to_string())?;
    socket.set_reuse_address(true).map_err(|e| e.to_string())?;
    socket.set_reuse_port(true).map_err(|e| e.to_string())?;
    socket
        .bind(&addr.into())
        .map_err(|e| format!("cannot bind {addr}: {e}"))
}

fn pem(secret: &SecretPlan) -> String {
    match secret {
        SecretPlan::Certificate { chain_pem, key_pem } => {
            let mut text = chain_pem.trim_end().to_owned();
            text.push('\n');
            text.push_str(key_pem.trim_end());
            text.push('\n');
            text
        }
        SecretPlan::Trust { ca_pem } => ca_pem.clone(),
    }
}

impl Subscriber for HaproxySubscriber {
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
        let before = self.accepted.clone();
        let mut applied = self.compile(kind, response, names);
        self.answered.insert(kind);
        if let Err(error) = self.sync(kind).await {
            tracing::warn!(r#type = short_name(kind), error = %bounded(&error), "HAProxy kept its configuration; the response is rejected");
            self.accepted = before;
            applied
                .errors
                .push(format!("{}: {error}", short_name(kind)));
        }
        applied
    }

    fn settle(&mut self, kind: &'static str, version: &str, applied: &Applied) {
        if applied.errors.is_empty() {
            self.accepted.versions.insert(kind, version.to_owned());
        } else {
            tracing::warn!(r#type = short_name(kind), errors = %bounded(&applied.errors.join("; ")), "rejected");
        }
    }

    fn version(&self, kind: &str) -> String {
        self.accepted
            .versions
            .get(kind)
            .cloned()
            .unwrap_or_default()
    }

    async fn restore(&mut self) {}

    fn initialized(&mut self) {
        tracing::info!(
            listeners = self.accepted.listeners.len(),
            clusters = self.accepted.clusters.len(),
            "first listeners and clusters received"
        );
    }

    /// HAProxy stops with the program (`run` stops it softly).
    fn stop(&mut self) {}
}
