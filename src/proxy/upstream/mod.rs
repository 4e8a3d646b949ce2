//! Upstream connections, pooled per worker as Envoy's and HAProxy's are: each worker thread
//! keeps, per cluster and endpoint address, its own idle HTTP/1.1 connections and one
//! multiplexed HTTP/2 connection, so taking and returning a connection is a plain map lookup
//! with no lock, no task and no cross-thread wake-up.
//!
//! A request whose body is known in full (most have none) goes over the proxy's own HTTP/1.1
//! client ([`http1`], with the protocol in [`codec`]), which its own task drives; a streamed
//! upload, and HTTP/2, go over hyper's ([`hyper_client`]). Each kind keeps its own idle
//! connections.
//!
//! An HTTP/1.1 connection returns to its worker's pool when the response body has been read
//! to its end (a body dropped half-read closes the connection instead, as it cannot be
//! reused), unless it carried the cluster's `max_requests_per_connection`; an HTTP/2
//! connection leaves the pool once it has opened that many streams, and closes when they end.
//! A request that a reused connection could not even start (the upstream closed it while it
//! idled) is sent again on a new connection, as hyper's pooled client does; so is an
//! idempotent request whose reused connection closed before any response byte. Requests that
//! arrive while a worker's HTTP/2 connection to an endpoint is coming up wait for it.

mod codec;
mod http1;
mod hyper_client;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::core::dataplane::balancer::ClusterPlan;
use crate::core::dataplane::FastMap;

/// Why a body stopped early.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body the proxy sends: a request upstream, a response to its client.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A request's body as it goes upstream.
pub enum Outgoing {
    /// All of it is here (often nothing): the request is written in one go.
    Complete(Bytes),
    /// It arrives as it is sent.
    Streamed(ProxyBody),
}

/// Idle HTTP/1.1 connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach one cluster's endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Which pool: each cluster has its own connections, as in Envoy, even to an address that
    /// another cluster reaches too.
    pool: u64,
    connect_timeout: Duration,
    http2: bool,
    max_requests_per_connection: Option<u32>,
}

impl Settings {
    pub fn of(plan: &ClusterPlan) -> Settings {
        let mut pool = std::collections::hash_map::DefaultHasher::new();
        plan.name.hash(&mut pool);
        Settings {
            pool: pool.finish(),
            connect_timeout: plan.connect_timeout,
            http2: plan.http2,
            max_requests_per_connection: plan.max_requests_per_connection,
        }
    }
}

/// A pool's connections to one endpoint.
type PoolKey = (u64, SocketAddr);

/// Why an upstream attempt got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("upstream request failed: {0}")]
    Request(#[from] hyper::Error),
    #[error(transparent)]
    Http1(#[from] http1::Http1Error),
    #[error("no HTTP/2 request URI: {0}")]
    Uri(#[from] http::uri::InvalidUriParts),
}

impl UpstreamError {
    /// The connection never came up (Envoy's `UF`), as opposed to one that failed (`UC`).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }

    /// The upstream's answer broke HTTP (Envoy's `UPE`, a 502).
    pub fn is_protocol(&self) -> bool {
        match self {
            UpstreamError::Http1(error) => error.is_protocol(),
            UpstreamError::Request(error) => error.is_parse(),
            _ => false,
        }
    }
}

/// Sends `request` to `addr` over a pooled connection, or a new one.
pub async fn send(
    addr: SocketAddr,
    settings: Settings,
    request: Request<Outgoing>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let (parts, body) = request.into_parts();
    match body {
        Outgoing::Complete(body) if !settings.http2 => send_own(addr, settings, parts, body).await,
        body => {
            let body = match body {
                Outgoing::Complete(bytes) => http_body_util::Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed(),
                Outgoing::Streamed(body) => body,
            };
            let request = Request::from_parts(parts, body);
            match settings.http2 {
                true => hyper_client::send_http2(addr, settings, request).await,
                false => hyper_client::send_http1(addr, settings, request).await,
            }
        }
    }
}

/// Over the proxy's own HTTP/1.1 client, driven by the caller's task.
async fn send_own(
    addr: SocketAddr,
    settings: Settings,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = BytesMut::new();
    codec::encode_request(&parts.method, target, &parts.headers, &body, &mut request);
    let key = (settings.pool, addr);
    loop {
        let mut connection = match checkout_own(key) {
            Some(connection) => connection,
            None => {
                http1::Connection::new(Box::pin(connect(addr, settings.connect_timeout)).await?)
            }
        };
        match connection.exchange(&request, &parts.method).await {
            Ok(head) => {
                connection.served = connection.served.saturating_add(1);
                let reusable = head.keep_alive
                    && settings
                        .max_requests_per_connection
                        .is_none_or(|max| connection.served < max);
                let (parts, ()) = head.response.into_parts();
                let body = http1::Http1Body::new(connection, head.framing, reusable, key);
                return Ok(Response::from_parts(parts, UpstreamBody(Inner::Own(body))));
            }
            // The idle connection had gone: the next one, or a new one, gets the request.
            Err(failed) if failed.stale && (failed.unsent || idempotent(&parts.method)) => {}
            Err(failed) => return Err(failed.error.into()),
        }
    }
}

/// RFC 9110's idempotent methods: sending one again cannot do twice what it did once.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The most recently used idle connection of the proxy's own client that is still usable.
fn checkout_own(key: PoolKey) -> Option<http1::Connection> {
    POOL.with_borrow_mut(|pool| {
        let idle = pool.own.get_mut(&key)?;
        let found = std::iter::from_fn(|| idle.pop()).find_map(|mut connection| {
            let fresh = !connection.expired(Instant::now());
            (fresh && connection.is_usable()).then_some(connection)
        });
        if idle.is_empty() {
            pool.own.remove(&key);
        }
        found
    })
}

/// Puts a connection of the proxy's own client back in its worker's pool.
fn idle_http1(key: PoolKey, connection: http1::Connection) {
    park(key, connection, |pool| &mut pool.own);
}

/// How often a worker looks over its idle connections.
const SWEEP: Duration = Duration::from_secs(10);

/// Runs on each worker: every [`SWEEP`], closes the idle connections the upstream closed or
/// that idled past [`IDLE_TIMEOUT`], and forgets endpoints with none left. An idle connection
/// has no task watching it, so without this an endpoint gone with a rollout would keep its
/// closed sockets (and their file descriptors) until the worker ends.
pub async fn sweep_idle() {
    let mut ticks = tokio::time::interval(SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        POOL.with_borrow_mut(|pool| pool.sweep(Instant::now()));
    }
}

impl Pool {
    fn sweep(&mut self, now: Instant) {
        self.own.retain(|_, idle| {
            idle.retain_mut(|c| !c.expired(now) && c.is_usable());
            !idle.is_empty()
        });
        self.http1.retain(|_, idle| {
            idle.retain(|c| !c.expired(now) && !c.is_closed());
            !idle.is_empty()
        });
        self.http2.retain(|_, shared| !shared.is_closed());
    }
}

/// A connection that can wait in a worker's pool.
trait Parked {
    fn idle_since(&self) -> Instant;
    fn stamp(&mut self, now: Instant);

    /// Idle longer than [`IDLE_TIMEOUT`]: closed rather than reused.
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.idle_since()) > IDLE_TIMEOUT
    }
}

/// Adds a connection to its worker's idle list (`list` picks which), the most recently used
/// last.
fn park<C: Parked>(
    key: PoolKey,
    mut connection: C,
    list: fn(&mut Pool) -> &mut FastMap<PoolKey, Vec<C>>,
) {
    let now = Instant::now();
    connection.stamp(now);
    // A worker shutting down has no pool left; the connection just closes.
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = list(&mut pool).entry(key).or_default();
        // The oldest come first: close those idle too long (usually none, so this looks at
        // one entry, not the whole list, on every response).
        let expired = idle.iter().take_while(|c| c.expired(now)).count();
        idle.drain(..expired);
        idle.push(connection);
    });
}

impl Parked for http1::Connection {
    fn idle_since(&self) -> Instant {
        self.idle_since
    }

    fn stamp(&mut self, now: Instant) {
        self.idle_since = now;
    }
}

async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, UpstreamError> {
    let failed = |reason: String| UpstreamError::Connect { addr, reason };
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| failed(format!("no connection within {timeout:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    stream
        .set_nodelay(true)
        .map_err(|e| failed(e.to_string()))?;
    Ok(stream)
}

thread_local! {
    /// This worker's connections. Only synchronous code borrows it, so a borrow never spans
    /// an await.
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

#[derive(Default)]
struct Pool {
    /// Idle connections of the proxy's own client per cluster and address, the most recently
    /// used last.
    own: FastMap<PoolKey, Vec<http1::Connection>>,
    /// Idle connections of hyper's client (streamed uploads), likewise.
    http1: FastMap<PoolKey, Vec<hyper_client::Http1Connection>>,
    http2: FastMap<PoolKey, hyper_client::Http2Connection>,
    /// HTTP/2 connections being opened, with the requests waiting for them.
    http2_connecting: FastMap<PoolKey, Arc<Notify>>,
}

/// An upstream response body; its HTTP/1.1 connection returns to the worker's pool when the
/// body ends.
pub struct UpstreamBody(Inner);

enum Inner {
    Own(http1::Http1Body),
    Hyper(hyper_client::HyperBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match &mut self.get_mut().0 {
            Inner::Own(body) => {
                std::task::ready!(body.poll_frame(cx)).map(|f| f.map_err(Into::into))
            }
            Inner::Hyper(body) => {
                std::task::ready!(body.poll_frame(cx)).map(|f| f.map_err(Into::into))
            }
        };
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Own(body) => body.is_end_stream(),
            Inner::Hyper(body) => body.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Own(body) => body.size_hint(),
            Inner::Hyper(body) => body.body.size_hint(),
        }
    }
}
