//! Relaying a connection's bytes both ways between client and gateway: each direction until
//! its end of stream, which is passed on as a half close (the other direction goes on), and
//! the whole connection closed when neither direction moved a byte for the idle timeout, or
//! when either side resets.
//!
//! A direction starts by copying through a small buffer (most exchanges are a request and an
//! answer that fit in it); once a read fills the buffer the direction carries bulk data and
//! moves on with `splice(2)`, socket → pipe → socket, never through user space. Pipes are
//! pooled: making and closing two per connection would cost more than the copies they save.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A direction copies through this much before it turns to splice.
const COPY_BUFFER: usize = 8 * 1024;
/// Bytes moved per splice call (a pipe holds 64 KiB by default).
const SPLICE_CHUNK: usize = 64 * 1024;
/// Idle pipes kept for the next bulk transfer.
const POOLED_PIPES: usize = 256;

static PIPES: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());

/// What a direction adds its bytes to, and when anything last moved.
struct Activity<'a> {
    counter: &'a Counter,
    last_active: &'a AtomicU64,
    started: Instant,
}

impl Activity<'_> {
    fn moved(&self, bytes: usize) {
        self.counter.inc_by(bytes as u64);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active.store(now, Ordering::Relaxed);
    }
}

/// Relays until both directions ended, one failed, or the connection idled out.
pub async fn relay(
    client: TcpStream,
    gateway: TcpStream,
    idle_timeout: Option<Duration>,
    (received, sent): (Counter, Counter),
) -> io::Result<()> {
    let started = Instant::now();
    let last_active = AtomicU64::new(0);
    let upstream = Activity {
        counter: &received,
        last_active: &last_active,
        started,
    };
    let downstream = Activity {
        counter: &sent,
        last_active: &last_active,
        started,
    };
    let both = async {
        tokio::try_join!(
            direction(&client, &gateway, &upstream),
            direction(&gateway, &client, &downstream),
        )
        .map(|_| ())
    };
    let Some(idle_timeout) = idle_timeout else {
        return both.await;
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
        result = both => result,
        _ = idle => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

/// A pipe that spliced bytes pass through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// An idle pipe from the pool, or a new one.
    fn take() -> io::Result<Pipe> {
        let pooled = PIPES.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.map_or_else(Pipe::new, Ok)
    }

    /// Back to the pool (it must be empty).
    fn give_back(self) {
        let mut pool = PIPES.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED_PIPES {
            pool.push(self);
        }
    }

    fn new() -> io::Result<Pipe> {
        let mut fds: [RawFd; 2] = [-1, -1];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        let made = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if made != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just made by pipe2 and are owned by nothing else.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

/// `splice(2)` of up to `length` bytes from `from` to `to`, without blocking.
fn splice(from: RawFd, to: RawFd, length: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: splice only reads and writes the descriptors given; null offsets mean their
    // current positions (both are sockets or pipes).
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            length,
            flags,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

/// One direction: copies until a read fills the buffer, then splices, until end of stream;
/// then half-closes `to`.
async fn direction(from: &TcpStream, to: &TcpStream, activity: &Activity<'_>) -> io::Result<()> {
    let mut buffer = [0u8; COPY_BUFFER];
    if copy(from, to, &mut buffer, activity, true).await? == Copied::Ended {
        return Ok(());
    }
    let pipe = match Pipe::take() {
        Ok(pipe) => pipe,
        // No pipe to be had (out of descriptors): go on copying.
        Err(_) => {
            return copy(from, to, &mut buffer, activity, false)
                .await
                .map(|_| ())
        }
    };
    splice_rest(from, to, &pipe, activity).await?;
    pipe.give_back();
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Copied {
    /// The end of stream, passed on.
    Ended,
    /// A read filled the buffer: bulk data.
    Bulk,
}

/// Copies through `buffer` until end of stream (then half-closes `to`), or, with
/// `until_bulk`, until a read fills the buffer.
async fn copy(
    from: &TcpStream,
    to: &TcpStream,
    buffer: &mut [u8],
    activity: &Activity<'_>,
    until_bulk: bool,
) -> io::Result<Copied> {
    loop {
        from.readable().await?;
        let read = match from.try_read(buffer) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if read == 0 {
            half_close(to);
            return Ok(Copied::Ended);
        }
        write_all(to, &buffer[..read]).await?;
        activity.moved(read);
        if until_bulk && read == buffer.len() {
            return Ok(Copied::Bulk);
        }
    }
}

/// Passes an end of stream on. The peer may be gone already; the other direction decides
/// then.
fn half_close(to: &TcpStream) {
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(written) => bytes = &bytes[written.min(bytes.len())..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The rest of a direction through `pipe`, which is empty again when this returns `Ok`.
async fn splice_rest(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    activity: &Activity<'_>,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let read = match from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe.write.as_raw_fd(), SPLICE_CHUNK)
        }) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if read == 0 {
            half_close(to);
            return Ok(());
        }
        let mut left = read;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(written) => left -= written.min(left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        activity.moved(read);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_a_half_close_lets_the_answer_through() {
        let (mut client, client_side) = pair().await;
        let (gateway_side, mut gateway) = pair().await;
        let (received, sent) = (Counter::default(), Counter::default());
        let counters = (received.clone(), sent.clone());
        let relaying = tokio::spawn(relay(client_side, gateway_side, None, counters));

        let request: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sending = {
            let request = request.clone();
            async move {
                client.write_all(&request).await.unwrap();
                client.shutdown().await.unwrap();
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).await.unwrap();
                answer
            }
        };
        let answering = async move {
            let mut got = Vec::new();
            gateway.read_to_end(&mut got).await.unwrap();
            gateway.write_all(b"done").await.unwrap();
            gateway.shutdown().await.unwrap();
            got
        };
        let (answer, got) = tokio::join!(sending, answering);
        assert!(
            got == request,
            "the gateway got other bytes than the client sent"
        );
        assert_eq!(answer, b"done");
        relaying.await.unwrap().unwrap();
        assert_eq!((received.get(), sent.get()), (3_000_000, 4));
    }

    #[tokio::test]
    async fn a_connection_idle_for_the_timeout_is_closed() {
        let (mut client, client_side) = pair().await;
        let (gateway_side, _gateway) = pair().await;
        let idle = Duration::from_millis(200);
        let counters = (Counter::default(), Counter::default());
        let relaying = tokio::spawn(relay(client_side, gateway_side, Some(idle), counters));
        let result = tokio::time::timeout(Duration::from_secs(5), relaying)
            .await
            .expect("closed within the idle timeout")
            .unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
