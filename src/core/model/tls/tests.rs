use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::*;
use crate::api::istio::{Port, ServerTls};
use crate::core::certificates::{certificate_requests, CertificateRequest};
use crate::core::test_support::model_of;

fn server(hosts: &[&str], mode: &str, credential: Option<&str>) -> Server {
    Server {
        port: Port {
            number: 443,
            protocol: "HTTPS".into(),
            name: "https".into(),
        },
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        tls: Some(ServerTls {
            mode: mode.into(),
            credential_name: credential.map(str::to_owned),
            https_redirect: false,
        }),
        ..Default::default()
    }
}

fn gateway() -> ObjectKey {
    ObjectKey::new("edge", "public")
}

fn pem_for(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls_secret(name: &str, fields: &[(&str, &str)]) -> (ObjectKey, TlsSecret) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("edge".into()),
            ..Default::default()
        },
        data: Some(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    (ObjectKey::new("edge", name), TlsSecret::from(secret))
}

#[test]
fn embedded_names_depend_on_the_names_covered_not_their_order_or_case() {
    let a = TlsServer::of(
        &gateway(),
        &server(&["a.example.com", "b.example.com"], "SIMPLE", None),
    );
    let b = TlsServer::of(
        &gateway(),
        &server(&["shop/B.example.com", "a.example.com"], "simple", None),
    );
    let c = TlsServer::of(&gateway(), &server(&["c.example.com"], "SIMPLE", None));
    let a = a.unwrap();
    assert_eq!(Some(&a), b.as_ref());
    assert_ne!(a.certificate, c.unwrap().certificate);
    assert!(a.certificate.starts_with("embedded://edge/public/443/"));
    assert!(a.is_embedded());
    assert_eq!(a.validation, None);
}

#[test]
fn credential_names_resolve_in_the_gateway_namespace_with_an_istio_style_ca_half() {
    let tls = TlsServer::of(&gateway(), &server(&["*"], "MUTUAL", Some("shop-cert"))).unwrap();
    assert_eq!(tls.certificate, "secret://edge/shop-cert");
    assert_eq!(
        tls.validation.as_deref(),
        Some("secret://edge/shop-cert-cacert")
    );
    assert!(!tls.is_embedded());
    let embedded_mutual =
        TlsServer::of(&gateway(), &server(&["a.example.com"], "MUTUAL", None)).unwrap();
    assert_eq!(embedded_mutual.validation.as_deref(), Some(CA_BUNDLE));
    assert_eq!(
        TlsServer::of(&gateway(), &server(&["a"], "PASSTHROUGH", None)),
        None
    );
}

#[test]
fn certificate_requests_cover_every_placed_embedded_server_once() {
    let model = model_of(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  template:
    gateways:
    - metadata: {name: public, namespace: edge}
      spec:
        servers:
        - port: {number: 443, protocol: HTTPS}
          hosts: ["shop/shop.example.com", "*.shop.example.com"]
          tls: {mode: SIMPLE}
        - port: {number: 443, protocol: HTTPS}
          hosts: ["byo.example.com"]
          tls: {mode: SIMPLE, credentialName: byo}
        - port: {number: 80, protocol: HTTP}
          hosts: ["shop.example.com"]
"#,
        "default",
    );
    let requests = certificate_requests(&model);
    let requests: Vec<&CertificateRequest> = requests.values().collect();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].dns_names,
        ["*.shop.example.com", "shop.example.com"]
    );
}

#[test]
fn user_secrets_resolve_with_what_the_certificate_says() {
    let (cert, key) = pem_for(&["byo.example.com"]);
    let (k, secret) = tls_secret("byo", &[("tls.crt", &cert), ("tls.key", &key)]);
    let secrets = BTreeMap::from([(k, secret)]);
    let material = resolve("secret://edge/byo", &BTreeMap::new(), &secrets).unwrap();
    let info = material.info().unwrap();
    assert_eq!(info.dns_names, ["byo.example.com"]);
    assert!(!info.serial.is_empty() && !info.serial.contains(':'));
    assert!(info.not_after > info.not_before);
    match material {
        SecretMaterial::Certificate { key: k, .. } => assert_eq!(k.expose(), key),
        other => panic!("expected a certificate, got {other:?}"),
    }
}

#[test]
fn user_secret_problems_name_the_secret_and_the_field() {
    let (cert, _) = pem_for(&["byo.example.com"]);
    let (k, secret) = tls_secret("byo", &[("tls.crt", &cert)]);
    let (bad_k, bad) = tls_secret("bad", &[("tls.crt", "not pem"), ("tls.key", "x")]);
    let secrets = BTreeMap::from([(k, secret), (bad_k, bad)]);
    let issued = BTreeMap::new();
    let error = |name| resolve(name, &issued, &secrets).unwrap_err().to_string();
    assert_eq!(
        error("secret://edge/byo"),
        "Secret edge/byo: data[\"tls.key\"] is missing or not PEM text"
    );
    assert_eq!(
        error("secret://edge/byo-cacert"),
        "Secret edge/byo: data[\"ca.crt\"] is missing or not PEM text"
    );
    assert_eq!(
        error("secret://edge/none"),
        "Secret edge/none does not exist"
    );
    assert!(error("secret://edge/bad").starts_with("Secret edge/bad: data[\"tls.crt\"]: "));
    assert_eq!(
        error("embedded://edge/public/443/abc"),
        "embedded://edge/public/443/abc: not issued yet"
    );
}

#[test]
fn a_client_ca_comes_from_ca_crt_or_from_a_cacert_secret() {
    let (ca, _) = pem_for(&["ca"]);
    let (k1, with_ca) = tls_secret("one", &[("ca.crt", &ca)]);
    let (k2, cacert) = tls_secret("two-cacert", &[("ca.crt", &ca)]);
    let secrets = BTreeMap::from([(k1, with_ca), (k2, cacert)]);
    for name in ["secret://edge/one-cacert", "secret://edge/two-cacert"] {
        let material = resolve(name, &BTreeMap::new(), &secrets).unwrap();
        assert_eq!(material, SecretMaterial::TrustBundle { ca_pem: ca.clone() });
    }
}

#[test]
fn debug_output_never_shows_a_private_key() {
    let (cert, key) = pem_for(&["byo.example.com"]);
    let (_, secret) = tls_secret("byo", &[("tls.crt", &cert), ("tls.key", &key)]);
    let shown = format!("{secret:?}");
    assert!(shown.contains("[redacted]"));
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}
