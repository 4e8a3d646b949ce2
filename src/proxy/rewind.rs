//! A stream with bytes already read from it in front: what followed a PROXY header, the
//! bytes read to tell HTTP/2 from HTTP/1, and what an idle HTTP/1 connection had read but not
//! parsed. They are read again first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A stream with bytes already read from it in front, read again first.
pub struct Rewind<I> {
    unread: Bytes,
    inner: I,
}

impl<I: AsyncRead + Unpin> Rewind<I> {
    pub fn new(inner: I) -> Rewind<I> {
        Rewind {
            unread: Bytes::new(),
            inner,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.unread.is_empty()
    }

    /// Puts `bytes` in front of what is still unread.
    pub fn unread(&mut self, bytes: Bytes) {
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
    pub async fn read_ahead(&mut self) -> io::Result<bool> {
        let mut first = [0u8; 64];
        let read = self.inner.read(&mut first).await?;
        self.unread(Bytes::copy_from_slice(&first[..read]));
        Ok(read > 0)
    }
}

impl Rewind<TcpStream> {
    /// The next byte the reader will see, without taking it.
    pub async fn peek_first(&self) -> io::Result<Option<u8>> {
        if let Some(byte) = self.unread.first() {
            return Ok(Some(*byte));
        }
        let mut first = [0u8; 1];
        let read = self.inner.peek(&mut first).await?;
        Ok((read == 1).then_some(first[0]))
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
