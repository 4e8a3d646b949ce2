//! Certificates at the edge: the embedded CA and where it is kept, and the manager that issues
//! and rotates gateway certificates and feeds them into the index. Translation never sees
//! these types: it sees only the material the manager puts into the model.

pub mod bench;
pub mod ca;
pub mod manager;
pub mod rotation;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::core::certificates::CertificateRequest;
use crate::core::duration;
use crate::core::model::tls::{PrivateKeyPem, SecretMaterial};
use ca::{CaFiles, CertificateAuthority, KeyType, Validity};
use rotation::RotationPolicy;

/// Where gateway certificates come from. The embedded CA is one; an ACME client or an external
/// CA would be another. The manager calls `issue` on a blocking thread, so an implementation
/// may wait on the network. Translation never sees an issuer, only the material it produced.
pub trait Issuer: Send + Sync + 'static {
    /// Shown in logs and metrics.
    fn name(&self) -> &'static str;
    /// A serving certificate for `request.dns_names`, valid from `now` for `lifetime` (an
    /// issuer that cannot choose the lifetime reports the real one in the material's info).
    fn issue(
        &self,
        request: &CertificateRequest,
        now: SystemTime,
        lifetime: Duration,
    ) -> anyhow::Result<SecretMaterial>;
    /// The CA bundle `MUTUAL` servers without a `credentialName` trust, if this issuer has one.
    fn trust_bundle(&self) -> Option<SecretMaterial>;
}

impl Issuer for CertificateAuthority {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn issue(
        &self,
        request: &CertificateRequest,
        now: SystemTime,
        lifetime: Duration,
    ) -> anyhow::Result<SecretMaterial> {
        Ok(self.issue_server(&request.dns_names, Validity { now, lifetime })?)
    }

    fn trust_bundle(&self) -> Option<SecretMaterial> {
        Some(CertificateAuthority::trust_bundle(self))
    }
}

/// Certificate flags shared by both modes.
#[derive(clap::Args, Clone, Debug)]
pub struct CertOptions {
    /// Key algorithm of a generated CA and of every certificate issued.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Lifetime of issued gateway certificates.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub cert_lifetime: Duration,
    /// Fraction of a certificate's lifetime after which it is replaced.
    #[arg(long, default_value_t = 2.0 / 3.0)]
    pub cert_renew_fraction: f64,
    /// Lifetime of a CA Meridian generates.
    #[arg(long, default_value = "87600h", value_parser = duration::parse)]
    pub ca_lifetime: Duration,
    /// Sign with this CA certificate (PEM) instead of a generated one; with --ca-key.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key (PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Root certificates (PEM) clients should trust when --ca-cert is an intermediate.
    #[arg(long, requires = "ca_cert")]
    pub ca_bundle: Option<PathBuf>,
    /// SPIFFE trust domain of gateway client certificates.
    #[arg(long, default_value = "meridian.local")]
    pub trust_domain: String,
}

impl Default for CertOptions {
    fn default() -> CertOptions {
        CertOptions {
            key_type: KeyType::EcdsaP256,
            cert_lifetime: Duration::from_secs(24 * 3600),
            cert_renew_fraction: 2.0 / 3.0,
            ca_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            ca_cert: None,
            ca_key: None,
            ca_bundle: None,
            trust_domain: "meridian.local".to_owned(),
        }
    }
}

impl CertOptions {
    pub fn rotation(&self) -> RotationPolicy {
        RotationPolicy {
            lifetime: self.cert_lifetime,
            renew_fraction: self.cert_renew_fraction,
        }
    }

    /// The operator-provided CA, if flags name one.
    pub fn provided_ca(&self) -> anyhow::Result<Option<CertificateAuthority>> {
        let (Some(cert), Some(key)) = (&self.ca_cert, &self.ca_key) else {
            return Ok(None);
        };
        let files = CaFiles {
            cert_pem: read(cert)?,
            key_pem: PrivateKeyPem::new(read(key)?),
            bundle_pem: self.ca_bundle.as_deref().map(read).transpose()?,
        };
        let ca = CertificateAuthority::load(files)
            .with_context(|| format!("loading CA from {}", cert.display()))?;
        Ok(Some(ca))
    }

    pub fn generate_ca(&self) -> anyhow::Result<CertificateAuthority> {
        let validity = Validity {
            now: SystemTime::now(),
            lifetime: self.ca_lifetime,
        };
        Ok(CertificateAuthority::generate(self.key_type, validity)?)
    }

    /// The SPIFFE ID a gateway's client certificate carries.
    pub fn gateway_spiffe_id(&self, namespace: &str, name: &str) -> String {
        spiffe_id(&self.trust_domain, namespace, name)
    }
}

pub fn spiffe_id(trust_domain: &str, namespace: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/gateway/{name}")
}

/// The SPIFFE ID of an operator's client certificate (the ops API shows them every proxy).
pub fn operator_spiffe_id(trust_domain: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/operator/{name}")
}

/// The identity of the xDS server's certificate, which gateways pin.
pub fn xds_server_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/meridian/xds")
}

/// Where `meridian bootstrap --cert-dir` writes a gateway's client credentials.
pub const CLIENT_CERT_FILE: &str = "tls.crt";
pub const CLIENT_KEY_FILE: &str = "tls.key";
pub const CLIENT_CA_FILE: &str = "ca.crt";

/// Mints a client certificate for `gateway` (`namespace/name`) and writes it, its key and the
/// CA bundle into `dir`; returns the paths (certificate, key, CA).
pub fn write_client_credentials(
    ca: &CertificateAuthority,
    options: &CertOptions,
    gateway: (&str, &str),
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let identity = options.gateway_spiffe_id(gateway.0, gateway.1);
    write_credentials(ca, options, &identity, dir)
}

/// Like [`write_client_credentials`], for an operator of the ops API.
pub fn write_operator_credentials(
    ca: &CertificateAuthority,
    options: &CertOptions,
    name: &str,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    if name.is_empty() || name.contains('/') {
        anyhow::bail!("operator name {name:?} must be non-empty and have no '/'");
    }
    write_credentials(
        ca,
        options,
        &operator_spiffe_id(&options.trust_domain, name),
        dir,
    )
}

fn write_credentials(
    ca: &CertificateAuthority,
    options: &CertOptions,
    identity: &str,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let validity = Validity {
        now: SystemTime::now(),
        lifetime: options.cert_lifetime,
    };
    let SecretMaterial::Certificate { chain_pem, key, .. } = ca.issue_client(identity, validity)?
    else {
        anyhow::bail!("the CA issued no client certificate");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let paths = (
        dir.join(CLIENT_CERT_FILE),
        dir.join(CLIENT_KEY_FILE),
        dir.join(CLIENT_CA_FILE),
    );
    write_private(&paths.1, key.expose())?;
    std::fs::write(&paths.0, chain_pem)
        .with_context(|| format!("writing {}", paths.0.display()))?;
    std::fs::write(&paths.2, ca.trust_pem())
        .with_context(|| format!("writing {}", paths.2.display()))?;
    Ok(paths)
}

/// The CA as `meridian bootstrap` finds it: --ca-cert/--ca-key, or a CA directory.
pub fn load_existing(
    options: &CertOptions,
    ca_dir: Option<&Path>,
) -> anyhow::Result<CertificateAuthority> {
    if let Some(ca) = options.provided_ca()? {
        return Ok(ca);
    }
    let dir = ca_dir.context("minting a client certificate needs the CA: --ca-dir (standalone: <state-dir>/ca) or --ca-cert and --ca-key")?;
    let bundle = dir.join(BUNDLE_FILE);
    let files = CaFiles {
        cert_pem: read(&dir.join(CERT_FILE))?,
        key_pem: PrivateKeyPem::new(read(&dir.join(KEY_FILE))?),
        bundle_pem: bundle.exists().then(|| read(&bundle)).transpose()?,
    };
    CertificateAuthority::load(files).with_context(|| format!("loading CA from {}", dir.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Mutual TLS on the ADS port.
#[derive(clap::Args, Clone, Debug)]
pub struct XdsTlsOptions {
    /// Serve ADS (and the ops API) over TLS and require client certificates from Meridian's CA
    /// (`meridian bootstrap --cert-dir` mints them); a stream's gateway is then the one its
    /// certificate names, whatever the node metadata claims.
    #[arg(long)]
    pub xds_mtls: bool,
    /// DNS names and IP addresses in the xDS server certificate.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub xds_server_names: Vec<String>,
    /// INSECURE: serve gateways' TLS private keys over SDS to clients that present no
    /// certificate, that is to anyone who can reach the xDS port. Only for demos on loopback;
    /// without it, private keys go only to gateways authenticated by --xds-mtls.
    #[arg(long)]
    pub insecure_serve_keys_without_mtls: bool,
    /// Host names the embedded CA never issues to a Gateway (exact, or `*.suffix`), besides
    /// `localhost` and the --xds-server-names, which belong to Meridian itself.
    #[arg(long, value_delimiter = ',')]
    pub forbidden_cert_names: Vec<String>,
}

impl Default for XdsTlsOptions {
    fn default() -> XdsTlsOptions {
        XdsTlsOptions {
            xds_mtls: false,
            xds_server_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            insecure_serve_keys_without_mtls: false,
            forbidden_cert_names: Vec::new(),
        }
    }
}

/// Lifetime of the xDS server certificate, issued at start (a restart renews it).
const XDS_SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

impl XdsTlsOptions {
    /// The trust domain whose gateway SPIFFE IDs client certificates must carry, when mutual
    /// TLS is on.
    pub fn client_trust_domain(&self, certs: &CertOptions) -> Option<String> {
        self.xds_mtls.then(|| certs.trust_domain.clone())
    }

    /// Names no Gateway may have a certificate issued for: Meridian's own and the forbidden.
    pub fn reserved_cert_names(&self) -> Vec<String> {
        let mut names = vec!["localhost".to_owned()];
        names.extend(self.xds_server_names.iter().cloned());
        names.extend(self.forbidden_cert_names.iter().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// How ADS clients authenticate, saying loudly when keys go to anyone.
    pub fn client_auth(
        &self,
        certs: &CertOptions,
    ) -> crate::control_plane::xds::server::ClientAuth {
        let keys_without_client_certs = self.insecure_serve_keys_without_mtls && !self.xds_mtls;
        if keys_without_client_certs {
            tracing::warn!("--insecure-serve-keys-without-mtls: TLS private keys are served to any client that reaches the xDS port; use --xds-mtls outside a loopback demo");
        }
        crate::control_plane::xds::server::ClientAuth {
            trust_domain: self.client_trust_domain(certs),
            keys_without_client_certs,
        }
    }

    /// The gRPC server's TLS settings, when mutual TLS is on.
    pub fn server_config(
        &self,
        ca: &CertificateAuthority,
        trust_domain: &str,
    ) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        if !self.xds_mtls {
            return Ok(None);
        }
        let validity = Validity {
            now: SystemTime::now(),
            lifetime: XDS_SERVER_CERT_LIFETIME,
        };
        let identity = xds_server_id(trust_domain);
        let SecretMaterial::Certificate { chain_pem, key, .. } =
            ca.issue_server_with_identity(&self.xds_server_names, Some(&identity), validity)?
        else {
            anyhow::bail!("the CA issued no certificate for the xDS server");
        };
        Ok(Some(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(
                    chain_pem,
                    key.expose(),
                ))
                .client_ca_root(tonic::transport::Certificate::from_pem(ca.trust_pem())),
        ))
    }
}

/// File names of a CA kept in a directory (the standalone state dir's `ca/`).
const CERT_FILE: &str = "ca.crt";
const KEY_FILE: &str = "ca.key";
const BUNDLE_FILE: &str = "root.crt";

/// The CA in `dir`, or a new one written there (key readable by the owner only).
pub fn load_or_create_in_dir(
    dir: &Path,
    options: &CertOptions,
) -> anyhow::Result<CertificateAuthority> {
    if let Some(ca) = options.provided_ca()? {
        return Ok(ca);
    }
    if !dir.join(CERT_FILE).exists() && dir.join(KEY_FILE).exists() {
        anyhow::bail!(
            "{} exists without {}: restore the certificate, or remove the key to make a new CA (every certificate the old one issued would then stop verifying)",
            dir.join(KEY_FILE).display(),
            dir.join(CERT_FILE).display()
        );
    }
    if dir.join(CERT_FILE).exists() {
        let ca = load_existing(options, Some(dir))?;
        tracing::info!(dir = %dir.display(), serial = %ca.info().serial, "CA loaded");
        return Ok(ca);
    }
    let ca = options.generate_ca()?;
    write_ca(dir, ca.files())?;
    tracing::info!(dir = %dir.display(), serial = %ca.info().serial, "CA generated");
    Ok(ca)
}

fn write_ca(dir: &Path, files: &CaFiles) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&dir.join(KEY_FILE), files.key_pem.expose())?;
    // The certificate last: its presence means the pair is complete.
    let cert_path = dir.join(CERT_FILE);
    std::fs::write(&cert_path, &files.cert_pem)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(())
}

/// Writes `text` to a file only its owner can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_kept_in_a_directory_survives_a_restart_with_its_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let options = CertOptions::default();
        let first = load_or_create_in_dir(dir.path(), &options).unwrap();
        let second = load_or_create_in_dir(dir.path(), &options).unwrap();
        assert_eq!(first.info().serial, second.info().serial);
        assert_eq!(first.files(), second.files());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "CA key must not be group/world readable");
    }

    #[test]
    fn a_key_without_its_certificate_or_with_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let options = CertOptions::default();
        let first = load_or_create_in_dir(dir.path(), &options).unwrap();
        let key = std::fs::read(dir.path().join(KEY_FILE)).unwrap();

        std::fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let error = load_or_create_in_dir(dir.path(), &options)
            .unwrap_err()
            .to_string();
        assert!(error.contains("exists without"), "{error}");
        assert_eq!(
            std::fs::read(dir.path().join(KEY_FILE)).unwrap(),
            key,
            "the key is untouched"
        );

        // Another CA's certificate beside this key.
        let other = tempfile::tempdir().unwrap();
        load_or_create_in_dir(other.path(), &options).unwrap();
        std::fs::copy(other.path().join(CERT_FILE), dir.path().join(CERT_FILE)).unwrap();
        let error = format!(
            "{:#}",
            load_or_create_in_dir(dir.path(), &options).unwrap_err()
        );
        assert!(error.contains("does not belong"), "{error}");

        std::fs::write(dir.path().join(CERT_FILE), &first.files().cert_pem).unwrap();
        assert_eq!(
            load_or_create_in_dir(dir.path(), &options)
                .unwrap()
                .info()
                .serial,
            first.info().serial
        );
    }
}
