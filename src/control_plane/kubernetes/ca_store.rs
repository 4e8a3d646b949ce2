//! The CA kept in a Kubernetes Secret of type `kubernetes.io/tls` (`tls.crt`, `tls.key`, and
//! `ca.crt` when the signing certificate is an intermediate). Replicas race to create it on
//! first start; the loser loads the winner's, so every replica signs with one CA.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::Api;

use crate::control_plane::certs::ca::{CaFiles, CertificateAuthority};
use crate::control_plane::certs::CertOptions;
use crate::core::model::tls::TlsSecret;

pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    options: &CertOptions,
) -> anyhow::Result<CertificateAuthority> {
    if let Some(ca) = options.provided_ca()? {
        return Ok(ca);
    }
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..3 {
        if let Some(secret) = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading CA Secret {namespace}/{name}"))?
        {
            let ca = from_secret(secret)
                .with_context(|| format!("loading CA from Secret {namespace}/{name}"))?;
            tracing::info!(secret = %format!("{namespace}/{name}"), serial = %ca.info().serial, "CA loaded");
            return Ok(ca);
        }
        let ca = options.generate_ca()?;
        match api
            .create(
                &PostParams::default(),
                &to_secret(namespace, name, ca.files()),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), serial = %ca.info().serial, "CA generated");
                return Ok(ca);
            }
            // Another replica created it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("creating CA Secret {namespace}/{name}"))
            }
        }
    }
    anyhow::bail!("CA Secret {namespace}/{name} kept changing while being read")
}

fn from_secret(secret: Secret) -> anyhow::Result<CertificateAuthority> {
    let tls = TlsSecret::from(secret);
    let files = CaFiles {
        cert_pem: tls.cert_pem.context("data[\"tls.crt\"] is missing")?,
        key_pem: tls.key.context("data[\"tls.key\"] is missing")?,
        bundle_pem: tls.ca_pem,
    };
    Ok(CertificateAuthority::load(files)?)
}

fn to_secret(namespace: &str, name: &str, files: &CaFiles) -> Secret {
    let mut data = BTreeMap::from([
        (
            "tls.crt".to_owned(),
            ByteString(files.cert_pem.as_bytes().to_vec()),
        ),
        (
            "tls.key".to_owned(),
            ByteString(files.key_pem.expose().as_bytes().to_vec()),
        ),
    ]);
    if let Some(bundle) = &files.bundle_pem {
        data.insert("ca.crt".to_owned(), ByteString(bundle.as_bytes().to_vec()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "meridian".to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}
