//! The VIP:port sockets, reconciled with the accepted listeners, and what happens to each
//! connection: its 5-tuple hashed, a gateway picked from its cluster's table (the next one
//! when a gateway refuses, up to the listener's connect attempts), the PROXY header sent when
//! the cluster says so, then bytes relayed.
//!
//! Binding: `IP_FREEBIND` where the listener asks for it, so a VIP need not be on an interface
//! (the routers deliver it once announced). A listener whose address changes is bound anew
//! before the old socket closes; one that cannot bind keeps the old and is reported (NACK).
//! A listener whose address stays keeps its socket and serves the new settings at once. A
//! removed listener stops accepting; its connections finish on their own. UDP listeners are
//! bound here and served by the UDP data path (`udp.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use socket2::{Domain, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::stats::{ClusterLabel, ListenerLabel};
use super::udp::{Command, UdpPlane};
use super::L4State;
use crate::core::dataplane::conntrack::FlowKey;
use crate::core::dataplane::l4::{L4ListenerPlan, Transport};
use crate::core::dataplane::proxy_protocol;
use crate::runtime::log_budget::LogBudget;

const TCP: u8 = 6;
const BACKLOG: i32 = 1024;

struct Bound {
    address: SocketAddr,
    transport: Transport,
    freebind: bool,
    plan: watch::Sender<L4ListenerPlan>,
    stop: watch::Sender<bool>,
}

pub struct Listeners {
    bound: BTreeMap<String, Bound>,
    /// Client connections open at once, over every listener (fitted to the open-file limit).
    permits: Arc<Semaphore>,
    /// The UDP data path, started with the first UDP listener.
    udp: Option<UdpPlane>,
    /// UDP flows each UDP listener tracks at most.
    udp_flows: usize,
}

impl Listeners {
    pub fn new(max_connections: usize, udp_flows: usize) -> Listeners {
        Listeners {
            bound: BTreeMap::new(),
            permits: Arc::new(Semaphore::new(max_connections)),
            udp: None,
            udp_flows,
        }
    }

    /// Makes the sockets match `plans`; returns the listeners that could not bind, with why.
    pub fn reconcile(
        &mut self,
        plans: &BTreeMap<String, L4ListenerPlan>,
        state: &Arc<L4State>,
    ) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let gone: Vec<String> = self
            .bound
            .keys()
            .filter(|name| !plans.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(bound) = self.bound.remove(&name) {
                bound.stop.send_replace(true);
                if let (Transport::Udp, Some(udp)) = (bound.transport, &self.udp) {
                    udp.send(Command::Close(name.clone()));
                }
                tracing::info!(listener = %name, address = %bound.address, "listener removed");
            }
        }
        for (name, plan) in plans {
            if let Some(bound) = self.bound.get(name) {
                let same_socket = bound.address == plan.address
                    && bound.freebind == plan.freebind
                    && bound.transport == plan.transport;
                if same_socket {
                    let changed = bound.plan.send_if_modified(|current| {
                        let changed = current != plan;
                        *current = plan.clone();
                        changed
                    });
                    if let (true, Transport::Udp, Some(udp)) = (changed, plan.transport, &self.udp)
                    {
                        udp.send(Command::Update(plan.clone()));
                    }
                    continue;
                }
            }
            let taken = self.bound.iter().find(|(other, b)| {
                *other != name && b.address == plan.address && b.transport == plan.transport
            });
            if let Some((other, _)) = taken {
                errors.push((
                    name.clone(),
                    format!("{} is already listener {other}'s", plan.address),
                ));
                continue;
            }
            if plan.transport == Transport::Udp {
                if let Err(error) = self.listen_udp(name, plan, state) {
                    errors.push((name.clone(), format!("{}/udp: {error}", plan.address)));
                }
                continue;
            }
            match bind(plan.address, plan.freebind) {
                Ok(listener) => {
                    let (plan_tx, plan_rx) = watch::channel(plan.clone());
                    let (stop, stopped) = watch::channel(false);
                    tokio::spawn(accept_loop(
                        listener,
                        plan_rx,
                        state.clone(),
                        self.permits.clone(),
                        stopped,
                    ));
                    tracing::info!(listener = %name, address = %plan.address, "listening");
                    let replaced = self.bound.insert(
                        name.clone(),
                        Bound {
                            address: plan.address,
                            transport: Transport::Tcp,
                            freebind: plan.freebind,
                            plan: plan_tx,
                            stop,
                        },
                    );
                    if let Some(old) = replaced {
                        old.stop.send_replace(true);
                    }
                }
                Err(error) => errors.push((name.clone(), format!("{}: {error}", plan.address))),
            }
        }
        errors
    }

    /// Binds a UDP listener and hands it to the UDP data path (started on first use).
    fn listen_udp(
        &mut self,
        name: &str,
        plan: &L4ListenerPlan,
        state: &Arc<L4State>,
    ) -> std::io::Result<()> {
        let socket = bind_udp(plan.address, plan.freebind)?;
        let udp = match &self.udp {
            Some(udp) => udp,
            None => self
                .udp
                .insert(UdpPlane::start(state.clone(), self.udp_flows)?),
        };
        udp.send(Command::Listen {
            plan: plan.clone(),
            socket,
        });
        tracing::info!(listener = %name, address = %plan.address, "listening (UDP)");
        let (plan_tx, _) = watch::channel(plan.clone());
        let replaced = self.bound.insert(
            name.to_owned(),
            Bound {
                address: plan.address,
                transport: Transport::Udp,
                freebind: plan.freebind,
                plan: plan_tx,
                stop: watch::channel(false).0,
            },
        );
        if let Some(old) = replaced {
            old.stop.send_replace(true);
        }
        Ok(())
    }

    /// Stops accepting on every listener (SIGTERM); open connections drain, UDP flows end.
    pub fn stop_all(&mut self) {
        for (_, bound) in std::mem::take(&mut self.bound) {
            bound.stop.send_replace(true);
        }
        self.udp = None;
    }
}

/// A socket of `kind` bound to `address`, with `IP_FREEBIND` (IPv4 or IPv6) when asked.
fn bound_socket(address: SocketAddr, freebind: bool, kind: Type) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), kind, None)?;
    socket.set_reuse_address(true)?;
    if freebind {
        if address.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_freebind_v6(true)?;
        }
    }
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// A UDP socket on `address`.
fn bind_udp(address: SocketAddr, freebind: bool) -> std::io::Result<std::net::UdpSocket> {
    Ok(bound_socket(address, freebind, Type::DGRAM)?.into())
}

/// A listening socket on `address`.
fn bind(address: SocketAddr, freebind: bool) -> std::io::Result<TcpListener> {
    let socket = bound_socket(address, freebind, Type::STREAM)?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A listener's metric series, resolved once per plan rather than per connection.
struct Counters {
    connections: Counter,
    active: Gauge,
    unserved: Counter,
    received: Counter,
    sent: Counter,
    connect_failures: Counter,
}

impl Counters {
    fn resolve(plan: &L4ListenerPlan, stats: &super::stats::Stats) -> Counters {
        let listener = ListenerLabel {
            listener: plan.name.clone(),
        };
        let (received, sent) = stats.bytes_of(&plan.name);
        Counters {
            connections: stats.connections.get_or_create(&listener).clone(),
            active: stats.active_connections.get_or_create(&listener).clone(),
            unserved: stats.unserved.get_or_create(&listener).clone(),
            received,
            sent,
            connect_failures: stats
                .connect_failures
                .get_or_create(&ClusterLabel {
                    cluster: plan.cluster.clone(),
                })
                .clone(),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut plan: watch::Receiver<L4ListenerPlan>,
    state: Arc<L4State>,
    permits: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    static ACCEPT_FAILED: LogBudget = LogBudget::new(1, Duration::from_secs(5));
    let resolve =
        |plan: &L4ListenerPlan| Arc::new((plan.clone(), Counters::resolve(plan, &state.stats)));
    let mut current = resolve(&plan.borrow_and_update());
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            _ = crate::runtime::stopped_signal(stopped.clone()) => return,
        };
        let Ok(permit) = permit else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = crate::runtime::stopped_signal(stopped.clone()) => return,
        };
        match accepted {
            Ok((client, peer)) => {
                if plan.has_changed().unwrap_or(false) {
                    current = resolve(&plan.borrow_and_update());
                }
                tokio::spawn(serve(client, peer, current.clone(), state.clone(), permit));
            }
            Err(error) => {
                // Out of file descriptors, most likely: wait for some to close.
                if let Some(suppressed) = ACCEPT_FAILED.allow() {
                    tracing::warn!(%error, suppressed, "cannot accept connections; retrying");
                }
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// 16 bytes: IPv4 mapped into IPv6.
fn octets(address: SocketAddr) -> [u8; 16] {
    match address {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped().octets(),
        SocketAddr::V6(v6) => v6.ip().octets(),
    }
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: Arc<(L4ListenerPlan, Counters)>,
    state: Arc<L4State>,
    _permit: OwnedSemaphorePermit,
) {
    static NO_GATEWAY: LogBudget = LogBudget::new(2, Duration::from_secs(10));
    let (plan, counters) = &*listener;
    let _open = state.open_connection();
    counters.connections.inc();
    counters.active.inc();
    let _ = client.set_nodelay(true);
    // The address the client reached (the VIP), as the 5-tuple and the PROXY header see it.
    let local = if plan.address.ip().is_unspecified() {
        client.local_addr().unwrap_or(plan.address)
    } else {
        plan.address
    };
    let key = FlowKey {
        protocol: TCP,
        source: octets(peer),
        source_port: peer.port(),
        destination: octets(local),
        destination_port: local.port(),
    };
    match connect(
        &state,
        plan,
        &counters.connect_failures,
        key.hash(),
        peer,
        local,
    )
    .await
    {
        Some(gateway) => {
            let bytes = (counters.received.clone(), counters.sent.clone());
            if let Err(error) = super::relay::relay(client, gateway, plan.idle_timeout, bytes).await
            {
                tracing::debug!(%error, listener = %plan.name, "connection ended");
            }
        }
        None => {
            counters.unserved.inc();
            if let Some(suppressed) = NO_GATEWAY.allow() {
                tracing::warn!(listener = %plan.name, cluster = %plan.cluster, suppressed, "no gateway took a connection; closed");
            }
        }
    }
    counters.active.dec();
}

/// A connection to a gateway of the listener's cluster, the PROXY header sent if asked:
/// the table's choice for `hash`, then the next, up to the listener's connect attempts.
async fn connect(
    state: &L4State,
    plan: &L4ListenerPlan,
    failures: &Counter,
    hash: u64,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<TcpStream> {
    let upstream = state.snapshot.load().clusters.get(&plan.cluster)?.clone();
    let mut tried = Vec::new();
    for _ in 0..plan.connect_attempts {
        let table = upstream.table();
        let gateway = table.pick(hash, &tried)?;
        let connecting = TcpStream::connect(gateway.address);
        let connected = match tokio::time::timeout(upstream.plan.connect_timeout, connecting).await
        {
            Ok(Ok(stream)) => Some(stream),
            _ => None,
        };
        upstream.record_connect(
            &gateway.id,
            connected.is_some(),
            state.clock(),
            &state.stats,
        );
        let Some(mut stream) = connected else {
            failures.inc();
            tried.push(gateway.id.clone());
            continue;
        };
        let _ = stream.set_nodelay(true);
        if upstream.plan.proxy_protocol {
            let header = proxy_protocol::encode_v2(peer, local);
            if stream.write_all(&header).await.is_err() {
                failures.inc();
                tried.push(gateway.id.clone());
                continue;
            }
        }
        return Some(stream);
    }
    None
}
