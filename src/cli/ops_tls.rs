//! The CLI's TLS to the ops API: Meridian's CA and the xDS server's SPIFFE ID of the trust
//! domain of the operator's own certificate (see `runtime::pinned_tls`).

use anyhow::Context;

use crate::core::model::tls::leaf_uris;
use crate::runtime::pinned_tls::{self, pem_certs, ClientCredentials};

/// The trust domain of the client's own certificate (`spiffe://<domain>/…`): the server must
/// be Meridian of the same domain.
fn trust_domain(cert_pem: &[u8]) -> anyhow::Result<String> {
    let leaf = pem_certs(cert_pem, "tls.crt")?
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
    let spiffe_id = crate::control_plane::certs::xds_server_id(&trust_domain(cert_pem)?);
    let credentials = ClientCredentials {
        ca_pem,
        cert_pem,
        key_pem,
    };
    Ok(pinned_tls::connect(&host, port, credentials, &spiffe_id).await?)
}
