//! The bootstrap `meridian bootstrap` prints for Envoy, read by `meridian proxy`: who the
//! gateway is (node id, gateway, cluster, zone) and where Meridian's ADS server is.

use std::path::Path;

use serde_json::Value;
use xds_api::pb::envoy::config::core::v3::{Locality, Node};
use xds_api::pb::google::protobuf::{value::Kind, Struct, Value as ProtoValue};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {field}: {message}")]
    Field {
        path: String,
        field: &'static str,
        message: String,
    },
}

/// What the proxy needs from a bootstrap.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    pub node: Node,
    /// `host:port` of the ADS server.
    pub xds_address: String,
    /// The admin listener (`admin.address`), if any.
    pub admin: Option<std::net::SocketAddr>,
}

impl Bootstrap {
    pub fn load(path: &Path) -> Result<Bootstrap, BootstrapError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| BootstrapError::Read {
            path: shown.clone(),
            source,
        })?;
        let value: Value =
            serde_json::from_slice(&text).map_err(|source| BootstrapError::Json {
                path: shown.clone(),
                source,
            })?;
        Bootstrap::parse(&value).map_err(|(field, message)| BootstrapError::Field {
            path: shown,
            field,
            message,
        })
    }

    /// Reads the fields `meridian bootstrap` writes; refuses what this proxy cannot honour.
    pub fn parse(value: &Value) -> Result<Bootstrap, (&'static str, String)> {
        let node = &value["node"];
        let id = node["id"].as_str().unwrap_or_default();
        if id.is_empty() {
            return Err(("node.id", "missing".to_owned()));
        }
        let metadata = node["metadata"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let text = v.as_str()?.to_owned();
                        Some((
                            k.clone(),
                            ProtoValue {
                                kind: Some(Kind::StringValue(text)),
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ads = &value["dynamic_resources"]["ads_config"];
        match ads["api_type"].as_str() {
            Some("GRPC") => {}
            Some("DELTA_GRPC") => {
                return Err((
                    "dynamic_resources.ads_config.api_type",
                    "DELTA_GRPC is not supported by meridian proxy yet: print the bootstrap without --delta".to_owned(),
                ))
            }
            other => {
                return Err((
                    "dynamic_resources.ads_config.api_type",
                    format!("{other:?}: GRPC expected"),
                ))
            }
        }
        let cluster_name = ads["grpc_services"][0]["envoy_grpc"]["cluster_name"]
            .as_str()
            .unwrap_or_default();
        let clusters = value["static_resources"]["clusters"].as_array();
        let xds = clusters
            .into_iter()
            .flatten()
            .find(|c| c["name"] == cluster_name)
            .ok_or((
                "static_resources.clusters",
                format!("no cluster {cluster_name:?} for the ADS server"),
            ))?;
        if !xds["transport_socket"].is_null() {
            return Err((
                "static_resources.clusters[].transport_socket",
                "mutual TLS to Meridian is not supported by meridian proxy yet".to_owned(),
            ));
        }
        let socket = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        let host = socket["address"].as_str().unwrap_or_default();
        let port = socket["port_value"].as_u64().unwrap_or(0);
        if host.is_empty() || port == 0 || port > 65535 {
            return Err((
                "static_resources.clusters[].load_assignment",
                "no ADS server address".to_owned(),
            ));
        }
        let admin = &value["admin"]["address"]["socket_address"];
        let admin = match (admin["address"].as_str(), admin["port_value"].as_u64()) {
            (Some(address), Some(port)) => format!("{address}:{port}").parse().ok(),
            _ => None,
        };
        Ok(Bootstrap {
            node: Node {
                id: id.to_owned(),
                cluster: node["cluster"].as_str().unwrap_or_default().to_owned(),
                metadata: Some(Struct { fields: metadata }),
                locality: Some(Locality {
                    zone: node["locality"]["zone"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    ..Default::default()
                }),
                user_agent_name: "meridian-proxy".to_owned(),
                ..Default::default()
            },
            xds_address: format!("{host}:{port}"),
            admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::bootstrap::{bootstrap, BootstrapOptions};

    fn options(delta: bool) -> BootstrapOptions {
        BootstrapOptions {
            node_id: "gw-1".into(),
            gateway: "edge/public".into(),
            cluster: Some("east".into()),
            zone: Some("z1".into()),
            xds_host: "127.0.0.1".into(),
            xds_port: 18000,
            delta,
            admin_port: 19000,
            tls: None,
        }
    }

    #[test]
    fn reads_what_meridian_bootstrap_prints() {
        let parsed = Bootstrap::parse(&bootstrap(&options(false))).unwrap();
        assert_eq!(parsed.node.id, "gw-1");
        assert_eq!(parsed.xds_address, "127.0.0.1:18000");
        assert_eq!(parsed.admin, Some("127.0.0.1:19000".parse().unwrap()));
        let fields = &parsed.node.metadata.unwrap().fields;
        assert!(fields.contains_key(crate::control_plane::xds::identity::GATEWAY_KEY));
        let (field, message) = Bootstrap::parse(&bootstrap(&options(true))).unwrap_err();
        assert!(
            field.ends_with("api_type") && message.contains("DELTA"),
            "{message}"
        );
    }
}
