//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: every replica
//! serves xDS; only the lease holder writes status.
//!
//! Expiry is judged by this replica's own monotonic clock from when it last saw the lease
//! record change, never by comparing another replica's `renewTime` with local wall time, so
//! clock skew between replicas cannot cause two leaders. The decision logic ([`Elector`]) is
//! sans-IO and tested with plain instants; [`run`] does the API calls.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (`holderIdentity`), unique per replica.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// What the elector decided to do with the lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the lease naming us (create it, or take it over from `previous` holder).
    Acquire { previous: Option<String> },
    /// We hold it: write a fresh `renewTime`.
    Renew,
    /// Someone else holds it and has not been seen to let it expire.
    Follow { holder: String },
}

/// The part of a lease record whose change proves its holder alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    transitions: Option<i32>,
}

pub struct Elector {
    identity: String,
    lease_duration: Duration,
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(identity: impl Into<String>, lease_duration: Duration) -> Elector {
        Elector {
            identity: identity.into(),
            lease_duration,
            observed: None,
        }
    }

    pub fn decide(&mut self, lease: Option<&LeaseSpec>, now: Instant) -> Action {
        let Some(spec) = lease else {
            return Action::Acquire { previous: None };
        };
        let record = Record {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
        };
        let Some(holder) = record.holder.clone() else {
            return Action::Acquire { previous: None };
        };
        if holder == self.identity {
            return Action::Renew;
        }
        // The holder's own lease duration governs; ours is the fallback.
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.lease_duration);
        match &self.observed {
            Some((seen, since)) if *seen == record => {
                if now.duration_since(*since) >= duration {
                    Action::Acquire {
                        previous: Some(holder),
                    }
                } else {
                    Action::Follow { holder }
                }
            }
            _ => {
                self.observed = Some((record, now));
                Action::Follow { holder }
            }
        }
    }
}

/// Campaigns for the lease until `stopped`, publishing whether this replica leads on
/// `leading`. On a clean stop the lease is released so a standby takes over at once.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut elector = Elector::new(config.identity.clone(), config.lease_duration);
    let mut last_renewed: Option<Instant> = None;
    loop {
        let now = Instant::now();
        match step(&api, &config, &mut elector, now).await {
            Ok(true) => last_renewed = Some(now),
            Ok(false) => last_renewed = None,
            Err(error) => {
                tracing::warn!(%error, lease = %config.name, "lease update failed");
                // Stop writing well before a standby may take over.
                let deadline = config.lease_duration.mul_f64(2.0 / 3.0);
                if last_renewed.is_some_and(|at| now.duration_since(at) >= deadline) {
                    last_renewed = None;
                }
            }
        }
        let is_leader = last_renewed.is_some();
        leading.send_if_modified(|was| {
            if *was != is_leader {
                tracing::info!(identity = %config.identity, leading = is_leader, "leadership changed");
                *was = is_leader;
                true
            } else {
                false
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(config.renew_every) => {}
            _ = stopped.changed() => break,
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(error) = release(&api, &config).await {
            tracing::warn!(%error, "releasing the lease failed; a standby takes over when it expires");
        }
    }
}

/// One read-decide-write round; returns whether we hold the lease afterwards.
async fn step(
    api: &Api<Lease>,
    config: &LeaseConfig,
    elector: &mut Elector,
    now: Instant,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(&config.name).await?;
    let action = elector.decide(current.as_ref().and_then(|l| l.spec.as_ref()), now);
    let wall_now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let mut lease = current.clone().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..Default::default()
        },
        spec: None,
    });
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    match &action {
        Action::Follow { .. } => return Ok(false),
        Action::Renew => spec.renew_time = Some(wall_now),
        Action::Acquire { previous } => {
            tracing::info!(identity = %config.identity, previous = ?previous, "acquiring lease");
            spec.holder_identity = Some(config.identity.clone());
            spec.acquire_time = Some(wall_now.clone());
            spec.renew_time = Some(wall_now);
            if previous.is_some() || spec.lease_transitions.is_some() {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
    }
    spec.lease_duration_seconds = Some(config.lease_duration.as_secs().max(1) as i32);
    let written = if current.is_some() {
        // `replace` carries the resourceVersion read above: a concurrent writer wins, we retry.
        api.replace(&config.name, &PostParams::default(), &lease)
            .await
    } else {
        api.create(&PostParams::default(), &lease).await
    };
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    tracing::info!(identity = %config.identity, "lease released");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(renewed).unwrap(),
            )),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn takes_a_missing_or_released_lease_at_once() {
        let now = Instant::now();
        let mut elector = Elector::new("b", Duration::from_secs(15));
        assert_eq!(
            elector.decide(None, now),
            Action::Acquire { previous: None }
        );
        let released = LeaseSpec::default();
        assert_eq!(
            elector.decide(Some(&released), now),
            Action::Acquire { previous: None }
        );
        assert_eq!(elector.decide(Some(&held_by("b", 1)), now), Action::Renew);
    }

    #[test]
    fn takes_over_only_after_the_record_stood_still_for_a_lease_duration() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut elector = Elector::new("b", Duration::from_secs(15));
        let follow = Action::Follow {
            holder: "a".to_owned(),
        };
        assert_eq!(elector.decide(Some(&held_by("a", 100)), at(0)), follow);
        // The holder renews: the clock restarts from when we saw the change.
        assert_eq!(elector.decide(Some(&held_by("a", 110)), at(10)), follow);
        assert_eq!(elector.decide(Some(&held_by("a", 110)), at(24)), follow);
        // Whatever renewTime claims, only our own clock decides expiry.
        assert_eq!(
            elector.decide(Some(&held_by("a", 110)), at(25)),
            Action::Acquire {
                previous: Some("a".to_owned())
            }
        );
    }
}
