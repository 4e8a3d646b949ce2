//! TLS termination: a rustls server configuration per TLS filter chain, built from the SDS
//! secrets it names; a connection's ClientHello picks the chain (by SNI) before the handshake.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::core::dataplane::listeners::TlsPlan;
use crate::core::dataplane::secrets::SecretPlan;

/// Why a chain cannot serve TLS yet (a secret not arrived, or unusable).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("secret {0} has not arrived")]
    Missing(String),
    #[error("secret {name}: {message}")]
    Unusable { name: String, message: String },
}

fn certs(pem: &str, name: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Unusable {
            name: name.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Unusable {
            name: name.to_owned(),
            message: "no certificate".to_owned(),
        });
    }
    Ok(certs)
}

/// The server configuration of one chain.
pub fn server_config(
    plan: &TlsPlan,
    secrets: &BTreeMap<String, SecretPlan>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let unusable = |name: &str, message: String| TlsSetupError::Unusable {
        name: name.to_owned(),
        message,
    };
    let (chain_pem, key_pem) = match secrets.get(&plan.certificate) {
        Some(SecretPlan::Certificate { chain_pem, key_pem }) => (chain_pem, key_pem),
        Some(_) => return Err(unusable(&plan.certificate, "not a certificate".to_owned())),
        None => return Err(TlsSetupError::Missing(plan.certificate.clone())),
    };
    let chain = certs(chain_pem, &plan.certificate)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| unusable(&plan.certificate, e.to_string()))?
        .ok_or_else(|| unusable(&plan.certificate, "no private key".to_owned()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(&plan.certificate, e.to_string()))?;
    let builder = match (&plan.validation, plan.require_client_certificate) {
        (Some(name), _) => {
            let ca_pem = match secrets.get(name) {
                Some(SecretPlan::Trust { ca_pem }) => ca_pem,
                Some(_) => return Err(unusable(name, "not a CA bundle".to_owned())),
                None => return Err(TlsSetupError::Missing(name.clone())),
            };
            let mut roots = RootCertStore::empty();
            for cert in certs(ca_pem, name)? {
                roots.add(cert).map_err(|e| unusable(name, e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match plan.require_client_certificate {
                true => verifier.build(),
                false => verifier.allow_unauthenticated().build(),
            }
            .map_err(|e| unusable(name, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, _) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| unusable(&plan.certificate, e.to_string()))?;
    config.alpn_protocols = plan.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
