//! `meridian haproxy`: keeps a real HAProxy (2.6+, master-worker) serving what Meridian
//! serves a gateway over ADS, for operators whose edge tier is HAProxy. Frontends come from
//! the listeners and routes, backends from the clusters, with each backend's servers in fixed
//! slots: endpoint changes — NodePort subsets moving, nodes joining and leaving — are Runtime
//! API commands, never a reload; only a change of frontends or backends reloads, after
//! `haproxy -c` approved it. Certificates arrive over SDS and are written as PEM files the
//! crt-lists name. Servers of a Kubernetes Service are agent-checked by `meridian node-agent`
//! (`agent-send` names the Service), which drains them on cordon and sets their weights.
//!
//! The configuration is computed by `core::dataplane::haproxy`; this module is its I/O.

pub mod ads;
pub mod process;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{watch, Mutex};

use self::ads::HaproxySubscriber;
use self::process::{Haproxy, SharedHaproxy};
use crate::core::dataplane::haproxy::render::Settings;
use crate::runtime::xds_client::bootstrap::{Bootstrap, Program};
use crate::runtime::xds_client::XdsClient;

/// How often the watchdog looks at HAProxy.
const WATCH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct HaproxyOptions {
    /// The gateway bootstrap `meridian bootstrap` printed.
    pub bootstrap: PathBuf,
    /// The haproxy binary.
    pub binary: PathBuf,
    /// Where the configuration, certificates and sockets live.
    pub dir: PathBuf,
    /// The node agent's port on every server (`None`: no agent checks).
    pub agent_port: Option<u16>,
    pub agent_inter: Duration,
    pub check_inter: Duration,
    /// How long old workers may finish requests after a reload or at SIGTERM.
    pub drain_time: Duration,
    /// HAProxy's Prometheus metrics (`/metrics`) and stats page (`/stats`).
    pub stats_addr: Option<String>,
}

/// Runs until `stopped`; then HAProxy soft-stops (requests in flight finish within the drain
/// time).
pub async fn run(options: HaproxyOptions, stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let bootstrap = Bootstrap::load(&options.bootstrap, Program::Haproxy)?;
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = options
        .dir
        .canonicalize()
        .with_context(|| format!("reading {}", options.dir.display()))?;
    let settings = Settings {
        runtime_socket: dir.join("admin.sock").display().to_string(),
        files_dir: dir.display().to_string(),
        agent_port: options.agent_port,
        agent_inter: options.agent_inter,
        check_inter: options.check_inter,
        drain: options.drain_time,
        stats_addr: options.stats_addr.clone(),
    };
    tracing::info!(node = %bootstrap.node.id, xds_host = %bootstrap.xds_host, xds_port = bootstrap.xds_port, dir = %dir.display(), "meridian haproxy starting");
    let haproxy = Arc::new(Mutex::new(Haproxy::new(options.binary.clone(), &dir)));
    tokio::spawn(watchdog(haproxy.clone(), stopped.clone()));
    let subscriber = HaproxySubscriber::new(haproxy.clone(), settings);
    XdsClient::new(bootstrap, subscriber).run(stopped).await;
    if let Some(pid) = haproxy.lock().await.stop().await {
        tracing::info!(
            drain_ms = options.drain_time.as_millis() as u64,
            "HAProxy stopping softly"
        );
        process::wait_exit(pid, options.drain_time + Duration::from_secs(2)).await;
    }
    Ok(())
}

/// Restarts HAProxy when it exits under us (killed, crashed), on the configuration in place.
async fn watchdog(haproxy: SharedHaproxy, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        if let Some(Err(error)) = haproxy.lock().await.restart_if_exited().await {
            tracing::error!(%error, "HAProxy does not start again; retrying");
        }
    }
}
