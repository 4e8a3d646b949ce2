//! The per-cluster part of an AccessPoint's status, kept compact for large fleets.

use super::MemberWrite;
use crate::api::access_point::{CertificateStatus, ClusterStatus};
use crate::core::expand::ClusterView;
use crate::core::model::tls::TlsServer;
use crate::core::model::{ready_addresses, Model, ObjectKey};
use crate::core::observed::GatewayAck;
use crate::core::refs::UnresolvedRef;

/// Above this many placed clusters only the ones that are not ready are listed.
pub const MAX_LISTED: usize = 32;

/// What one placed cluster contributes.
pub struct ClusterFacts<'a> {
    pub name: &'a str,
    pub problems: Vec<String>,
    pub serving: Vec<&'a GatewayAck>,
    /// The outcome of writing the expanded objects into the member, when there was any.
    pub applied: Option<&'a MemberWrite>,
}

pub fn cluster_status(
    facts: &ClusterFacts<'_>,
    key: &ObjectKey,
    generation: i64,
    model: &Model,
    view: &ClusterView<'_>,
) -> ClusterStatus {
    let acknowledged = facts
        .serving
        .iter()
        .filter(|p| p.acked.get(key) == Some(&generation))
        .count();
    let proxies = facts.serving.len();
    let write_error = match facts.applied {
        Some(MemberWrite::Failed(error)) => Some(error.clone()),
        _ => None,
    };
    let message = if let Some(problem) = facts.problems.first() {
        Some(problem.clone())
    } else if let Some(error) = write_error {
        Some(error)
    } else if proxies == 0 {
        Some("no gateway proxy serving it is connected".to_owned())
    } else if acknowledged < proxies {
        Some(format!(
            "{acknowledged} of {proxies} proxies acknowledged this generation"
        ))
    } else {
        None
    };
    ClusterStatus {
        name: facts.name.to_owned(),
        ready: message.is_none(),
        proxies: proxies as i32,
        acknowledged: acknowledged as i32,
        endpoints: ready_endpoints(model, view, key, facts.name) as i32,
        applied: facts.applied.map(|w| *w == MemberWrite::Applied),
        message,
        vips: model
            .vips
            .of(key, facts.name)
            .iter()
            .map(ToString::to_string)
            .collect(),
        certificates: certificates(view, key),
    }
}

/// The certificate behind each TLS server `key` declares in this cluster's view.
fn certificates(view: &ClusterView<'_>, key: &ObjectKey) -> Vec<CertificateStatus> {
    let mut out: Vec<CertificateStatus> = Vec::new();
    for gateway in view.gateways.iter().filter(|g| g.origin == key) {
        for server in &gateway.spec.servers {
            let Some(tls) = TlsServer::of(&gateway.key, server) else {
                continue;
            };
            if out.iter().any(|c| c.secret == tls.certificate) {
                continue;
            }
            let source = if tls.is_embedded() {
                "embedded"
            } else {
                "secret"
            };
            let mut status = CertificateStatus {
                secret: tls.certificate.clone(),
                source: source.to_owned(),
                ..Default::default()
            };
            match view.tls.resolve(&tls.certificate) {
                Ok(material) => {
                    if let Some(info) = material.info() {
                        status.issuer = Some(info.issuer.clone());
                        status.serial = Some(info.serial.clone());
                        status.not_after = rfc3339(info.not_after);
                        status.dns_names = info.dns_names.clone();
                    }
                }
                Err(error) => status.message = Some(error.to_string()),
            }
            out.push(status);
        }
    }
    out
}

fn rfc3339(unix_seconds: i64) -> Option<String> {
    let time = time::OffsetDateTime::from_unix_timestamp(unix_seconds).ok()?;
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Ready endpoint addresses of the AccessPoint's template Service read from `cluster`.
fn ready_endpoints(model: &Model, view: &ClusterView<'_>, key: &ObjectKey, cluster: &str) -> usize {
    let Some(service) = model.template_service(key) else {
        return 0;
    };
    let slices = view.endpoint_slices.get(&service).into_iter().flatten();
    ready_addresses(slices.copied(), cluster)
}

/// Problems of `refs` that belong to `cluster`, described.
pub fn problems_in(refs: &[UnresolvedRef], cluster: &str) -> Vec<String> {
    refs.iter()
        .filter(|r| r.cluster == cluster)
        .map(|r| format!("{}: {}", r.path, r.message))
        .collect()
}

/// The listed subset: all when few, else the not-ready ones, capped.
pub fn compact(mut all: Vec<ClusterStatus>) -> Vec<ClusterStatus> {
    if all.len() > MAX_LISTED {
        all.retain(|c| !c.ready);
        all.truncate(MAX_LISTED);
    }
    all
}
