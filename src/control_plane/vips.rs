//! The VIP allocator task: runs the pure allocation on every snapshot, keeps the table where a
//! restart finds it, and hands the result to the index owner (which publishes it like any
//! other input, for status, DNS and member Services).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::control_plane::index::Snapshot;
use crate::core::model::vip::{VipError, VipTable};
use crate::core::vip_allocation::allocate;
use crate::runtime::log_budget::LogBudget;
use std::time::Duration;

/// An allocation result, as the index receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct VipUpdate {
    pub table: VipTable,
    pub errors: Vec<VipError>,
}

/// Where the table lives between runs.
#[derive(Clone, Debug)]
pub enum VipStore {
    /// A JSON file (standalone: `<state-dir>/vips.json`).
    File(PathBuf),
    /// Nowhere: allocation is recomputed in AccessPoint age order after a restart.
    Memory,
}

impl VipStore {
    pub fn load(&self) -> anyhow::Result<VipTable> {
        match self {
            VipStore::Memory => Ok(VipTable::default()),
            VipStore::File(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading VIP table {}", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VipTable::default()),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
            },
        }
    }

    /// Writes atomically (a crash leaves the old table or the new one, never half of one).
    fn save(&self, table: &VipTable) -> anyhow::Result<()> {
        let VipStore::File(path) = self else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(table)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Allocates on every snapshot until `stopped`, sending changes to `sink`.
pub async fn run<T: From<VipUpdate> + Send + 'static>(
    store: VipStore,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    sink: mpsc::Sender<T>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    static UNSAVED: LogBudget = LogBudget::new(1, Duration::from_secs(30));
    let mut table = store.load()?;
    let mut sent: Option<VipUpdate> = None;
    let mut retry_at = None;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.generation > 0 {
            let previous = table.clone();
            let (next, errors) =
                tokio::task::spawn_blocking(move || allocate(&snapshot.model, &previous)).await?;
            retry_at = None;
            if next != table {
                // Persisted before anyone sees it: an address is never shown, then lost. If
                // it cannot be saved, the table in force stays, and saving is retried.
                match store.save(&next) {
                    Ok(()) => {
                        tracing::info!(vips = next.len(), "VIP table updated");
                        table = next;
                    }
                    Err(error) => {
                        if let Some(suppressed) = UNSAVED.allow() {
                            tracing::error!(error = %format!("{error:#}"), suppressed, "cannot save the VIP table; addresses stay as they were until it can be saved, retrying");
                        }
                        retry_at = Some(tokio::time::Instant::now() + RETRY_SAVE);
                    }
                }
            }
            let update = VipUpdate {
                table: table.clone(),
                errors,
            };
            if !send(&sink, &mut sent, update).await {
                return Ok(());
            }
        }
        let retry = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now));
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
            _ = stopped.changed() => return Ok(()),
            _ = retry, if retry_at.is_some() => {}
        }
    }
}

/// How soon a VIP table that could not be saved is tried again.
const RETRY_SAVE: Duration = Duration::from_secs(2);

/// Name of the ConfigMap (in Meridian's namespace) holding the VIP table in Kubernetes mode.
pub const VIP_CONFIG_MAP: &str = "meridian-vips";
const VIP_KEY: &str = "vips.json";
/// How often a standby re-reads the leader's table.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

type ConfigMaps = kube::Api<k8s_openapi::api::core::v1::ConfigMap>;

/// Kubernetes mode: the lease holder allocates and keeps the table in a ConfigMap; the other
/// replicas serve the table it wrote, so every replica answers with the same VIPs.
pub async fn run_kube<T: From<VipUpdate> + Send + 'static>(
    client: kube::Client,
    namespace: String,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    sink: mpsc::Sender<T>,
    mut leading: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let api = ConfigMaps::namespaced(client, &namespace);
    let mut table: Option<VipTable> = None;
    let mut sent: Option<VipUpdate> = None;
    loop {
        let is_leader = *leading.borrow_and_update();
        // A standby follows the leader's table; a new leader starts from it.
        if table.is_none() || !is_leader {
            match load_config_map(&api).await {
                Ok(loaded) => table = Some(loaded),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "cannot read the VIP table; retrying")
                }
            }
        }
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(current) = table.clone() {
            let update = if is_leader && snapshot.generation > 0 {
                let (next, errors) =
                    tokio::task::spawn_blocking(move || allocate(&snapshot.model, &current))
                        .await?;
                if Some(&next) != table.as_ref() {
                    // Persisted before anyone sees it.
                    match save_config_map(&api, &namespace, &next).await {
                        Ok(()) => table = Some(next),
                        Err(error) => {
                            tracing::warn!(error = %format!("{error:#}"), "cannot write the VIP table; retrying")
                        }
                    }
                }
                VipUpdate {
                    table: table.clone().unwrap_or_default(),
                    errors,
                }
            } else {
                VipUpdate {
                    table: current,
                    errors: Vec::new(),
                }
            };
            if !send(&sink, &mut sent, update).await {
                return Ok(());
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
            _ = leading.changed() => table = None,
            _ = tokio::time::sleep(FOLLOW_EVERY), if !is_leader => {}
            _ = stopped.changed() => return Ok(()),
        }
    }
}

async fn load_config_map(api: &ConfigMaps) -> anyhow::Result<VipTable> {
    let map = api.get_opt(VIP_CONFIG_MAP).await?;
    match map.and_then(|m| m.data).and_then(|mut d| d.remove(VIP_KEY)) {
        Some(text) => Ok(serde_json::from_str(&text)
            .with_context(|| format!("ConfigMap {VIP_CONFIG_MAP}: data[{VIP_KEY:?}]"))?),
        None => Ok(VipTable::default()),
    }
}

async fn save_config_map(
    api: &ConfigMaps,
    namespace: &str,
    table: &VipTable,
) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": VIP_CONFIG_MAP, "namespace": namespace },
        "data": { VIP_KEY: serde_json::to_string(table)? },
    });
    api.patch(
        VIP_CONFIG_MAP,
        &PatchParams::apply(crate::api::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Sends `update` unless it repeats the last one; false once the receiver is gone.
async fn send<T: From<VipUpdate>>(
    sink: &mpsc::Sender<T>,
    last: &mut Option<VipUpdate>,
    update: VipUpdate,
) -> bool {
    if last.as_ref() == Some(&update) {
        return true;
    }
    for error in &update.errors {
        tracing::warn!(%error, "VIP not allocated");
    }
    if sink.send(T::from(update.clone())).await.is_err() {
        return false;
    }
    *last = Some(update);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::index::Index;
    use crate::core::manifest::parse_documents;

    const FLEET: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east}
spec: {zone: east-1, vipPools: [{name: main, cidrs: ["192.0.2.0/24"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: web, namespace: shop}
spec:
  placement: {clusters: [east]}
  template: {}
"#;

    /// A state dir that cannot be written (the temporary file's name is a directory) does not
    /// stop the task: nothing new is shown until the table is saved, then it is.
    #[tokio::test]
    async fn a_table_that_cannot_be_saved_waits_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vips.json");
        let blocker = path.with_extension("json.tmp");
        std::fs::create_dir(&blocker).unwrap();
        let (mut index, snapshots) = Index::new();
        for object in parse_documents(FLEET, "shop").unwrap() {
            index.apply(object).unwrap();
        }
        index.publish();
        let (tx, mut rx) = mpsc::channel::<VipUpdate>(4);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(VipStore::File(path.clone()), snapshots, tx, stopped));

        let first = rx.recv().await.unwrap();
        assert!(first.table.is_empty(), "unsaved, so not shown: {first:?}");
        assert!(!task.is_finished(), "the task goes on");
        std::fs::remove_dir(&blocker).unwrap();
        let saved = tokio::time::timeout(RETRY_SAVE * 3, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(saved.table.len(), 1);
        assert_eq!(VipStore::File(path).load().unwrap(), saved.table);
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
}
