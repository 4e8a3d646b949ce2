//! The certificate manager: issues a certificate for every embedded TLS server placed anywhere,
//! rotates each before it expires, drops those no longer needed, and hands the result to the
//! index owner (which publishes it like any other input).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use super::rotation::{CertificateSet, Plan, RotationPolicy, Why};
use super::Issuer;
use crate::control_plane::index::Snapshot;
use crate::control_plane::metrics::{Metrics, ReasonLabel};
use crate::core::certificates::{certificate_requests, CertificateRequest};
use crate::core::model::tls::{SecretMaterial, CA_BUNDLE};

/// Issued material by SDS name, and why the certificates that could not be issued were not,
/// as the index receives them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IssuedSecrets {
    pub secrets: BTreeMap<String, Arc<SecretMaterial>>,
    pub errors: BTreeMap<String, String>,
}

/// How long to wait before retrying after a failed issuance.
const RETRY_AFTER: Duration = Duration::from_secs(5);

pub struct CertManager {
    issuer: Arc<dyn Issuer>,
    set: CertificateSet,
    metrics: Arc<Metrics>,
    /// The last failure of each wanted certificate not issued since.
    failures: BTreeMap<String, String>,
}

impl CertManager {
    pub fn new(
        issuer: Arc<dyn Issuer>,
        policy: RotationPolicy,
        metrics: Arc<Metrics>,
    ) -> CertManager {
        CertManager {
            issuer,
            set: CertificateSet::new(policy),
            metrics,
            failures: BTreeMap::new(),
        }
    }

    /// Runs until `stopped`, sending every change of the issued set to `sink`.
    pub async fn run<T: From<IssuedSecrets> + Send + 'static>(
        mut self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        sink: mpsc::Sender<T>,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut sent: Option<IssuedSecrets> = None;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let wanted = tokio::task::spawn_blocking(move || wanted(&snapshot)).await?;
            self.failures.retain(|name, _| wanted.contains_key(name));
            let plan = self.set.plan(&wanted, SystemTime::now());
            let failed = self.carry_out(plan).await?;
            let issued = self.issued();
            if sent.as_ref() != Some(&issued) {
                if sink.send(T::from(issued.clone())).await.is_err() {
                    return Ok(());
                }
                sent = Some(issued);
            }
            self.record_metrics();
            let mut wait = self
                .set
                .next_renewal()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(3600));
            if failed {
                wait = wait.min(RETRY_AFTER);
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => return Ok(()),
            }
        }
    }

    /// Issues and drops what `plan` says; returns whether any issuance failed.
    async fn carry_out(&mut self, plan: Plan) -> anyhow::Result<bool> {
        for name in &plan.drop {
            tracing::info!(secret = %name, "certificate no longer referenced; dropped");
            self.set.remove(name);
        }
        if plan.issue.is_empty() {
            return Ok(false);
        }
        let issuer = self.issuer.clone();
        let lifetime = self.set.policy().lifetime;
        let issued = tokio::task::spawn_blocking(move || {
            plan.issue
                .into_iter()
                .map(|(request, why)| {
                    let now = SystemTime::now();
                    let result = issuer.issue(&request, now, lifetime);
                    (request, why, now, result)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut failed = false;
        for (request, why, now, result) in issued {
            match result {
                Ok(material) => {
                    if let Some(info) = material.info() {
                        tracing::info!(
                            issuer = self.issuer.name(),
                            secret = %request.name,
                            serial = %info.serial,
                            not_after = info.not_after,
                            dns_names = ?request.dns_names,
                            reason = ?why,
                            "certificate issued"
                        );
                    }
                    let reason = match why {
                        Why::New => "new",
                        Why::Rotate => "rotate",
                    };
                    self.metrics
                        .certs_issued
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                    self.failures.remove(&request.name);
                    self.set.insert(&request, Arc::new(material), now);
                }
                Err(error) => {
                    failed = true;
                    let error = format!("{error:#}");
                    tracing::error!(secret = %request.name, issuer = self.issuer.name(), %error, "certificate issuance failed; retrying");
                    self.failures.insert(request.name.clone(), error);
                }
            }
        }
        Ok(failed)
    }

    /// Everything the issuer provides: gateway certificates and its CA bundle.
    fn issued(&self) -> IssuedSecrets {
        let mut secrets = self.set.materials();
        if let Some(bundle) = self.issuer.trust_bundle() {
            secrets.insert(CA_BUNDLE.to_owned(), Arc::new(bundle));
        }
        IssuedSecrets {
            secrets,
            errors: self.failures.clone(),
        }
    }

    fn record_metrics(&self) {
        self.metrics.certs_held.set(self.set.len() as i64);
        if let Some(not_after) = self.set.earliest_expiry() {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            self.metrics
                .cert_expiry_horizon_seconds
                .set(not_after - now);
        }
    }
}

/// The embedded certificates the snapshot's placed TLS servers need, across every cluster.
fn wanted(snapshot: &Snapshot) -> BTreeMap<String, CertificateRequest> {
    certificate_requests(&snapshot.model)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::control_plane::index::Index;
    use crate::core::manifest::parse_documents;
    use crate::core::model::tls::{CertInfo, PrivateKeyPem};
    use crate::core::model::Kind;

    /// Issues placeholder material; fails the first `failures` calls.
    struct FakeIssuer {
        calls: AtomicUsize,
        failures: usize,
    }

    impl Issuer for FakeIssuer {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn issue(
            &self,
            request: &CertificateRequest,
            _now: SystemTime,
            _lifetime: Duration,
        ) -> anyhow::Result<SecretMaterial> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                anyhow::bail!("issuer unavailable");
            }
            Ok(SecretMaterial::Certificate {
                chain_pem: request.dns_names.join(","),
                key: PrivateKeyPem::new("key"),
                info: CertInfo {
                    issuer: "fake".into(),
                    serial: "01".into(),
                    not_before: 0,
                    not_after: 0,
                    dns_names: request.dns_names.clone(),
                },
            })
        }

        fn trust_bundle(&self) -> Option<SecretMaterial> {
            None
        }
    }

    const TLS_AP: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  template:
    gateways:
    - metadata: {name: public}
      spec:
        servers:
        - {port: {number: 443, protocol: HTTPS}, hosts: [shop.example.com], tls: {mode: SIMPLE}}
"#;

    async fn next(rx: &mut mpsc::Receiver<IssuedSecrets>) -> IssuedSecrets {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the manager sends an update")
            .expect("the manager is running")
    }

    #[tokio::test(start_paused = true)]
    async fn certificates_follow_the_snapshot_and_failed_issuance_is_retried() {
        let (mut index, snapshots) = Index::new();
        for object in parse_documents(TLS_AP, "shop").unwrap() {
            index.apply(object).unwrap();
        }
        index.publish();
        let issuer = Arc::new(FakeIssuer {
            calls: AtomicUsize::new(0),
            failures: 1,
        });
        let metrics = Arc::new(Metrics::new());
        let manager = CertManager::new(issuer.clone(), RotationPolicy::default(), metrics);
        let (tx, mut rx) = mpsc::channel(4);
        let (_stop, stopped) = watch::channel(false);
        let task = tokio::spawn(manager.run(snapshots, tx, stopped));

        // The first attempt fails: nothing is issued yet, the failure is said, and issuance is
        // retried after RETRY_AFTER.
        let failed = next(&mut rx).await;
        assert!(failed.secrets.is_empty());
        assert_eq!(
            failed.errors.values().collect::<Vec<_>>(),
            ["issuer unavailable"]
        );
        let issued = next(&mut rx).await;
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 2);
        assert!(issued.errors.is_empty(), "cleared once issued");
        let names: Vec<&String> = issued.secrets.keys().collect();
        assert_eq!(names.len(), 1);
        assert!(
            names[0].starts_with("embedded://shop/public/443/"),
            "{names:?}"
        );

        // The AccessPoint goes away: so does its certificate.
        index.delete(
            Kind::AccessPoint,
            &crate::core::model::ObjectKey::new("shop", "shop"),
        );
        index.publish();
        assert!(next(&mut rx).await.secrets.is_empty());
        task.abort();
    }
}
