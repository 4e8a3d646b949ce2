//! Reading a connection's PROXY protocol header (on listeners that require one) with
//! [`crate::core::dataplane::proxy_protocol`], and a stream that hands the bytes read past the
//! header back before reading on.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::core::dataplane::proxy_protocol::{parse, Parsed, V2_MAX};

/// A TCP stream with bytes already read from it in front.
pub struct Prefixed {
    prefix: Vec<u8>,
    consumed: usize,
    inner: TcpStream,
}

impl Prefixed {
    pub fn new(inner: TcpStream) -> Prefixed {
        Prefixed {
            prefix: Vec::new(),
            consumed: 0,
            inner,
        }
    }

    /// The next byte the reader will see, without taking it.
    pub async fn peek_first(&self) -> io::Result<Option<u8>> {
        if let Some(byte) = self.prefix.get(self.consumed) {
            return Ok(Some(*byte));
        }
        let mut first = [0u8; 1];
        let read = self.inner.peek(&mut first).await?;
        Ok((read == 1).then_some(first[0]))
    }
}

/// Reads the header `stream` must start with: the client's address (`peer`, the sender's own,
/// when the header names none), and the stream with what followed the header still to read.
pub async fn read_header(
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<(Prefixed, SocketAddr), &'static str> {
    let mut buffer = Vec::with_capacity(256);
    loop {
        match parse(&buffer) {
            Ok(Parsed::Header { length, source }) => {
                let rest = buffer.split_off(length);
                let stream = Prefixed {
                    prefix: rest,
                    consumed: 0,
                    inner: stream,
                };
                return Ok((stream, source.unwrap_or(peer)));
            }
            Ok(Parsed::Incomplete { needed }) => {
                let want = needed.clamp(buffer.len() + 1, V2_MAX);
                let start = buffer.len();
                buffer.resize(want, 0);
                let read = stream
                    .read(&mut buffer[start..])
                    .await
                    .map_err(|_| "reading the PROXY header failed")?;
                if read == 0 {
                    return Err("closed before a whole PROXY header");
                }
                buffer.truncate(start + read);
            }
            Err(_) => return Err("no valid PROXY protocol header"),
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.consumed < this.prefix.len() {
            let available = &this.prefix[this.consumed..];
            let take = available.len().min(buf.remaining());
            buf.put_slice(&available[..take]);
            this.consumed += take;
            if this.consumed == this.prefix.len() {
                this.prefix = Vec::new();
                this.consumed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A header sent in two pieces with the request glued to it: the address comes out, and
    /// the request reads whole after it.
    #[tokio::test]
    async fn the_header_is_taken_and_what_follows_is_kept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            stream
                .write_all(b"127.0.0.1 4000 80\r\nGET / HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            stream
        });
        let (stream, peer) = listener.accept().await.unwrap();
        let (mut stream, client_address) = read_header(stream, peer).await.unwrap();
        assert_eq!(client_address, "203.0.113.7:4000".parse().unwrap());
        assert_eq!(stream.peek_first().await.unwrap(), Some(b'G'));
        let mut request = vec![0u8; 18];
        stream.read_exact(&mut request).await.unwrap();
        assert_eq!(request, b"GET / HTTP/1.1\r\n\r\n");
        drop(client.await.unwrap());

        // No header: refused.
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            stream
        });
        let (stream, peer) = listener.accept().await.unwrap();
        assert!(read_header(stream, peer).await.is_err());
        drop(client.await.unwrap());
    }
}
