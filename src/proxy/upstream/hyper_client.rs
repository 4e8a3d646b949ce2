//! Upstream connections over hyper's client: HTTP/2, and HTTP/1.1 for streamed uploads (its
//! connection task goes on reading the response while the body is still being sent). Each
//! connection runs as a task on the worker that opened it and stays in that worker's pool.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

use super::{
    connect, park, Inner, Parked, PoolKey, ProxyBody, Settings, UpstreamBody, UpstreamError, POOL,
};

/// Over hyper's HTTP/1.1 client, whose connection task goes on reading the response while a
/// streamed body is still being sent.
pub(super) async fn send_http1(
    addr: SocketAddr,
    settings: Settings,
    mut request: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    loop {
        let key = (settings.pool, addr);
        let (mut connection, reused) = match checkout_http1(key).await {
            Some(connection) => (connection, true),
            // Boxed: connecting is the cold path, and its future would otherwise make every
            // request's future (moved whole on each move) larger.
            None => (Box::pin(connect_http1(addr, settings)).await?, false),
        };
        match connection.sender.try_send_request(request).await {
            Ok(response) => {
                connection.served = connection.served.saturating_add(1);
                let reusable = settings
                    .max_requests_per_connection
                    .is_none_or(|max| connection.served < max);
                let returning = reusable.then_some(Returning { key, connection });
                let (parts, body) = response.into_parts();
                let mut body = HyperBody { body, returning };
                if body.body.is_end_stream() {
                    body.release();
                }
                return Ok(Response::from_parts(
                    parts,
                    UpstreamBody(Inner::Hyper(body)),
                ));
            }
            Err(mut failed) => match failed.take_message() {
                // Never written: the idle connection had gone; try the next one.
                Some(unsent) if reused => request = unsent,
                _ => return Err(failed.into_error().into()),
            },
        }
    }
}

/// The most recently used idle connection to `addr` that is still open and ready.
async fn checkout_http1(key: PoolKey) -> Option<Http1Connection> {
    loop {
        let mut connection = POOL.with_borrow_mut(|pool| {
            let idle = pool.http1.get_mut(&key)?;
            let connection = idle.pop();
            if idle.is_empty() {
                pool.http1.remove(&key);
            }
            connection
        })?;
        if connection.sender.is_closed() || connection.expired(Instant::now()) {
            continue;
        }
        // A connection just returned may not have finished reading its last response.
        if connection.sender.ready().await.is_ok() {
            return Some(connection);
        }
    }
}

async fn connect_http1(
    addr: SocketAddr,
    settings: Settings,
) -> Result<Http1Connection, UpstreamError> {
    let io = TokioIo::new(connect(addr, settings.connect_timeout).await?);
    let (sender, connection) = http1::Builder::new()
        .writev(false)
        .handshake(io)
        .await
        .map_err(handshake_failed(addr))?;
    drive(addr, connection);
    Ok(Http1Connection {
        sender,
        served: 0,
        idle_since: Instant::now(),
    })
}

pub(super) async fn send_http2(
    addr: SocketAddr,
    settings: Settings,
    mut request: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    // HTTP/2 carries the host as `:authority`, taken from the URI with the scheme; like Envoy,
    // the proxy sends no Host header beside it.
    let host = request.headers_mut().remove(http::header::HOST);
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = host
        .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok())
        .or_else(|| http::uri::Authority::try_from(addr.to_string()).ok());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = http::Uri::from_parts(parts)?;
    let key = (settings.pool, addr);
    loop {
        let (mut sender, reused) = match checkout_http2(key, settings) {
            Http2Checkout::Ready(sender) => (sender, true),
            // Requests that find the connection still coming up wait for it, as Envoy queues
            // them, rather than open connections of their own.
            Http2Checkout::Wait(connected) => {
                let _ = tokio::time::timeout(settings.connect_timeout, connected.notified()).await;
                continue;
            }
            Http2Checkout::Connect(connecting) => {
                let sender = Box::pin(connect_http2(addr, settings)).await?;
                drop(connecting);
                (sender, false)
            }
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let body = HyperBody {
                    body,
                    returning: None,
                };
                return Ok(Response::from_parts(
                    parts,
                    UpstreamBody(Inner::Hyper(body)),
                ));
            }
            Err(mut failed) => match failed.take_message() {
                Some(unsent) if reused => {
                    POOL.with_borrow_mut(|pool| pool.http2.remove(&key));
                    request = unsent;
                }
                _ => return Err(failed.into_error().into()),
            },
        }
    }
}

enum Http2Checkout {
    /// The pooled connection, one more stream counted on it.
    Ready(http2::SendRequest<ProxyBody>),
    /// Another request of this worker is connecting; woken when it is done.
    Wait(Arc<Notify>),
    /// None: this request connects, and wakes the waiters when the guard drops.
    Connect(Connecting),
}

/// The worker's HTTP/2 connection to `addr`; it leaves the pool when it is closed or has
/// carried `max_requests_per_connection`.
fn checkout_http2(key: PoolKey, settings: Settings) -> Http2Checkout {
    POOL.with_borrow_mut(|pool| {
        if let Some(shared) = pool.http2.get_mut(&key) {
            if !shared.sender.is_closed() {
                shared.opened = shared.opened.saturating_add(1);
                let sender = shared.sender.clone();
                if settings
                    .max_requests_per_connection
                    .is_some_and(|max| shared.opened >= max)
                {
                    pool.http2.remove(&key);
                }
                return Http2Checkout::Ready(sender);
            }
            pool.http2.remove(&key);
        }
        if let Some(connected) = pool.http2_connecting.get(&key) {
            return Http2Checkout::Wait(connected.clone());
        }
        pool.http2_connecting.insert(key, Arc::new(Notify::new()));
        Http2Checkout::Connect(Connecting { key })
    })
}

/// An HTTP/2 connection being opened; when it is done (or the request gave up on it), the
/// requests waiting for it are woken.
struct Connecting {
    key: PoolKey,
}

impl Drop for Connecting {
    fn drop(&mut self) {
        let _ = POOL.try_with(|pool| {
            if let Some(connected) = pool.borrow_mut().http2_connecting.remove(&self.key) {
                connected.notify_waiters();
            }
        });
    }
}

async fn connect_http2(
    addr: SocketAddr,
    settings: Settings,
) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
    let io = TokioIo::new(connect(addr, settings.connect_timeout).await?);
    let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(handshake_failed(addr))?;
    drive(addr, connection);
    let pooled = settings
        .max_requests_per_connection
        .is_none_or(|max| max > 1);
    if pooled {
        POOL.with_borrow_mut(|pool| {
            pool.http2.insert(
                (settings.pool, addr),
                Http2Connection {
                    sender: sender.clone(),
                    opened: 1,
                },
            )
        });
    }
    Ok(sender)
}

fn handshake_failed(addr: SocketAddr) -> impl FnOnce(hyper::Error) -> UpstreamError {
    move |error| UpstreamError::Connect {
        addr,
        reason: error.to_string(),
    }
}

/// Runs a connection on the calling worker until it closes.
fn drive<C>(addr: SocketAddr, connection: C)
where
    C: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "upstream connection closed");
        }
    });
}

pub(super) struct Http1Connection {
    sender: http1::SendRequest<ProxyBody>,
    served: u32,
    idle_since: Instant,
}

impl Http1Connection {
    pub(super) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Http2Connection {
    pub(super) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Parked for Http1Connection {
    fn idle_since(&self) -> Instant {
        self.idle_since
    }

    fn stamp(&mut self, now: Instant) {
        self.idle_since = now;
    }
}

pub(super) struct Http2Connection {
    sender: http2::SendRequest<ProxyBody>,
    opened: u32,
}

/// A connection that goes back to the pool once its response is read.
pub(super) struct Returning {
    key: PoolKey,
    connection: Http1Connection,
}

pub(super) struct HyperBody {
    pub(super) body: Incoming,
    returning: Option<Returning>,
}

impl HyperBody {
    fn release(&mut self) {
        if let Some(Returning { key, connection }) = self.returning.take() {
            park(key, connection, |pool| &mut pool.http1);
        }
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
            // A connection whose response failed is not reused.
            Some(Err(_)) => self.returning = None,
        }
        Poll::Ready(frame)
    }
}
