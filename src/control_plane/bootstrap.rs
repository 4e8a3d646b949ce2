//! `meridian bootstrap`: an Envoy bootstrap that connects to Meridian over ADS, or polls it
//! over REST xDS.

use std::time::Duration;

use serde_json::{json, Value};

use crate::control_plane::xds::identity::{
    CLUSTER_KEY, GATEWAY_KEY, REFRESH_DELAY_KEY, ROLE_KEY, ZONE_KEY,
};
use crate::core::duration;
use crate::core::translate::{REST_REQUEST_TIMEOUT, XDS_CLUSTER};

#[derive(Clone, Debug)]
pub struct BootstrapOptions {
    pub node_id: String,
    /// `namespace/name` of the Gateway this proxy serves (an L4 node: of its tier).
    pub gateway: String,
    /// An L4 node (`meridian.dev/role: l4`) rather than a gateway.
    pub l4: bool,
    pub cluster: Option<String>,
    pub zone: Option<String>,
    /// Meridian's xDS address, `host:port`.
    pub xds_host: String,
    pub xds_port: u16,
    pub delta: bool,
    /// Poll over REST xDS every this long (HTTP/1.1, `304 Not Modified` while nothing
    /// changed) instead of holding an ADS stream.
    pub rest: Option<Duration>,
    /// Envoy's own admin port on 127.0.0.1.
    pub admin_port: u16,
    /// Mutual TLS to Meridian, when it requires it.
    pub tls: Option<ClientTls>,
}

/// Files holding a gateway's client credentials, and the identity the xDS server must prove.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
    /// URI SAN the server certificate must carry.
    pub server_identity: String,
}

/// The bootstrap as JSON (Envoy accepts JSON or YAML).
pub fn bootstrap(o: &BootstrapOptions) -> Value {
    let mut metadata = serde_json::Map::new();
    metadata.insert(GATEWAY_KEY.into(), json!(o.gateway));
    if o.l4 {
        metadata.insert(ROLE_KEY.into(), json!("l4"));
    }
    if let Some(cluster) = &o.cluster {
        metadata.insert(CLUSTER_KEY.into(), json!(cluster));
    }
    if let Some(zone) = &o.zone {
        metadata.insert(ZONE_KEY.into(), json!(zone));
    }
    if let Some(refresh) = o.rest {
        metadata.insert(REFRESH_DELAY_KEY.into(), json!(duration::format(refresh)));
    }
    let api_type = if o.delta { "DELTA_GRPC" } else { "GRPC" };
    let mut bootstrap = json!({
        "node": {
            "id": o.node_id,
            "cluster": o.gateway.replace('/', "."),
            "metadata": metadata,
            "locality": { "zone": o.zone.clone().unwrap_or_default() },
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": o.admin_port } }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": XDS_CLUSTER } }]
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        // Upstream requests and failures, reported to Meridian: the rollouts' health signal.
        "cluster_manager": {
            "load_stats_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": XDS_CLUSTER } }]
            }
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": "STRICT_DNS",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "socket_address": { "address": o.xds_host, "port_value": o.xds_port }
                    }}}]}]
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {
                            "http2_protocol_options": {
                                "connection_keepalive": { "interval": "10s", "timeout": "5s" }
                            }
                        }
                    }
                }
            }]
        }
    });
    if let Some(refresh) = o.rest {
        poll_over_rest(&mut bootstrap, refresh, o.tls.is_some());
    }
    if let Some(tls) = &o.tls {
        bootstrap["static_resources"]["clusters"][0]["transport_socket"] = upstream_tls(o, tls);
    }
    bootstrap
}

/// Turns an ADS bootstrap into one that polls: LDS and CDS over REST every `refresh` through
/// the xDS cluster, no long-lived stream anywhere. Plain polls are HTTP/1.1; over TLS they stay
/// HTTP/2, the one protocol Meridian's TLS offers (ALPN h2). Load reports need a gRPC stream,
/// so a polling proxy sends none.
fn poll_over_rest(bootstrap: &mut Value, refresh: Duration, over_tls: bool) {
    let source = json!({
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": [XDS_CLUSTER],
            "refresh_delay": duration::format(refresh),
            "request_timeout": duration::format(REST_REQUEST_TIMEOUT),
        },
        "resource_api_version": "V3"
    });
    bootstrap["dynamic_resources"] = json!({ "cds_config": source, "lds_config": source });
    if let Some(manager) = bootstrap["cluster_manager"].as_object_mut() {
        manager.remove("load_stats_config");
    }
    if over_tls {
        return;
    }
    if let Some(cluster) = bootstrap["static_resources"]["clusters"][0].as_object_mut() {
        cluster.remove("typed_extension_protocol_options");
    }
}

/// A gRPC xDS bootstrap (`GRPC_XDS_BOOTSTRAP`) for a proxyless gRPC application that uses the
/// routes of `o.gateway`: ADS to Meridian (insecure, or mutual TLS with `o.tls`, gRFC A65), a
/// node with the role `grpc`. The application then dials `xds:///<host>:<port>`.
pub fn grpc_bootstrap(o: &BootstrapOptions) -> Value {
    let mut metadata = serde_json::Map::new();
    metadata.insert(GATEWAY_KEY.into(), json!(o.gateway));
    metadata.insert(ROLE_KEY.into(), json!("grpc"));
    if let Some(cluster) = &o.cluster {
        metadata.insert(CLUSTER_KEY.into(), json!(cluster));
    }
    if let Some(zone) = &o.zone {
        metadata.insert(ZONE_KEY.into(), json!(zone));
    }
    let credentials = match &o.tls {
        None => json!({ "type": "insecure" }),
        Some(tls) => json!({ "type": "tls", "config": {
            "ca_certificate_file": tls.ca_file,
            "certificate_file": tls.cert_file,
            "private_key_file": tls.key_file,
        }}),
    };
    json!({
        "xds_servers": [{
            "server_uri": format!("{}:{}", o.xds_host, o.xds_port),
            "channel_creds": [credentials],
            "server_features": ["xds_v3"]
        }],
        "node": {
            "id": o.node_id,
            "cluster": o.gateway.replace('/', "."),
            "metadata": metadata,
            "locality": { "zone": o.zone.clone().unwrap_or_default() },
        }
    })
}

/// TLS to the xDS server: present the gateway's certificate, trust only Meridian's CA, and
/// accept only the xDS server's own identity (not a certificate issued for some gateway host).
fn upstream_tls(o: &BootstrapOptions, tls: &ClientTls) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": o.xds_host,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{
                    "certificate_chain": { "filename": tls.cert_file },
                    "private_key": { "filename": tls.key_file }
                }],
                "validation_context": {
                    "trusted_ca": { "filename": tls.ca_file },
                    "match_typed_subject_alt_names": [{
                        "san_type": "URI",
                        "matcher": { "exact": tls.server_identity }
                    }]
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_identity_and_ads_mode() {
        let b = bootstrap(&BootstrapOptions {
            node_id: "gw-1".into(),
            gateway: "edge/public".into(),
            l4: false,
            cluster: Some("east".into()),
            zone: Some("z1".into()),
            xds_host: "127.0.0.1".into(),
            xds_port: 18000,
            delta: true,
            rest: None,
            admin_port: 19000,
            tls: None,
        });
        assert_eq!(b["node"]["metadata"][GATEWAY_KEY], "edge/public");
        assert_eq!(b["node"]["metadata"][CLUSTER_KEY], "east");
        assert!(b["node"]["metadata"][ROLE_KEY].is_null());
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert!(b["static_resources"]["clusters"][0]["transport_socket"].is_null());
        assert_eq!(
            b["cluster_manager"]["load_stats_config"]["grpc_services"][0]["envoy_grpc"]
                ["cluster_name"],
            XDS_CLUSTER
        );
    }

    #[test]
    fn a_polling_bootstrap_names_rest_sources_and_its_refresh_delay() {
        let b = bootstrap(&BootstrapOptions {
            node_id: "gw-1".into(),
            gateway: "edge/public".into(),
            l4: false,
            cluster: None,
            zone: None,
            xds_host: "127.0.0.1".into(),
            xds_port: 18000,
            delta: false,
            rest: Some(Duration::from_millis(1500)),
            admin_port: 19000,
            tls: None,
        });
        assert_eq!(b["node"]["metadata"][REFRESH_DELAY_KEY], "1.5s");
        for source in ["lds_config", "cds_config"] {
            let api = &b["dynamic_resources"][source]["api_config_source"];
            assert_eq!(api["api_type"], "REST", "{source}");
            assert_eq!(api["refresh_delay"], "1.5s", "{source}");
            assert_eq!(api["cluster_names"][0], XDS_CLUSTER, "{source}");
        }
        assert!(b["dynamic_resources"]["ads_config"].is_null());
        assert!(b["cluster_manager"]["load_stats_config"].is_null());
        // Plain polls are HTTP/1.1: no HTTP/2 protocol options on the xDS cluster.
        assert!(b["static_resources"]["clusters"][0]["typed_extension_protocol_options"].is_null());
    }

    #[test]
    fn a_grpc_bootstrap_names_the_server_and_a_grpc_node() {
        let b = grpc_bootstrap(&BootstrapOptions {
            node_id: "app-1".into(),
            gateway: "edge/public".into(),
            l4: false,
            cluster: None,
            zone: Some("zone-a".into()),
            xds_host: "127.0.0.1".into(),
            xds_port: 18000,
            delta: false,
            rest: None,
            admin_port: 0,
            tls: None,
        });
        assert_eq!(b["xds_servers"][0]["server_uri"], "127.0.0.1:18000");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "insecure");
        assert_eq!(b["xds_servers"][0]["server_features"][0], "xds_v3");
        assert_eq!(b["node"]["metadata"][ROLE_KEY], "grpc");
        assert_eq!(b["node"]["metadata"][GATEWAY_KEY], "edge/public");
        assert_eq!(b["node"]["locality"]["zone"], "zone-a");
    }
}
