//! The certificate manager: issues a certificate for every embedded TLS server placed anywhere,
//! rotates each before it expires, drops those no longer needed, and hands the result to the
//! index owner (which publishes it like any other input).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use super::ca::{CertificateAuthority, Validity};
use super::rotation::{CertificateSet, Plan, RotationPolicy, Why};
use crate::core::expand::cluster_view;
use crate::core::tls::{certificate_requests, CertificateRequest, SecretMaterial, CA_BUNDLE};
use crate::index::Snapshot;
use crate::metrics::{Metrics, ReasonLabel};

/// Issued material by SDS name, as the index receives it.
pub type IssuedSecrets = BTreeMap<String, Arc<SecretMaterial>>;

/// How long to wait before retrying after a failed issuance.
const RETRY_AFTER: Duration = Duration::from_secs(5);

pub struct CertManager {
    ca: Arc<CertificateAuthority>,
    set: CertificateSet,
    metrics: Arc<Metrics>,
}

impl CertManager {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        policy: RotationPolicy,
        metrics: Arc<Metrics>,
    ) -> CertManager {
        CertManager {
            ca,
            set: CertificateSet::new(policy),
            metrics,
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
        let ca = self.ca.clone();
        let lifetime = self.set.policy().lifetime;
        let issued = tokio::task::spawn_blocking(move || {
            plan.issue
                .into_iter()
                .map(|(request, why)| {
                    let now = SystemTime::now();
                    let result = ca.issue_server(&request.dns_names, Validity { now, lifetime });
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
                    self.set.insert(&request, Arc::new(material), now);
                }
                Err(error) => {
                    failed = true;
                    tracing::error!(secret = %request.name, %error, "certificate issuance failed; retrying");
                }
            }
        }
        Ok(failed)
    }

    /// Everything served from the embedded CA: gateway certificates and the CA bundle.
    fn issued(&self) -> IssuedSecrets {
        let mut issued = self.set.materials();
        issued.insert(CA_BUNDLE.to_owned(), Arc::new(self.ca.trust_bundle()));
        issued
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
    let model = &snapshot.model;
    certificate_requests(
        model
            .cluster_names()
            .iter()
            .map(|cluster| cluster_view(model, cluster)),
    )
}
