//! `meridian l4`: the L4 node in front of the gateways, fed by Meridian's xDS (what
//! `core::translate::l4` serves a node whose metadata says `meridian.dev/role: l4`). It listens
//! on every VIP:port of its cluster (binding addresses not on an interface yet), picks a
//! gateway for each connection by Maglev over the connection's 5-tuple — the same gateway on
//! every node with the same view, no state shared — and relays bytes both ways, sending a
//! PROXY protocol v2 header first where the cluster says so.
//!
//! Gateways leave the table when their active checks fail (`health.rs`) or, passively, when
//! connections to them fail in a row (outlier detection); a connection a gateway refuses is
//! tried on the next one. The pure parts — compiling, the health state machine, the table —
//! are `core::dataplane::l4`; this module is their I/O.

pub mod admin;
pub mod ads;
pub mod announce;
pub mod health;
pub mod listeners;
pub mod relay;
pub mod stats;
pub mod udp;
pub mod upstream;
pub mod xdp;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use self::ads::L4Subscriber;
use self::announce::{Announcement, BirdOptions};
use self::upstream::Upstream;
use crate::core::dataplane::l4::L4ListenerPlan;
use crate::runtime::xds_client::bootstrap::{Bootstrap, Program};
use crate::runtime::xds_client::XdsClient;

/// How `meridian l4` runs.
#[derive(Clone, Debug)]
pub struct L4Options {
    /// The bootstrap `meridian bootstrap --role l4` printed.
    pub bootstrap: PathBuf,
    /// Where the admin listener binds; the bootstrap's `admin.address` if unset.
    pub admin_addr: Option<SocketAddr>,
    /// How long open connections may take to finish at SIGTERM before they are closed.
    pub drain_time: Duration,
    /// Announce the VIPs this node can serve through BIRD; none: routes are someone else's.
    pub bird: Option<BirdOptions>,
    /// At SIGTERM, how long to keep accepting after the VIPs were withdrawn, while the routers
    /// move new flows to other nodes.
    pub withdraw_wait: Duration,
    /// UDP flows each UDP listener tracks at most (fewer when open files are scarce).
    pub udp_flows: usize,
    /// The XDP packet path in front of the listeners; `None`: user space only.
    pub xdp: Option<xdp::XdpOptions>,
}

/// What connections read: the listeners and clusters accepted, swapped whole per response.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub versions: BTreeMap<&'static str, String>,
    pub listeners: BTreeMap<String, L4ListenerPlan>,
    pub clusters: HashMap<String, Arc<Upstream>>,
}

impl Snapshot {
    /// Whether connections for `cluster` can be taken (`serving`), or why not.
    pub fn serving(&self, cluster: &str) -> &'static str {
        match self.clusters.get(cluster) {
            None => "no cluster",
            Some(upstream) if upstream.assignment.is_none() => "no endpoints yet",
            Some(upstream) if upstream.table().is_empty() => "no available gateway",
            Some(_) => "serving",
        }
    }
}

/// State shared by the ADS client, the listeners, the health checks and the admin listener.
pub struct L4State {
    pub snapshot: ArcSwap<Snapshot>,
    pub stats: stats::Stats,
    ready: AtomicBool,
    /// Client connections open, on every listener.
    open: AtomicUsize,
    closed: Notify,
    started: tokio::time::Instant,
    /// What BIRD announces, when the node drives it.
    announcement: Mutex<Option<Announcement>>,
    /// What the XDP packet path serves, when the node runs one.
    packet_path: Mutex<Option<xdp::PacketPathStatus>>,
}

impl Default for L4State {
    fn default() -> L4State {
        L4State {
            snapshot: ArcSwap::default(),
            stats: stats::Stats::default(),
            ready: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            started: tokio::time::Instant::now(),
            announcement: Mutex::new(None),
            packet_path: Mutex::new(None),
        }
    }
}

impl L4State {
    /// Time since start: the clock outlier detection runs on.
    pub fn clock(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// What BIRD announces (`None` without BGP).
    pub fn announcement(&self) -> Option<Announcement> {
        self.announcement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_announcement(&self, announcement: Announcement) {
        *self.announcement.lock().unwrap_or_else(|e| e.into_inner()) = Some(announcement);
    }

    fn set_announcement_error(&self, error: String) {
        let mut announcement = self.announcement.lock().unwrap_or_else(|e| e.into_inner());
        announcement.get_or_insert_with(Announcement::default).error = Some(error);
    }

    /// What the packet path serves (`None` without one).
    pub fn packet_path(&self) -> Option<xdp::PacketPathStatus> {
        self.packet_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_packet_path(&self, status: xdp::PacketPathStatus) {
        *self.packet_path.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    fn set_packet_path_error(&self, error: String) {
        let mut status = self.packet_path.lock().unwrap_or_else(|e| e.into_inner());
        status
            .get_or_insert_with(xdp::PacketPathStatus::default)
            .error = Some(error);
    }

    /// Counts a client connection while the guard lives.
    pub fn open_connection(self: &Arc<L4State>) -> OpenConnection {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            state: self.clone(),
        }
    }

    /// Waits until no client connection is open, or `limit` passed.
    async fn drained(&self, limit: Duration) {
        let all_closed = async {
            loop {
                let notified = self.closed.notified();
                if self.open.load(Ordering::Relaxed) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_closed).await;
    }
}

/// A client connection, counted while open.
pub struct OpenConnection {
    state: Arc<L4State>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.state.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.state.closed.notify_waiters();
        }
    }
}

/// Runs the node until `stopped`. Then, with BGP, every VIP is withdrawn and the node keeps
/// accepting for the withdraw wait (the routers move new flows elsewhere meanwhile); then its
/// listeners stop accepting and open connections get the drain time to finish.
pub async fn run(options: L4Options, stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let bootstrap = Bootstrap::load(&options.bootstrap, Program::L4)?;
    let state = Arc::new(L4State::default());
    // The node's own stop: after the withdrawal, not at the signal.
    let (stop, node_stopped) = watch::channel(false);
    if let Some(address) = options.admin_addr.or(bootstrap.admin) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("admin listener {address}: {e}"))?;
        tracing::info!(%address, "admin listening");
        tokio::spawn(admin::serve(listener, state.clone(), node_stopped.clone()));
    }
    tokio::spawn(health::outlier_ticks(state.clone(), node_stopped.clone()));
    // The packet path is attached before the listeners exist: a connection either starts on
    // it or on the user-space path, never moves between them.
    let packet_path = match &options.xdp {
        Some(xdp_options) => {
            let mut path = xdp::PacketPath::load(xdp_options)?;
            for interface in &xdp_options.interfaces {
                path.attach(interface, xdp_options.mode)?;
            }
            tracing::info!(interfaces = ?xdp_options.interfaces, mode = ?xdp_options.mode, "XDP packet path attached");
            state.set_packet_path(xdp::PacketPathStatus {
                interfaces: xdp_options.interfaces.clone(),
                ..xdp::PacketPathStatus::default()
            });
            Some(xdp::follow(
                path,
                state.clone(),
                node_stopped.clone(),
                options.drain_time,
            )?)
        }
        None => None,
    };
    let (drain, draining) = watch::channel(false);
    if let Some(bird) = options.bird.clone() {
        state.set_announcement(Announcement::default());
        tokio::spawn(announce::run(
            state.clone(),
            bird,
            draining,
            node_stopped.clone(),
        ));
    }
    tracing::info!(node = %bootstrap.node.id, xds_host = %bootstrap.xds_host, xds_port = bootstrap.xds_port, mtls = bootstrap.tls.is_some(), bgp = options.bird.is_some(), "l4 node starting");
    let fd_limit = crate::runtime::connections::raise_fd_limit();
    let subscriber = L4Subscriber::new(state.clone(), fd_limit, options.udp_flows);
    let client = XdsClient::new(bootstrap, subscriber);
    let serving = tokio::spawn(client.run(node_stopped));
    crate::runtime::stopped_signal(stopped).await;
    if options.bird.is_some() {
        drain.send_replace(true);
        let withdrawn = async {
            while state
                .announcement()
                .is_some_and(|a| !a.announced.is_empty())
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), withdrawn)
            .await
            .is_err()
        {
            tracing::warn!("could not withdraw the VIPs from BIRD; stopping anyway");
        }
        tracing::info!(
            wait_ms = options.withdraw_wait.as_millis() as u64,
            "VIPs withdrawn; still accepting while routers converge"
        );
        tokio::time::sleep(options.withdraw_wait).await;
    }
    stop.send_replace(true);
    let _ = serving.await;
    tracing::info!(drain_ms = options.drain_time.as_millis() as u64, "draining");
    // The packet path drains its flows meanwhile (it saw the same stop).
    state.drained(options.drain_time).await;
    if let Some(follower) = packet_path {
        let _ = tokio::task::spawn_blocking(move || follower.join()).await;
    }
    Ok(())
}
