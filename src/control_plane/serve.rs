//! What both modes serve: the ADS/ops gRPC server and admin HTTP, plus the mode's own tasks,
//! all stopped together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::ServerTlsConfig;

use crate::control_plane::admin::ops::OpsService;
use crate::control_plane::admin::{self, AdminState};
use crate::control_plane::xds::lrs::LoadStatsService;
use crate::control_plane::xds::rest::RestLayer;
use crate::control_plane::xds::server::{AdsService, XdsState};

use crate::runtime::connections::{self, ConnectionLimits};
use crate::runtime::stopped_signal;

/// Notices, every second, polling proxies that stopped polling.
async fn sweep_pollers(
    xds: Arc<XdsState>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => xds.proxies.sweep_pollers(),
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// A running control plane.
pub struct Running {
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin: Arc<AdminState>,
    /// The embedded DNS server's address, when one is serving.
    pub dns_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Binds both listeners and starts serving `admin.xds` (over `tls` when given), each
    /// listener within `limits`.
    pub async fn serve(
        xds_addr: SocketAddr,
        admin_addr: SocketAddr,
        admin_state: Arc<AdminState>,
        tls: Option<ServerTlsConfig>,
        limits: ConnectionLimits,
    ) -> anyhow::Result<Running> {
        let xds_listener = TcpListener::bind(xds_addr)
            .await
            .with_context(|| format!("binding xDS address {xds_addr}"))?;
        let admin_listener = TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("binding admin address {admin_addr}"))?;
        let xds_addr = xds_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let xds = admin_state.xds.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("xDS TLS settings")?;
        }
        let incoming = connections::incoming(xds_listener, limits, stopped.clone());
        let sweep = sweep_pollers(xds.clone(), stopped.clone());
        let grpc = builder
            // A peer that stops answering pings is dropped.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            // REST xDS pollers may speak HTTP/1.1.
            .accept_http1(true)
            .layer(RestLayer::new(xds.clone()))
            .add_service(AdsService::new(xds.clone()))
            .add_service(LoadStatsService::new(xds.clone()))
            .add_service(OpsService::new(xds))
            .serve_with_incoming_shutdown(
                ReceiverStream::new(incoming),
                stopped_signal(stopped.clone()),
            );
        let incoming = connections::incoming(admin_listener, limits, stopped.clone());
        let http = admin::serve(incoming, admin_state.clone(), stopped);
        let running = Running {
            xds_addr,
            admin_addr,
            admin: admin_state,
            dns_addr: None,
            stop,
            tasks: Vec::new(),
        };
        Ok(running
            .with_task(async move { grpc.await.context("xDS server") })
            .with_task(async move { http.await.context("admin server") })
            .with_task(sweep))
    }

    /// Runs `task` alongside the servers; its failure stops everything.
    pub fn with_task(
        mut self,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Running {
        self.tasks.push(tokio::spawn(task));
        self
    }

    /// Starts the embedded DNS server, if `options` asks for one, answering from `snapshots`
    /// with cluster health from `acks`.
    pub async fn with_dns(
        mut self,
        options: &crate::control_plane::dns::server::DnsOptions,
        snapshots: watch::Receiver<Arc<crate::control_plane::index::Snapshot>>,
        acks: crate::control_plane::fleet_acks::FleetAcks,
    ) -> anyhow::Result<Running> {
        let published = self.admin.dns.clone();
        let stopped = self.stopped();
        let Some((dns, task)) = crate::control_plane::dns::server::DnsServer::start(
            options, snapshots, acks, published, stopped,
        )
        .await?
        else {
            return Ok(self);
        };
        self.dns_addr = Some(dns.addr);
        self.tasks.push(task);
        Ok(self)
    }

    /// Resolves once shutdown has begun.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.context("task panicked")??;
        }
        Ok(())
    }

    /// Runs until `signal` resolves or a task ends (its error, if any, is returned after the
    /// others have stopped).
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let ended = tokio::select! {
            _ = signal => None,
            (result, index, _) = futures::future::select_all(self.tasks.iter_mut()) => {
                Some((index, result))
            }
        };
        let Some((index, result)) = ended else {
            return self.shutdown().await;
        };
        // A finished task is not awaited again.
        drop(self.tasks.swap_remove(index));
        let stopped = self.shutdown().await;
        result.context("task panicked")??;
        stopped
    }
}
