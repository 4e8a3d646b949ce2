use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::*;

fn validity() -> Validity {
    Validity {
        now: SystemTime::now(),
        lifetime: Duration::from_secs(3600),
    }
}

fn certificates(pem: &str) -> Vec<Pem> {
    Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap())
        .collect()
}

/// Checks that the first certificate of `chain` is signed by the first of `issuer`.
fn assert_signed_by(chain: &str, issuer: &str) {
    let leaf = &certificates(chain)[0];
    let ca = &certificates(issuer)[0];
    let leaf = leaf.parse_x509().unwrap();
    let ca = ca.parse_x509().unwrap();
    leaf.verify_signature(Some(ca.public_key()))
        .expect("signature verifies against the CA key");
    assert_eq!(leaf.issuer(), ca.subject());
}

fn chain_of(material: &SecretMaterial) -> &str {
    match material {
        SecretMaterial::Certificate { chain_pem, .. } => chain_pem,
        other => panic!("not a certificate: {other:?}"),
    }
}

#[test]
fn a_generated_ecdsa_root_issues_server_certificates_for_the_names_asked() {
    let ca = CertificateAuthority::generate(KeyType::EcdsaP256, validity()).unwrap();
    let names = vec![
        "shop.example.com".to_owned(),
        "*.shop.example.com".to_owned(),
    ];
    let material = ca.issue_server(&names, validity()).unwrap();
    let info = material.info().unwrap();
    assert_eq!(info.dns_names, names);
    assert_eq!(info.issuer, ca.info().issuer);
    assert!(info.not_after - info.not_before >= 3600);
    let chain = chain_of(&material);
    assert_eq!(certificates(chain).len(), 1, "a root is not sent along");
    assert_signed_by(chain, &ca.files().cert_pem);
    let pems = certificates(chain);
    let leaf = pems[0].parse_x509().unwrap();
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let other = ca.issue_server(&names, validity()).unwrap();
    assert_ne!(
        other.info().unwrap().serial,
        info.serial,
        "serials are unique"
    );
}

#[test]
fn an_rsa_ca_signs_rsa_certificates() {
    let ca = CertificateAuthority::generate(KeyType::Rsa2048, validity()).unwrap();
    let material = ca
        .issue_server(&["a.example.com".to_owned()], validity())
        .unwrap();
    assert_signed_by(chain_of(&material), &ca.files().cert_pem);
    match &material {
        SecretMaterial::Certificate { key, .. } => {
            let key = KeyPair::from_pem_and_sign_algo(key.expose(), &rcgen::PKCS_RSA_SHA256);
            assert!(key.is_ok(), "the issued key is RSA");
        }
        _ => unreachable!(),
    }
}

#[test]
fn an_intermediate_sends_itself_along_and_clients_trust_the_root() {
    let root = CertificateAuthority::generate(KeyType::EcdsaP256, validity()).unwrap();
    // An intermediate signed by the root.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    let intermediate = params.signed_by(&key, &root.issuer).unwrap();
    let ca = CertificateAuthority::load(CaFiles {
        cert_pem: intermediate.pem(),
        key_pem: PrivateKeyPem::new(key.serialize_pem()),
        bundle_pem: Some(root.files().cert_pem.clone()),
    })
    .unwrap();
    assert_eq!(ca.trust_pem(), root.files().cert_pem);
    let material = ca
        .issue_server(&["a.example.com".to_owned()], validity())
        .unwrap();
    let chain = chain_of(&material);
    assert_eq!(certificates(chain).len(), 2);
    assert_signed_by(chain, &intermediate.pem());
    assert_signed_by(&intermediate.pem(), &root.files().cert_pem);
}

#[test]
fn client_certificates_carry_the_gateway_identity_as_a_uri() {
    let ca = CertificateAuthority::generate(KeyType::EcdsaP256, validity()).unwrap();
    let id = "spiffe://meridian.local/ns/edge/gateway/public";
    let material = ca.issue_client(id, validity()).unwrap();
    let pem = &certificates(chain_of(&material))[0];
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san
        .value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::URI(uri) if *uri == id)));
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );
}

#[test]
fn a_leaf_is_refused_as_a_ca_and_debug_never_shows_the_key() {
    let ca = CertificateAuthority::generate(KeyType::EcdsaP256, validity()).unwrap();
    let leaf = ca
        .issue_server(&["a.example.com".to_owned()], validity())
        .unwrap();
    let SecretMaterial::Certificate { chain_pem, key, .. } = leaf else {
        unreachable!()
    };
    let refused = CertificateAuthority::load(CaFiles {
        cert_pem: chain_pem,
        key_pem: key,
        bundle_pem: None,
    });
    assert!(matches!(refused, Err(CaError::NotCa(_))));
    let shown = format!("{ca:?} {:?}", ca.files());
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}
