//! The proxy's own HTTP/1.1 client connection. The request's task writes the request and reads
//! the response itself, as a HAProxy stream does: there is no connection task and no channel
//! between the two, which hyper's client has (its connection runs as a task of its own, fed
//! requests through a channel, and every response crosses back through a second one).
//!
//! It carries the requests whose body is known in full before sending: those without a body,
//! and those buffered so that a retry can send them again. A streamed upload goes through
//! hyper's client instead, which goes on reading the response while the body is still being
//! sent. The protocol itself is plain code in [`super::codec`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::Method;
use hyper::body::{Frame, SizeHint};
use tokio::net::TcpStream;

use super::codec::{self, Chunked, CodecError, Decoded, Framing, Head};

/// The room made in a connection's buffer before each read.
const READ_SIZE: usize = 8 * 1024;

/// An open connection to an upstream, with the bytes read from it and not yet used.
pub(super) struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
    pub served: u32,
    pub idle_since: Instant,
}

/// Why a request got no response on a connection.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before a complete response head")]
    Closed,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// How far a request got before it failed: whether it may be sent again on another connection.
pub(super) struct Failed {
    pub error: Http1Error,
    /// The connection had served before and no response byte came back: the upstream most
    /// likely closed it while it idled.
    pub stale: bool,
    /// Not one byte of the request was written.
    pub unsent: bool,
}

impl Http1Error {
    pub fn is_protocol(&self) -> bool {
        matches!(self, Http1Error::Codec(_))
    }
}

impl Connection {
    pub fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            buffer: BytesMut::new(),
            served: 0,
            idle_since: Instant::now(),
        }
    }

    /// Whether nothing arrived while the connection idled: no close, no stray bytes. It reads
    /// tokio's cached readiness, so it costs a system call only when something did arrive.
    pub fn is_usable(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes `request` (head and body, as [`codec::encode_request`] made them) and reads the
    /// response head.
    pub async fn exchange(&mut self, request: &[u8], method: &Method) -> Result<Head, Failed> {
        let reused = self.served > 0;
        let mut written = 0;
        while written < request.len() {
            let failed = |error: io::Error| Failed {
                error: error.into(),
                stale: reused,
                unsent: written == 0,
            };
            if let Err(error) = self.stream.writable().await {
                return Err(failed(error));
            }
            match self.stream.try_write(&request[written..]) {
                Ok(0) => return Err(failed(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(failed(error)),
            }
        }
        loop {
            let failed = |error: Http1Error, nothing_back: bool| Failed {
                error,
                stale: reused && nothing_back,
                unsent: false,
            };
            if !self.buffer.is_empty() {
                match codec::parse_head(&mut self.buffer, method) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) => {}
                    Err(error) => return Err(failed(error.into(), false)),
                }
            }
            let nothing_back = self.buffer.is_empty();
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) => return Err(failed(Http1Error::Closed, nothing_back)),
                Ok(_) => {}
                Err(error) => return Err(failed(error.into(), nothing_back)),
            }
        }
    }

    /// Reads what has arrived into the buffer; `Ok(0)` when the upstream closed. A read that
    /// does not fill the room clears tokio's readiness, so an idle connection's next check
    /// ([`Connection::is_usable`]) makes no system call.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < READ_SIZE / 4 {
            self.buffer.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buffer)
    }
}

/// A response body read from a [`Connection`] by whoever polls it; the connection goes back to
/// its worker's pool when the body has ended, if it can carry another request.
pub(super) struct Http1Body {
    connection: Option<Connection>,
    state: BodyState,
    reusable: bool,
    pool: super::PoolKey,
}

enum BodyState {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream connection failed during the response body: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before the end of the response body")]
    Incomplete,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl Http1Body {
    /// The body of `head`'s response; `reusable` is false when the connection must close
    /// after it (the upstream said so, or it carried its last request).
    pub fn new(
        connection: Connection,
        framing: Framing,
        reusable: bool,
        pool: super::PoolKey,
    ) -> Http1Body {
        let state = match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(length) => BodyState::Length(length),
            Framing::Chunked => BodyState::Chunked(Chunked::default()),
            Framing::UntilClose => BodyState::UntilClose,
        };
        let mut body = Http1Body {
            connection: Some(connection),
            state,
            reusable,
            pool,
        };
        // A response without a body frees its connection at once.
        if body.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        self.state = BodyState::Done;
        if let Some(connection) = self.connection.take() {
            if self.reusable && connection.buffer.is_empty() {
                super::idle_http1(self.pool, connection);
            }
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state = BodyState::Done;
        self.connection = None;
        Poll::Ready(Some(Err(error)))
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.state {
                BodyState::Done => {
                    self.release();
                    return Poll::Ready(None);
                }
                BodyState::Length(remaining) => {
                    if !connection.buffer.is_empty() {
                        let take = usize::try_from(*remaining)
                            .unwrap_or(usize::MAX)
                            .min(connection.buffer.len());
                        let data = connection.buffer.split_to(take).freeze();
                        *remaining = remaining.saturating_sub(take as u64);
                        if *remaining == 0 {
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut connection.buffer) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End) => {
                        self.release();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(error) => return self.fail(error.into()),
                },
                BodyState::UntilClose => {
                    if !connection.buffer.is_empty() {
                        let data = connection.buffer.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            let until_close = matches!(self.state, BodyState::UntilClose);
            match std::task::ready!(connection.poll_fill(cx)) {
                Ok(0) if until_close => {
                    self.state = BodyState::Done;
                    self.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail(BodyError::Incomplete),
                Ok(_) => {}
                Err(error) => return self.fail(error.into()),
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(remaining) => SizeHint::with_exact(remaining),
            _ => SizeHint::default(),
        }
    }
}
