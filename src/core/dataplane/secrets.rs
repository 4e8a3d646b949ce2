//! SDS secrets: the PEM behind the names listeners reference, a server certificate with its
//! key or a CA bundle. Only inline material is taken (what Meridian sends).

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};

use super::{refuse_leftovers, CompileError};

#[derive(Clone, PartialEq, Eq)]
pub enum SecretPlan {
    Certificate { chain_pem: String, key_pem: String },
    Trust { ca_pem: String },
}

/// Never prints the key.
impl std::fmt::Debug for SecretPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretPlan::Certificate { .. } => f.write_str("Certificate { .. }"),
            SecretPlan::Trust { .. } => f.write_str("Trust { .. }"),
        }
    }
}

impl SecretPlan {
    pub fn compile(secret: &Secret) -> Result<(String, SecretPlan), CompileError> {
        let resource = format!("Secret {}", secret.name);
        let inline = |source: Option<&DataSource>, field: &str| match source
            .and_then(|s| s.specifier.as_ref())
        {
            Some(data_source::Specifier::InlineString(text)) => Ok(text.clone()),
            Some(data_source::Specifier::InlineBytes(bytes)) => {
                Ok(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => Err(CompileError::new(
                &resource,
                field,
                "only inline material is supported by meridian proxy",
            )),
        };
        let plan =
            match &secret.r#type {
                Some(secret::Type::TlsCertificate(certificate)) => {
                    let mut rest = certificate.clone();
                    let chain_pem = inline(
                        rest.certificate_chain.take().as_ref(),
                        "tls_certificate.certificate_chain",
                    )?;
                    let key_pem = inline(
                        rest.private_key.take().as_ref(),
                        "tls_certificate.private_key",
                    )?;
                    refuse_leftovers(&rest, &resource, "tls_certificate")?;
                    SecretPlan::Certificate { chain_pem, key_pem }
                }
                Some(secret::Type::ValidationContext(context)) => {
                    let mut rest = context.clone();
                    let ca_pem = inline(
                        rest.trusted_ca.take().as_ref(),
                        "validation_context.trusted_ca",
                    )?;
                    refuse_leftovers(&rest, &resource, "validation_context")?;
                    SecretPlan::Trust { ca_pem }
                }
                _ => return Err(CompileError::new(
                    &resource,
                    "type",
                    "only tls_certificate and validation_context are supported by meridian proxy",
                )),
            };
        Ok((secret.name.clone(), plan))
    }
}
