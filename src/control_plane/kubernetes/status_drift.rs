//! What the objects a status writer owns really show: a watch of them, so that a status
//! someone else wrote (say `Ready=True` patched by hand) is noticed at once and the writer's
//! next round writes the computed one over it. The writer's own writes come back through the
//! same watch; they are told apart by resourceVersion, since the watch delivers each object's
//! versions in order.

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::model::ObjectKey;

/// The watch of one kind, and the resourceVersion each object had once this writer's last
/// status write to it was stored.
pub(crate) struct Drift<K> {
    observed: BoxStream<'static, Result<K, watcher::Error>>,
    written: BTreeMap<ObjectKey, u64>,
}

impl<K> Drift<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    pub(crate) fn watch(api: Api<K>) -> Drift<K> {
        Drift {
            observed: watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed(),
            written: BTreeMap::new(),
        }
    }

    /// Notes the object as the API server stored it after this writer's status write.
    pub(crate) fn record(&mut self, key: &ObjectKey, stored: &K) {
        match resource_version(stored) {
            Some(version) => self.written.insert(key.clone(), version),
            None => self.written.remove(key),
        };
    }

    /// Waits for an object whose status (as `status` reads it) is not what this writer last
    /// wrote or found in `shown`, and takes it as what the object shows. The writer's own
    /// writes coming back, and versions older than them, change nothing.
    pub(crate) async fn foreign<S: Serialize>(
        &mut self,
        shown: &mut BTreeMap<ObjectKey, S>,
        status: impl Fn(K) -> Option<S>,
    ) {
        while let Some(event) = self.observed.next().await {
            let Ok(object) = event else { continue };
            let meta = object.meta();
            let key = ObjectKey::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            let covered = match (self.written.get(&key), resource_version(&object)) {
                (Some(written), Some(version)) => version <= *written,
                _ => false,
            };
            if covered {
                continue;
            }
            let theirs = status(object);
            // Compared as JSON: what a write round-trips through the API server (times in
            // whole seconds, empty lists left out) is the same status.
            let as_json = |status: Option<&S>| serde_json::to_value(status).ok();
            if as_json(theirs.as_ref()) == as_json(shown.get(&key)) {
                continue;
            }
            tracing::info!(kind = %K::kind(&()), object = %key, "status changed by another writer; writing the computed one");
            match theirs {
                Some(status) => shown.insert(key, status),
                None => shown.remove(&key),
            };
            return;
        }
        // The watch ended (it retries with back-off, so only when stopping).
        std::future::pending::<()>().await
    }
}

/// An object's resourceVersion as the number etcd gives it (`None` if it is not one, and the
/// object is then judged by its status alone).
fn resource_version<K: Resource>(object: &K) -> Option<u64> {
    object.meta().resource_version.as_deref()?.parse().ok()
}
