//! Rounds over a model and a simulated gateway proxy that rejects any push serving a version
//! marked bad, as Envoy rejects a whole route configuration for one bad route.

use super::*;
use crate::core::manifest::parse_documents;
use crate::core::model::InputObject;
use crate::core::overrides::refresh_overrides;

/// One AccessPoint `name` routing host `<name>.example` on the shared gateway `edge/public`;
/// `body` tells versions apart, and a body starting with `bad` is what the proxy rejects.
fn access_point(name: &str, generation: i64, body: &str) -> AccessPoint {
    let yaml = format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: {name}, namespace: shop, generation: {generation}}}
spec:
  template:
    virtualServices:
    - metadata: {{name: {name}}}
      spec:
        hosts: ["{name}.example"]
        gateways: [edge/public]
        http: [{{directResponse: {{status: 200, body: {{string: "{body}"}}}}}}]
"#
    );
    match parse_documents(&yaml, "shop").unwrap().remove(0) {
        InputObject::AccessPoint(ap) => ap,
        other => panic!("{other:?}"),
    }
}

const GATEWAY: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: public, namespace: edge, generation: 1}
spec:
  template:
    gateways:
    - metadata: {name: public}
      spec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*/*"]}]}
"#;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("shop", name)
}

/// The model, the quarantine, and one proxy of gateway `edge/public` in cluster `local`.
struct Fleet {
    model: Model,
    quarantine: Quarantine,
    records: QuarantineRecords,
    acked: BTreeMap<ObjectKey, i64>,
    nack: Option<String>,
    /// What the rejected push carried.
    nack_of: Option<BTreeMap<ObjectKey, i64>>,
}

impl Fleet {
    fn new() -> Fleet {
        let mut model = Model::default();
        for object in parse_documents(GATEWAY, "").unwrap() {
            model.apply(object);
        }
        let mut fleet = Fleet {
            model,
            quarantine: Quarantine::default(),
            records: QuarantineRecords::new(),
            acked: BTreeMap::new(),
            nack: None,
            nack_of: None,
        };
        fleet.settle();
        fleet
    }

    fn apply(&mut self, ap: AccessPoint) {
        self.model.apply(InputObject::AccessPoint(ap));
        refresh_overrides(&mut self.model, None);
    }

    fn proxy(&self) -> GatewayAck {
        GatewayAck {
            node_id: "gw-1".to_owned(),
            gateway: ObjectKey::new("edge", "public"),
            cluster: "local".to_owned(),
            acked: Arc::new(self.acked.clone()),
            nack: self.nack.clone(),
            nack_of: self.nack_of.clone().map(Arc::new),
            load: Vec::new(),
        }
    }

    /// The proxy gets what the model serves: all of it, or a NACK if any of it is bad.
    fn push(&mut self) {
        let served: BTreeMap<ObjectKey, (i64, bool)> = self
            .model
            .access_points
            .keys()
            .filter_map(|key| {
                let (ap, _) = self.model.served_version(key, "local")?;
                let body = &ap.spec.template.virtual_services.first()?.spec.http[0];
                let bad = format!("{body:?}").contains("\"bad");
                Some((key.clone(), (ap.metadata.generation.unwrap_or(0), bad)))
            })
            .collect();
        if served.values().any(|(_, bad)| *bad) {
            self.nack = Some("route: invalid regex".to_owned());
            self.nack_of = Some(served.iter().map(|(k, (g, _))| (k.clone(), *g)).collect());
        } else {
            self.acked = served.iter().map(|(k, (g, _))| (k.clone(), *g)).collect();
            self.nack = None;
            self.nack_of = None;
        }
    }

    /// One round: the quarantine decides, the index applies its pins, the proxy is pushed.
    fn round(&mut self) {
        let proxy = self.proxy();
        self.records = self.quarantine.round(&self.model, &[proxy], &self.records);
        self.model.pins = Arc::new(pins(&self.records));
        refresh_overrides(&mut self.model, None);
        self.push();
    }

    /// Rounds until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10 {
            let before = (self.records.clone(), self.acked.clone(), self.nack.clone());
            self.round();
            if before == (self.records.clone(), self.acked.clone(), self.nack.clone()) {
                return;
            }
        }
        panic!("no fixed point: {:?}", self.records);
    }

    /// The generation of `name` the proxy serves.
    fn serving(&self, name: &str) -> Option<i64> {
        self.acked.get(&key(name)).copied()
    }

    fn hold(&self, name: &str) -> Option<&Hold> {
        self.records.get(&key(name))?.clusters.get("local")
    }
}

#[test]
fn a_rejected_change_is_held_back_and_the_others_keep_moving() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point("a", 1, "a1"));
    fleet.apply(access_point("b", 1, "b1"));
    fleet.settle();
    assert_eq!((fleet.serving("a"), fleet.serving("b")), (Some(1), Some(1)));

    // B's change is rejected: it is held at what the proxy accepted before.
    fleet.apply(access_point("b", 2, "bad regex"));
    fleet.settle();
    let hold = fleet.hold("b").expect("b is held");
    assert!(hold.confirmed);
    assert!(
        hold.reason.contains("proxy gw-1: route: invalid regex"),
        "{hold:?}"
    );
    assert_eq!(fleet.nack, None);
    assert_eq!(fleet.serving("b"), Some(1));

    // A's next change reaches the proxy although B's is still bad.
    fleet.apply(access_point("a", 2, "a2"));
    fleet.settle();
    assert_eq!(fleet.serving("a"), Some(2));
    assert_eq!(fleet.serving("b"), Some(1));

    // Status says why B is behind.
    let pin = &fleet.model.pins[&key("b")];
    assert!(pin.rejected["local"].contains("revision"), "{pin:?}");

    // B fixed: tried again, served, and the hold is gone.
    fleet.apply(access_point("b", 3, "b3"));
    fleet.settle();
    assert_eq!(fleet.serving("b"), Some(3));
    assert!(fleet.records.is_empty());
}

#[test]
fn without_the_quarantine_one_rejected_change_blocks_the_rest() {
    // The premise the quarantine exists for: served as is, B's bad change keeps A's back.
    let mut fleet = Fleet::new();
    fleet.apply(access_point("a", 1, "a1"));
    fleet.apply(access_point("b", 1, "b1"));
    fleet.settle();
    fleet.apply(access_point("b", 2, "bad regex"));
    fleet.apply(access_point("a", 2, "a2"));
    fleet.push();
    assert_eq!(fleet.serving("a"), Some(1));
    assert!(fleet.nack.is_some());
}

#[test]
fn changes_rejected_together_are_tried_one_at_a_time() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point("a", 1, "a1"));
    fleet.apply(access_point("b", 1, "b1"));
    fleet.settle();

    // One push changes both; only B's is bad. Both are held, then tried alone: A goes through,
    // B is found out.
    fleet.apply(access_point("a", 2, "a2"));
    fleet.apply(access_point("b", 2, "bad regex"));
    fleet.settle();
    assert_eq!(fleet.serving("a"), Some(2));
    assert_eq!(fleet.serving("b"), Some(1));
    assert!(fleet.hold("a").is_none());
    assert!(fleet.hold("b").is_some_and(|h| h.confirmed));
}

#[test]
fn a_new_access_point_that_is_rejected_is_withheld() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point("a", 1, "a1"));
    fleet.settle();
    fleet.apply(access_point("b", 1, "bad regex"));
    fleet.settle();
    assert_eq!(fleet.hold("b").map(|h| h.serving.clone()), Some(None));
    assert!(fleet.model.pins[&key("b")].withheld.contains("local"));
    assert_eq!(fleet.serving("b"), None);
    assert_eq!(fleet.nack, None);

    fleet.apply(access_point("a", 2, "a2"));
    fleet.settle();
    assert_eq!(fleet.serving("a"), Some(2));
}

#[test]
fn holds_survive_a_restart_and_a_change_made_meanwhile_lifts_them() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point("a", 1, "a1"));
    fleet.apply(access_point("b", 1, "b1"));
    fleet.settle();
    fleet.apply(access_point("b", 2, "bad regex"));
    fleet.settle();

    // A restart: the records come back from disk, memory is empty.
    fleet.quarantine = Quarantine::default();
    fleet.settle();
    assert_eq!(fleet.serving("b"), Some(1));
    assert!(fleet.hold("b").is_some());

    fleet.quarantine = Quarantine::default();
    fleet.apply(access_point("b", 3, "b3"));
    fleet.settle();
    assert_eq!(fleet.serving("b"), Some(3));
    assert!(fleet.records.is_empty());
}

#[test]
fn a_second_bad_change_falls_back_to_what_was_accepted_before_both() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point("b", 1, "b1"));
    fleet.settle();
    fleet.apply(access_point("b", 2, "bad one"));
    fleet.settle();
    fleet.apply(access_point("b", 3, "bad two"));
    fleet.settle();
    assert_eq!(fleet.serving("b"), Some(1));
    assert_eq!(fleet.nack, None);
}

#[test]
fn staged_access_points_are_left_to_their_rollout() {
    let mut fleet = Fleet::new();
    let mut b = access_point("b", 1, "b1");
    b.spec.rollout = Some(crate::api::rollout::RolloutSpec {
        strategy: crate::api::rollout::RolloutStrategy::Staged,
        ..Default::default()
    });
    fleet.apply(b.clone());
    fleet.settle();
    let mut bad = access_point("b", 2, "bad regex");
    bad.spec.rollout = b.spec.rollout.clone();
    fleet.apply(bad);
    fleet.settle();
    assert!(fleet.records.is_empty());
    assert!(fleet.nack.is_some());
}

#[test]
fn a_long_rejection_is_cut_short() {
    let proxy = GatewayAck {
        node_id: "n".to_owned(),
        gateway: ObjectKey::new("edge", "public"),
        cluster: "local".to_owned(),
        acked: Arc::default(),
        nack: None,
        nack_of: None,
        load: Vec::new(),
    };
    let long = "é".repeat(MAX_REASON);
    let cut = reason(&proxy, &long);
    assert!(cut.len() < MAX_REASON + 20 && cut.ends_with('…'), "{cut}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// An edit: which AccessPoint, whether its new version is bad, and whether the fleet
    /// settles before the next edit (or the next one lands in the same push).
    fn edits() -> impl Strategy<Value = Vec<(usize, bool, bool)>> {
        proptest::collection::vec((0..3usize, any::<bool>(), any::<bool>()), 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// However edits interleave, once the fleet settles the proxy rejects nothing, every
        /// AccessPoint whose latest version is good is served it, and one whose latest is bad is
        /// served a good version of its own, no older than the last it was settled on (or
        /// nothing, if it never was).
        #[test]
        fn settled_fleets_serve_every_good_latest_version(edits in edits()) {
            let names = ["a", "b", "c"];
            let mut fleet = Fleet::new();
            let mut generation = 0;
            let mut latest: BTreeMap<&str, (i64, bool)> = BTreeMap::new();
            let mut good: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
            let mut settled_good: BTreeMap<&str, i64> = BTreeMap::new();
            for (which, bad, settle) in edits {
                let name = names[which];
                generation += 1;
                let body = if bad { format!("bad {generation}") } else { format!("ok {generation}") };
                fleet.apply(access_point(name, generation, &body));
                latest.insert(name, (generation, bad));
                if !bad {
                    good.entry(name).or_default().insert(generation);
                }
                if settle {
                    fleet.settle();
                    for name in names {
                        if let Some(served) = fleet.serving(name) {
                            settled_good.insert(name, served);
                        }
                    }
                }
            }
            fleet.settle();
            prop_assert_eq!(&fleet.nack, &None);
            for (name, (generation, bad)) in &latest {
                let served = fleet.serving(name);
                if !bad {
                    prop_assert_eq!(served, Some(*generation), "{} {:?}", name, fleet.records);
                    continue;
                }
                if let Some(served) = served {
                    prop_assert!(good.get(name).is_some_and(|g| g.contains(&served)));
                }
                if let Some(floor) = settled_good.get(name) {
                    prop_assert!(served.is_some_and(|s| s >= *floor), "{} {:?} {:?}", name, served, fleet.records);
                }
            }
        }
    }
}

/// An edit made right after a rejected push, before the proxy was pushed it, is not blamed
/// for that rejection: it is tried, not held.
#[test]
fn a_fix_made_before_the_next_push_is_not_held_for_the_earlier_rejection() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point("a", 1, "one"));
    fleet.settle();
    fleet.apply(access_point("a", 2, "bad"));
    fleet.round();
    assert!(fleet.nack.is_some(), "the proxy rejected generation 2");
    // The fix lands before the quarantine's next round; the proxy still reports the NACK of
    // the push that carried generation 2.
    fleet.apply(access_point("a", 3, "fixed"));
    fleet.settle();
    assert_eq!(fleet.hold("a"), None);
    assert_eq!(fleet.serving("a"), Some(3));
}
