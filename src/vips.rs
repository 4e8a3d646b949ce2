//! The VIP allocator task: runs the pure allocation on every snapshot, keeps the table where a
//! restart finds it, and hands the result to the index owner (which publishes it like any
//! other input, for status, DNS and member Services).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::core::vip::{allocate, VipError, VipTable};
use crate::index::Snapshot;

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
    let mut table = store.load()?;
    let mut sent: Option<VipUpdate> = None;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.generation > 0 {
            let previous = table.clone();
            let (next, errors) =
                tokio::task::spawn_blocking(move || allocate(&snapshot.model, &previous)).await?;
            if next != table {
                // Persisted before anyone sees it: an address is never shown, then lost.
                store.save(&next)?;
                tracing::info!(vips = next.len(), "VIP table updated");
                table = next;
            }
            let update = VipUpdate {
                table: table.clone(),
                errors,
            };
            if sent.as_ref() != Some(&update) {
                for error in &update.errors {
                    tracing::warn!(%error, "VIP not allocated");
                }
                if sink.send(T::from(update.clone())).await.is_err() {
                    return Ok(());
                }
                sent = Some(update);
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
            _ = stopped.changed() => return Ok(()),
        }
    }
}
