//! The leader's writes into member clusters, and MemberCluster status.
//!
//! Each round: apply every desired Service ([`member_services`]) with server-side apply
//! (field manager `meridian`), refusing to take over a Service Meridian did not create unless
//! the AccessPoint says `conflictPolicy: Overwrite`; delete Services Meridian created that are no
//! longer desired (unless `orphan`); keep a finalizer on AccessPoints with member objects so
//! deleting one first cleans up. Outcomes go to the status writer as [`MemberWrites`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use tokio::sync::watch;

use super::{Health, MemberState};
use crate::api::access_point::ConflictPolicy;
use crate::api::FIELD_MANAGER;
use crate::api::{AccessPoint, MemberCluster, API_VERSION};
use crate::control_plane::index::Snapshot;
use crate::core::federation::{member_services, MemberService, MANAGED_LABEL, OWNER_ANNOTATION};
use crate::core::model::{Model, ObjectKey};
use crate::core::placement::placed_clusters;
use crate::core::status::{MemberWrite, MemberWrites};

/// Finalizer on AccessPoints whose objects in member clusters must be removed first.
pub const FINALIZER: &str = "meridian.dev/member-cleanup";
/// A full round even without changes (catches drift and deletions made by hand).
const RESYNC_EVERY: Duration = Duration::from_secs(10);

pub async fn run(
    hub: Client,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    state: Arc<MemberState>,
    mut leading: watch::Receiver<bool>,
    writes: watch::Sender<MemberWrites>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut health = state.health();
    loop {
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                _ = stopped.changed() => return,
            }
        }
        let mut conditions: BTreeMap<String, Health> = BTreeMap::new();
        // What the last rounds applied successfully: unchanged objects are not re-sent on every
        // snapshot (endpoint churn), only on the periodic resync that repairs drift.
        let mut applied: Applied = BTreeMap::new();
        let mut last_resync = tokio::time::Instant::now();
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let current = health.borrow_and_update().clone();
            if last_resync.elapsed() >= RESYNC_EVERY {
                applied.clear();
                last_resync = tokio::time::Instant::now();
            }
            write_member_status(&hub, &current, &mut conditions).await;
            let outcome = round(&hub, &snapshot.model, &state, &current, &mut applied).await;
            tracing::debug!(generation = snapshot.generation, "member write round done");
            writes.send_if_modified(|w| {
                let changed = *w != outcome;
                *w = outcome;
                changed
            });
            tokio::select! {
                _ = snapshots.changed() => {}
                _ = health.changed() => {}
                _ = tokio::time::sleep(RESYNC_EVERY) => {}
                _ = leading.changed() => break,
                _ = stopped.changed() => return,
            }
        }
    }
}

/// Services last applied successfully, by (AccessPoint, cluster).
type Applied = BTreeMap<(ObjectKey, String), MemberService>;

/// One pass over every member; returns what happened per (AccessPoint, cluster).
async fn round(
    hub: &Client,
    model: &Model,
    state: &MemberState,
    health: &BTreeMap<String, Health>,
    applied: &mut Applied,
) -> MemberWrites {
    let desired = member_services(model);
    tracing::debug!(desired = desired.len(), "member write round");
    applied.retain(|id, _| desired.contains_key(id));
    let mut outcome = MemberWrites::new();
    for (id, service) in &desired {
        let (key, cluster) = id;
        let reachable = health.get(cluster) == Some(&Health::Reachable);
        if reachable && applied.get(id) == Some(service) {
            outcome.insert(id.clone(), MemberWrite::Applied);
            continue;
        }
        applied.remove(id);
        let write = match (health.get(cluster), state.client(cluster)) {
            (Some(Health::Reachable), Some(client)) => {
                let policy = model
                    .access_points
                    .get(key)
                    .map(|ap| ap.spec.conflict_policy)
                    .unwrap_or_default();
                match apply_service(&client, service, policy).await {
                    Ok(()) => MemberWrite::Applied,
                    Err(error) => MemberWrite::Failed(error),
                }
            }
            (Some(Health::Unreachable(error)), _) => {
                MemberWrite::Failed(format!("API server unreachable: {error}"))
            }
            _ => MemberWrite::Failed("not connected yet".to_owned()),
        };
        match &write {
            MemberWrite::Failed(error) => {
                tracing::warn!(access_point = %key, %cluster, %error, "member write failed")
            }
            MemberWrite::Applied => {
                applied.insert(id.clone(), service.clone());
            }
        }
        outcome.insert(id.clone(), write);
    }
    let pending_cleanup = clean_up(model, state, health, &desired).await;
    finalizers(hub, model, &desired, &pending_cleanup).await;
    outcome
}

async fn apply_service(
    client: &Client,
    desired: &MemberService,
    policy: ConflictPolicy,
) -> Result<(), String> {
    let api: Api<Service> = Api::namespaced(client.clone(), &desired.service.namespace);
    apply_spec(&api, desired, policy).await?;
    if !desired.load_balancer_ips.is_empty() {
        apply_load_balancer_status(&api, desired).await?;
    }
    Ok(())
}

/// The AccessPoint's VIPs in `status.loadBalancer.ingress`, as a LoadBalancer controller
/// writes them. A merge patch: applying with the spec's field manager would (before
/// Kubernetes 1.22 tracked subresources apart) drop the labels and annotations it owns.
async fn apply_load_balancer_status(
    api: &Api<Service>,
    desired: &MemberService,
) -> Result<(), String> {
    let ingress: Vec<serde_json::Value> = desired
        .load_balancer_ips
        .iter()
        .map(|ip| serde_json::json!({ "ip": ip }))
        .collect();
    let body = serde_json::json!({ "status": { "loadBalancer": { "ingress": ingress } } });
    api.patch_status(
        &desired.service.name,
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await
    .map_err(|e| {
        format!(
            "writing the VIPs into Service {} status: {e}",
            desired.service
        )
    })?;
    Ok(())
}

async fn apply_spec(
    api: &Api<Service>,
    desired: &MemberService,
    policy: ConflictPolicy,
) -> Result<(), String> {
    let owner = desired.access_point.to_string();
    let existing = api
        .get_opt(&desired.service.name)
        .await
        .map_err(|e| format!("reading Service {}: {e}", desired.service))?;
    if let Some(existing) = existing {
        let owned_by = existing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OWNER_ANNOTATION));
        if owned_by != Some(&owner) {
            if policy == ConflictPolicy::Abort {
                let who = owned_by.map_or("not managed by Meridian".to_owned(), |o| {
                    format!("managed for AccessPoint {o}")
                });
                return Err(format!(
                    "Service {} already exists ({who}); set conflictPolicy: Overwrite to take it over",
                    desired.service
                ));
            }
            return take_over(api, existing, desired).await;
        }
    }
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": desired.service.name,
            "namespace": desired.service.namespace,
            "labels": desired.labels,
            "annotations": desired.annotations,
        },
        "spec": desired.spec,
    });
    api.patch(
        &desired.service.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| format!("applying Service {}: {e}", desired.service))?;
    Ok(())
}

/// `Overwrite`: replaces a foreign Service's spec with ours in one update (keeping its cluster
/// IPs, which are immutable), so fields other managers set do not linger as they would under
/// a merge. From then on it is ours and server-side apply maintains it.
async fn take_over(
    api: &Api<Service>,
    mut existing: Service,
    desired: &MemberService,
) -> Result<(), String> {
    let old_spec = existing.spec.take().unwrap_or_default();
    let mut spec = desired.spec.clone();
    spec.cluster_ip = old_spec.cluster_ip;
    spec.cluster_ips = old_spec.cluster_ips;
    existing.spec = Some(spec);
    let meta = &mut existing.metadata;
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(desired.labels.clone());
    meta.annotations
        .get_or_insert_with(Default::default)
        .extend(desired.annotations.clone());
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    api.replace(&desired.service.name, &params, &existing)
        .await
        .map_err(|e| format!("taking over Service {}: {e}", desired.service))?;
    tracing::info!(service = %desired.service, access_point = %desired.access_point, "took over an existing Service (conflictPolicy: Overwrite)");
    Ok(())
}

/// Deletes managed Services no longer desired; returns the AccessPoints whose cleanup is not
/// finished (a member could not be reached or a delete failed).
async fn clean_up(
    model: &Model,
    state: &MemberState,
    health: &BTreeMap<String, Health>,
    desired: &BTreeMap<(ObjectKey, String), MemberService>,
) -> BTreeSet<ObjectKey> {
    let mut pending = BTreeSet::new();
    let clusters: BTreeSet<&String> = model
        .member_clusters
        .iter()
        .filter(|(_, m)| m.spec.connection.is_some())
        .map(|(k, _)| &k.name)
        .collect();
    for cluster in clusters {
        let reachable = health.get(cluster.as_str()) == Some(&Health::Reachable);
        let Some(client) = state.client(cluster).filter(|_| reachable) else {
            // Whatever was placed there stays pending until the member is back.
            pending.extend(
                model
                    .access_points
                    .iter()
                    .filter(|(_, ap)| placed_clusters(model, ap).contains(cluster))
                    .map(|(k, _)| k.clone()),
            );
            continue;
        };
        let api: Api<Service> = Api::all(client.clone());
        let managed = match api
            .list(&ListParams::default().labels(&format!("{MANAGED_LABEL}=true")))
            .await
        {
            Ok(list) => list.items,
            Err(error) => {
                tracing::warn!(%cluster, %error, "listing managed Services failed");
                pending.extend(model.access_points.keys().cloned());
                continue;
            }
        };
        for service in managed {
            let Some(owner) = owner_of(&service) else {
                continue;
            };
            let wanted = desired
                .get(&(owner.clone(), cluster.clone()))
                .is_some_and(|d| Some(&d.service.name) == service.metadata.name.as_ref());
            let orphan = model
                .access_points
                .get(&owner)
                .is_some_and(|ap| ap.spec.orphan);
            if wanted || orphan {
                continue;
            }
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let name = service.metadata.name.clone().unwrap_or_default();
            let namespaced: Api<Service> = Api::namespaced(client.clone(), &namespace);
            match namespaced.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(%cluster, service = %format!("{namespace}/{name}"), access_point = %owner, "removed from member cluster")
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    tracing::warn!(%cluster, %error, "deleting a managed Service failed");
                    pending.insert(owner);
                }
            }
        }
    }
    pending
}

fn owner_of(service: &Service) -> Option<ObjectKey> {
    let owner = service
        .metadata
        .annotations
        .as_ref()?
        .get(OWNER_ANNOTATION)?;
    let (namespace, name) = owner.split_once('/')?;
    Some(ObjectKey::new(namespace, name))
}

/// Adds the finalizer where member objects exist; removes it from deleted AccessPoints whose
/// cleanup is done (or that orphan their objects).
async fn finalizers(
    hub: &Client,
    model: &Model,
    desired: &BTreeMap<(ObjectKey, String), MemberService>,
    pending: &BTreeSet<ObjectKey>,
) {
    for (key, ap) in &model.access_points {
        let has = ap
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
        let deleting = ap.metadata.deletion_timestamp.is_some();
        let wants = !deleting && !ap.spec.orphan && desired.keys().any(|(k, _)| k == key);
        let release = has && (ap.spec.orphan || (deleting && !pending.contains(key)));
        if wants && !has {
            set_finalizer(hub, key, true).await;
        } else if release {
            set_finalizer(hub, key, false).await;
        }
    }
}

/// Adds or removes [`FINALIZER`] with a merge patch guarded by `resourceVersion`.
async fn set_finalizer(hub: &Client, key: &ObjectKey, present: bool) {
    let api: Api<AccessPoint> = Api::namespaced(hub.clone(), &key.namespace);
    let result = async {
        let Some(ap) = api.get_opt(&key.name).await? else {
            return Ok(());
        };
        let mut finalizers: Vec<String> = ap.metadata.finalizers.clone().unwrap_or_default();
        finalizers.retain(|f| f != FINALIZER);
        if present {
            finalizers.push(FINALIZER.to_owned());
        }
        let patch = serde_json::json!({
            "metadata": {"finalizers": finalizers, "resourceVersion": ap.metadata.resource_version},
        });
        api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(access_point = %key, present, "finalizer updated"),
        Err(error) => {
            tracing::warn!(access_point = %key, %error, "finalizer update failed; retrying next round")
        }
    }
}

/// MemberCluster `Ready` conditions from the probes, written when they change.
async fn write_member_status(
    hub: &Client,
    health: &BTreeMap<String, Health>,
    shown: &mut BTreeMap<String, Health>,
) {
    let api: Api<MemberCluster> = Api::all(hub.clone());
    for (cluster, state) in health {
        if shown.get(cluster) == Some(state) {
            continue;
        }
        let (status, reason, message) = match state {
            Health::Reachable => ("True", "Reachable", "the API server answered".to_owned()),
            Health::Unreachable(error) => ("False", "Unreachable", error.clone()),
        };
        let condition = Condition {
            type_: "Ready".to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.chars().take(1024).collect(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        };
        let patch = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "MemberCluster",
            "status": {"conditions": [condition]},
        });
        match api
            .patch_status(
                cluster,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                shown.insert(cluster.clone(), state.clone());
            }
            Err(error) => tracing::warn!(%cluster, %error, "MemberCluster status write failed"),
        }
    }
}
