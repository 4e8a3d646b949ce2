//! HTTP on one accepted connection, once TLS and any PROXY header are done: HTTP/2 when the
//! client opens with HTTP/2's preface (prior knowledge, or h2 over TLS), HTTP/1 otherwise.
//!
//! An HTTP/1 connection that has nothing in flight for a while gives its HTTP state back, as
//! HAProxy and nginx do with the buffers of idle keep-alive connections: hyper's connection
//! (its read and write buffers and state, about 30 KB) is taken apart without closing the
//! socket, and only the socket waits for the client's next bytes. They start a fresh hyper
//! connection, handed any bytes the last one had read but not parsed. Parking only ever
//! happens between requests (hyper closes an idle connection at once when asked to shut down,
//! and never adds `Connection: close` to a response then), so clients see one keep-alive
//! connection throughout.

use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::forward::{self, Downstream};
use super::upstream::ProxyBody;
use super::ProxyState;

/// How long an HTTP/1 connection goes without a request starting or finishing, with none in
/// flight, before it releases its HTTP state: checked once a period, so released within one
/// to two periods. A busy connection pays one timer wake-up a period, nothing per request.
pub const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// How long closing the write side of a finished connection may take.
const SHUTDOWN: Duration = Duration::from_secs(1);

/// What HTTP/2 with prior knowledge starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves HTTP on `io` until the client closes, or until `drain` says so: then the
/// connection finishes what is in flight and closes, within the drain time.
pub async fn serve<I>(
    io: I,
    downstream: Downstream,
    state: Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut io = Rewind::new(io);
    match opens_with_h2_preface(&mut io).await {
        Ok(Some(true)) => Box::pin(serve_http2(io, downstream, state, drain)).await,
        Ok(Some(false)) => Box::pin(serve_http1(io, downstream, state, drain)).await,
        Ok(None) | Err(_) => {}
    }
}

/// Reads until the first bytes settle it: `Some(true)` for the HTTP/2 preface, `None` when
/// the client closed first. What was read stays in `io` for the server to read again.
async fn opens_with_h2_preface<I: AsyncRead + Unpin>(
    io: &mut Rewind<I>,
) -> io::Result<Option<bool>> {
    let mut seen = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    let decided = loop {
        let read = io.inner.read(&mut seen[filled..]).await?;
        if read == 0 {
            if filled == 0 {
                return Ok(None);
            }
            break false;
        }
        filled += read;
        if seen[..filled] != H2_PREFACE[..filled] {
            break false;
        }
        if filled == H2_PREFACE.len() {
            break true;
        }
    };
    io.unread(Bytes::copy_from_slice(&seen[..filled]));
    Ok(Some(decided))
}

async fn serve_http2<I>(
    io: Rewind<I>,
    downstream: Downstream,
    state: Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain_time = state.drain_time;
    let service = hyper::service::service_fn(move |request| {
        forward::handle(request, downstream.clone(), state.clone())
    });
    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = crate::runtime::stopped_signal(drain) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(drain_time, connection).await;
        }
    }
}

/// How one hyper HTTP/1 connection ended.
enum Ended {
    /// Idle and taken apart on request: the socket stays open.
    Parked,
    /// The client closed, or HTTP said to close (`Connection: close`, HTTP/1.0).
    Closed,
    /// An I/O or protocol error, or the drain time ran out.
    Failed,
}

async fn serve_http1<I>(
    mut io: Rewind<I>,
    downstream: Downstream,
    state: Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let builder = hyper::server::conn::http1::Builder::new();
    loop {
        let service = {
            let (downstream, state, activity) =
                (downstream.clone(), state.clone(), activity.clone());
            hyper::service::service_fn(move |request| {
                let done = activity.start();
                let response = forward::handle(request, downstream.clone(), state.clone());
                Box::pin(async move {
                    let response = response.await?;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| Tracked { body, _done: done }.boxed()),
                    )
                })
            })
        };
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let (ended, connection) = run_http1(connection, &activity, &drain, &state).await;
        let parts = connection.into_parts();
        io = parts.io.into_inner();
        io.unread(parts.read_buf);
        match ended {
            Ended::Parked => {}
            Ended::Closed => {
                let _ = tokio::time::timeout(SHUTDOWN, io.shutdown()).await;
                return;
            }
            Ended::Failed => return,
        }
        // Parked: nothing of hyper's is left; wait for the client's next bytes (or drain).
        if io.is_empty() {
            let _idle = Idle::count(&state);
            tokio::select! {
                more = io.read_ahead() => match more {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return,
                },
                _ = crate::runtime::stopped_signal(drain.clone()) => return,
            }
        }
        if *drain.borrow() {
            return;
        }
    }
}

/// Runs one hyper HTTP/1 connection until it ends, and gives it back for taking apart.
async fn run_http1<C>(
    mut connection: C,
    activity: &Activity,
    drain: &watch::Receiver<bool>,
    state: &ProxyState,
) -> (Ended, C)
where
    C: Http1Connection,
{
    let first_request = activity.snapshot().started + 1;
    let mut last = activity.snapshot();
    let mut parking = false;
    let mut check = pin!(tokio::time::sleep(IDLE_RELEASE));
    let mut drained = pin!(crate::runtime::stopped_signal(drain.clone()));
    loop {
        tokio::select! {
            biased;
            ended = poll_fn(|cx| connection.poll_until_done(cx)) => {
                let ended = match ended {
                    Ok(()) if parking => Ended::Parked,
                    Ok(()) => Ended::Closed,
                    Err(_) => Ended::Failed,
                };
                return (ended, connection);
            }
            _ = drained.as_mut() => {
                // Finish what is in flight (`Connection: close` on it), within the drain time.
                Pin::new(&mut connection).shut_down();
                let finished = tokio::time::timeout(
                    state.drain_time,
                    poll_fn(|cx| connection.poll_until_done(cx)),
                )
                .await;
                let ended = match finished {
                    Ok(Ok(())) => Ended::Closed,
                    _ => Ended::Failed,
                };
                return (ended, connection);
            }
            _ = check.as_mut(), if !parking => {
                let now = activity.snapshot();
                if now == last && now.in_flight() == 0 && now.started >= first_request {
                    // Idle between requests: hyper closes its side at once, writing nothing.
                    Pin::new(&mut connection).shut_down();
                    parking = true;
                } else {
                    last = now;
                    check.as_mut().reset(tokio::time::Instant::now() + IDLE_RELEASE);
                }
            }
        }
    }
}

/// The little of hyper's HTTP/1 server connection this module drives.
trait Http1Connection: Unpin {
    fn poll_until_done(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>>;
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S> Http1Connection for hyper::server::conn::http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = ProxyBody> + Unpin,
    S::Future: Unpin,
{
    fn poll_until_done(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.poll_without_shutdown(cx)
    }

    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Requests one HTTP/1 connection started and finished (response sent, or abandoned).
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snapshot {
    started: u64,
    finished: u64,
}

impl Snapshot {
    fn in_flight(self) -> u64 {
        self.started.saturating_sub(self.finished)
    }
}

impl Activity {
    fn start(self: &Arc<Self>) -> Finished {
        self.started.fetch_add(1, Ordering::Relaxed);
        Finished(self.clone())
    }

    fn snapshot(&self) -> Snapshot {
        // `finished` first: a request that finishes between the loads is never seen finished
        // before it is seen started.
        let finished = self.finished.load(Ordering::Relaxed);
        Snapshot {
            started: self.started.load(Ordering::Relaxed),
            finished,
        }
    }
}

/// Counts its request finished when dropped: with the response body, once hyper sent it all.
struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that counts its request finished when it is dropped.
struct Tracked {
    body: ProxyBody,
    _done: Finished,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts a connection in `downstream_connections_idle` while it lives.
struct Idle<'a>(&'a ProxyState);

impl<'a> Idle<'a> {
    fn count(state: &'a ProxyState) -> Idle<'a> {
        state.stats.downstream_connections_idle.inc();
        Idle(state)
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.stats.downstream_connections_idle.dec();
    }
}

/// A stream with bytes already read from it in front, read again first.
struct Rewind<I> {
    unread: Bytes,
    inner: I,
}

impl<I: AsyncRead + Unpin> Rewind<I> {
    fn new(inner: I) -> Rewind<I> {
        Rewind {
            unread: Bytes::new(),
            inner,
        }
    }

    fn is_empty(&self) -> bool {
        self.unread.is_empty()
    }

    /// Puts `bytes` in front of what is still unread.
    fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.unread = if self.unread.is_empty() {
            bytes
        } else {
            let mut joined = BytesMut::with_capacity(bytes.len() + self.unread.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.unread);
            joined.freeze()
        };
    }

    /// Waits for the client's next bytes and keeps them unread; `false` when it closed. Holds
    /// no buffer while it waits.
    async fn read_ahead(&mut self) -> io::Result<bool> {
        let mut first = [0u8; 64];
        let read = self.inner.read(&mut first).await?;
        self.unread(Bytes::copy_from_slice(&first[..read]));
        Ok(read > 0)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let take = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..take]);
            this.unread.advance(take);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
