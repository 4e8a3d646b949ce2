//! Watch tasks: one kube-runtime watcher per kind, decoding objects into [`Update`]s.
//!
//! Server-managed metadata (`resourceVersion`, `managedFields`) and AccessPoint status are
//! dropped before objects reach the model: they do not change what gateways are served, and
//! keeping them would make every status write look like a new AccessPoint generation.
//! (Operators' acts on rollouts arrive as RolloutActions, `kubernetes::rollout_actions`.)

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::endpoint_slice::from_v1beta1;
use super::{Update, Watched};
use crate::api::{AccessPoint, MemberCluster, NameService};
use crate::core::model::node::trimmed;
use crate::core::model::tls::TlsSecret;
use crate::core::model::{InputObject, Kind, ObjectKey, CLUSTER_LABEL};

/// Starts a watch task per kind; each sends its updates to `tx` until `tx` closes.
pub async fn spawn_all(
    client: Client,
    tx: mpsc::Sender<Update>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, kube::Error> {
    let mut tasks = vec![
        spawn(
            Watched::Object(Kind::AccessPoint),
            Kind::AccessPoint,
            Api::<AccessPoint>::all(client.clone()),
            tx.clone(),
            |mut ap| {
                // Status is Meridian's output, never its input (approvals are RolloutActions).
                ap.status = None;
                Ok(InputObject::AccessPoint(ap))
            },
        ),
        spawn(
            Watched::Object(Kind::MemberCluster),
            Kind::MemberCluster,
            Api::<MemberCluster>::all(client.clone()),
            tx.clone(),
            |mut mc| {
                mc.status = None;
                Ok(InputObject::MemberCluster(mc))
            },
        ),
        spawn(
            Watched::Object(Kind::NameService),
            Kind::NameService,
            Api::<NameService>::all(client.clone()),
            tx.clone(),
            |mut ns| {
                ns.status = None;
                Ok(InputObject::NameService(ns))
            },
        ),
        spawn(
            Watched::Object(Kind::Service),
            Kind::Service,
            Api::<Service>::all(client.clone()),
            tx.clone(),
            |mut svc| {
                svc.status = None;
                Ok(InputObject::Service(svc))
            },
        ),
        // Only TLS Secrets: the material Gateway servers name in `credentialName`.
        spawn_with(
            Watched::Object(Kind::Secret),
            Kind::Secret,
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().fields("type=kubernetes.io/tls"),
            tx.clone(),
            |secret| Ok(InputObject::Secret(TlsSecret::from(secret))),
        ),
        tokio::spawn(forward(
            Watched::Namespace,
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
            tx.clone(),
            |event| match event {
                Event::Apply(ns) | Event::InitApply(ns) => Some(Update::Namespace {
                    labels: ns.metadata.labels.unwrap_or_default(),
                    name: ns.metadata.name.unwrap_or_default(),
                }),
                Event::Delete(ns) => {
                    Some(Update::NamespaceGone(ns.metadata.name.unwrap_or_default()))
                }
                Event::Init | Event::InitDone => None,
            },
        )),
    ];
    tasks.push(spawn_deployments(client.clone(), tx.clone(), None));
    tasks.push(spawn_nodes(client.clone(), tx.clone(), None));
    tasks.push(spawn_endpoint_slices(client, tx, None).await?);
    Ok(tasks)
}

/// The watch of `kind` in `member`, or in the hub.
fn watched_in(kind: Kind, member: Option<&str>) -> Watched {
    match member {
        Some(cluster) => Watched::Member {
            cluster: cluster.to_owned(),
            kind,
        },
        None => Watched::Object(kind),
    }
}

/// Watches Deployments' metadata only: placement (`followDeployment`) needs nothing but
/// their existence, so each becomes a bare name, labelled with `member` when read from one.
pub fn spawn_deployments(
    client: Client,
    tx: mpsc::Sender<Update>,
    member: Option<String>,
) -> tokio::task::JoinHandle<()> {
    let watched = watched_in(Kind::Deployment, member.as_deref());
    let bare = move |meta: ObjectMeta| {
        let labels = member
            .as_ref()
            .map(|c| BTreeMap::from([(CLUSTER_LABEL.to_owned(), c.clone())]));
        InputObject::Deployment(Deployment {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                labels,
                ..Default::default()
            },
            ..Default::default()
        })
    };
    let api = Api::<PartialObjectMeta<Deployment>>::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(forward(watched, stream, tx, move |event| match event {
        Event::Apply(d) | Event::InitApply(d) => Some(Update::Apply(bare(d.metadata))),
        Event::Delete(d) => Some(Update::Delete(Kind::Deployment, bare(d.metadata).key())),
        Event::Init | Event::InitDone => None,
    }))
}

/// Watches Nodes, trimmed to what node-port subsets read (a heartbeat changes nothing) and
/// labelled with `member` when read from one.
pub fn spawn_nodes(
    client: Client,
    tx: mpsc::Sender<Update>,
    member: Option<String>,
) -> tokio::task::JoinHandle<()> {
    let watched = watched_in(Kind::Node, member.as_deref());
    spawn(
        watched,
        Kind::Node,
        Api::<Node>::all(client),
        tx,
        move |node| {
            let mut node = trimmed(node);
            if let Some(cluster) = &member {
                node.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(CLUSTER_LABEL.to_owned(), cluster.clone());
            }
            Ok(InputObject::Node(node))
        },
    )
}

/// Watches EndpointSlices (v1, or v1beta1 converted), labelled with `member` when they are
/// read from a member cluster.
pub async fn spawn_endpoint_slices(
    client: Client,
    tx: mpsc::Sender<Update>,
    member: Option<String>,
) -> Result<tokio::task::JoinHandle<()>, kube::Error> {
    let watched = watched_in(Kind::EndpointSlice, member.as_deref());
    let label = move |mut slice: EndpointSlice| {
        if let Some(cluster) = &member {
            slice
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(CLUSTER_LABEL.to_owned(), cluster.clone());
        }
        InputObject::EndpointSlice(slice)
    };
    if serves_endpoint_slices_v1(&client).await? {
        let api = Api::<EndpointSlice>::all(client);
        return Ok(spawn(watched, Kind::EndpointSlice, api, tx, move |eps| {
            Ok(label(eps))
        }));
    }
    tracing::info!("apiserver serves EndpointSlices as discovery.k8s.io/v1beta1 only; converting");
    let resource = ApiResource {
        group: "discovery.k8s.io".to_owned(),
        version: "v1beta1".to_owned(),
        api_version: "discovery.k8s.io/v1beta1".to_owned(),
        kind: "EndpointSlice".to_owned(),
        plural: "endpointslices".to_owned(),
    };
    let api = Api::<DynamicObject>::all_with(client, &resource);
    Ok(spawn(
        watched,
        Kind::EndpointSlice,
        api,
        tx,
        move |object| {
            let value = serde_json::to_value(object)?;
            Ok(label(from_v1beta1(value)?))
        },
    ))
}

async fn serves_endpoint_slices_v1(client: &Client) -> Result<bool, kube::Error> {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "endpointslices")),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Watches `api`, turning each object into an input with `decode`.
fn spawn<K>(
    watched: Watched,
    model_kind: Kind,
    api: Api<K>,
    tx: mpsc::Sender<Update>,
    decode: impl Fn(K) -> Result<InputObject, serde_json::Error> + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    spawn_with(
        watched,
        model_kind,
        api,
        watcher::Config::default(),
        tx,
        decode,
    )
}

fn spawn_with<K>(
    watched: Watched,
    model_kind: Kind,
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<Update>,
    decode: impl Fn(K) -> Result<InputObject, serde_json::Error> + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, config).default_backoff();
    let decoded = move |object: K| {
        let key = key_of(object.meta());
        decode(object)
            .map_err(|error| {
                tracing::warn!(kind = %model_kind, object = %key, %error, "cannot decode; ignored");
            })
            .ok()
    };
    tokio::spawn(forward(watched, stream, tx, move |event| match event {
        Event::Apply(object) | Event::InitApply(object) => {
            decoded(object).map(|o| Update::Apply(strip(o)))
        }
        // Decoded too: a member's slices are keyed with their cluster.
        Event::Delete(object) => decoded(object).map(|o| Update::Delete(model_kind, o.key())),
        Event::Init | Event::InitDone => None,
    }))
}

pub(crate) async fn forward<K>(
    watched: Watched,
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    tx: mpsc::Sender<Update>,
    convert: impl Fn(Event<K>) -> Option<Update>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let update = match event {
            Ok(Event::Init) => Some(Update::RelistStarted(watched.clone())),
            Ok(Event::InitDone) => Some(Update::RelistDone(watched.clone())),
            Ok(event) => convert(event),
            Err(error) => {
                tracing::warn!(?watched, %error, "watch failed; retrying with backoff");
                None
            }
        };
        if let Some(update) = update {
            if tx.send(update).await.is_err() {
                return;
            }
        }
    }
}

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn strip(mut object: InputObject) -> InputObject {
    let meta = object.metadata_mut();
    meta.resource_version = None;
    meta.managed_fields = None;
    let annotations: Option<BTreeMap<String, String>> = meta.annotations.take().map(|a| {
        a.into_iter()
            .filter(|(k, _)| k != "kubectl.kubernetes.io/last-applied-configuration")
            .collect()
    });
    meta.annotations = annotations.filter(|a| !a.is_empty());
    object
}
