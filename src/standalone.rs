//! Standalone mode wiring: file provider → index → ADS/ops gRPC server and admin HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::Watcher;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{self, AdminState};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::ops::OpsService;
use crate::provider::file::FileProvider;
use crate::xds::server::{AdsService, XdsState};

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
}

/// A running standalone control plane.
pub struct Running {
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin: Arc<AdminState>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Stops every task and waits for them.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.context("task panicked")??;
        }
        Ok(())
    }

    /// Runs until `signal` resolves or a task fails.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let first_failure = futures::future::select_all(self.tasks.iter_mut());
        tokio::select! {
            _ = signal => {}
            (result, _, _) = first_failure => {
                result.context("task panicked")??;
            }
        }
        self.shutdown().await
    }
}

/// Binds the listeners, loads the configuration once and starts serving.
pub async fn start(options: StandaloneOptions) -> anyhow::Result<Running> {
    if let Some(state_dir) = &options.state_dir {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    }
    let (mut index, snapshots) = Index::new();
    let metrics = Arc::new(Metrics::new());
    let xds = XdsState::new(snapshots, metrics.clone());
    let admin_state = AdminState::new(xds.clone());
    let mut provider = FileProvider::new(&options.config_dir, options.state_dir.clone());
    resync(&mut provider, &mut index, &admin_state)
        .with_context(|| format!("loading {}", options.config_dir.display()))?;

    let (stop, stopped) = watch::channel(false);
    let xds_listener = TcpListener::bind(options.xds_addr)
        .await
        .with_context(|| format!("binding xDS address {}", options.xds_addr))?;
    let admin_listener = TcpListener::bind(options.admin_addr)
        .await
        .with_context(|| format!("binding admin address {}", options.admin_addr))?;
    let xds_addr = xds_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    tracing::info!(%xds_addr, %admin_addr, config_dir = %options.config_dir.display(), "meridian standalone serving");

    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AdsService::new(xds.clone()))
        .add_service(OpsService::new(xds.clone()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(xds_listener), wait(stopped.clone()));
    let http = axum::serve(admin_listener, admin::router(admin_state.clone()))
        .with_graceful_shutdown(wait(stopped.clone()));
    let tasks = vec![
        tokio::spawn(async move { grpc.await.context("xDS server") }),
        tokio::spawn(async move { http.await.context("admin server") }),
        tokio::spawn(watch_config(provider, index, admin_state.clone(), stopped)),
    ];
    Ok(Running {
        xds_addr,
        admin_addr,
        admin: admin_state,
        stop,
        tasks,
    })
}

async fn wait(mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow_and_update() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

fn resync(
    provider: &mut FileProvider,
    index: &mut Index,
    admin: &AdminState,
) -> anyhow::Result<()> {
    let problems = provider.sync(index)?;
    for p in &problems {
        tracing::warn!(source = %p.source, problem = %p.message, "config rejected; last good config keeps serving");
    }
    admin.set_problems(problems);
    let generation = index.publish();
    admin.xds.metrics.config_generation.set(generation as i64);
    admin.ready.store(true, Ordering::Release);
    Ok(())
}

async fn watch_config(
    mut provider: FileProvider,
    mut index: Index,
    admin: Arc<AdminState>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
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
    loop {
        tokio::select! {
            _ = stopped.changed() => return Ok(()),
            Some(()) = events.recv() => tokio::time::sleep(DEBOUNCE).await,
            _ = periodic.tick() => {}
        }
        let before = index.publish();
        if let Err(error) = resync(&mut provider, &mut index, &admin) {
            tracing::error!(%error, "config directory unreadable; last good config keeps serving");
            continue;
        }
        let after = index.publish();
        if after != before {
            tracing::info!(
                generation = after,
                objects = index.model().len(),
                "config applied"
            );
        }
    }
}
