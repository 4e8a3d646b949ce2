use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use proptest::prelude::*;

use super::*;
use crate::control_plane::xds::test_support::config;
use crate::core::model::ObjectKey;
use crate::core::translate::{NodeRole, XdsTransport};

const FORGET: Duration = Duration::from_secs(9);

fn identity(gateway: &str) -> GatewayIdentity {
    GatewayIdentity {
        gateway: ObjectKey::new("edge", gateway),
        cluster: "local".into(),
        zone: String::new(),
        role: NodeRole::Gateway,
        xds: XdsTransport::Rest {
            refresh_delay_ms: 3000,
        },
    }
}

fn poller(now: Instant) -> Poller {
    Poller::new(
        "gw-1".into(),
        identity("public"),
        Duration::from_secs(3),
        now,
    )
}

fn request(version: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

fn changed(answer: PollAnswer) -> (String, Vec<String>) {
    match answer {
        PollAnswer::Changed { version, resources } => {
            (version, resources.iter().map(|r| r.name.clone()).collect())
        }
        PollAnswer::Unchanged => panic!("expected resources, got 304"),
    }
}

fn state_of(poller: &mut Poller, config: &GatewayConfig, stamp: u64, kind: &str) -> SyncState {
    let (types, _) = poller.status((config, stamp));
    types.iter().find(|t| t.kind == kind).unwrap().state
}

#[test]
fn the_version_held_is_answered_not_modified_and_a_change_with_everything() {
    let t0 = Instant::now();
    let mut p = poller(t0);
    let v1 = config(&["LDS:a", "LDS:b"], "1");
    let (version, names) = changed(p.poll(
        ResourceType::Listener,
        &request("", &[]),
        (&v1, 1),
        t0,
        FORGET,
    ));
    assert_eq!(names, ["a", "b"]);
    let again = p.poll(
        ResourceType::Listener,
        &request(&version, &[]),
        (&v1, 1),
        t0,
        FORGET,
    );
    assert_eq!(again, PollAnswer::Unchanged);
    assert_eq!(state_of(&mut p, &v1, 1, "LDS"), SyncState::Synced);

    // One resource changes: the whole set comes back, at a new version.
    let v2 = config(&["LDS:a", "LDS:b@2"], "1");
    assert_eq!(state_of(&mut p, &v2, 2, "LDS"), SyncState::Stale);
    let (next, names) = changed(p.poll(
        ResourceType::Listener,
        &request(&version, &[]),
        (&v2, 2),
        t0,
        FORGET,
    ));
    assert_ne!(next, version);
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn named_subscriptions_get_only_their_names_and_never_a_wildcard() {
    let t0 = Instant::now();
    let mut p = poller(t0);
    let c = config(&["EDS:a", "EDS:b", "EDS:c"], "1");
    let (_, names) = changed(p.poll(
        ResourceType::Endpoint,
        &request("", &["c", "a", "a"]),
        (&c, 1),
        t0,
        FORGET,
    ));
    assert_eq!(names, ["a", "c"]);
    let (_, names) = changed(p.poll(
        ResourceType::Endpoint,
        &request("", &[]),
        (&c, 1),
        t0,
        FORGET,
    ));
    assert!(names.is_empty(), "EDS has no wildcard: {names:?}");
}

#[test]
fn an_answer_not_taken_is_a_rejection_and_taking_the_next_clears_it() {
    let t0 = Instant::now();
    let mut p = poller(t0);
    let v1 = config(&["CDS:a"], "1");
    let (held, _) = changed(p.poll(
        ResourceType::Cluster,
        &request("", &[]),
        (&v1, 1),
        t0,
        FORGET,
    ));
    assert_eq!(
        p.poll(
            ResourceType::Cluster,
            &request(&held, &[]),
            (&v1, 1),
            t0,
            FORGET
        ),
        PollAnswer::Unchanged
    );
    let v2 = config(&["CDS:a"], "2");
    let (rejected, _) = changed(p.poll(
        ResourceType::Cluster,
        &request(&held, &[]),
        (&v2, 2),
        t0,
        FORGET,
    ));
    // Answered once: not yet judged.
    assert_eq!(state_of(&mut p, &v2, 2, "CDS"), SyncState::Stale);
    // It comes back still holding the old version: it did not take the new one.
    let (again, _) = changed(p.poll(
        ResourceType::Cluster,
        &request(&held, &[]),
        (&v2, 2),
        t0,
        FORGET,
    ));
    assert_eq!(again, rejected);
    assert_eq!(state_of(&mut p, &v2, 2, "CDS"), SyncState::Nacked);
    let (types, _) = p.status((&v2, 2));
    let nack = types[0].last_nack.clone().unwrap();
    assert_eq!(nack.version, rejected);
    assert!(nack.message.contains("did not take version"), "{nack:?}");

    // The input is fixed: the next version is taken, the rejection gone.
    let v3 = config(&["CDS:a"], "3");
    let (taken, _) = changed(p.poll(
        ResourceType::Cluster,
        &request(&held, &[]),
        (&v3, 3),
        t0,
        FORGET,
    ));
    assert_eq!(state_of(&mut p, &v3, 3, "CDS"), SyncState::Stale);
    p.poll(
        ResourceType::Cluster,
        &request(&taken, &[]),
        (&v3, 3),
        t0,
        FORGET,
    );
    assert_eq!(state_of(&mut p, &v3, 3, "CDS"), SyncState::Synced);
    let (types, _) = p.status((&v3, 3));
    assert_eq!(types[0].last_nack, None);
}

#[test]
fn a_client_holding_nothing_is_judged_only_after_several_answers() {
    let t0 = Instant::now();
    let mut p = poller(t0);
    let c = config(&["EDS:a"], "1");
    for _ in 0..=EMPTY_HANDED_ANSWERS {
        assert_ne!(state_of(&mut p, &c, 1, "EDS"), SyncState::Nacked);
        changed(p.poll(
            ResourceType::Endpoint,
            &request("", &["a"]),
            (&c, 1),
            t0,
            FORGET,
        ));
    }
    assert_eq!(state_of(&mut p, &c, 1, "EDS"), SyncState::Nacked);
}

#[test]
fn a_client_that_says_why_is_believed_at_once() {
    let t0 = Instant::now();
    let mut p = poller(t0);
    let c = config(&["LDS:l"], "1");
    let mut with_error = request("old", &[]);
    with_error.error_detail = Some(RpcStatus {
        code: 3,
        message: "Listener l: bind: Address already in use".into(),
        details: Vec::new(),
    });
    changed(p.poll(ResourceType::Listener, &with_error, (&c, 1), t0, FORGET));
    let (types, _) = p.status((&c, 1));
    let lds = types.iter().find(|t| t.kind == "LDS").unwrap();
    assert_eq!(lds.state, SyncState::Nacked);
    assert_eq!(
        lds.last_nack.as_ref().unwrap().message,
        "Listener l: bind: Address already in use"
    );
}

#[test]
fn a_type_is_synced_only_when_every_subscription_of_it_is() {
    let t0 = Instant::now();
    let mut p = poller(t0);
    let c = config(&["EDS:a", "EDS:b"], "1");
    let (a, _) = changed(p.poll(
        ResourceType::Endpoint,
        &request("", &["a"]),
        (&c, 1),
        t0,
        FORGET,
    ));
    let (b, _) = changed(p.poll(
        ResourceType::Endpoint,
        &request("", &["b"]),
        (&c, 1),
        t0,
        FORGET,
    ));
    p.poll(
        ResourceType::Endpoint,
        &request(&a, &["a"]),
        (&c, 1),
        t0,
        FORGET,
    );
    assert_eq!(state_of(&mut p, &c, 1, "EDS"), SyncState::Stale);
    p.poll(
        ResourceType::Endpoint,
        &request(&b, &["b"]),
        (&c, 1),
        t0,
        FORGET,
    );
    let (types, _) = p.status((&c, 1));
    let eds = types.iter().find(|t| t.kind == "EDS").unwrap();
    assert_eq!(eds.state, SyncState::Synced);
    assert_eq!(eds.resources, 2);
    assert_eq!(eds.sent_version, eds.acked_version);
}

#[test]
fn subscriptions_no_longer_polled_are_forgotten_and_the_status_recomputed_only_on_change() {
    let t0 = Instant::now();
    let mut p = poller(t0);
    let c = config(&["EDS:a", "EDS:gone"], "1");
    let (gone, _) = changed(p.poll(
        ResourceType::Endpoint,
        &request("", &["gone"]),
        (&c, 1),
        t0,
        FORGET,
    ));
    let _ = gone;
    let (a, _) = changed(p.poll(
        ResourceType::Endpoint,
        &request("", &["a"]),
        (&c, 1),
        t0,
        FORGET,
    ));
    let (_, first) = p.status((&c, 1));
    assert!(first);
    // Only `a` keeps polling; past the forget window `gone` no longer counts.
    let later = t0 + FORGET + Duration::from_secs(1);
    p.poll(
        ResourceType::Endpoint,
        &request(&a, &["a"]),
        (&c, 1),
        later,
        FORGET,
    );
    let (types, changed_now) = p.status((&c, 1));
    let eds = types.iter().find(|t| t.kind == "EDS").unwrap();
    assert_eq!((eds.state, eds.resources), (SyncState::Synced, 1));
    assert!(changed_now);
    p.poll(
        ResourceType::Endpoint,
        &request(&a, &["a"]),
        (&c, 1),
        later,
        FORGET,
    );
    let (_, changed_again) = p.status((&c, 1));
    assert!(
        !changed_again,
        "a 304 on a settled subscription changes nothing"
    );
}

#[test]
fn the_table_is_bounded_and_a_node_that_changes_identity_starts_afresh() {
    let t0 = Instant::now();
    let mut table = PollerTable::new(2);
    let refresh = Duration::from_secs(3);
    table.entry("a", &identity("public"), refresh, t0);
    table.entry(
        "b",
        &identity("public"),
        refresh,
        t0 + Duration::from_secs(1),
    );
    table.entry(
        "c",
        &identity("public"),
        refresh,
        t0 + Duration::from_secs(2),
    );
    let mut ids: Vec<&str> = table.iter().map(|p| p.node_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["b", "c"], "the least recently polled made room");

    let c = config(&["LDS:l"], "1");
    let poller = table.entry("b", &identity("public"), refresh, t0);
    changed(poller.poll(
        ResourceType::Listener,
        &request("", &[]),
        (&c, 1),
        t0,
        FORGET,
    ));
    let poller = table.entry("b", &identity("internal"), refresh, t0);
    assert_eq!(poller.identity.gateway.name, "internal");
    let (types, _) = poller.status((&c, 1));
    assert!(types.iter().all(|t| t.state == SyncState::NotSent));
    assert_eq!(table.forget(|p| p.node_id == "c"), 1);
    assert_eq!(table.len(), 1);
}

proptest! {
    /// The same resources give the same version whatever order they were added in, and a
    /// client that takes every answer is answered 304 from then on.
    #[test]
    fn versions_do_not_depend_on_order_and_a_willing_client_settles(
        names in proptest::collection::btree_set("[a-e]{1,3}", 1..12),
        seed in any::<u64>(),
    ) {
        let names: Vec<String> = names.into_iter().collect();
        let mut shuffled = names.clone();
        let mut state = seed;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (state >> 33) as usize % (i + 1);
            shuffled.swap(i, j);
        }
        let spec = |names: &[String]| names.iter().map(|n| format!("CDS:{n}")).collect::<Vec<_>>();
        let (sorted_spec, shuffled_spec) = (spec(&names), spec(&shuffled));
        let in_order = config(&sorted_spec.iter().map(String::as_str).collect::<Vec<_>>(), "t");
        let out_of_order = config(&shuffled_spec.iter().map(String::as_str).collect::<Vec<_>>(), "t");
        let all = |c: &GatewayConfig| select(c, ResourceType::Cluster, &[]);
        prop_assert_eq!(version_of(&all(&in_order)), version_of(&all(&out_of_order)));

        let t0 = Instant::now();
        let mut p = poller(t0);
        let (version, _) = changed(p.poll(ResourceType::Cluster, &request("", &[]), (&in_order, 1), t0, FORGET));
        prop_assert_eq!(
            p.poll(ResourceType::Cluster, &request(&version, &[]), (&out_of_order, 2), t0, FORGET),
            PollAnswer::Unchanged
        );
        prop_assert_eq!(state_of(&mut p, &out_of_order, 2, "CDS"), SyncState::Synced);
    }
}
