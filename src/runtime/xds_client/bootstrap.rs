//! The bootstrap `meridian bootstrap` prints for Envoy, read by Meridian's own data planes
//! (`meridian proxy`, `meridian l4`): who the node is (id, gateway or tier, cluster, zone,
//! role) and where Meridian's ADS server is.

use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as ProtoValue};
use serde_json::Value;

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

/// Mutual TLS to Meridian, as `meridian bootstrap --cert-dir` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsTls {
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
    /// The URI SAN (SPIFFE ID) the server's certificate must carry.
    pub server_identity: String,
}

/// Which data plane reads a bootstrap: each refuses one printed for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `meridian proxy`, an L7 gateway (`meridian.dev/role` absent or `gateway`).
    Proxy,
    /// `meridian l4`, an L4 node (`meridian.dev/role: l4`).
    L4,
    /// `meridian haproxy`, an L7 gateway served by HAProxy (role as for `meridian proxy`).
    Haproxy,
}

impl Program {
    fn role(self) -> &'static str {
        match self {
            Program::Proxy | Program::Haproxy => "gateway",
            Program::L4 => "l4",
        }
    }

    fn user_agent(self) -> &'static str {
        match self {
            Program::Proxy => "meridian-proxy",
            Program::L4 => "meridian-l4",
            Program::Haproxy => "meridian-haproxy",
        }
    }
}

/// What a data plane needs from a bootstrap.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    pub node: Node,
    /// The ADS server.
    pub xds_host: String,
    pub xds_port: u16,
    pub tls: Option<XdsTls>,
    /// Send load reports to Meridian (`cluster_manager.load_stats_config` names its cluster).
    pub load_reports: bool,
    /// Incremental (delta) ADS rather than state of the world (`api_type: DELTA_GRPC`).
    pub delta: bool,
    /// The admin listener (`admin.address`), if any.
    pub admin: Option<std::net::SocketAddr>,
}

impl Bootstrap {
    pub fn load(path: &Path, program: Program) -> Result<Bootstrap, BootstrapError> {
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
        Bootstrap::parse(&value, program).map_err(|(field, message)| BootstrapError::Field {
            path: shown,
            field,
            message,
        })
    }

    /// Reads the fields `meridian bootstrap` writes; refuses what `program` cannot honour.
    pub fn parse(value: &Value, program: Program) -> Result<Bootstrap, (&'static str, String)> {
        let node = &value["node"];
        let id = node["id"].as_str().unwrap_or_default();
        if id.is_empty() {
            return Err(("node.id", "missing".to_owned()));
        }
        let role_key = crate::api::node_metadata::ROLE;
        let role = node["metadata"][role_key].as_str().unwrap_or("gateway");
        if role != program.role() {
            let hint = match program {
                Program::Proxy | Program::Haproxy => {
                    "this is an L7 gateway (print its bootstrap without --role)"
                }
                Program::L4 => "meridian l4 is an L4 node (print its bootstrap with --role l4)",
            };
            return Err(("node.metadata", format!("{role_key} is {role:?}: {hint}")));
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
        if ads.is_null() && !value["dynamic_resources"]["lds_config"]["api_config_source"].is_null()
        {
            return Err((
                "dynamic_resources.ads_config",
                "missing: this bootstrap polls over REST xDS, which only Envoy does; print one \
                 without --rest"
                    .to_owned(),
            ));
        }
        let delta = match ads["api_type"].as_str() {
            Some("GRPC") => false,
            Some("DELTA_GRPC") => true,
            other => {
                return Err((
                    "dynamic_resources.ads_config.api_type",
                    format!("{other:?}: GRPC expected"),
                ))
            }
        };
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
        let tls = match &xds["transport_socket"] {
            serde_json::Value::Null => None,
            socket => Some(xds_tls(socket)?),
        };
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
                user_agent_name: program.user_agent().to_owned(),
                ..Default::default()
            },
            load_reports: value["cluster_manager"]["load_stats_config"]["grpc_services"][0]
                ["envoy_grpc"]["cluster_name"]
                == cluster_name,
            xds_host: host.to_owned(),
            xds_port: port as u16,
            tls,
            admin,
            delta,
        })
    }
}

/// The files and identity of an `UpstreamTlsContext`: client certificate and key, the CA, and
/// the one URI SAN the server must carry (nothing less pinned is accepted).
fn xds_tls(socket: &Value) -> Result<XdsTls, (&'static str, String)> {
    const FIELD: &str = "static_resources.clusters[].transport_socket";
    let context = &socket["typed_config"]["common_tls_context"];
    let file = |value: &Value, what: &str| {
        value["filename"]
            .as_str()
            .map(str::to_owned)
            .ok_or((FIELD, format!("{what}: a filename is required")))
    };
    let certificate = &context["tls_certificates"][0];
    let validation = &context["validation_context"];
    let san = &validation["match_typed_subject_alt_names"][0];
    let server_identity = match (san["san_type"].as_str(), san["matcher"]["exact"].as_str()) {
        (Some("URI"), Some(id)) => id.to_owned(),
        _ => {
            return Err((
                FIELD,
                "the xDS server's identity must be pinned by an exact URI SAN".to_owned(),
            ))
        }
    };
    Ok(XdsTls {
        cert_file: file(&certificate["certificate_chain"], "certificate_chain")?,
        key_file: file(&certificate["private_key"], "private_key")?,
        ca_file: file(&validation["trusted_ca"], "trusted_ca")?,
        server_identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::bootstrap::{bootstrap, BootstrapOptions};

    fn options(delta: bool) -> BootstrapOptions {
        BootstrapOptions {
            l4: false,
            node_id: "gw-1".into(),
            gateway: "edge/public".into(),
            cluster: Some("east".into()),
            zone: Some("z1".into()),
            xds_host: "127.0.0.1".into(),
            xds_port: 18000,
            delta,
            rest: None,
            admin_port: 19000,
            tls: None,
        }
    }

    #[test]
    fn reads_what_meridian_bootstrap_prints() {
        let parsed = Bootstrap::parse(&bootstrap(&options(false)), Program::Proxy).unwrap();
        assert_eq!(parsed.node.id, "gw-1");
        assert_eq!(
            (parsed.xds_host.as_str(), parsed.xds_port),
            ("127.0.0.1", 18000)
        );
        assert_eq!(parsed.tls, None);
        assert!(parsed.load_reports);
        assert_eq!(parsed.admin, Some("127.0.0.1:19000".parse().unwrap()));
        let polling = bootstrap(&BootstrapOptions {
            rest: Some(std::time::Duration::from_secs(3)),
            ..options(false)
        });
        let refused = Bootstrap::parse(&polling, Program::Proxy).unwrap_err();
        assert_eq!(refused.0, "dynamic_resources.ads_config", "{refused:?}");
        assert!(refused.1.contains("REST"), "{refused:?}");
        let mut l4 = bootstrap(&BootstrapOptions {
            l4: true,
            ..options(false)
        });
        let refused = Bootstrap::parse(&l4, Program::Proxy).unwrap_err();
        assert_eq!(refused.0, "node.metadata", "{refused:?}");
        assert!(refused.1.contains("\"l4\""), "{refused:?}");
        let node = Bootstrap::parse(&l4, Program::L4).unwrap().node;
        assert_eq!(node.user_agent_name, "meridian-l4");
        let refused = Bootstrap::parse(&bootstrap(&options(false)), Program::L4).unwrap_err();
        assert!(refused.1.contains("--role l4"), "{refused:?}");
        l4["node"]["metadata"][crate::control_plane::xds::identity::ROLE_KEY] = "gateway".into();
        assert!(Bootstrap::parse(&l4, Program::Proxy).is_ok());

        let fields = &parsed.node.metadata.unwrap().fields;
        assert!(fields.contains_key(crate::control_plane::xds::identity::GATEWAY_KEY));
        let mut with_tls = options(false);
        with_tls.tls = Some(crate::control_plane::bootstrap::ClientTls {
            cert_file: "/c/tls.crt".into(),
            key_file: "/c/tls.key".into(),
            ca_file: "/c/ca.crt".into(),
            server_identity: "spiffe://meridian.local/xds".into(),
        });
        let tls = Bootstrap::parse(&bootstrap(&with_tls), Program::Proxy)
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.server_identity, "spiffe://meridian.local/xds");
        assert_eq!(
            (tls.cert_file.as_str(), tls.ca_file.as_str()),
            ("/c/tls.crt", "/c/ca.crt")
        );
        assert!(
            !Bootstrap::parse(&bootstrap(&options(false)), Program::Proxy)
                .unwrap()
                .delta
        );
        assert!(
            Bootstrap::parse(&bootstrap(&options(true)), Program::Proxy)
                .unwrap()
                .delta
        );
    }
}
