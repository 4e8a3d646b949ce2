//! The request path's entry point: [`super::respond`], and with `--access-log` a line per
//! request — what came in, what went out, where it went and Envoy's response flag.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::{respond, Downstream, ProxyBody};
use crate::proxy::access_log::Entry;
use crate::proxy::ProxyState;

/// Envoy's response flag of a reply the proxy made itself, or of an upstream failure.
#[derive(Clone, Copy)]
pub(super) struct Flag(&'static str);

/// Where a request went, for the access log.
#[derive(Clone)]
pub(super) struct Served {
    pub(super) cluster: String,
    pub(super) host: String,
}

pub async fn handle(
    request: Request<Incoming>,
    downstream: Downstream,
    state: Arc<ProxyState>,
) -> Result<Response<ProxyBody>, Infallible> {
    let Some(log) = &state.access_log else {
        return respond(request, downstream, state.clone()).await;
    };
    let (started_at, started) = (std::time::SystemTime::now(), std::time::Instant::now());
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let protocol = match request.version() {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (forwarded_for, user_agent, request_id) = (
        header("x-forwarded-for"),
        header("user-agent"),
        header("x-request-id"),
    );
    let authority = header("host")
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let remote = downstream.remote;
    let response = respond(request, downstream, state.clone()).await;
    let Ok(response) = response;
    let served = response.extensions().get::<Served>();
    let request_id = response
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .or(request_id);
    log.record(&Entry {
        start_time: crate::proxy::access_log::timestamp(started_at),
        method: method.as_str(),
        path: &path,
        protocol,
        response_code: response.status().as_u16(),
        response_flags: response.extensions().get::<Flag>().map_or("-", |f| f.0),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        x_forwarded_for: forwarded_for.as_deref(),
        user_agent: user_agent.as_deref(),
        request_id: request_id.as_deref(),
        authority: &authority,
        upstream_cluster: served.map(|s| s.cluster.as_str()),
        upstream_host: served.map(|s| s.host.as_str()),
        downstream_remote_address: remote.to_string(),
    });
    Ok(response)
}

/// The request id sent upstream (generated when the client sent none), for the access log.
#[derive(Clone)]
pub(super) struct RequestId(pub(super) String);

/// Marks a reply with Envoy's response flag (for the access log).
pub(super) fn flagged(mut reply: Response<ProxyBody>, flag: &'static str) -> Response<ProxyBody> {
    reply.extensions_mut().insert(Flag(flag));
    reply
}
