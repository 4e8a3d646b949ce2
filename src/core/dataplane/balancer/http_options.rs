//! The upstream HTTP protocol of a cluster: Envoy's `HttpProtocolOptions` extension (what
//! Meridian and Istio send), or the deprecated cluster fields older control planes still set.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::{Message, Name};

use crate::core::dataplane::{refuse_leftovers, CompileError};

/// What the proxy honours of a cluster's upstream HTTP settings.
#[derive(Debug, Default, PartialEq)]
pub(super) struct UpstreamHttp {
    pub http2: bool,
    /// `None` is no cap; Envoy reads 0 the same way.
    pub max_requests_per_connection: Option<u32>,
}

/// Takes the upstream HTTP settings out of `rest`; anything in them the proxy cannot honour is
/// refused by name.
pub(super) fn take(rest: &mut Cluster, resource: &str) -> Result<UpstreamHttp, CompileError> {
    #[allow(deprecated)]
    let mut settings = UpstreamHttp {
        http2: rest.http2_protocol_options.take().is_some(),
        max_requests_per_connection: rest.max_requests_per_connection.take().map(|v| v.value),
    };
    let extensions = std::mem::take(&mut rest.typed_extension_protocol_options);
    for (key, any) in extensions {
        let field = format!("typed_extension_protocol_options[{key}]");
        if any.type_url != HttpProtocolOptions::type_url() {
            return Err(CompileError::new(
                resource,
                field,
                format!("{} is not supported by meridian proxy", any.type_url),
            ));
        }
        let mut options = HttpProtocolOptions::decode(any.value.as_slice())
            .map_err(|e| CompileError::new(resource, &field, e.to_string()))?;
        if let Some(mut common) = options.common_http_protocol_options.take() {
            if let Some(cap) = common.max_requests_per_connection.take() {
                settings.max_requests_per_connection = Some(cap.value);
            }
            refuse_leftovers(
                &common,
                resource,
                &format!("{field}.common_http_protocol_options"),
            )?;
        }
        match options.upstream_protocol_options.take() {
            None => {}
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(mut explicit)) => {
                let protocol_field = format!("{field}.explicit_http_config");
                match explicit.protocol_config.take() {
                    Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                        refuse_leftovers(
                            &h2,
                            resource,
                            &format!("{protocol_field}.http2_protocol_options"),
                        )?;
                        settings.http2 = true;
                    }
                    Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                        refuse_leftovers(
                            &h1,
                            resource,
                            &format!("{protocol_field}.http_protocol_options"),
                        )?;
                        settings.http2 = false;
                    }
                    _ => {
                        return Err(CompileError::new(
                            resource,
                            protocol_field,
                            "only HTTP/1.1 or HTTP/2 is supported by meridian proxy",
                        ))
                    }
                }
            }
            Some(_) => {
                return Err(CompileError::new(
                    resource,
                    format!("{field}.upstream_protocol_options"),
                    "only explicit_http_config is supported by meridian proxy",
                ))
            }
        }
        refuse_leftovers(&options, resource, &field)?;
    }
    settings.max_requests_per_connection = settings.max_requests_per_connection.filter(|&n| n > 0);
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{
        Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::ExplicitHttpConfig;
    use envoy_types::pb::google::protobuf::{Any, UInt32Value};

    use super::*;

    fn cluster_with(options: HttpProtocolOptions) -> Cluster {
        let mut cluster = Cluster::default();
        cluster.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            Any {
                type_url: HttpProtocolOptions::type_url(),
                value: options.encode_to_vec(),
            },
        );
        cluster
    }

    fn h2(settings: Http2ProtocolOptions, cap: Option<u32>) -> HttpProtocolOptions {
        HttpProtocolOptions {
            common_http_protocol_options: cap.map(|value| CommonHttpOptions {
                max_requests_per_connection: Some(UInt32Value { value }),
                ..Default::default()
            }),
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(settings)),
                },
            )),
            ..Default::default()
        }
    }

    #[test]
    fn the_extension_sets_http2_and_the_cap_and_leaves_nothing_behind() {
        let mut cluster = cluster_with(h2(Http2ProtocolOptions::default(), Some(3)));
        let settings = take(&mut cluster, "Cluster c").unwrap();
        assert_eq!(
            settings,
            UpstreamHttp {
                http2: true,
                max_requests_per_connection: Some(3)
            }
        );
        assert_eq!(cluster, Cluster::default());

        let mut uncapped = cluster_with(h2(Http2ProtocolOptions::default(), Some(0)));
        assert_eq!(
            take(&mut uncapped, "Cluster c")
                .unwrap()
                .max_requests_per_connection,
            None
        );
    }

    #[test]
    fn settings_the_proxy_cannot_honour_are_refused_by_name() {
        let tuned = Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value { value: 7 }),
            ..Default::default()
        };
        let error = take(&mut cluster_with(h2(tuned, None)), "Cluster c").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("explicit_http_config.http2_protocol_options")
                && error.to_string().contains("maxConcurrentStreams"),
            "{error}"
        );

        let mut foreign = Cluster::default();
        foreign
            .typed_extension_protocol_options
            .insert("x".into(), Any::default());
        let error = take(&mut foreign, "Cluster c").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("typed_extension_protocol_options[x]"),
            "{error}"
        );
    }
}
