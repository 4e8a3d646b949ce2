//! Gateway identity from Envoy node metadata (`meridian.dev/gateway`, `/cluster`, `/zone`).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

use crate::api::LOCAL_CLUSTER;
use crate::core::model::ObjectKey;
use crate::core::translate::{GatewayIdentity, NodeRole};

pub use crate::api::node_metadata::{
    CLUSTER as CLUSTER_KEY, GATEWAY as GATEWAY_KEY, REFRESH_DELAY as REFRESH_DELAY_KEY,
    ROLE as ROLE_KEY, ZONE as ZONE_KEY,
};

/// A polling proxy's refresh delay when its node does not say (the seed's route servers'
/// 3 s).
pub const DEFAULT_REFRESH_DELAY: Duration = Duration::from_secs(3);
/// Refresh delays a polling proxy may ask for.
pub const REFRESH_DELAYS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the first request carries no node")]
    MissingNode,
    #[error("node {node:?}: metadata `{GATEWAY_KEY}` must be `namespace/name`, got {value:?}")]
    BadGateway { node: String, value: String },
    #[error(
        "node {node:?}: metadata `{ROLE_KEY}` must be `gateway`, `l4` or `grpc`, got {value:?}"
    )]
    BadRole { node: String, value: String },
    #[error("node {node:?}: metadata `{REFRESH_DELAY_KEY}` must be a duration from 100ms to 1h, got {value:?}")]
    BadRefreshDelay { node: String, value: String },
    #[error("the client certificate names no gateway of trust domain {trust_domain:?} (expected a URI SAN spiffe://{trust_domain}/ns/<namespace>/gateway/<name>)")]
    NoCertificateIdentity { trust_domain: String },
    #[error("node {node:?} claims gateway {claimed} but its certificate is for {certified}")]
    Mismatch {
        node: String,
        claimed: ObjectKey,
        certified: ObjectKey,
    },
}

/// The gateway a verified client certificate (DER, leaf first) was issued to: its URI SAN
/// `spiffe://<trust_domain>/ns/<namespace>/gateway/<name>`.
pub fn certified_gateway(
    chain: &[impl AsRef<[u8]>],
    trust_domain: &str,
) -> Result<ObjectKey, IdentityError> {
    leaf_uris(chain)
        .iter()
        .find_map(|uri| gateway_of_spiffe_id(uri, trust_domain))
        .ok_or_else(|| no_identity(trust_domain))
}

fn no_identity(trust_domain: &str) -> IdentityError {
    IdentityError::NoCertificateIdentity {
        trust_domain: trust_domain.to_owned(),
    }
}

pub use crate::core::model::tls::leaf_uris;

/// Who a verified client certificate (DER, leaf first) names: an operator
/// (`spiffe://<trust_domain>/operator/<name>`) or a gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertifiedClient {
    Operator(String),
    Gateway(ObjectKey),
}

pub fn certified_client(
    chain: &[impl AsRef<[u8]>],
    trust_domain: &str,
) -> Result<CertifiedClient, IdentityError> {
    let operator = |uri: &str| {
        let name = uri
            .strip_prefix("spiffe://")?
            .strip_prefix(trust_domain)?
            .strip_prefix("/operator/")?;
        (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
    };
    leaf_uris(chain)
        .iter()
        .find_map(|uri| {
            gateway_of_spiffe_id(uri, trust_domain)
                .map(CertifiedClient::Gateway)
                .or_else(|| operator(uri).map(CertifiedClient::Operator))
        })
        .ok_or_else(|| no_identity(trust_domain))
}

fn gateway_of_spiffe_id(uri: &str, trust_domain: &str) -> Option<ObjectKey> {
    let path = uri
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/ns/")?;
    let (namespace, rest) = path.split_once('/')?;
    let name = rest.strip_prefix("gateway/")?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
        .then(|| ObjectKey::new(namespace, name))
}

/// The node's identity, held to its certificate when there is one: a node may not claim a
/// gateway other than the one its certificate was issued to.
pub fn verified_identity(
    node: Option<&Node>,
    certified: Option<&ObjectKey>,
) -> Result<GatewayIdentity, IdentityError> {
    let identity = identity_of(node)?;
    match certified {
        Some(certified) if certified != &identity.gateway => Err(IdentityError::Mismatch {
            node: node.map(|n| n.id.clone()).unwrap_or_default(),
            claimed: identity.gateway,
            certified: certified.clone(),
        }),
        _ => Ok(identity),
    }
}

/// A string field of the node's metadata.
fn metadata_string(node: &Node, key: &str) -> Option<String> {
    node.metadata
        .as_ref()?
        .fields
        .get(key)
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

/// How often a polling proxy says it polls (`meridian.dev/refresh-delay`), or the default.
pub fn refresh_delay_of(node: &Node) -> Result<Duration, IdentityError> {
    let Some(value) = metadata_string(node, REFRESH_DELAY_KEY) else {
        return Ok(DEFAULT_REFRESH_DELAY);
    };
    crate::core::duration::parse(&value)
        .ok()
        .filter(|d| REFRESH_DELAYS.contains(d))
        .ok_or_else(|| IdentityError::BadRefreshDelay {
            node: node.id.clone(),
            value,
        })
}

pub fn identity_of(node: Option<&Node>) -> Result<GatewayIdentity, IdentityError> {
    let node = node.ok_or(IdentityError::MissingNode)?;
    let field = |key: &str| metadata_string(node, key);
    let gateway = field(GATEWAY_KEY).unwrap_or_default();
    let Some((namespace, name)) = gateway
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
    else {
        return Err(IdentityError::BadGateway {
            node: node.id.clone(),
            value: gateway,
        });
    };
    let role = match field(ROLE_KEY).as_deref() {
        None | Some("gateway") => NodeRole::Gateway,
        Some("l4") => NodeRole::L4,
        Some("grpc") => NodeRole::Grpc,
        Some(other) => {
            return Err(IdentityError::BadRole {
                node: node.id.clone(),
                value: other.to_owned(),
            })
        }
    };
    Ok(GatewayIdentity {
        role,
        xds: crate::core::translate::XdsTransport::Ads,
        gateway: ObjectKey::new(namespace, name),
        cluster: field(CLUSTER_KEY)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| LOCAL_CLUSTER.to_owned()),
        zone: field(ZONE_KEY).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(fields: &[(&str, &str)]) -> Node {
        Node {
            id: "gw-1".into(),
            metadata: Some(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value {
                                kind: Some(Kind::StringValue(v.to_string())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_metadata_with_local_default() {
        let id = identity_of(Some(&node(&[(GATEWAY_KEY, "edge/public")]))).unwrap();
        assert_eq!(id.gateway, ObjectKey::new("edge", "public"));
        assert_eq!(id.cluster, "local");
        let id = identity_of(Some(&node(&[
            (GATEWAY_KEY, "edge/public"),
            (CLUSTER_KEY, "east"),
            (ZONE_KEY, "z1"),
        ])))
        .unwrap();
        assert_eq!((id.cluster.as_str(), id.zone.as_str()), ("east", "z1"));
    }

    #[test]
    fn the_role_is_a_gateway_unless_the_node_says_l4() {
        let gateway = identity_of(Some(&node(&[(GATEWAY_KEY, "edge/public")]))).unwrap();
        assert_eq!(gateway.role, NodeRole::Gateway);
        let l4 = identity_of(Some(&node(&[
            (GATEWAY_KEY, "meridian-system/l4"),
            (ROLE_KEY, "l4"),
        ])))
        .unwrap();
        assert_eq!(l4.role, NodeRole::L4);
        let error = identity_of(Some(&node(&[
            (GATEWAY_KEY, "edge/public"),
            (ROLE_KEY, "L7"),
        ])))
        .unwrap_err();
        assert!(error.to_string().contains("\"L7\""), "{error}");
    }

    #[test]
    fn spiffe_ids_name_a_gateway_of_the_trust_domain_only() {
        let td = "meridian.local";
        assert_eq!(
            gateway_of_spiffe_id("spiffe://meridian.local/ns/edge/gateway/public", td),
            Some(ObjectKey::new("edge", "public"))
        );
        for bad in [
            "spiffe://other.local/ns/edge/gateway/public",
            "spiffe://meridian.local/ns/edge/sa/public",
            "spiffe://meridian.local/ns//gateway/public",
            "spiffe://meridian.local/ns/edge/gateway/a/b",
            "https://meridian.local/ns/edge/gateway/public",
        ] {
            assert_eq!(gateway_of_spiffe_id(bad, td), None, "{bad}");
        }
    }

    #[test]
    fn a_node_cannot_claim_another_gateway_than_its_certificate() {
        let node = node(&[(GATEWAY_KEY, "edge/public")]);
        let mine = ObjectKey::new("edge", "public");
        let other = ObjectKey::new("edge", "internal");
        assert!(verified_identity(Some(&node), Some(&mine)).is_ok());
        assert!(verified_identity(Some(&node), None).is_ok());
        let error = verified_identity(Some(&node), Some(&other)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "node \"gw-1\" claims gateway edge/public but its certificate is for edge/internal"
        );
    }

    #[test]
    fn a_polling_node_says_its_refresh_delay_within_bounds() {
        let plain = node(&[(GATEWAY_KEY, "edge/public")]);
        assert_eq!(refresh_delay_of(&plain).unwrap(), DEFAULT_REFRESH_DELAY);
        let said = node(&[(GATEWAY_KEY, "edge/public"), (REFRESH_DELAY_KEY, "500ms")]);
        assert_eq!(refresh_delay_of(&said).unwrap(), Duration::from_millis(500));
        for bad in ["soon", "10ms", "2h", ""] {
            let error = refresh_delay_of(&node(&[
                (GATEWAY_KEY, "edge/public"),
                (REFRESH_DELAY_KEY, bad),
            ]))
            .unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains(&format!("{REFRESH_DELAY_KEY}` must be a duration")),
                "{error}"
            );
        }
    }

    #[test]
    fn rejects_missing_or_malformed_gateway() {
        assert!(identity_of(None).is_err());
        assert!(identity_of(Some(&node(&[]))).is_err());
        assert!(identity_of(Some(&node(&[(GATEWAY_KEY, "public")]))).is_err());
    }
}
