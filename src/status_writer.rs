//! The one task that writes AccessPoint status, and only while this replica holds the lease.
//!
//! It recomputes every AccessPoint's status ([`crate::core::status`]) whenever the index
//! publishes or a gateway's acknowledgement state changes, and writes only what differs from
//! what the object already shows, with server-side apply under one field manager.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use tokio::sync::watch;

use crate::api::{AccessPoint, AccessPointStatus, API_VERSION};
use crate::core::model::ObjectKey;
use crate::core::refs::ClusterRefs;
use crate::core::status::{
    access_point_keys, access_point_status, GatewayAck, MemberWrites, StatusInput,
};
use crate::fleet_acks::FleetAcks;
use crate::xds::server::XdsState;

/// The field manager of every write Meridian makes.
pub const FIELD_MANAGER: &str = "meridian";
/// Bursts of ACKs during a rollout become one round of writes.
const SETTLE: Duration = Duration::from_millis(100);
/// Failed writes are retried this often.
const RETRY_EVERY: Duration = Duration::from_secs(5);

pub async fn run(
    client: Client,
    xds: Arc<XdsState>,
    mut acks: FleetAcks,
    mut member_writes: watch::Receiver<MemberWrites>,
    mut leading: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let all: Api<AccessPoint> = Api::all(client.clone());
    let mut snapshots = xds.snapshots.clone();
    loop {
        // Follow until elected.
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                _ = stopped.changed() => return,
            }
        }
        tracing::info!("leading: writing AccessPoint status");
        let mut shown = match current_statuses(&all).await {
            Ok(shown) => shown,
            Err(error) => {
                tracing::warn!(%error, "listing AccessPoints failed; retrying");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        loop {
            let current = acks.current();
            let writes = member_writes.borrow_and_update().clone();
            let failures = write_round(&client, &xds, &current, &writes, &mut shown).await;
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
                _ = retry => {}
                _ = leading.changed() => break,
                _ = stopped.changed() => return,
            }
            tokio::time::sleep(SETTLE).await;
        }
    }
}

async fn current_statuses(
    api: &Api<AccessPoint>,
) -> Result<BTreeMap<ObjectKey, AccessPointStatus>, kube::Error> {
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|ap| {
            let key = ObjectKey::new(
                ap.metadata.namespace.clone().unwrap_or_default(),
                ap.metadata.name.clone().unwrap_or_default(),
            );
            ap.status.map(|s| (key, s))
        })
        .collect())
}

/// Writes every status that changed; returns how many writes failed.
async fn write_round(
    client: &Client,
    xds: &XdsState,
    acks: &[GatewayAck],
    member_writes: &MemberWrites,
    shown: &mut BTreeMap<ObjectKey, AccessPointStatus>,
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
            proxies: acks,
            member_writes,
        };
        let desired = access_point_status(&input, shown.get(key), &now);
        if shown.get(key) == Some(&desired) {
            continue;
        }
        match apply_status(client, key, &desired).await {
            Ok(()) => {
                tracing::debug!(access_point = %key, "status written");
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

/// This replica's proxies, then those other replicas report (a proxy that moved between
/// replicas counts once, as the fresher replica sees it).
async fn apply_status(
    client: &Client,
    key: &ObjectKey,
    status: &AccessPointStatus,
) -> Result<(), kube::Error> {
    let api: Api<AccessPoint> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "AccessPoint",
        "status": status,
    });
    api.patch_status(
        &key.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
