//! The request path: the compiled route table says where a request goes, the cluster's
//! balancer which endpoint; this module only moves bytes and applies the header edits, with
//! Envoy's gateway defaults (`x-forwarded-for`, `x-request-id`, the port stripped from Host).
//! [`headers`] holds the header work, [`logged`] the entry point with its access log.

mod headers;
mod logged;

pub use logged::handle;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST, LOCATION};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};

use self::headers::{
    append_forwarded_for, edit_request, edit_response, remove_hop_by_hop, request_id,
    X_FORWARDED_PROTO, X_REQUEST_ID,
};
use self::logged::{flagged, RequestId, Served};
use super::config::Upstream;
use super::stats::{ClusterMetrics, Failure};
use super::upstream::{self, Outgoing, UpstreamBody, UpstreamError};
use super::ProxyState;
use crate::core::dataplane::outlier::Outcome;
use crate::core::dataplane::routes::{strip_port, Action, Forward, RequestHead, Route, Target};

pub use super::upstream::ProxyBody;

/// Request bodies up to this size are buffered so a retry can send them again.
const RETRY_BUFFER: u64 = 64 * 1024;

/// Where a connection came in: the route configuration of its filter chain, the client, and
/// whether it is TLS.
#[derive(Clone)]
pub struct Downstream {
    pub route_config: Arc<str>,
    pub remote: SocketAddr,
    pub tls: bool,
    /// The chain's `use_remote_address` (Meridian sets it on every gateway): the client is
    /// the edge, so its address is appended to `x-forwarded-for` and its `x-request-id` is
    /// replaced, as Envoy does by default (`preserve_external_request_id: false`).
    pub edge: bool,
    /// The client's address as `x-forwarded-for` carries it, written once per connection.
    client_address: HeaderValue,
}

impl Downstream {
    pub fn new(route_config: Arc<str>, remote: SocketAddr, tls: bool, edge: bool) -> Downstream {
        let client_address = HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Downstream {
            route_config,
            remote,
            tls,
            edge,
            client_address,
        }
    }
}

pub(super) async fn respond(
    request: Request<Incoming>,
    downstream: Downstream,
    state: Arc<ProxyState>,
) -> Result<Response<ProxyBody>, Infallible> {
    let Some(config) = warmed(&state, &downstream.route_config).await else {
        return counted(
            &state,
            flagged(local_reply(StatusCode::NOT_FOUND, None), "NR"),
        );
    };
    let Some(table) = config.routes.get(&*downstream.route_config) else {
        return counted(
            &state,
            flagged(local_reply(StatusCode::NOT_FOUND, None), "NR"),
        );
    };
    // Meridian's listeners strip any port from the host (Envoy's strip_any_host_port): for
    // matching, redirects and the Host sent upstream alike. The host and URI are shared
    // bytes: these clones copy none.
    let (host, uri) = (request.headers().get(HOST).cloned(), request.uri().clone());
    let authority = strip_port(
        host.as_ref()
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .unwrap_or_default(),
    );
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let head = RequestHead {
        method: request.method().as_str(),
        authority,
        path,
        headers: request.headers(),
    };
    let Some(route) = table.route(&head) else {
        return counted(
            &state,
            flagged(local_reply(StatusCode::NOT_FOUND, None), "NR"),
        );
    };
    let mut response = match &route.action {
        Action::Direct { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            local_reply(status, body.clone())
        }
        Action::Redirect(redirect) => {
            let mut reply = local_reply(
                StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                None,
            );
            let scheme = if downstream.tls { "https" } else { "http" };
            if let Ok(location) = HeaderValue::from_str(&redirect.location(scheme, authority, path))
            {
                reply.headers_mut().insert(LOCATION, location);
            }
            reply
        }
        Action::Forward(forward) => {
            let target = forward.target(rand::random());
            let hash = forward.request_hash(&head, &downstream.remote.ip());
            let Some(upstream) = config.clusters.get(&target.cluster) else {
                let reply = flagged(local_reply(StatusCode::SERVICE_UNAVAILABLE, None), "NC");
                return counted(&state, reply);
            };
            // Boxed: a request's future is moved whole (into hyper's box, among others), and
            // forwarding is most of its size.
            let mut response = Box::pin(proxy(
                request,
                route,
                forward,
                (target, hash),
                authority,
                path,
                &downstream,
                &state,
                upstream,
            ))
            .await;
            upstream.load.record(response.status().is_server_error());
            edit_response(response.headers_mut(), &target.edits);
            response
        }
    };
    edit_response(response.headers_mut(), &route.edits);
    counted(&state, response)
}

/// How long a request waits for its listener's route configuration, as Envoy warms a listener
/// until its routes arrive (its `initial_fetch_timeout`).
const WARMING: Duration = Duration::from_secs(15);

/// The config, once it holds `route_config`: a listener is served before its routes arrive
/// (so that a port that cannot be bound is NACKed with the listener), and its first requests
/// wait for them rather than get 404.
async fn warmed(state: &ProxyState, route_config: &str) -> Option<Arc<super::config::Config>> {
    let config = state.config.load_full();
    if config.routes.contains_key(route_config) {
        return Some(config);
    }
    // Boxed: only a listener's first requests wait, and a request's future is moved whole.
    Box::pin(warming(state, route_config)).await
}

async fn warming(state: &ProxyState, route_config: &str) -> Option<Arc<super::config::Config>> {
    // The window opens when a request first misses this route configuration, so a listener
    // whose routes never come answers 404 at once after it, as a warmed Envoy listener does.
    let deadline = {
        let mut missing = state
            .routes_missing_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let since = *missing
            .entry(route_config.to_owned())
            .or_insert_with(tokio::time::Instant::now);
        since + WARMING
    };
    loop {
        let changed = state.config_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let config = state.config.load_full();
        if config.routes.contains_key(route_config) {
            return Some(config);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return None;
        }
    }
}

/// Counts the response a client gets.
fn counted(
    state: &ProxyState,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    state.stats.downstream_response(response.status());
    Ok(response)
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    request: Request<Incoming>,
    route: &Route,
    forward: &Forward,
    (target, hash): (&Target, Option<u64>),
    authority: &str,
    path: &str,
    downstream: &Downstream,
    state: &ProxyState,
    upstream: &Upstream,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let content_length = parts.headers_len_hint();
    let method = parts.method;
    let mut headers = parts.headers;
    remove_hop_by_hop(&mut headers);
    let host = forward.host_rewrite.as_deref().unwrap_or(authority);
    // Most requests already carry exactly this Host; they keep it as it came.
    if headers.get(HOST).map(HeaderValue::as_bytes) != Some(host.as_bytes()) {
        if let Ok(host) = HeaderValue::from_str(host) {
            headers.insert(HOST, host);
        }
    }
    if downstream.edge {
        append_forwarded_for(&mut headers, &downstream.client_address);
    }
    let proto = if downstream.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if downstream.edge || !headers.contains_key(X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, request_id());
    }
    let request_id = state
        .access_log
        .as_ref()
        .and_then(|_| headers.get(X_REQUEST_ID)?.to_str().ok().map(str::to_owned));
    // Envoy's order: the weighted cluster's edits, then the route's (which win a conflict).
    edit_request(&mut headers, &target.edits);
    edit_request(&mut headers, &route.edits);
    // Origin form (`/path?query`), as HTTP/1.1 sends it; HTTP/2 adds scheme and authority.
    let upstream_uri: Option<Uri> = match forward.rewrite_path(route, path) {
        Some(rewritten) => rewritten.parse().ok(),
        None if parts.uri.scheme().is_none() => Some(parts.uri.clone()),
        None => path.parse().ok(),
    };

    let retry = forward.retry.as_ref();
    let small = content_length.is_some_and(|len| len <= RETRY_BUFFER);
    let (buffered, mut streamed): (Option<Bytes>, Option<Incoming>) =
        match (retry, small || body_is_empty(&method)) {
            (Some(_), true) => match Box::pin(body.collect()).await {
                Ok(collected) => (Some(collected.to_bytes()), None),
                Err(_) => return local_reply(StatusCode::BAD_REQUEST, None),
            },
            _ => (None, Some(body)),
        };
    // Circuit breakers: the request holds its place until its response body is done.
    let Some(ticket) = upstream.breakers.admit(upstream.plan.http2).await else {
        return overflow();
    };
    let attempts = retry.map_or(1, |r| r.attempts.saturating_add(1));
    let mut _retrying = None;
    let per_try = retry.and_then(|r| r.per_try_timeout).or(forward.timeout);
    // The answer of the last failed attempt, made only when an attempt fails.
    let mut last = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            // Over max_retries the last answer stands, as in Envoy.
            match upstream.breakers.retry() {
                Some(retrying) => _retrying = Some(retrying),
                None => break,
            }
        }
        let balancer = upstream.balancer.load();
        let Some(pick) = balancer.pick(rand::random(), hash) else {
            return no_healthy_upstream();
        };
        let endpoint = balancer.endpoint(pick);
        let _active = balancer.start(pick);
        let endpoint_id = upstream.detects_outliers().then(|| endpoint.id());
        let addr = match endpoint.host.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, endpoint.port)),
            // Boxed: the name lookup's future is large, and most endpoints are addresses.
            Err(_) => Box::pin(resolve(&endpoint.host, endpoint.port)).await,
        };
        let Some(addr) = addr else {
            last = Some(flagged(
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("upstream connect error or disconnect/reset before headers. reset reason: connection failure".to_owned()),
                ),
                "UF",
            ));
            continue;
        };
        let uri = match &upstream_uri {
            Some(uri) => uri.clone(),
            None => return local_reply(StatusCode::BAD_REQUEST, None),
        };
        let body = match (&buffered, streamed.take()) {
            (Some(bytes), _) => Outgoing::Complete(bytes.clone()),
            (None, Some(incoming)) if incoming.is_end_stream() => Outgoing::Complete(Bytes::new()),
            (None, Some(incoming)) => Outgoing::Streamed(incoming.map_err(Into::into).boxed()),
            (None, None) => break,
        };
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = if attempt + 1 < attempts {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        if upstream.plan.http2 {
            *outgoing.version_mut() = http::Version::HTTP_2;
        }
        // Pinned where it is: the timeout holds a reference, not a second copy of the future.
        let sent = std::pin::pin!(upstream::send(addr, upstream.settings, outgoing));
        let started = std::time::Instant::now();
        let outcome = match per_try {
            Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| ()),
            None => Ok(sent.await),
        };
        let retriable = |status: StatusCode| {
            retry.is_some_and(|r| {
                (r.on_5xx && status.is_server_error())
                    || (r.on_gateway_error && matches!(status.as_u16(), 502..=504))
                    || r.statuses.contains(&status.as_u16())
            })
        };
        record_attempt(&upstream.metrics, &outcome, started.elapsed());
        if let Some(id) = &endpoint_id {
            let result = match &outcome {
                Ok(Ok(response)) => Outcome::Status(response.status().as_u16()),
                _ => Outcome::LocalFailure,
            };
            upstream.record(id, result, state.clock());
        }
        match outcome {
            Err(()) => {
                let reply = flagged(
                    local_reply(
                        StatusCode::GATEWAY_TIMEOUT,
                        Some("upstream request timeout".to_owned()),
                    ),
                    "UT",
                );
                if !retry.is_some_and(|r| r.on_5xx || r.on_gateway_error) {
                    return reply;
                }
                last = Some(reply);
            }
            Ok(Err(error)) => {
                let connect = error.is_connect();
                let (status, reason, flag) = if connect {
                    (StatusCode::SERVICE_UNAVAILABLE, "connection failure", "UF")
                } else if error.is_protocol() {
                    (StatusCode::BAD_GATEWAY, "protocol error", "UPE")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "connection termination",
                        "UC",
                    )
                };
                let reply = flagged(
                    local_reply(
                        status,
                        Some(format!(
                            "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
                        )),
                    ),
                    flag,
                );
                let again = retry.is_some_and(|r| {
                    r.on_5xx
                        || r.on_gateway_error
                        || (connect && r.on_connect_failure)
                        || (!connect && r.on_reset)
                });
                if !again {
                    return reply;
                }
                last = Some(reply);
            }
            Ok(Ok(response)) => {
                let status = response.status();
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                if attempt + 1 < attempts && retriable(status) {
                    last = Some(Response::from_parts(parts, body.boxed()));
                    continue;
                }
                // The ticket goes with the body: the request holds its place until it is done.
                let body = body.map_frame(move |frame| {
                    let _held = &ticket;
                    frame
                });
                if state.access_log.is_some() {
                    parts.extensions.insert(Served {
                        cluster: target.cluster.clone(),
                        host: host_port(&endpoint.host, endpoint.port),
                    });
                    if let Some(id) = &request_id {
                        parts.extensions.insert(RequestId(id.clone()));
                    }
                }
                return Response::from_parts(parts, body.boxed());
            }
        }
        if attempt + 1 < attempts {
            Box::pin(tokio::time::sleep(retry_backoff(attempt))).await;
        }
    }
    last.unwrap_or_else(no_healthy_upstream)
}

/// Envoy's answer when no endpoint can be picked.
fn no_healthy_upstream() -> Response<ProxyBody> {
    flagged(
        local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("no healthy upstream".to_owned()),
        ),
        "UH",
    )
}

/// Envoy's answer when a circuit breaker trips.
fn overflow() -> Response<ProxyBody> {
    let mut reply = local_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        Some(
            "upstream connect error or disconnect/reset before headers. reset reason: overflow"
                .to_owned(),
        ),
    );
    reply
        .headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    flagged(reply, "UO")
}

/// Envoy's default retry back-off: 25 ms base, jittered, doubling.
fn retry_backoff(attempt: u32) -> Duration {
    let base = 25u64.saturating_mul(1 << attempt.min(6));
    Duration::from_millis(rand::random::<u64>() % base.max(1) + 1)
}

trait LengthHint {
    fn headers_len_hint(&self) -> Option<u64>;
}

impl LengthHint for http::request::Parts {
    fn headers_len_hint(&self) -> Option<u64> {
        self.headers
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

fn body_is_empty(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::OPTIONS
    )
}

/// An endpoint named rather than addressed, looked up now (DNS clusters are resolved when they
/// arrive, so this is rare).
async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    let mut found = tokio::net::lookup_host((host, port)).await.ok()?;
    found.next()
}

fn host_port(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// A response the proxy makes itself (no route, no upstream, a redirect, a direct response).
fn local_reply(status: StatusCode, body: Option<String>) -> Response<ProxyBody> {
    let mut response = Response::builder().status(status);
    let body: ProxyBody = match body {
        Some(text) => {
            response = response.header(http::header::CONTENT_TYPE, "text/plain");
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed()
        }
        None => Empty::new().map_err(|never| match never {}).boxed(),
    };
    response.body(body).unwrap_or_default()
}

/// Counts one upstream attempt: its response class and latency, or why there was none.
fn record_attempt(
    metrics: &ClusterMetrics,
    outcome: &Result<Result<Response<UpstreamBody>, UpstreamError>, ()>,
    took: Duration,
) {
    match outcome {
        Ok(Ok(response)) => metrics.response(response.status(), took),
        Ok(Err(error)) if error.is_connect() => metrics.failure(Failure::ConnectFailure),
        Ok(Err(_)) => metrics.failure(Failure::Reset),
        Err(()) => metrics.failure(Failure::Timeout),
    }
}
