//! Rounds over a model and simulated proxies: the same inputs the edge task feeds.

use super::*;
use crate::core::manifest::parse_documents;
use crate::core::overrides::refresh_overrides;

/// The fleet of the end-to-end rollout tests.
const FLEET: &str = include_str!("../../../../tests/fixtures/three_clusters.yaml");

fn access_point(generation: i64, body: &str, mode: &str) -> AccessPoint {
    let yaml = format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: web, namespace: shop, generation: {generation}}}
spec:
  placement: {{clusters: [canary, east, west]}}
  rollout:
    strategy: Staged
    mode: {mode}
    stages: [{{name: canary, clusters: [canary], requireApproval: true}}]
  template:
    gateways:
    - metadata: {{name: gw}}
      spec: {{servers: [{{port: {{number: 8080, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: web}}
      spec:
        hosts: ["*"]
        gateways: [gw]
        http: [{{directResponse: {{status: 200, body: {{string: "{body}"}}}}}}]
"#
    );
    match parse_documents(&yaml, "shop").unwrap().remove(0) {
        crate::core::model::InputObject::AccessPoint(ap) => ap,
        other => panic!("{other:?}"),
    }
}

/// A model, the rollout records and one proxy per cluster that acknowledges what it is
/// served unless told to reject it.
struct Fleet {
    model: Model,
    records: Records,
    controls: RolloutControls,
    rejecting: Option<&'static str>,
    statuses: BTreeMap<ObjectKey, RolloutStatus>,
    /// Outcomes of writing the AccessPoint's Service into members.
    writes: MemberWrites,
    now: u64,
}

fn key() -> ObjectKey {
    ObjectKey::new("shop", "web")
}

impl Fleet {
    fn new() -> Fleet {
        let mut model = Model::default();
        for object in parse_documents(FLEET, "").unwrap() {
            model.apply(object);
        }
        Fleet {
            model,
            records: Records::new(),
            controls: RolloutControls::default(),
            rejecting: None,
            statuses: BTreeMap::new(),
            writes: MemberWrites::new(),
            now: 1_000,
        }
    }

    fn apply(&mut self, ap: AccessPoint) {
        self.model
            .apply(crate::core::model::InputObject::AccessPoint(ap));
        refresh_overrides(&mut self.model, None);
    }

    fn proxies(&self) -> Vec<GatewayAck> {
        ["canary", "east", "west"]
            .into_iter()
            .map(|cluster| {
                let (served, _) = self.model.served_version(&key(), cluster).unwrap();
                let generation = served.metadata.generation.unwrap();
                let rejects = self.rejecting == Some(cluster)
                    && generation
                        == self.model.access_points[&key()]
                            .metadata
                            .generation
                            .unwrap();
                GatewayAck {
                    node_id: format!("{cluster}-1"),
                    gateway: ObjectKey::new("shop", "gw"),
                    cluster: cluster.to_owned(),
                    acked: Arc::new(if rejects {
                        BTreeMap::new()
                    } else {
                        BTreeMap::from([(key(), generation)])
                    }),
                    load: Vec::new(),
                    nack: rejects.then(|| "bad route".to_owned()),
                    nack_of: None,
                }
            })
            .collect()
    }

    /// One round, with its pins served (as the index would).
    fn round(&mut self) -> &RolloutStatus {
        let controls = BTreeMap::from([(key(), self.controls.clone())]);
        let round = round(
            &self.model,
            &self.records,
            &controls,
            &self.proxies(),
            &self.writes,
            self.now,
        );
        self.now += 1_000;
        self.records = round.records;
        self.statuses = round.statuses;
        self.model.pins = Arc::new(round.pins);
        refresh_overrides(&mut self.model, None);
        &self.statuses[&key()]
    }

    fn body(&self, cluster: &str) -> String {
        let (ap, _) = self.model.served_version(&key(), cluster).unwrap();
        let vs = &ap.spec.template.virtual_services[0].spec;
        let response = vs.http[0].direct_response.as_ref().unwrap();
        serde_json::to_value(response).unwrap()["body"]["string"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn bodies(&self) -> [String; 3] {
        ["canary", "east", "west"].map(|c| self.body(c))
    }

    fn command(&mut self, command: Command) -> Result<(), CommandError> {
        apply_command(
            &self.model,
            &self.records,
            &mut self.controls,
            &key(),
            command,
            "2026-11-22T10:00:00Z",
        )
    }
}

#[test]
fn a_change_reaches_the_canary_waits_for_approval_then_reaches_the_rest() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point(1, "v1", "Serve"));
    assert_eq!(fleet.round().phase, "Succeeded");

    fleet.apply(access_point(2, "v2", "Serve"));
    // Before any round the index already holds every cluster on v1.
    assert_eq!(fleet.bodies(), ["v1", "v1", "v1"]);
    let status = fleet.round().clone();
    assert_eq!(
        (status.phase.as_str(), status.stage.as_deref()),
        ("Progressing", Some("canary"))
    );
    assert_eq!(fleet.bodies(), ["v2", "v1", "v1"]);

    let status = fleet.round().clone();
    assert_eq!(status.phase, "AwaitingApproval");
    assert!(status
        .message
        .unwrap()
        .contains("meridian approve web -n shop --stage canary"));
    let states: Vec<(&str, &str)> = status
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("canary", "Succeeded"),
            ("east", "Pending"),
            ("west", "Pending")
        ]
    );
    for _ in 0..3 {
        fleet.round();
    }
    assert_eq!(
        fleet.bodies(),
        ["v2", "v1", "v1"],
        "waiting changes nothing"
    );

    assert_eq!(
        fleet.command(Command::Approve {
            stage: "nope".into(),
            by: None
        }),
        Err(CommandError::NoSuchStage {
            key: key(),
            stage: "nope".into(),
            stages: "canary, remaining".into()
        })
    );
    fleet
        .command(Command::Approve {
            stage: "canary".into(),
            by: Some("ops".into()),
        })
        .unwrap();
    fleet.round();
    assert_eq!(fleet.bodies(), ["v2", "v2", "v2"]);
    let status = fleet.round().clone();
    assert_eq!(status.phase, "Succeeded");
    assert_eq!(
        status.completed_revision.as_deref(),
        Some(status.revision.as_str())
    );
    // Only the served revision is kept.
    assert_eq!(fleet.records[&key()].revisions.len(), 1);
}

#[test]
fn a_failed_member_write_holds_its_clusters_stage() {
    use crate::core::status::MemberWrite;
    let mut fleet = Fleet::new();
    fleet.apply(access_point(1, "v1", "Serve"));
    fleet.round();
    let write = |fleet: &mut Fleet, outcome: MemberWrite| {
        fleet.writes.insert((key(), "canary".to_owned()), outcome);
    };
    write(
        &mut fleet,
        MemberWrite::Failed("services is forbidden".into()),
    );
    fleet.apply(access_point(2, "v2", "Serve"));
    fleet.round();
    // The canary's proxies acknowledged v2, but its Service did not reach the member.
    for _ in 0..3 {
        let status = fleet.round().clone();
        assert_eq!(status.phase, "Progressing");
        let canary = &status.clusters[0];
        assert_eq!(
            (canary.name.as_str(), canary.state.as_str(), canary.applied),
            ("canary", "Progressing", Some(false))
        );
        assert!(
            canary
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("services is forbidden"),
            "{canary:?}"
        );
    }
    write(&mut fleet, MemberWrite::Applied);
    let status = fleet.round().clone();
    assert_eq!(status.phase, "AwaitingApproval");
    assert_eq!(status.clusters[0].applied, Some(true));
    assert_eq!(
        status.clusters[1].applied, None,
        "nothing is written to east"
    );
}

#[test]
fn a_nack_in_the_canary_halts_and_sends_it_back() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point(1, "v1", "Serve"));
    fleet.round();
    fleet.rejecting = Some("canary");
    fleet.apply(access_point(2, "v2", "Serve"));
    fleet.round();
    let status = fleet.round().clone();
    assert_eq!(status.phase, "Halted");
    let message = status.message.unwrap();
    assert!(
        message.contains("cluster canary rejected revision")
            && message.contains("bad route")
            && message.contains("canary back on"),
        "{message}"
    );
    // The canary is served what it took before; the rollout stays halted on v2.
    assert_eq!(fleet.bodies(), ["v1", "v1", "v1"]);
    assert_eq!(fleet.round().phase, "Halted");

    fleet.command(Command::Undo).unwrap();
    let status = fleet.round().clone();
    assert_eq!(status.phase, "RolledBack");
    assert_eq!(fleet.bodies(), ["v1", "v1", "v1"]);
    // A fixed spec rolls out again from the first stage.
    fleet.rejecting = None;
    fleet.apply(access_point(3, "v3", "Serve"));
    fleet.round();
    assert_eq!(fleet.bodies(), ["v3", "v1", "v1"]);
}

#[test]
fn shadow_mode_serves_nothing_new_until_switched_to_serve() {
    let mut fleet = Fleet::new();
    fleet.apply(access_point(1, "v1", "Shadow"));
    assert_eq!(fleet.round().phase, "Succeeded");
    fleet.apply(access_point(2, "v2", "Shadow"));
    for _ in 0..3 {
        let status = fleet.round().clone();
        assert_eq!(status.phase, "Shadow");
        assert!(status
            .message
            .unwrap()
            .contains("meridian diff web -n shop"));
    }
    assert_eq!(fleet.bodies(), ["v1", "v1", "v1"]);
    let diffs = crate::core::rollout::diff::diff(&fleet.model, &key(), "east").unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert_eq!(diffs[0].gateway, "shop/gw");
    let changes: Vec<(&str, &str)> = diffs[0]
        .changes
        .iter()
        .map(|c| (c.kind.as_str(), c.change.as_str()))
        .collect();
    assert_eq!(changes, [("RDS", "Changed")]);
    let text = &diffs[0].changes[0].diff;
    assert!(
        text.contains("-")
            && text.contains("\"v1\"")
            && text.contains("+")
            && text.contains("\"v2\""),
        "{text}"
    );
    assert!(crate::core::rollout::diff::diff(&fleet.model, &key(), "mars").is_err());
    fleet.apply(access_point(2, "v2", "Serve"));
    fleet.round();
    assert_eq!(fleet.bodies(), ["v2", "v1", "v1"]);
}

#[test]
fn commands_name_what_is_wrong() {
    let mut fleet = Fleet::new();
    assert_eq!(
        fleet.command(Command::Pause),
        Err(CommandError::NotFound(key()))
    );
    let mut all = access_point(1, "v1", "Serve");
    all.spec.rollout = None;
    fleet.apply(all);
    assert_eq!(
        fleet.command(Command::Pause),
        Err(CommandError::NotStaged(key()))
    );
    fleet.apply(access_point(1, "v1", "Serve"));
    assert_eq!(
        fleet.command(Command::Undo),
        Err(CommandError::NothingToUndo(key()))
    );
    fleet.round();
    fleet.command(Command::Pause).unwrap();
    fleet.apply(access_point(2, "v2", "Serve"));
    let status = fleet.round().clone();
    assert_eq!(fleet.bodies(), ["v1", "v1", "v1"], "paused: nobody moves");
    // The status says paused and how to resume, not what it would wait for otherwise.
    assert_eq!(status.phase, "Paused");
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("paused") && message.contains("meridian rollout resume web -n shop"),
        "{message}"
    );
    fleet.command(Command::Resume).unwrap();
    let status = fleet.round().clone();
    assert_eq!(fleet.bodies(), ["v2", "v1", "v1"]);
    assert_ne!(status.phase, "Paused");
}
