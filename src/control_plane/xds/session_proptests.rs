//! Property tests of the ADS state machines: any sequence of proxy requests (ACKs, NACKs,
//! stale nonces, subscriptions) and configuration changes is handled without a panic, and the
//! protocol rules hold after every step.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status;
use proptest::prelude::*;

use super::delta::DeltaSession;
use super::sotw::SotwSession;
use super::test_support::config;
use crate::core::resources::ResourceType;

const KINDS: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::Endpoint,
    ResourceType::Listener,
    ResourceType::Route,
];

/// Three configurations to move between: resources change, appear and disappear.
fn configs() -> [&'static [&'static str]; 3] {
    [
        &["CDS:a", "CDS:b", "EDS:a", "EDS:b", "LDS:l", "RDS:r"],
        &["CDS:a@2", "EDS:a@2", "LDS:l", "LDS:m", "RDS:r", "RDS:s"],
        &["CDS:c", "EDS:c", "LDS:l@3", "RDS:r@3"],
    ]
}

#[derive(Clone, Debug)]
enum Step {
    /// A request of `kind` for some of the names; answering the latest response, an older
    /// one, or none; NACKing it or not.
    Request {
        kind: usize,
        names: Vec<&'static str>,
        answer: Answer,
        nack: bool,
    },
    Config(usize),
}

#[derive(Clone, Copy, Debug)]
enum Answer {
    Latest,
    Stale,
    None,
}

fn step() -> impl Strategy<Value = Step> {
    let names = proptest::sample::subsequence(vec!["a", "b", "c", "r", "s", "*"], 0..4);
    let answer = prop_oneof![
        Just(Answer::Latest),
        Just(Answer::Stale),
        Just(Answer::None)
    ];
    prop_oneof![
        3 => (0..4usize, names, answer, any::<bool>()).prop_map(|(kind, names, answer, nack)| {
            Step::Request { kind, names, answer, nack }
        }),
        1 => (0..3usize).prop_map(Step::Config),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Nonces only grow; a NACKed response is not sent again until the configuration
    /// changes or the proxy subscribes to more.
    #[test]
    fn sotw_sessions_keep_the_protocol_rules(steps in proptest::collection::vec(step(), 1..40)) {
        let configs = configs();
        let mut session = SotwSession::new(config(configs[0], "1"));
        let mut last_nonce = 0u64;
        let mut sent: BTreeMap<ResourceType, (String, String)> = BTreeMap::new();
        let mut nacked: BTreeMap<ResourceType, String> = BTreeMap::new();
        let mut subscribed: BTreeMap<ResourceType, Vec<&str>> = BTreeMap::new();
        for step in steps {
            let responses = match step {
                Step::Config(i) => {
                    nacked.clear();
                    session.on_config(config(configs[i], "1"))
                }
                Step::Request { kind, names, answer, nack } => {
                    let kind = KINDS[kind];
                    let (version, nonce) = match (answer, sent.get(&kind)) {
                        (Answer::Latest, Some((v, n))) => (v.clone(), n.clone()),
                        (Answer::Stale, Some(_)) => ("old".to_owned(), "0".to_owned()),
                        _ => (String::new(), String::new()),
                    };
                    let latest = matches!(answer, Answer::Latest) && sent.contains_key(&kind);
                    let nacks = nack && latest;
                    if nacks {
                        nacked.insert(kind, version.clone());
                    }
                    let request = DiscoveryRequest {
                        type_url: kind.type_url(),
                        resource_names: names.iter().map(|n| n.to_string()).collect(),
                        version_info: version,
                        response_nonce: nonce,
                        error_detail: nacks.then(|| Status { code: 3, message: "no".into(), ..Default::default() }),
                        ..Default::default()
                    };
                    // A changed subscription is answered, whatever was NACKed before (a request
                    // with a stale nonce is ignored, its subscription too).
                    let stale = matches!(answer, Answer::Stale) && sent.contains_key(&kind);
                    if !stale && subscribed.insert(kind, names.clone()).is_some_and(|before| before != names) {
                        nacked.remove(&kind);
                    }
                    session.on_request(&request).unwrap()
                }
            };
            for response in responses {
                let nonce: u64 = response.nonce.parse().unwrap();
                prop_assert!(nonce > last_nonce, "nonce {} after {}", nonce, last_nonce);
                last_nonce = nonce;
                let kind = ResourceType::from_type_url(&response.type_url).unwrap();
                if let Some(version) = nacked.get(&kind) {
                    prop_assert_ne!(&response.version_info, version, "a NACKed version resent");
                }
                sent.insert(kind, (response.version_info.clone(), response.nonce.clone()));
            }
            let _ = session.status();
            let _ = session.take_events();
        }
    }

    /// Nonces only grow, and a removal names only a resource the proxy was sent.
    #[test]
    fn delta_sessions_keep_the_protocol_rules(steps in proptest::collection::vec(step(), 1..40)) {
        let configs = configs();
        let mut session = DeltaSession::new(config(configs[0], "1"));
        let mut last_nonce = 0u64;
        let mut latest: BTreeMap<ResourceType, String> = BTreeMap::new();
        let mut held: BTreeMap<ResourceType, std::collections::BTreeSet<String>> = BTreeMap::new();
        for step in steps {
            let responses = match step {
                Step::Config(i) => session.on_config(config(configs[i], "1")),
                Step::Request { kind, names, answer, nack } => {
                    let kind = KINDS[kind];
                    let nonce = match (answer, latest.get(&kind)) {
                        (Answer::Latest, Some(n)) => n.clone(),
                        (Answer::Stale, Some(_)) => "0".to_owned(),
                        _ => String::new(),
                    };
                    let request = DeltaDiscoveryRequest {
                        type_url: kind.type_url(),
                        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
                        response_nonce: nonce.clone(),
                        error_detail: (nack && !nonce.is_empty()).then(|| Status { code: 3, message: "no".into(), ..Default::default() }),
                        ..Default::default()
                    };
                    session.on_request(&request).unwrap()
                }
            };
            for response in responses {
                let nonce: u64 = response.nonce.parse().unwrap();
                prop_assert!(nonce > last_nonce, "nonce {} after {}", nonce, last_nonce);
                last_nonce = nonce;
                let kind = ResourceType::from_type_url(&response.type_url).unwrap();
                let held = held.entry(kind).or_default();
                for name in &response.removed_resources {
                    prop_assert!(held.remove(name), "removed {} which was never sent", name);
                }
                for resource in &response.resources {
                    held.insert(resource.name.clone());
                }
                latest.insert(kind, response.nonce.clone());
            }
            let _ = session.status();
            let _ = session.take_events();
        }
    }
}
