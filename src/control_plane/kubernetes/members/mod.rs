//! Member clusters in Kubernetes mode: the edge where Meridian talks to other API servers.
//!
//! - [`connections`] (every replica): one task per MemberCluster with a `connection`: builds a
//!   client from the kubeconfig Secret, probes health, and reads the member's EndpointSlices
//!   back into the index (labelled with the cluster, so they get its locality).
//! - [`cache`]: the leader keeps each member's last known objects in a ConfigMap; a member
//!   task starts from them, so a replica started during a member's outage serves its
//!   endpoints as its peers do.
//! - [`writer`] (the leader only): applies each AccessPoint's expanded Service into the
//!   members it is placed on with server-side apply, honours the conflict policy, removes what
//!   it created when placement shrinks or the AccessPoint goes (finalizer), and writes
//!   MemberCluster `Ready` conditions.

pub mod cache;
pub mod connections;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Mutex;

use kube::Client;
use tokio::sync::watch;

/// The result of a member's latest health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Reachable,
    Unreachable(String),
}

/// What the connection tasks know, shared with the writer.
pub struct MemberState {
    clients: Mutex<BTreeMap<String, Client>>,
    health: watch::Sender<BTreeMap<String, Health>>,
}

impl Default for MemberState {
    fn default() -> MemberState {
        MemberState {
            clients: Mutex::default(),
            health: watch::channel(BTreeMap::new()).0,
        }
    }
}

impl MemberState {
    pub fn client(&self, cluster: &str) -> Option<Client> {
        lock(&self.clients).get(cluster).cloned()
    }

    pub fn health(&self) -> watch::Receiver<BTreeMap<String, Health>> {
        self.health.subscribe()
    }

    fn set_client(&self, cluster: &str, client: Client) {
        lock(&self.clients).insert(cluster.to_owned(), client);
    }

    fn set_health(&self, cluster: &str, health: Health) {
        self.health.send_if_modified(|all| {
            if all.get(cluster) == Some(&health) {
                return false;
            }
            match &health {
                Health::Reachable => tracing::info!(cluster, "member cluster reachable"),
                Health::Unreachable(error) => {
                    tracing::warn!(cluster, %error, "member cluster unreachable")
                }
            }
            all.insert(cluster.to_owned(), health);
            true
        });
    }

    fn forget(&self, cluster: &str) {
        lock(&self.clients).remove(cluster);
        self.health
            .send_if_modified(|all| all.remove(cluster).is_some());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
