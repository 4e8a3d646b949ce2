use super::*;

const KEY: &[u8] = b"test signing key";

/// An AdmissionReview of `operation` by `user` on `object` (and `old`), as the API server
/// sends it.
fn review(
    operation: &str,
    user: &str,
    object: serde_json::Value,
    old: Option<serde_json::Value>,
) -> AdmissionRequest<RolloutAction> {
    let review: AdmissionReview<RolloutAction> =
        serde_json::from_value(review_json(operation, user, object, old)).unwrap();
    review.try_into().unwrap()
}

/// The AdmissionReview itself, as JSON.
fn review_json(
    operation: &str,
    user: &str,
    object: serde_json::Value,
    old: Option<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "meridian.dev", "version": "v1alpha1", "kind": "RolloutAction"},
            "resource": {"group": "meridian.dev", "version": "v1alpha1", "resource": "rolloutactions"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": old,
            "dryRun": false,
        }
    })
}

fn approval(annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "meridian.dev/v1alpha1",
        "kind": "RolloutAction",
        "metadata": {"generateName": "web-approve-", "namespace": "shop", "annotations": annotations},
        "spec": {"accessPoint": "web", "action": "Approve", "stage": "canary", "revision": "r1"}
    })
}

/// `object` with the response's JSON patch applied.
fn patched(object: &serde_json::Value, response: &AdmissionResponse) -> RolloutAction {
    let patch: json_patch::Patch =
        serde_json::from_slice(response.patch.as_ref().expect("a patch")).unwrap();
    let mut object = object.clone();
    json_patch::patch(&mut object, &patch).unwrap();
    serde_json::from_value(object).unwrap()
}

#[test]
fn a_create_is_stamped_with_the_authenticated_user_whatever_it_claims() {
    let object = approval(serde_json::json!({REQUESTED_BY: "mallory", "team": "payments"}));
    let response = admit(
        KEY,
        &review("CREATE", "alice", object.clone(), None),
        "2026-12-05T08:00:00Z",
    );
    assert!(response.allowed);
    let action = patched(&object, &response);
    let annotations = action.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[REQUESTED_BY], "alice");
    assert_eq!(annotations["team"], "payments", "other annotations stay");
    assert_eq!(
        verified(KEY, &action),
        Some(("alice".into(), "2026-12-05T08:00:00Z".into()))
    );
    let controls = controls_of(KEY, [&action]);
    let web = &controls[&ObjectKey::new("shop", "web")];
    assert_eq!(web.approvals.len(), 1);
    assert_eq!(web.approvals[0].by.as_deref(), Some("alice"));
    assert_eq!(
        (
            web.approvals[0].stage.as_str(),
            web.approvals[0].revision.as_str()
        ),
        ("canary", "r1")
    );
}

#[test]
fn an_incomplete_action_or_a_change_to_a_record_is_refused() {
    let mut incomplete = approval(serde_json::json!({}));
    incomplete["spec"]["stage"] = serde_json::Value::Null;
    let response = admit(KEY, &review("CREATE", "alice", incomplete, None), "now");
    assert!(!response.allowed);
    assert!(
        response.result.message.contains("spec.stage"),
        "{}",
        response.result.message
    );

    let object = approval(serde_json::json!({}));
    let created = patched(
        &object,
        &admit(KEY, &review("CREATE", "alice", object.clone(), None), "t"),
    );
    let stored = serde_json::to_value(&created).unwrap();
    let mut other_stage = stored.clone();
    other_stage["spec"]["stage"] = "rest".into();
    let response = admit(
        KEY,
        &review("UPDATE", "alice", other_stage, Some(stored.clone())),
        "t2",
    );
    assert!(!response.allowed, "the spec of a record cannot change");
    let mut other_author = stored.clone();
    other_author["metadata"]["annotations"][REQUESTED_BY] = "mallory".into();
    let response = admit(
        KEY,
        &review("UPDATE", "mallory", other_author, Some(stored.clone())),
        "t2",
    );
    assert!(!response.allowed, "nor who made it");
    let mut labelled = stored.clone();
    labelled["metadata"]["labels"] = serde_json::json!({"reviewed": "yes"});
    let response = admit(KEY, &review("UPDATE", "bob", labelled, Some(stored)), "t2");
    assert!(response.allowed, "other metadata may change");
}

#[test]
fn controls_add_up_in_order_and_ignore_the_unsigned() {
    let stamp = |spec: serde_json::Value, by: &str, at: &str| {
        let mut object = approval(serde_json::json!({}));
        object["spec"] = spec;
        object["metadata"]["name"] = format!("a-{at}").into();
        patched(
            &object,
            &admit(KEY, &review("CREATE", by, object.clone(), None), at),
        )
    };
    let pause = stamp(
        serde_json::json!({"accessPoint": "web", "action": "Pause"}),
        "alice",
        "t1",
    );
    let resume = stamp(
        serde_json::json!({"accessPoint": "web", "action": "Resume"}),
        "bob",
        "t2",
    );
    let undo = stamp(
        serde_json::json!({"accessPoint": "web", "action": "Undo", "revision": "r2"}),
        "carol",
        "t3",
    );
    let mut forged = stamp(
        serde_json::json!({"accessPoint": "web", "action": "Pause"}),
        "dave",
        "t4",
    );
    forged
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(SIGNATURE.into(), "00".into());
    let controls = controls_of(KEY, [&undo, &forged, &resume, &pause]);
    let web = &controls[&ObjectKey::new("shop", "web")];
    assert!(
        !web.paused,
        "resumed after the pause; the forged pause counts for nothing"
    );
    assert_eq!(web.undo.as_deref(), Some("r2"));
}

#[test]
fn an_object_that_is_no_rollout_action_is_denied_naming_the_field() {
    // What kubectl sends for `revision: 4633942067` unquoted in YAML: a number.
    let mut object = approval(serde_json::json!({}));
    object["spec"]["revision"] = serde_json::json!(4633942067_u64);
    let body = serde_json::to_vec(&review_json("CREATE", "alice", object, None)).unwrap();
    let answer = review_response(KEY, &body, "2026-12-05T08:00:00Z").expect("a review answer");
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("RolloutAction spec.revision: invalid type"),
        "{message}"
    );
    assert!(message.contains("quote"), "{message}");

    assert!(review_response(KEY, b"{not json", "2026-12-05T08:00:00Z").is_err());
}
