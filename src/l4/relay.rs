//! Relaying a connection's bytes both ways between client and gateway: each direction until
//! its end of stream, which is passed on as a half close (the other direction goes on), and
//! the whole connection closed when neither direction moved a byte for the idle timeout, or
//! when either side resets.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BUFFER: usize = 32 * 1024;

/// Relays until both directions ended, one failed, or the connection idled out.
pub async fn relay(
    client: TcpStream,
    gateway: TcpStream,
    idle_timeout: Option<Duration>,
    (received, sent): (Counter, Counter),
) -> io::Result<()> {
    let started = Instant::now();
    let last_active = AtomicU64::new(0);
    let (client_read, client_write) = client.into_split();
    let (gateway_read, gateway_write) = gateway.into_split();
    let both = async {
        tokio::try_join!(
            pump(client_read, gateway_write, &received, &last_active, started),
            pump(gateway_read, client_write, &sent, &last_active, started),
        )
    };
    let Some(idle_timeout) = idle_timeout else {
        return both.await.map(|_| ());
    };
    let idle = async {
        loop {
            let active = Duration::from_millis(last_active.load(Ordering::Relaxed));
            let quiet = started.elapsed().saturating_sub(active);
            if quiet >= idle_timeout {
                return;
            }
            tokio::time::sleep(idle_timeout - quiet).await;
        }
    };
    tokio::select! {
        result = both => result.map(|_| ()),
        _ = idle => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

/// One direction: reads until end of stream, writing everything read, then half-closes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    counter: &Counter,
    last_active: &AtomicU64,
    started: Instant,
) -> io::Result<()> {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            // The peer may be gone already; the other direction decides then.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buffer[..read]).await?;
        counter.inc_by(read as u64);
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_active.store(now, Ordering::Relaxed);
    }
}
