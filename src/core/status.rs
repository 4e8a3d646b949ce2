//! AccessPoint status: the conditions operators and `kubectl wait` read, computed from a
//! snapshot and what the connected gateways have acknowledged.
//!
//! Conditions follow the Kubernetes API conventions (and Gateway API's vocabulary):
//! - `Accepted`: the latest generation is valid, its overrides apply in every placed cluster
//!   (a cluster where they fail keeps its last good template), every Gateway it binds to
//!   exists, and no older AccessPoint already serves one of its hosts on the same gateway port.
//! - `ResolvedRefs`: every route destination names a known service port.
//! - `Programmed`: every connected gateway proxy serving it acknowledged a config holding this
//!   generation (from ADS ACK tracking, not merely seen by the controller).
//! - `Applied` (only when member clusters are written): the expanded objects are in every
//!   placed member cluster Meridian connects to.
//! - `Ready`: all of the above hold.
//!
//! `lastTransitionTime` only moves when a condition's status flips, so writers can skip
//! unchanged statuses.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::model::{Model, ObjectKey, ObjectMap};
use super::observed::GatewayAck;
use super::placement::placed_clusters;
use super::refs::{ClusterRefs, RefKind, UnresolvedRef};
use super::validate::{FieldError, Rejection};
use crate::api::access_point::ClusterStatus;
use crate::api::rollout::RolloutStatus;
use crate::api::AccessPointStatus;

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const PROGRAMMED: &str = "Programmed";
pub const READY: &str = "Ready";
/// Present when the AccessPoint writes into member clusters.
pub const APPLIED: &str = "Applied";

/// Kubernetes caps a condition message at 32768 bytes.
const MAX_MESSAGE: usize = 32 * 1024;

/// What the index published, as status needs it.
#[derive(Clone, Copy)]
pub struct Published<'a> {
    pub model: &'a Model,
    /// AccessPoints whose latest version was rejected.
    pub rejected: &'a BTreeMap<ObjectKey, Rejection>,
    /// Snapshot generation in which each accepted AccessPoint's current version appeared.
    pub in_force_since: &'a ObjectMap<u64>,
    /// Snapshot generation in which a rollout last moved (AccessPoint, cluster) to another
    /// revision.
    pub released_at: &'a BTreeMap<(ObjectKey, String), u64>,
}

/// The AccessPoints (with `metadata.generation`, 0 when absent) a proxy in `cluster` has
/// acknowledged, given the latest snapshot generation whose whole config it acknowledged. Under
/// a staged rollout that is the generation of the revision its cluster is served.
pub fn acked_access_points(
    published: Published<'_>,
    synced_generation: Option<u64>,
    cluster: &str,
) -> BTreeMap<ObjectKey, i64> {
    let Some(synced) = synced_generation else {
        return BTreeMap::new();
    };
    published
        .in_force_since
        .iter()
        .filter(|(key, since)| {
            let released = published
                .released_at
                .get(&(ObjectKey::clone(key), cluster.to_owned()))
                .copied()
                .unwrap_or(0);
            (**since).max(released) <= synced
        })
        .filter_map(|(key, _)| {
            let (ap, _) = published.model.served_version(key, cluster)?;
            Some((key.clone(), ap.metadata.generation.unwrap_or(0)))
        })
        .collect()
}

/// The outcome of writing an AccessPoint's expanded objects into one member cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberWrite {
    Applied,
    /// Why not (a conflict under the `Abort` policy, an unreachable API server, ...).
    Failed(String),
}

/// Member writes by (AccessPoint, cluster).
pub type MemberWrites = BTreeMap<(ObjectKey, String), MemberWrite>;

/// The inputs of one AccessPoint's status.
pub struct StatusInput<'a> {
    pub key: &'a ObjectKey,
    pub published: Published<'a>,
    /// Every cluster's references (`ClusterRefs::all(published.model)`), shared by all
    /// AccessPoints of one round.
    pub clusters: &'a BTreeMap<String, ClusterRefs<'a>>,
    pub proxies: &'a [GatewayAck],
    /// What the member-cluster writer did (empty in standalone mode).
    pub member_writes: &'a MemberWrites,
    /// Where its staged rollout stands, if it has one.
    pub rollout: Option<&'a RolloutStatus>,
}

/// Every AccessPoint published, accepted or rejected.
pub fn access_point_keys(published: Published<'_>) -> Vec<ObjectKey> {
    let mut keys: Vec<ObjectKey> = published
        .model
        .access_points
        .keys()
        .chain(published.rejected.keys())
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The status `input.key` should have; `previous` supplies unchanged transition times.
pub fn access_point_status(
    input: &StatusInput<'_>,
    previous: Option<&AccessPointStatus>,
    now: &Time,
) -> AccessPointStatus {
    let published = input.published;
    let accepted = published.model.access_points.get(input.key);
    let rejection = published.rejected.get(input.key);
    let generation = rejection
        .and_then(|r| r.generation)
        .or_else(|| accepted.and_then(|a| a.metadata.generation));

    let (placed, mut drafts, statuses) = match (rejection, accepted) {
        // The last accepted generation keeps serving: its clusters, VIPs and readiness show
        // what serves; the conditions say this generation is invalid.
        (Some(rejection), Some(ap)) => {
            let clusters = placed_clusters(published.model, ap);
            let (_, statuses) = evaluate(input, &clusters, previous);
            (clusters, invalid(&rejection.errors), statuses)
        }
        (Some(rejection), None) => (Vec::new(), invalid(&rejection.errors), Vec::new()),
        (None, Some(ap)) => {
            let clusters = placed_clusters(published.model, ap);
            let (drafts, statuses) = evaluate(input, &clusters, previous);
            (clusters, drafts, statuses)
        }
        (None, None) => (Vec::new(), invalid(&[]), Vec::new()),
    };
    let ready_clusters = statuses.iter().filter(|c| c.ready).count() as i32;
    let ready = summary(&drafts);
    drafts.push(ready);

    let old = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let conditions = drafts
        .into_iter()
        .map(|d| d.into_condition(generation, old, now))
        .collect();
    AccessPointStatus {
        observed_generation: generation,
        cluster_count: Some(placed.len() as i32),
        ready_clusters: (rejection.is_none() || accepted.is_some()).then_some(ready_clusters),
        clusters: per_cluster::compact(statuses),
        conditions,
        rollout: input.rollout.cloned(),
    }
}

pub(crate) struct Draft {
    kind: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
}

impl Draft {
    pub(crate) fn new(
        kind: &'static str,
        ok: bool,
        reason: &'static str,
        message: String,
    ) -> Draft {
        Draft {
            kind,
            status: if ok { "True" } else { "False" },
            reason,
            message,
        }
    }

    pub(crate) fn into_condition(
        self,
        generation: Option<i64>,
        old: &[Condition],
        now: &Time,
    ) -> Condition {
        let last_transition_time = old
            .iter()
            .find(|c| c.type_ == self.kind && c.status == self.status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: self.kind.to_owned(),
            status: self.status.to_owned(),
            reason: self.reason.to_owned(),
            message: truncate(self.message),
            observed_generation: generation,
            last_transition_time,
        }
    }
}

fn invalid(errors: &[FieldError]) -> Vec<Draft> {
    let message = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    vec![
        Draft::new(ACCEPTED, false, "Invalid", message),
        Draft {
            kind: RESOLVED_REFS,
            status: "Unknown",
            reason: "Invalid",
            message: "references are not checked until the spec is valid".to_owned(),
        },
        Draft::new(
            PROGRAMMED,
            false,
            "Invalid",
            "this generation is invalid; the last accepted generation, if any, keeps serving"
                .to_owned(),
        ),
    ]
}

fn evaluate(
    input: &StatusInput<'_>,
    clusters: &[String],
    previous: Option<&AccessPointStatus>,
) -> (Vec<Draft>, Vec<ClusterStatus>) {
    let published = input.published;
    let generation = published
        .model
        .access_points
        .get(input.key)
        .and_then(|ap| ap.metadata.generation)
        .unwrap_or(0);
    let mut refs: Vec<UnresolvedRef> = Vec::new();
    let mut serving: Vec<&GatewayAck> = Vec::new();
    let mut statuses = Vec::new();
    for cluster in clusters {
        let Some(context) = input.clusters.get(cluster) else {
            continue;
        };
        let cluster_refs = context.unresolved(input.key);
        let gateways = context.bound_gateways(input.key);
        let cluster_serving: Vec<&GatewayAck> = input
            .proxies
            .iter()
            .filter(|p| &p.cluster == cluster && gateways.contains(&p.gateway))
            .collect();
        let mut problems: Vec<String> = published
            .model
            .override_errors
            .get(&(input.key.clone(), cluster.clone()))
            .map(|e| e.to_string())
            .into_iter()
            .collect();
        problems.extend(per_cluster::problems_in(&cluster_refs, cluster));
        problems.extend(rejected_in(published.model, input.key, cluster));
        problems.extend(
            published
                .model
                .vip_errors
                .iter()
                .filter(|e| e.access_point() == Some(input.key) && e.cluster() == cluster)
                .map(ToString::to_string),
        );
        let facts = per_cluster::ClusterFacts {
            name: cluster,
            problems,
            serving: cluster_serving.clone(),
            applied: input
                .member_writes
                .get(&(input.key.clone(), cluster.clone())),
        };
        let mut status = per_cluster::cluster_status(
            &facts,
            input.key,
            generation,
            published.model,
            &context.view,
        );
        if status.applied.is_none() && awaits_member_write(published.model, input.key, cluster) {
            // Not written since this replica leads: the last outcome shown stands.
            status.applied = previous
                .and_then(|p| p.clusters.iter().find(|c| &c.name == cluster))
                .and_then(|c| c.applied);
        }
        statuses.push(status);
        refs.extend(cluster_refs);
        serving.extend(cluster_serving);
    }
    let describe = |kind: RefKind| -> Vec<String> {
        refs.iter()
            .filter(|r| r.kind == kind)
            .map(|r| format!("{}: {}", r.path, r.message))
            .collect()
    };
    let missing_gateways = describe(RefKind::Gateway);
    let missing_backends = describe(RefKind::Backend);
    let missing_credentials = describe(RefKind::Credential);

    let conflicts = describe(RefKind::HostConflict);
    let failed_overrides: Vec<String> = clusters
        .iter()
        .filter_map(|c| {
            let error = published
                .model
                .override_errors
                .get(&(input.key.clone(), c.clone()))?;
            Some(format!("cluster {c}: {error}"))
        })
        .collect();
    let reason = if !failed_overrides.is_empty() {
        "OverrideFailed"
    } else if !missing_gateways.is_empty() {
        "NoMatchingGateway"
    } else {
        "HostConflict"
    };
    let problems = [failed_overrides, missing_gateways, conflicts].concat();
    let accepted = if problems.is_empty() {
        Draft::new(ACCEPTED, true, "Accepted", "the spec is valid".to_owned())
    } else {
        Draft::new(ACCEPTED, false, reason, problems.join("; "))
    };
    let resolved = resolved_refs(&missing_backends, &missing_credentials);
    let rejected: Vec<String> = clusters
        .iter()
        .filter_map(|c| rejected_in(published.model, input.key, c))
        .collect();
    let programmed = match (
        rejected.is_empty(),
        still_on_older_revisions(input, clusters),
    ) {
        (false, _) => Draft::new(PROGRAMMED, false, "Rejected", rejected.join("; ")),
        // However their proxies answer (or whether any is connected), clusters a staged
        // rollout has not moved yet do not serve this generation.
        (true, Some(behind)) => Draft::new(PROGRAMMED, false, "RollingOut", behind),
        (true, None) => programmed(input.key, clusters, &serving, generation),
    };
    let mut drafts = vec![accepted, resolved, programmed];
    let writes: Vec<(&String, &MemberWrite)> = clusters
        .iter()
        .filter_map(|c| Some((c, input.member_writes.get(&(input.key.clone(), c.clone()))?)))
        .collect();
    if writes.is_empty() {
        // A new leader has written nothing yet: the Applied condition shown stands, with its
        // transition time, rather than vanishing until the first write and coming back new.
        let awaited = clusters
            .iter()
            .any(|c| awaits_member_write(published.model, input.key, c));
        if let Some(shown) = previous.filter(|_| awaited).and_then(shown_applied) {
            drafts.push(shown);
        }
    } else {
        let failed: Vec<String> = writes
            .iter()
            .filter_map(|(c, w)| match w {
                MemberWrite::Failed(e) => Some(format!("cluster {c}: {e}")),
                MemberWrite::Applied => None,
            })
            .collect();
        drafts.push(if failed.is_empty() {
            Draft::new(
                APPLIED,
                true,
                "Applied",
                format!("applied in {} member cluster(s)", writes.len()),
            )
        } else {
            Draft::new(APPLIED, false, "ApplyFailed", failed.join("; "))
        });
    }
    (drafts, statuses)
}

/// Which placed clusters a staged rollout still serves an older revision, as a message; `None`
/// when every one is on the current revision (or no rollout is staged).
fn still_on_older_revisions(input: &StatusInput<'_>, clusters: &[String]) -> Option<String> {
    let rollout = input.rollout?;
    let behind: Vec<String> = rollout
        .clusters
        .iter()
        .filter(|c| c.revision != rollout.revision && clusters.contains(&c.name))
        .map(|c| format!("{} (revision {})", c.name, c.revision))
        .collect();
    if behind.is_empty() {
        return None;
    }
    Some(format!(
        "the rollout of revision {} ({}) has not reached cluster(s) {}",
        rollout.revision,
        rollout.phase,
        behind.join(", ")
    ))
}

/// Whether the AccessPoint's Service is written into `cluster`: a connected member cluster, and
/// a template with a Service (what `federation::member_services` writes).
fn awaits_member_write(model: &Model, key: &ObjectKey, cluster: &str) -> bool {
    crate::core::federation::is_connected_member(model, cluster)
        && model
            .access_points
            .get(key)
            .is_some_and(|ap| ap.spec.template.service.is_some())
}

/// The `Applied` condition `previous` shows, as a draft of the same status, reason and message.
fn shown_applied(previous: &AccessPointStatus) -> Option<Draft> {
    let shown = previous.conditions.iter().find(|c| c.type_ == APPLIED)?;
    let (ok, reason) = match shown.status.as_str() {
        "True" => (true, "Applied"),
        "False" => (false, "ApplyFailed"),
        _ => return None,
    };
    Some(Draft::new(APPLIED, ok, reason, shown.message.clone()))
}

/// `ResolvedRefs`: route destinations (served as 503 while missing) and TLS Secrets (their
/// server is left out while missing).
fn resolved_refs(missing_backends: &[String], missing_credentials: &[String]) -> Draft {
    if missing_backends.is_empty() && missing_credentials.is_empty() {
        return Draft::new(
            RESOLVED_REFS,
            true,
            "ResolvedRefs",
            "every route destination and TLS credential resolves".to_owned(),
        );
    }
    let mut parts = Vec::new();
    if !missing_backends.is_empty() {
        parts.push(format!(
            "{} (served as 503 until it resolves)",
            missing_backends.join("; ")
        ));
    }
    if !missing_credentials.is_empty() {
        parts.push(format!(
            "{} (that TLS server is not served until it resolves)",
            missing_credentials.join("; ")
        ));
    }
    let reason = if missing_backends.is_empty() {
        "InvalidCertificateRef"
    } else {
        "BackendNotFound"
    };
    Draft::new(RESOLVED_REFS, false, reason, parts.join("; "))
}

/// Why the quarantine holds `key` back in `cluster`, if it does: the gateways there rejected
/// its current revision, and what they are served instead.
fn rejected_in(model: &Model, key: &ObjectKey, cluster: &str) -> Option<String> {
    let why = model.pins.get(key)?.rejected.get(cluster)?;
    Some(format!("cluster {cluster}: {why}"))
}

fn programmed(
    key: &ObjectKey,
    clusters: &[String],
    serving: &[&GatewayAck],
    generation: i64,
) -> Draft {
    if clusters.is_empty() {
        return Draft::new(
            PROGRAMMED,
            false,
            "NotPlaced",
            "the placement selects no cluster".to_owned(),
        );
    }
    if serving.is_empty() {
        return Draft::new(
            PROGRAMMED,
            false,
            "NoConnectedGateways",
            format!(
                "no gateway proxy serving this AccessPoint is connected in cluster(s) {}",
                clusters.join(", ")
            ),
        );
    }
    if let Some(p) = serving.iter().find(|p| p.nack.is_some()) {
        return Draft::new(
            PROGRAMMED,
            false,
            "Rejected",
            format!(
                "proxy {} (gateway {}, cluster {}) rejected the config: {}",
                p.node_id,
                p.gateway,
                p.cluster,
                p.nack.as_deref().unwrap_or_default()
            ),
        );
    }
    let acked = serving
        .iter()
        .filter(|p| p.acked.get(key) == Some(&generation))
        .count();
    let mut by_cluster: BTreeMap<&str, usize> = BTreeMap::new();
    for p in serving {
        *by_cluster.entry(p.cluster.as_str()).or_default() += 1;
    }
    let clusters_served = by_cluster.len();
    if acked == serving.len() {
        Draft::new(
            PROGRAMMED,
            true,
            "Programmed",
            format!("{acked} proxies in {clusters_served} cluster(s) acknowledged this generation"),
        )
    } else {
        Draft::new(
            PROGRAMMED,
            false,
            "Pending",
            format!(
                "{acked} of {} proxies acknowledged this generation",
                serving.len()
            ),
        )
    }
}

fn summary(drafts: &[Draft]) -> Draft {
    match drafts.iter().find(|d| d.status != "True") {
        None => Draft::new(READY, true, "Ready", "accepted and programmed".to_owned()),
        Some(failing) => Draft::new(
            READY,
            false,
            failing.reason,
            format!("{}: {}", failing.kind, failing.message),
        ),
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

mod per_cluster;

#[cfg(test)]
mod tests;
