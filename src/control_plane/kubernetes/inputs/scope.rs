//! Which watched objects reach the index: Istio's `discoverySelectors` semantics. A namespaced
//! object is processed only while its namespace matches one of the selectors (none configured:
//! every namespace). Cluster-scoped kinds (MemberCluster) always are.
//!
//! Everything watched is kept here, so when a namespace's labels change its objects enter or
//! leave the index without a relist. Relists (`begin_relist`/`end_relist`) drop objects that
//! disappeared while a watch was down.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::control_plane::index::Index;
use crate::control_plane::problems::ConfigProblem;
use crate::core::model::{member_of, InputObject, Kind, ObjectKey};
use crate::core::placement::selector_matches;

/// What one watch delivers: objects of a model kind (from the hub), namespaces, or objects
/// of one kind read from one member cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Watched {
    Object(Kind),
    Namespace,
    Member { cluster: String, kind: Kind },
}

impl Watched {
    /// The watch an object comes from.
    pub fn source_of(object: &InputObject) -> Watched {
        match member_of(object.metadata()).filter(|_| object.is_member_data()) {
            Some(cluster) => Watched::Member {
                cluster: cluster.to_owned(),
                kind: object.kind(),
            },
            None => Watched::Object(object.kind()),
        }
    }
}

pub struct Scope {
    selectors: Vec<LabelSelector>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    objects: BTreeMap<(Kind, ObjectKey), InputObject>,
    relisting: BTreeMap<Watched, BTreeSet<ObjectKey>>,
    problems: BTreeMap<(Kind, ObjectKey), String>,
}

impl Scope {
    pub fn new(selectors: Vec<LabelSelector>) -> Scope {
        Scope {
            selectors,
            namespaces: BTreeMap::new(),
            objects: BTreeMap::new(),
            relisting: BTreeMap::new(),
            problems: BTreeMap::new(),
        }
    }

    fn in_scope(&self, namespace: &str) -> bool {
        if namespace.is_empty() || self.selectors.is_empty() {
            return true;
        }
        let Some(labels) = self.namespaces.get(namespace) else {
            return false;
        };
        self.selectors.iter().any(|s| selector_matches(s, labels))
    }

    pub fn apply(&mut self, index: &mut Index, object: InputObject) {
        let id = (object.kind(), object.key());
        if let Some(seen) = self.relisting.get_mut(&Watched::source_of(&object)) {
            seen.insert(id.1.clone());
        }
        if self.objects.get(&id) == Some(&object) {
            return;
        }
        self.objects.insert(id.clone(), object.clone());
        if self.in_scope(&id.1.namespace) {
            self.feed(index, id, object);
        }
    }

    pub fn delete(&mut self, index: &mut Index, kind: Kind, key: &ObjectKey) {
        let id = (kind, key.clone());
        self.objects.remove(&id);
        self.problems.remove(&id);
        index.delete(kind, key);
    }

    /// A namespace appeared or its labels changed: its objects enter or leave the index.
    pub fn apply_namespace(
        &mut self,
        index: &mut Index,
        name: &str,
        labels: BTreeMap<String, String>,
    ) {
        if let Some(seen) = self.relisting.get_mut(&Watched::Namespace) {
            seen.insert(ObjectKey::new("", name));
        }
        let before = self.in_scope(name);
        self.namespaces.insert(name.to_owned(), labels);
        self.rescope(index, name, before);
    }

    pub fn delete_namespace(&mut self, index: &mut Index, name: &str) {
        let before = self.in_scope(name);
        self.namespaces.remove(name);
        self.rescope(index, name, before);
    }

    fn rescope(&mut self, index: &mut Index, namespace: &str, before: bool) {
        let after = self.in_scope(namespace);
        if before == after {
            return;
        }
        tracing::info!(namespace, in_scope = after, "namespace scope changed");
        let ids: Vec<(Kind, ObjectKey)> = self
            .objects
            .keys()
            .filter(|(_, key)| key.namespace == namespace)
            .cloned()
            .collect();
        for id in ids {
            if after {
                let object = self.objects[&id].clone();
                self.feed(index, id, object);
            } else {
                self.problems.remove(&id);
                index.delete(id.0, &id.1);
            }
        }
    }

    fn feed(&mut self, index: &mut Index, id: (Kind, ObjectKey), object: InputObject) {
        match index.apply(object) {
            Ok(()) => {
                self.problems.remove(&id);
            }
            Err(errors) => {
                let message = errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(kind = %id.0, object = %id.1, problem = %message, "rejected; last accepted version keeps serving");
                self.problems.insert(id, message);
            }
        }
    }

    /// A watch restarted: what it delivers that is not seen again before `end_relist` is gone.
    pub fn begin_relist(&mut self, watched: Watched) {
        self.relisting.insert(watched, BTreeSet::new());
    }

    pub fn end_relist(&mut self, index: &mut Index, watched: Watched) {
        let Some(seen) = self.relisting.remove(&watched) else {
            return;
        };
        if watched == Watched::Namespace {
            let gone: Vec<String> = self
                .namespaces
                .keys()
                .filter(|n| !seen.contains(&ObjectKey::new("", n.as_str())))
                .cloned()
                .collect();
            for name in gone {
                self.delete_namespace(index, &name);
            }
            return;
        }
        self.drop_where(index, |id, object| {
            Watched::source_of(object) == watched && !seen.contains(&id.1)
        });
    }

    /// A member cluster is gone or disconnected: forget what was read from it.
    pub fn drop_member(&mut self, index: &mut Index, cluster: &str) {
        let from_member =
            |w: &Watched| matches!(w, Watched::Member { cluster: c, .. } if c == cluster);
        self.relisting.retain(|w, _| !from_member(w));
        self.drop_where(index, |_, object| from_member(&Watched::source_of(object)));
    }

    fn drop_where(
        &mut self,
        index: &mut Index,
        condition: impl Fn(&(Kind, ObjectKey), &InputObject) -> bool,
    ) {
        let gone: Vec<(Kind, ObjectKey)> = self
            .objects
            .iter()
            .filter(|(id, object)| condition(id, object))
            .map(|(id, _)| id.clone())
            .collect();
        for (kind, key) in gone {
            self.delete(index, kind, &key);
        }
    }

    /// Rejected objects, for `/debug/problems`.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        self.problems
            .iter()
            .map(|((kind, key), message)| ConfigProblem {
                source: format!("{kind} {key}"),
                message: message.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::parse_documents;
    use crate::core::selector::parse_selector;
    use crate::core::test_support::labels;

    fn object(yaml: &str, namespace: &str) -> InputObject {
        parse_documents(yaml, namespace).unwrap().remove(0)
    }

    fn service(namespace: &str) -> InputObject {
        object(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}",
            namespace,
        )
    }

    #[test]
    fn only_objects_of_selected_namespaces_reach_the_index() {
        let (mut index, _rx) = Index::new();
        let mut scope = Scope::new(vec![parse_selector("meridian.dev/enabled=true").unwrap()]);
        scope.apply_namespace(
            &mut index,
            "shop",
            labels(&[("meridian.dev/enabled", "true")]),
        );
        scope.apply_namespace(&mut index, "scratch", labels(&[]));
        scope.apply(&mut index, service("shop"));
        scope.apply(&mut index, service("scratch"));
        scope.apply(&mut index, service("unknown"));
        let keys: Vec<_> = index.model().services.keys().cloned().collect();
        assert_eq!(keys, [ObjectKey::new("shop", "web")]);

        // Labelling a namespace brings its objects in; unlabelling takes them out.
        scope.apply_namespace(
            &mut index,
            "scratch",
            labels(&[("meridian.dev/enabled", "true")]),
        );
        assert_eq!(index.model().services.len(), 2);
        scope.apply_namespace(&mut index, "shop", labels(&[]));
        let keys: Vec<_> = index.model().services.keys().cloned().collect();
        assert_eq!(keys, [ObjectKey::new("scratch", "web")]);
    }

    #[test]
    fn a_relist_drops_what_disappeared_while_the_watch_was_down() {
        let (mut index, _rx) = Index::new();
        let mut scope = Scope::new(Vec::new());
        scope.apply(&mut index, service("a"));
        scope.apply(&mut index, service("b"));
        scope.begin_relist(Watched::Object(Kind::Service));
        scope.apply(&mut index, service("b"));
        scope.end_relist(&mut index, Watched::Object(Kind::Service));
        let keys: Vec<_> = index.model().services.keys().cloned().collect();
        assert_eq!(keys, [ObjectKey::new("b", "web")]);
    }

    #[test]
    fn rejected_objects_are_problems_until_fixed_or_deleted() {
        let (mut index, _rx) = Index::new();
        let mut scope = Scope::new(Vec::new());
        let bad = object(
            "apiVersion: meridian.dev/v1alpha1\nkind: AccessPoint\nmetadata: {name: shop}\nspec:\n  template:\n    gateways: [{metadata: {name: gw}, spec: {servers: []}}]",
            "shop",
        );
        scope.apply(&mut index, bad);
        let problems = scope.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].source, "AccessPoint shop/shop");
        assert!(problems[0]
            .message
            .contains("spec.template.gateways[0].spec.servers"));
        scope.delete(
            &mut index,
            Kind::AccessPoint,
            &ObjectKey::new("shop", "shop"),
        );
        assert!(scope.problems().is_empty());
    }
}
