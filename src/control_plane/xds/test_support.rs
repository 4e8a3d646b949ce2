//! Builders for protocol tests: small configurations with named resources.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use crate::core::resources::{GatewayConfig, Resource, ResourceType};

/// `spec` entries are `"CDS:a"`, `"EDS:a"`, `"LDS:l"`, `"RDS:r"`; `tag` changes content,
/// and `"CDS:a@t"` gives one entry its own tag.
pub fn config(spec: &[&str], tag: &str) -> Arc<GatewayConfig> {
    let mut config = GatewayConfig::default();
    for entry in spec {
        let (kind, rest) = entry.split_once(':').unwrap();
        let (name, tag) = rest.split_once('@').unwrap_or((rest, tag));
        let (kind, resource) = match kind {
            "CDS" => (
                ResourceType::Cluster,
                Resource::new(
                    name,
                    &Cluster {
                        name: name.into(),
                        alt_stat_name: tag.into(),
                        ..Default::default()
                    },
                ),
            ),
            "EDS" => (
                ResourceType::Endpoint,
                Resource::new(
                    name,
                    &ClusterLoadAssignment {
                        cluster_name: format!("{name}{tag}"),
                        ..Default::default()
                    },
                ),
            ),
            "LDS" => (
                ResourceType::Listener,
                Resource::new(
                    name,
                    &Listener {
                        name: name.into(),
                        stat_prefix: tag.into(),
                        ..Default::default()
                    },
                ),
            ),
            "RDS" => (
                ResourceType::Route,
                Resource::new(
                    name,
                    &RouteConfiguration {
                        name: name.into(),
                        internal_only_headers: vec![tag.into()],
                        ..Default::default()
                    },
                ),
            ),
            other => panic!("unknown kind {other}"),
        };
        config.insert(kind, resource);
    }
    Arc::new(config)
}
