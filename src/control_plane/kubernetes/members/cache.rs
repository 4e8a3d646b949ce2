//! Last known member state, kept in the hub: what each member's API server last said about
//! its EndpointSlices, Deployments and Nodes, so a replica that starts while a member is unreachable
//! serves the localities its peers serve instead of none.
//!
//! The leader writes ConfigMap `meridian-member-<cluster>` (labelled
//! `meridian.dev/member-cache`) in Meridian's namespace whenever a connected member's objects
//! change, at most every [`WRITE_EVERY`], and deletes those of members that are gone. Every
//! replica reads them all at start and feeds them to the index before it serves anything, as
//! a first list of each member's objects; a member's own list replaces it once reachable, and
//! the state of a member that no longer exists is dropped with the first snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::api::FIELD_MANAGER;
use crate::control_plane::index::Snapshot;
use crate::control_plane::kubernetes::inputs::{Update, Watched};
use crate::core::model::{member_of, InputObject, Kind, Model};
use crate::runtime::log_budget::LogBudget;

pub const LABEL: &str = "meridian.dev/member-cache";
const KEY: &str = "objects.json";
/// A ConfigMap holds at most 1 MiB; past this a member's state is not kept (and it says so).
const MAX_BYTES: usize = 900 * 1024;
/// The leader writes a member's state at most this often.
pub const WRITE_EVERY: Duration = Duration::from_secs(5);

/// What a member's ConfigMap holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cached {
    endpoint_slices: Vec<EndpointSlice>,
    deployments: Vec<Deployment>,
    /// Trimmed as the model keeps them (absent in what earlier versions wrote).
    #[serde(default)]
    nodes: Vec<Node>,
}

pub fn config_map_name(cluster: &str) -> String {
    format!("meridian-member-{cluster}")
}

/// The objects `model` holds from `cluster`, as kept.
fn cached_of(model: &Model, cluster: &str) -> Cached {
    Cached {
        endpoint_slices: read_from(model.endpoint_slices.values(), cluster),
        deployments: read_from(model.deployments.values(), cluster),
        nodes: read_from(model.nodes.values(), cluster),
    }
}

/// Those of `objects` read from `cluster`, without server-managed fields.
fn read_from<'a, T: kube::Resource + Clone + 'a>(
    objects: impl Iterator<Item = &'a T>,
    cluster: &str,
) -> Vec<T> {
    objects
        .filter(|o| member_of(o.meta()) == Some(cluster))
        .map(|o| {
            let mut o = o.clone();
            o.meta_mut().managed_fields = None;
            o
        })
        .collect()
}

/// The leader's side: keeps every connected member's ConfigMap current.
pub async fn persist(
    client: Client,
    namespace: String,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leading: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    loop {
        if *leading.borrow_and_update() {
            let model = snapshots.borrow_and_update().model.clone();
            write_round(&api, &model, &mut written).await;
        } else {
            written.clear();
        }
        tokio::select! {
            _ = tokio::time::sleep(WRITE_EVERY) => {}
            _ = stopped.changed() => return,
        }
        tokio::select! {
            _ = snapshots.changed() => {}
            _ = leading.changed() => {}
            _ = stopped.changed() => return,
        }
    }
}

async fn write_round(api: &Api<ConfigMap>, model: &Model, written: &mut BTreeMap<String, String>) {
    static LOG: LogBudget = LogBudget::new(10, Duration::from_secs(60));
    let members: BTreeSet<String> = model
        .member_clusters
        .iter()
        .filter(|(_, m)| m.spec.connection.is_some())
        .map(|(key, _)| key.name.clone())
        .collect();
    for cluster in &members {
        let cached = cached_of(model, cluster);
        let Ok(text) = serde_json::to_string(&cached) else {
            continue;
        };
        if written.get(cluster) == Some(&text) {
            continue;
        }
        if text.len() > MAX_BYTES {
            if let Some(suppressed) = LOG.allow() {
                tracing::warn!(%cluster, bytes = text.len(), limit = MAX_BYTES, suppressed, "member state too large to keep in a ConfigMap; a replica starting while this member is unreachable will not have its endpoints");
            }
            continue;
        }
        let name = config_map_name(cluster);
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {LABEL: cluster}},
            "data": {KEY: text},
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(&object)).await {
            Ok(_) => {
                written.insert(cluster.clone(), text);
            }
            Err(error) => {
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(%cluster, %error, suppressed, "cannot keep member state");
                }
            }
        }
    }
    written.retain(|cluster, _| members.contains(cluster));
    let Ok(kept) = api.list(&ListParams::default().labels(LABEL)).await else {
        return;
    };
    for config_map in kept {
        let cluster = config_map
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL))
            .cloned()
            .unwrap_or_default();
        if members.contains(&cluster) {
            continue;
        }
        if let Some(name) = &config_map.metadata.name {
            let _ = api.delete(name, &DeleteParams::default()).await;
            tracing::info!(%cluster, "member gone: its kept state deleted");
        }
    }
}

/// At start, before anything is served: feeds every member's kept state to the index as a
/// first list of that member's objects, then says so ([`Update::MembersRestored`]); the
/// members' own lists replace it once they answer. Returns the clusters restored. Kept state
/// that cannot be read is skipped (with a warning), never waited for.
pub async fn restore_all(
    client: &Client,
    namespace: &str,
    updates: &mpsc::Sender<Update>,
) -> BTreeSet<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut restored = BTreeSet::new();
    let kept = match api.list(&ListParams::default().labels(LABEL)).await {
        Ok(list) => list.items,
        Err(error) => {
            tracing::warn!(%error, "cannot read members' kept state; starting without it");
            Vec::new()
        }
    };
    for config_map in kept {
        let Some(cluster) = config_map
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL))
            .cloned()
        else {
            continue;
        };
        let text = config_map
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .map(String::as_str)
            .unwrap_or_default();
        let cached: Cached = match serde_json::from_str(text) {
            Ok(cached) => cached,
            Err(error) => {
                tracing::warn!(%cluster, %error, "kept member state unreadable; ignored");
                continue;
            }
        };
        let objects = cached.endpoint_slices.len() + cached.deployments.len() + cached.nodes.len();
        if feed(&cluster, cached, updates).await.is_err() {
            return restored;
        }
        tracing::info!(%cluster, objects, "member's last known state restored");
        restored.insert(cluster);
    }
    let _ = updates.send(Update::MembersRestored).await;
    restored
}

/// Sends `cached` as a complete list of `cluster`'s EndpointSlices, Deployments and Nodes.
async fn feed(
    cluster: &str,
    cached: Cached,
    updates: &mpsc::Sender<Update>,
) -> Result<(), mpsc::error::SendError<Update>> {
    let lists = [
        (
            Kind::EndpointSlice,
            cached
                .endpoint_slices
                .into_iter()
                .map(InputObject::EndpointSlice)
                .collect::<Vec<_>>(),
        ),
        (
            Kind::Deployment,
            cached
                .deployments
                .into_iter()
                .map(InputObject::Deployment)
                .collect(),
        ),
        (
            Kind::Node,
            cached.nodes.into_iter().map(InputObject::Node).collect(),
        ),
    ];
    for (kind, objects) in lists {
        let watched = Watched::Member {
            cluster: cluster.to_owned(),
            kind,
        };
        updates.send(Update::RelistStarted(watched.clone())).await?;
        for object in objects {
            updates.send(Update::Apply(object)).await?;
        }
        updates.send(Update::RelistDone(watched)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_keeps_only_its_own_objects() {
        let model = crate::core::test_support::model_of(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-m3, namespace: shop, labels: {kubernetes.io/service-name: web, meridian.dev/cluster: m3}}
addressType: IPv4
endpoints: [{addresses: ["10.3.0.1"], zone: z2}]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-m1, namespace: shop, labels: {kubernetes.io/service-name: web, meridian.dev/cluster: m1}}
addressType: IPv4
endpoints: [{addresses: ["10.1.0.1"], zone: z1}]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-hub, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["10.0.0.1"]}]
ports: [{name: http, port: 8080}]
"#,
            "default",
        );
        let kept = cached_of(&model, "m3");
        let names: Vec<&str> = kept
            .endpoint_slices
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["web-m3"]);
        let text = serde_json::to_string(&kept).unwrap();
        let back: Cached = serde_json::from_str(&text).unwrap();
        assert_eq!(back, kept, "what is kept reads back the same");
        assert!(cached_of(&model, "m2").endpoint_slices.is_empty());
    }
}
