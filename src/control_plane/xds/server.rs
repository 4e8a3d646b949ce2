//! The ADS gRPC server: moves messages between tonic streams and the protocol state machines,
//! translating the latest snapshot for each stream's gateway identity.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::delta::DeltaSession;
use super::identity::{
    certified_client, certified_gateway, verified_identity, CertifiedClient, IdentityError,
};
use super::load_stats::{LoadRegistry, DEFAULT_INTERVAL};
use super::polling::{PollAnswer, Poller, PollerTable};
use super::sotw::SotwSession;
use super::status::{fully_synced, Events, SyncState, TypeStatus};
use super::translator::Translator;
use crate::control_plane::index::Snapshot;
use crate::control_plane::metrics::{Metrics, ModeLabel, TypeLabel};
use crate::core::model::ObjectKey;
use crate::core::observed::GatewayAck;
use crate::core::observed::UpstreamLoad;
use crate::core::resources::{GatewayConfig, ResourceType};
use crate::core::status::acked_access_points;
use crate::core::translate::{GatewayIdentity, NodeRole, Translation, XdsTransport};
use crate::runtime::log_budget::{bounded, LogBudget};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The AccessPoint generations one proxy has acknowledged.
type AckedSet = Arc<BTreeMap<ObjectKey, i64>>;

/// One connected proxy, as `/debug/syncz` and `meridian status` show it (and as replicas
/// report theirs to each other).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyInfo {
    pub node_id: String,
    pub gateway: String,
    pub cluster: String,
    pub zone: String,
    pub role: NodeRole,
    /// `sotw` or `delta` (ADS streams), or `rest` (polling).
    pub mode: String,
    /// Snapshot generation the proxy was last pushed.
    pub generation: u64,
    /// The latest snapshot generation whose whole config the proxy has acknowledged.
    pub synced_generation: Option<u64>,
    pub types: Vec<TypeStatus>,
    /// How it talks xDS (the config sources its resources name).
    pub xds: XdsTransport,
    /// A polling (REST) proxy's rhythm and when it last polled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polling: Option<PollingInfo>,
}

/// When a polling proxy polls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollingInfo {
    pub refresh_delay_ms: u64,
    pub last_poll_ms_ago: u64,
    /// Nothing heard for longer than the stale threshold: its types show STALE and its
    /// acknowledgements no longer count.
    pub stopped: bool,
}

impl ProxyInfo {
    /// Who the proxy said it is (as it connected).
    pub fn identity(&self) -> Option<GatewayIdentity> {
        let (ns, name) = self.gateway.split_once('/')?;
        Some(GatewayIdentity {
            gateway: ObjectKey::new(ns, name),
            cluster: self.cluster.clone(),
            zone: self.zone.clone(),
            role: self.role,
            xds: self.xds,
        })
    }

    /// The message of a NACK the proxy holds against the latest config, if any.
    pub fn nack(&self) -> Option<&str> {
        self.types
            .iter()
            .filter(|t| t.state == SyncState::Nacked)
            .find_map(|t| t.last_nack.as_ref().map(|n| n.message.as_str()))
    }
}

/// Connected proxies by stream id, and polling (REST) proxies by node id.
pub struct ProxyRegistry {
    proxies: Mutex<BTreeMap<u64, ProxyInfo>>,
    next_id: AtomicU64,
    pollers: Mutex<PollerTable>,
    /// A polling proxy silent for this many refresh delays has stopped polling.
    stale_after_refreshes: AtomicU32,
    /// Bumped whenever a proxy connects, disconnects, or its sync or NACK state changes.
    changes: watch::Sender<u64>,
}

/// Polling proxies remembered at most (node ids are whatever clients say).
const MAX_POLLERS: usize = 16_384;

/// The default of `--rest-stale-after` (Envoy waits between one and two refresh delays).
pub const DEFAULT_STALE_AFTER_REFRESHES: u32 = 3;

/// A polling proxy that stopped is forgotten after this many stale thresholds.
const FORGET_AFTER_STALE_THRESHOLDS: u32 = 10;

impl Default for ProxyRegistry {
    fn default() -> ProxyRegistry {
        ProxyRegistry {
            proxies: Mutex::default(),
            next_id: AtomicU64::new(0),
            pollers: Mutex::new(PollerTable::new(MAX_POLLERS)),
            stale_after_refreshes: AtomicU32::new(DEFAULT_STALE_AFTER_REFRESHES),
            changes: watch::channel(0).0,
        }
    }
}

/// Now, on the clock tests can pause.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl ProxyRegistry {
    /// Every proxy: streaming ones, then polling ones.
    pub fn list(&self) -> Vec<ProxyInfo> {
        let mut list: Vec<ProxyInfo> = lock(&self.proxies).values().cloned().collect();
        let now = now();
        list.extend(lock(&self.pollers).iter().map(|p| self.poller_info(p, now)));
        list
    }

    /// A polling proxy silent for longer than this has stopped.
    pub fn set_stale_after_refreshes(&self, refreshes: u32) {
        self.stale_after_refreshes
            .store(refreshes.max(1), Ordering::Relaxed);
    }

    fn stale_after(&self, refresh_delay: Duration) -> Duration {
        refresh_delay.saturating_mul(self.stale_after_refreshes.load(Ordering::Relaxed))
    }

    fn poller_info(&self, poller: &Poller, now: Instant) -> ProxyInfo {
        let identity = &poller.identity;
        let stopped = poller.stopped(now, self.stale_after(poller.refresh_delay));
        let (mut types, synced_generation) = (poller.types().to_vec(), poller.synced_generation);
        if stopped {
            for t in types.iter_mut().filter(|t| t.state != SyncState::NotSent) {
                t.state = SyncState::Stale;
            }
        }
        ProxyInfo {
            node_id: poller.node_id.clone(),
            gateway: identity.gateway.to_string(),
            cluster: identity.cluster.clone(),
            zone: identity.zone.clone(),
            role: identity.role,
            mode: "rest".to_owned(),
            generation: poller.generation,
            synced_generation: if stopped { None } else { synced_generation },
            types,
            xds: identity.xds,
            polling: Some(PollingInfo {
                refresh_delay_ms: u64::try_from(poller.refresh_delay.as_millis())
                    .unwrap_or(u64::MAX),
                last_poll_ms_ago: u64::try_from(
                    now.saturating_duration_since(poller.last_poll())
                        .as_millis(),
                )
                .unwrap_or(u64::MAX),
                stopped,
            }),
        }
    }

    /// Answers one REST poll of `node_id` from `config` (generation `generation`, private keys
    /// left out unless `certified`) and records what the proxy holds.
    pub(crate) fn poll(&self, poll: Poll<'_>) -> PollAnswer {
        let now = now();
        let stamp = poll.generation.saturating_mul(2) + u64::from(poll.certified);
        let stale_after = self.stale_after(poll.refresh_delay);
        let mut pollers = lock(&self.pollers);
        let poller = pollers.entry(poll.node_id, poll.identity, poll.refresh_delay, now);
        let answer = poller.poll(
            poll.kind,
            poll.request,
            (poll.config, stamp),
            now,
            stale_after,
        );
        let (types, mut changed) = poller.status((poll.config, stamp));
        if fully_synced(types, poll.config) && poller.synced_generation != Some(poll.generation) {
            poller.synced_generation = Some(poll.generation);
            changed = true;
        }
        poller.generation = poll.generation;
        if poller.reported_stopped {
            poller.reported_stopped = false;
            changed = true;
        }
        drop(pollers);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        answer
    }

    /// Notices polling proxies that stopped (their acknowledgements stop counting) and
    /// forgets those stopped long ago. Run every second or so.
    pub fn sweep_pollers(&self) {
        let now = now();
        let mut changed = false;
        let mut pollers = lock(&self.pollers);
        for poller in pollers.iter_mut() {
            let stopped = poller.stopped(now, self.stale_after(poller.refresh_delay));
            if stopped != poller.reported_stopped {
                poller.reported_stopped = stopped;
                changed = true;
            }
        }
        let forget = |p: &Poller| {
            let threshold = self.stale_after(p.refresh_delay);
            p.stopped(now, threshold.saturating_mul(FORGET_AFTER_STALE_THRESHOLDS))
        };
        changed |= pollers.forget(forget) > 0;
        drop(pollers);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Wakes when what [`ProxyRegistry::list`] reports about acknowledgements changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn update(&self, id: u64, info: ProxyInfo) {
        let previous = lock(&self.proxies).insert(id, info.clone());
        let changed = previous.is_none_or(|p| {
            p.synced_generation != info.synced_generation || p.nack() != info.nack()
        });
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn remove(&self, id: u64) {
        if lock(&self.proxies).remove(&id).is_some() {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// The identity a node id last connected with (for config dumps).
    pub fn identity_of_node(&self, node_id: &str) -> Option<GatewayIdentity> {
        if let Some(poller) = lock(&self.pollers).iter().find(|p| p.node_id == node_id) {
            return Some(poller.identity.clone());
        }
        lock(&self.proxies)
            .values()
            .find(|p| p.node_id == node_id)
            .and_then(ProxyInfo::identity)
    }
}

/// One REST poll, as [`ProxyRegistry::poll`] answers it.
pub(crate) struct Poll<'a> {
    pub node_id: &'a str,
    pub identity: &'a GatewayIdentity,
    pub refresh_delay: Duration,
    pub kind: ResourceType,
    pub request: &'a DiscoveryRequest,
    pub config: &'a GatewayConfig,
    pub generation: u64,
    pub certified: bool,
}

/// Who may see what through the ops API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpsCaller {
    /// An operator, or anyone when there is no mutual TLS: every proxy.
    Anyone,
    /// A gateway's certificate: only the proxies of that gateway.
    Gateway(ObjectKey),
}

/// How ADS clients prove who they are.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth {
    /// Mutual TLS: the trust domain of the SPIFFE IDs that name gateways.
    pub trust_domain: Option<String>,
    /// Serve private keys to clients without a certificate (loopback demos only).
    pub keys_without_client_certs: bool,
}

/// Shared state of the xDS server and the read-only views onto it.
pub struct XdsState {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub translator: Translator,
    pub proxies: ProxyRegistry,
    pub metrics: Arc<Metrics>,
    /// With mutual TLS: the trust domain whose SPIFFE IDs name gateways in client certificates.
    /// A stream's gateway is then the one its certificate names.
    pub client_trust_domain: Option<String>,
    /// Whether a stream without a client certificate is served TLS private keys (only with
    /// `--insecure-serve-keys-without-mtls`).
    pub keys_without_client_certs: bool,
    /// The gateways' recent load reports (LRS).
    pub loads: LoadRegistry,
    /// Kubernetes mode: this replica's identity, and what every replica reports of its
    /// proxies (this one's included), so status and config dumps cover the fleet.
    pub replica: std::sync::OnceLock<String>,
    pub peers: watch::Sender<PeerProxies>,
}

/// Proxies by the replica (identity) they are connected to.
pub type PeerProxies = BTreeMap<String, Vec<ProxyInfo>>;

impl XdsState {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, metrics: Arc<Metrics>) -> Arc<XdsState> {
        XdsState::with_client_auth(snapshots, metrics, ClientAuth::default(), DEFAULT_INTERVAL)
    }

    /// A state whose streams authenticate as `auth` says, asking gateways for a load report
    /// every `load_report_interval`.
    pub fn with_client_auth(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
        auth: ClientAuth,
        load_report_interval: Duration,
    ) -> Arc<XdsState> {
        Arc::new(XdsState {
            snapshots,
            translator: Translator::default(),
            proxies: ProxyRegistry::default(),
            metrics,
            client_trust_domain: auth.trust_domain,
            keys_without_client_certs: auth.keys_without_client_certs,
            loads: LoadRegistry::new(load_report_interval),
            replica: std::sync::OnceLock::new(),
            peers: watch::channel(PeerProxies::new()).0,
        })
    }

    /// What a stream is served of `config`: without private keys unless its client proved
    /// who it is (or the operator said to serve them anyway); the count left out.
    pub(super) fn served(
        &self,
        certified: bool,
        config: &Arc<GatewayConfig>,
    ) -> (Arc<GatewayConfig>, usize) {
        if certified || self.keys_without_client_certs {
            return (config.clone(), 0);
        }
        match config.without_private_keys() {
            Some((withheld, count)) => (Arc::new(withheld), count),
            None => (config.clone(), 0),
        }
    }

    /// Who called the ops API: anyone, without mutual TLS; else the operator or gateway its
    /// certificate names (another certificate of the CA is refused).
    pub(crate) fn ops_caller<T>(&self, request: &Request<T>) -> Result<OpsCaller, IdentityError> {
        let Some(trust_domain) = &self.client_trust_domain else {
            return Ok(OpsCaller::Anyone);
        };
        let chain = request.peer_certs();
        let chain = chain.as_deref().map(Vec::as_slice).unwrap_or_default();
        Ok(match certified_client(chain, trust_domain)? {
            CertifiedClient::Operator(_) => OpsCaller::Anyone,
            CertifiedClient::Gateway(gateway) => OpsCaller::Gateway(gateway),
        })
    }

    /// The gateway a stream's client certificate names, when mutual TLS is required.
    pub(crate) fn certified<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<ObjectKey>, IdentityError> {
        let Some(trust_domain) = &self.client_trust_domain else {
            return Ok(None);
        };
        let chain = request.peer_certs();
        let chain = chain.as_deref().map(Vec::as_slice).unwrap_or_default();
        certified_gateway(chain, trust_domain).map(Some)
    }

    /// What the proxies connected to this process acknowledged, per AccessPoint generation.
    /// Proxies of one cluster synced to the same generation share one acknowledged set, so
    /// this costs O(proxies + clusters × AccessPoints), not their product.
    pub fn acks(&self, snapshot: &Snapshot) -> Vec<GatewayAck> {
        let mut shared: HashMap<(String, Option<u64>), AckedSet> = HashMap::new();
        self.proxies
            .list()
            .into_iter()
            .filter(|p| !p.polling.as_ref().is_some_and(|polling| polling.stopped))
            // AccessPoint conditions, rollouts and the quarantine follow the gateways, not
            // the gRPC applications that use their routes.
            .filter(|p| p.role != NodeRole::Grpc)
            .filter_map(|p| {
                let (namespace, name) = p.gateway.split_once('/')?;
                let acked = shared
                    .entry((p.cluster.clone(), p.synced_generation))
                    .or_insert_with(|| {
                        Arc::new(acked_access_points(
                            snapshot.published(),
                            p.synced_generation,
                            &p.cluster,
                        ))
                    })
                    .clone();
                let nack_of = p.nack().map(|_| {
                    Arc::new(acked_access_points(
                        snapshot.published(),
                        Some(p.generation),
                        &p.cluster,
                    ))
                });
                Some(GatewayAck {
                    gateway: ObjectKey::new(namespace, name),
                    nack: p.nack().map(str::to_owned),
                    nack_of,
                    acked,
                    node_id: p.node_id,
                    cluster: p.cluster,
                    load: Vec::new(),
                })
            })
            .collect()
    }

    /// [`XdsState::acks`] with each proxy's recent load reports on the upstreams `keep`
    /// accepts.
    pub fn acks_with_load(
        &self,
        snapshot: &Snapshot,
        keep: impl Fn(&UpstreamLoad) -> bool,
    ) -> Vec<GatewayAck> {
        let mut acks = self.acks(snapshot);
        for ack in &mut acks {
            ack.load = self.loads.recent(&ack.node_id, &ack.gateway, &keep);
        }
        acks
    }

    /// Every proxy of the fleet with the replica it is connected to: this process's own
    /// (`None` outside Kubernetes mode), then what the other replicas report.
    pub fn fleet_proxies(&self) -> Vec<(Option<String>, ProxyInfo)> {
        let own = self.replica.get().cloned();
        let mut all: Vec<(Option<String>, ProxyInfo)> = self
            .proxies
            .list()
            .into_iter()
            .map(|p| (own.clone(), p))
            .collect();
        for (replica, proxies) in self.peers.borrow().iter() {
            if Some(replica) == own.as_ref() {
                continue;
            }
            all.extend(proxies.iter().map(|p| (Some(replica.clone()), p.clone())));
        }
        all
    }

    /// The identity `node_id` connected with, here or (as reported) on another replica.
    pub fn identity_in_fleet(&self, node_id: &str) -> Option<GatewayIdentity> {
        if let Some(identity) = self.proxies.identity_of_node(node_id) {
            return Some(identity);
        }
        self.peers
            .borrow()
            .values()
            .flatten()
            .find(|p| p.node_id == node_id)
            .and_then(ProxyInfo::identity)
    }

    /// What `identity` is served from the current snapshot.
    pub fn config_for(&self, identity: &GatewayIdentity) -> Arc<Translation> {
        let snapshot = self.snapshots.borrow().clone();
        self.translator.translate(&snapshot, identity)
    }
}

#[derive(Clone)]
pub struct AdsService {
    state: Arc<XdsState>,
}

impl AdsService {
    pub fn new(state: Arc<XdsState>) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(AdsService { state })
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

/// What the stream loop needs from a protocol state machine.
trait Session: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    const MODE: &'static str;
    fn create(config: Arc<GatewayConfig>) -> Self;
    fn node(req: &Self::Req) -> Option<&Node>;
    /// Names of secrets (SDS) the request subscribes to.
    fn secrets_requested(req: &Self::Req) -> &[String];
    fn response_type(resp: &Self::Resp) -> &str;
    fn on_request(&mut self, req: &Self::Req) -> Result<Vec<Self::Resp>, String>;
    fn on_config(&mut self, config: Arc<GatewayConfig>) -> Vec<Self::Resp>;
    fn take_events(&mut self) -> Events;
    fn status(&self) -> Vec<TypeStatus>;
}

impl Session for SotwSession {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    const MODE: &'static str = "sotw";
    fn create(config: Arc<GatewayConfig>) -> Self {
        SotwSession::new(config)
    }
    fn node(req: &Self::Req) -> Option<&Node> {
        req.node.as_ref()
    }
    fn secrets_requested(req: &Self::Req) -> &[String] {
        if ResourceType::from_type_url(&req.type_url) == Some(ResourceType::Secret) {
            &req.resource_names
        } else {
            &[]
        }
    }
    fn response_type(resp: &Self::Resp) -> &str {
        &resp.type_url
    }
    fn on_request(&mut self, req: &Self::Req) -> Result<Vec<Self::Resp>, String> {
        SotwSession::on_request(self, req).map_err(|e| e.to_string())
    }
    fn on_config(&mut self, config: Arc<GatewayConfig>) -> Vec<Self::Resp> {
        SotwSession::on_config(self, config)
    }
    fn take_events(&mut self) -> Events {
        SotwSession::take_events(self)
    }
    fn status(&self) -> Vec<TypeStatus> {
        SotwSession::status(self)
    }
}

impl Session for DeltaSession {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    const MODE: &'static str = "delta";
    fn create(config: Arc<GatewayConfig>) -> Self {
        DeltaSession::new(config)
    }
    fn node(req: &Self::Req) -> Option<&Node> {
        req.node.as_ref()
    }
    fn secrets_requested(req: &Self::Req) -> &[String] {
        if ResourceType::from_type_url(&req.type_url) == Some(ResourceType::Secret) {
            &req.resource_names_subscribe
        } else {
            &[]
        }
    }
    fn response_type(resp: &Self::Resp) -> &str {
        &resp.type_url
    }
    fn on_request(&mut self, req: &Self::Req) -> Result<Vec<Self::Resp>, String> {
        DeltaSession::on_request(self, req).map_err(|e| e.to_string())
    }
    fn on_config(&mut self, config: Arc<GatewayConfig>) -> Vec<Self::Resp> {
        DeltaSession::on_config(self, config)
    }
    fn take_events(&mut self) -> Events {
        DeltaSession::take_events(self)
    }
    fn status(&self) -> Vec<TypeStatus> {
        DeltaSession::status(self)
    }
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let certified = self
            .state
            .certified(&request)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok(Response::new(spawn_stream::<SotwSession>(
            self.state.clone(),
            certified,
            request.into_inner(),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let certified = self
            .state
            .certified(&request)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok(Response::new(spawn_stream::<DeltaSession>(
            self.state.clone(),
            certified,
            request.into_inner(),
        )))
    }
}

fn spawn_stream<S: Session>(
    state: Arc<XdsState>,
    certified: Option<ObjectKey>,
    incoming: Streaming<S::Req>,
) -> BoxStream<S::Resp>
where
    S::Req: prost::Message + Default,
{
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        if let Err(status) = run_stream::<S>(&state, certified.as_ref(), incoming, &tx).await {
            static ENDED: LogBudget = LogBudget::new(20, Duration::from_secs(10));
            if let Some(suppressed) = ENDED.allow() {
                tracing::warn!(code = ?status.code(), message = %bounded(status.message()), suppressed, "ADS stream ended with error");
            }
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Says (rate-limited) that private keys were kept from a client without a certificate.
pub(super) fn warn_withheld(withheld: usize, node_id: &str) {
    static LOG: LogBudget = LogBudget::new(10, Duration::from_secs(10));
    if withheld == 0 {
        return;
    }
    if let Some(suppressed) = LOG.allow() {
        tracing::warn!(node = %bounded(node_id), withheld, suppressed, "TLS private keys are served only to gateways with a client certificate (--xds-mtls); this one's HTTPS listeners wait for them");
    }
}

/// Secret names a stream's denials remember; past it, a denial is counted again if repeated.
const MAX_DENIED_REMEMBERED: usize = 64;

/// Logs and counts requests for secrets this gateway's listeners do not reference (once per
/// name and stream). Nothing is served for them: a gateway's config holds only its own.
fn deny_foreign_secrets<S: Session>(
    state: &XdsState,
    req: &S::Req,
    translation: &Translation,
    node_id: &str,
    identity: &GatewayIdentity,
    denied: &mut BTreeSet<String>,
) {
    let fresh: Vec<String> = S::secrets_requested(req)
        .iter()
        .filter(|name| !translation.secret_names.contains(*name) && !denied.contains(*name))
        .cloned()
        .collect();
    deny_unreferenced_secrets(state, &fresh, translation, node_id, identity);
    for name in fresh {
        // Remembered (to count and log each once) up to a bound a client cannot grow.
        if denied.len() < MAX_DENIED_REMEMBERED {
            denied.insert(name);
        }
    }
}

/// Logs (rate-limited) and counts each of `requested` that the gateway's listeners do not
/// reference. Nothing is served for them.
pub(super) fn deny_unreferenced_secrets(
    state: &XdsState,
    requested: &[String],
    translation: &Translation,
    node_id: &str,
    identity: &GatewayIdentity,
) {
    static LOG: LogBudget = LogBudget::new(10, Duration::from_secs(10));
    for name in requested {
        if translation.secret_names.contains(name) {
            continue;
        }
        state.metrics.sds_denied.inc();
        if let Some(suppressed) = LOG.allow() {
            tracing::warn!(node = %bounded(node_id), gateway = %identity.gateway, secret = %bounded(name), suppressed, "SDS request for a secret this gateway does not reference; nothing served");
        }
    }
}

/// Removes the proxy from the registry when the stream ends, however it ends.
struct Registration<'a> {
    state: &'a XdsState,
    id: u64,
    mode: &'static str,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.state.proxies.remove(self.id);
        self.state
            .metrics
            .connected_proxies
            .get_or_create(&ModeLabel { mode: self.mode })
            .dec();
    }
}

async fn run_stream<S: Session>(
    state: &XdsState,
    certified: Option<&ObjectKey>,
    mut incoming: Streaming<S::Req>,
    tx: &mpsc::Sender<Result<S::Resp, Status>>,
) -> Result<(), Status>
where
    S::Req: prost::Message + Default,
{
    let Some(first) = incoming.message().await? else {
        return Ok(());
    };
    let node = S::node(&first).cloned();
    let identity = verified_identity(node.as_ref(), certified).map_err(|e| match e {
        IdentityError::Mismatch { .. } => Status::permission_denied(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    })?;
    let node_id = node.map(|n| n.id).unwrap_or_default();
    let _translated_with_its_cluster = state.translator.subscribe(&identity);
    let mut snapshots = state.snapshots.clone();
    // Generation 0 is "nothing loaded yet"; serving it would withdraw the proxy's config.
    if snapshots.wait_for(|s| s.generation > 0).await.is_err() {
        return Ok(());
    }
    let mut snapshot = snapshots.borrow_and_update().clone();
    let mut translation = state.translator.translate(&snapshot, &identity);
    let (mut config, mut withheld) = state.served(certified.is_some(), &translation.config);
    warn_withheld(withheld, &node_id);
    let mut session = S::create(config.clone());
    let mut denied: BTreeSet<String> = BTreeSet::new();
    let mut synced_generation = None;

    let id = state.proxies.next_id.fetch_add(1, Ordering::Relaxed);
    let registration = Registration {
        state,
        id,
        mode: S::MODE,
    };
    state
        .metrics
        .connected_proxies
        .get_or_create(&ModeLabel { mode: S::MODE })
        .inc();
    let span = tracing::info_span!("ads", node = %bounded(&node_id), gateway = %identity.gateway, cluster = %bounded(&identity.cluster), mode = S::MODE);
    let _enter = span.enter();
    static CONNECTED: LogBudget = LogBudget::new(20, Duration::from_secs(1));
    if let Some(suppressed) = CONNECTED.allow() {
        tracing::info!(suppressed, "proxy connected");
    }
    drop(_enter);

    let mut awaiting_since: Option<Instant> = Some(snapshot.published_at);
    let mut pending = Some(first);
    loop {
        let out = if let Some(req) = pending.take() {
            deny_foreign_secrets::<S>(state, &req, &translation, &node_id, &identity, &mut denied);
            session.on_request(&req).map_err(Status::invalid_argument)?
        } else {
            tokio::select! {
                message = incoming.message() => match message {
                    Ok(Some(req)) => {
                        deny_foreign_secrets::<S>(state, &req, &translation, &node_id, &identity, &mut denied);
                        session.on_request(&req).map_err(Status::invalid_argument)?
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %node_id, %status, "ADS stream closed by peer");
                        break;
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    snapshot = snapshots.borrow_and_update().clone();
                    let started = Instant::now();
                    translation = state.translator.translate(&snapshot, &identity);
                    let before = withheld;
                    (config, withheld) = state.served(certified.is_some(), &translation.config);
                    if withheld > before {
                        warn_withheld(withheld, &node_id);
                    }
                    let out = session.on_config(config.clone());
                    state.metrics.push_seconds.observe(started.elapsed().as_secs_f64());
                    if !out.is_empty() {
                        awaiting_since = Some(snapshot.published_at);
                    }
                    out
                }
            }
        };
        for response in out {
            let kind = ResourceType::from_type_url(S::response_type(&response))
                .map(ResourceType::short_name)
                .unwrap_or("unknown");
            state
                .metrics
                .pushes
                .get_or_create(&TypeLabel { r#type: kind })
                .inc();
            if tx.send(Ok(response)).await.is_err() {
                return Ok(());
            }
        }
        let events = session.take_events();
        for (kind, nack) in &events.nacks {
            state
                .metrics
                .nacks
                .get_or_create(&TypeLabel {
                    r#type: kind.short_name(),
                })
                .inc();
            static NACKED: LogBudget = LogBudget::new(20, Duration::from_secs(10));
            if let Some(suppressed) = NACKED.allow() {
                tracing::warn!(node = %bounded(&node_id), r#type = %kind, version = %nack.version, message = %bounded(&nack.message), suppressed, "proxy rejected config (NACK)");
            }
            awaiting_since = None;
        }
        let status = session.status();
        if let Some(since) = awaiting_since {
            if status.iter().all(|t| t.state != SyncState::Stale) {
                state
                    .metrics
                    .convergence_seconds
                    .observe(since.elapsed().as_secs_f64());
                awaiting_since = None;
            }
        }
        if fully_synced(&status, &config) {
            synced_generation = Some(snapshot.generation);
        }
        state.proxies.update(
            id,
            ProxyInfo {
                node_id: node_id.clone(),
                gateway: identity.gateway.to_string(),
                cluster: identity.cluster.clone(),
                zone: identity.zone.clone(),
                role: identity.role,
                mode: S::MODE.to_owned(),
                generation: snapshot.generation,
                synced_generation,
                types: status,
                xds: identity.xds,
                polling: None,
            },
        );
    }
    drop(registration);
    static DISCONNECTED: LogBudget = LogBudget::new(20, Duration::from_secs(1));
    if let Some(suppressed) = DISCONNECTED.allow() {
        tracing::info!(node = %bounded(&node_id), suppressed, "proxy disconnected");
    }
    Ok(())
}
