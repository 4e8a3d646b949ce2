//! `meridian proxy`: an HTTP gateway fed by Meridian's xDS, as Envoy is. It takes the bootstrap
//! `meridian bootstrap` prints, connects over ADS, compiles what it receives with
//! `core::dataplane` (route tables, clusters, endpoint choice) and serves it; what it cannot
//! honour it NACKs with the resource and field, while the rest keeps serving.
//!
//! I/O only lives here: the ADS client ([`ads`]), the listening sockets ([`listeners`]), the
//! request path ([`forward`]) and the admin listener ([`admin`]).

pub mod admin;
pub mod ads;
pub mod bootstrap;
pub mod config;
pub mod forward;
pub mod listeners;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use self::ads::AdsClient;
use self::bootstrap::Bootstrap;
use self::config::Config;
use self::forward::ProxyBody;
use self::listeners::Listeners;

/// How `meridian proxy` runs.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The bootstrap `meridian bootstrap` printed.
    pub bootstrap: PathBuf,
    /// Where the admin listener binds; the bootstrap's `admin.address` if unset.
    pub admin_addr: Option<SocketAddr>,
}

type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// What the ADS client publishes and requests read.
pub struct ProxyState {
    pub config: ArcSwap<Config>,
    ready: AtomicBool,
    /// Upstream clients (and their connection pools) by (connect timeout, HTTP/2).
    clients: ArcSwap<HashMap<(Duration, bool), UpstreamClient>>,
}

impl Default for ProxyState {
    fn default() -> ProxyState {
        ProxyState {
            config: ArcSwap::from_pointee(Config::default()),
            ready: AtomicBool::new(false),
            clients: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

impl ProxyState {
    /// Whether a first config (clusters and listeners) has been applied.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The pooled client for upstreams with this connect timeout and protocol; pools survive
    /// config changes.
    pub(crate) fn client(&self, connect_timeout: Duration, http2: bool) -> UpstreamClient {
        let key = (connect_timeout, http2);
        if let Some(client) = self.clients.load().get(&key) {
            return client.clone();
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client: UpstreamClient = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        self.clients.rcu(|clients| {
            let mut clients = HashMap::clone(clients);
            clients.entry(key).or_insert_with(|| client.clone());
            clients
        });
        client
    }
}

/// Runs the proxy until `stopped`.
pub async fn run(options: ProxyOptions, stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let bootstrap = Bootstrap::load(&options.bootstrap)?;
    tracing::warn!(
        "meridian proxy does not send load reports (LRS) yet: rollout health gates see no traffic from it"
    );
    let state = Arc::new(ProxyState::default());
    if let Some(address) = options.admin_addr.or(bootstrap.admin) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("admin listener {address}: {e}"))?;
        tracing::info!(%address, "admin listening");
        tokio::spawn(admin::serve(listener, state.clone(), stopped.clone()));
    }
    tracing::info!(node = %bootstrap.node.id, xds = %bootstrap.xds_address, "proxy starting");
    let client = AdsClient {
        bootstrap,
        state,
        listeners: Listeners::default(),
    };
    client.run(stopped).await;
    Ok(())
}
