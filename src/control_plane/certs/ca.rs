//! The embedded CA: signs gateway server certificates, xDS server certificates and gateway
//! client certificates. Generated on first start or loaded (a root, or an intermediate with
//! its root bundle).
//!
//! Architecture Invariant: the CA key leaves this type only through [`CaFiles`] (for
//! persisting), never through `Debug` or logs.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::core::model::tls::{cert_info, CertInfo, PrivateKeyPem, SecretMaterial, TlsError};

/// Key algorithm for the CA and every certificate it issues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256.
    Rsa2048,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("generating a {key_type:?} key: {message}")]
    KeyGeneration { key_type: KeyType, message: String },
    #[error("signing a certificate: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("CA key: {0}")]
    BadKey(String),
    #[error(transparent)]
    BadCertificate(#[from] TlsError),
    #[error("CA certificate {0} is not a CA (basicConstraints CA:TRUE is required)")]
    NotCa(String),
    #[error("the CA key does not belong to CA certificate {0}: every certificate it signed would fail verification")]
    KeyMismatch(String),
}

/// Validity a certificate should get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub now: SystemTime,
    pub lifetime: Duration,
}

impl Validity {
    /// Backdated a minute so gateways with a slightly slow clock accept it at once.
    const BACKDATE: Duration = Duration::from_secs(60);

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = OffsetDateTime::from(self.now - Self::BACKDATE);
        params.not_after = OffsetDateTime::from(self.now + self.lifetime);
    }
}

/// The PEM a CA is persisted as.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The signing certificate.
    pub cert_pem: String,
    pub key_pem: PrivateKeyPem,
    /// Roots clients should trust when the signing certificate is an intermediate.
    pub bundle_pem: Option<String>,
}

impl fmt::Debug for CaFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFiles")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &self.key_pem)
            .field("bundle_pem", &self.bundle_pem.is_some())
            .finish()
    }
}

pub struct CertificateAuthority {
    files: CaFiles,
    issuer: Issuer<'static, KeyPair>,
    key_type: KeyType,
    info: CertInfo,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject_serial", &self.info.serial)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed root.
    pub fn generate(
        key_type: KeyType,
        validity: Validity,
    ) -> Result<CertificateAuthority, CaError> {
        let key = generate_key(key_type)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "meridian.dev");
        params
            .distinguished_name
            .push(DnType::CommonName, "Meridian root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity.apply(&mut params);
        let cert = params.self_signed(&key)?;
        CertificateAuthority::load(CaFiles {
            cert_pem: cert.pem(),
            key_pem: PrivateKeyPem::new(key.serialize_pem()),
            bundle_pem: None,
        })
    }

    /// A CA from its persisted or operator-provided files.
    pub fn load(files: CaFiles) -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::from_pem(files.key_pem.expose()).or_else(|_| {
            KeyPair::from_pem_and_sign_algo(files.key_pem.expose(), &rcgen::PKCS_RSA_SHA256)
        });
        let key = key.map_err(|e| CaError::BadKey(e.to_string()))?;
        let key_type = if key.is_compatible(&rcgen::PKCS_RSA_SHA256) {
            KeyType::Rsa2048
        } else {
            KeyType::EcdsaP256
        };
        let info = cert_info(&files.cert_pem, "CA certificate")?;
        if !is_ca(&files.cert_pem) {
            return Err(CaError::NotCa(info.serial));
        }
        if public_key(&files.cert_pem).as_deref() != Some(key.public_key_raw()) {
            return Err(CaError::KeyMismatch(info.serial));
        }
        let issuer = Issuer::from_ca_cert_pem(&files.cert_pem, key)?;
        Ok(CertificateAuthority {
            files,
            issuer,
            key_type,
            info,
        })
    }

    pub fn files(&self) -> &CaFiles {
        &self.files
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// What clients trust: the root bundle, or the signing certificate when it is the root.
    pub fn trust_bundle(&self) -> SecretMaterial {
        SecretMaterial::TrustBundle {
            ca_pem: self.trust_pem().to_owned(),
        }
    }

    pub fn trust_pem(&self) -> &str {
        self.files
            .bundle_pem
            .as_deref()
            .unwrap_or(&self.files.cert_pem)
    }

    /// A serving certificate for `dns_names` (IP addresses become IP SANs).
    pub fn issue_server(
        &self,
        dns_names: &[String],
        validity: Validity,
    ) -> Result<SecretMaterial, CaError> {
        self.issue_server_with_identity(dns_names, None, validity)
    }

    /// A serving certificate that also carries the URI SAN `identity`, which certificates
    /// issued for gateway hosts never do: clients can pin it.
    pub fn issue_server_with_identity(
        &self,
        dns_names: &[String],
        identity: Option<&str>,
        validity: Validity,
    ) -> Result<SecretMaterial, CaError> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        if let Some(identity) = identity {
            params
                .subject_alt_names
                .push(SanType::URI(identity.try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(first) = dns_names.first() {
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        self.sign(params, validity)
    }

    /// A client certificate whose identity is the URI SAN `identity` (a SPIFFE ID).
    pub fn issue_client(
        &self,
        identity: &str,
        validity: Validity,
    ) -> Result<SecretMaterial, CaError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        validity: Validity,
    ) -> Result<SecretMaterial, CaError> {
        let key = generate_key(self.key_type)?;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = match self.key_type {
            KeyType::EcdsaP256 => vec![KeyUsagePurpose::DigitalSignature],
            KeyType::Rsa2048 => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
        };
        validity.apply(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain_pem = cert.pem();
        if self.files.bundle_pem.is_some() {
            // An intermediate: send it along so clients holding only the root can verify.
            chain_pem.push_str(&self.files.cert_pem);
        }
        let info = cert_info(&chain_pem, "issued certificate")?;
        Ok(SecretMaterial::Certificate {
            chain_pem,
            key: PrivateKeyPem::new(key.serialize_pem()),
            info,
        })
    }
}

fn is_ca(cert_pem: &str) -> bool {
    let Some(Ok(pem)) = x509_parser::pem::Pem::iter_from_buffer(cert_pem.as_bytes()).next() else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// The subject public key of the first certificate in `cert_pem`, in the raw form rcgen gives
/// a key pair's (an EC point, or PKCS#1 for RSA).
fn public_key(cert_pem: &str) -> Option<Vec<u8>> {
    let pem = x509_parser::pem::Pem::iter_from_buffer(cert_pem.as_bytes())
        .next()?
        .ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and 16 bytes long
    SerialNumber::from_slice(&bytes)
}

fn generate_key(key_type: KeyType) -> Result<KeyPair, CaError> {
    let failed = |message: String| CaError::KeyGeneration { key_type, message };
    match key_type {
        KeyType::EcdsaP256 => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))
        }
        KeyType::Rsa2048 => {
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                .map_err(|e| failed(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| failed(e.to_string()))?;
            KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| failed(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests;
