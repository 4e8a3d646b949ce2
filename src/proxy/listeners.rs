//! The proxy's listening sockets, reconciled with the accepted listeners: a new one is bound
//! before anything it replaces stops, so a listener whose new address cannot be bound keeps its
//! old socket serving. A removed one (or all of them, on SIGTERM) stops accepting and drains:
//! its connections finish the requests in flight and are told to close (HTTP/2 GOAWAY,
//! `Connection: close`), closed for good after the drain time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;
use tokio_rustls::rustls::server::Acceptor;
use tokio_rustls::LazyConfigAcceptor;

use super::forward::{self, Downstream};
use super::ProxyState;
use crate::core::dataplane::listeners::ListenerPlan;

struct Running {
    address: (String, u16),
    stop: watch::Sender<bool>,
}

#[derive(Default)]
pub struct Listeners {
    running: BTreeMap<String, Running>,
}

impl Listeners {
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
        for (name, plan) in plans {
            let address = (plan.address.clone(), plan.port);
            if self.running.get(name).is_some_and(|r| r.address == address) {
                continue;
            }
            match bind(&plan.address, plan.port) {
                Ok(socket) => {
                    let (stop, stopped) = watch::channel(false);
                    tokio::spawn(accept(socket, name.clone(), state.clone(), stopped));
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

fn bind(address: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let ip: std::net::IpAddr = address.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address:?} is not an IP address"),
        )
    })?;
    let socket = match ip {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(SocketAddr::new(ip, port))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {ip}:{port}: {e}")))?;
    socket.listen(1024)
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

/// Serves one connection: TLS (a ClientHello first) by the chain its SNI picks, plaintext by
/// the plaintext chain, as Envoy's filter chain match does.
async fn connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    listener: &str,
    state: Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) -> Result<(), &'static str> {
    let config = state.config.load_full();
    let plan = config.listeners.get(listener).ok_or("listener gone")?;
    let mut first = [0u8; 1];
    let tls = plan.has_tls()
        && matches!(
            tokio::time::timeout(HANDSHAKE, stream.peek(&mut first)).await,
            Ok(Ok(1))
        )
        && first[0] == 0x16;
    if !tls {
        let chain = plan.plaintext_chain().ok_or("no plaintext chain")?;
        let downstream = Downstream {
            route_config: plan.chains[chain].route_config.as_str().into(),
            remote,
            tls: false,
        };
        serve(TokioIo::new(stream), downstream, state, drain).await;
        return Ok(());
    }
    let acceptor = LazyConfigAcceptor::new(Acceptor::default(), stream);
    let start = tokio::time::timeout(HANDSHAKE, acceptor)
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
    let stream = tokio::time::timeout(HANDSHAKE, start.into_stream(server_config))
        .await
        .map_err(|_| "TLS handshake timed out")?
        .map_err(|_| "TLS handshake failed")?;
    let downstream = Downstream {
        route_config: plan.chains[chain].route_config.as_str().into(),
        remote,
        tls: true,
    };
    serve(TokioIo::new(stream), downstream, state, drain).await;
    Ok(())
}

/// Serves HTTP on `io` until the client closes, or until `drain` says so: then the
/// connection finishes what is in flight and closes, within the drain time.
async fn serve<I>(
    io: TokioIo<I>,
    downstream: Downstream,
    state: Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let drain_time = state.drain_time;
    let service = hyper::service::service_fn(move |request| {
        forward::handle(request, downstream.clone(), state.clone())
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = crate::runtime::stopped_signal(drain) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(drain_time, connection).await;
        }
    }
}
