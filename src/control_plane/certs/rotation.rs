//! Which certificates to issue, rotate or drop: a sans-IO set driven by explicit times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::core::certificates::CertificateRequest;
use crate::core::model::tls::SecretMaterial;

/// How long issued certificates live, and when they are replaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RotationPolicy {
    pub lifetime: Duration,
    /// Fraction of the lifetime after which a certificate is replaced (default 2/3).
    pub renew_fraction: f64,
}

impl Default for RotationPolicy {
    fn default() -> RotationPolicy {
        RotationPolicy {
            lifetime: Duration::from_secs(24 * 3600),
            renew_fraction: 2.0 / 3.0,
        }
    }
}

impl RotationPolicy {
    fn renew_at(&self, issued_at: SystemTime) -> SystemTime {
        issued_at + self.lifetime.mul_f64(self.renew_fraction.clamp(0.05, 1.0))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    New,
    /// Due for rotation.
    Rotate,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub issue: Vec<(CertificateRequest, Why)>,
    pub drop: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.issue.is_empty() && self.drop.is_empty()
    }
}

#[derive(Clone, Debug)]
struct Held {
    dns_names: Vec<String>,
    material: Arc<SecretMaterial>,
    renew_at: SystemTime,
}

/// The certificates currently issued, by SDS name.
#[derive(Debug, Default)]
pub struct CertificateSet {
    policy: RotationPolicy,
    held: BTreeMap<String, Held>,
}

impl CertificateSet {
    pub fn new(policy: RotationPolicy) -> CertificateSet {
        CertificateSet {
            policy,
            held: BTreeMap::new(),
        }
    }

    pub fn policy(&self) -> RotationPolicy {
        self.policy
    }

    /// Compares what is wanted with what is held at `now`.
    pub fn plan(&self, wanted: &BTreeMap<String, CertificateRequest>, now: SystemTime) -> Plan {
        let mut plan = Plan::default();
        for (name, request) in wanted {
            match self.held.get(name) {
                None => plan.issue.push((request.clone(), Why::New)),
                Some(held) if held.dns_names != request.dns_names => {
                    plan.issue.push((request.clone(), Why::New))
                }
                Some(held) if now >= held.renew_at => {
                    plan.issue.push((request.clone(), Why::Rotate))
                }
                Some(_) => {}
            }
        }
        plan.drop = self
            .held
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        plan
    }

    /// Records a certificate issued at `issued_at`.
    pub fn insert(
        &mut self,
        request: &CertificateRequest,
        material: Arc<SecretMaterial>,
        issued_at: SystemTime,
    ) {
        let held = Held {
            dns_names: request.dns_names.clone(),
            material,
            renew_at: self.policy.renew_at(issued_at),
        };
        self.held.insert(request.name.clone(), held);
    }

    pub fn remove(&mut self, name: &str) {
        self.held.remove(name);
    }

    /// When the next certificate is due for rotation.
    pub fn next_renewal(&self) -> Option<SystemTime> {
        self.held.values().map(|h| h.renew_at).min()
    }

    /// The earliest `notAfter` held, seconds since the epoch.
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.held
            .values()
            .filter_map(|h| h.material.info())
            .map(|i| i.not_after)
            .min()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Every held certificate's material, by SDS name.
    pub fn materials(&self) -> BTreeMap<String, Arc<SecretMaterial>> {
        self.held
            .iter()
            .map(|(name, held)| (name.clone(), held.material.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, names: &[&str]) -> CertificateRequest {
        CertificateRequest {
            name: name.into(),
            dns_names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn wanted(requests: &[CertificateRequest]) -> BTreeMap<String, CertificateRequest> {
        requests
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect()
    }

    fn material() -> Arc<SecretMaterial> {
        Arc::new(SecretMaterial::TrustBundle {
            ca_pem: String::new(),
        })
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn certificates_are_issued_once_then_rotated_at_two_thirds_of_their_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let mut set = CertificateSet::new(RotationPolicy {
            lifetime: 3 * HOUR,
            renew_fraction: 2.0 / 3.0,
        });
        let a = request("a", &["a.example.com"]);
        let want = wanted(std::slice::from_ref(&a));
        assert_eq!(set.plan(&want, t0).issue, vec![(a.clone(), Why::New)]);
        set.insert(&a, material(), t0);
        assert!(set.plan(&want, t0 + HOUR).is_empty());
        assert_eq!(set.next_renewal(), Some(t0 + 2 * HOUR));
        assert!(set
            .plan(&want, t0 + 2 * HOUR - Duration::from_secs(1))
            .is_empty());
        assert_eq!(
            set.plan(&want, t0 + 2 * HOUR).issue,
            vec![(a.clone(), Why::Rotate)]
        );
        set.insert(&a, material(), t0 + 2 * HOUR);
        assert_eq!(set.next_renewal(), Some(t0 + 4 * HOUR));
    }

    #[test]
    fn unwanted_certificates_are_dropped_and_changed_names_reissued() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut set = CertificateSet::new(RotationPolicy::default());
        let a = request("a", &["a.example.com"]);
        let b = request("b", &["b.example.com"]);
        set.insert(&a, material(), t0);
        set.insert(&b, material(), t0);
        let a2 = request("a", &["a.example.com", "www.a.example.com"]);
        let plan = set.plan(&wanted(std::slice::from_ref(&a2)), t0);
        assert_eq!(plan.issue, vec![(a2, Why::New)]);
        assert_eq!(plan.drop, vec!["b".to_owned()]);
    }
}
