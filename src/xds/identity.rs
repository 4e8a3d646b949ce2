//! Gateway identity from Envoy node metadata (`meridian.dev/gateway`, `/cluster`, `/zone`).

use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::google::protobuf::value::Kind;

use crate::api::LOCAL_CLUSTER;
use crate::core::model::ObjectKey;
use crate::core::translate::GatewayIdentity;

pub const GATEWAY_KEY: &str = "meridian.dev/gateway";
pub const CLUSTER_KEY: &str = "meridian.dev/cluster";
pub const ZONE_KEY: &str = "meridian.dev/zone";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the first request carries no node")]
    MissingNode,
    #[error("node {node:?}: metadata `{GATEWAY_KEY}` must be `namespace/name`, got {value:?}")]
    BadGateway { node: String, value: String },
}

pub fn identity_of(node: Option<&Node>) -> Result<GatewayIdentity, IdentityError> {
    let node = node.ok_or(IdentityError::MissingNode)?;
    let field = |key: &str| -> Option<String> {
        node.metadata
            .as_ref()?
            .fields
            .get(key)
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    };
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
    Ok(GatewayIdentity {
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
    use xds_api::pb::google::protobuf::{Struct, Value};

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
    fn rejects_missing_or_malformed_gateway() {
        assert!(identity_of(None).is_err());
        assert!(identity_of(Some(&node(&[]))).is_err());
        assert!(identity_of(Some(&node(&[(GATEWAY_KEY, "public")]))).is_err());
    }
}
