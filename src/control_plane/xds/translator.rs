//! Translation at the edge: which gateway configurations to compute for a snapshot, and how
//! to share the work.
//!
//! Building a cluster's view (every AccessPoint expanded, indexed, the service registry) costs
//! far more than translating one gateway from it, so when a snapshot arrives the first stream
//! of a cluster to ask translates every gateway connected in that cluster from one view, and
//! the others take their result. A gateway that first connects after that (or a debug
//! request for one not connected) is translated on its own, once per generation.
//!
//! A gateway the changes since the previous batch cannot reach keeps its translation (the
//! same `Arc`, so its streams push nothing). When an edit reaches only a few gateways, each is
//! translated from a view of just what it reads (`core::translate::scope`), which at 10,000
//! AccessPoints is far cheaper than a view of all of them; the full view is built only if
//! many gateways (or ones never translated) need it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use crate::control_plane::index::Snapshot;
use crate::core::expand::{cluster_view, touched, ReferenceIndex};
use crate::core::translate::{translate, translate_scoped, GatewayIdentity, NodeRole, Translation};

#[derive(Default)]
pub struct Translator {
    state: Mutex<State>,
    /// Cluster views built so far (each one a pass over the whole model).
    views_built: AtomicU64,
    /// Gateways translated from a view scoped to them.
    scoped_translations: AtomicU64,
    /// Where scoped views find the AccessPoints a gateway reads.
    references: RwLock<ReferenceIndex>,
}

/// Up to this many gateways reached by one change are translated each from its own scoped
/// view. At 10,000 AccessPoints over 100 gateways a scoped view takes about 0.7 ms and a full
/// one about 40 ms, with about 2 ms to translate a gateway either way: scoped views stay
/// cheaper up to about 50 gateways.
const SCOPED_AT_MOST: usize = 32;

#[derive(Default)]
struct State {
    /// Streams connected per gateway identity.
    connected: HashMap<GatewayIdentity, usize>,
    /// Per cluster, the translations of the newest generation asked for.
    batches: HashMap<String, Arc<Batch>>,
}

/// One generation's translations for one cluster.
struct Batch {
    snapshot: Arc<Snapshot>,
    generation: u64,
    /// The identities connected when the batch was planned: translated together.
    members: BTreeSet<GatewayIdentity>,
    translated: OnceLock<HashMap<GatewayIdentity, Arc<Translation>>>,
    /// Identities asked for after it was planned, each translated once.
    late: Mutex<HashMap<GatewayIdentity, Arc<OnceLock<Arc<Translation>>>>>,
    /// The batch this one replaced, until this one is translated.
    previous: Mutex<Option<Arc<Batch>>>,
}

impl Batch {
    fn translation_of(&self, identity: &GatewayIdentity) -> Option<Arc<Translation>> {
        if let Some(translation) = self.translated.get().and_then(|t| t.get(identity)) {
            return Some(translation.clone());
        }
        lock(&self.late).get(identity)?.get().cloned()
    }
}

/// Keeps an identity among those translated together while a stream serves it.
pub struct Subscription<'t> {
    translator: &'t Translator,
    identity: GatewayIdentity,
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.translator.state);
        if let Some(count) = state.connected.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                state.connected.remove(&self.identity);
            }
        }
    }
}

impl Translator {
    /// Registers a stream serving `identity`, for as long as the guard lives.
    pub fn subscribe(&self, identity: &GatewayIdentity) -> Subscription<'_> {
        *lock(&self.state)
            .connected
            .entry(identity.clone())
            .or_default() += 1;
        Subscription {
            translator: self,
            identity: identity.clone(),
        }
    }

    /// What `identity` is served from `snapshot`.
    pub fn translate(
        &self,
        snapshot: &Arc<Snapshot>,
        identity: &GatewayIdentity,
    ) -> Arc<Translation> {
        let Some(batch) = self.batch_for(snapshot, &identity.cluster) else {
            // A stream still on an older snapshot than the newest batch: translate alone.
            return self.translate_alone(snapshot, identity);
        };
        if batch.members.contains(identity) {
            let translated = batch
                .translated
                .get_or_init(|| self.translate_batch(&batch, &identity.cluster));
            if let Some(translation) = translated.get(identity) {
                return translation.clone();
            }
        }
        let slot = lock(&batch.late)
            .entry(identity.clone())
            .or_default()
            .clone();
        slot.get_or_init(|| self.translate_alone(snapshot, identity))
            .clone()
    }

    /// Every member of `batch`: reused from the previous batch where the changes since do not
    /// reach it, else translated from one view of the cluster.
    fn translate_batch(
        &self,
        batch: &Batch,
        cluster: &str,
    ) -> HashMap<GatewayIdentity, Arc<Translation>> {
        let previous = lock(&batch.previous).take();
        let touched = previous.as_ref().map(|previous| {
            let changes = batch.snapshot.changes_since(previous.generation);
            touched(&previous.snapshot.model, &batch.snapshot.model, &changes)
        });
        let mut out = HashMap::new();
        // Members to translate again, with the hosts of their previous translation.
        let mut stale = Vec::new();
        for member in &batch.members {
            let previous = previous
                .as_ref()
                .and_then(|previous| previous.translation_of(member));
            match previous {
                // An L4 node reads every VIP and AccessPoint Service of its cluster, which no
                // change set narrows: it is translated again each generation (it is cheap).
                // A gRPC client reads what its gateway reads.
                Some(translation)
                    if member.role != NodeRole::L4
                        && touched.as_ref().is_some_and(|touched| {
                            !touched.affects(&member.gateway, &translation.hosts)
                        }) =>
                {
                    out.insert(member.clone(), translation);
                }
                previous => stale.push((member, previous)),
            }
        }
        // A few gateways an edit reached are translated each from a view of what it reads;
        // many (or ones never translated) from one view of the whole cluster.
        let scoped = stale.len() <= SCOPED_AT_MOST;
        let mut view = None;
        for (member, previous) in stale {
            let translation = previous
                .filter(|_| scoped)
                .and_then(|previous| {
                    self.translate_scoped(&batch.snapshot, member, &previous.hosts)
                })
                .unwrap_or_else(|| {
                    let view = view.get_or_insert_with(|| {
                        self.views_built.fetch_add(1, Ordering::Relaxed);
                        cluster_view(&batch.snapshot.model, cluster)
                    });
                    translate(view, member)
                });
            out.insert(member.clone(), Arc::new(translation));
        }
        out
    }

    fn translate_scoped(
        &self,
        snapshot: &Snapshot,
        identity: &GatewayIdentity,
        hosts: &BTreeSet<String>,
    ) -> Option<Translation> {
        let references = self.references_at(snapshot);
        // A stream on an older snapshot than the index looks at every AccessPoint.
        let index = Some(&*references).filter(|index| index.generation() == snapshot.generation);
        let translation = translate_scoped(&snapshot.model, identity, hosts, index)?;
        self.scoped_translations.fetch_add(1, Ordering::Relaxed);
        Some(translation)
    }

    /// Cluster views built since start.
    pub fn views_built(&self) -> u64 {
        self.views_built.load(Ordering::Relaxed)
    }

    /// The reference index, brought to `snapshot` unless it already describes a newer one.
    fn references_at(&self, snapshot: &Snapshot) -> RwLockReadGuard<'_, ReferenceIndex> {
        {
            let index = read(&self.references);
            if index.generation() >= snapshot.generation {
                return index;
            }
        }
        {
            let mut index = write(&self.references);
            if index.generation() < snapshot.generation {
                let changes = snapshot.changes_since(index.generation());
                index.update(&snapshot.model, snapshot.generation, &changes);
            }
        }
        read(&self.references)
    }

    /// Translations made from a view scoped to one gateway since start.
    pub fn scoped_translations(&self) -> u64 {
        self.scoped_translations.load(Ordering::Relaxed)
    }

    fn translate_alone(&self, snapshot: &Snapshot, identity: &GatewayIdentity) -> Arc<Translation> {
        let translation = self
            .translate_scoped(snapshot, identity, &BTreeSet::new())
            .unwrap_or_else(|| {
                self.views_built.fetch_add(1, Ordering::Relaxed);
                translate(&cluster_view(&snapshot.model, &identity.cluster), identity)
            });
        Arc::new(translation)
    }

    /// The batch of `snapshot`'s generation for `cluster`, planned now if this is the first
    /// request for it; `None` when a newer generation's batch exists.
    fn batch_for(&self, snapshot: &Arc<Snapshot>, cluster: &str) -> Option<Arc<Batch>> {
        let mut state = lock(&self.state);
        let mut previous = None;
        if let Some(batch) = state.batches.get(cluster) {
            if batch.generation == snapshot.generation {
                return Some(batch.clone());
            }
            if batch.generation > snapshot.generation {
                return None;
            }
            // The newest translated batch is the base for reuse; one never translated passes
            // on its own base, so the chain never grows.
            previous = if batch.translated.get().is_some() {
                Some(batch.clone())
            } else {
                lock(&batch.previous).take()
            };
        }
        let members = state
            .connected
            .keys()
            .filter(|identity| identity.cluster == cluster)
            .cloned()
            .collect();
        if let Some(previous) = &previous {
            // Its own base is no longer needed.
            lock(&previous.previous).take();
        }
        let batch = Arc::new(Batch {
            snapshot: snapshot.clone(),
            generation: snapshot.generation,
            members,
            translated: OnceLock::new(),
            late: Mutex::default(),
            previous: Mutex::new(previous),
        });
        state.batches.insert(cluster.to_owned(), batch.clone());
        Some(batch)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::index::Index;
    use crate::core::manifest::parse_documents;
    use crate::core::model::ObjectKey;
    use crate::core::resources::ResourceType;

    /// Two AccessPoints, each with its own gateway and a route to its own service.
    fn fleet(timeout_a: &str) -> String {
        ["a", "b"]
            .iter()
            .map(|g| {
                let timeout = if *g == "a" { timeout_a } else { "1s" };
                format!(
                    r#"
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop-{g}, namespace: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: {g}}}
      spec: {{servers: [{{port: {{number: 8080, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: {g}}}
      spec:
        hosts: [{g}.example]
        gateways: [{g}]
        http: [{{route: [{{destination: {{host: web-{g}}}}}], timeout: {timeout}}}]
    service:
      metadata: {{name: web-{g}}}
      spec: {{ports: [{{port: 80}}]}}
"#
                )
            })
            .collect()
    }

    fn snapshot(
        index: &mut Index,
        rx: &tokio::sync::watch::Receiver<Arc<Snapshot>>,
        timeout: &str,
    ) -> Arc<Snapshot> {
        for object in parse_documents(&fleet(timeout), "default").unwrap() {
            index.apply(object).unwrap();
        }
        index.publish();
        rx.borrow().clone()
    }

    fn identity(gateway: &str) -> GatewayIdentity {
        GatewayIdentity {
            role: crate::core::translate::NodeRole::Gateway,
            xds: crate::core::translate::XdsTransport::Ads,
            gateway: ObjectKey::new("shop", gateway),
            cluster: crate::api::LOCAL_CLUSTER.to_owned(),
            zone: String::new(),
        }
    }

    fn direct(snapshot: &Snapshot, identity: &GatewayIdentity) -> Arc<Translation> {
        Arc::new(translate(
            &cluster_view(&snapshot.model, &identity.cluster),
            identity,
        ))
    }

    /// (Full cluster views built, translations from a scoped view) so far.
    fn made(translator: &Translator) -> (u64, u64) {
        (translator.views_built(), translator.scoped_translations())
    }

    #[test]
    fn connected_gateways_of_a_cluster_share_one_view_per_snapshot() {
        let (mut index, rx) = Index::new();
        let translator = Translator::default();
        let (a, b) = (identity("a"), identity("b"));
        let _a = translator.subscribe(&a);
        let _b = translator.subscribe(&b);

        let first = snapshot(&mut index, &rx, "2s");
        assert_eq!(translator.translate(&first, &a), direct(&first, &a));
        assert_eq!(translator.translate(&first, &b), direct(&first, &b));
        assert_eq!(made(&translator), (1, 0), "one view for both");
        assert_ne!(
            translator.translate(&first, &a).config,
            translator.translate(&first, &b).config,
            "each gateway gets its own routes"
        );

        let second = snapshot(&mut index, &rx, "3s");
        assert_eq!(translator.translate(&second, &b), direct(&second, &b));
        assert_eq!(translator.translate(&second, &a), direct(&second, &a));
        assert_eq!(
            made(&translator),
            (1, 1),
            "only a changed: translated from its scope"
        );
        let routes = |t: &Translation| t.config.resources(ResourceType::Route).clone();
        assert_ne!(
            routes(&translator.translate(&first, &a)),
            routes(&translator.translate(&second, &a)),
            "a stream still on the first snapshot is served the first snapshot"
        );
    }

    #[test]
    fn a_gateway_connecting_after_the_batch_is_translated_once_on_its_own() {
        let (mut index, rx) = Index::new();
        let translator = Translator::default();
        let (a, b) = (identity("a"), identity("b"));
        let _a = translator.subscribe(&a);
        let first = snapshot(&mut index, &rx, "2s");
        translator.translate(&first, &a);
        assert_eq!(made(&translator), (1, 0));

        let b_stream = translator.subscribe(&b);
        assert_eq!(translator.translate(&first, &b), direct(&first, &b));
        translator.translate(&first, &b);
        assert_eq!(
            made(&translator),
            (1, 1),
            "late, but only once, from its scope"
        );

        // From the next snapshot on, it joins the batch; once gone, it leaves it.
        let second = snapshot(&mut index, &rx, "3s");
        translator.translate(&second, &a);
        translator.translate(&second, &b);
        assert_eq!(made(&translator), (1, 2), "b kept; a changed");
        drop(b_stream);
        let third = snapshot(&mut index, &rx, "4s");
        translator.translate(&third, &a);
        assert_eq!(made(&translator), (1, 3));
        let state = lock(&translator.state);
        assert_eq!(
            state.batches[crate::api::LOCAL_CLUSTER].members,
            BTreeSet::from([a.clone()])
        );
    }

    /// An AccessPoint `shop-{name}` with gateway `{name}`, a VirtualService on `{gateway}`
    /// for host `{host}` routing to `{destination}`, and a Service `web-{name}` on `port`.
    fn access_point(name: &str, gateway: &str, host: &str, destination: &str, port: u16) -> String {
        format!(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop-{name}, namespace: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: {name}}}
      spec: {{servers: [{{port: {{number: 8080, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: {name}}}
      spec:
        hosts: [{host}]
        gateways: [{gateway}]
        http: [{{route: [{{destination: {{host: {destination}}}}}]}}]
    service:
      metadata: {{name: web-{name}}}
      spec: {{ports: [{{port: {port}}}]}}
"#
        )
    }

    const SLICE_B: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b-1, namespace: shop, labels: {kubernetes.io/service-name: web-b}}
addressType: IPv4
endpoints: [{addresses: ["10.0.0.7"]}]
ports: [{port: 8080}]
"#;

    const RULE_C: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: rules, namespace: shop}
spec:
  template:
    destinationRules:
    - metadata: {name: web-b}
      spec: {host: web-b, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
"#;

    fn apply(index: &mut Index, yaml: &str) {
        for object in parse_documents(yaml, "default").unwrap() {
            index.apply(object).unwrap();
        }
    }

    /// What an edit is called, the edit, and the gateways it must leave untouched.
    type Step = (
        &'static str,
        Box<dyn Fn(&mut Index)>,
        &'static [&'static str],
    );

    #[test]
    fn reused_translations_always_equal_a_fresh_translation() {
        let (mut index, rx) = Index::new();
        let translator = Translator::default();
        let ids: Vec<GatewayIdentity> = ["a", "b", "c"].into_iter().map(identity).collect();
        let _streams: Vec<_> = ids.iter().map(|id| translator.subscribe(id)).collect();
        let mut previous: Vec<Arc<Translation>> = Vec::new();
        let steps: Vec<Step> = vec![
            (
                "start",
                Box::new(|i: &mut Index| {
                    apply(i, &access_point("a", "a", "a.example", "web-a", 80));
                    apply(i, &access_point("b", "b", "b.example", "web-b", 80));
                    apply(i, &access_point("c", "c", "c.example", "web-c", 80));
                }),
                &[],
            ),
            (
                "a's route moves to b's service",
                Box::new(|i: &mut Index| {
                    apply(i, &access_point("a", "a", "a.example", "web-b", 80));
                }),
                &["b", "c"],
            ),
            (
                "b's service changes port: a and b route to it",
                Box::new(|i: &mut Index| {
                    apply(i, &access_point("b", "b", "b.example", "web-b", 81));
                }),
                &["c"],
            ),
            (
                "endpoints of b's service appear",
                Box::new(|i: &mut Index| apply(i, SLICE_B)),
                &["c"],
            ),
            (
                "a DestinationRule for b's service in another AccessPoint",
                Box::new(|i: &mut Index| apply(i, RULE_C)),
                &["c"],
            ),
            (
                "c's VirtualService binds to gateway a instead",
                Box::new(|i: &mut Index| {
                    apply(i, &access_point("c", "a", "c.example", "web-c", 80));
                }),
                &["b"],
            ),
            (
                "b routes to a host nobody serves yet",
                Box::new(|i: &mut Index| {
                    apply(i, &access_point("b", "b", "b.example", "web-z", 81));
                }),
                &["c"],
            ),
            (
                "then an AccessPoint serves it",
                Box::new(|i: &mut Index| {
                    apply(i, &access_point("z", "z", "z.example", "web-z", 80));
                }),
                &["c"],
            ),
            (
                "c is deleted",
                Box::new(|i: &mut Index| {
                    i.delete(
                        crate::core::model::Kind::AccessPoint,
                        &ObjectKey::new("shop", "shop-c"),
                    );
                }),
                &["b"],
            ),
            (
                "the endpoints go",
                Box::new(|i: &mut Index| {
                    i.delete(
                        crate::core::model::Kind::EndpointSlice,
                        &ObjectKey::new("shop", "web-b-1"),
                    );
                }),
                &["b", "c"],
            ),
        ];
        for (what, step, untouched) in steps {
            step(&mut index);
            index.publish();
            let snapshot = rx.borrow().clone();
            let now: Vec<Arc<Translation>> = ids
                .iter()
                .map(|id| translator.translate(&snapshot, id))
                .collect();
            for (id, translation) in ids.iter().zip(&now) {
                assert_eq!(
                    **translation,
                    *direct(&snapshot, id),
                    "{what}: gateway {} differs from a fresh translation",
                    id.gateway
                );
            }
            for (i, id) in ids.iter().enumerate() {
                if untouched.contains(&id.gateway.name.as_str()) {
                    assert!(
                        Arc::ptr_eq(&previous[i], &now[i]),
                        "{what}: gateway {} was translated again",
                        id.gateway
                    );
                }
            }
            previous = now;
        }
    }
}
