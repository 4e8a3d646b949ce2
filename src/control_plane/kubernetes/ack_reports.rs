//! Acknowledgement reports: how the leader learns what gateways connected to *other* replicas
//! have acknowledged, so `Programmed` covers every proxy however the Service spread them.
//!
//! Every replica publishes what its own proxies acknowledged in a ConfigMap
//! (`meridian-acks-<identity>`, labelled `meridian.dev/ack-report`) in Meridian's namespace,
//! rewritten when it changes and at least every [`HEARTBEAT`]. The leader watches those
//! ConfigMaps and ignores reports not refreshed within [`STALE_AFTER`] (a crashed replica's
//! proxies reconnect elsewhere and are reported there). This is how istiod distributes status
//! reports between replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch;

use crate::api::FIELD_MANAGER;
use crate::control_plane::fleet_acks::{Report, HEARTBEAT};
use crate::control_plane::xds::server::XdsState;
use crate::core::rollout::fleet::watched_hosts;
use crate::core::rollout::health::upstream_host;

pub const REPORT_LABEL: &str = "meridian.dev/ack-report";
/// Gzipped JSON under `binaryData` (a ConfigMap holds 1 MiB).
const REPORT_KEY: &str = "report.json.gz";
/// Plain JSON under `data`, as replicas before the gzipped form wrote it (read, never written).
const LEGACY_REPORT_KEY: &str = "report.json";

fn config_map_name(identity: &str) -> String {
    report_name("meridian-acks", identity)
}

/// `<prefix>-<identity>`, the identity made a valid object name.
pub(super) fn report_name(prefix: &str, identity: &str) -> String {
    let safe: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{prefix}-{safe}")
}

/// `value` as gzipped JSON.
pub(super) fn gzip_json<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let json = serde_json::to_vec(value)?;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&json)?;
    gzip.finish()
}

/// Gzipped JSON read back; never inflates past 64 MiB.
pub(super) fn gunzip_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    use std::io::Read;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(64 * 1024 * 1024)
        .read_to_end(&mut json)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Reports past this size (compressed) are not written; the log says so.
pub(super) const MAX_REPORT_BYTES: usize = 900 * 1024;

/// One replica's report in its ConfigMap, gzipped JSON under `binaryData`: rewritten when what
/// it says (`C`, its content apart from the heartbeat) changes and before the heartbeat would
/// let it go stale; deleted when the replica stops.
pub(super) struct ReportConfigMap<C> {
    api: Api<ConfigMap>,
    name: String,
    /// The label every report of this kind carries, and the `binaryData` key.
    label: &'static str,
    key: &'static str,
    /// What the report is, for logs.
    what: &'static str,
    written: Option<(C, tokio::time::Instant)>,
}

impl<C: PartialEq> ReportConfigMap<C> {
    pub(super) fn new(
        api: Api<ConfigMap>,
        name: String,
        (label, key): (&'static str, &'static str),
        what: &'static str,
    ) -> ReportConfigMap<C> {
        ReportConfigMap {
            api,
            name,
            label,
            key,
            what,
            written: None,
        }
    }

    /// Writes `report` unless `content` was written lately.
    pub(super) async fn publish(&mut self, content: C, report: &impl serde::Serialize) {
        let due = self
            .written
            .as_ref()
            .is_none_or(|(last, at)| *last != content || at.elapsed() >= HEARTBEAT.mul_f64(0.8));
        if !due {
            return;
        }
        match self.write(report).await {
            Ok(()) => self.written = Some((content, tokio::time::Instant::now())),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), config_map = %self.name, report = self.what, "writing a replica report failed")
            }
        }
    }

    async fn write(&self, report: &impl serde::Serialize) -> anyhow::Result<()> {
        let body = gzip_json(report)?;
        anyhow::ensure!(
            body.len() <= MAX_REPORT_BYTES,
            "a {}-byte report, over {MAX_REPORT_BYTES}",
            body.len()
        );
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.name, "labels": {self.label: "true"}},
            "binaryData": {self.key: k8s_openapi::ByteString(body)},
        });
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    pub(super) async fn delete(&self) {
        if let Err(error) = self.api.delete(&self.name, &DeleteParams::default()).await {
            tracing::debug!(%error, config_map = %self.name, "deleting a replica report failed");
        }
    }
}

/// Publishes this replica's report until `stopped`, then deletes it.
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
        (REPORT_LABEL, REPORT_KEY),
        "acknowledgements",
    );
    let mut proxies = xds.proxies.subscribe();
    let mut snapshots = xds.snapshots.clone();
    let mut loads = xds.loads.subscribe();
    let mut watched: (u64, BTreeSet<String>) = (0, BTreeSet::new());
    loop {
        let snapshot = xds.snapshots.borrow().clone();
        if watched.0 != snapshot.generation {
            watched = (snapshot.generation, watched_hosts(&snapshot.model));
        }
        let hosts = &watched.1;
        let acks = xds.acks_with_load(&snapshot, |load| {
            upstream_host(&load.upstream).is_some_and(|h| hosts.contains(h))
        });
        let report = Report::of(&identity, Timestamp::now().to_string(), &acks);
        let content = (report.proxies.clone(), report.acked_sets.clone());
        config_map.publish(content, &report).await;
        tokio::select! {
            _ = proxies.changed() => {}
            _ = snapshots.changed() => {}
            // Load only matters while a rollout watches health; at most a write a second.
            _ = loads.changed(), if !watched.1.is_empty() => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stopped.changed() => break,
        }
    }
    config_map.delete().await;
}

/// Watches every replica's report; the map is keyed by replica identity.
pub fn watch_reports(
    client: Client,
    namespace: &str,
    stopped: watch::Receiver<bool>,
) -> watch::Receiver<BTreeMap<String, Report>> {
    watch_labelled(
        client,
        namespace,
        &format!("{REPORT_LABEL}=true"),
        parse,
        stopped,
    )
}

/// Follows the ConfigMaps matching `selector` in `namespace`, each read by `parse` into a
/// (replica, report) pair; unreadable ones are left out.
pub(super) fn watch_labelled<T: Clone + Send + Sync + 'static>(
    client: Client,
    namespace: &str,
    selector: &str,
    parse: fn(&ConfigMap) -> Option<(String, T)>,
    mut stopped: watch::Receiver<bool>,
) -> watch::Receiver<BTreeMap<String, T>> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let (tx, rx) = watch::channel(BTreeMap::new());
    let config = watcher::Config::default().labels(selector);
    let selector = selector.to_owned();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        let mut listing: Option<BTreeMap<String, T>> = None;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = stopped.changed() => return,
            };
            let Some(event) = event else { return };
            match event {
                Ok(Event::Init) => listing = Some(BTreeMap::new()),
                Ok(Event::InitApply(cm)) => {
                    if let (Some(list), Some((replica, report))) = (listing.as_mut(), parse(&cm)) {
                        list.insert(replica, report);
                    }
                }
                Ok(Event::InitDone) => {
                    tx.send_replace(listing.take().unwrap_or_default());
                }
                Ok(Event::Apply(cm)) => {
                    if let Some((replica, report)) = parse(&cm) {
                        tx.send_modify(|reports| {
                            reports.insert(replica, report);
                        });
                    }
                }
                Ok(Event::Delete(cm)) => {
                    if let Some((replica, _)) = parse(&cm) {
                        tx.send_modify(|reports| {
                            reports.remove(&replica);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, %selector, "watching replica reports failed"),
            }
        }
    });
    rx
}

fn parse(cm: &ConfigMap) -> Option<(String, Report)> {
    let gzipped = cm.binary_data.as_ref().and_then(|d| d.get(REPORT_KEY));
    let report = match gzipped {
        Some(bytes) => gunzip_json::<Report>(&bytes.0),
        None => {
            let legacy = cm.data.as_ref()?.get(LEGACY_REPORT_KEY)?;
            serde_json::from_str::<Report>(legacy).ok()
        }
    };
    if report.is_none() {
        tracing::warn!(config_map = ?cm.metadata.name, "unreadable acknowledgement report");
    }
    report.map(|r| (r.replica.clone(), r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::ObjectKey;
    use crate::core::observed::{GatewayAck, UpstreamLoad};

    #[test]
    fn reports_round_trip_and_expire() {
        let ack = GatewayAck {
            node_id: "envoy-1".to_owned(),
            gateway: ObjectKey::new("shop", "public"),
            cluster: "local".to_owned(),
            acked: BTreeMap::from([(ObjectKey::new("shop", "shop"), 3)]).into(),
            nack: None,
            nack_of: None,
            load: vec![UpstreamLoad {
                upstream: "outbound|80||web.shop.svc.cluster.local".to_owned(),
                at_ms: 1_000_000,
                requests: 10,
                errors: 2,
            }],
        };
        let written = Timestamp::from_second(1_000).unwrap();
        let report = Report::of("a", written.to_string(), std::slice::from_ref(&ack));
        let read: Report = gunzip_json(&gzip_json(&report).unwrap()).unwrap();
        let soon = Timestamp::from_second(1_010).unwrap();
        assert_eq!(read.live_acks(soon), vec![ack]);
        let later = Timestamp::from_second(1_015).unwrap();
        assert!(read.live_acks(later).is_empty());
    }

    /// 500 proxies over 10 clusters, each acknowledging 2,000 AccessPoints: each set is written
    /// once, and the report fits a ConfigMap (written per proxy it took about 20 MB).
    #[test]
    fn shared_acknowledged_sets_keep_large_fleets_within_a_config_map() {
        let acks: Vec<GatewayAck> = (0..500)
            .map(|i| {
                let cluster = format!("cluster-{}", i % 10);
                let acked: BTreeMap<ObjectKey, i64> = (0..2_000)
                    .map(|a| {
                        (
                            ObjectKey::new(format!("ns-{}", a % 50), format!("app-{a}")),
                            7,
                        )
                    })
                    .collect();
                GatewayAck {
                    node_id: format!("envoy-{i}"),
                    gateway: ObjectKey::new("edge", "public"),
                    cluster,
                    acked: acked.into(),
                    nack: None,
                    nack_of: None,
                    load: Vec::new(),
                }
            })
            .collect();
        let now = Timestamp::now();
        let report = Report::of("a", now.to_string(), &acks);
        assert_eq!(report.acked_sets.len(), 1, "identical sets are shared");
        let bytes = gzip_json(&report).unwrap();
        assert!(bytes.len() <= MAX_REPORT_BYTES, "{} bytes", bytes.len());
        let read: Report = gunzip_json(&bytes).unwrap();
        assert_eq!(read.live_acks(now), acks);
    }

    #[test]
    fn config_map_names_are_valid_for_any_identity() {
        assert_eq!(config_map_name("Pod_7:x"), "meridian-acks-pod-7-x");
    }
}
