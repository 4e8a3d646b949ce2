//! `meridian bench-certs`: how fast the embedded CA issues gateway certificates, and how big
//! the SDS secret for one is (what a fleet of TLS AccessPoints costs at start and per rotation).

use std::time::{Duration, Instant, SystemTime};

use super::ca::{CertificateAuthority, KeyType, Validity};
use crate::core::translate::secret_resource;

pub struct CertReport {
    pub key_type: KeyType,
    pub count: usize,
    pub total: Duration,
    pub secret_bytes: usize,
}

pub fn run(key_type: KeyType, count: usize) -> anyhow::Result<CertReport> {
    let validity = Validity {
        now: SystemTime::now(),
        lifetime: Duration::from_secs(24 * 3600),
    };
    let ca = CertificateAuthority::generate(key_type, validity)?;
    let started = Instant::now();
    let mut secret_bytes = 0;
    for i in 0..count {
        let names = vec![format!("ap-{i}.example.com")];
        let material = ca.issue_server(&names, validity)?;
        secret_bytes = secret_resource(&format!("embedded://bench/{i}"), &material)
            .body
            .value
            .len();
    }
    Ok(CertReport {
        key_type,
        count,
        total: started.elapsed(),
        secret_bytes,
    })
}

pub fn render(report: &CertReport) -> String {
    let per_cert = report.total.as_secs_f64() * 1000.0 / report.count.max(1) as f64;
    format!(
        "bench-certs: {count} certificates, key type {key:?}\n  issue (key generation + signing): {total:.2} s total, {per_cert:.3} ms each, {rate:.0}/s\n  one SDS secret (chain + key): {bytes} bytes\n",
        count = report.count,
        key = report.key_type,
        total = report.total.as_secs_f64(),
        rate = report.count as f64 / report.total.as_secs_f64().max(1e-9),
        bytes = report.secret_bytes,
    )
}
