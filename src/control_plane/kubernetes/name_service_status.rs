//! Writes NameService status while this replica holds the lease: what the embedded DNS server
//! answers and what each RFC 2136 server was given ([`crate::core::dns::status`]). The leader
//! is the replica that sends RFC 2136 updates, so it knows how each server is doing. A status
//! anyone else writes is overwritten at once ([`super::status_drift`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::Client;
use tokio::sync::watch;

use crate::api::name_service::NameServiceStatus;
use crate::api::NameService;
use crate::control_plane::index::Snapshot;
use crate::control_plane::kubernetes::status_drift::Drift;
use crate::control_plane::kubernetes::status_writer::{
    apply_status, shown_statuses, until_leading,
};
use crate::core::dns::status::{name_service_status, DnsPublication};
use crate::core::model::ObjectKey;

/// Bursts of changes become one round of writes.
const SETTLE: Duration = Duration::from_millis(100);
const RETRY_EVERY: Duration = Duration::from_secs(5);

pub async fn run(
    client: Client,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut published: watch::Receiver<DnsPublication>,
    mut leading: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let all: Api<NameService> = Api::all(client.clone());
    loop {
        if !until_leading(&mut leading, &mut stopped).await {
            return;
        }
        let mut shown = match shown_statuses(&all, |ns| ns.status).await {
            Ok(shown) => shown,
            Err(error) => {
                tracing::warn!(%error, "listing NameServices failed; retrying");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        };
        let mut drift = Drift::watch(all.clone());
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let publication = published.borrow_and_update().clone();
            let failures =
                write_round(&client, &snapshot, &publication, &mut shown, &mut drift).await;
            let retry = async {
                if failures > 0 {
                    tokio::time::sleep(RETRY_EVERY).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = snapshots.changed() => {}
                _ = published.changed() => {}
                _ = retry => {}
                _ = drift.foreign(&mut shown, |ns: NameService| ns.status) => {}
                _ = leading.changed() => break,
                _ = stopped.changed() => return,
            }
            tokio::time::sleep(SETTLE).await;
        }
    }
}

/// Writes every status that changed; returns how many writes failed.
async fn write_round(
    client: &Client,
    snapshot: &Snapshot,
    publication: &DnsPublication,
    shown: &mut BTreeMap<ObjectKey, NameServiceStatus>,
    drift: &mut Drift<NameService>,
) -> usize {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let services = &snapshot.model.name_services;
    shown.retain(|key, _| services.contains_key(key));
    let mut failures = 0;
    for (key, service) in services {
        let desired = name_service_status(publication, key, service, shown.get(key), &now);
        if shown.get(key) == Some(&desired) {
            continue;
        }
        match apply_status::<NameService>(client, key, &desired).await {
            Ok(stored) => {
                drift.record(key, &stored);
                shown.insert(key.clone(), desired);
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                tracing::warn!(name_service = %key, %error, "status write failed");
                failures += 1;
            }
        }
    }
    failures
}
