//! The ADS client Meridian's data planes share (`meridian proxy`, `meridian l4`): state of the
//! world, or delta in [`delta`]. It opens the stream, subscribes to the subscriber's wildcard
//! types, follows what they reference by name, ACKs what the subscriber applied and NACKs,
//! with its errors, what it could not — the rest of a response applies, as Envoy does. When the
//! stream fails the subscriber keeps serving and the client reconnects with backoff and jitter.
//!
//! What a response means is the [`Subscriber`]'s business (compiling, publishing, caching);
//! this module knows only the protocol.

pub mod bootstrap;
mod delta;
pub mod gateway;
pub mod resources;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use self::bootstrap::Bootstrap;
use crate::runtime::log_budget::bounded;
use crate::runtime::pinned_tls::{self, ClientCredentials, PinnedTlsError};

/// Backoff between reconnects: from 500 ms, doubling, to 30 s, with up to half of it as jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl From<tonic::Status> for StreamError {
    fn from(status: tonic::Status) -> StreamError {
        StreamError::Status(Box::new(status))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("ADS stream: {0}")]
    Status(Box<tonic::Status>),
    #[error("mutual TLS to Meridian: {0}")]
    Tls(#[from] PinnedTlsError),
    #[error("mutual TLS to Meridian: {0}")]
    Credentials(String),
    #[error("ADS stream: the request channel closed")]
    Closed,
}

/// The names subscribed to per type (empty: wildcard), as a subscriber changes them.
pub type Names = BTreeMap<&'static str, BTreeSet<String>>;

/// The outcome of applying one response.
#[derive(Debug, Default)]
pub struct Applied {
    /// Why resources were rejected (the NACK's detail); empty: ACK.
    pub errors: Vec<String>,
    /// The types whose subscription it changed (endpoints after clusters, routes after
    /// listeners).
    pub follow: Vec<&'static str>,
}

/// What a data plane does with what Meridian sends.
pub trait Subscriber: Send {
    /// Every type it asks for, in the order they apply.
    fn types(&self) -> &'static [&'static str];

    /// The types asked for by wildcard when a stream opens; the others follow by name.
    fn wildcard(&self) -> &'static [&'static str];

    /// Applies `response`, the whole set of `kind` it leaves (delta responses are added up
    /// first). A type that references others by name updates their entries in `names` and
    /// lists them in [`Applied::follow`].
    fn apply(
        &mut self,
        kind: &'static str,
        response: &DiscoveryResponse,
        names: &mut Names,
    ) -> impl Future<Output = Applied> + Send;

    /// After `apply`: records `version` when nothing was rejected, and publishes.
    fn settle(&mut self, kind: &'static str, version: &str, applied: &Applied);

    /// The version of `kind` last accepted whole ("" before any).
    fn version(&self, kind: &str) -> String;

    /// Before the first stream: serve what a previous run left (a config cache), if any.
    fn restore(&mut self) -> impl Future<Output = ()> + Send;

    /// Every wildcard type has had a first response applied, accepted or not: as in Envoy,
    /// the data plane is initialized (what was rejected is reported, the rest serves).
    /// Called once.
    fn initialized(&mut self);

    /// The client stops: stop serving (what drains is the subscriber's business).
    fn stop(&mut self);
}

pub struct XdsClient<S> {
    bootstrap: Bootstrap,
    subscriber: S,
    /// The wildcard types a response of which was applied so far (until all have been).
    answered: BTreeSet<&'static str>,
    initialized: bool,
}

/// The last nonce per type.
type Nonces = BTreeMap<&'static str, String>;

impl<S: Subscriber> XdsClient<S> {
    pub fn new(bootstrap: Bootstrap, subscriber: S) -> XdsClient<S> {
        XdsClient {
            bootstrap,
            subscriber,
            answered: BTreeSet::new(),
            initialized: false,
        }
    }

    /// A response of `kind` was applied: tells the subscriber once every wildcard type has
    /// had one.
    fn answered(&mut self, kind: &'static str) {
        if self.initialized {
            return;
        }
        self.answered.insert(kind);
        let wildcard = self.subscriber.wildcard();
        if wildcard.iter().all(|kind| self.answered.contains(kind)) {
            self.initialized = true;
            self.subscriber.initialized();
        }
    }

    /// Streams until `stopped`; each failed stream is retried after a backoff.
    pub async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        self.subscriber.restore().await;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let streamed = tokio::select! {
                result = self.stream() => result,
                _ = crate::runtime::stopped_signal(stopped.clone()) => {
                    self.subscriber.stop();
                    return;
                }
            };
            let error = match streamed {
                Ok(true) => {
                    backoff = FIRST_BACKOFF;
                    "the server ended the stream".to_owned()
                }
                Ok(false) => "the server ended the stream before any response".to_owned(),
                Err(error) => error.to_string(),
            };
            let jitter = backoff.mul_f64(rand::random::<f64>() / 2.0);
            let wait = backoff + jitter;
            tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "xDS stream lost; serving the last accepted config");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => {
                    self.subscriber.stop();
                    return;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The type a response is of, if it is one the subscriber asks for.
    fn known(&self, type_url: &str) -> Option<&'static str> {
        self.subscriber
            .types()
            .iter()
            .copied()
            .find(|kind| *kind == type_url)
    }

    /// One stream, state of the world or delta as the bootstrap says; whether any response
    /// arrived on it.
    async fn stream(&mut self) -> Result<bool, StreamError> {
        if self.bootstrap.delta {
            return self.stream_delta().await;
        }
        let channel = connect(&self.bootstrap).await?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let mut names = Names::new();
        let mut nonces = Nonces::new();
        for kind in self.subscriber.wildcard() {
            names.insert(kind, BTreeSet::new());
            self.request(&tx, &names, &nonces, kind, None).await?;
        }
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut any = false;
        while let Some(response) = responses.message().await? {
            any = true;
            let Some(kind) = self.known(&response.type_url) else {
                let other = response.type_url.as_str();
                tracing::warn!(type_url = %bounded(other), "ignoring a response of a type never asked for");
                continue;
            };
            nonces.insert(kind, response.nonce.clone());
            let applied = self.subscriber.apply(kind, &response, &mut names).await;
            self.subscriber
                .settle(kind, &response.version_info, &applied);
            self.answered(kind);
            let detail = nack_detail(&applied);
            self.request(&tx, &names, &nonces, kind, detail).await?;
            for follow in applied.follow {
                self.request(&tx, &names, &nonces, follow, None).await?;
            }
        }
        Ok(any)
    }

    /// Asks for `kind` (its current names, the version accepted, the last nonce): an ACK, a
    /// NACK with `error`, or a subscription change.
    async fn request(
        &self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        names: &Names,
        nonces: &Nonces,
        kind: &'static str,
        error: Option<Status>,
    ) -> Result<(), StreamError> {
        let request = DiscoveryRequest {
            version_info: self.subscriber.version(kind),
            node: Some(self.bootstrap.node.clone()),
            resource_names: names
                .get(kind)
                .map(|n| n.iter().cloned().collect())
                .unwrap_or_default(),
            type_url: kind.to_owned(),
            response_nonce: nonces.get(kind).cloned().unwrap_or_default(),
            error_detail: error,
            ..Default::default()
        };
        tx.send(request).await.map_err(|_| StreamError::Closed)
    }
}

/// The NACK's detail when anything was rejected.
fn nack_detail(applied: &Applied) -> Option<Status> {
    (!applied.errors.is_empty()).then(|| Status {
        code: tonic::Code::InvalidArgument as i32,
        message: applied.errors.join("; "),
        details: Vec::new(),
    })
}

/// A channel to Meridian: plain, or mutual TLS with the server's identity pinned (the
/// credential files are read at every connect, so rotated ones are picked up).
pub async fn connect(bootstrap: &Bootstrap) -> Result<tonic::transport::Channel, StreamError> {
    let (host, port) = (&bootstrap.xds_host, bootstrap.xds_port);
    let address = format!("{host}:{port}");
    let Some(tls) = &bootstrap.tls else {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|source| StreamError::Connect {
                address: address.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        return endpoint
            .connect()
            .await
            .map_err(|source| StreamError::Connect { address, source });
    };
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| StreamError::Credentials(format!("{path}: {e}")))
    };
    let (ca_pem, cert_pem, key_pem) = (
        read(&tls.ca_file)?,
        read(&tls.cert_file)?,
        read(&tls.key_file)?,
    );
    let credentials = ClientCredentials {
        ca_pem: &ca_pem,
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    };
    let connecting = pinned_tls::connect(host, port, credentials, &tls.server_identity);
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(channel) => Ok(channel?),
        Err(_) => Err(StreamError::Credentials(format!(
            "{address}: TLS connect timed out"
        ))),
    }
}
