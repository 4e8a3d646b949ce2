//! The proxy's listening sockets, reconciled with the accepted listeners: a new one is bound
//! before anything it replaces stops, so a listener whose new address cannot be bound keeps its
//! old socket serving. A removed one (or all of them, on SIGTERM) stops accepting and drains:
//! its connections finish the requests in flight and are told to close (HTTP/2 GOAWAY,
//! `Connection: close`), closed for good after the drain time. Each listener has one socket
//! per worker (`SO_REUSEPORT`), accepted from on that worker only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_rustls::rustls::server::Acceptor;
use tokio_rustls::LazyConfigAcceptor;

use socket2::{Domain, Protocol, Socket, Type};

use super::forward::Downstream;
use super::proxy_header::read_header;
use super::rewind::Rewind;
use super::serve::serve;
use super::workers::Workers;
use super::ProxyState;
use crate::core::dataplane::listeners::ListenerPlan;

struct Running {
    address: (String, u16),
    stop: watch::Sender<bool>,
}

pub struct Listeners {
    running: BTreeMap<String, Running>,
    workers: Arc<Workers>,
}

impl Listeners {
    pub fn new(workers: Arc<Workers>) -> Listeners {
        Listeners {
            running: BTreeMap::new(),
            workers,
        }
    }

    /// Makes the sockets match `plans`; returns the listeners that could not be bound, with
    /// why (those already running keep their old socket).
    pub fn reconcile(
        &mut self,
        plans: &BTreeMap<String, ListenerPlan>,
        state: &Arc<ProxyState>,
    ) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !plans.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(running) = self.running.remove(&name) {
                running.stop.send_replace(true);
                tracing::info!(listener = %name, "listener removed; its connections finish");
            }
        }
        // Sockets share ports (`SO_REUSEPORT`), so two listeners on one address would split
        // its connections: the second is refused, as Envoy refuses duplicate addresses.
        // A listener already serving the address keeps it.
        let mut owners: BTreeMap<(&str, u16), &str> = BTreeMap::new();
        let unchanged = |name: &String, plan: &ListenerPlan| {
            self.running
                .get(name)
                .is_some_and(|r| r.address == (plan.address.clone(), plan.port))
        };
        let (mut order, others): (Vec<_>, Vec<_>) =
            plans.iter().partition(|(name, plan)| unchanged(name, plan));
        order.extend(others);
        for (name, plan) in order {
            let address = (plan.address.clone(), plan.port);
            if plan.port != 0 {
                if let Some(owner) = owners.insert((&plan.address, plan.port), name) {
                    errors.push((
                        name.clone(),
                        format!(
                            "{}:{} is listener {owner}'s already",
                            plan.address, plan.port
                        ),
                    ));
                    owners.insert((&plan.address, plan.port), owner);
                    continue;
                }
            }
            if self.running.get(name).is_some_and(|r| r.address == address) {
                continue;
            }
            match bind_each(&plan.address, plan.port, self.workers.count()) {
                Ok(sockets) => {
                    let (stop, stopped) = watch::channel(false);
                    let mut sockets = sockets.into_iter();
                    self.workers.spawn_each(|_| {
                        let (socket, name) = (sockets.next(), name.clone());
                        let (state, stopped) = (state.clone(), stopped.clone());
                        async move {
                            match socket.map(tokio::net::TcpListener::from_std) {
                                Some(Ok(socket)) => accept(socket, name, state, stopped).await,
                                Some(Err(error)) => {
                                    tracing::warn!(listener = %name, %error, "cannot accept")
                                }
                                None => {}
                            }
                        }
                    });
                    if let Some(old) = self.running.insert(name.clone(), Running { address, stop })
                    {
                        old.stop.send_replace(true);
                    }
                    tracing::info!(listener = %name, address = %plan.address, port = plan.port, "listening");
                }
                Err(error) => errors.push((name.clone(), error.to_string())),
            }
        }
        errors
    }

    /// Stops accepting everywhere (shutdown).
    pub fn stop_all(&mut self) {
        for (_, running) in std::mem::take(&mut self.running) {
            running.stop.send_replace(true);
        }
    }
}

/// Binds `count` sockets to one address with `SO_REUSEPORT`: one per worker.
fn bind_each(
    address: &str,
    port: u16,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let ip: std::net::IpAddr = address.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address:?} is not an IP address"),
        )
    })?;
    let address = SocketAddr::new(ip, port);
    // Port 0 asks for any free port: the first socket gets it, the others share it.
    let mut bound = address;
    let mut sockets = Vec::new();
    for _ in 0..count.max(1) {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&bound.into())
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {address}: {e}")))?;
        socket.listen(1024)?;
        if let Some(local) = socket.local_addr()?.as_socket() {
            bound = local;
        }
        sockets.push(socket.into());
    }
    Ok(sockets)
}

async fn accept(
    socket: tokio::net::TcpListener,
    listener: String,
    state: Arc<ProxyState>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, then accept again.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (listener, state, drain) = (listener.clone(), state.clone(), stopped.clone());
        tokio::spawn(async move {
            let _open = state.open_connection();
            if let Err(why) = connection(stream, remote, &listener, state.clone(), drain).await {
                tracing::debug!(%remote, listener = %listener, why, "connection closed");
            }
        });
    }
}

/// How long a client may take to send its TLS ClientHello and finish the handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves one connection: after its PROXY protocol header where the listener requires one,
/// TLS (a ClientHello first) by the chain its SNI picks, plaintext by the plaintext chain, as
/// Envoy's filter chain match does.
async fn connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    listener: &str,
    state: Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) -> Result<(), &'static str> {
    let config = state.config.load_full();
    let plan = config.listeners.get(listener).ok_or("listener gone")?;
    let (stream, remote) = if plan.proxy_protocol {
        tokio::time::timeout(HANDSHAKE, read_header(stream, remote))
            .await
            .map_err(|_| "PROXY header timed out")??
    } else {
        (Rewind::new(stream), remote)
    };
    let tls = plan.has_tls()
        && matches!(
            tokio::time::timeout(HANDSHAKE, stream.peek_first()).await,
            Ok(Ok(Some(0x16)))
        );
    if !tls {
        let chain = plan.plaintext_chain().ok_or("no plaintext chain")?;
        let downstream = Downstream::new(
            plan.chains[chain].route_config.as_str().into(),
            remote,
            false,
            plan.chains[chain].use_remote_address,
        );
        // A connection must not pin the config it started under; and each protocol's serving
        // future is boxed, so an idle connection holds only the one it uses.
        drop(config);
        Box::pin(serve(stream, downstream, state, drain)).await;
        return Ok(());
    }
    let acceptor = LazyConfigAcceptor::new(Acceptor::default(), stream);
    let start = Box::pin(tokio::time::timeout(HANDSHAKE, acceptor))
        .await
        .map_err(|_| "ClientHello timed out")?
        .map_err(|_| "not a TLS ClientHello")?;
    let chain = plan
        .tls_chain(start.client_hello().server_name())
        .ok_or("no chain for the SNI name")?;
    let server_config = config
        .tls
        .get(&(listener.to_owned(), chain))
        .ok_or("the chain's certificate has not arrived")?
        .clone();
    let stream = Box::pin(tokio::time::timeout(
        HANDSHAKE,
        start.into_stream(server_config),
    ))
    .await
    .map_err(|_| "TLS handshake timed out")?
    .map_err(|_| "TLS handshake failed")?;
    let downstream = Downstream::new(
        plan.chains[chain].route_config.as_str().into(),
        remote,
        true,
        plan.chains[chain].use_remote_address,
    );
    drop(config);
    Box::pin(serve(Rewind::new(stream), downstream, state, drain)).await;
    Ok(())
}
