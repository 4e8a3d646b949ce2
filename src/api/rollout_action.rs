//! `RolloutAction`: one operator act on a staged rollout (approve a stage, pause, resume,
//! undo), as its own object, so the right to act is RBAC's `create rolloutactions` and nothing
//! else, and every act stays as a record of who did what, when.
//!
//! Who acted is not taken from the object: Meridian's admission webhook writes the
//! authenticated user of the create request into the annotations below, with a signature only
//! Meridian can make (an HMAC keyed from its CA's private key), and refuses any change to them
//! or to the spec afterwards. Meridian honours only actions whose signature verifies.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The authenticated user who created the action.
pub const REQUESTED_BY: &str = "meridian.dev/requested-by";
/// When, RFC 3339.
pub const REQUESTED_AT: &str = "meridian.dev/requested-at";
/// HMAC-SHA256 over the namespace, the spec and the two annotations above.
pub const SIGNATURE: &str = "meridian.dev/signature";

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meridian.dev",
    derive = "PartialEq",
    version = "v1alpha1",
    kind = "RolloutAction",
    namespaced,
    shortname = "ra",
    category = "meridian",
    printcolumn = r#"{"name":"AccessPoint","type":"string","jsonPath":".spec.accessPoint"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".spec.stage"}"#,
    printcolumn = r#"{"name":"By","type":"string","jsonPath":".metadata.annotations.meridian\\.dev/requested-by"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutActionSpec {
    /// The AccessPoint acted on, in the action's namespace.
    pub access_point: String,
    pub action: ActionKind,
    /// `Approve`: the stage approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// `Approve` and `Undo`: the revision acted on (`status.rollout.revision`); an approval
    /// never carries over to a later revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ActionKind {
    Approve,
    Pause,
    Resume,
    Undo,
}

impl RolloutActionSpec {
    /// What is missing for the action to mean something, named by field.
    pub fn problem(&self) -> Option<&'static str> {
        match self.action {
            ActionKind::Approve if self.stage.as_deref().is_none_or(str::is_empty) => {
                Some("spec.stage: an approval names its stage")
            }
            ActionKind::Approve | ActionKind::Undo
                if self.revision.as_deref().is_none_or(str::is_empty) =>
            {
                Some("spec.revision: an approval or undo names the revision it applies to")
            }
            _ => None,
        }
    }
}

/// The signature of `spec` in `namespace`, acted by `by` at `at`, under `key`.
pub fn sign(key: &[u8], namespace: &str, spec: &RolloutActionSpec, by: &str, at: &str) -> String {
    // Infallible: HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
    let spec = serde_json::to_string(spec).unwrap_or_default();
    for part in [namespace, &spec, by, at] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Who acted and when, if `action`'s annotations carry a valid signature under `key`.
pub fn verified(key: &[u8], action: &RolloutAction) -> Option<(String, String)> {
    let annotations: &BTreeMap<String, String> = action.metadata.annotations.as_ref()?;
    let (by, at, signature) = (
        annotations.get(REQUESTED_BY)?,
        annotations.get(REQUESTED_AT)?,
        annotations.get(SIGNATURE)?,
    );
    let namespace = action.metadata.namespace.as_deref().unwrap_or_default();
    let expected = sign(key, namespace, &action.spec, by, at);
    let valid: bool = expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0;
    valid.then(|| (by.clone(), at.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(stage: &str) -> RolloutAction {
        let mut action = RolloutAction::new(
            "web-approve-1",
            RolloutActionSpec {
                access_point: "web".into(),
                action: ActionKind::Approve,
                stage: Some(stage.into()),
                revision: Some("r1".into()),
            },
        );
        action.metadata.namespace = Some("shop".into());
        action
    }

    fn stamped(key: &[u8], mut action: RolloutAction, by: &str) -> RolloutAction {
        let at = "2026-12-05T08:00:00Z";
        let namespace = action.metadata.namespace.clone().unwrap_or_default();
        let signature = sign(key, &namespace, &action.spec, by, at);
        action.metadata.annotations = Some(BTreeMap::from([
            (REQUESTED_BY.to_owned(), by.to_owned()),
            (REQUESTED_AT.to_owned(), at.to_owned()),
            (SIGNATURE.to_owned(), signature),
        ]));
        action
    }

    #[test]
    fn only_what_meridian_signed_verifies() {
        let key = b"meridian's key";
        let action = stamped(key, approval("canary"), "alice");
        assert_eq!(
            verified(key, &action),
            Some(("alice".into(), "2026-12-05T08:00:00Z".into()))
        );
        // Another signer, another approver, another stage, another namespace: all refused.
        assert_eq!(verified(b"another key", &action), None);
        let mut renamed = action.clone();
        renamed
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(REQUESTED_BY.into(), "mallory".into());
        assert_eq!(verified(key, &renamed), None);
        let mut moved = action.clone();
        moved.spec.stage = Some("rest".into());
        assert_eq!(verified(key, &moved), None);
        let mut elsewhere = action;
        elsewhere.metadata.namespace = Some("other".into());
        assert_eq!(verified(key, &elsewhere), None);
        assert_eq!(verified(key, &approval("canary")), None, "unsigned");
    }

    #[test]
    fn an_approval_names_its_stage_and_revision() {
        assert_eq!(approval("canary").spec.problem(), None);
        let mut no_stage = approval("");
        assert!(no_stage.spec.problem().unwrap().starts_with("spec.stage"));
        no_stage.spec.stage = Some("canary".into());
        no_stage.spec.revision = None;
        assert!(no_stage
            .spec
            .problem()
            .unwrap()
            .starts_with("spec.revision"));
        let pause = RolloutActionSpec {
            access_point: "web".into(),
            action: ActionKind::Pause,
            stage: None,
            revision: None,
        };
        assert_eq!(pause.problem(), None);
    }
}
