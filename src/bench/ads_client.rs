//! An ADS client that behaves like Envoy on the wire: it subscribes to CDS and LDS, follows
//! them to the EDS and RDS names they reference, and ACKs every response (state of the world
//! or delta). It keeps no configuration, only what it must name in its next request.

use std::collections::BTreeSet;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Value};

use crate::control_plane::xds::identity::{CLUSTER_KEY, GATEWAY_KEY};
use crate::core::resources::ResourceType;

/// What a stream tells the bench: a response of `kind` was received and ACKed.
#[derive(Clone, Copy, Debug)]
pub struct Acked {
    pub stream: usize,
    pub kind: ResourceType,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ADS stream: {0}")]
    Status(Box<tonic::Status>),
    #[error("undecodable {kind} resource: {source}")]
    Decode {
        kind: &'static str,
        source: prost::DecodeError,
    },
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status(Box::new(status))
    }
}

/// Who the stream claims to be.
pub struct Identity {
    pub stream: usize,
    pub gateway: String,
    pub cluster: String,
}

impl Identity {
    fn node(&self) -> Node {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        Node {
            id: format!("bench-{}", self.stream),
            cluster: self.gateway.replace('/', "."),
            metadata: Some(Struct {
                fields: [
                    (GATEWAY_KEY.to_owned(), text(&self.gateway)),
                    (CLUSTER_KEY.to_owned(), text(&self.cluster)),
                ]
                .into(),
            }),
            ..Default::default()
        }
    }
}

/// The names a response of `kind` makes the client subscribe to next: EDS cluster names from
/// CDS, route configuration names from LDS.
fn references(
    kind: ResourceType,
    resources: &[Any],
) -> Result<Option<BTreeSet<String>>, ClientError> {
    let decode_error = |kind, source| ClientError::Decode { kind, source };
    match kind {
        ResourceType::Cluster => {
            let mut names = BTreeSet::new();
            for any in resources {
                let cluster = Cluster::decode(any.value.as_slice())
                    .map_err(|e| decode_error("cluster", e))?;
                let eds = cluster.cluster_discovery_type
                    == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
                if eds {
                    let service = cluster
                        .eds_cluster_config
                        .map(|c| c.service_name)
                        .filter(|s| !s.is_empty());
                    names.insert(service.unwrap_or(cluster.name));
                }
            }
            Ok(Some(names))
        }
        ResourceType::Listener => {
            let mut names = BTreeSet::new();
            for any in resources {
                let listener = Listener::decode(any.value.as_slice())
                    .map_err(|e| decode_error("listener", e))?;
                let filters = listener.filter_chains.iter().flat_map(|c| &c.filters);
                for filter in filters {
                    let Some(ConfigType::TypedConfig(config)) = &filter.config_type else {
                        continue;
                    };
                    if !config.type_url.ends_with("HttpConnectionManager") {
                        continue;
                    }
                    let manager = HttpConnectionManager::decode(config.value.as_slice())
                        .map_err(|e| decode_error("http connection manager", e))?;
                    if let Some(RouteSpecifier::Rds(rds)) = manager.route_specifier {
                        names.insert(rds.route_config_name);
                    }
                }
            }
            Ok(Some(names))
        }
        _ => Ok(None),
    }
}

/// The type a response's references subscribe to.
fn followed(kind: ResourceType) -> ResourceType {
    match kind {
        ResourceType::Cluster => ResourceType::Endpoint,
        _ => ResourceType::Route,
    }
}

/// Runs one state-of-the-world stream until the server ends it.
pub async fn run_sotw(
    channel: Channel,
    identity: Identity,
    acked: mpsc::UnboundedSender<Acked>,
) -> Result<(), ClientError> {
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let request =
        |kind: ResourceType, names: Vec<String>, version: &str, nonce: &str| DiscoveryRequest {
            type_url: kind.type_url(),
            resource_names: names,
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        };
    let mut first = request(ResourceType::Cluster, Vec::new(), "", "");
    first.node = Some(identity.node());
    let _ = tx.send(first);
    let _ = tx.send(request(ResourceType::Listener, Vec::new(), "", ""));
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut incoming = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut subscribed: [BTreeSet<String>; 2] = Default::default();
    while let Some(response) = incoming.message().await? {
        let DiscoveryResponse {
            type_url,
            version_info,
            nonce,
            resources,
            ..
        } = response;
        let Some(kind) = ResourceType::from_type_url(&type_url) else {
            continue;
        };
        let names = match kind {
            ResourceType::Route => subscribed[1].iter().cloned().collect(),
            ResourceType::Endpoint => subscribed[0].iter().cloned().collect(),
            _ => Vec::new(),
        };
        let _ = tx.send(request(kind, names, &version_info, &nonce));
        if let Some(names) = references(kind, &resources)? {
            let slot = usize::from(kind == ResourceType::Listener);
            if subscribed[slot] != names {
                subscribed[slot] = names.clone();
                let next = followed(kind);
                let _ = tx.send(request(next, names.into_iter().collect(), "", ""));
            }
        }
        let _ = acked.send(Acked {
            stream: identity.stream,
            kind,
        });
    }
    Ok(())
}

/// Runs one delta stream until the server ends it.
pub async fn run_delta(
    channel: Channel,
    identity: Identity,
    acked: mpsc::UnboundedSender<Acked>,
) -> Result<(), ClientError> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let request =
        |kind: ResourceType, subscribe: Vec<String>, unsubscribe: Vec<String>, nonce: &str| {
            DeltaDiscoveryRequest {
                type_url: kind.type_url(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                response_nonce: nonce.to_owned(),
                ..Default::default()
            }
        };
    let mut first = request(ResourceType::Cluster, Vec::new(), Vec::new(), "");
    first.node = Some(identity.node());
    let _ = tx.send(first).await;
    let _ = tx
        .send(request(ResourceType::Listener, Vec::new(), Vec::new(), ""))
        .await;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut incoming = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Delta responses carry only what changed; the names each CDS/LDS resource references
    // are kept per resource so removals unsubscribe.
    let mut references_of: [std::collections::BTreeMap<String, BTreeSet<String>>; 2] =
        Default::default();
    while let Some(response) = incoming.message().await? {
        let Some(kind) = ResourceType::from_type_url(&response.type_url) else {
            continue;
        };
        let _ = tx
            .send(request(kind, Vec::new(), Vec::new(), &response.nonce))
            .await;
        if matches!(kind, ResourceType::Cluster | ResourceType::Listener) {
            let slot = usize::from(kind == ResourceType::Listener);
            let before: BTreeSet<String> =
                references_of[slot].values().flatten().cloned().collect();
            for resource in &response.resources {
                let Some(body) = &resource.resource else {
                    continue;
                };
                let names = references(kind, std::slice::from_ref(body))?.unwrap_or_default();
                references_of[slot].insert(resource.name.clone(), names);
            }
            for removed in &response.removed_resources {
                references_of[slot].remove(removed);
            }
            let after: BTreeSet<String> = references_of[slot].values().flatten().cloned().collect();
            if after != before {
                let subscribe = after.difference(&before).cloned().collect();
                let unsubscribe = before.difference(&after).cloned().collect();
                let _ = tx
                    .send(request(followed(kind), subscribe, unsubscribe, ""))
                    .await;
            }
        }
        let _ = acked.send(Acked {
            stream: identity.stream,
            kind,
        });
    }
    Ok(())
}
