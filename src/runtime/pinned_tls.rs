//! Mutual TLS to Meridian's xDS server, for every program that calls it (the CLI's ops calls,
//! `meridian proxy`'s ADS stream): the server's certificate must chain to Meridian's CA *and*
//! carry the xDS server's SPIFFE ID. A DNS name is not enough: the CA issues certificates for
//! whatever hosts tenants' Gateways name, so any of them could otherwise pose as Meridian.

use std::sync::Arc;

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

use crate::core::model::tls::leaf_uris;

#[derive(Debug, thiserror::Error)]
pub enum PinnedTlsError {
    #[error("{what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("{what}: {source}")]
    Tls {
        what: &'static str,
        source: TlsError,
    },
    #[error("server {server:?}: {message}")]
    Server { server: String, message: String },
    /// With the whole chain of causes: tonic's own message is only "transport error".
    #[error("connecting to {server}: {message}")]
    Connect { server: String, message: String },
}

/// PEM files' contents: the CA to trust, and the client's certificate and key.
pub struct ClientCredentials<'a> {
    pub ca_pem: &'a [u8],
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
}

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

/// The certificates in `pem`.
pub fn pem_certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PinnedTlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| PinnedTlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PinnedTlsError::Pem {
            what,
            message: "no certificate".to_owned(),
        });
    }
    Ok(certs)
}

/// A gRPC channel to `host:port` over TLS, presenting the client's certificate and accepting
/// only a server certificate under the CA that carries `spiffe_id`.
pub async fn connect(
    host: &str,
    port: u16,
    credentials: ClientCredentials<'_>,
    spiffe_id: &str,
) -> Result<tonic::transport::Channel, PinnedTlsError> {
    let server = format!("{host}:{port}");
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(credentials.ca_pem, "the CA certificate")? {
        roots.add(cert).map_err(|source| PinnedTlsError::Tls {
            what: "the CA certificate",
            source,
        })?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| PinnedTlsError::Pem {
            what: "the CA certificate",
            message: e.to_string(),
        })?;
    let verifier = PinnedIdentity {
        chain,
        spiffe_id: spiffe_id.to_owned(),
    };
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &credentials.key_pem[..])
        .map_err(|e| PinnedTlsError::Pem {
            what: "the private key",
            message: e.to_string(),
        })?
        .ok_or(PinnedTlsError::Pem {
            what: "the private key",
            message: "no private key".to_owned(),
        })?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| PinnedTlsError::Tls {
            what: "TLS versions",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            pem_certs(credentials.cert_pem, "the client certificate")?,
            key,
        )
        .map_err(|source| PinnedTlsError::Tls {
            what: "the client certificate",
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.to_owned()).map_err(|e| PinnedTlsError::Server {
        server: server.clone(),
        message: e.to_string(),
    })?;
    let address = (host.to_owned(), port);
    let tls = tower::service_fn(move |_: http::Uri| {
        let (connector, name, address) = (connector.clone(), name.clone(), address.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((address.0.as_str(), address.1)).await?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // TLS is done by the connector; tonic speaks HTTP/2 over it.
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{server}")).map_err(|e| {
            PinnedTlsError::Server {
                server: server.clone(),
                message: e.to_string(),
            }
        })?;
    endpoint
        .connect_with_connector(tls)
        .await
        .map_err(|error| PinnedTlsError::Connect {
            server,
            message: causes(&error),
        })
}

/// An error and its sources, `: `-separated.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
