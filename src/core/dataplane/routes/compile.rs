//! From Envoy's route messages to the compiled table: each honoured field taken out, anything
//! left refused by name.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{data_source, HeaderValueOption};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action as EnvoyAction;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy as EnvoyHashPolicy, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route as EnvoyRoute,
    RouteAction, RouteMatch, VirtualHost as EnvoyVirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use regex::Regex;

use super::hashing::{HashPolicy, HashSource};
use super::{
    Action, Forward, HeaderEdits, HeaderMatch, Matcher, PathMatch, QueryMatch, Redirect, Retry,
    Route, StringKind, StringTest, Target, ValueTest, VirtualHost,
};
use crate::core::dataplane::{refuse_leftovers, CompileError};

/// Compiles a virtual host, consuming it.
pub(super) fn virtual_host(
    mut rest: EnvoyVirtualHost,
    resource: &str,
    field: &str,
) -> Result<VirtualHost, CompileError> {
    rest.name.clear();
    let domains = std::mem::take(&mut rest.domains)
        .into_iter()
        .map(|domain| domain.to_ascii_lowercase())
        .collect();
    let routes = std::mem::take(&mut rest.routes);
    refuse_leftovers(&rest, resource, field)?;
    let routes = routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| route(r, resource, &format!("{field}.routes[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost { domains, routes })
}

fn route(mut rest: EnvoyRoute, resource: &str, field: &str) -> Result<Route, CompileError> {
    let name = std::mem::take(&mut rest.name);
    let route_match = rest.r#match.take().unwrap_or_default();
    let action = rest.action.take();
    let edits = header_edits(
        [
            std::mem::take(&mut rest.request_headers_to_add),
            std::mem::take(&mut rest.response_headers_to_add),
        ],
        [
            std::mem::take(&mut rest.request_headers_to_remove),
            std::mem::take(&mut rest.response_headers_to_remove),
        ],
        resource,
        field,
    )?;
    refuse_leftovers(&rest, resource, field)?;
    let matcher = matcher(route_match, resource, &format!("{field}.match"))?;
    let action = match action {
        Some(EnvoyAction::Route(action)) => {
            Action::Forward(forward(action, resource, &format!("{field}.route"))?)
        }
        Some(EnvoyAction::Redirect(redirect)) => Action::Redirect(redirect_of(
            &redirect,
            resource,
            &format!("{field}.redirect"),
        )?),
        Some(EnvoyAction::DirectResponse(mut direct)) => {
            let direct_field = format!("{field}.direct_response");
            let body = direct.body.take();
            let status = std::mem::take(&mut direct.status);
            refuse_leftovers(&direct, resource, &direct_field)?;
            let body = match body.and_then(|b| b.specifier) {
                None => None,
                Some(data_source::Specifier::InlineString(text)) => Some(text),
                Some(data_source::Specifier::InlineBytes(bytes)) => {
                    Some(String::from_utf8_lossy(&bytes).into_owned())
                }
                Some(_) => {
                    return Err(CompileError::new(
                        resource,
                        format!("{direct_field}.body"),
                        "only inline bodies are supported by meridian proxy",
                    ))
                }
            };
            let status = u16::try_from(status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| {
                    CompileError::new(
                        resource,
                        format!("{direct_field}.status"),
                        "must be 200-599",
                    )
                })?;
            Action::Direct { status, body }
        }
        _ => {
            return Err(CompileError::new(
                resource,
                format!("{field}.action"),
                "not supported by meridian proxy (route, redirect or direct_response are)",
            ))
        }
    };
    Ok(Route {
        name,
        matcher,
        action,
        edits,
    })
}

fn matcher(mut rest: RouteMatch, resource: &str, field: &str) -> Result<Matcher, CompileError> {
    let path = match rest.path_specifier.take() {
        Some(PathSpecifier::Prefix(prefix)) => PathMatch::Prefix(prefix),
        Some(PathSpecifier::Path(path)) => PathMatch::Exact(path),
        Some(PathSpecifier::SafeRegex(regex)) => PathMatch::Regex(full_regex(
            &regex.regex,
            resource,
            &format!("{field}.safe_regex"),
        )?),
        _ => {
            return Err(CompileError::new(
                resource,
                format!("{field}.path_specifier"),
                "only prefix, path and safe_regex are supported by meridian proxy",
            ))
        }
    };
    let case_sensitive = rest.case_sensitive.take().is_none_or(|b| b.value);
    let headers = std::mem::take(&mut rest.headers)
        .into_iter()
        .enumerate()
        .map(|(i, h)| header_match(h, resource, &format!("{field}.headers[{i}]")))
        .collect::<Result<_, _>>()?;
    let query = std::mem::take(&mut rest.query_parameters)
        .iter()
        .enumerate()
        .map(|(i, q)| query_match(q, resource, &format!("{field}.query_parameters[{i}]")))
        .collect::<Result<_, _>>()?;
    refuse_leftovers(&rest, resource, field)?;
    Ok(Matcher {
        path,
        case_sensitive,
        headers,
        query,
    })
}

fn header_match(
    mut rest: HeaderMatcher,
    resource: &str,
    field: &str,
) -> Result<HeaderMatch, CompileError> {
    let name = std::mem::take(&mut rest.name).to_ascii_lowercase();
    let invert = std::mem::take(&mut rest.invert_match);
    let test = match rest.header_match_specifier.take() {
        Some(HeaderMatchSpecifier::StringMatch(s)) => {
            ValueTest::String(string_test(&s, resource, &format!("{field}.string_match"))?)
        }
        Some(HeaderMatchSpecifier::PresentMatch(present)) => ValueTest::Present(present),
        _ => {
            return Err(CompileError::new(
                resource,
                format!("{field}.header_match_specifier"),
                "only string_match and present_match are supported by meridian proxy",
            ))
        }
    };
    refuse_leftovers(&rest, resource, field)?;
    Ok(HeaderMatch { name, test, invert })
}

fn query_match(
    q: &QueryParameterMatcher,
    resource: &str,
    field: &str,
) -> Result<QueryMatch, CompileError> {
    let test = match &q.query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
            ValueTest::String(string_test(s, resource, &format!("{field}.string_match"))?)
        }
        Some(QueryParameterMatchSpecifier::PresentMatch(present)) => ValueTest::Present(*present),
        None => ValueTest::Present(true),
    };
    Ok(QueryMatch {
        name: q.name.clone(),
        test,
    })
}

fn string_test(s: &StringMatcher, resource: &str, field: &str) -> Result<StringTest, CompileError> {
    let ignore_case = s.ignore_case;
    let kind = match &s.match_pattern {
        Some(MatchPattern::Exact(v)) => StringKind::Exact(v.clone()),
        Some(MatchPattern::Prefix(v)) => StringKind::Prefix(v.clone()),
        Some(MatchPattern::Suffix(v)) => StringKind::Suffix(v.clone()),
        Some(MatchPattern::Contains(v)) => StringKind::Contains(v.clone()),
        Some(MatchPattern::SafeRegex(r)) => StringKind::Regex(full_regex(
            &r.regex,
            resource,
            &format!("{field}.safe_regex"),
        )?),
        _ => {
            return Err(CompileError::new(
                resource,
                field,
                "this string matcher is not supported by meridian proxy",
            ))
        }
    };
    Ok(StringTest { kind, ignore_case })
}

/// RE2 matches a whole value; the `regex` crate shares its syntax (validation refuses where
/// they read a pattern differently), anchored here.
fn full_regex(pattern: &str, resource: &str, field: &str) -> Result<Regex, CompileError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| CompileError::new(resource, field, format!("invalid regex: {e}")))
}

fn forward(mut rest: RouteAction, resource: &str, field: &str) -> Result<Forward, CompileError> {
    let targets = match rest.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(cluster)) => vec![Target {
            cluster,
            weight: 1,
            edits: HeaderEdits::default(),
        }],
        Some(ClusterSpecifier::WeightedClusters(weighted)) => weighted
            .clusters
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                let field = format!("{field}.weighted_clusters.clusters[{i}]");
                let edits = header_edits(
                    [
                        std::mem::take(&mut c.request_headers_to_add),
                        std::mem::take(&mut c.response_headers_to_add),
                    ],
                    [
                        std::mem::take(&mut c.request_headers_to_remove),
                        std::mem::take(&mut c.response_headers_to_remove),
                    ],
                    resource,
                    &field,
                )?;
                let weight = c.weight.take().map_or(0, |w| w.value);
                let cluster = std::mem::take(&mut c.name);
                refuse_leftovers(&c, resource, &field)?;
                Ok(Target {
                    cluster,
                    weight,
                    edits,
                })
            })
            .collect::<Result<Vec<_>, CompileError>>()?,
        _ => {
            return Err(CompileError::new(
                resource,
                format!("{field}.cluster_specifier"),
                "only cluster and weighted_clusters are supported by meridian proxy",
            ))
        }
    };
    let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total_weight == 0 {
        return Err(CompileError::new(
            resource,
            format!("{field}.weighted_clusters"),
            "the weights must not all be zero",
        ));
    }
    let prefix_rewrite = Some(std::mem::take(&mut rest.prefix_rewrite)).filter(|p| !p.is_empty());
    let regex_rewrite = match rest.regex_rewrite.take() {
        Some(rewrite) => {
            let pattern = rewrite.pattern.map(|p| p.regex).unwrap_or_default();
            let regex = Regex::new(&pattern).map_err(|e| {
                CompileError::new(resource, format!("{field}.regex_rewrite"), e.to_string())
            })?;
            Some((regex, re2_substitution(&rewrite.substitution)))
        }
        None => None,
    };
    let host_rewrite = match rest.host_rewrite_specifier.take() {
        Some(HostRewriteSpecifier::HostRewriteLiteral(host)) => Some(host),
        None => None,
        Some(_) => {
            return Err(CompileError::new(
                resource,
                format!("{field}.host_rewrite_specifier"),
                "only host_rewrite_literal is supported by meridian proxy",
            ))
        }
    };
    let timeout = rest
        .timeout
        .take()
        .map(proto_duration)
        .filter(|d| !d.is_zero());
    let retry = rest
        .retry_policy
        .take()
        .map(|r| retry(r, resource, &format!("{field}.retry_policy")))
        .transpose()?;
    // Hash policies choose an endpoint in ring-hash and Maglev clusters; the others ignore
    // them, as Envoy's do.
    let hash_policies = std::mem::take(&mut rest.hash_policy)
        .iter()
        .enumerate()
        .map(|(i, policy)| hash_policy(policy, resource, &format!("{field}.hash_policy[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    refuse_leftovers(&rest, resource, field)?;
    Ok(Forward {
        targets,
        total_weight,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        timeout,
        retry,
        hash_policies,
    })
}

fn hash_policy(
    policy: &EnvoyHashPolicy,
    resource: &str,
    field: &str,
) -> Result<HashPolicy, CompileError> {
    let source = match &policy.policy_specifier {
        Some(PolicySpecifier::Header(header)) => {
            if header.regex_rewrite.is_some() {
                return Err(CompileError::new(
                    resource,
                    format!("{field}.header.regex_rewrite"),
                    "is not supported by meridian proxy",
                ));
            }
            HashSource::Header(header.header_name.to_ascii_lowercase())
        }
        Some(PolicySpecifier::QueryParameter(query)) => {
            HashSource::QueryParameter(query.name.clone())
        }
        Some(PolicySpecifier::ConnectionProperties(connection)) if connection.source_ip => {
            HashSource::SourceIp
        }
        _ => {
            return Err(CompileError::new(
                resource,
                format!("{field}.policy_specifier"),
                "only header, query_parameter and connection_properties.source_ip are \
                 supported by meridian proxy",
            ))
        }
    };
    Ok(HashPolicy {
        source,
        terminal: policy.terminal,
    })
}

/// RE2 substitutions write `\1`; the `regex` crate `${1}`.
pub(super) fn re2_substitution(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            (c, _) => out.push(c),
        }
    }
    out
}

fn retry(mut rest: RetryPolicy, resource: &str, field: &str) -> Result<Retry, CompileError> {
    let mut retry = Retry {
        attempts: rest.num_retries.take().map_or(1, |n| n.value),
        per_try_timeout: rest
            .per_try_timeout
            .take()
            .map(proto_duration)
            .filter(|d| !d.is_zero()),
        statuses: std::mem::take(&mut rest.retriable_status_codes)
            .into_iter()
            .filter_map(|s| u16::try_from(s).ok())
            .collect(),
        ..Retry::default()
    };
    for token in std::mem::take(&mut rest.retry_on).split(',').map(str::trim) {
        match token {
            "" => {}
            "5xx" => retry.on_5xx = true,
            "gateway-error" => retry.on_gateway_error = true,
            "connect-failure" => retry.on_connect_failure = true,
            "reset" | "refused-stream" => retry.on_reset = true,
            "retriable-status-codes" => {}
            // gRPC status conditions: a gateway in front of HTTP/1 upstreams never sees them in
            // headers before the body; Envoy retries on them only for gRPC responses.
            "cancelled" | "unavailable" | "deadline-exceeded" | "resource-exhausted" => {}
            other => {
                return Err(CompileError::new(
                    resource,
                    format!("{field}.retry_on"),
                    format!("{other:?} is not supported by meridian proxy"),
                ))
            }
        }
    }
    refuse_leftovers(&rest, resource, field)?;
    Ok(retry)
}

fn redirect_of(r: &RedirectAction, resource: &str, field: &str) -> Result<Redirect, CompileError> {
    let status = match RedirectResponseCode::try_from(r.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => 301,
        Ok(RedirectResponseCode::Found) => 302,
        Ok(RedirectResponseCode::SeeOther) => 303,
        Ok(RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => {
            return Err(CompileError::new(
                resource,
                format!("{field}.response_code"),
                "unknown redirect code",
            ))
        }
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
        _ => None,
    };
    let path = match &r.path_rewrite_specifier {
        Some(PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
        None => None,
        Some(_) => {
            return Err(CompileError::new(
                resource,
                format!("{field}.path_rewrite_specifier"),
                "only path_redirect is supported by meridian proxy",
            ))
        }
    };
    Ok(Redirect {
        scheme,
        host: Some(r.host_redirect.clone()).filter(|h| !h.is_empty()),
        port: Some(r.port_redirect).filter(|p| *p != 0),
        path,
        strip_query: r.strip_query,
        status,
    })
}

fn header_edits(
    [request_add, response_add]: [Vec<HeaderValueOption>; 2],
    [request_remove, response_remove]: [Vec<String>; 2],
    resource: &str,
    field: &str,
) -> Result<HeaderEdits, CompileError> {
    let set = |options: Vec<HeaderValueOption>, what: &str| {
        options
            .into_iter()
            .enumerate()
            .map(|(i, option)| {
                let field = format!("{field}.{what}[{i}]");
                let header = option.header.clone().unwrap_or_default();
                let append = match HeaderAppendAction::try_from(option.append_action) {
                    Ok(HeaderAppendAction::AppendIfExistsOrAdd) => true,
                    Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => false,
                    _ => {
                        return Err(CompileError::new(
                            resource,
                            format!("{field}.append_action"),
                            "only APPEND_IF_EXISTS_OR_ADD and OVERWRITE_IF_EXISTS_OR_ADD are supported by meridian proxy",
                        ))
                    }
                };
                let name = http::HeaderName::from_bytes(header.key.as_bytes())
                    .map_err(|e| CompileError::new(resource, &field, e.to_string()))?;
                let value = http::HeaderValue::from_str(&header.value)
                    .map_err(|e| CompileError::new(resource, &field, e.to_string()))?;
                Ok((name, value, append))
            })
            .collect::<Result<Vec<_>, CompileError>>()
    };
    let remove = |names: Vec<String>, what: &str| {
        names
            .into_iter()
            .map(|n| {
                http::HeaderName::from_bytes(n.as_bytes()).map_err(|e| {
                    CompileError::new(resource, format!("{field}.{what}"), e.to_string())
                })
            })
            .collect::<Result<Vec<_>, CompileError>>()
    };
    Ok(HeaderEdits {
        request_set: set(request_add, "request_headers_to_add")?,
        request_remove: remove(request_remove, "request_headers_to_remove")?,
        response_set: set(response_add, "response_headers_to_add")?,
        response_remove: remove(response_remove, "response_headers_to_remove")?,
    })
}

fn proto_duration(d: envoy_types::pb::google::protobuf::Duration) -> Duration {
    let seconds = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(seconds, nanos)
}
