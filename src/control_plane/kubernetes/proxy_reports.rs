//! Proxy-status reports: what each replica's proxies hold, shared between replicas so that
//! `meridian status` and `config-dump` on any replica cover the whole fleet, as `istioctl
//! proxy-status` covers every istiod.
//!
//! Every replica publishes its proxies (node, gateway, mode, per-type sync state) in ConfigMap
//! `meridian-proxies-<identity>` (label `meridian.dev/proxy-report`), gzipped JSON under
//! `binaryData`, rewritten when they change (at most every second) and at least every
//! [`HEARTBEAT`]; and follows the others', leaving out those not refreshed within
//! [`STALE_AFTER`] (a crashed replica's proxies reconnect elsewhere and are reported there).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ack_reports::{gunzip_json, report_name, watch_labelled, ReportConfigMap};
#[cfg(test)]
use super::ack_reports::{gzip_json, MAX_REPORT_BYTES};
use crate::control_plane::fleet_acks::{HEARTBEAT, STALE_AFTER};
use crate::control_plane::xds::server::{PeerProxies, ProxyInfo, XdsState};

pub const LABEL: &str = "meridian.dev/proxy-report";
const KEY: &str = "proxies.json.gz";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ProxyReport {
    replica: String,
    /// RFC 3339 time of the last write.
    heartbeat: String,
    proxies: Vec<ProxyInfo>,
}

fn config_map_name(identity: &str) -> String {
    report_name("meridian-proxies", identity)
}

fn decode(bytes: &[u8]) -> Option<ProxyReport> {
    gunzip_json(bytes)
}

/// Publishes this replica's proxies until `stopped`, then deletes its report.
pub async fn publish(
    client: Client,
    namespace: String,
    identity: String,
    xds: Arc<XdsState>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut config_map = ReportConfigMap::new(
        Api::namespaced(client, &namespace),
        config_map_name(&identity),
        (LABEL, KEY),
        "proxy status",
    );
    let mut changes = xds.proxies.subscribe();
    loop {
        let mut proxies = xds.proxies.list();
        proxies.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        // Polling proxies' "last poll … ago" moves on every read; what matters is the rest.
        let content: Vec<ProxyInfo> = proxies
            .iter()
            .cloned()
            .map(|mut p| {
                if let Some(polling) = &mut p.polling {
                    polling.last_poll_ms_ago = 0;
                }
                p
            })
            .collect();
        let report = ProxyReport {
            replica: identity.clone(),
            heartbeat: Timestamp::now().to_string(),
            proxies,
        };
        config_map.publish(content, &report).await;
        tokio::select! {
            _ = changes.changed() => tokio::time::sleep(Duration::from_secs(1)).await,
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stopped.changed() => break,
        }
    }
    config_map.delete().await;
}

fn parse(cm: &ConfigMap) -> Option<(String, ProxyReport)> {
    let bytes = cm.binary_data.as_ref()?.get(KEY)?;
    match decode(&bytes.0) {
        Some(report) => Some((report.replica.clone(), report)),
        None => {
            tracing::warn!(config_map = ?cm.metadata.name, "unreadable proxy-status report");
            None
        }
    }
}

/// Follows every replica's report into `xds.peers`, fresh ones only, until `stopped`.
pub async fn follow(
    client: Client,
    namespace: String,
    xds: Arc<XdsState>,
    mut stopped: watch::Receiver<bool>,
) {
    let selector = format!("{LABEL}=true");
    let mut reports = watch_labelled(client, &namespace, &selector, parse, stopped.clone());
    loop {
        let now = Timestamp::now();
        let fresh: PeerProxies = reports
            .borrow_and_update()
            .iter()
            .filter(|(_, report)| is_fresh(report, now))
            .map(|(replica, report)| (replica.clone(), report.proxies.clone()))
            .collect();
        xds.peers.send_if_modified(|peers| {
            let changed = *peers != fresh;
            *peers = fresh;
            changed
        });
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stopped.changed() => return,
        }
    }
}

fn is_fresh(report: &ProxyReport, now: Timestamp) -> bool {
    report
        .heartbeat
        .parse::<Timestamp>()
        .ok()
        .and_then(|at| now.duration_since(at).try_into().ok())
        .is_some_and(|age: Duration| age < STALE_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::xds::status::{SyncState, TypeStatus};
    use crate::core::translate::{NodeRole, XdsTransport};

    fn proxy(i: usize) -> ProxyInfo {
        ProxyInfo {
            node_id: format!("gw-{i}"),
            gateway: "shop/public".into(),
            cluster: "local".into(),
            zone: "z1".into(),
            role: NodeRole::Gateway,
            mode: "sotw".into(),
            generation: 7,
            synced_generation: Some(7),
            types: ["CDS", "EDS", "LDS", "RDS"]
                .iter()
                .map(|kind| TypeStatus {
                    kind: kind.to_string(),
                    state: SyncState::Synced,
                    sent_version: Some("0123456789abcdef".into()),
                    sent_nonce: Some("3".into()),
                    acked_version: Some("0123456789abcdef".into()),
                    resources: 12,
                    last_nack: None,
                })
                .collect(),
            xds: XdsTransport::Ads,
            polling: None,
        }
    }

    #[test]
    fn reports_round_trip_compressed_and_expire() {
        let report = ProxyReport {
            replica: "replica-b".into(),
            heartbeat: Timestamp::now().to_string(),
            proxies: (0..5_000).map(proxy).collect(),
        };
        let bytes = gzip_json(&report).unwrap();
        assert!(
            bytes.len() <= MAX_REPORT_BYTES,
            "5,000 proxies in {} bytes",
            bytes.len()
        );
        assert_eq!(decode(&bytes), Some(report.clone()));
        assert!(is_fresh(&report, Timestamp::now()));
        let later = Timestamp::now() + STALE_AFTER + Duration::from_secs(1);
        assert!(!is_fresh(&report, later));
        assert_eq!(decode(b"not gzip"), None);
    }
}
