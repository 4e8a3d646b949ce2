use envoy_types::pb::google::rpc::Status;

use super::*;
use crate::control_plane::xds::test_support::config;

fn request(kind: ResourceType, subscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: kind.type_url(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn wildcard_cds_gets_everything_then_only_changes() {
    let mut s = DeltaSession::new(config(&["CDS:a", "CDS:b"], "1"));
    let r = s
        .on_request(&request(ResourceType::Cluster, &[], ""))
        .unwrap()
        .remove(0);
    assert_eq!(names(&r), ["a", "b"]);
    assert!(s
        .on_request(&request(ResourceType::Cluster, &[], &r.nonce))
        .unwrap()
        .is_empty());
    assert_eq!(s.status()[0].state, SyncState::Synced);

    let out = s.on_config(config(&["CDS:a", "CDS:b@2"], "1"));
    assert_eq!(out.len(), 1);
    assert_eq!(names(&out[0]), ["b"], "only the changed resource is sent");
    assert!(out[0].removed_resources.is_empty());
}

#[test]
fn removals_are_explicit() {
    let mut s = DeltaSession::new(config(&["CDS:a", "CDS:b"], "1"));
    let r = s
        .on_request(&request(ResourceType::Cluster, &[], ""))
        .unwrap()
        .remove(0);
    s.on_request(&request(ResourceType::Cluster, &[], &r.nonce))
        .unwrap();
    let out = s.on_config(config(&["CDS:a"], "1"));
    assert_eq!(out[0].removed_resources, ["b"]);
    assert!(out[0].resources.is_empty());
}

#[test]
fn initial_versions_avoid_resending_what_the_proxy_has() {
    let cfg = config(&["CDS:a", "CDS:b"], "1");
    let a_version = cfg.get(ResourceType::Cluster, "a").unwrap().version.clone();
    let mut s = DeltaSession::new(cfg);
    let mut req = request(ResourceType::Cluster, &[], "");
    req.initial_resource_versions.insert("a".into(), a_version);
    req.initial_resource_versions
        .insert("gone".into(), "x".into());
    let r = s.on_request(&req).unwrap().remove(0);
    assert_eq!(names(&r), ["b"]);
    assert_eq!(r.removed_resources, ["gone"]);
}

#[test]
fn nacked_version_is_not_resent_until_it_changes() {
    let mut s = DeltaSession::new(config(&["CDS:a"], "1"));
    let r = s
        .on_request(&request(ResourceType::Cluster, &[], ""))
        .unwrap()
        .remove(0);
    s.on_request(&request(ResourceType::Cluster, &[], &r.nonce))
        .unwrap();
    let bad = s.on_config(config(&["CDS:a"], "bad")).remove(0);
    let mut nack = request(ResourceType::Cluster, &[], &bad.nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "rejected".into(),
        details: vec![],
    });
    assert!(s.on_request(&nack).unwrap().is_empty());
    assert_eq!(s.status()[0].state, SyncState::Nacked);
    assert_eq!(
        s.status()[0].last_nack.as_ref().unwrap().message,
        "rejected"
    );
    assert!(s.on_config(config(&["CDS:a"], "bad")).is_empty());
    assert_eq!(s.on_config(config(&["CDS:a"], "fixed")).len(), 1);
}

#[test]
fn explicit_subscriptions_and_resubscribe() {
    let mut s = DeltaSession::new(config(&["EDS:a", "EDS:b"], "1"));
    let r = s
        .on_request(&request(ResourceType::Endpoint, &["a", "missing"], ""))
        .unwrap()
        .remove(0);
    assert_eq!(names(&r), ["a"]);
    // b subscribed later is sent; re-subscribing a sends it again.
    let out = s
        .on_request(&request(ResourceType::Endpoint, &["b", "a"], &r.nonce))
        .unwrap();
    assert_eq!(names(&out[0]), ["a", "b"]);
    // `missing` appears later and is pushed.
    let out = s.on_config(config(&["EDS:a", "EDS:b", "EDS:missing"], "1"));
    assert_eq!(names(&out[0]), ["missing"]);
}

#[test]
fn first_request_is_answered_even_when_empty() {
    let mut s = DeltaSession::new(config(&[], "1"));
    let out = s
        .on_request(&request(ResourceType::Listener, &[], ""))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].resources.is_empty());
}

#[test]
fn cluster_removal_waits_for_route_ack() {
    let mut s = DeltaSession::new(config(&["CDS:old", "RDS:r"], "1"));
    for (kind, subs) in [
        (ResourceType::Cluster, vec![]),
        (ResourceType::Route, vec!["r"]),
    ] {
        let r = s.on_request(&request(kind, &subs, "")).unwrap().remove(0);
        s.on_request(&request(kind, &[], &r.nonce)).unwrap();
    }
    let out = s.on_config(config(&["CDS:new", "RDS:r"], "2"));
    assert_eq!(out.len(), 2);
    assert_eq!(names(&out[0]), ["new"]);
    assert!(out[0].removed_resources.is_empty());
    let after = s
        .on_request(&request(ResourceType::Route, &[], &out[1].nonce))
        .unwrap();
    assert_eq!(after[0].removed_resources, ["old"]);
}

/// Subscribes CDS (wildcard), EDS (a, b), LDS (wildcard) and RDS (r) and ACKs each.
fn synced_everything(spec: &[&str]) -> DeltaSession {
    let mut s = DeltaSession::new(config(spec, "1"));
    for (kind, names) in [
        (ResourceType::Cluster, &[][..]),
        (ResourceType::Endpoint, &["a", "b"][..]),
        (ResourceType::Listener, &[][..]),
        (ResourceType::Route, &["r"][..]),
    ] {
        let r = s.on_request(&request(kind, names, "")).unwrap().remove(0);
        s.on_request(&request(kind, &[], &r.nonce)).unwrap();
    }
    s
}

#[test]
fn a_changed_cluster_is_sent_its_unchanged_endpoints_again() {
    let spec = ["CDS:a", "CDS:b", "EDS:a", "EDS:b", "LDS:l", "RDS:r"];
    let mut s = synced_everything(&spec);
    let out = s.on_config(config(
        &["CDS:a@2", "CDS:b", "EDS:a", "EDS:b", "LDS:l", "RDS:r"],
        "1",
    ));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        (out[0].type_url.clone(), names(&out[0])),
        (ResourceType::Cluster.type_url(), vec!["a"])
    );
    assert_eq!(
        (out[1].type_url.clone(), names(&out[1])),
        (ResourceType::Endpoint.type_url(), vec!["a"]),
        "only the changed cluster's assignment, though unchanged"
    );
}

#[test]
fn a_changed_listener_is_sent_its_unchanged_routes_again() {
    let spec = ["CDS:a", "CDS:b", "EDS:a", "EDS:b", "LDS:l", "RDS:r"];
    let mut s = synced_everything(&spec);
    let out = s.on_config(config(
        &["CDS:a", "CDS:b", "EDS:a", "EDS:b", "LDS:l@2", "RDS:r"],
        "1",
    ));
    let sent: Vec<_> = out.iter().map(|r| (r.type_url.clone(), names(r))).collect();
    assert_eq!(
        sent,
        [
            (ResourceType::Listener.type_url(), vec!["l"]),
            (ResourceType::Route.type_url(), vec!["r"])
        ]
    );
}
