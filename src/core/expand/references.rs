//! Which AccessPoints name each gateway and host: where a scoped view looks, so that
//! translating one gateway after an edit does not pass over every AccessPoint.
//!
//! The index covers every template of an AccessPoint (its own and each per-cluster one), so
//! it names a superset of what any cluster's scope wants; [`super::Scope::wants`] still
//! decides. It is brought forward with the model's recorded changes, and rebuilt when they
//! say "everything".

use std::collections::{BTreeSet, HashMap};

use super::affected::{templates, touch_template, ModelChanges, Touched};
use super::Scope;
use crate::core::model::{Model, ObjectKey};

#[derive(Debug, Default, PartialEq)]
pub struct ReferenceIndex {
    /// The snapshot generation the index describes; 0 before the first update.
    generation: u64,
    by_gateway: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    by_host: HashMap<String, BTreeSet<ObjectKey>>,
    /// AccessPoints with references no name pins down: in every scope.
    unscoped: BTreeSet<ObjectKey>,
    /// What each AccessPoint is indexed under, to take it out again.
    indexed: HashMap<ObjectKey, Touched>,
}

impl ReferenceIndex {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Brings the index to `model`, of snapshot `generation`; `changes` are the model's changes
    /// since [`Self::generation`].
    pub fn update(&mut self, model: &Model, generation: u64, changes: &ModelChanges) {
        if self.generation == 0 || changes.everything {
            *self = ReferenceIndex::default();
            let keys: Vec<&ObjectKey> = model.access_points.keys().collect();
            for key in keys {
                self.insert(model, key);
            }
        } else {
            for key in &changes.access_points {
                self.remove(key);
                self.insert(model, key);
            }
        }
        self.generation = generation;
    }

    /// The AccessPoints `scope` may want, oldest key first.
    pub fn candidates<'i>(&'i self, scope: &Scope<'_>) -> BTreeSet<&'i ObjectKey> {
        let mut out: BTreeSet<&ObjectKey> = self.unscoped.iter().collect();
        out.extend(self.by_gateway.get(scope.gateway()).into_iter().flatten());
        for host in scope.hosts() {
            out.extend(self.by_host.get(host).into_iter().flatten());
        }
        out
    }

    fn insert(&mut self, model: &Model, key: &ObjectKey) {
        let mut touched = Touched::default();
        for template in templates(model, key) {
            touch_template(&mut touched, &key.namespace, template);
        }
        if touched == Touched::default() {
            return;
        }
        for gateway in &touched.gateways {
            (self.by_gateway.entry(gateway.clone()).or_default()).insert(key.clone());
        }
        for host in &touched.hosts {
            (self.by_host.entry(host.clone()).or_default()).insert(key.clone());
        }
        if touched.everything {
            self.unscoped.insert(key.clone());
        }
        self.indexed.insert(key.clone(), touched);
    }

    fn remove(&mut self, key: &ObjectKey) {
        let Some(touched) = self.indexed.remove(key) else {
            return;
        };
        for gateway in &touched.gateways {
            unlist(&mut self.by_gateway, gateway, key);
        }
        for host in &touched.hosts {
            unlist(&mut self.by_host, host, key);
        }
        self.unscoped.remove(key);
    }
}

fn unlist<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, BTreeSet<ObjectKey>>,
    at: &K,
    key: &ObjectKey,
) {
    if let Some(keys) = map.get_mut(at) {
        keys.remove(key);
        if keys.is_empty() {
            map.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::parse_documents;
    use crate::core::model::Kind;

    fn access_point(name: &str, gateway: &str, destination: &str) -> String {
        format!(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: {name}, namespace: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: {name}}}
      spec: {{servers: [{{port: {{number: 80}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: {name}}}
      spec: {{hosts: ["*"], gateways: [{gateway}], http: [{{route: [{{destination: {{host: {destination}}}}}]}}]}}
    destinationRules:
    - metadata: {{name: {name}}}
      spec: {{host: {destination}}}
    service:
      metadata: {{name: {name}}}
      spec: {{ports: [{{port: 80}}]}}
"#
        )
    }

    fn rebuilt(model: &Model, generation: u64) -> ReferenceIndex {
        let mut index = ReferenceIndex::default();
        index.update(model, generation, &ModelChanges::default());
        index
    }

    /// Applies `yaml`; the AccessPoints it changed.
    fn apply(model: &mut Model, yaml: &str) -> BTreeSet<ObjectKey> {
        let mut changed = BTreeSet::new();
        for object in parse_documents(yaml, "default").unwrap() {
            let key = (object.kind() == Kind::AccessPoint).then(|| object.key());
            if model.apply(object) {
                changed.extend(key);
            }
        }
        changed
    }

    /// What an edit is called, and the edit (returning the AccessPoints it changed).
    type Edit = (&'static str, Box<dyn Fn(&mut Model) -> BTreeSet<ObjectKey>>);

    #[test]
    fn an_index_brought_forward_by_changes_equals_one_rebuilt() {
        let mut model = Model::default();
        let mut references = ReferenceIndex::default();
        let edits: Vec<Edit> = vec![
            (
                "start",
                Box::new(|m| {
                    let mut changed = apply(m, &access_point("a", "a", "web"));
                    changed.extend(apply(m, &access_point("b", "b", "web")));
                    changed.extend(apply(m, &access_point("c", "a", "c")));
                    changed
                }),
            ),
            (
                "b binds gateway c and routes elsewhere",
                Box::new(|m| apply(m, &access_point("b", "c", "other.example"))),
            ),
            (
                "a is deleted",
                Box::new(|m| {
                    let a = ObjectKey::new("shop", "a");
                    m.delete(Kind::AccessPoint, &a);
                    BTreeSet::from([a])
                }),
            ),
            (
                "a plain Service changes no AccessPoint",
                Box::new(|m| {
                    apply(
                        m,
                        "{apiVersion: v1, kind: Service, metadata: {name: web, namespace: shop}, spec: {ports: [{port: 80}]}}",
                    )
                }),
            ),
            (
                "a comes back",
                Box::new(|m| apply(m, &access_point("a", "a", "web"))),
            ),
        ];
        for (generation, (what, edit)) in (2..).zip(edits) {
            let changes = ModelChanges {
                access_points: edit(&mut model),
                ..ModelChanges::default()
            };
            references.update(&model, generation, &changes);
            assert_eq!(references, rebuilt(&model, generation), "{what}");
        }
        let gateway = ObjectKey::new("shop", "c");
        let hosts = BTreeSet::from(["other.example".to_owned()]);
        let named: Vec<&str> = references
            .candidates(&Scope::new(&gateway, &hosts))
            .into_iter()
            .map(|key| key.name.as_str())
            .collect();
        assert_eq!(named, ["b", "c"]);
    }
}
