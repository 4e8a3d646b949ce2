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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

use super::forward::{self, Downstream};
use super::rewind::Rewind;
use super::upstream::{BoxError, ProxyBody};
use super::ProxyState;

/// How long an HTTP/1 connection goes without a request starting or finishing, with none in
/// flight, before it releases its HTTP state: checked once a period, so released within one
/// to two periods. A busy connection pays one timer wake-up a period, nothing per request.
pub const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// What HTTP/2 with prior knowledge starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves HTTP on `io` until the client closes, or until `drain` says so: then the
/// connection finishes what is in flight and closes, within the drain time.
pub async fn serve<I>(
    mut io: Rewind<I>,
    downstream: Downstream,
    state: Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A client that connects and says nothing is closed by a drain like any other.
    let opened = tokio::select! {
        opened = opens_with_h2_preface(&mut io) => opened,
        _ = crate::runtime::stopped_signal(drain.clone()) => return,
    };
    match opened {
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
        let read = io.read(&mut seen[filled..]).await?;
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

async fn serve_http1<I>(
    io: Rewind<I>,
    downstream: Downstream,
    state: Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.writev(false);
    let mut io = Watched {
        inner: io,
        activity: activity.clone(),
    };
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
        let Some(parked) = run_http1(connection, &activity, &drain, &state).await else {
            return;
        };
        // Parked: nothing of hyper's is left but what it had read and not parsed.
        let parts = parked.into_parts();
        io = parts.io.into_inner();
        io.inner.unread(parts.read_buf);
        if io.inner.is_empty() {
            let _idle = Idle::count(&state);
            tokio::select! {
                more = io.inner.read_ahead() => match more {
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

/// Runs one hyper HTTP/1 connection: until it is idle and parked (given back, for taking
/// apart), or until it is over (`None`: what hyper held is flushed and the socket shut down,
/// or it failed).
async fn run_http1<C>(
    mut connection: C,
    activity: &Activity,
    drain: &watch::Receiver<bool>,
    state: &ProxyState,
) -> Option<C>
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
                return match ended {
                    Ok(()) if parking => Some(connection),
                    // Over by HTTP's say (`Connection: close`, HTTP/1.0) or the client's: hyper
                    // flushes what it still holds, then shuts the socket.
                    Ok(()) => {
                        let _ = poll_fn(|cx| connection.poll_close(cx)).await;
                        None
                    }
                    Err(_) => None,
                };
            }
            _ = drained.as_mut() => {
                // Finish what is in flight (`Connection: close` on it), within the drain time.
                Pin::new(&mut connection).shut_down();
                let _ = tokio::time::timeout(
                    state.drain_time,
                    poll_fn(|cx| connection.poll_close(cx)),
                )
                .await;
                return None;
            }
            _ = check.as_mut(), if !parking => {
                let now = activity.snapshot();
                if now == last && now.idle() && now.started >= first_request {
                    // Idle between requests, every byte of the last response handed to the
                    // socket: hyper closes its side at once, writing nothing.
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
    /// Runs the connection until HTTP is done with it, leaving the socket as it is (and what
    /// hyper still buffers unflushed).
    fn poll_until_done(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>>;
    /// Runs the connection to its end: flushes what hyper buffers and shuts the socket.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>>;
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S> Http1Connection for hyper::server::conn::http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = ProxyBody> + Unpin,
    S::Future: Unpin,
{
    fn poll_until_done(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        self.poll_without_shutdown(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        std::future::Future::poll(Pin::new(self), cx)
    }

    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The socket as hyper uses it, noting whether hyper is left holding bytes the socket would
/// not take yet (its last write was refused): taking hyper apart then would lose them.
struct Watched<I> {
    inner: Rewind<I>,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.activity.note_write(written.is_pending());
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.activity.note_write(written.is_pending());
        written
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

/// Requests one HTTP/1 connection started and finished (response sent, or abandoned), and
/// whether hyper holds bytes the socket has not taken yet.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
    unflushed: AtomicBool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snapshot {
    started: u64,
    finished: u64,
    unflushed: bool,
}

impl Snapshot {
    /// Nothing in flight and nothing left to write.
    fn idle(self) -> bool {
        self.started == self.finished && !self.unflushed
    }
}

impl Activity {
    fn start(self: &Arc<Self>) -> Finished {
        self.started.fetch_add(1, Ordering::Relaxed);
        Finished(self.clone())
    }

    fn note_write(&self, refused: bool) {
        self.unflushed.store(refused, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        // `finished` first: a request that finishes between the loads is never seen finished
        // before it is seen started.
        let finished = self.finished.load(Ordering::Relaxed);
        Snapshot {
            started: self.started.load(Ordering::Relaxed),
            finished,
            unflushed: self.unflushed.load(Ordering::Relaxed),
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
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::io::AsyncWriteExt;

    /// A connection whose client reads slowly: the response's body is all with hyper, most of
    /// it not yet taken by the socket. It is parked, and only once every byte went out. (hyper
    /// itself counts the connection busy until its buffer is flushed; `Watched` guards the
    /// same, as hyper's `into_parts` documents no such promise.)
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_parked_only_once_its_response_is_written() {
        const LENGTH: usize = 64 * 1024;
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::default());
        let io = Watched {
            inner: Rewind::new(server),
            activity: activity.clone(),
        };
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |_request| {
                let done = activity.start();
                Box::pin(async move {
                    let body = Full::new(Bytes::from(vec![b'x'; LENGTH]))
                        .map_err(|never| match never {})
                        .boxed();
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        Tracked { body, _done: done }.boxed(),
                    ))
                })
            })
        };
        let connection =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
        let reader = tokio::spawn(async move {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
                .await
                .unwrap();
            // Reads nothing for three idle checks, then everything.
            tokio::time::sleep(IDLE_RELEASE * 3).await;
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let read = client.read(&mut chunk).await.unwrap();
                assert!(read > 0, "closed after {} bytes", seen.len());
                seen.extend_from_slice(&chunk[..read]);
                if seen.ends_with(&[b'x'; 64]) && seen.len() > LENGTH {
                    return (seen.len(), client);
                }
            }
        });
        let (_drain, drain) = watch::channel(false);
        let state = ProxyState::default();
        let parked = run_http1(connection, &activity, &drain, &state)
            .await
            .expect("parked once idle");
        let (received, _client) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the whole response arrives")
            .unwrap();
        let head = received - LENGTH;
        assert!(head > 0 && head < 200, "{received} bytes");
        assert!(activity.snapshot().idle());
        drop(parked);
    }
}
