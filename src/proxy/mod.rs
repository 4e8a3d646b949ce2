//! `meridian proxy`: an HTTP gateway fed by Meridian's xDS, as Envoy is. It takes the bootstrap
//! `meridian bootstrap` prints, connects over ADS, compiles what it receives with
//! `core::dataplane` (route tables, clusters, endpoint choice) and serves it; what it cannot
//! honour it NACKs with the resource and field, while the rest keeps serving.
//!
//! I/O only lives here: what the shared ADS client delivers is applied in [`ads`], the listening sockets ([`listeners`]), the
//! request path ([`forward`]) and the admin listener ([`admin`]).

pub mod access_log;
pub mod admin;
pub mod ads;
pub mod breakers;
pub mod cache;
pub mod compiler;
pub mod config;
pub mod forward;
pub mod listeners;
pub mod loads;
pub mod lrs;
pub mod proxy_header;
pub mod rewind;
pub mod serve;
pub mod shards;
pub mod stats;
pub mod tls;
pub mod upstream;
pub mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use self::ads::ProxySubscriber;
use self::config::Config;
use self::listeners::Listeners;
use crate::runtime::xds_client::bootstrap::{Bootstrap, Program};
use crate::runtime::xds_client::XdsClient;

/// How `meridian proxy` runs.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The bootstrap `meridian bootstrap` printed.
    pub bootstrap: PathBuf,
    /// Where the admin listener binds; the bootstrap's `admin.address` if unset.
    pub admin_addr: Option<SocketAddr>,
    /// Keep the last accepted config here, and serve it at start before Meridian answers.
    pub config_cache: Option<PathBuf>,
    /// Stay unready (`/ready` 503) until Meridian itself sent a config, cache or not.
    pub wait_first_config: bool,
    /// How long connections of a removed listener, or of every listener at SIGTERM, may take
    /// to finish before they are closed.
    pub drain_time: Duration,
    /// Request workers: threads, each with its own socket per listener and upstream pools.
    pub workers: usize,
    /// Write a JSON access log line per request here (`-`: standard output).
    pub access_log: Option<PathBuf>,
}

/// Replaced configs nothing holds any more: freed where this is dropped (the compile thread,
/// see [`compiler::Compiler::free`]).
pub struct Unheld(Vec<Arc<Config>>);

/// How far the proxy got: nothing to serve yet, the cached config, or Meridian's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Initializing,
    Cached,
    Live,
}

/// What the ADS client publishes and requests read.
pub struct ProxyState {
    /// The config requests read; only [`ProxyState::publish`] replaces it.
    pub config: ArcSwap<Config>,
    /// Configs replaced while requests may still hold them: freed by the control thread once
    /// nothing else does, so that a worker never pays for freeing a large config.
    retired: std::sync::Mutex<Vec<Arc<Config>>>,
    /// Woken whenever a new config is stored (requests waiting for their routes).
    pub config_changed: tokio::sync::Notify,
    /// When a request first found each route configuration missing (listener warming).
    routes_missing_since: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
    /// 0: initializing, 1: serving the cache, 2: serving Meridian's config.
    readiness: AtomicU8,
    pub wait_first_config: bool,
    pub drain_time: Duration,
    /// Open downstream connections (a shutdown waits for them to drain).
    connections: AtomicUsize,
    pub stats: stats::Stats,
    pub access_log: Option<access_log::AccessLog>,
    /// When the proxy started: outlier detection's clock.
    started: std::time::Instant,
    /// Requests per cluster since the last load report.
    pub loads: Arc<loads::Loads>,
}

impl Default for ProxyState {
    fn default() -> ProxyState {
        ProxyState {
            config: ArcSwap::from_pointee(Config::default()),
            retired: std::sync::Mutex::new(Vec::new()),
            config_changed: tokio::sync::Notify::new(),
            routes_missing_since: std::sync::Mutex::new(HashMap::new()),
            readiness: AtomicU8::new(0),
            wait_first_config: false,
            drain_time: Duration::from_secs(15),
            connections: AtomicUsize::new(0),
            loads: Arc::default(),
            stats: stats::Stats::default(),
            started: std::time::Instant::now(),
            access_log: None,
        }
    }
}

impl ProxyState {
    pub fn readiness(&self) -> Readiness {
        match self.readiness.load(Ordering::Relaxed) {
            0 => Readiness::Initializing,
            1 => Readiness::Cached,
            _ => Readiness::Live,
        }
    }

    /// Meridian's clusters and listeners are applied.
    pub(crate) fn mark_ready(&self) {
        self.readiness.store(2, Ordering::Relaxed);
    }

    /// The cached config is applied (never moves back from Meridian's).
    pub(crate) fn mark_cached(&self) {
        let _ = self
            .readiness
            .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Serves `config` from now on and wakes requests waiting for routes. The config it
    /// replaces is kept until no request holds it, then returned from here or from
    /// [`ProxyState::release_retired`] to be freed on the compile thread, never on a worker:
    /// freeing a config of 10,000 routes takes milliseconds, which a request would wait through.
    #[must_use = "the configs returned are freed where they are dropped"]
    pub(crate) fn publish(&self, config: Config) -> Unheld {
        let replaced = self.config.swap(Arc::new(config));
        self.config_changed.notify_waiters();
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(replaced);
        self.release_retired()
    }

    /// Takes the retired configs no request holds any more, for the caller to free.
    #[must_use = "the configs returned are freed where they are dropped"]
    pub(crate) fn release_retired(&self) -> Unheld {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        // Only this list holds them: nothing can reach them again.
        let (unheld, held) = std::mem::take(&mut *retired)
            .into_iter()
            .partition(|config| Arc::strong_count(config) == 1);
        *retired = held;
        Unheld(unheld)
    }

    /// Time since the proxy started (outlier detection's clock).
    pub(crate) fn clock(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counts a downstream connection open until the guard drops.
    pub(crate) fn open_connection(&self) -> OpenConnection<'_> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.stats.downstream_connections.inc();
        OpenConnection { state: self }
    }

    /// Waits until every downstream connection closed, or `limit` passed.
    async fn drained(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.connections.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A downstream connection, counted while open.
pub(crate) struct OpenConnection<'a> {
    state: &'a ProxyState,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::Relaxed);
        self.state.stats.downstream_connections.dec();
    }
}

/// Runs the proxy until `stopped`; then its listeners drain (within the drain time).
pub async fn run(options: ProxyOptions, stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let bootstrap = Bootstrap::load(&options.bootstrap, Program::Proxy)?;
    shards::set_shard_count(options.workers.max(1));
    let mut stats = stats::Stats::default();
    let access_log = match &options.access_log {
        Some(path) => {
            let log = access_log::AccessLog::open(path)?;
            stats.registry.register(
                "access_log_dropped",
                "Access log lines dropped because the writer fell behind",
                log.dropped.clone(),
            );
            Some(log)
        }
        None => None,
    };
    let state = Arc::new(ProxyState {
        wait_first_config: options.wait_first_config,
        drain_time: options.drain_time,
        stats,
        access_log,
        ..ProxyState::default()
    });
    if let Some(address) = options.admin_addr.or(bootstrap.admin) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("admin listener {address}: {e}"))?;
        tracing::info!(%address, "admin listening");
        tokio::spawn(admin::serve(listener, state.clone(), stopped.clone()));
    }
    let compiler = compiler::Compiler::start()?;
    tokio::spawn(outlier_ticks(
        state.clone(),
        compiler.clone(),
        stopped.clone(),
    ));
    if bootstrap.load_reports {
        tokio::spawn(lrs::run(
            bootstrap.clone(),
            state.loads.clone(),
            stopped.clone(),
        ));
    }
    tracing::info!(node = %bootstrap.node.id, xds_host = %bootstrap.xds_host, xds_port = bootstrap.xds_port, mtls = bootstrap.tls.is_some(), "proxy starting");
    let drain = state.clone();
    // The workers outlive the ADS client: they serve the connections that drain after it.
    let workers = Arc::new(workers::Workers::start(options.workers)?);
    workers::yield_to_workers();
    let subscriber = ProxySubscriber {
        state,
        listeners: Listeners::new(workers.clone()),
        cache: options.config_cache.as_deref().map(cache::ConfigCache::new),
        accepted: config::Accepted::default(),
        compiler,
    };
    let client = XdsClient::new(bootstrap, subscriber);
    run_ads_at_idle_priority(client, stopped).await?;
    tracing::info!(drain_ms = options.drain_time.as_millis() as u64, "draining");
    drain.drained(options.drain_time).await;
    drop(workers);
    Ok(())
}

/// Runs the ADS client to its end on a thread of its own at idle priority, as the compile
/// thread runs. Receiving a large config allocates megabytes, and the kernel zeroes each fresh
/// page (2 MiB with transparent huge pages) on the receiving thread: at the control thread's
/// priority that took whole time slices of a busy worker's core, up to 4 ms on every change of
/// a 10,000-host config, and showed in the requests' p99. The admin listener and load reports
/// stay on the control thread, so `/ready` answers while a config arrives.
async fn run_ads_at_idle_priority(
    client: XdsClient<ProxySubscriber>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("proxy-ads".to_owned())
        .spawn(move || {
            workers::run_at_idle_priority("proxy-ads");
            runtime.block_on(client.run(stopped));
            let _ = done.send(());
        })?;
    // The thread ends when the client does (at `stopped`), or by a panic that is already
    // logged; either way the proxy drains.
    let _ = finished.await;
    Ok(())
}

/// Outlier detection's interval work for every cluster that has it: ejections that ended
/// bring their endpoints back. Each cluster ticks at its own interval; this only wakes often
/// enough for the shortest.
async fn outlier_ticks(
    state: Arc<ProxyState>,
    compiler: compiler::Compiler,
    stopped: watch::Receiver<bool>,
) {
    let ticks = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let config = state.config.load();
            for upstream in config.clusters.values() {
                upstream.tick(state.clock());
            }
            drop(config);
            compiler.free(state.release_retired());
        }
    };
    tokio::select! {
        _ = ticks => {}
        _ = crate::runtime::stopped_signal(stopped) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_config_is_freed_by_whoever_releases_it_not_by_the_last_request() {
        let state = ProxyState::default();
        let request = state.config.load_full();
        let first = Arc::downgrade(&request);
        let unheld = state.publish(Config::default());
        assert!(unheld.0.is_empty(), "a request holds the config replaced");
        // The request that held the old config finishes: it does not free it...
        drop(request);
        assert!(first.upgrade().is_some());
        // ...the next release hands it over, and it is freed where that is dropped.
        let unheld = state.release_retired();
        assert!(first.upgrade().is_some());
        drop(unheld);
        assert!(first.upgrade().is_none());
        // A config nothing holds is handed over as soon as it is replaced.
        let second = Arc::downgrade(&state.config.load_full());
        let unheld = state.publish(Config::default());
        assert_eq!(unheld.0.len(), 1);
        drop(unheld);
        assert!(second.upgrade().is_none());
    }
}
