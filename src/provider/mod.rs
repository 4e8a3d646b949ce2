//! Providers feed the index from the outside world. Standalone mode has one: a directory of
//! YAML manifests (`file`). Kubernetes watchers join them in Kubernetes mode.

pub mod file;
pub mod kube;

use serde::Serialize;

/// A problem with the input that operators must see; the last good config keeps serving.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ConfigProblem {
    /// The file (standalone) or object (Kubernetes) at fault.
    pub source: String,
    pub message: String,
}
