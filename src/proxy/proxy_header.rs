//! Reading a connection's PROXY protocol header (on listeners that require one) with
//! [`crate::core::dataplane::proxy_protocol`]; the bytes read past the header are handed back
//! before reading on.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::rewind::Rewind;
use crate::core::dataplane::proxy_protocol::{parse, Parsed, V2_MAX};

/// Reads the header `stream` must start with: the client's address (`peer`, the sender's own,
/// when the header names none), and the stream with what followed the header still to read.
pub async fn read_header(
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<(Rewind<TcpStream>, SocketAddr), &'static str> {
    let mut buffer = Vec::with_capacity(256);
    loop {
        match parse(&buffer) {
            Ok(Parsed::Header { length, source }) => {
                let rest = buffer.split_off(length);
                let mut stream = Rewind::new(stream);
                stream.unread(rest.into());
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
