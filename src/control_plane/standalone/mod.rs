//! Standalone mode wiring: file provider → index → ADS/ops gRPC server and admin HTTP.

pub mod files;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::Watcher;
use tokio::sync::{mpsc, watch};

use crate::control_plane::admin::AdminState;
use crate::control_plane::certs::ca::CertificateAuthority;
use crate::control_plane::certs::manager::{CertManager, IssuedSecrets};
use crate::control_plane::certs::{self, CertOptions, XdsTlsOptions};
use crate::control_plane::dns::server::DnsOptions;
use crate::control_plane::fleet_acks::FleetAcks;
use crate::control_plane::index::Index;
use crate::control_plane::metrics::Metrics;
use crate::control_plane::rollouts::{PinUpdate, Role, RolloutStore, RolloutTask};
pub use crate::control_plane::serve::Running;
use crate::control_plane::standalone::files::{FileProvider, SETTLE};
use crate::control_plane::vips::{self, VipStore, VipUpdate};
use crate::control_plane::xds::server::XdsState;
use crate::core::model::export::ExportPolicy;
use crate::core::vip_allocation::allocate;

/// How long file events are collected before one resync.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A full resync even without file events (covers filesystems without inotify).
const RESYNC_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct StandaloneOptions {
    pub config_dir: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Mesh-wide `exportTo` defaults.
    pub export: ExportPolicy,
    pub certs: CertOptions,
    pub xds_tls: XdsTlsOptions,
    pub dns: DnsOptions,
    /// How often gateways send load reports.
    pub load_report_interval: Duration,
    /// Refresh delays after which a silent polling proxy has stopped.
    pub rest_stale_after: u32,
    /// Connections each listener takes at once, and how soon they must speak.
    pub connections: crate::runtime::connections::ConnectionLimits,
}

/// What the edge tasks hand the index owner.
enum Derived {
    Issued(IssuedSecrets),
    Vips(VipUpdate),
    Pins(PinUpdate),
}

impl From<PinUpdate> for Derived {
    fn from(pins: PinUpdate) -> Derived {
        Derived::Pins(pins)
    }
}

impl From<IssuedSecrets> for Derived {
    fn from(issued: IssuedSecrets) -> Derived {
        Derived::Issued(issued)
    }
}

impl From<VipUpdate> for Derived {
    fn from(vips: VipUpdate) -> Derived {
        Derived::Vips(vips)
    }
}

/// Binds the listeners, loads the configuration once and starts serving.
pub async fn start(options: StandaloneOptions) -> anyhow::Result<Running> {
    if let Some(state_dir) = &options.state_dir {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    }
    let (mut index, snapshots) = Index::with_export_policy(options.export.clone());
    index.reserve_cert_names(options.xds_tls.reserved_cert_names());
    let metrics = Arc::new(Metrics::new());
    let ca = Arc::new(load_ca(&options)?);
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
    let mut provider = FileProvider::new(&options.config_dir, options.state_dir.clone())?;
    resync(&mut provider, &mut index, &admin_state)
        .with_context(|| format!("loading {}", options.config_dir.display()))?;
    // VIPs before anything is served: a restart answers with the addresses it had.
    let vip_store = match &options.state_dir {
        Some(dir) => VipStore::File(dir.join("vips.json")),
        None => VipStore::Memory,
    };
    let (table, errors) = allocate(index.model(), &vip_store.load()?);
    index.set_vips(table, errors);
    // Rollouts and holds too: a cluster a rollout or the quarantine held back is not served the
    // new revision by a restart.
    let rollout_store = match &options.state_dir {
        Some(dir) => RolloutStore::File(dir.join("rollouts.json")),
        None => RolloutStore::Memory,
    };
    let stored = rollout_store.load().await?;
    index.set_pins(stored.pins());
    index.publish();

    let tls = options
        .xds_tls
        .server_config(&ca, &options.certs.trust_domain)?;
    let running = Running::serve(
        options.xds_addr,
        options.admin_addr,
        admin_state.clone(),
        tls,
        options.connections,
    )
    .await?;
    tracing::info!(xds_addr = %running.xds_addr, admin_addr = %running.admin_addr, config_dir = %options.config_dir.display(), mtls = options.xds_tls.xds_mtls, "meridian standalone serving");
    let (derived_tx, derived) = mpsc::channel(4);
    let certs = CertManager::new(ca, options.certs.rotation(), metrics);
    let stopped = running.stopped();
    let acks = FleetAcks::local(running.admin.xds.clone());
    let running = running
        .with_task(certs.run(snapshots.clone(), derived_tx.clone(), stopped.clone()))
        .with_task(vips::run(
            vip_store,
            snapshots.clone(),
            derived_tx.clone(),
            stopped.clone(),
        ))
        .with_task(
            RolloutTask {
                store: rollout_store,
                stored: Some(stored),
                snapshots: snapshots.clone(),
                acks: acks.clone(),
                channel: admin_state.rollouts.clone(),
                role: Role::Standalone,
            }
            .run(derived_tx.clone(), stopped.clone()),
        )
        .with_task(crate::control_plane::dns::update::run(
            snapshots.clone(),
            acks.clone(),
            admin_state.dns.clone(),
            None,
            stopped.clone(),
        ))
        .with_task(watch_config(provider, index, derived, admin_state, stopped));
    running.with_dns(&options.dns, snapshots, acks).await
}

/// The CA: operator-provided, kept in the state directory, or (without one) made for this run.
fn load_ca(options: &StandaloneOptions) -> anyhow::Result<CertificateAuthority> {
    match &options.state_dir {
        Some(state_dir) => certs::load_or_create_in_dir(&state_dir.join("ca"), &options.certs),
        None => match options.certs.provided_ca()? {
            Some(ca) => Ok(ca),
            None => {
                tracing::warn!("no --state-dir: the CA lives only as long as this process, and certificates it issued will not verify after a restart");
                options.certs.generate_ca()
            }
        },
    }
}

fn resync(
    provider: &mut FileProvider,
    index: &mut Index,
    admin: &AdminState,
) -> anyhow::Result<()> {
    admin.xds.metrics.config_syncs.inc();
    let mut problems = provider.sync_unsaved(index)?;
    // Served first, saved right after: a slow disk delays the save, not the edit.
    let generation = index.publish();
    problems.extend(provider.save());
    let before = admin.set_problems(problems.clone());
    // Each problem is logged once, when it appears, not on every resync while it lasts.
    let (before, after): (BTreeSet<_>, BTreeSet<_>) =
        (before.iter().collect(), problems.iter().collect());
    for p in after.difference(&before) {
        tracing::warn!(source = %p.source, problem = %p.message, "config rejected; last good config keeps serving");
    }
    let fixed = before.difference(&after).count();
    if fixed > 0 {
        tracing::info!(fixed, "config problems resolved");
    }
    admin.xds.metrics.config_generation.set(generation as i64);
    admin.ready.store(true, Ordering::Release);
    Ok(())
}

async fn watch_config(
    provider: FileProvider,
    index: Index,
    mut derived: mpsc::Receiver<Derived>,
    admin: Arc<AdminState>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (our own included) change nothing; reacting to them would resync forever.
        let changes = event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_)));
        if changes {
            // A full channel already means "resync pending".
            let _ = events_tx.try_send(());
        }
    })
    .context("starting file watcher")?;
    watcher
        .watch(provider.dir(), notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", provider.dir().display()))?;
    let mut periodic = tokio::time::interval(RESYNC_EVERY);
    periodic.tick().await;
    // The first sync (before serving) may have passed over a file caught mid-write.
    let mut settle_at = provider
        .settling()
        .then(|| tokio::time::Instant::now() + SETTLE);
    let mut state = (provider, index);
    loop {
        tokio::select! {
            _ = stopped.changed() => return Ok(()),
            Some(()) = events.recv() => tokio::time::sleep(DEBOUNCE).await,
            _ = periodic.tick() => {}
            _ = tokio::time::sleep_until(settle_at.unwrap_or_else(tokio::time::Instant::now)), if settle_at.is_some() => {}
            Some(update) = derived.recv() => {
                let index = &mut state.1;
                match update {
                    Derived::Issued(issued) => index.set_issued(issued.secrets, issued.errors),
                    Derived::Vips(vips) => index.set_vips(vips.table, vips.errors),
                    Derived::Pins(PinUpdate(pins)) => index.set_pins(pins),
                }
                let generation = index.publish();
                admin.xds.metrics.config_generation.set(generation as i64);
                continue;
            }
        }
        // Reading and parsing take time the async workers (xDS, DNS, admin) must not lose.
        let admin = admin.clone();
        let (returned, result, before, after) = tokio::task::spawn_blocking(move || {
            let (mut provider, mut index) = state;
            let before = index.publish();
            let result = resync(&mut provider, &mut index, &admin);
            let after = index.publish();
            ((provider, index), result, before, after)
        })
        .await
        .context("config sync panicked")?;
        state = returned;
        let (provider, index) = &state;
        settle_at = provider
            .settling()
            .then(|| tokio::time::Instant::now() + SETTLE);
        match result {
            Err(error) => {
                tracing::error!(%error, "config directory unreadable; last good config keeps serving")
            }
            Ok(()) if after != before => tracing::info!(
                generation = after,
                objects = index.model().len(),
                "config applied"
            ),
            Ok(()) => {}
        }
    }
}
