use envoy_types::pb::google::rpc::Status;

use super::*;
use crate::control_plane::xds::test_support::config;

fn request(kind: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: kind.type_url(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| {
            crate::core::json::any_to_json(any).unwrap()["name"]
                .as_str()
                .or(crate::core::json::any_to_json(any).unwrap()["clusterName"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Subscribes CDS (wildcard) and ACKs; returns the session and the last response.
fn synced_cds(spec: &[&str]) -> (SotwSession, DiscoveryResponse) {
    let mut s = SotwSession::new(config(spec, "1"));
    let r = s
        .on_request(&request(ResourceType::Cluster, &[], "", ""))
        .unwrap()
        .remove(0);
    assert!(s
        .on_request(&request(
            ResourceType::Cluster,
            &[],
            &r.version_info,
            &r.nonce
        ))
        .unwrap()
        .is_empty());
    (s, r)
}

#[test]
fn first_request_is_answered_with_full_state() {
    let (s, r) = synced_cds(&["CDS:a", "CDS:b"]);
    assert_eq!(names(&r), ["a", "b"]);
    assert_eq!(s.status()[0].state, SyncState::Synced);
}

#[test]
fn unchanged_config_is_not_resent() {
    let (mut s, _) = synced_cds(&["CDS:a"]);
    assert!(s.on_config(config(&["CDS:a"], "1")).is_empty());
}

#[test]
fn change_is_pushed_and_tracked_until_acked() {
    let (mut s, _) = synced_cds(&["CDS:a"]);
    let out = s.on_config(config(&["CDS:a"], "2"));
    assert_eq!(out.len(), 1);
    assert_eq!(s.status()[0].state, SyncState::Stale);
    s.on_request(&request(
        ResourceType::Cluster,
        &[],
        &out[0].version_info,
        &out[0].nonce,
    ))
    .unwrap();
    assert_eq!(s.status()[0].state, SyncState::Synced);
}

#[test]
fn stale_nonce_is_ignored() {
    let (mut s, first) = synced_cds(&["CDS:a"]);
    let second = s.on_config(config(&["CDS:a"], "2")).remove(0);
    // An ACK of the old nonce neither counts nor triggers a resend.
    assert!(s
        .on_request(&request(
            ResourceType::Cluster,
            &[],
            &first.version_info,
            &first.nonce
        ))
        .unwrap()
        .is_empty());
    assert_eq!(
        s.status()[0].acked_version.as_deref(),
        Some(first.version_info.as_str())
    );
    assert_eq!(
        s.status()[0].sent_nonce.as_deref(),
        Some(second.nonce.as_str())
    );
}

#[test]
fn nack_is_recorded_and_not_resent_until_input_changes() {
    let (mut s, _) = synced_cds(&["CDS:a"]);
    let bad = s.on_config(config(&["CDS:a"], "bad")).remove(0);
    let mut nack = request(ResourceType::Cluster, &[], "old", &bad.nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "invalid regex".into(),
        details: vec![],
    });
    assert!(
        s.on_request(&nack).unwrap().is_empty(),
        "NACK must not trigger a resend"
    );
    let status = &s.status()[0];
    assert_eq!(status.state, SyncState::Nacked);
    assert_eq!(status.last_nack.as_ref().unwrap().message, "invalid regex");
    assert_eq!(status.last_nack.as_ref().unwrap().version, bad.version_info);
    // Same bad input again: nothing. New input: pushed.
    assert!(s.on_config(config(&["CDS:a"], "bad")).is_empty());
    assert_eq!(s.on_config(config(&["CDS:a"], "good")).len(), 1);
    assert_eq!(s.take_events().nacks.len(), 1);
}

#[test]
fn eds_answers_only_requested_names_and_remembers_missing_ones() {
    let mut s = SotwSession::new(config(&["EDS:a", "EDS:b"], "1"));
    let r = s
        .on_request(&request(ResourceType::Endpoint, &["a", "c"], "", ""))
        .unwrap()
        .remove(0);
    assert_eq!(r.resources.len(), 1);
    s.on_request(&request(
        ResourceType::Endpoint,
        &["a", "c"],
        &r.version_info,
        &r.nonce,
    ))
    .unwrap();
    // `c` appears later and is pushed without a new request.
    let out = s.on_config(config(&["EDS:a", "EDS:b", "EDS:c"], "1"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].resources.len(), 2);
}

#[test]
fn newly_subscribed_names_are_sent_even_if_unchanged() {
    let mut s = SotwSession::new(config(&["RDS:r1", "RDS:r2"], "1"));
    let r = s
        .on_request(&request(ResourceType::Route, &["r1"], "", ""))
        .unwrap()
        .remove(0);
    let out = s
        .on_request(&request(
            ResourceType::Route,
            &["r1", "r2"],
            &r.version_info,
            &r.nonce,
        ))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].resources.len(), 2);
    // Narrowing the subscription sends nothing new for SotW RDS beyond the new set.
    let out2 = s
        .on_request(&request(
            ResourceType::Route,
            &["r1", "r2"],
            &out[0].version_info,
            &out[0].nonce,
        ))
        .unwrap();
    assert!(out2.is_empty());
}

#[test]
fn pushes_in_make_before_break_order_and_removes_clusters_last() {
    let spec1 = ["CDS:old", "EDS:old", "LDS:l", "RDS:r"];
    let mut s = SotwSession::new(config(&spec1, "1"));
    let ack = |s: &mut SotwSession, kind, names: &[&str]| {
        let r = s
            .on_request(&request(kind, names, "", ""))
            .unwrap()
            .remove(0);
        s.on_request(&request(kind, names, &r.version_info, &r.nonce))
            .unwrap();
    };
    ack(&mut s, ResourceType::Cluster, &[]);
    ack(&mut s, ResourceType::Endpoint, &["old"]);
    ack(&mut s, ResourceType::Listener, &[]);
    ack(&mut s, ResourceType::Route, &["r"]);

    // Routes move from `old` to `new`.
    let out = s.on_config(config(&["CDS:new", "EDS:new", "LDS:l", "RDS:r"], "2"));
    let kinds: Vec<_> = out
        .iter()
        .map(|r| ResourceType::from_type_url(&r.type_url).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            ResourceType::Cluster,
            ResourceType::Endpoint,
            ResourceType::Listener,
            ResourceType::Route
        ]
    );
    assert_eq!(
        names(&out[0]),
        ["new", "old"],
        "stale cluster kept until routes move"
    );

    // ACK LDS and RDS: only then is `old` removed.
    let lds = &out[2];
    assert!(s
        .on_request(&request(
            ResourceType::Listener,
            &[],
            &lds.version_info,
            &lds.nonce
        ))
        .unwrap()
        .is_empty());
    let rds = &out[3];
    let after = s
        .on_request(&request(
            ResourceType::Route,
            &["r"],
            &rds.version_info,
            &rds.nonce,
        ))
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(names(&after[0]), ["new"]);
}

#[test]
fn unknown_type_is_an_error() {
    let mut s = SotwSession::new(config(&[], "1"));
    let mut r = request(ResourceType::Cluster, &[], "", "");
    r.type_url = "type.googleapis.com/nope".into();
    assert!(s.on_request(&r).is_err());
}

#[test]
fn a_newer_push_releases_a_pending_cluster_removal() {
    let mut s = SotwSession::new(config(&["CDS:old", "LDS:l"], "1"));
    for kind in [ResourceType::Cluster, ResourceType::Listener] {
        let r = s.on_request(&request(kind, &[], "", "")).unwrap().remove(0);
        s.on_request(&request(kind, &[], &r.version_info, &r.nonce))
            .unwrap();
    }
    let first = s.on_config(config(&["CDS:new", "LDS:l"], "2"));
    assert_eq!(names(&first[0]), ["new", "old"]);
    // Before the listener is ACKed, a change arrives that does not touch listeners: the
    // stale cluster goes now instead of waiting for an ACK of a superseded response.
    let second = s.on_config(config(&["CDS:new@3", "LDS:l"], "2"));
    assert_eq!(second.len(), 1);
    assert_eq!(
        names(&second[0]),
        ["new"],
        "stale cluster must not linger forever"
    );
}

/// Subscribes CDS, EDS (a, b), LDS and RDS (r) and ACKs each first response.
fn synced_everything(spec: &[&str]) -> SotwSession {
    let mut s = SotwSession::new(config(spec, "1"));
    for (kind, names) in [
        (ResourceType::Cluster, &[][..]),
        (ResourceType::Endpoint, &["a", "b"][..]),
        (ResourceType::Listener, &[][..]),
        (ResourceType::Route, &["r"][..]),
    ] {
        let r = s
            .on_request(&request(kind, names, "", ""))
            .unwrap()
            .remove(0);
        s.on_request(&request(kind, names, &r.version_info, &r.nonce))
            .unwrap();
    }
    s
}

const WARMING: &[&str] = &["CDS:a", "CDS:b", "EDS:a", "EDS:b", "LDS:l", "RDS:r"];

#[test]
fn a_changed_cluster_is_sent_its_unchanged_endpoints_again() {
    let mut s = synced_everything(WARMING);
    let out = s.on_config(config(
        &["CDS:a@2", "CDS:b", "EDS:a", "EDS:b", "LDS:l", "RDS:r"],
        "1",
    ));
    let types: Vec<String> = out.iter().map(|r| r.type_url.clone()).collect();
    assert_eq!(
        types,
        [
            ResourceType::Cluster.type_url(),
            ResourceType::Endpoint.type_url()
        ],
        "Envoy warms cluster a until its ClusterLoadAssignment arrives"
    );
    // (Test assignments are named after their cluster and tag.)
    assert_eq!(names(&out[1]), ["a1", "b1"]);

    // An endpoint change alone is sent once, as before; nothing is forced.
    let out = s.on_config(config(
        &["CDS:a@2", "CDS:b", "EDS:a@3", "EDS:b", "LDS:l", "RDS:r"],
        "1",
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].type_url, ResourceType::Endpoint.type_url());
    assert!(s
        .on_config(config(
            &["CDS:a@2", "CDS:b", "EDS:a@3", "EDS:b", "LDS:l", "RDS:r"],
            "1"
        ))
        .is_empty());
}

#[test]
fn a_changed_listener_is_sent_its_unchanged_routes_again() {
    let mut s = synced_everything(WARMING);
    let out = s.on_config(config(
        &["CDS:a", "CDS:b", "EDS:a", "EDS:b", "LDS:l@2", "RDS:r"],
        "1",
    ));
    let types: Vec<String> = out.iter().map(|r| r.type_url.clone()).collect();
    assert_eq!(
        types,
        [
            ResourceType::Listener.type_url(),
            ResourceType::Route.type_url()
        ]
    );
}
