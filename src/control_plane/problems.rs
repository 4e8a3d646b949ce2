//! Problems with the input, whichever provider found them: the manifest directory
//! (standalone) or the Kubernetes watchers. Shown at `/debug/problems`; the last good config
//! keeps serving.

use serde::Serialize;

/// A problem with the input that operators must see; the last good config keeps serving.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ConfigProblem {
    /// The file (standalone) or object (Kubernetes) at fault.
    pub source: String,
    pub message: String,
}
