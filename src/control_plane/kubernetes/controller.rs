//! Kubernetes mode wiring: watchers → scope → index → ADS/ops gRPC and admin HTTP (every
//! replica), each replica's acknowledgement report and member-cluster connections, the lease
//! campaign, and the leader's writers (AccessPoint status, member-cluster objects).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use tokio::sync::{mpsc, watch};

use crate::control_plane::admin::AdminState;
use crate::control_plane::certs::manager::CertManager;
use crate::control_plane::certs::{CertOptions, XdsTlsOptions};
use crate::control_plane::dns::server::DnsOptions;
use crate::control_plane::fleet_acks::FleetAcks;
use crate::control_plane::index::Index;
use crate::control_plane::kubernetes::ack_reports;
use crate::control_plane::kubernetes::inputs::{watch as watches, Scope, Update, Watched};
use crate::control_plane::kubernetes::leader::{self, LeaseConfig};
use crate::control_plane::kubernetes::members::{self, connections, MemberState};
use crate::control_plane::kubernetes::rollout_actions;
use crate::control_plane::kubernetes::status_writer;
use crate::control_plane::metrics::Metrics;
use crate::control_plane::rollouts::{Role, RolloutStore, RolloutTask};
use crate::control_plane::serve::Running;
use crate::control_plane::vips;
use crate::control_plane::xds::server::XdsState;
use crate::core::model::export::ExportPolicy;

#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Kubeconfig to use; absent: `KUBECONFIG`, `~/.kube/config`, or the in-cluster account.
    pub kubeconfig: Option<PathBuf>,
    /// Only namespaces matching one of these are processed (none: all namespaces).
    pub namespace_selectors: Vec<LabelSelector>,
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Mesh-wide `exportTo` defaults.
    pub export: ExportPolicy,
    pub lease: LeaseConfig,
    pub certs: CertOptions,
    pub xds_tls: XdsTlsOptions,
    /// Name of the Secret (in the lease namespace) holding Meridian's CA.
    pub ca_secret: String,
    /// The RolloutAction admission webhook.
    pub webhook: WebhookOptions,
    pub dns: DnsOptions,
    /// How often gateways send load reports.
    pub load_report_interval: Duration,
    /// Refresh delays after which a silent polling proxy has stopped.
    pub rest_stale_after: u32,
    /// Connections each listener takes at once, and how soon they must speak.
    pub connections: crate::runtime::connections::ConnectionLimits,
}

/// Where the RolloutAction admission webhook listens and how the API server reaches it.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub addr: std::net::SocketAddr,
    /// A URL for a Meridian outside the cluster; else the `meridian` Service.
    pub url: Option<String>,
}

pub use crate::runtime::kube_client::client;

/// Starts watching and serving; xDS answers once every watch has listed once.
pub async fn start(options: ControllerOptions) -> anyhow::Result<Running> {
    let client = client(options.kubeconfig.as_ref()).await?;
    let (mut index, snapshots) = Index::with_export_policy(options.export.clone());
    index.reserve_cert_names(options.xds_tls.reserved_cert_names());
    let metrics = Arc::new(Metrics::new());
    let ca = super::ca_store::load_or_create(
        client.clone(),
        &options.lease.namespace,
        &options.ca_secret,
        &options.certs,
    )
    .await?;
    let tls = options
        .xds_tls
        .server_config(&ca, &options.certs.trust_domain)?;
    let client_auth = options.xds_tls.client_auth(&options.certs);
    let xds = XdsState::with_client_auth(
        snapshots.clone(),
        metrics.clone(),
        client_auth,
        options.load_report_interval,
    );
    xds.proxies
        .set_stale_after_refreshes(options.rest_stale_after);
    let admin_state = AdminState::new(xds.clone());
    // RolloutActions: signed by the webhook with a key from the CA, verified by every replica.
    let signing_key = Arc::new(rollout_actions::signing_key(&ca));
    let namespace = &options.lease.namespace;
    let mut webhook_names = vec![
        format!("meridian.{namespace}.svc"),
        format!("meridian.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    if let Some(host) = options
        .webhook
        .url
        .as_deref()
        .and_then(|u| u.parse::<http::Uri>().ok())
        .and_then(|u| u.host().map(str::to_owned))
    {
        webhook_names.push(host);
    }
    webhook_names.dedup();
    let webhook_tls = rollout_actions::tls_config(&ca, &webhook_names)?;
    let webhook_listener = rollout_actions::bind(options.webhook.addr).await?;
    let ca_trust = ca.trust_pem().to_owned();
    let cert_manager = CertManager::new(Arc::new(ca), options.certs.rotation(), metrics);

    let (updates_tx, updates) = mpsc::channel(1024);
    let member_updates = updates_tx.clone();
    let restore_updates = updates_tx.clone();
    let issued_updates = updates_tx.clone();
    let vip_updates = updates_tx.clone();
    let pin_updates = updates_tx.clone();
    let watch_tasks = watches::spawn_all(client.clone(), updates_tx)
        .await
        .context("starting Kubernetes watches")?;
    let watch_count = watch_tasks.len();

    let running = Running::serve(
        options.xds_addr,
        options.admin_addr,
        admin_state.clone(),
        tls,
        options.connections,
    )
    .await?;
    tracing::info!(
        xds_addr = %running.xds_addr,
        admin_addr = %running.admin_addr,
        identity = %options.lease.identity,
        "meridian controller serving"
    );
    let (leading_tx, leading) = watch::channel(false);
    let scope = Scope::new(options.namespace_selectors);
    let stopped = running.stopped();
    let feed = feed_index(
        updates,
        scope,
        index,
        admin_state.clone(),
        watch_count,
        stopped.clone(),
    );
    let lease = options.lease;
    let vip_allocator = vips::run_kube(
        client.clone(),
        lease.namespace.clone(),
        snapshots.clone(),
        vip_updates,
        leading.clone(),
        stopped.clone(),
    );
    let campaign = {
        let (client, lease, stopped) = (client.clone(), lease.clone(), stopped.clone());
        async move {
            leader::run(client, lease, leading_tx, stopped).await;
            Ok(())
        }
    };
    let reports = ack_reports::watch_reports(client.clone(), &lease.namespace, stopped.clone());
    let acks = FleetAcks::with_reports(xds.clone(), lease.identity.clone(), reports);
    let dns_updates = crate::control_plane::dns::update::run(
        snapshots.clone(),
        acks.clone(),
        admin_state.dns.clone(),
        Some(leading.clone()),
        stopped.clone(),
    );
    let publisher = {
        let (client, xds, stopped) = (client.clone(), xds.clone(), stopped.clone());
        let (namespace, identity) = (lease.namespace.clone(), lease.identity.clone());
        async move {
            ack_reports::publish(client, namespace, identity, xds, stopped).await;
            Ok(())
        }
    };
    let _ = xds.replica.set(lease.identity.clone());
    let proxy_reports = {
        let (client, xds, stopped) = (client.clone(), xds.clone(), stopped.clone());
        let (namespace, identity) = (lease.namespace.clone(), lease.identity.clone());
        async move {
            let follow = tokio::spawn(crate::control_plane::kubernetes::proxy_reports::follow(
                client.clone(),
                namespace.clone(),
                xds.clone(),
                stopped.clone(),
            ));
            crate::control_plane::kubernetes::proxy_reports::publish(
                client, namespace, identity, xds, stopped,
            )
            .await;
            follow.abort();
            Ok(())
        }
    };
    let members = Arc::new(MemberState::default());
    let (restored_tx, restored) = watch::channel(None);
    let member_restore = {
        let (client, namespace) = (client.clone(), lease.namespace.clone());
        let stopped = stopped.clone();
        async move {
            let clusters = members::cache::restore_all(&client, &namespace, &restore_updates).await;
            let _ = restored_tx.send(Some(clusters));
            // A task that ends stops the process: this one waits for the others.
            crate::runtime::stopped_signal(stopped).await;
            Ok(())
        }
    };
    let member_connections = {
        let (client, namespace) = (client.clone(), lease.namespace.clone());
        let (snapshots, members, stopped) =
            (xds.snapshots.clone(), members.clone(), stopped.clone());
        async move {
            connections::run(
                client,
                namespace,
                snapshots,
                member_updates,
                members,
                restored,
                stopped,
            )
            .await;
            Ok(())
        }
    };
    let (writes_tx, member_writes) = watch::channel(Default::default());
    let member_writer = {
        let (client, snapshots) = (client.clone(), xds.snapshots.clone());
        let (leading, stopped) = (leading.clone(), stopped.clone());
        async move {
            members::writer::run(client, snapshots, members, leading, writes_tx, stopped).await;
            Ok(())
        }
    };
    let member_cache = {
        let (client, namespace) = (client.clone(), lease.namespace.clone());
        let (snapshots, leading, stopped) = (snapshots.clone(), leading.clone(), stopped.clone());
        async move {
            members::cache::persist(client, namespace, snapshots, leading, stopped).await;
            Ok(())
        }
    };
    let name_service_status = {
        let (client, snapshots) = (client.clone(), snapshots.clone());
        let (published, leading) = (admin_state.dns.subscribe(), leading.clone());
        let stopped = stopped.clone();
        async move {
            crate::control_plane::kubernetes::name_service_status::run(
                client, snapshots, published, leading, stopped,
            )
            .await;
            Ok(())
        }
    };
    let rollouts = RolloutTask {
        store: RolloutStore::ConfigMap(Box::new(Api::namespaced(client.clone(), &lease.namespace))),
        stored: None,
        snapshots: snapshots.clone(),
        acks: acks.clone(),
        channel: admin_state.rollouts.clone(),
        role: Role::Kubernetes {
            leading: leading.clone(),
            member_writes: member_writes.clone(),
            controls: rollout_actions::follow(client.clone(), signing_key.clone(), stopped.clone()),
        },
    }
    .run(pin_updates, stopped.clone());
    let webhook =
        rollout_actions::serve(webhook_listener, webhook_tls, signing_key, stopped.clone());
    let webhook_registration = {
        let target = match &options.webhook.url {
            Some(url) => rollout_actions::WebhookTarget::Url(url.clone()),
            None => rollout_actions::WebhookTarget::Service {
                namespace: lease.namespace.clone(),
            },
        };
        let (client, mut leading, mut stopped) = (client.clone(), leading.clone(), stopped.clone());
        async move {
            // The leader keeps the registration in place (and repairs it if edited or deleted).
            loop {
                if *leading.borrow_and_update() {
                    if let Err(error) =
                        rollout_actions::register(client.clone(), &target, &ca_trust).await
                    {
                        tracing::warn!(error = %format!("{error:#}"), "RolloutAction webhook not registered; approvals cannot be made until it is");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = leading.changed() => {}
                    _ = stopped.changed() => return Ok(()),
                }
            }
        }
    };
    let writer = {
        let (stopped, acks) = (stopped.clone(), acks.clone());
        let inputs = status_writer::Inputs {
            acks,
            member_writes,
            rollouts: admin_state.rollouts.statuses.subscribe(),
        };
        async move {
            status_writer::run(client, xds, inputs, leading, stopped).await;
            Ok(())
        }
    };
    let certs = cert_manager.run(snapshots.clone(), issued_updates, stopped.clone());
    let abort_watches = async move {
        crate::runtime::stopped_signal(stopped).await;
        for task in watch_tasks {
            task.abort();
        }
        Ok(())
    };
    let running = running
        .with_task(feed)
        .with_task(certs)
        .with_task(webhook)
        .with_task(webhook_registration)
        .with_task(rollouts)
        .with_task(vip_allocator)
        .with_task(dns_updates)
        .with_task(campaign)
        .with_task(publisher)
        .with_task(proxy_reports)
        .with_task(member_restore)
        .with_task(member_connections)
        .with_task(member_writer)
        .with_task(member_cache)
        .with_task(writer)
        .with_task(name_service_status)
        .with_task(abort_watches);
    running.with_dns(&options.dns, snapshots, acks).await
}

/// Bursts of watch events become one snapshot.
const BATCH: Duration = Duration::from_millis(20);

async fn feed_index(
    mut updates: mpsc::Receiver<Update>,
    mut scope: Scope,
    mut index: Index,
    admin: Arc<AdminState>,
    watch_count: usize,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut listed: BTreeSet<Watched> = BTreeSet::new();
    // Rollouts are loaded before anything is served: a restart keeps each cluster's revision.
    let mut pins_loaded = false;
    // So are members' last known objects: a member down at start still has its endpoints.
    let mut members_restored = false;
    loop {
        let update = tokio::select! {
            update = updates.recv() => update,
            _ = stopped.changed() => return Ok(()),
        };
        let Some(update) = update else {
            return Ok(());
        };
        let mut batch = vec![update];
        tokio::time::sleep(BATCH).await;
        while let Ok(more) = updates.try_recv() {
            batch.push(more);
        }
        for update in batch {
            match &update {
                Update::Pins(_) => pins_loaded = true,
                Update::MembersRestored => members_restored = true,
                // Member clusters come and go; only the hub's own watches gate serving.
                Update::RelistDone(Watched::Member { .. }) => {}
                Update::RelistDone(watched) => {
                    listed.insert(watched.clone());
                }
                _ => {}
            }
            scope.update(&mut index, update);
        }
        admin.set_problems(scope.problems());
        // Serving a partial list would withdraw config from gateways; wait for all of them.
        if listed.len() < watch_count || !pins_loaded || !members_restored {
            continue;
        }
        let before = index.generation();
        let generation = index.publish();
        admin.xds.metrics.config_generation.set(generation as i64);
        if !admin.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(
                generation,
                objects = index.model().len(),
                "initial sync complete"
            );
        } else if generation != before {
            tracing::info!(generation, objects = index.model().len(), "config applied");
        }
    }
}
