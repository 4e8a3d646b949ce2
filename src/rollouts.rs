//! The rollout task: runs the pure rollout round whenever the config, a proxy's
//! acknowledgements or the time move, persists what a restart must find, then hands the
//! per-cluster revisions to the index owner. Operators' commands (approve, pause, resume, undo)
//! arrive over a channel from the admin API and are persisted with the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::rollout::{RolloutControls, RolloutStatus};
use crate::core::model::ObjectKey;
use crate::core::rollout::fleet::{apply_command, round, Command, Records, RolloutRecord};
use crate::core::rollout::revision::Pins;
use crate::fleet_acks::FleetAcks;
use crate::index::Snapshot;

/// How often rollouts advance without other news (soak times and deadlines).
const TICK: Duration = Duration::from_secs(1);

/// Which revision each cluster is served, as the index receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct PinUpdate(pub Pins);

/// Rollout state plus operator controls, by AccessPoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stored {
    pub records: Records,
    pub controls: BTreeMap<ObjectKey, RolloutControls>,
}

/// The file form: keys as `namespace/name`.
#[derive(Default, Serialize, Deserialize)]
struct StoredFile {
    #[serde(default)]
    records: BTreeMap<String, RolloutRecord>,
    #[serde(default)]
    controls: BTreeMap<String, RolloutControls>,
}

fn parse_key(text: &str) -> ObjectKey {
    match text.split_once('/') {
        Some((namespace, name)) => ObjectKey::new(namespace, name),
        None => ObjectKey::new("", text),
    }
}

/// Where rollouts live between runs.
#[derive(Clone, Debug)]
pub enum RolloutStore {
    /// Standalone: `<state-dir>/rollouts.json`.
    File(PathBuf),
    /// Nowhere: a restart starts every rollout afresh from the current spec.
    Memory,
}

impl RolloutStore {
    pub fn load(&self) -> anyhow::Result<Stored> {
        let RolloutStore::File(path) = self else {
            return Ok(Stored::default());
        };
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
        })
    }

    /// Writes atomically: a crash leaves the old state or the new one.
    fn save(&self, stored: &Stored) -> anyhow::Result<()> {
        let RolloutStore::File(path) = self else {
            return Ok(());
        };
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
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }
}

/// An operator's command and where its outcome goes.
pub struct Request {
    pub key: ObjectKey,
    pub command: Command,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// What the admin API shares with the task: statuses out, commands in.
pub struct RolloutChannel {
    pub statuses: watch::Sender<BTreeMap<ObjectKey, RolloutStatus>>,
    commands: mpsc::Sender<Request>,
    receiver: Mutex<Option<mpsc::Receiver<Request>>>,
}

impl Default for RolloutChannel {
    fn default() -> RolloutChannel {
        let (commands, receiver) = mpsc::channel(16);
        RolloutChannel {
            statuses: watch::Sender::new(BTreeMap::new()),
            commands,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl RolloutChannel {
    /// Sends `command` to the task and waits for it to be recorded.
    pub async fn command(&self, key: ObjectKey, command: Command) -> Result<(), String> {
        let (reply, outcome) = oneshot::channel();
        let request = Request {
            key,
            command,
            reply,
        };
        if self.commands.send(request).await.is_err() {
            return Err("the rollout task is not running".to_owned());
        }
        outcome
            .await
            .unwrap_or_else(|_| Err("the rollout task stopped".to_owned()))
    }

    /// The command receiver, for the one task that serves it.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Request>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// The task's inputs.
pub struct RolloutTask {
    pub store: RolloutStore,
    /// What the store held at start (already served by the index).
    pub stored: Stored,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub acks: FleetAcks,
    pub channel: Arc<RolloutChannel>,
}

impl RolloutTask {
    /// Runs until `stopped`, sending pin changes to `sink`.
    pub async fn run<T: From<PinUpdate> + Send + 'static>(
        mut self,
        sink: mpsc::Sender<T>,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let Some(mut requests) = self.channel.take_receiver() else {
            anyhow::bail!("a rollout task is already running");
        };
        let mut stored = self.stored.clone();
        let mut sent: Option<Pins> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let snapshot = self.snapshots.borrow_and_update().clone();
            if snapshot.generation > 0 {
                let proxies = self.acks.current();
                let round = round(
                    &snapshot.model,
                    &stored.records,
                    &stored.controls,
                    &proxies,
                    now_ms(),
                );
                let mut next = Stored {
                    records: round.records,
                    controls: stored.controls.clone(),
                };
                next.controls
                    .retain(|key, _| snapshot.model.access_points.contains_key(key));
                if next != stored {
                    // Persisted before served: a restart never moves a cluster back or ahead.
                    self.store.save(&next)?;
                    log_transitions(&stored.records, &next.records);
                    stored = next;
                }
                if sent.as_ref() != Some(&round.pins) {
                    if sink
                        .send(T::from(PinUpdate(round.pins.clone())))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                    sent = Some(round.pins);
                }
                let statuses = round
                    .statuses
                    .into_iter()
                    .map(|(key, mut status)| {
                        status.controls = stored.controls.get(&key).cloned();
                        (key, status)
                    })
                    .collect();
                self.channel.statuses.send_replace(statuses);
            }
            tokio::select! {
                changed = self.snapshots.changed() => if changed.is_err() { return Ok(()) },
                _ = self.acks.changed() => {}
                _ = tick.tick() => {}
                Some(request) = requests.recv() => {
                    let outcome = self.record(&snapshot, &mut stored, request.key, request.command);
                    let _ = request.reply.send(outcome);
                }
                _ = stopped.changed() => return Ok(()),
            }
        }
    }

    /// Records a command in the controls and persists them.
    fn record(
        &self,
        snapshot: &Snapshot,
        stored: &mut Stored,
        key: ObjectKey,
        command: Command,
    ) -> Result<(), String> {
        let mut controls = stored.controls.get(&key).cloned().unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        apply_command(
            &snapshot.model,
            &stored.records,
            &mut controls,
            &key,
            command.clone(),
            &now,
        )
        .map_err(|e| e.to_string())?;
        let mut next = stored.clone();
        next.controls.insert(key.clone(), controls);
        self.store
            .save(&next)
            .map_err(|e| format!("recording the command: {e:#}"))?;
        tracing::info!(access_point = %key, ?command, "rollout command recorded");
        *stored = next;
        Ok(())
    }
}

fn log_transitions(before: &Records, after: &Records) {
    for (key, record) in after {
        let state = &record.state;
        let old = before.get(key).map(|r| &r.state);
        if old.map(|o| (o.phase, o.stage, &o.revision))
            != Some((state.phase, state.stage, &state.revision))
        {
            tracing::info!(access_point = %key, revision = %state.revision, phase = ?state.phase, stage = state.stage, reason = state.reason.as_deref().unwrap_or(""), "rollout moved");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
