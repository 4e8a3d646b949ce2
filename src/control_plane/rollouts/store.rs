//! Where rollouts and the quarantine's holds live between runs: a file in the state directory
//! (standalone) or a ConfigMap the leader writes and the other replicas follow (Kubernetes).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use crate::api::rollout::RolloutControls;
use crate::core::model::revision::Pins;
use crate::core::model::ObjectKey;
use crate::core::quarantine::{self, QuarantineRecord, QuarantineRecords};
use crate::core::rollout::fleet::{pins_of, Records, RolloutRecord};

/// Rollout state plus operator controls, and the quarantine's holds, by AccessPoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stored {
    pub records: Records,
    pub controls: BTreeMap<ObjectKey, RolloutControls>,
    pub quarantine: QuarantineRecords,
}

impl Stored {
    /// What a replica serves from the store alone: the rollouts' assignments and the holds.
    pub fn pins(&self) -> Pins {
        let mut pins = pins_of(&self.records);
        pins.extend(quarantine::pins(&self.quarantine));
        pins
    }
}

/// The file form: keys as `namespace/name`.
#[derive(Default, Serialize, Deserialize)]
struct StoredFile {
    #[serde(default)]
    records: BTreeMap<String, RolloutRecord>,
    #[serde(default)]
    controls: BTreeMap<String, RolloutControls>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    quarantine: BTreeMap<String, QuarantineRecord>,
}

fn parse_key(text: &str) -> ObjectKey {
    match text.split_once('/') {
        Some((namespace, name)) => ObjectKey::new(namespace, name),
        None => ObjectKey::new("", text),
    }
}

/// Name of the ConfigMap (in Meridian's namespace) holding rollouts in Kubernetes mode.
pub const ROLLOUT_CONFIG_MAP: &str = "meridian-rollouts";

/// Where rollouts live between runs.
#[derive(Clone)]
pub enum RolloutStore {
    /// Standalone: `<state-dir>/rollouts.json`, controls included.
    File(PathBuf),
    /// Kubernetes: ConfigMap `meridian-rollouts`, one key per AccessPoint (`namespace.name`).
    /// Controls live on the AccessPoints' status instead.
    ConfigMap(Box<Api<ConfigMap>>),
    /// Nowhere: a restart starts every rollout afresh from the current spec.
    Memory,
}

impl RolloutStore {
    pub async fn load(&self) -> anyhow::Result<Stored> {
        match self {
            RolloutStore::Memory => Ok(Stored::default()),
            RolloutStore::File(path) => load_file(path),
            RolloutStore::ConfigMap(api) => load_config_map(api).await,
        }
    }

    /// Writes atomically: a crash leaves the old state or the new one.
    pub async fn save(&self, stored: &Stored) -> anyhow::Result<()> {
        match self {
            RolloutStore::Memory => Ok(()),
            RolloutStore::File(path) => save_file(path, stored),
            RolloutStore::ConfigMap(api) => save_config_map(api, stored).await,
        }
    }
}

fn load_file(path: &std::path::Path) -> anyhow::Result<Stored> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: StoredFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("reading rollouts {}", path.display()))?;
    Ok(Stored {
        records: file
            .records
            .into_iter()
            .map(|(k, v)| (parse_key(&k), v))
            .collect(),
        controls: file
            .controls
            .into_iter()
            .map(|(k, v)| (parse_key(&k), v))
            .collect(),
        quarantine: file
            .quarantine
            .into_iter()
            .map(|(k, v)| (parse_key(&k), v))
            .collect(),
    })
}

fn save_file(path: &std::path::Path, stored: &Stored) -> anyhow::Result<()> {
    let file = StoredFile {
        records: stored
            .records
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        controls: stored
            .controls
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        quarantine: stored
            .quarantine
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// ConfigMap keys allow `[-._a-zA-Z0-9]`. A namespace is a DNS label (no dots) and comes
/// first, so the first dot separates it from the name, which may contain dots.
fn config_map_key(key: &ObjectKey) -> String {
    format!("{}.{}", key.namespace, key.name)
}

/// Keys of the quarantine's holds: an underscore, which no namespace starts with, first.
const QUARANTINE_PREFIX: &str = "_quarantine.";

async fn load_config_map(api: &Api<ConfigMap>) -> anyhow::Result<Stored> {
    let map = api.get_opt(ROLLOUT_CONFIG_MAP).await?;
    let mut records = Records::new();
    let mut quarantine = QuarantineRecords::new();
    for (name, text) in map.and_then(|m| m.data).unwrap_or_default() {
        if let Some(held) = name.strip_prefix(QUARANTINE_PREFIX) {
            let Some((namespace, ap)) = held.split_once('.') else {
                continue;
            };
            let record: QuarantineRecord = serde_json::from_str(&text)
                .with_context(|| format!("ConfigMap {ROLLOUT_CONFIG_MAP}: data[{name:?}]"))?;
            quarantine.insert(ObjectKey::new(namespace, ap), record);
            continue;
        }
        let Some((namespace, ap)) = name.split_once('.') else {
            continue;
        };
        let record: RolloutRecord = serde_json::from_str(&text)
            .with_context(|| format!("ConfigMap {ROLLOUT_CONFIG_MAP}: data[{name:?}]"))?;
        records.insert(ObjectKey::new(namespace, ap), record);
    }
    Ok(Stored {
        records,
        controls: BTreeMap::new(),
        quarantine,
    })
}

async fn save_config_map(api: &Api<ConfigMap>, stored: &Stored) -> anyhow::Result<()> {
    let mut data = BTreeMap::new();
    for (key, record) in &stored.records {
        data.insert(config_map_key(key), serde_json::to_string(record)?);
    }
    for (key, record) in &stored.quarantine {
        let name = format!("{QUARANTINE_PREFIX}{}", config_map_key(key));
        data.insert(name, serde_json::to_string(record)?);
    }
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": ROLLOUT_CONFIG_MAP },
        "data": data,
    });
    // Server-side apply of the whole map: keys Meridian no longer sends are removed.
    api.patch(
        ROLLOUT_CONFIG_MAP,
        &PatchParams::apply(crate::api::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}
