//! Which certificates Meridian owes: one for every TLS server without a `credentialName`
//! placed in any cluster. The certificate manager issues them; the material comes back into
//! the model as [`Model::issued`].

use std::collections::BTreeMap;

use super::expand::placed_templates;
use super::model::tls::{dns_names, TlsServer};
use super::model::{Model, ObjectKey};

/// A certificate Meridian must issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRequest {
    pub name: String,
    pub dns_names: Vec<String>,
}

/// Every certificate the embedded issuer owes the TLS servers placed anywhere, by SDS name.
pub fn certificate_requests(model: &Model) -> BTreeMap<String, CertificateRequest> {
    let mut requests = BTreeMap::new();
    for (key, _, template) in placed_templates(model) {
        for gateway in &template.gateways {
            let gateway_key = ObjectKey::new(
                gateway
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| key.namespace.clone()),
                gateway.metadata.name.clone(),
            );
            for server in &gateway.spec.servers {
                let Some(tls) = TlsServer::of(&gateway_key, server) else {
                    continue;
                };
                if tls.is_embedded() {
                    requests
                        .entry(tls.certificate.clone())
                        .or_insert_with(|| CertificateRequest {
                            name: tls.certificate,
                            dns_names: dns_names(server),
                        });
                }
            }
        }
    }
    requests
}
