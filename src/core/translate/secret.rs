//! SDS secrets: the TLS material behind the names listeners reference.

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};

use crate::core::model::tls::SecretMaterial;
use crate::core::resources::Resource;

pub fn build(name: &str, material: &SecretMaterial) -> Resource {
    let inline = |text: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_owned())),
        ..Default::default()
    };
    let r#type = match material {
        SecretMaterial::Certificate { chain_pem, key, .. } => {
            secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(chain_pem)),
                private_key: Some(inline(key.expose())),
                ..Default::default()
            })
        }
        SecretMaterial::TrustBundle { ca_pem } => {
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(ca_pem)),
                ..Default::default()
            })
        }
    };
    let secret = Secret {
        name: name.to_owned(),
        r#type: Some(r#type),
    };
    Resource::new(name, &secret)
}
