use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::core::model::Model;
use crate::core::overrides::refresh_overrides;
use crate::core::validate::FieldError;

const SHOP: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, generation: 4}
spec:
  template:
    service:
      metadata: {name: web}
      spec: {ports: [{name: http, port: 80}]}
    gateways:
    - metadata: {name: public}
      spec: {servers: [{port: {number: 8080, protocol: HTTP}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com]
        gateways: [public]
        http: [{route: [{destination: {host: web}}]}]
"#;

struct Fixture {
    model: Model,
    rejected: BTreeMap<ObjectKey, Rejection>,
    in_force_since: ObjectMap<u64>,
    released_at: BTreeMap<(ObjectKey, String), u64>,
    proxies: Vec<GatewayAck>,
    member_writes: MemberWrites,
    rollout: Option<RolloutStatus>,
}

impl Fixture {
    fn new(yaml: &str) -> Fixture {
        let model = crate::core::test_support::model_of(yaml, "shop");
        let in_force_since = model
            .access_points
            .keys()
            .map(|k| (k.clone(), 7u64))
            .collect();
        Fixture {
            model,
            rejected: BTreeMap::new(),
            in_force_since,
            released_at: BTreeMap::new(),
            proxies: Vec::new(),
            member_writes: MemberWrites::new(),
            rollout: None,
        }
    }

    fn published(&self) -> Published<'_> {
        Published {
            model: &self.model,
            rejected: &self.rejected,
            in_force_since: &self.in_force_since,
            released_at: &self.released_at,
        }
    }

    /// A proxy whose whole config up to snapshot `synced` is acknowledged.
    fn proxy(mut self, gateway: &str, synced: Option<u64>, nack: Option<&str>) -> Fixture {
        let acked = acked_access_points(self.published(), synced, "local");
        self.proxies.push(GatewayAck {
            node_id: format!("envoy-{}", self.proxies.len()),
            gateway: ObjectKey::new("shop", gateway),
            cluster: "local".to_owned(),
            acked: acked.into(),
            load: Vec::new(),
            nack: nack.map(str::to_owned),
            nack_of: None,
        });
        self
    }

    fn status(&self, previous: Option<&AccessPointStatus>, now: &Time) -> AccessPointStatus {
        let key = ObjectKey::new("shop", "shop");
        let clusters = ClusterRefs::all(&self.model);
        access_point_status(
            &StatusInput {
                key: &key,
                published: self.published(),
                clusters: &clusters,
                proxies: &self.proxies,
                member_writes: &self.member_writes,
                rollout: self.rollout.as_ref(),
            },
            previous,
            now,
        )
    }
}

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

/// `type=status/reason` for each condition, in order.
fn summary(status: &AccessPointStatus) -> Vec<String> {
    status
        .conditions
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect()
}

fn condition<'s>(status: &'s AccessPointStatus, kind: &str) -> &'s Condition {
    status.conditions.iter().find(|c| c.type_ == kind).unwrap()
}

#[test]
fn ready_once_every_serving_proxy_acknowledged_this_generation() {
    let status = Fixture::new(SHOP)
        .proxy("public", Some(7), None)
        .proxy("public", Some(9), None)
        .proxy("elsewhere", None, None)
        .status(None, &at(100));
    assert_eq!(
        summary(&status),
        [
            "Accepted=True/Accepted",
            "ResolvedRefs=True/ResolvedRefs",
            "Programmed=True/Programmed",
            "Ready=True/Ready"
        ]
    );
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!(status.cluster_count, Some(1));
    assert!(status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(4)));
    assert_eq!(
        condition(&status, PROGRAMMED).message,
        "2 proxies in 1 cluster(s) acknowledged this generation"
    );
}

#[test]
fn programmed_waits_for_acks_and_reports_nacks() {
    let pending = Fixture::new(SHOP)
        .proxy("public", Some(7), None)
        .proxy("public", Some(6), None)
        .status(None, &at(100));
    assert_eq!(summary(&pending)[2], "Programmed=False/Pending");
    assert_eq!(summary(&pending)[3], "Ready=False/Pending");
    assert_eq!(
        condition(&pending, PROGRAMMED).message,
        "1 of 2 proxies acknowledged this generation"
    );

    let nacked = Fixture::new(SHOP)
        .proxy("public", Some(6), Some("invalid regex"))
        .status(None, &at(100));
    let programmed = condition(&nacked, PROGRAMMED);
    assert_eq!(programmed.reason, "Rejected");
    assert!(
        programmed.message.contains("invalid regex"),
        "{programmed:?}"
    );

    let alone = Fixture::new(SHOP).status(None, &at(100));
    assert_eq!(summary(&alone)[2], "Programmed=False/NoConnectedGateways");
}

#[test]
fn a_dangling_gateway_is_not_accepted_and_a_missing_backend_is_unresolved() {
    let yaml = SHOP
        .replace("gateways: [public]", "gateways: [public, edge/missing]")
        .replace("host: web}", "host: payments}");
    let status = Fixture::new(&yaml)
        .proxy("public", Some(7), None)
        .status(None, &at(100));
    assert_eq!(
        summary(&status),
        [
            "Accepted=False/NoMatchingGateway",
            "ResolvedRefs=False/BackendNotFound",
            "Programmed=True/Programmed",
            "Ready=False/NoMatchingGateway"
        ]
    );
    assert_eq!(
        condition(&status, ACCEPTED).message,
        "spec.template.virtualServices[0].spec.gateways[1]: Gateway edge/missing does not exist in cluster local"
    );
    assert!(condition(&status, RESOLVED_REFS)
        .message
        .contains("payments.shop.svc.cluster.local"));
}

#[test]
fn a_rejected_generation_reports_its_field_errors() {
    let mut fixture = Fixture::new(SHOP);
    fixture.rejected.insert(
        ObjectKey::new("shop", "shop"),
        Rejection {
            generation: Some(5),
            errors: vec![FieldError {
                path: "spec.template.gateways[0].spec.servers".to_owned(),
                message: "at least one server is required".to_owned(),
            }],
        },
    );
    let mut fixture = fixture.proxy("public", Some(7), None);
    let status = fixture.status(None, &at(100));
    assert_eq!(
        summary(&status),
        [
            "Accepted=False/Invalid",
            "ResolvedRefs=Unknown/Invalid",
            "Programmed=False/Invalid",
            "Ready=False/Invalid"
        ]
    );
    assert_eq!(status.observed_generation, Some(5));
    assert_eq!(
        condition(&status, ACCEPTED).message,
        "field `spec.template.gateways[0].spec.servers`: at least one server is required"
    );
    // The last accepted generation still serves: what it serves stays shown.
    fixture.rejected.clear();
    let serving = fixture.status(None, &at(100));
    assert_eq!(
        (serving.cluster_count, serving.ready_clusters),
        (Some(1), Some(1))
    );
    assert_eq!(status.cluster_count, serving.cluster_count);
    assert_eq!(status.ready_clusters, serving.ready_clusters);
    assert_eq!(status.clusters, serving.clusters);
    let local = &status.clusters[0];
    assert_eq!((local.name.as_str(), local.ready), ("local", true));
}

#[test]
fn transition_times_move_only_when_a_status_flips() {
    let pending = Fixture::new(SHOP)
        .proxy("public", Some(6), None)
        .status(None, &at(100));
    let still_pending = Fixture::new(SHOP)
        .proxy("public", Some(6), None)
        .status(Some(&pending), &at(200));
    assert_eq!(pending, still_pending, "nothing changed, nothing to write");

    let done = Fixture::new(SHOP)
        .proxy("public", Some(7), None)
        .status(Some(&pending), &at(300));
    assert_eq!(condition(&done, ACCEPTED).last_transition_time, at(100));
    assert_eq!(condition(&done, PROGRAMMED).last_transition_time, at(300));
    assert_eq!(condition(&done, READY).last_transition_time, at(300));
}

#[test]
fn keys_cover_rejected_access_points_that_never_served() {
    let mut fixture = Fixture::new(SHOP);
    fixture.rejected.insert(
        ObjectKey::new("other", "new"),
        Rejection {
            generation: Some(1),
            errors: Vec::new(),
        },
    );
    let keys = access_point_keys(fixture.published());
    assert_eq!(
        keys,
        [
            ObjectKey::new("other", "new"),
            ObjectKey::new("shop", "shop")
        ]
    );
}

#[test]
fn acknowledgements_are_reported_per_access_point_generation() {
    let fixture = Fixture::new(SHOP);
    let key = ObjectKey::new("shop", "shop");
    assert!(acked_access_points(fixture.published(), None, "local").is_empty());
    assert!(acked_access_points(fixture.published(), Some(6), "local").is_empty());
    assert_eq!(
        acked_access_points(fixture.published(), Some(7), "local"),
        BTreeMap::from([(key, 4)])
    );
}

#[test]
fn the_older_access_point_keeps_a_contested_host() {
    let newer = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: thief, generation: 1, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  template:
    virtualServices:
    - metadata: {name: thief}
      spec:
        hosts: [shop.example.com]
        gateways: [public]
        http: [{route: [{destination: {host: web}}]}]
"#;
    let older = SHOP.replace(
        "name: shop, generation: 4",
        "name: shop, generation: 4, creationTimestamp: \"2026-01-01T00:00:00Z\"",
    );
    let fixture = Fixture::new(&format!("{older}\n---\n{newer}"));
    let thief = ObjectKey::new("shop", "thief");
    let clusters = ClusterRefs::all(&fixture.model);
    let status = access_point_status(
        &StatusInput {
            key: &thief,
            published: fixture.published(),
            clusters: &clusters,
            proxies: &[],
            member_writes: &MemberWrites::new(),
            rollout: None,
        },
        None,
        &at(100),
    );
    assert_eq!(summary(&status)[0], "Accepted=False/HostConflict");
    assert_eq!(
        condition(&status, ACCEPTED).message,
        "spec.template.virtualServices[0].spec.hosts: host shop.example.com on Gateway shop/public port 8080 in cluster local is already served by AccessPoint shop/shop"
    );
    assert_eq!(
        summary(&fixture.status(None, &at(100)))[0],
        "Accepted=True/Accepted"
    );
}

#[test]
fn a_failed_override_is_reported_with_its_cluster() {
    let yaml = format!(
        "{SHOP}  overrides:\n  - clusterName: local\n    patches: [{{op: remove, path: /gateways/7}}]\n"
    );
    let mut fixture = Fixture::new(&yaml);
    refresh_overrides(&mut fixture.model, None);
    let status = fixture.status(None, &at(100));
    assert_eq!(summary(&status)[0], "Accepted=False/OverrideFailed");
    let message = &condition(&status, ACCEPTED).message;
    assert!(
        message.starts_with("cluster local: spec.overrides[0]: patches[0] (/gateways/7)"),
        "{message}"
    );
}

#[test]
fn each_placed_cluster_reports_its_own_state() {
    let members = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east-1}
spec: {zone: z1}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east-2}
spec: {zone: z2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web, meridian.dev/cluster: east-1}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2], conditions: {ready: false}}]
"#;
    let ap = SHOP.replace(
        "spec:\n  template:",
        "spec:\n  placement: {clusters: [east-1, east-2]}\n  template:",
    );
    let yaml = format!(
        "{members}---{ap}  overrides:\n  - clusterName: east-2\n    patches: [{{op: remove, path: /gateways/9}}]\n"
    );
    let mut fixture = Fixture::new(&yaml);
    refresh_overrides(&mut fixture.model, None);
    let mut fixture = fixture.proxy("public", Some(7), None);
    fixture.proxies[0].cluster = "east-1".to_owned();
    let status = fixture.status(None, &at(100));
    assert_eq!(status.cluster_count, Some(2));
    assert_eq!(status.ready_clusters, Some(1));
    let east_1 = &status.clusters[0];
    assert_eq!(
        (
            east_1.name.as_str(),
            east_1.ready,
            east_1.proxies,
            east_1.acknowledged,
            east_1.endpoints
        ),
        ("east-1", true, 1, 1, 1)
    );
    let east_2 = &status.clusters[1];
    assert!(!east_2.ready);
    assert!(
        east_2
            .message
            .as_deref()
            .unwrap()
            .starts_with("spec.overrides[0]: patches[0] (/gateways/9)"),
        "{east_2:?}"
    );
}

#[test]
fn large_fleets_list_only_clusters_that_are_not_ready() {
    use crate::api::access_point::ClusterStatus;
    let fleet: Vec<ClusterStatus> = (0..100)
        .map(|i| ClusterStatus {
            name: format!("c{i}"),
            ready: i % 10 != 0,
            ..Default::default()
        })
        .collect();
    let listed = per_cluster::compact(fleet.clone());
    assert_eq!(listed.len(), 10);
    assert!(listed.iter().all(|c| !c.ready));
    assert_eq!(per_cluster::compact(fleet[..20].to_vec()).len(), 20);
}

const SHOP_TLS: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, generation: 4}
spec:
  template:
    service:
      metadata: {name: web}
      spec: {ports: [{name: http, port: 80}]}
    gateways:
    - metadata: {name: public}
      spec:
        servers:
        - {port: {number: 443, protocol: HTTPS}, hosts: [shop.example.com], tls: {mode: SIMPLE}}
        - {port: {number: 443, protocol: HTTPS}, hosts: [byo.example.com], tls: {mode: SIMPLE, credentialName: byo}}
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com, byo.example.com]
        gateways: [public]
        http: [{route: [{destination: {host: web}}]}]
"#;

#[test]
fn certificates_are_reported_per_cluster_and_a_missing_secret_is_a_resolved_refs_problem() {
    use crate::core::model::tls::{CertInfo, PrivateKeyPem, SecretMaterial, TlsServer};
    let mut fixture = Fixture::new(SHOP_TLS);
    let ap = &fixture.model.access_points[&ObjectKey::new("shop", "shop")];
    let server = &ap.spec.template.gateways[0].spec.servers[0];
    let name = TlsServer::of(&ObjectKey::new("shop", "public"), server)
        .unwrap()
        .certificate;
    fixture.model.issued.insert(
        name.clone(),
        std::sync::Arc::new(SecretMaterial::Certificate {
            chain_pem: String::new(),
            key: PrivateKeyPem::new(""),
            info: CertInfo {
                issuer: "O=meridian.dev, CN=Meridian root CA".into(),
                serial: "0a1b".into(),
                not_before: 0,
                not_after: 86_400,
                dns_names: vec!["shop.example.com".into()],
            },
        }),
    );
    let status = fixture
        .proxy("public", Some(7), None)
        .status(None, &at(100));
    let resolved = condition(&status, RESOLVED_REFS);
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("False", "InvalidCertificateRef")
    );
    assert_eq!(
        resolved.message,
        "spec.template.gateways[0].spec.servers[1].tls.credentialName: Secret shop/byo does not exist in cluster local (that TLS server is not served until it resolves)"
    );
    let certificates = &status.clusters[0].certificates;
    assert_eq!(certificates.len(), 2);
    let issued = certificates.iter().find(|c| c.secret == name).unwrap();
    assert_eq!(issued.source, "embedded");
    assert_eq!(issued.serial.as_deref(), Some("0a1b"));
    assert_eq!(issued.not_after.as_deref(), Some("1970-01-02T00:00:00Z"));
    assert_eq!(issued.dns_names, ["shop.example.com"]);
    let byo = certificates.iter().find(|c| c.source == "secret").unwrap();
    assert_eq!(byo.secret, "secret://shop/byo");
    assert_eq!(
        byo.message.as_deref(),
        Some("Secret shop/byo does not exist")
    );
}

#[test]
fn a_certificate_that_cannot_be_issued_is_a_resolved_refs_problem_not_ready() {
    use crate::core::model::tls::TlsServer;
    let mut fixture = Fixture::new(&SHOP_TLS.replace(", credentialName: byo", ""));
    let ap = &fixture.model.access_points[&ObjectKey::new("shop", "shop")];
    let server = &ap.spec.template.gateways[0].spec.servers[0];
    let name = TlsServer::of(&ObjectKey::new("shop", "public"), server)
        .unwrap()
        .certificate;
    fixture.model.issue_errors =
        std::sync::Arc::new([(name, "the CA is unavailable".to_owned())].into());
    let status = fixture
        .proxy("public", Some(7), None)
        .status(None, &at(100));
    let resolved = condition(&status, RESOLVED_REFS);
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("False", "InvalidCertificateRef")
    );
    assert!(
        resolved.message.starts_with(
            "spec.template.gateways[0].spec.servers[0].hosts: the certificate could not be issued: the CA is unavailable"
        ),
        "{}",
        resolved.message
    );
    assert_eq!(condition(&status, "Ready").status, "False");
}

/// SHOP placed on a member cluster Meridian writes Services into.
fn on_a_member() -> String {
    let member = "apiVersion: meridian.dev/v1alpha1\nkind: MemberCluster\nmetadata: {name: east}\n\
                  spec: {zone: east-1, connection: {local: true}}\n---\n";
    let placed = SHOP.replace(
        "spec:\n  template:",
        "spec:\n  placement: {clusters: [east]}\n  template:",
    );
    format!("{member}{placed}")
}

#[test]
fn applied_stands_until_a_new_leader_has_written() {
    let mut fixture = Fixture::new(&on_a_member());
    fixture.member_writes.insert(
        (ObjectKey::new("shop", "shop"), "east".to_owned()),
        MemberWrite::Applied,
    );
    let written = fixture.status(None, &at(100));
    assert_eq!(condition(&written, APPLIED).status, "True");
    assert_eq!(written.clusters[0].applied, Some(true));

    // A new leader: no member write yet. What was shown stands, transition time included.
    fixture.member_writes.clear();
    let after_failover = fixture.status(Some(&written), &at(200));
    assert_eq!(
        condition(&after_failover, APPLIED),
        condition(&written, APPLIED)
    );
    assert_eq!(after_failover.clusters[0].applied, Some(true));

    // A failure shown stands as a failure.
    fixture.member_writes.insert(
        (ObjectKey::new("shop", "shop"), "east".to_owned()),
        MemberWrite::Failed("forbidden".to_owned()),
    );
    let failed = fixture.status(Some(&written), &at(300));
    fixture.member_writes.clear();
    let failed_after_failover = fixture.status(Some(&failed), &at(400));
    assert_eq!(
        condition(&failed_after_failover, APPLIED),
        condition(&failed, APPLIED)
    );
    assert_eq!(condition(&failed, APPLIED).status, "False");

    // Nothing shown, nothing written: no condition is made up.
    assert!(fixture
        .status(None, &at(500))
        .conditions
        .iter()
        .all(|c| c.type_ != APPLIED));
}

#[test]
fn clusters_a_rollout_has_not_reached_keep_programmed_false() {
    let mut fixture = Fixture::new(SHOP).proxy("public", Some(7), None);
    let cluster = |revision: &str| crate::api::rollout::ClusterRollout {
        name: "local".to_owned(),
        revision: revision.to_owned(),
        state: "Pending".to_owned(),
        message: None,
        applied: None,
    };
    fixture.rollout = Some(RolloutStatus {
        revision: "new".to_owned(),
        phase: "AwaitingApproval".to_owned(),
        clusters: vec![cluster("old")],
        ..Default::default()
    });
    // Its proxies acknowledged the config they are served: the old revision's.
    let status = fixture.status(None, &at(100));
    let programmed = condition(&status, PROGRAMMED);
    assert_eq!(
        (programmed.status.as_str(), programmed.reason.as_str()),
        ("False", "RollingOut")
    );
    assert_eq!(
        programmed.message,
        "the rollout of revision new (AwaitingApproval) has not reached cluster(s) local \
         (revision old)"
    );
    assert_eq!(condition(&status, READY).status, "False");

    // Once it has, the proxies' acknowledgements decide again.
    fixture.rollout.as_mut().unwrap().clusters = vec![cluster("new")];
    let status = fixture.status(None, &at(200));
    assert_eq!(condition(&status, PROGRAMMED).status, "True");
}
