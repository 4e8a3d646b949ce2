//! How a change to an AccessPoint reaches its clusters (`spec.rollout`), and what the rollout
//! reports (`status.rollout`).
//!
//! The operator's acts (approve a stage, pause, undo) are kept apart from the spec in
//! [`RolloutControls`]: in Kubernetes mode they live on the status subresource, written by the
//! approver's own field manager, so RBAC can grant `accesspoints/status` to approvers without
//! letting them edit the spec, and a GitOps sync of the spec never erases an approval.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default `progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 600;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// `All` (default): every cluster gets a change at once. `Staged`: stage by stage.
    #[serde(default, skip_serializing_if = "RolloutStrategy::is_default")]
    pub strategy: RolloutStrategy,
    /// `Serve` (default) or `Shadow`: compute new revisions and report how each cluster's
    /// configuration would differ, but keep serving the last completed revision.
    #[serde(default, skip_serializing_if = "RolloutMode::is_default")]
    pub mode: RolloutMode,
    /// In order. Placed clusters no stage names form an implicit last stage, `remaining`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<RolloutStage>,
    /// How long a stage may take to be acknowledged by its gateways before the rollout halts
    /// (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<u32>,
    /// Failed clusters tolerated before the rollout halts (default 0: the first one halts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_failures: Option<u32>,
    /// Halt when the gateways of a cluster on the new revision see too many upstream errors
    /// (from Envoy's load reports). Absent: only NACKs and the deadline halt a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthThreshold>,
    /// When the rollout halts because clusters rejected the new revision (NACK) or turned
    /// unhealthy on it: `Revert` (default) serves those clusters the last completed revision
    /// again at once; `Halt` leaves them on the new one until `meridian rollout undo`.
    #[serde(default, skip_serializing_if = "OnFailure::is_default")]
    pub on_failure: OnFailure,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OnFailure {
    #[default]
    Revert,
    Halt,
}

impl OnFailure {
    fn is_default(&self) -> bool {
        *self == OnFailure::Revert
    }
}

/// Default `health.minRequests`.
pub const DEFAULT_HEALTH_MIN_REQUESTS: u32 = 20;
/// Default `health.windowSeconds`.
pub const DEFAULT_HEALTH_WINDOW_SECONDS: u32 = 60;

/// When a cluster counts as unhealthy: the share of requests its gateways forwarded to the
/// AccessPoint's route destinations that failed (HTTP 5xx, connection failures, timeouts),
/// over a sliding window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthThreshold {
    /// Failed requests, in percent of requests, above which the cluster is unhealthy.
    #[schemars(range(min = 0, max = 100))]
    pub max_error_percent: u32,
    /// Fewer requests than this in the window say nothing (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<u32>,
    /// How far back to count (default 60, at most 300: the reports Meridian keeps); never
    /// before the stage started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub window_seconds: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutStrategy {
    #[default]
    All,
    Staged,
}

impl RolloutStrategy {
    fn is_default(&self) -> bool {
        *self == RolloutStrategy::All
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutMode {
    #[default]
    Serve,
    Shadow,
}

impl RolloutMode {
    fn is_default(&self) -> bool {
        *self == RolloutMode::Serve
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutStage {
    /// Unique within the rollout; approvals name it.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Member clusters of this stage (among those placed; a cluster belongs to its first stage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Also every placed cluster whose MemberCluster labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// Clusters of the stage changing at once (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,
    /// Wait for `meridian approve --stage NAME` after the stage is done and has soaked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_approval: bool,
    /// How long the stage must stay healthy after its gateways acknowledged (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub soak_seconds: Option<u32>,
}

/// The operator's acts on a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutControls {
    /// Stages approved, each for one revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["revision", "stage"]))]
    pub approvals: Vec<Approval>,
    /// Assign no cluster a new revision until resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Send every cluster back to the last completed revision, for this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub revision: String,
    pub stage: String,
    /// Who approved (the CLI records the user it ran as, when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// Where a rollout stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision of the current spec (a content hash).
    #[serde(default)]
    pub revision: String,
    /// The last revision that reached every cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_revision: Option<String>,
    /// Progressing, Soaking, AwaitingApproval, Paused, Succeeded, Halted, RolledBack or Shadow.
    #[serde(default)]
    pub phase: String,
    /// The stage the rollout is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Why it halted or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the current phase began, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterRollout>,
    /// Operator acts, written by approvers (not by Meridian).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controls: Option<RolloutControls>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    pub name: String,
    /// Pending, Progressing, Soaking, AwaitingApproval, Succeeded or Halted.
    pub state: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRollout {
    pub name: String,
    /// The revision its gateways are served.
    pub revision: String,
    /// Pending, Progressing, Succeeded or Halted.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the AccessPoint's Service was written into the member cluster (absent where
    /// Meridian writes none, or has not yet). A failed write holds the cluster's stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
}
