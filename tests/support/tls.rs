//! A TLS client that shows what a gateway presents: the verified chain's leaf serial, and
//! HTTP/1.1 requests over one kept-alive connection.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::{client::TlsStream, TlsConnector};

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// Verifies servers against `ca_pem` (and the SNI name), optionally presenting a client cert.
pub struct TlsClient {
    connector: TlsConnector,
}

impl TlsClient {
    pub fn trusting(ca_pem: &str) -> TlsClient {
        TlsClient::build(ca_pem, None)
    }

    pub fn with_client_cert(ca_pem: &str, cert_pem: &str, key_pem: &str) -> TlsClient {
        TlsClient::build(ca_pem, Some((cert_pem, key_pem)))
    }

    fn build(ca_pem: &str, client: Option<(&str, &str)>) -> TlsClient {
        let mut roots = RootCertStore::empty();
        for cert in certs(ca_pem) {
            roots.add(cert).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let key: PrivateKeyDer = rustls_pemfile::private_key(&mut key.as_bytes())
                    .unwrap()
                    .expect("a private key");
                builder.with_client_auth_cert(certs(cert), key).unwrap()
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// Connects to 127.0.0.1:`port` with SNI `host`; fails unless the chain verifies.
    pub async fn connect(&self, port: u16, host: &str) -> std::io::Result<TlsConn> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let stream = self.connector.connect(name, tcp).await?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("the server presented a certificate");
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
        let serial = parsed.raw_serial_as_string().replace(':', "");
        let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.as_ref().to_vec()));
        Ok(TlsConn {
            stream,
            host: host.to_owned(),
            serial,
            leaf_pem,
        })
    }
}

/// One verified TLS connection.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    host: String,
    /// Serial of the leaf certificate presented, lowercase hex.
    pub serial: String,
    pub leaf_pem: String,
}

impl TlsConn {
    /// `GET path` on this connection, kept alive; returns (status, body).
    pub async fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).to_string()))
    }
}

/// An operator's own CA and a certificate it signed for `host`, as a `kubernetes.io/tls`
/// Secret manifest (what `credentialName` names).
pub struct UserCertificate {
    pub ca_pem: String,
    pub secret_manifest: String,
}

impl UserCertificate {
    pub fn new(host: &str, secret: &str, namespace: &str) -> UserCertificate {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "user root");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
        let secret_manifest = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: {namespace}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n    {}\n  tls.key: |\n    {}\n",
            indent(&cert.pem()),
            indent(&key.serialize_pem())
        );
        UserCertificate {
            ca_pem,
            secret_manifest,
        }
    }
}

/// `curl` over HTTPS to `host` on loopback `port`, trusting `ca_file`, plus `extra` arguments.
pub fn curl_https(
    ca_file: &std::path::Path,
    host: &str,
    port: u16,
    extra: &[&str],
) -> Result<String, String> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca_file)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("curl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}
