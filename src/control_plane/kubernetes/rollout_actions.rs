//! Operators' acts on staged rollouts as `RolloutAction` objects: the admission webhook that
//! stamps each with its authenticated creator, the registration of that webhook, and the
//! follower that turns verified actions into each AccessPoint's rollout controls.
//!
//! The webhook listens on `--webhook-addr` over TLS with a certificate from Meridian's CA; the
//! leader registers it (MutatingWebhookConfiguration `meridian-rollout-actions`, failure policy
//! `Fail`, the CA as `caBundle`), reached through `--webhook-url` or else the `meridian`
//! Service. On create it writes `userInfo.username`, the time and their signature into the
//! annotations, replacing whatever the client put there; on update it refuses any change to
//! the spec or to those annotations, so the objects are the audit record. Every replica
//! verifies the signature (a key derived from the CA's private key, which only Meridian holds)
//! before it honours an action.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, ConvertAdmissionReviewError, Operation,
};
use kube::core::DynamicObject;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::rollout::{Approval, RolloutControls};
use crate::api::rollout_action::{
    sign, verified, ActionKind, RolloutAction, REQUESTED_AT, REQUESTED_BY, SIGNATURE,
};
use crate::api::FIELD_MANAGER;
use crate::control_plane::certs::ca::CertificateAuthority;
use crate::core::model::ObjectKey;
use crate::runtime::log_budget::{bounded, LogBudget};

pub const WEBHOOK_NAME: &str = "meridian-rollout-actions";
pub const WEBHOOK_PATH: &str = "/rollout-actions";
/// The port the `meridian` Service forwards to the webhook.
pub const WEBHOOK_SERVICE_PORT: i32 = 9443;
const MAX_REVIEW_BYTES: usize = 1024 * 1024;

/// The signing key of RolloutActions: derived from the CA's private key, the same on every
/// replica and known to no one else.
pub fn signing_key(ca: &CertificateAuthority) -> Vec<u8> {
    let mut digest = Sha256::new();
    digest.update(b"meridian rollout-action signing key v1\0");
    digest.update(ca.files().key_pem.expose().as_bytes());
    digest.finalize().to_vec()
}

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum WebhookTarget {
    /// A URL (`--webhook-url`), for a Meridian outside the cluster.
    Url(String),
    /// The `meridian` Service in Meridian's namespace.
    Service { namespace: String },
}

/// Registers (and keeps registered) the webhook with `ca` as its trust.
pub async fn register(client: Client, target: &WebhookTarget, ca_pem: &str) -> anyhow::Result<()> {
    let client_config = match target {
        WebhookTarget::Url(url) => serde_json::json!({ "url": url }),
        WebhookTarget::Service { namespace } => serde_json::json!({
            "service": {"namespace": namespace, "name": "meridian", "path": WEBHOOK_PATH,
                        "port": WEBHOOK_SERVICE_PORT}
        }),
    };
    let mut client_config = client_config;
    client_config["caBundle"] = serde_json::json!(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        ca_pem
    ));
    let object = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME},
        "webhooks": [{
            "name": "rollout-actions.meridian.dev",
            "clientConfig": client_config,
            "rules": [{
                "apiGroups": ["meridian.dev"],
                "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["rolloutactions"],
                "scope": "Namespaced"
            }],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5
        }]
    });
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    api.patch(
        WEBHOOK_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .context("registering the RolloutAction admission webhook")?;
    Ok(())
}

/// Serves the webhook on `listener` until `stopped`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    key: Arc<Vec<u8>>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return Ok(()),
        };
        let (acceptor, key) = (acceptor.clone(), key.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let key = key.clone();
                async move { Ok::<_, std::convert::Infallible>(review(&key, request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(error) = builder.serve_connection(io, service).await {
                tracing::debug!(%error, %peer, "webhook connection ended");
            }
        });
    }
}

async fn review(key: &[u8], request: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != WEBHOOK_PATH || request.method() != hyper::Method::POST {
        return reply(StatusCode::NOT_FOUND, b"not a webhook path\n".to_vec());
    }
    let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => return reply(StatusCode::BAD_REQUEST, error.to_string().into_bytes()),
    };
    let body = match review_response(key, &body, &Timestamp::now().to_string()) {
        Ok(body) => body,
        Err(error) => return reply(StatusCode::BAD_REQUEST, error.into_bytes()),
    };
    let mut response = reply(StatusCode::OK, body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The AdmissionReview answering the review in `body`, or why `body` is no review at all. An
/// object that is not a valid RolloutAction is denied naming the field, so that `kubectl`
/// shows the user the reason rather than an opaque webhook failure.
pub fn review_response(key: &[u8], body: &[u8], now: &str) -> Result<Vec<u8>, String> {
    let mut parsed = serde_json::Deserializer::from_slice(body);
    let response = match serde_path_to_error::deserialize::<_, AdmissionReview<RolloutAction>>(
        &mut parsed,
    ) {
        Ok(review) => match TryInto::<AdmissionRequest<RolloutAction>>::try_into(review) {
            Ok(request) => admit(key, &request, now),
            Err(error) => AdmissionResponse::invalid(error.to_string()),
        },
        Err(error) => {
            let any: AdmissionReview<DynamicObject> =
                serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let request: AdmissionRequest<DynamicObject> = any
                .try_into()
                .map_err(|e: ConvertAdmissionReviewError| e.to_string())?;
            let path = error.path().to_string();
            let field = path
                .strip_prefix("request.object.")
                .or_else(|| path.strip_prefix("request.oldObject."))
                .unwrap_or(&path);
            let inner = error.into_inner();
            let hint = if inner.is_data() {
                " (in YAML, quote it: a revision such as 0123456789 otherwise reads as a number)"
            } else {
                ""
            };
            AdmissionResponse::from(&request).deny(format!("RolloutAction {field}: {inner}{hint}"))
        }
    };
    serde_json::to_vec(&response.into_review()).map_err(|e| e.to_string())
}

/// The decision on one create or update of a RolloutAction, at `now` (RFC 3339).
pub fn admit(
    key: &[u8],
    request: &AdmissionRequest<RolloutAction>,
    now: &str,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(action) = &request.object else {
        return response.deny("no object in the request");
    };
    match request.operation {
        Operation::Create => {
            if let Some(problem) = action.spec.problem() {
                return response.deny(problem);
            }
            let by = request.user_info.username.clone().unwrap_or_default();
            if by.is_empty() {
                return response.deny("the request carries no authenticated user");
            }
            let namespace = request
                .namespace
                .clone()
                .or_else(|| action.metadata.namespace.clone())
                .unwrap_or_default();
            let signature = sign(key, &namespace, &action.spec, &by, now);
            let mut annotations = action.metadata.annotations.clone().unwrap_or_default();
            annotations.insert(REQUESTED_BY.to_owned(), by);
            annotations.insert(REQUESTED_AT.to_owned(), now.to_owned());
            annotations.insert(SIGNATURE.to_owned(), signature);
            let patch: json_patch::Patch = match serde_json::from_value(serde_json::json!([
                {"op": "add", "path": "/metadata/annotations", "value": annotations}
            ])) {
                Ok(patch) => patch,
                Err(error) => return response.deny(error.to_string()),
            };
            match response.clone().with_patch(patch) {
                Ok(patched) => patched,
                Err(error) => response.deny(error.to_string()),
            }
        }
        Operation::Update => {
            let Some(old) = &request.old_object else {
                return response.deny("no previous object in the request");
            };
            let stamp = |a: &RolloutAction| {
                let annotations = a.metadata.annotations.clone().unwrap_or_default();
                [REQUESTED_BY, REQUESTED_AT, SIGNATURE].map(|k| annotations.get(k).cloned())
            };
            if old.spec != action.spec || stamp(old) != stamp(action) {
                return response.deny(
                    "a RolloutAction is a record: its spec and who made it cannot change (create a new one)",
                );
            }
            response
        }
        _ => response,
    }
}

/// Follows every RolloutAction and yields, per AccessPoint, the controls its verified actions
/// add up to: approvals by (revision, stage) with who and when; paused as the latest pause or
/// resume left it; undo of the latest undo's revision. Unsigned or forged actions are ignored
/// (and logged).
pub fn follow(
    client: Client,
    key: Arc<Vec<u8>>,
    mut stopped: watch::Receiver<bool>,
) -> watch::Receiver<BTreeMap<ObjectKey, RolloutControls>> {
    let (tx, rx) = watch::channel(BTreeMap::new());
    let api: Api<RolloutAction> = Api::all(client);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        let mut actions: BTreeMap<ObjectKey, RolloutAction> = BTreeMap::new();
        let mut listing: Option<BTreeMap<ObjectKey, RolloutAction>> = None;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = stopped.changed() => return,
            };
            let Some(event) = event else { return };
            let key_of = |a: &RolloutAction| {
                ObjectKey::new(
                    a.metadata.namespace.as_deref().unwrap_or_default(),
                    a.metadata.name.as_deref().unwrap_or_default(),
                )
            };
            match event {
                Ok(Event::Init) => {
                    listing = Some(BTreeMap::new());
                    continue;
                }
                Ok(Event::InitApply(action)) => {
                    if let Some(list) = listing.as_mut() {
                        list.insert(key_of(&action), action);
                    }
                    continue;
                }
                Ok(Event::InitDone) => actions = listing.take().unwrap_or_default(),
                Ok(Event::Apply(action)) => {
                    actions.insert(key_of(&action), action);
                }
                Ok(Event::Delete(action)) => {
                    actions.remove(&key_of(&action));
                }
                Err(error) => {
                    tracing::warn!(%error, "watching RolloutActions failed");
                    continue;
                }
            }
            tx.send_replace(controls_of(&key, actions.values()));
        }
    });
    rx
}

/// What verified `actions` add up to, per AccessPoint.
pub fn controls_of<'a>(
    key: &[u8],
    actions: impl IntoIterator<Item = &'a RolloutAction>,
) -> BTreeMap<ObjectKey, RolloutControls> {
    static FORGED: LogBudget = LogBudget::new(5, Duration::from_secs(60));
    let mut acts: Vec<(String, String, String, &RolloutAction)> = Vec::new();
    for action in actions {
        let name = action.metadata.name.clone().unwrap_or_default();
        match verified(key, action) {
            Some((by, at)) => acts.push((at, name, by, action)),
            None => {
                if let Some(suppressed) = FORGED.allow() {
                    tracing::warn!(action = %bounded(&name), suppressed, "RolloutAction without a valid signature ignored (not admitted through Meridian's webhook)");
                }
            }
        }
    }
    acts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut out: BTreeMap<ObjectKey, RolloutControls> = BTreeMap::new();
    for (at, _, by, action) in acts {
        let namespace = action.metadata.namespace.as_deref().unwrap_or_default();
        let controls = out
            .entry(ObjectKey::new(namespace, &action.spec.access_point))
            .or_default();
        let revision = action.spec.revision.clone().unwrap_or_default();
        match action.spec.action {
            ActionKind::Approve => {
                let stage = action.spec.stage.clone().unwrap_or_default();
                let known = controls
                    .approvals
                    .iter()
                    .any(|a| a.revision == revision && a.stage == stage);
                if !known {
                    controls.approvals.push(Approval {
                        revision,
                        stage,
                        by: Some(by),
                        at: Some(at),
                    });
                }
            }
            ActionKind::Pause => controls.paused = true,
            ActionKind::Resume => controls.paused = false,
            ActionKind::Undo => controls.undo = Some(revision),
        }
    }
    out
}

/// The webhook's TLS: a certificate from `ca` for `names` (IP addresses become IP SANs).
pub fn tls_config(
    ca: &CertificateAuthority,
    names: &[String],
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use crate::core::model::tls::SecretMaterial;
    let validity = crate::control_plane::certs::ca::Validity {
        now: std::time::SystemTime::now(),
        lifetime: Duration::from_secs(365 * 24 * 3600),
    };
    let SecretMaterial::Certificate { chain_pem, key, .. } = ca.issue_server(names, validity)?
    else {
        anyhow::bail!("the CA issued no certificate for the webhook");
    };
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the webhook's certificate chain")?;
    let key = rustls_pemfile::private_key(&mut key.expose().as_bytes())
        .context("the webhook's key")?
        .context("no key in the webhook's key PEM")?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Binds the webhook's address (a failure names it).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the webhook address {addr}"))
}

#[cfg(test)]
#[path = "rollout_actions_tests.rs"]
mod tests;
