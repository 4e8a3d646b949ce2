//! The index: a synchronous store fed by providers with `apply`/`delete`, publishing immutable
//! snapshots of accepted input on a `tokio::sync::watch` channel.
//!
//! Architecture Invariant: an AccessPoint that fails validation never replaces its last
//! accepted version; the snapshot's model holds only accepted objects. Rejections travel in
//! the snapshot beside the model so status writers can report them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::core::expand::ModelChanges;
use crate::core::model::export::ExportPolicy;
use crate::core::model::revision::Pins;
use crate::core::model::tls::SecretMaterial;
use crate::core::model::vip::{VipError, VipTable};
use crate::core::model::{InputObject, Kind, Model, ObjectKey, ObjectMap};
use crate::core::overrides::{refresh_overrides, refresh_overrides_after};
use crate::core::status::Published;
use crate::core::validate::{
    validate_access_point, validate_certificate_names, validate_service, FieldError, Rejection,
};

/// An immutable view of accepted input, numbered by generation.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub model: Model,
    /// AccessPoints whose latest version was rejected (an older one may still be in `model`).
    pub rejected: BTreeMap<ObjectKey, Rejection>,
    /// The snapshot generation in which each accepted AccessPoint's current version first
    /// appeared: a proxy that has acknowledged that snapshot (or a later one) serves it.
    pub in_force_since: ObjectMap<u64>,
    /// The generation in which a rollout last moved each (AccessPoint, cluster) to another
    /// revision: a proxy there that acknowledged it serves the revision its cluster is pinned to.
    pub released_at: BTreeMap<(ObjectKey, String), u64>,
    /// When this snapshot was published (for convergence metrics).
    pub published_at: Instant,
    /// What changed in the model in each of the last few generations.
    pub changes: Arc<VecDeque<(u64, Arc<ModelChanges>)>>,
}

/// Generations whose model changes a snapshot remembers.
const CHANGE_LOG_LENGTH: usize = 32;
/// Objects changed in one generation beyond which it counts as a change of everything (a
/// start or a resync), so the log stays small.
const CHANGED_OBJECTS_TRACKED: usize = 1024;

impl Snapshot {
    /// What changed in the model since `generation` (everything, if that is too long ago).
    pub fn changes_since(&self, generation: u64) -> ModelChanges {
        let remembered = self
            .changes
            .front()
            .is_some_and(|(first, _)| *first <= generation + 1);
        if !remembered && generation < self.generation {
            return ModelChanges {
                everything: true,
                ..ModelChanges::default()
            };
        }
        let mut out = ModelChanges::default();
        for (_, changes) in self.changes.iter().filter(|(g, _)| *g > generation) {
            out.merge(changes);
        }
        out
    }

    pub fn published(&self) -> Published<'_> {
        Published {
            model: &self.model,
            rejected: &self.rejected,
            in_force_since: &self.in_force_since,
            released_at: &self.released_at,
        }
    }
}

pub struct Index {
    model: Model,
    rejected: BTreeMap<ObjectKey, Rejection>,
    in_force_since: ObjectMap<u64>,
    released_at: BTreeMap<(ObjectKey, String), u64>,
    generation: u64,
    dirty: bool,
    /// Model changes since the last publish, and those of the generations before.
    changes: ModelChanges,
    change_log: VecDeque<(u64, Arc<ModelChanges>)>,
    tx: watch::Sender<Arc<Snapshot>>,
    /// Host names no Gateway gets a certificate issued for.
    reserved_cert_names: Vec<String>,
}

impl Index {
    pub fn new() -> (Index, watch::Receiver<Arc<Snapshot>>) {
        Index::with_export_policy(ExportPolicy::default())
    }

    /// An index whose model applies these mesh-wide `exportTo` defaults.
    pub fn with_export_policy(export: ExportPolicy) -> (Index, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot {
            generation: 0,
            model: Model::default(),
            rejected: BTreeMap::new(),
            in_force_since: ObjectMap::new(),
            released_at: BTreeMap::new(),
            published_at: Instant::now(),
            changes: Arc::default(),
        }));
        let index = Index {
            model: Model {
                export,
                ..Model::default()
            },
            rejected: BTreeMap::new(),
            in_force_since: ObjectMap::new(),
            released_at: BTreeMap::new(),
            generation: 0,
            dirty: false,
            changes: ModelChanges::default(),
            change_log: VecDeque::new(),
            tx,
            reserved_cert_names: Vec::new(),
        };
        (index, rx)
    }

    /// Host names the embedded CA must not issue to Gateways: AccessPoints asking for them are
    /// rejected.
    pub fn reserve_cert_names(&mut self, names: Vec<String>) {
        self.reserved_cert_names = names;
    }

    /// Applies an object. An invalid AccessPoint is rejected with its field errors and the
    /// previously accepted version (if any) stays in force.
    pub fn apply(&mut self, object: InputObject) -> Result<(), Vec<FieldError>> {
        let key = object.key();
        if let InputObject::AccessPoint(ap) = &object {
            let mut errors = validate_access_point(&ap.spec);
            errors.extend(validate_certificate_names(
                &ap.spec,
                &self.reserved_cert_names,
            ));
            if !errors.is_empty() {
                let rejection = Rejection {
                    generation: ap.metadata.generation,
                    errors: errors.clone(),
                };
                if self.rejected.get(&key) != Some(&rejection) {
                    self.rejected.insert(key, rejection);
                    self.dirty = true;
                }
                return Err(errors);
            }
            self.dirty |= self.rejected.remove(&key).is_some();
        }
        if let InputObject::Service(service) = &object {
            let errors = validate_service(service);
            if !errors.is_empty() {
                return Err(errors);
            }
        }
        let kind = object.kind();
        // What the AccessPoint served where no override applied: a cluster whose override
        // starts failing with this version keeps it.
        let previous = match kind {
            Kind::AccessPoint => self
                .model
                .access_points
                .get(&key)
                .map(|ap| Arc::new(ap.spec.template.clone())),
            _ => None,
        };
        if self.model.apply(object) {
            self.dirty = true;
            self.record_change(kind, &key);
            match kind {
                Kind::AccessPoint => {
                    refresh_overrides_after(&mut self.model, &key, previous);
                    self.in_force_since.insert(key, self.generation + 1);
                }
                // Cluster labels decide which overrides apply.
                Kind::MemberCluster => refresh_overrides(&mut self.model, None),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) {
        if kind == Kind::AccessPoint {
            self.dirty |= self.rejected.remove(key).is_some();
            self.in_force_since.remove(key);
            self.released_at.retain(|(k, _), _| k != key);
        }
        if self.model.delete(kind, key) {
            self.dirty = true;
            self.record_change(kind, key);
            match kind {
                Kind::AccessPoint => refresh_overrides(&mut self.model, Some(key)),
                Kind::MemberCluster => refresh_overrides(&mut self.model, None),
                _ => {}
            }
        }
    }

    /// Replaces the certificates Meridian issued, and why some could not be (from the
    /// certificate manager).
    pub fn set_issued(
        &mut self,
        issued: BTreeMap<String, Arc<SecretMaterial>>,
        errors: BTreeMap<String, String>,
    ) {
        if self.model.issued != issued {
            self.model.issued = issued;
            self.dirty = true;
            self.changes.everything = true;
        }
        if *self.model.issue_errors != errors {
            // Status only: translation does not read them.
            self.model.issue_errors = Arc::new(errors);
            self.dirty = true;
        }
    }

    /// Replaces the VIP table and allocation errors (from the VIP allocator).
    pub fn set_vips(&mut self, vips: VipTable, errors: Vec<VipError>) {
        if *self.model.vips != vips || *self.model.vip_errors != errors {
            self.model.vips = Arc::new(vips);
            self.model.vip_errors = Arc::new(errors);
            self.dirty = true;
        }
    }

    /// Replaces which revision each cluster is served (from the rollout task). Clusters that
    /// move to another revision are recorded in `released_at`.
    pub fn set_pins(&mut self, pins: Pins) {
        if *self.model.pins == pins {
            return;
        }
        let keys: BTreeSet<ObjectKey> =
            self.model.pins.keys().chain(pins.keys()).cloned().collect();
        let clusters = self.model.cluster_names();
        let served = |model: &Model, key: &ObjectKey| -> Vec<Option<String>> {
            clusters
                .iter()
                .map(|c| model.served_revision(key, c).map(str::to_owned))
                .collect()
        };
        let before: Vec<Vec<Option<String>>> =
            keys.iter().map(|k| served(&self.model, k)).collect();
        self.model.pins = Arc::new(pins);
        for (key, before) in keys.iter().zip(before) {
            let after = served(&self.model, key);
            if after == before {
                continue;
            }
            refresh_overrides(&mut self.model, Some(key));
            self.changes.access_points.insert(key.clone());
            for ((cluster, old), new) in clusters.iter().zip(before).zip(after) {
                if old != new {
                    self.released_at
                        .insert((key.clone(), cluster.clone()), self.generation + 1);
                }
            }
        }
        self.dirty = true;
    }

    /// Publishes a new snapshot if anything changed since the last one; returns its generation.
    pub fn publish(&mut self) -> u64 {
        if self.dirty || self.generation == 0 {
            self.generation += 1;
            self.dirty = false;
            let mut changes = std::mem::take(&mut self.changes);
            let count = changes.access_points.len()
                + changes.services.len()
                + changes.endpoint_slices.len();
            if count > CHANGED_OBJECTS_TRACKED {
                changes = ModelChanges {
                    everything: true,
                    ..ModelChanges::default()
                };
            }
            self.change_log
                .push_back((self.generation, Arc::new(changes)));
            if self.change_log.len() > CHANGE_LOG_LENGTH {
                self.change_log.pop_front();
            }
            self.tx.send_replace(Arc::new(Snapshot {
                generation: self.generation,
                model: self.model.clone(),
                rejected: self.rejected.clone(),
                in_force_since: self.in_force_since.clone(),
                released_at: self.released_at.clone(),
                published_at: Instant::now(),
                changes: Arc::new(self.change_log.clone()),
            }));
        }
        self.generation
    }

    /// Notes what a model change can affect in translation (VIPs and NameServices are not
    /// translated; cluster facts, Deployments and Secrets may affect any gateway).
    fn record_change(&mut self, kind: Kind, key: &ObjectKey) {
        let changes = &mut self.changes;
        match kind {
            Kind::AccessPoint => {
                changes.access_points.insert(key.clone());
            }
            Kind::Service => {
                changes.services.insert(key.clone());
            }
            Kind::EndpointSlice => {
                changes.endpoint_slices.insert(key.clone());
            }
            Kind::NameService => {}
            Kind::Node => changes.nodes = true,
            Kind::MemberCluster | Kind::Deployment | Kind::Secret => changes.everything = true,
        }
    }

    /// The generation of the last published snapshot.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// AccessPoints whose latest version was rejected, with why.
    pub fn rejected(&self) -> &BTreeMap<ObjectKey, Rejection> {
        &self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::parse_documents;

    fn access_point(port: u32, generation: i64) -> InputObject {
        let yaml = format!(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, generation: {generation}}}
spec:
  template:
    gateways:
    - metadata: {{name: gw}}
      spec: {{servers: [{{port: {{number: {port}, protocol: HTTP}}, hosts: ["*"]}}]}}
"#
        );
        parse_documents(&yaml, "default").unwrap().remove(0)
    }

    #[test]
    fn a_rejected_version_keeps_the_accepted_one_and_travels_in_the_snapshot() {
        let (mut index, snapshots) = Index::new();
        let key = ObjectKey::new("default", "shop");
        index.apply(access_point(8080, 1)).unwrap();
        assert_eq!(index.publish(), 1);
        assert_eq!(snapshots.borrow().in_force_since[&key], 1);

        let errors = index.apply(access_point(0, 2)).unwrap_err();
        assert_eq!(index.publish(), 2, "a rejection is news for status writers");
        let snapshot = snapshots.borrow().clone();
        assert_eq!(snapshot.rejected[&key].generation, Some(2));
        assert_eq!(snapshot.rejected[&key].errors, errors);
        let served = &snapshot.model.access_points[&key];
        assert_eq!(served.metadata.generation, Some(1));
        assert_eq!(snapshot.in_force_since[&key], 1);

        // The same rejection again changes nothing.
        index.apply(access_point(0, 2)).unwrap_err();
        assert_eq!(index.publish(), 2);

        index.apply(access_point(9090, 3)).unwrap();
        assert_eq!(index.publish(), 3);
        let snapshot = snapshots.borrow().clone();
        assert!(snapshot.rejected.is_empty());
        assert_eq!(snapshot.in_force_since[&key], 3);

        index.delete(Kind::AccessPoint, &key);
        assert_eq!(index.publish(), 4);
        assert!(snapshots.borrow().in_force_since.is_empty());
    }
}

#[cfg(test)]
mod change_tests {
    use super::*;
    use crate::core::manifest::parse_documents;

    fn apply(index: &mut Index, yaml: &str) {
        for object in parse_documents(yaml, "shop").unwrap() {
            let _ = index.apply(object);
        }
        index.publish();
    }

    const SERVICE: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn snapshots_say_what_changed_since_an_earlier_generation() {
        let (mut index, rx) = Index::new();
        apply(&mut index, SERVICE);
        apply(&mut index, &SERVICE.replace("80", "81"));
        let snapshot = rx.borrow().clone();
        let since_first = snapshot.changes_since(1);
        assert!(!since_first.everything);
        assert_eq!(
            since_first.services,
            BTreeSet::from([ObjectKey::new("shop", "web")])
        );
        assert!(snapshot.changes_since(2).is_empty());

        // A MemberCluster can change any gateway's view.
        apply(
            &mut index,
            "apiVersion: meridian.dev/v1alpha1\nkind: MemberCluster\nmetadata: {name: east}\nspec: {zone: z1}\n",
        );
        assert!(rx.borrow().changes_since(2).everything);

        // Generations older than the log count as everything.
        for port in 0..CHANGE_LOG_LENGTH {
            apply(
                &mut index,
                &SERVICE.replace("80", &format!("{}", 1000 + port)),
            );
        }
        let snapshot = rx.borrow().clone();
        assert!(snapshot.changes_since(2).everything);
        assert!(!snapshot.changes_since(snapshot.generation - 1).everything);
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;
    use crate::core::expand::cluster_view;
    use crate::core::manifest::parse_documents;

    const CLUSTERS: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east-1, labels: {tier: edge}}
spec: {zone: z1}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: west}
spec: {zone: z2}
"#;

    fn access_point(patch_path: &str) -> InputObject {
        let yaml = format!(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop}}
spec:
  placement: {{clusters: [east-1, west]}}
  template:
    gateways:
    - metadata: {{name: gw}}
      spec: {{servers: [{{port: {{number: 8080, protocol: HTTP}}, hosts: ["*"]}}]}}
  overrides:
  - clusterSelector: {{matchLabels: {{tier: edge}}}}
    patches: [{{op: replace, path: "{patch_path}", value: 9000}}]
"#
        );
        parse_documents(&yaml, "default").unwrap().remove(0)
    }

    fn port(index: &Index, cluster: &str) -> Option<u32> {
        let view = cluster_view(index.model(), cluster);
        view.gateways.first().map(|g| g.spec.servers[0].port.number)
    }

    #[test]
    fn a_failing_override_blocks_only_its_cluster_which_keeps_its_last_good_template() {
        let (mut index, _rx) = Index::new();
        for object in parse_documents(CLUSTERS, "").unwrap() {
            index.apply(object).unwrap();
        }
        index
            .apply(access_point("/gateways/0/spec/servers/0/port/number"))
            .unwrap();
        assert_eq!(
            (port(&index, "east-1"), port(&index, "west")),
            (Some(9000), Some(8080))
        );

        // The next version's patch no longer applies to east-1: east-1 keeps serving 9000,
        // west takes the new version, and the error is recorded for east-1 only.
        let mut broken = access_point("/gateways/5/spec/servers/0/port/number");
        if let InputObject::AccessPoint(ap) = &mut broken {
            ap.spec.template.gateways[0].spec.servers[0].port.number = 8181;
        }
        index.apply(broken).unwrap();
        assert_eq!(
            (port(&index, "east-1"), port(&index, "west")),
            (Some(9000), Some(8181))
        );
        let errors: Vec<_> = index.model().override_errors.keys().cloned().collect();
        assert_eq!(
            errors,
            [(ObjectKey::new("default", "shop"), "east-1".to_owned())]
        );

        // Fixed: the error clears and east-1 gets the current version.
        index
            .apply(access_point("/gateways/0/spec/servers/0/port/number"))
            .unwrap();
        assert_eq!(port(&index, "east-1"), Some(9000));
        assert!(index.model().override_errors.is_empty());

        // Unlabel east-1: the override no longer selects it.
        let relabelled = CLUSTERS.replace("labels: {tier: edge}", "labels: {}");
        index
            .apply(parse_documents(&relabelled, "").unwrap().remove(0))
            .unwrap();
        assert_eq!(port(&index, "east-1"), Some(8080));
        index.delete(Kind::AccessPoint, &ObjectKey::new("default", "shop"));
        assert!(index.model().cluster_templates.is_empty());
    }

    #[test]
    fn pinned_clusters_keep_their_revision_until_the_rollout_moves_them() {
        use crate::core::model::revision::{revision_of, Pin};
        use crate::core::status::acked_access_points;
        let (mut index, snapshots) = Index::new();
        for object in parse_documents(CLUSTERS, "").unwrap() {
            index.apply(object).unwrap();
        }
        let key = ObjectKey::new("default", "shop");
        let path = "/gateways/0/spec/servers/0/port/number";
        index.apply(access_point(path)).unwrap();
        let first = index.model().access_points[&key].clone();
        let r1 = revision_of(&first.spec);
        index.set_pins(Pins::from([(
            key.clone(),
            Pin {
                clusters: BTreeMap::new(),
                fallback: r1.clone(),
                revisions: BTreeMap::from([(r1.clone(), Arc::new(first))]),
                ..Pin::default()
            },
        )]));
        index.publish();

        // A new revision: nothing moves until the rollout says so (east-1 keeps its
        // override of the old revision).
        let mut second = access_point(path);
        if let InputObject::AccessPoint(ap) = &mut second {
            ap.spec.template.gateways[0].spec.servers[0].port.number = 8181;
            ap.spec.overrides.clear();
            ap.metadata.generation = Some(2);
        }
        index.apply(second).unwrap();
        let r2 = index.model().revisions[&key].clone();
        assert_ne!(r1, r2);
        assert_eq!(
            (port(&index, "east-1"), port(&index, "west")),
            (Some(9000), Some(8080))
        );
        let g2 = index.publish();

        let mut pin = index.model().pins[&key].clone();
        pin.clusters.insert("west".to_owned(), r2.clone());
        index.set_pins(Pins::from([(key.clone(), pin)]));
        assert_eq!(
            (port(&index, "east-1"), port(&index, "west")),
            (Some(9000), Some(8181))
        );
        let g3 = index.publish();
        let snapshot = snapshots.borrow().clone();
        assert_eq!(snapshot.released_at[&(key.clone(), "west".to_owned())], g3);
        assert!(!snapshot
            .released_at
            .contains_key(&(key.clone(), "east-1".to_owned())));
        // A west proxy that acknowledged g2 still had revision 1 (generation 0 here); at g3 it
        // has generation 2. East serves the pinned revision either way.
        let acked =
            |synced, cluster| acked_access_points(snapshot.published(), Some(synced), cluster);
        assert_eq!(acked(g2, "west").get(&key), None);
        assert_eq!(acked(g3, "west")[&key], 2);
        assert_eq!(acked(g3, "east-1")[&key], 0);
    }

    #[test]
    fn an_override_that_starts_failing_keeps_what_the_cluster_served_before() {
        let (mut index, _rx) = Index::new();
        for object in parse_documents(CLUSTERS, "").unwrap() {
            index.apply(object).unwrap();
        }
        // First without overrides: both clusters serve port 8080.
        let mut plain = access_point("/gateways/0/spec/servers/0/port/number");
        if let InputObject::AccessPoint(ap) = &mut plain {
            ap.spec.overrides.clear();
        }
        index.apply(plain).unwrap();
        assert_eq!(
            (port(&index, "east-1"), port(&index, "west")),
            (Some(8080), Some(8080))
        );
        // The next version adds an override for east-1 that does not apply, and moves the
        // port: east-1 keeps serving what it had, west takes the new version.
        let mut broken = access_point("/gateways/5/spec/servers/0/port/number");
        if let InputObject::AccessPoint(ap) = &mut broken {
            ap.spec.template.gateways[0].spec.servers[0].port.number = 8181;
        }
        index.apply(broken).unwrap();
        assert_eq!(
            (port(&index, "east-1"), port(&index, "west")),
            (Some(8080), Some(8181))
        );
        assert_eq!(index.model().override_errors.len(), 1);
    }

    #[test]
    fn with_no_good_template_ever_the_cluster_is_blocked() {
        let (mut index, _rx) = Index::new();
        for object in parse_documents(CLUSTERS, "").unwrap() {
            index.apply(object).unwrap();
        }
        index.apply(access_point("/nope/0")).unwrap();
        assert_eq!(
            (port(&index, "east-1"), port(&index, "west")),
            (None, Some(8080))
        );
    }
}
