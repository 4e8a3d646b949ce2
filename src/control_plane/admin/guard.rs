//! What the admin port trusts of a browser: nothing. Web pages can reach a loopback port, so
//! the admin API refuses what only a browser would send.
//!
//! - DNS rebinding: a page on `evil.example` whose name now resolves to 127.0.0.1 reaches this
//!   port with `Host: evil.example`. Only IP addresses and `localhost` are accepted as Host.
//! - Cross-site requests: a page can POST a form or `text/plain` without asking. Changing
//!   anything needs the header [`REQUEST_HEADER`] (which a page cannot set on another origin
//!   without a CORS preflight this server never grants), and a request that carries an
//!   `Origin` (every browser request does; the CLI never) is refused.

use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The header `meridian` sends with every request that changes something.
pub const REQUEST_HEADER: &str = "x-meridian-request";

pub async fn guard(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !trusted_host(host) {
        let message =
            format!("Host {host:?} refused: address the admin API by IP or as localhost\n");
        return (StatusCode::MISDIRECTED_REQUEST, message).into_response();
    }
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads {
        let from_browser = request.headers().contains_key(header::ORIGIN);
        let from_cli = request.headers().contains_key(REQUEST_HEADER);
        if from_browser || !from_cli {
            let message = format!("refused: changes need the {REQUEST_HEADER} header and no Origin (use the meridian CLI)\n");
            return (StatusCode::FORBIDDEN, message).into_response();
        }
    }
    next.run(request).await
}

/// An IP address or `localhost`, with or without a port. (HTTP/1.0 requests without a Host
/// come from no browser and are let through.)
fn trusted_host(host: &str) -> bool {
    if host.is_empty() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::trusted_host;

    #[test]
    fn only_addresses_and_localhost_are_trusted_hosts() {
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "LOCALHOST",
            "[::1]:9090",
            "10.1.2.3",
            "",
        ] {
            assert!(trusted_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "127.0.0.1.nip.io:9090",
            "localhost.evil.example",
        ] {
            assert!(!trusted_host(bad), "{bad}");
        }
    }
}
