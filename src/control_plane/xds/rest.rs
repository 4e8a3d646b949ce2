//! REST xDS on the xDS port: `POST /v3/discovery:{listeners,routes,clusters,endpoints,secrets}`
//! with a JSON DiscoveryRequest, over HTTP/1.1 or HTTP/2, for proxies that poll instead of
//! holding a gRPC stream (Envoy's `api_type: REST`).
//!
//! A tower layer in front of the gRPC routes takes these paths; everything else goes on to
//! gRPC. The same identity rules as ADS apply: node metadata, held to the client certificate
//! under mutual TLS, and private keys only for certified clients. What to answer is decided
//! by the sans-IO [`super::polling`] state of the proxy.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tower::{Layer, Service};

use super::identity::{refresh_delay_of, verified_identity, IdentityError};
use super::polling::PollAnswer;
use super::server::{Poll, XdsState};
use crate::control_plane::metrics::{RestPollLabel, TypeLabel};
use crate::core::json::{any_to_json, message_from_json, JsonError};
use crate::core::resources::ResourceType;
use crate::core::translate::XdsTransport;
use crate::runtime::log_budget::{bounded, LogBudget};

/// Where REST xDS requests go; the type follows the colon.
const PATH_PREFIX: &str = "/v3/discovery:";

/// The largest DiscoveryRequest accepted (a node's metadata plus the names it asks for).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How long a client may take to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves REST xDS in front of the gRPC services it wraps.
#[derive(Clone)]
pub struct RestLayer {
    state: Arc<XdsState>,
}

impl RestLayer {
    pub fn new(state: Arc<XdsState>) -> RestLayer {
        RestLayer { state }
    }
}

impl<S> Layer<S> for RestLayer {
    type Service = RestOrGrpc<S>;

    fn layer(&self, grpc: S) -> RestOrGrpc<S> {
        RestOrGrpc {
            grpc,
            state: self.state.clone(),
        }
    }
}

/// REST xDS paths answered here, the rest passed on to `grpc`.
#[derive(Clone)]
pub struct RestOrGrpc<S> {
    grpc: S,
    state: Arc<XdsState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for RestOrGrpc<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> TaskPoll<Result<(), Infallible>> {
        self.grpc.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !request.uri().path().starts_with(PATH_PREFIX) {
            // The clone is the one made ready; the original stays for the next call.
            let ready = self.grpc.clone();
            let mut grpc = std::mem::replace(&mut self.grpc, ready);
            return Box::pin(grpc.call(request));
        }
        let state = self.state.clone();
        Box::pin(async move { Ok(answer(&state, request).await) })
    }
}

#[derive(Debug, thiserror::Error)]
enum RestError {
    #[error("{0} is not a REST xDS endpoint (POST /v3/discovery:listeners, :routes, :clusters, :endpoints or :secrets)")]
    UnknownPath(String),
    #[error("REST xDS takes POST, not {0}")]
    Method(Method),
    #[error("the request body is larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("the request body did not arrive within {BODY_TIMEOUT:?}")]
    SlowBody,
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("DiscoveryRequest: {0}")]
    Json(JsonError),
    #[error("DiscoveryRequest: type_url {got:?} is not what {path} serves ({expected})")]
    TypeMismatch {
        got: String,
        path: String,
        expected: String,
    },
    #[error(transparent)]
    Identity(IdentityError),
    #[error("no configuration loaded yet")]
    NotLoaded,
    #[error("rendering the response: {0}")]
    Render(JsonError),
}

impl RestError {
    fn status(&self) -> StatusCode {
        match self {
            RestError::UnknownPath(_) => StatusCode::NOT_FOUND,
            RestError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            RestError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RestError::SlowBody => StatusCode::REQUEST_TIMEOUT,
            RestError::Identity(
                IdentityError::Mismatch { .. } | IdentityError::NoCertificateIdentity { .. },
            ) => StatusCode::FORBIDDEN,
            RestError::Body(_)
            | RestError::Json(_)
            | RestError::TypeMismatch { .. }
            | RestError::Identity(_) => StatusCode::BAD_REQUEST,
            RestError::NotLoaded => StatusCode::SERVICE_UNAVAILABLE,
            RestError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The type a REST path serves.
fn type_of_path(path: &str) -> Option<ResourceType> {
    Some(match path.strip_prefix(PATH_PREFIX)? {
        "listeners" => ResourceType::Listener,
        "routes" => ResourceType::Route,
        "clusters" => ResourceType::Cluster,
        "endpoints" => ResourceType::Endpoint,
        "secrets" => ResourceType::Secret,
        _ => return None,
    })
}

async fn answer(state: &XdsState, request: Request<Body>) -> Response<Body> {
    let kind = type_of_path(request.uri().path());
    let label = |answer: &'static str| RestPollLabel {
        r#type: kind.map(ResourceType::short_name).unwrap_or("unknown"),
        answer,
    };
    match serve(state, request).await {
        Ok((PollAnswer::Unchanged, _)) => {
            state
                .metrics
                .rest_polls
                .get_or_create(&label("not_modified"))
                .inc();
            reply(StatusCode::NOT_MODIFIED, None, Bytes::new())
        }
        Ok((PollAnswer::Changed { .. }, body)) => {
            state
                .metrics
                .rest_polls
                .get_or_create(&label("changed"))
                .inc();
            if let Some(kind) = kind {
                let kind = kind.short_name();
                state
                    .metrics
                    .pushes
                    .get_or_create(&TypeLabel { r#type: kind })
                    .inc();
            }
            reply(StatusCode::OK, Some("application/json"), body)
        }
        Err(error) => {
            state
                .metrics
                .rest_polls
                .get_or_create(&label("error"))
                .inc();
            static REFUSED: LogBudget = LogBudget::new(20, Duration::from_secs(10));
            if let Some(suppressed) = REFUSED.allow() {
                tracing::warn!(status = error.status().as_u16(), error = %bounded(&error.to_string()), suppressed, "REST xDS request refused");
            }
            let body = Bytes::from(format!("{error}\n"));
            reply(error.status(), Some("text/plain; charset=utf-8"), body)
        }
    }
}

fn reply(status: StatusCode, content_type: Option<&'static str>, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(body)));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
    }
    response
}

/// Answers one poll: what changed (rendered as a JSON DiscoveryResponse) or nothing.
async fn serve(state: &XdsState, request: Request<Body>) -> Result<(PollAnswer, Bytes), RestError> {
    let path = request.uri().path().to_owned();
    let kind = type_of_path(&path).ok_or_else(|| RestError::UnknownPath(bounded(&path).into()))?;
    if request.method() != Method::POST {
        return Err(RestError::Method(request.method().clone()));
    }
    let (parts, body) = request.into_parts();
    let certified = state
        .certified(&tonic::Request::from_parts(
            tonic::metadata::MetadataMap::new(),
            parts.extensions,
            (),
        ))
        .map_err(RestError::Identity)?;
    let body = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(body, MAX_REQUEST_BYTES).collect(),
    )
    .await
    .map_err(|_| RestError::SlowBody)?
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            RestError::TooLarge
        } else {
            RestError::Body(e.to_string())
        }
    })?
    .to_bytes();
    let discovery: DiscoveryRequest =
        message_from_json("envoy.service.discovery.v3.DiscoveryRequest", &body)
            .map_err(RestError::Json)?;
    if !discovery.type_url.is_empty() && discovery.type_url != kind.type_url() {
        return Err(RestError::TypeMismatch {
            got: bounded(&discovery.type_url).into(),
            path,
            expected: kind.type_url(),
        });
    }
    let node = discovery.node.as_ref();
    let mut identity = verified_identity(node, certified.as_ref()).map_err(RestError::Identity)?;
    let node = node.ok_or(RestError::Identity(IdentityError::MissingNode))?;
    let refresh_delay = refresh_delay_of(node).map_err(RestError::Identity)?;
    identity.xds = XdsTransport::Rest {
        refresh_delay_ms: u64::try_from(refresh_delay.as_millis()).unwrap_or(u64::MAX),
    };
    let snapshot = state.snapshots.borrow().clone();
    if snapshot.generation == 0 {
        return Err(RestError::NotLoaded);
    }
    let translation = state.translator.translate(&snapshot, &identity);
    let (config, withheld) = state.served(certified.is_some(), &translation.config);
    super::server::warn_withheld(withheld, &node.id);
    if kind == ResourceType::Secret {
        super::server::deny_unreferenced_secrets(
            state,
            &discovery.resource_names,
            &translation,
            &node.id,
            &identity,
        );
    }
    let answer = state.proxies.poll(Poll {
        node_id: &node.id,
        identity: &identity,
        refresh_delay,
        kind,
        request: &discovery,
        config: &config,
        generation: snapshot.generation,
        certified: certified.is_some(),
    });
    let body = match &answer {
        PollAnswer::Unchanged => Bytes::new(),
        PollAnswer::Changed { version, resources } => {
            let resources = resources
                .iter()
                .map(|r| any_to_json(&r.body))
                .collect::<Result<Vec<_>, _>>()
                .map_err(RestError::Render)?;
            let response = serde_json::json!({
                "version_info": version,
                "resources": resources,
                "type_url": kind.type_url(),
            });
            Bytes::from(serde_json::to_vec(&response).map_err(|e| RestError::Render(e.into()))?)
        }
    };
    Ok((answer, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_has_its_path_and_nothing_else_is_served() {
        for (path, kind) in [
            ("/v3/discovery:listeners", ResourceType::Listener),
            ("/v3/discovery:routes", ResourceType::Route),
            ("/v3/discovery:clusters", ResourceType::Cluster),
            ("/v3/discovery:endpoints", ResourceType::Endpoint),
            ("/v3/discovery:secrets", ResourceType::Secret),
        ] {
            assert_eq!(type_of_path(path), Some(kind), "{path}");
        }
        for path in [
            "/v3/discovery:runtime",
            "/v3/discovery:",
            "/v2/discovery:listeners",
        ] {
            assert_eq!(type_of_path(path), None, "{path}");
        }
    }
}
