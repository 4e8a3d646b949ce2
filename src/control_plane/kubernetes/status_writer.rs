//! The one task that writes AccessPoint status, and only while this replica holds the lease.
//!
//! It recomputes every AccessPoint's status ([`crate::core::status`]) whenever the index
//! publishes or a gateway's acknowledgement state changes, and writes only what differs from
//! what the object already shows, with server-side apply under one field manager. It watches
//! what the objects show, too ([`super::status_drift`]): a status someone else wrote (say
//! `Ready=True` patched by hand) is overwritten with the computed one at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::api::rollout::RolloutStatus;
use crate::api::FIELD_MANAGER;
use crate::api::{AccessPoint, AccessPointStatus};
use crate::control_plane::fleet_acks::FleetAcks;
use crate::control_plane::kubernetes::status_drift::Drift;
use crate::control_plane::xds::server::XdsState;
use crate::core::model::ObjectKey;
use crate::core::observed::GatewayAck;
use crate::core::refs::ClusterRefs;
use crate::core::status::{access_point_keys, access_point_status, MemberWrites, StatusInput};

/// Bursts of ACKs during a rollout become one round of writes.
const SETTLE: Duration = Duration::from_millis(100);
/// Failed writes are retried this often.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// What AccessPoint status is computed from, besides the snapshot.
pub struct Inputs {
    pub acks: FleetAcks,
    pub member_writes: watch::Receiver<MemberWrites>,
    /// Staged rollouts' statuses (from the rollout task).
    pub rollouts: watch::Receiver<BTreeMap<ObjectKey, RolloutStatus>>,
}

pub async fn run(
    client: Client,
    xds: Arc<XdsState>,
    inputs: Inputs,
    mut leading: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let Inputs {
        mut acks,
        mut member_writes,
        mut rollouts,
    } = inputs;
    let all: Api<AccessPoint> = Api::all(client.clone());
    let mut snapshots = xds.snapshots.clone();
    loop {
        if !until_leading(&mut leading, &mut stopped).await {
            return;
        }
        tracing::info!("leading: writing AccessPoint status");
        let mut shown = match shown_statuses(&all, |ap| ap.status).await {
            Ok(shown) => shown,
            Err(error) => {
                tracing::warn!(%error, "listing AccessPoints failed; retrying");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        let mut drift = Drift::watch(all.clone());
        loop {
            let current = acks.current();
            let writes = member_writes.borrow_and_update().clone();
            let rollout_statuses = rollouts.borrow_and_update().clone();
            let round = Round {
                acks: &current,
                member_writes: &writes,
                rollouts: &rollout_statuses,
            };
            let failures = write_round(&client, &xds, round, &mut shown, &mut drift).await;
            let retry = async {
                if failures > 0 {
                    tokio::time::sleep(RETRY_EVERY).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = snapshots.changed() => {}
                _ = acks.changed() => {}
                _ = member_writes.changed() => {}
                _ = rollouts.changed() => {}
                _ = retry => {}
                _ = drift.foreign(&mut shown, |ap: AccessPoint| ap.status) => {}
                _ = leading.changed() => break,
                _ = stopped.changed() => return,
            }
            tokio::time::sleep(SETTLE).await;
        }
    }
}

/// Waits until this replica holds the lease; false when stopping instead.
pub(crate) async fn until_leading(
    leading: &mut watch::Receiver<bool>,
    stopped: &mut watch::Receiver<bool>,
) -> bool {
    while !*leading.borrow_and_update() {
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { return false },
            _ = stopped.changed() => return false,
        }
    }
    true
}

/// The status every object of `api` shows now, by key.
pub(crate) async fn shown_statuses<K, S>(
    api: &Api<K>,
    status: impl Fn(K) -> Option<S>,
) -> Result<BTreeMap<ObjectKey, S>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|object| {
            let meta = object.meta();
            let key = ObjectKey::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            status(object).map(|s| (key, s))
        })
        .collect())
}

/// Writes one object's status by server-side apply under Meridian's field manager; returns
/// the object as the API server stored it.
pub(crate) async fn apply_status<K>(
    client: &Client,
    key: &ObjectKey,
    status: &impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &key.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
}

/// The inputs of one round of writes.
struct Round<'a> {
    acks: &'a [GatewayAck],
    member_writes: &'a MemberWrites,
    rollouts: &'a BTreeMap<ObjectKey, RolloutStatus>,
}

/// Writes every status that changed; returns how many writes failed.
async fn write_round(
    client: &Client,
    xds: &XdsState,
    round: Round<'_>,
    shown: &mut BTreeMap<ObjectKey, AccessPointStatus>,
    drift: &mut Drift<AccessPoint>,
) -> usize {
    let snapshot = xds.snapshots.borrow().clone();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let keys = access_point_keys(snapshot.published());
    let current: BTreeSet<&ObjectKey> = keys.iter().collect();
    shown.retain(|key, _| current.contains(key));
    let clusters = ClusterRefs::all(&snapshot.model);
    let mut failures = 0;
    for key in &keys {
        let input = StatusInput {
            key,
            published: snapshot.published(),
            clusters: &clusters,
            proxies: round.acks,
            member_writes: round.member_writes,
            rollout: round.rollouts.get(key),
        };
        let desired = access_point_status(&input, shown.get(key), &now);
        if shown.get(key) == Some(&desired) {
            continue;
        }
        match apply_status::<AccessPoint>(client, key, &desired).await {
            Ok(stored) => {
                tracing::debug!(access_point = %key, "status written");
                drift.record(key, &stored);
                shown.insert(key.clone(), desired);
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                tracing::warn!(access_point = %key, %error, "status write failed");
                failures += 1;
            }
        }
    }
    failures
}
