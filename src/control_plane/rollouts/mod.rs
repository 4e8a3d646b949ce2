//! The rollout task: runs the pure rollout round and the NACK quarantine whenever the config, a
//! proxy's acknowledgements or the time move, persists what a restart must find, then hands the
//! per-cluster revisions to the index owner. Operators' commands (approve, pause, resume, undo)
//! arrive over a channel from the admin API and are persisted with the rest.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::api::rollout::{RolloutControls, RolloutStatus};
use crate::control_plane::fleet_acks::FleetAcks;
use crate::control_plane::index::Snapshot;
use crate::core::model::revision::Pins;
use crate::core::model::ObjectKey;
use crate::core::quarantine::{self, Quarantine, QuarantineRecords};
use crate::core::rollout::fleet::{apply_command, round, Command, Records};
use crate::core::rollout::plan::staged;
use crate::core::status::MemberWrites;

mod store;
pub use store::{RolloutStore, Stored, ROLLOUT_CONFIG_MAP};

/// How often rollouts advance without other news (soak times and deadlines).
const TICK: Duration = Duration::from_secs(1);

/// Which revision each cluster is served, as the index receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct PinUpdate(pub Pins);

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

/// Which replica decides, and where operator controls come from.
pub enum Role {
    /// This process decides; controls arrive as commands and are stored with the rollouts.
    Standalone,
    /// The lease holder decides; every other replica serves what it persisted. Controls are
    /// what the verified RolloutActions add up to (`kubernetes::rollout_actions`).
    /// `member_writes`: the outcome of writing each AccessPoint's Service into each member
    /// cluster; a failed one holds that cluster's stage.
    Kubernetes {
        leading: watch::Receiver<bool>,
        member_writes: watch::Receiver<MemberWrites>,
        controls: watch::Receiver<BTreeMap<ObjectKey, RolloutControls>>,
    },
}

/// Resolves when the member writes or the controls change (Kubernetes mode); never otherwise.
async fn writes_changed(role: &mut Role) {
    match role {
        Role::Kubernetes {
            member_writes,
            controls,
            ..
        } => {
            let changed = tokio::select! {
                changed = member_writes.changed() => changed,
                changed = controls.changed() => changed,
            };
            if changed.is_err() {
                std::future::pending::<()>().await
            }
        }
        Role::Standalone => std::future::pending::<()>().await,
    }
}

/// How often a standby re-reads the leader's rollouts.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// The task's inputs.
pub struct RolloutTask {
    pub store: RolloutStore,
    /// What the store held at start (already served by the index), if it was read.
    pub stored: Option<Stored>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub acks: FleetAcks,
    pub channel: Arc<RolloutChannel>,
    pub role: Role,
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
        let mut stored = self.stored.take();
        let mut lease = match &self.role {
            Role::Kubernetes { leading, .. } => Some(leading.clone()),
            Role::Standalone => None,
        };
        let mut sent: Option<Pins> = None;
        let mut quarantine = Quarantine::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let leading = lease.as_mut().is_none_or(|l| *l.borrow_and_update());
            // A standby follows the leader's rollouts; a new leader starts from them.
            if stored.is_none() || !leading {
                match self.store.load().await {
                    Ok(loaded) => stored = Some(loaded),
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "cannot read rollouts; retrying")
                    }
                }
            }
            let snapshot = self.snapshots.borrow_and_update().clone();
            if let Some(current) = stored.as_mut() {
                let pins = if leading && snapshot.generation > 0 {
                    match self.round(&snapshot, current, &mut quarantine).await {
                        Ok(pins) => Some(pins),
                        Err(error) => {
                            tracing::warn!(error = %format!("{error:#}"), "cannot persist rollouts; nothing moves until it can");
                            None
                        }
                    }
                } else {
                    // A standby (or a leader before the first snapshot) serves what is stored,
                    // and remembers nothing a later round as leader could misread.
                    quarantine = Quarantine::default();
                    Some(current.pins())
                };
                if let Some(pins) = pins.filter(|p| sent.as_ref() != Some(p)) {
                    if sink.send(T::from(PinUpdate(pins.clone()))).await.is_err() {
                        return Ok(());
                    }
                    sent = Some(pins);
                }
            }
            let lease_changed = async {
                let changed = match lease.as_mut() {
                    Some(lease) => lease.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    std::future::pending::<()>().await
                }
            };
            tokio::select! {
                changed = self.snapshots.changed() => if changed.is_err() { return Ok(()) },
                _ = self.acks.changed() => {}
                _ = writes_changed(&mut self.role) => {}
                _ = tick.tick(), if leading => {}
                _ = tokio::time::sleep(FOLLOW_EVERY), if !leading => {}
                _ = lease_changed => stored = None,
                Some(request) = requests.recv() => {
                    let outcome = match (&self.role, stored.as_mut()) {
                        (Role::Standalone, Some(current)) => {
                            self.record(&snapshot, current, request.key, request.command).await
                        }
                        (Role::Standalone, None) => Err("rollouts are not loaded yet".to_owned()),
                        (Role::Kubernetes { .. }, _) => Err(
                            "in Kubernetes mode approvals, pauses and undos are written to the AccessPoint's status: use `meridian approve|rollout … --kubernetes`".to_owned(),
                        ),
                    };
                    let _ = request.reply.send(outcome);
                }
                _ = stopped.changed() => return Ok(()),
            }
        }
    }

    /// One round as the decider: advance, persist what changed, publish statuses.
    async fn round(
        &self,
        snapshot: &Snapshot,
        stored: &mut Stored,
        quarantine: &mut Quarantine,
    ) -> anyhow::Result<Pins> {
        let controls = match &self.role {
            Role::Standalone => stored.controls.clone(),
            Role::Kubernetes { controls, .. } => controls.borrow().clone(),
        };
        let staged: Vec<_> = snapshot
            .model
            .access_points
            .values()
            .filter_map(staged)
            .collect();
        let mut held = stored.quarantine.clone();
        quarantine.note_changes(&snapshot.model, &mut held);
        // Reading every proxy's acknowledgements costs; most of the time no rollout is staged,
        // no change is awaiting its acknowledgements and nothing is held.
        let proxies = if staged.iter().any(|spec| spec.health.is_some()) {
            self.acks.clone().current_with_load()
        } else if !staged.is_empty() || quarantine.watching(&held) {
            self.acks.clone().current()
        } else {
            Vec::new()
        };
        quarantine.decide(&snapshot.model, &proxies, &mut held);
        let writes = match &self.role {
            Role::Standalone => MemberWrites::new(),
            Role::Kubernetes { member_writes, .. } => member_writes.borrow().clone(),
        };
        let round = round(
            &snapshot.model,
            &stored.records,
            &controls,
            &proxies,
            &writes,
            now_ms(),
        );
        let mut next = Stored {
            records: round.records,
            controls: stored.controls.clone(),
            quarantine: held,
        };
        next.controls
            .retain(|key, _| snapshot.model.access_points.contains_key(key));
        if next != *stored {
            // Persisted before served: a restart never moves a cluster back or ahead.
            self.store.save(&next).await?;
            log_transitions(&stored.records, &next.records);
            log_holds(&stored.quarantine, &next.quarantine);
            *stored = next;
        }
        let standalone = matches!(self.role, Role::Standalone);
        let statuses = round
            .statuses
            .into_iter()
            .map(|(key, mut status)| {
                // Standalone shows the stored controls; in Kubernetes they are the approvers'
                // own fields of the status, never written by Meridian.
                if standalone {
                    status.controls = stored.controls.get(&key).cloned();
                }
                (key, status)
            })
            .collect();
        self.channel.statuses.send_replace(statuses);
        let mut pins = round.pins;
        pins.extend(quarantine::pins(&stored.quarantine));
        Ok(pins)
    }

    /// Records a command in the controls and persists them.
    async fn record(
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
            .await
            .map_err(|e| format!("recording the command: {e:#}"))?;
        tracing::info!(access_point = %key, ?command, "rollout command recorded");
        *stored = next;
        Ok(())
    }
}

fn log_holds(before: &QuarantineRecords, after: &QuarantineRecords) {
    for (key, record) in after {
        for (cluster, hold) in &record.clusters {
            let old = before.get(key).and_then(|r| r.clusters.get(cluster));
            if old != Some(hold) {
                tracing::warn!(access_point = %key, %cluster, revision = %record.rejected, serving = hold.serving.as_deref().unwrap_or("nothing"), confirmed = hold.confirmed, reason = %hold.reason, "gateways rejected a change; holding it back in that cluster");
            }
        }
    }
    for (key, record) in before {
        for cluster in record.clusters.keys() {
            if after
                .get(key)
                .is_none_or(|r| !r.clusters.contains_key(cluster))
            {
                tracing::info!(access_point = %key, %cluster, "hold lifted; the current revision is tried again");
            }
        }
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
