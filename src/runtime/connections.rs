//! Accepting connections without trusting them: a bounded number at a time, each given a
//! deadline to start talking, and accept errors (out of file descriptors) waited out instead of
//! stopping the server.
//!
//! A connection that has not sent [`OPENING_BYTES`] (the HTTP/2 preface is 24; an HTTP/1
//! request line and Host more) within the handshake timeout is closed; after that, HTTP/2
//! keepalive pings (gRPC) and the HTTP/1 header timeout (admin) take over.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::runtime::log_budget::LogBudget;

/// Bytes a client must send within the handshake timeout.
pub const OPENING_BYTES: usize = 24;

/// What one listener allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a new connection may stay silent.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionLimits {
    /// These limits, with `max_connections` lowered to leave file descriptors for everything
    /// else when the process may open only `fd_limit` (a fourth, at least 32, held back).
    pub fn within(self, fd_limit: u64) -> ConnectionLimits {
        let reserve = (fd_limit / 4).max(32);
        let fits = usize::try_from(fd_limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
        ConnectionLimits {
            max_connections: self.max_connections.min(fits.max(1)),
            ..self
        }
    }
}

/// Raises the soft limit on open files to the hard one (as Go's runtime does) and returns it.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// The connections `listener` accepts within `limits`, until `stopped`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
) -> mpsc::Receiver<io::Result<GuardedStream>> {
    static ACCEPT_FAILED: LogBudget = LogBudget::new(1, Duration::from_secs(5));
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = super::stopped_signal(stopped.clone()) => return,
                accepted = accept(&listener, &permits) => accepted,
            };
            match accepted {
                Ok((stream, permit)) => {
                    let _ = stream.set_nodelay(true);
                    let guarded = GuardedStream::new(stream, permit, limits.handshake_timeout);
                    if tx.send(Ok(guarded)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    if let Some(suppressed) = ACCEPT_FAILED.allow() {
                        tracing::warn!(%error, suppressed, addr = ?listener.local_addr().ok(), "cannot accept connections; retrying");
                    }
                    tokio::select! {
                        _ = stopped.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    });
    rx
}

async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> io::Result<(TcpStream, OwnedSemaphorePermit)> {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("connection limit closed"))?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, permit))
}

/// A connection that counts against the limit while open and must speak up in time.
pub struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the opening bytes arrive.
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
}

impl GuardedStream {
    fn new(inner: TcpStream, permit: OwnedSemaphorePermit, timeout: Duration) -> GuardedStream {
        GuardedStream {
            inner,
            _permit: permit,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            read: 0,
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                let silent = io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client silent past the handshake timeout",
                );
                return Poll::Ready(Err(silent));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            let read = buf.filled().len() - before;
            self.read = self.read.saturating_add(read);
            if self.read >= OPENING_BYTES {
                self.deadline = None;
            }
        }
        polled
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_leaves_descriptors_for_everything_else() {
        let limits = ConnectionLimits::default();
        assert_eq!(limits.within(1_048_576).max_connections, 16_384);
        assert_eq!(limits.within(1024).max_connections, 768);
        assert_eq!(limits.within(64).max_connections, 32);
        assert_eq!(limits.within(0).max_connections, 1);
    }
}
