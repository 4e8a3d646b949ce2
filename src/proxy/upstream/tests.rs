//! The proxy's own HTTP/1.1 client against upstreams written byte by byte on a real socket:
//! the framings an upstream may choose, and connections that end early.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{send, Outgoing, Settings, POOL};

fn settings(pool: u64) -> Settings {
    Settings {
        pool,
        connect_timeout: Duration::from_secs(1),
        http2: false,
        max_requests_per_connection: None,
    }
}

fn get() -> Request<Outgoing> {
    let mut request = Request::new(Outgoing::Complete(Bytes::new()));
    request
        .headers_mut()
        .insert("host", "upstream.test".parse().unwrap());
    request
}

/// An upstream that answers each connection's requests with `answers`, one per request, each
/// written in pieces of `piece` bytes; after the last answer it closes the connection.
async fn upstream(answers: Vec<&'static str>, piece: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                for answer in answers {
                    // Every request here is a bodiless GET: its head ends the bytes read.
                    let mut seen = Vec::new();
                    while !seen.ends_with(b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buffer[..n]),
                        }
                    }
                    for part in answer.as_bytes().chunks(piece) {
                        socket.write_all(part).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
        }
    });
    addr
}

async fn body_of(addr: SocketAddr, pool: u64) -> Result<(u16, Vec<u8>), String> {
    let response = send(addr, settings(pool), get())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes().to_vec()))
}

fn idle_connections(pool: u64, addr: SocketAddr) -> usize {
    POOL.with_borrow(|p| p.own.get(&(pool, addr)).map_or(0, Vec::len))
}

#[tokio::test]
async fn every_framing_arrives_whole_split_however_and_keep_alive_reuses_the_connection() {
    let answers = vec![
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ];
    for piece in [1, 7, 4096] {
        let addr = upstream(answers.clone(), piece).await;
        let pool = piece as u64;
        assert_eq!(body_of(addr, pool).await.unwrap(), (200, b"hello".to_vec()));
        assert_eq!(idle_connections(pool, addr), 1, "pieces of {piece}");
        assert_eq!(body_of(addr, pool).await.unwrap(), (200, b"abcde".to_vec()));
        assert_eq!(body_of(addr, pool).await.unwrap(), (204, Vec::new()));
        assert_eq!(body_of(addr, pool).await.unwrap(), (200, b"ok".to_vec()));
        assert_eq!(
            idle_connections(pool, addr),
            1,
            "one connection carried all four"
        );
    }
}

#[tokio::test]
async fn a_body_delimited_by_close_ends_with_the_connection_which_is_not_reused() {
    let addr = upstream(vec!["HTTP/1.0 200 OK\r\n\r\nuntil the end"], 3).await;
    assert_eq!(
        body_of(addr, 20).await.unwrap(),
        (200, b"until the end".to_vec())
    );
    assert_eq!(idle_connections(20, addr), 0);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_a_shorter_body() {
    let addr = upstream(
        vec!["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"],
        4096,
    )
    .await;
    let error = body_of(addr, 30).await.unwrap_err();
    assert!(
        error.contains("before the end of the response body"),
        "{error}"
    );
    assert_eq!(idle_connections(30, addr), 0);

    let addr = upstream(vec!["HTTP/1.1 200 OK\r\ncontent-"], 4096).await;
    let error = body_of(addr, 31).await.unwrap_err();
    assert!(error.contains("before a complete response head"), "{error}");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_passed_over() {
    // Each connection answers once, keeping the connection open, then closes it.
    let addr = upstream(vec!["HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"], 4096).await;
    assert_eq!(body_of(addr, 40).await.unwrap(), (200, b"a".to_vec()));
    assert_eq!(idle_connections(40, addr), 1);
    // The close reaches the worker's event loop while the connection idles.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(body_of(addr, 40).await.unwrap(), (200, b"a".to_vec()));
}

#[tokio::test]
async fn a_malformed_response_fails_the_request() {
    let addr = upstream(vec!["HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"], 4096).await;
    let error = body_of(addr, 50).await.unwrap_err();
    assert!(error.contains("content-length"), "{error}");
}

#[tokio::test]
async fn the_sweep_closes_idle_connections_the_upstream_closed_and_forgets_their_endpoint() {
    // Each connection answers once, keeping the connection open, then closes it.
    let closing = upstream(vec!["HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"], 4096).await;
    // This one keeps its connection open after answering.
    let open = upstream(
        vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
        ],
        4096,
    )
    .await;
    assert_eq!(body_of(closing, 60).await.unwrap(), (200, b"a".to_vec()));
    assert_eq!(body_of(open, 60).await.unwrap(), (200, b"b".to_vec()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let now = std::time::Instant::now();
    POOL.with_borrow_mut(|pool| pool.sweep(now));
    assert_eq!(idle_connections(60, closing), 0);
    assert!(POOL.with_borrow(|pool| !pool.own.contains_key(&(60, closing))));
    assert_eq!(idle_connections(60, open), 1);
    // Past the idle timeout, the open one goes too.
    POOL.with_borrow_mut(|pool| pool.sweep(now + super::IDLE_TIMEOUT + Duration::from_secs(1)));
    assert_eq!(idle_connections(60, open), 0);
}
