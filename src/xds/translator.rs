//! Translation at the edge: which gateway configurations to compute for a snapshot, and how
//! to share the work.
//!
//! Building a cluster's view (every AccessPoint expanded, indexed, the service registry) costs
//! far more than translating one gateway from it, so when a snapshot arrives the first stream
//! of a cluster to ask translates every gateway connected in that cluster from one view, and
//! the others take their result. A gateway that first connects after that (or a debug
//! request for one not connected) is translated on its own, once per generation.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::core::expand::cluster_view;
use crate::core::translate::{translate, GatewayIdentity, Translation};
use crate::index::Snapshot;

#[derive(Default)]
pub struct Translator {
    state: Mutex<State>,
    /// Cluster views built so far (each one a pass over the whole model).
    views_built: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Streams connected per gateway identity.
    connected: HashMap<GatewayIdentity, usize>,
    /// Per cluster, the translations of the newest generation asked for.
    batches: HashMap<String, Arc<Batch>>,
}

/// One generation's translations for one cluster.
struct Batch {
    generation: u64,
    /// The identities connected when the batch was planned: translated together.
    members: BTreeSet<GatewayIdentity>,
    translated: OnceLock<HashMap<GatewayIdentity, Arc<Translation>>>,
    /// Identities asked for after it was planned, each translated once.
    late: Mutex<HashMap<GatewayIdentity, Arc<OnceLock<Arc<Translation>>>>>,
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
    pub fn translate(&self, snapshot: &Snapshot, identity: &GatewayIdentity) -> Arc<Translation> {
        let Some(batch) = self.batch_for(snapshot, &identity.cluster) else {
            // A stream still on an older snapshot than the newest batch: translate alone.
            return self.translate_alone(snapshot, identity);
        };
        if batch.members.contains(identity) {
            let translated = batch.translated.get_or_init(|| {
                let view = cluster_view(&snapshot.model, &identity.cluster);
                self.views_built.fetch_add(1, Ordering::Relaxed);
                batch
                    .members
                    .iter()
                    .map(|member| (member.clone(), Arc::new(translate(&view, member))))
                    .collect()
            });
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

    /// Cluster views built since start.
    pub fn views_built(&self) -> u64 {
        self.views_built.load(Ordering::Relaxed)
    }

    fn translate_alone(&self, snapshot: &Snapshot, identity: &GatewayIdentity) -> Arc<Translation> {
        let view = cluster_view(&snapshot.model, &identity.cluster);
        self.views_built.fetch_add(1, Ordering::Relaxed);
        Arc::new(translate(&view, identity))
    }

    /// The batch of `snapshot`'s generation for `cluster`, planned now if this is the first
    /// request for it; `None` when a newer generation's batch exists.
    fn batch_for(&self, snapshot: &Snapshot, cluster: &str) -> Option<Arc<Batch>> {
        let mut state = lock(&self.state);
        if let Some(batch) = state.batches.get(cluster) {
            if batch.generation == snapshot.generation {
                return Some(batch.clone());
            }
            if batch.generation > snapshot.generation {
                return None;
            }
        }
        let members = state
            .connected
            .keys()
            .filter(|identity| identity.cluster == cluster)
            .cloned()
            .collect();
        let batch = Arc::new(Batch {
            generation: snapshot.generation,
            members,
            translated: OnceLock::new(),
            late: Mutex::default(),
        });
        state.batches.insert(cluster.to_owned(), batch.clone());
        Some(batch)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::parse_documents;
    use crate::core::model::ObjectKey;
    use crate::core::resources::ResourceType;
    use crate::index::Index;

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
        assert_eq!(translator.views_built(), 1);
        assert_ne!(
            translator.translate(&first, &a).config,
            translator.translate(&first, &b).config,
            "each gateway gets its own routes"
        );

        let second = snapshot(&mut index, &rx, "3s");
        assert_eq!(translator.translate(&second, &b), direct(&second, &b));
        assert_eq!(translator.translate(&second, &a), direct(&second, &a));
        assert_eq!(translator.views_built(), 2);
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
        assert_eq!(translator.views_built(), 1);

        let b_stream = translator.subscribe(&b);
        assert_eq!(translator.translate(&first, &b), direct(&first, &b));
        translator.translate(&first, &b);
        assert_eq!(translator.views_built(), 2, "late, but only once");

        // From the next snapshot on, it joins the batch; once gone, it leaves it.
        let second = snapshot(&mut index, &rx, "3s");
        translator.translate(&second, &a);
        translator.translate(&second, &b);
        assert_eq!(translator.views_built(), 3);
        drop(b_stream);
        let third = snapshot(&mut index, &rx, "4s");
        translator.translate(&third, &a);
        assert_eq!(translator.views_built(), 4);
        let state = lock(&translator.state);
        assert_eq!(
            state.batches[crate::api::LOCAL_CLUSTER].members,
            BTreeSet::from([a.clone()])
        );
    }
}
