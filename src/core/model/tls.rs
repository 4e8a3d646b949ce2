//! TLS for gateway servers: which secret each TLS server is served under (by SDS name), and the
//! material behind every name. Which certificates Meridian owes is [`crate::core::certificates`].
//!
//! Translation only names secrets. The material is input to the model: user Secrets
//! (`credentialName`, as Istio resolves it in the gateway's namespace) are input objects, and
//! certificates Meridian issues are fed back into the model by the certificate manager at the
//! edge. A new issuer (ACME, an external CA) is therefore one more feeder of
//! [`Model::issued`](super::Model::issued), never a change to translation.
//!
//! Architecture Invariant: private keys live only in [`PrivateKeyPem`], whose `Debug` is
//! redacted, so no derived debug output or log line can leak one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::ObjectKey;
use crate::api::istio::Server;
use crate::core::resources::content_hash;

/// SDS names of certificates Meridian issues: `embedded://<ns>/<gateway>/<port>/<hash of SANs>`.
pub const EMBEDDED_PREFIX: &str = "embedded://";
/// SDS names of user Secrets: `secret://<ns>/<name>` (and `…-cacert` for their CA bundle).
pub const SECRET_PREFIX: &str = "secret://";
/// SDS name of Meridian's CA bundle: what `MUTUAL` servers without a `credentialName` trust.
pub const CA_BUNDLE: &str = "embedded://ca";
/// Suffix Istio uses for the client-CA half of a `credentialName`.
pub const CACERT_SUFFIX: &str = "-cacert";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsMode {
    /// Server certificate only.
    Simple,
    /// Clients must present a certificate the validation context trusts.
    Mutual,
}

impl TlsMode {
    pub fn parse(text: &str) -> Option<TlsMode> {
        match text.to_ascii_uppercase().as_str() {
            "SIMPLE" => Some(TlsMode::Simple),
            "MUTUAL" => Some(TlsMode::Mutual),
            _ => None,
        }
    }
}

/// One TLS server of a gateway, as translation serves it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TlsServer {
    pub mode: TlsMode,
    /// SDS name of the server certificate.
    pub certificate: String,
    /// SDS name of the CA bundle client certificates must chain to (`MUTUAL` only).
    pub validation: Option<String>,
}

impl TlsServer {
    /// The TLS settings of `server` on `gateway`, or `None` for a plaintext server.
    pub fn of(gateway: &ObjectKey, server: &Server) -> Option<TlsServer> {
        let tls = server.tls.as_ref()?;
        let mode = TlsMode::parse(&tls.mode)?;
        let (certificate, validation) = match tls.credential_name.as_deref() {
            Some(name) if !name.is_empty() => {
                let base = format!("{SECRET_PREFIX}{}/{name}", gateway.namespace);
                let validation = format!("{base}{CACERT_SUFFIX}");
                (base, validation)
            }
            _ => (
                embedded_name(gateway, server.port.number, &dns_names(server)),
                CA_BUNDLE.to_owned(),
            ),
        };
        Some(TlsServer {
            mode,
            certificate,
            validation: (mode == TlsMode::Mutual).then_some(validation),
        })
    }

    /// Whether Meridian issues this server's certificate.
    pub fn is_embedded(&self) -> bool {
        self.certificate.starts_with(EMBEDDED_PREFIX)
    }

    /// Every SDS name this server needs.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.certificate.as_str()).chain(self.validation.as_deref())
    }
}

/// The DNS names a server's certificate covers: its hosts without the `namespace/` part.
pub fn dns_names(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = server
        .hosts
        .iter()
        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, host)| host))
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    names
}

pub(super) fn embedded_name(gateway: &ObjectKey, port: u32, dns_names: &[String]) -> String {
    let hash = content_hash(dns_names.iter().map(|n| n.as_bytes()));
    format!(
        "{EMBEDDED_PREFIX}{}/{}/{port}/{}",
        gateway.namespace,
        gateway.name,
        &hash[..8]
    )
}

/// A PEM private key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    pub fn new(pem: impl Into<String>) -> PrivateKeyPem {
        PrivateKeyPem(pem.into())
    }

    /// The key itself: only for serving it to the gateway that owns it, or writing it to disk.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem([redacted])")
    }
}

/// What a certificate says about itself, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Validity bounds, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
}

/// Material served for one SDS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretMaterial {
    /// A certificate chain (leaf first) and its key.
    Certificate {
        chain_pem: String,
        key: PrivateKeyPem,
        info: CertInfo,
    },
    /// CA certificates that client certificates must chain to.
    TrustBundle { ca_pem: String },
}

impl SecretMaterial {
    pub fn info(&self) -> Option<&CertInfo> {
        match self {
            SecretMaterial::Certificate { info, .. } => Some(info),
            SecretMaterial::TrustBundle { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("Secret {secret} does not exist")]
    SecretNotFound { secret: ObjectKey },
    #[error("Secret {secret}: data[{key:?}] is missing or not PEM text")]
    MissingKey {
        secret: ObjectKey,
        key: &'static str,
    },
    #[error("{name}: not issued yet")]
    NotIssued { name: String },
    #[error("{what}: {message}")]
    BadCertificate { what: String, message: String },
}

/// Parses the first certificate of a PEM chain.
pub fn cert_info(chain_pem: &str, what: &str) -> Result<CertInfo, TlsError> {
    let bad = |message: String| TlsError::BadCertificate {
        what: what.to_owned(),
        message,
    };
    let pem = Pem::iter_from_buffer(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| bad("no PEM certificate found".to_owned()))?
        .map_err(|e| bad(format!("invalid PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("invalid certificate: {e}")))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                dns_names.push((*dns).to_owned());
            }
        }
    }
    Ok(CertInfo {
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        dns_names,
    })
}

/// A Kubernetes TLS Secret as Meridian holds it: the PEM fields, the key redacted from `Debug`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsSecret {
    pub metadata: ObjectMeta,
    /// `tls.crt`; absent also when it is not UTF-8 text.
    pub cert_pem: Option<String>,
    /// `tls.key`.
    pub key: Option<PrivateKeyPem>,
    /// `ca.crt`.
    pub ca_pem: Option<String>,
}

impl From<Secret> for TlsSecret {
    fn from(secret: Secret) -> TlsSecret {
        let field = |name: &str| -> Option<String> {
            if let Some(text) = secret.string_data.as_ref().and_then(|d| d.get(name)) {
                return Some(text.clone());
            }
            let bytes = secret.data.as_ref()?.get(name)?;
            String::from_utf8(bytes.0.clone()).ok()
        };
        TlsSecret {
            cert_pem: field("tls.crt"),
            key: field("tls.key").map(PrivateKeyPem::new),
            ca_pem: field("ca.crt"),
            metadata: secret.metadata,
        }
    }
}

/// Where TLS material comes from, as a cluster view sees it.
#[derive(Clone, Copy, Debug)]
pub struct TlsSources<'m> {
    pub issued: &'m BTreeMap<String, Arc<SecretMaterial>>,
    pub secrets: &'m BTreeMap<ObjectKey, TlsSecret>,
    /// Why owed certificates could not be issued (for status).
    pub issue_errors: &'m BTreeMap<String, String>,
}

static NO_ISSUED: BTreeMap<String, Arc<SecretMaterial>> = BTreeMap::new();
static NO_SECRETS: BTreeMap<ObjectKey, TlsSecret> = BTreeMap::new();
static NO_ERRORS: BTreeMap<String, String> = BTreeMap::new();

impl Default for TlsSources<'_> {
    fn default() -> Self {
        TlsSources {
            issued: &NO_ISSUED,
            secrets: &NO_SECRETS,
            issue_errors: &NO_ERRORS,
        }
    }
}

impl TlsSources<'_> {
    pub fn resolve(&self, name: &str) -> Result<SecretMaterial, TlsError> {
        resolve(name, self.issued, self.secrets)
    }
}

/// Resolves an SDS name against the issued material and the user Secrets.
pub fn resolve(
    name: &str,
    issued: &BTreeMap<String, Arc<SecretMaterial>>,
    secrets: &BTreeMap<ObjectKey, TlsSecret>,
) -> Result<SecretMaterial, TlsError> {
    if let Some(material) = issued.get(name) {
        return Ok((**material).clone());
    }
    let Some(path) = name.strip_prefix(SECRET_PREFIX) else {
        return Err(TlsError::NotIssued {
            name: name.to_owned(),
        });
    };
    let (namespace, secret_name) = path.split_once('/').unwrap_or(("", path));
    let key = ObjectKey::new(namespace, secret_name);
    // `<name>-cacert`: a Secret of that name, or the `ca.crt` of `<name>` (Istio's two forms).
    if let Some(base) = secret_name.strip_suffix(CACERT_SUFFIX) {
        if let Some(secret) = secrets.get(&key) {
            return user_bundle(&key, secret);
        }
        let base_key = ObjectKey::new(namespace, base);
        if let Some(secret) = secrets.get(&base_key) {
            return user_bundle(&base_key, secret);
        }
        return Err(TlsError::SecretNotFound { secret: base_key });
    }
    let secret = secrets.get(&key).ok_or_else(|| TlsError::SecretNotFound {
        secret: key.clone(),
    })?;
    user_certificate(&key, secret)
}

fn user_certificate(key: &ObjectKey, secret: &TlsSecret) -> Result<SecretMaterial, TlsError> {
    let missing = |field| TlsError::MissingKey {
        secret: key.clone(),
        key: field,
    };
    let chain_pem = secret.cert_pem.clone().ok_or_else(|| missing("tls.crt"))?;
    let private_key = secret.key.clone().ok_or_else(|| missing("tls.key"))?;
    let info = cert_info(&chain_pem, &format!("Secret {key}: data[\"tls.crt\"]"))?;
    Ok(SecretMaterial::Certificate {
        chain_pem,
        key: private_key,
        info,
    })
}

fn user_bundle(key: &ObjectKey, secret: &TlsSecret) -> Result<SecretMaterial, TlsError> {
    let ca_pem = secret.ca_pem.clone().ok_or_else(|| TlsError::MissingKey {
        secret: key.clone(),
        key: "ca.crt",
    })?;
    cert_info(&ca_pem, &format!("Secret {key}: data[\"ca.crt\"]"))?;
    Ok(SecretMaterial::TrustBundle { ca_pem })
}

/// The URI SANs of the leaf of `chain` (none if it does not parse).
pub fn leaf_uris(chain: &[impl AsRef<[u8]>]) -> Vec<String> {
    let Some(leaf) = chain.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
