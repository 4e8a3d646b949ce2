//! Incremental (delta) ADS, for bootstraps printed with `meridian bootstrap --delta`: the same
//! subscriptions, compilation and ACK/NACK as state of the world, over
//! `DeltaAggregatedResources`. The resources of each type are kept by name as they arrive and
//! leave, and each response is applied as the whole set it leaves, so one `apply` serves both
//! protocols. Subscription changes are sent as the names added and removed.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{connect, nack_detail, Names, StreamError, Subscriber, XdsClient};
use crate::runtime::log_budget::bounded;

/// Per type: the resources the server has sent and not removed, and the names subscribed to
/// so far on this stream.
#[derive(Default)]
struct DeltaState {
    resources: BTreeMap<&'static str, BTreeMap<String, Any>>,
    sent: BTreeMap<&'static str, BTreeSet<String>>,
}

impl<S: Subscriber> XdsClient<S> {
    /// One delta stream; whether any response arrived on it.
    pub(super) async fn stream_delta(&mut self) -> Result<bool, StreamError> {
        let channel = connect(&self.bootstrap).await?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let mut names = Names::new();
        let mut state = DeltaState::default();
        let wildcard = self.subscriber.wildcard();
        for kind in wildcard {
            names.insert(kind, BTreeSet::new());
            self.delta_request(&tx, kind, Vec::new(), Vec::new(), None, None)
                .await?;
        }
        let mut responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut any = false;
        while let Some(response) = responses.message().await? {
            any = true;
            let Some(kind) = self.known(&response.type_url) else {
                let other = response.type_url.as_str();
                tracing::warn!(type_url = %bounded(other), "ignoring a delta response of a type never asked for");
                continue;
            };
            let whole = state.absorb(kind, &response, &names, wildcard.contains(&kind));
            let applied = self.subscriber.apply(kind, &whole, &mut names).await;
            self.subscriber
                .settle(kind, &response.system_version_info, &applied);
            self.answered(kind);
            let detail = nack_detail(&applied);
            self.delta_request(
                &tx,
                kind,
                Vec::new(),
                Vec::new(),
                Some(response.nonce.clone()),
                detail,
            )
            .await?;
            for follow in applied.follow {
                let wanted = names.get(follow).cloned().unwrap_or_default();
                let sent = state.sent.entry(follow).or_default();
                let subscribe: Vec<String> = wanted.difference(sent).cloned().collect();
                let unsubscribe: Vec<String> = sent.difference(&wanted).cloned().collect();
                *sent = wanted;
                if let Some(resources) = state.resources.get_mut(follow) {
                    resources.retain(|name, _| !unsubscribe.contains(name));
                }
                if !subscribe.is_empty() || !unsubscribe.is_empty() {
                    self.delta_request(&tx, follow, subscribe, unsubscribe, None, None)
                        .await?;
                }
            }
        }
        Ok(any)
    }

    async fn delta_request(
        &self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
        kind: &'static str,
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
        nonce: Option<String>,
        error: Option<Status>,
    ) -> Result<(), StreamError> {
        let request = DeltaDiscoveryRequest {
            node: Some(self.bootstrap.node.clone()),
            type_url: kind.to_owned(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            response_nonce: nonce.unwrap_or_default(),
            error_detail: error,
            ..Default::default()
        };
        tx.send(request).await.map_err(|_| StreamError::Closed)
    }
}

impl DeltaState {
    /// Takes a delta response in and returns the type's whole set after it, as a state of the
    /// world response would carry it (only subscribed names, for the types asked by name).
    fn absorb(
        &mut self,
        kind: &'static str,
        response: &DeltaDiscoveryResponse,
        names: &Names,
        wildcard: bool,
    ) -> DiscoveryResponse {
        let resources = self.resources.entry(kind).or_default();
        for name in &response.removed_resources {
            resources.remove(name);
        }
        for resource in &response.resources {
            if let Some(any) = &resource.resource {
                resources.insert(resource.name.clone(), any.clone());
            }
        }
        let names = names.get(kind);
        DiscoveryResponse {
            version_info: response.system_version_info.clone(),
            resources: resources
                .iter()
                .filter(|(name, _)| wildcard || names.is_some_and(|n| n.contains(*name)))
                .map(|(_, any)| any.clone())
                .collect(),
            type_url: kind.to_owned(),
            nonce: response.nonce.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;

    const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

    fn resource(name: &str) -> Resource {
        Resource {
            name: name.into(),
            resource: Some(Any {
                type_url: CLUSTERS.into(),
                value: name.as_bytes().to_vec(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn deltas_add_up_to_the_whole_set_and_names_not_asked_for_are_left_out() {
        let mut state = DeltaState::default();
        let mut names = Names::new();
        let first = DeltaDiscoveryResponse {
            resources: vec![resource("a"), resource("b")],
            type_url: CLUSTERS.into(),
            ..Default::default()
        };
        assert_eq!(
            state.absorb(CLUSTERS, &first, &names, true).resources.len(),
            2
        );
        let second = DeltaDiscoveryResponse {
            resources: vec![resource("c")],
            removed_resources: vec!["a".into()],
            type_url: CLUSTERS.into(),
            ..Default::default()
        };
        let whole = state.absorb(CLUSTERS, &second, &names, true);
        let values: Vec<&[u8]> = whole.resources.iter().map(|a| a.value.as_slice()).collect();
        assert_eq!(values, [b"b".as_slice(), b"c".as_slice()]);
        // Endpoints are asked by name: others the server sent are not part of the set.
        names.insert(ENDPOINTS, BTreeSet::from(["x".to_string()]));
        let endpoints = DeltaDiscoveryResponse {
            resources: vec![resource("x"), resource("y")],
            type_url: ENDPOINTS.into(),
            ..Default::default()
        };
        let whole = state.absorb(ENDPOINTS, &endpoints, &names, false);
        assert_eq!(whole.resources.len(), 1);
    }
}
