//! TLS servers: SNI filter chains, SDS references, and which secrets a gateway may fetch.

use std::sync::Arc;

use super::*;
use crate::core::json::config_to_json;
use crate::core::model::tls::{CertInfo, PrivateKeyPem, SecretMaterial, CA_BUNDLE};
use crate::core::model::Model;

const SHOP_TLS: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  template:
    service:
      metadata: {name: web}
      spec:
        ports: [{name: http, port: 80}]
    gateways:
    - metadata: {name: public, namespace: edge}
      spec:
        servers:
        - port: {number: 8443, protocol: HTTPS, name: https}
          hosts: ["shop.example.com", "*.shop.example.com"]
          tls: {mode: SIMPLE}
        - port: {number: 8443, protocol: HTTPS, name: partners}
          hosts: ["partners.example.com"]
          tls: {mode: MUTUAL}
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com, partners.example.com]
        gateways: [edge/public]
        http:
        - route: [{destination: {host: web}}]
"#;

fn identity() -> GatewayIdentity {
    GatewayIdentity {
        role: crate::core::translate::NodeRole::Gateway,
        xds: crate::core::translate::XdsTransport::Ads,
        gateway: ObjectKey::new("edge", "public"),
        cluster: "local".into(),
        zone: String::new(),
    }
}

fn model_of(yaml: &str) -> Model {
    crate::core::test_support::model_of(yaml, "default")
}

fn run(model: &Model) -> Translation {
    super::scope::translate_checked(model, &identity())
}

fn fake_certificate(name: &str) -> Arc<SecretMaterial> {
    Arc::new(SecretMaterial::Certificate {
        chain_pem: format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n"),
        key: PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n"),
        info: CertInfo {
            issuer: "CN=test".into(),
            serial: "01".into(),
            not_before: 0,
            not_after: 1,
            dns_names: vec![],
        },
    })
}

/// Issues (fake) material for every certificate the model asks for, plus the CA bundle.
pub(super) fn issue_all(model: &mut Model) {
    let requests = crate::core::certificates::certificate_requests(model);
    for name in requests.into_keys() {
        let material = fake_certificate(&name);
        model.issued.insert(name, material);
    }
    model.issued.insert(
        CA_BUNDLE.to_owned(),
        Arc::new(SecretMaterial::TrustBundle {
            ca_pem: "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n".into(),
        }),
    );
}

#[test]
fn tls_servers_snapshot() {
    let mut model = model_of(SHOP_TLS);
    issue_all(&mut model);
    let translation = run(&model);
    assert_eq!(translation.unresolved, Vec::<String>::new());
    let json = config_to_json(&translation.config).unwrap();
    assert!(
        !json.to_string().contains("BEGIN PRIVATE KEY"),
        "config dumps redact private keys"
    );
    insta::assert_json_snapshot!(json);
}

/// Every config source in `json` (a config dump), as `(path, source)`.
fn config_sources(
    json: &serde_json::Value,
    path: String,
    out: &mut Vec<(String, serde_json::Value)>,
) {
    match json {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if ["configSource", "edsConfig", "sdsConfig"].contains(&key.as_str()) {
                    out.push((format!("{path}/{key}"), value.clone()));
                } else {
                    config_sources(value, format!("{path}/{key}"), out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                config_sources(value, format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn a_polling_gateway_is_pointed_at_rest_sources_for_routes_endpoints_and_secrets() {
    let mut model = model_of(SHOP_TLS);
    issue_all(&mut model);
    let polling = GatewayIdentity {
        xds: XdsTransport::Rest {
            refresh_delay_ms: 1500,
        },
        ..identity()
    };
    let translation = super::scope::translate_checked(&model, &polling);
    let json = config_to_json(&translation.config).unwrap();
    let mut sources = Vec::new();
    config_sources(&json, String::new(), &mut sources);
    let kinds: std::collections::BTreeSet<&str> = sources
        .iter()
        .filter_map(|(path, _)| path.rsplit('/').next())
        .collect();
    assert_eq!(
        kinds,
        ["configSource", "edsConfig", "sdsConfig"].into(),
        "RDS, EDS and SDS sources all found"
    );
    for (path, source) in &sources {
        assert_eq!(
            source["apiConfigSource"],
            serde_json::json!({
                "apiType": "REST",
                "transportApiVersion": "V3",
                "clusterNames": [XDS_CLUSTER],
                "refreshDelay": "1.500s",
                "requestTimeout": "5s",
            }),
            "{path}"
        );
    }
    // Streaming gateways keep ADS; the rest of the config is the same.
    let streaming = run(&model);
    assert_eq!(
        translation.config.resources(ResourceType::Route),
        streaming.config.resources(ResourceType::Route)
    );
    assert!(!config_to_json(&streaming.config)
        .unwrap()
        .to_string()
        .contains("apiConfigSource"));
}

#[test]
fn a_gateway_may_fetch_exactly_the_secrets_its_listeners_reference() {
    let mut model = model_of(SHOP_TLS);
    issue_all(&mut model);
    let translation = run(&model);
    let served: Vec<&String> = translation
        .config
        .resources(ResourceType::Secret)
        .keys()
        .collect();
    let referenced: Vec<&String> = translation.secret_names.iter().collect();
    assert_eq!(served, referenced);
    assert_eq!(referenced.len(), 3, "two certificates and the CA bundle");
    assert!(translation.secret_names.contains(CA_BUNDLE));

    let other = GatewayIdentity {
        role: crate::core::translate::NodeRole::Gateway,
        xds: crate::core::translate::XdsTransport::Ads,
        gateway: ObjectKey::new("edge", "internal"),
        ..identity()
    };
    let other = super::scope::translate_checked(&model, &other);
    assert!(other.secret_names.is_empty());
}

#[test]
fn certificates_not_issued_yet_are_awaited_not_dropped() {
    let model = model_of(SHOP_TLS);
    let translation = run(&model);
    assert!(translation.unresolved.is_empty());
    assert!(translation
        .config
        .resources(ResourceType::Secret)
        .is_empty());
    assert_eq!(translation.secret_names.len(), 3);
    let lds = config_to_json(&translation.config).unwrap()["LDS"].to_string();
    assert_eq!(lds.matches("envoy.transport_sockets.tls").count(), 2);
}

#[test]
fn a_missing_credential_leaves_only_its_server_out() {
    let yaml = SHOP_TLS.replace(
        "tls: {mode: SIMPLE}",
        "tls: {mode: SIMPLE, credentialName: shop-cert}",
    );
    let mut model = model_of(&yaml);
    issue_all(&mut model);
    let translation = run(&model);
    assert_eq!(
        translation.unresolved,
        vec!["Secret edge/shop-cert does not exist".to_owned()]
    );
    let lds = config_to_json(&translation.config).unwrap()["LDS"].to_string();
    assert!(!lds.contains("shop.example.com"));
    assert!(lds.contains("partners.example.com"));
    assert!(!translation.secret_names.contains("secret://edge/shop-cert"));
}

#[test]
fn two_access_points_claiming_one_sni_name_share_one_filter_chain() {
    let second = SHOP_TLS
        .replace(
            "name: shop, namespace: shop",
            "name: shop2, namespace: shop",
        )
        .replace("metadata: {name: web}", "metadata: {name: web2}")
        .replace(
            "hosts: [\"partners.example.com\"]",
            "hosts: [\"partners.example.com\", \"extra.example.com\"]",
        );
    let mut model = model_of(&format!("{SHOP_TLS}\n---\n{second}"));
    issue_all(&mut model);
    let translation = run(&model);
    let json = config_to_json(&translation.config).unwrap();
    let chains = json["LDS"]["0.0.0.0_8443"]["filterChains"]
        .as_array()
        .unwrap();
    let names: Vec<String> = chains
        .iter()
        .map(|c| c["filterChainMatch"]["serverNames"].to_string())
        .collect();
    assert_eq!(
        names,
        [
            r#"["*.shop.example.com","shop.example.com"]"#,
            r#"["partners.example.com"]"#,
            r#"["extra.example.com"]"#,
        ],
        "the identical SIMPLE servers share a chain; the younger MUTUAL server loses the name \
         the older one holds"
    );
}

#[test]
fn plaintext_and_tls_on_one_port_split_by_transport() {
    let yaml = SHOP_TLS.replace(
        "        - port: {number: 8443, protocol: HTTPS, name: partners}\n          hosts: [\"partners.example.com\"]\n          tls: {mode: MUTUAL}\n",
        "        - port: {number: 8443, protocol: HTTP, name: plain}\n          hosts: [\"partners.example.com\"]\n",
    );
    let mut model = model_of(&yaml);
    issue_all(&mut model);
    let json = config_to_json(&run(&model).config).unwrap();
    let listener = &json["LDS"]["0.0.0.0_8443"];
    assert_eq!(
        listener["listenerFilters"][0]["name"],
        "envoy.filters.listener.tls_inspector"
    );
    let protocols: Vec<&str> = listener["filterChains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["filterChainMatch"]["transportProtocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["raw_buffer", "tls"]);
    assert!(json["RDS"]["http.8443"].is_object());
}
