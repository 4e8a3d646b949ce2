//! The CLI's TLS to the ops API: the server's certificate must chain to Meridian's CA *and*
//! carry the xDS server's SPIFFE ID. A DNS name is not enough: the CA issues certificates for
//! whatever hosts tenants' Gateways name, `localhost` included, so any of them could
//! otherwise pose as Meridian to an operator's `meridian status`.

use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use crate::control_plane::xds::identity::leaf_uris;

/// Checks the chain and name as usual, then the SPIFFE ID.
#[derive(Debug)]
struct PinnedIdentity {
    chain: Arc<WebPkiServerVerifier>,
    spiffe_id: String,
}

impl ServerCertVerifier for PinnedIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if leaf_uris(&[end_entity])
            .iter()
            .any(|uri| uri == &self.spiffe_id)
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General(format!(
                "the server's certificate is not Meridian's xDS server's (no URI SAN {})",
                self.spiffe_id
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn pem_certs(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .context("reading PEM certificates")
}

/// The trust domain of the client's own certificate (`spiffe://<domain>/…`): the server must
/// be Meridian of the same domain.
fn trust_domain(cert_pem: &[u8]) -> anyhow::Result<String> {
    let leaf = pem_certs(cert_pem)?
        .into_iter()
        .next()
        .context("no certificate in tls.crt")?;
    leaf_uris(&[leaf])
        .iter()
        .find_map(|uri| {
            uri.strip_prefix("spiffe://")?
                .split('/')
                .next()
                .map(str::to_owned)
        })
        .context("tls.crt carries no SPIFFE ID")
}

/// A channel to the ops API at `https://host:port`, presenting `cert_pem`/`key_pem` and
/// trusting only Meridian's xDS server certificate under `ca_pem`.
pub async fn connect(
    server: &str,
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> anyhow::Result<tonic::transport::Channel> {
    let uri: http::Uri = server
        .parse()
        .with_context(|| format!("--server {server:?}"))?;
    let host = uri.host().context("--server needs a host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(ca_pem)? {
        roots.add(cert).context("the CA certificate")?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the certificate verifier")?;
    let verifier = PinnedIdentity {
        chain,
        spiffe_id: crate::control_plane::certs::xds_server_id(&trust_domain(cert_pem)?),
    };
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .context("reading tls.key")?
        .context("no private key in tls.key")?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(pem_certs(cert_pem)?, key)
        .context("the client certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.clone()).context("--server host")?;
    let tls = tower::service_fn(move |_: http::Uri| {
        let (connector, name, host) = (connector.clone(), name.clone(), host.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // TLS is done by the connector; tonic speaks HTTP/2 over it.
    tonic::transport::Endpoint::from_shared(format!(
        "http://{}:{port}",
        uri.host().unwrap_or_default()
    ))?
    .connect_with_connector(tls)
    .await
    .with_context(|| format!("connecting to {server}"))
}
