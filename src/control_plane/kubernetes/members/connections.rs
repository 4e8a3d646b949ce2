//! One task per connected MemberCluster: client, health probe, and read-back of its
//! EndpointSlices (endpoints) and Deployments (for `followDeployment`).
//!
//! A member whose API server is unreachable keeps its last known endpoints in the index (its
//! data plane may well be fine), across restarts too (`cache`); only removing the
//! MemberCluster or its connection drops them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Health, MemberState};
use crate::api::member_cluster::MemberConnection;
use crate::control_plane::index::Snapshot;
use crate::control_plane::kubernetes::inputs::watch::{
    spawn_deployments, spawn_endpoint_slices, spawn_nodes,
};
use crate::control_plane::kubernetes::inputs::Update;

/// How often each member's API server is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_SECRET_KEY: &str = "kubeconfig";

/// Aborts the task when dropped, so stopping a member stops everything it started.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one task per MemberCluster that has a connection, following the snapshots.
pub async fn run(
    hub: Client,
    namespace: String,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    updates: mpsc::Sender<Update>,
    state: Arc<MemberState>,
    mut restored: watch::Receiver<Option<BTreeSet<String>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut running: BTreeMap<String, (MemberConnection, Owned)> = BTreeMap::new();
    let mut restored_checked = false;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let desired: BTreeMap<String, MemberConnection> = snapshot
            .model
            .member_clusters
            .iter()
            .filter_map(|(key, m)| Some((key.name.clone(), m.spec.connection.clone()?)))
            .collect();
        // State restored for members that no longer exist (or lost their connection while
        // Meridian was down) is dropped once the first snapshot says which exist.
        // (Generation 0 is "nothing loaded yet", not "no members".)
        if !restored_checked && snapshot.generation > 0 {
            let clusters = restored.borrow_and_update().clone();
            if let Some(clusters) = clusters {
                restored_checked = true;
                for cluster in clusters.into_iter().filter(|c| !desired.contains_key(c)) {
                    if updates.send(Update::MemberGone(cluster)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, (connection, _))| desired.get(*name) != Some(connection))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            running.remove(&name);
            state.forget(&name);
            tracing::info!(cluster = %name, "member cluster disconnected");
            if updates.send(Update::MemberGone(name)).await.is_err() {
                return;
            }
        }
        for (name, connection) in desired {
            if running.contains_key(&name) {
                continue;
            }
            let task = tokio::spawn(member(
                name.clone(),
                connection.clone(),
                hub.clone(),
                namespace.clone(),
                updates.clone(),
                state.clone(),
            ));
            running.insert(name, (connection, Owned(task)));
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = restored.changed(), if !restored_checked => {}
            _ = stopped.changed() => return,
        }
    }
}

async fn member(
    name: String,
    connection: MemberConnection,
    hub: Client,
    namespace: String,
    updates: mpsc::Sender<Update>,
    state: Arc<MemberState>,
) {
    let mut client: Option<Client> = None;
    let mut readers: Vec<Owned> = Vec::new();
    loop {
        if client.is_none() {
            match connect(&hub, &namespace, &connection).await {
                Ok(c) => {
                    state.set_client(&name, c.clone());
                    client = Some(c);
                }
                Err(error) => state.set_health(&name, Health::Unreachable(error)),
            }
        }
        if let Some(c) = &client {
            let health = probe(c).await;
            if health == Health::Reachable && readers.is_empty() {
                match spawn_endpoint_slices(c.clone(), updates.clone(), Some(name.clone())).await {
                    Ok(task) => {
                        readers.push(Owned(task));
                        readers.push(Owned(spawn_deployments(
                            c.clone(),
                            updates.clone(),
                            Some(name.clone()),
                        )));
                        readers.push(Owned(spawn_nodes(
                            c.clone(),
                            updates.clone(),
                            Some(name.clone()),
                        )));
                    }
                    Err(error) => {
                        tracing::warn!(cluster = %name, %error, "cannot watch EndpointSlices")
                    }
                }
            }
            state.set_health(&name, health);
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

async fn connect(
    hub: &Client,
    namespace: &str,
    connection: &MemberConnection,
) -> Result<Client, String> {
    if connection.local {
        return Ok(hub.clone());
    }
    let Some(reference) = &connection.kubeconfig_secret else {
        return Err("connection names neither a kubeconfigSecret nor local".to_owned());
    };
    let key = reference.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY);
    let secret = Api::<Secret>::namespaced(hub.clone(), namespace)
        .get(&reference.name)
        .await
        .map_err(|e| format!("reading Secret {namespace}/{}: {e}", reference.name))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {namespace}/{} has no key {key:?}", reference.name))?;
    let text = std::str::from_utf8(&bytes.0).map_err(|_| {
        format!(
            "Secret {namespace}/{} key {key:?} is not UTF-8",
            reference.name
        )
    })?;
    let kubeconfig = Kubeconfig::from_yaml(text)
        .map_err(|e| format!("Secret {namespace}/{} key {key:?}: {e}", reference.name))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("Secret {namespace}/{} key {key:?}: {e}", reference.name))?;
    Client::try_from(config).map_err(|e| e.to_string())
}

async fn probe(client: &Client) -> Health {
    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Health::Reachable,
        Ok(Err(error)) => Health::Unreachable(error.to_string()),
        Err(_) => Health::Unreachable(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    }
}
