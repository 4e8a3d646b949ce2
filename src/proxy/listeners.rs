//! The proxy's listening sockets, reconciled with the accepted listeners: a new one is bound
//! before anything it replaces stops, so a listener whose new address cannot be bound keeps its
//! old socket serving; a removed one stops accepting while its connections finish.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use super::forward;
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
    let listener: Arc<str> = listener.into();
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
        let (listener, state) = (listener.clone(), state.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                forward::handle(request, listener.clone(), remote, state.clone())
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
