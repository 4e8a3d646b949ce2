//! Route configurations: VirtualServices bound to the gateway become virtual hosts and routes.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
    HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, query_parameter_matcher, redirect_action, route, route_action, route_match,
    weighted_cluster, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::cluster::hash_policy_for;
use super::{cluster_name, ClusterRef, GatewayIdentity};
use crate::api::istio::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRoute, StringMatch,
    VirtualServiceSpec,
};
use crate::core::binding::{bound_domains, host_owners, serves, GatewayPort};
use crate::core::duration;
use crate::core::expand::ServiceRegistry;
use crate::core::expand::{ClusterView, Expanded};
use crate::core::hosts::resolve_host;
use crate::core::model::ObjectKey;
use crate::core::resources::Resource;

pub(super) fn build_route_config(
    view: &ClusterView<'_>,
    registry: &ServiceRegistry<'_>,
    identity: &GatewayIdentity,
    port: &GatewayPort,
    clusters: &mut BTreeMap<String, ClusterRef>,
    referenced_hosts: &mut BTreeSet<String>,
    unresolved: &mut Vec<String>,
) -> Resource {
    // domain → routes, in VirtualService order (merged like Istio merges VS for one host).
    let mut hosts: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    let owners = host_owners(view, port);
    for vs in view.virtual_services_naming(&identity.gateway) {
        if !serves(view, vs, &identity.gateway) {
            continue;
        }
        let mut domains = bound_domains(vs, port);
        domains.retain(|d| owners.get(d) == Some(&vs.origin));
        if domains.is_empty() {
            continue;
        }
        let mut builder = RouteBuilder {
            registry,
            view,
            gateway: &identity.gateway,
            vs,
            clusters,
            hosts: referenced_hosts,
            unresolved,
        };
        let routes: Vec<Route> = vs
            .spec
            .http
            .iter()
            .enumerate()
            .flat_map(|(i, http)| builder.routes(i, http))
            .collect();
        for domain in domains {
            hosts
                .entry(domain)
                .or_default()
                .extend(routes.iter().cloned());
        }
    }
    let config = RouteConfiguration {
        name: port.route_name(),
        virtual_hosts: hosts
            .into_iter()
            .map(|(domain, routes)| VirtualHost {
                name: format!("{domain}:{}", port.number),
                domains: vec![domain],
                routes,
                ..Default::default()
            })
            .collect(),
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    };
    Resource::new(port.route_name(), &config)
}

struct RouteBuilder<'a, 'm> {
    registry: &'a ServiceRegistry<'m>,
    view: &'a ClusterView<'m>,
    gateway: &'a ObjectKey,
    vs: &'a Expanded<'m, VirtualServiceSpec>,
    clusters: &'a mut BTreeMap<String, ClusterRef>,
    /// Every destination host, resolved or not.
    hosts: &'a mut BTreeSet<String>,
    unresolved: &'a mut Vec<String>,
}

impl RouteBuilder<'_, '_> {
    fn routes(&mut self, index: usize, http: &HttpRoute) -> Vec<Route> {
        let name = format!(
            "{}/{}/{}",
            self.vs.key.namespace,
            self.vs.key.name,
            http.name.clone().unwrap_or_else(|| index.to_string())
        );
        let action = self.action(http);
        let matches: Vec<RouteMatch> = if http.matches.is_empty() {
            vec![RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }]
        } else {
            http.matches.iter().map(route_match_of).collect()
        };
        let (req_add, req_remove, resp_add, resp_remove) = header_ops(http.headers.as_ref());
        matches
            .into_iter()
            .map(|m| Route {
                name: name.clone(),
                r#match: Some(m),
                action: Some(action.clone()),
                request_headers_to_add: req_add.clone(),
                request_headers_to_remove: req_remove.clone(),
                response_headers_to_add: resp_add.clone(),
                response_headers_to_remove: resp_remove.clone(),
                ..Default::default()
            })
            .collect()
    }

    fn action(&mut self, http: &HttpRoute) -> route::Action {
        if let Some(direct) = &http.direct_response {
            return route::Action::DirectResponse(DirectResponseAction {
                status: direct.status,
                body: direct
                    .body
                    .as_ref()
                    .and_then(|b| b.string.clone())
                    .map(|s| DataSource {
                        specifier: Some(data_source::Specifier::InlineString(s)),
                        ..Default::default()
                    }),
                ..Default::default()
            });
        }
        if let Some(redirect) = &http.redirect {
            return route::Action::Redirect(RedirectAction {
                host_redirect: redirect.authority.clone().unwrap_or_default(),
                port_redirect: redirect.port.unwrap_or_default(),
                response_code: redirect_code(redirect.redirect_code) as i32,
                scheme_rewrite_specifier: redirect
                    .scheme
                    .clone()
                    .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
                path_rewrite_specifier: redirect
                    .uri
                    .clone()
                    .map(redirect_action::PathRewriteSpecifier::PathRedirect),
                ..Default::default()
            });
        }
        let mut action = RouteAction {
            timeout: Some(duration::to_proto(
                http.timeout
                    .as_deref()
                    .and_then(|t| duration::parse(t).ok())
                    .unwrap_or_default(),
            )),
            ..Default::default()
        };
        let destinations: Vec<(String, &crate::api::istio::HttpRouteDestination)> = http
            .route
            .iter()
            .map(|d| (self.cluster_for(&d.destination), d))
            .collect();
        action.cluster_specifier = Some(match destinations.as_slice() {
            [(cluster, _)] => route_action::ClusterSpecifier::Cluster(cluster.clone()),
            _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: destinations
                    .iter()
                    .map(|(cluster, d)| {
                        let (req_add, req_remove, resp_add, resp_remove) =
                            header_ops(d.headers.as_ref());
                        weighted_cluster::ClusterWeight {
                            name: cluster.clone(),
                            weight: Some(UInt32Value {
                                value: d.weight.unwrap_or(0),
                            }),
                            request_headers_to_add: req_add,
                            request_headers_to_remove: req_remove,
                            response_headers_to_add: resp_add,
                            response_headers_to_remove: resp_remove,
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }),
        });
        if let Some((cluster, _)) = destinations.first() {
            if let Some(cluster_ref) = self.clusters.get(cluster) {
                action.hash_policy = hash_policy_for(self.view, self.registry, cluster_ref);
            }
        }
        if let Some(rewrite) = &http.rewrite {
            if let Some(uri) = &rewrite.uri {
                action.prefix_rewrite = uri.clone();
            }
            if let Some(authority) = &rewrite.authority {
                action.host_rewrite_specifier = Some(
                    route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()),
                );
            }
            if let Some(regex) = &rewrite.uri_regex_rewrite {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex_matcher(&regex.pattern)),
                    substitution: regex.rewrite.clone(),
                });
            }
        }
        if let Some(retries) = &http.retries {
            action.retry_policy = Some(envoy_types::pb::envoy::config::route::v3::RetryPolicy {
                retry_on: retries.retry_on.clone().unwrap_or_else(|| {
                    "connect-failure,refused-stream,unavailable,cancelled,5xx".into()
                }),
                num_retries: Some(UInt32Value {
                    value: retries.attempts,
                }),
                per_try_timeout: retries
                    .per_try_timeout
                    .as_deref()
                    .and_then(|t| duration::parse(t).ok())
                    .map(duration::to_proto),
                ..Default::default()
            });
        }
        route::Action::Route(action)
    }

    /// Resolves a destination to its cluster name, recording the reference.
    fn cluster_for(&mut self, destination: &Destination) -> String {
        let namespace = &self.vs.key.namespace;
        let host = resolve_host(&destination.host, namespace);
        self.hosts.insert(host.clone());
        let subset = destination.subset.clone().unwrap_or_default();
        let client = &self.gateway.namespace;
        let known = self.registry.get(&host);
        // A service not exported to the gateway's namespace does not exist for it.
        let service = known.filter(|s| s.visible_to(client, self.view));
        let port = match (&destination.port, service) {
            (Some(p), _) => p.number,
            (None, Some(s)) if s.ports.len() == 1 => s.ports[0].number,
            _ => 0,
        };
        let name = cluster_name(port, &subset, &host);
        match service {
            Some(s) if s.port(port).is_some() => {
                self.clusters.entry(name.clone()).or_insert(ClusterRef {
                    host,
                    port,
                    subset,
                    client_namespace: client.clone(),
                });
            }
            Some(_) => self.unresolved.push(format!(
                "{}/{}: port {port} of {host} does not exist",
                self.vs.key.namespace, self.vs.key.name
            )),
            None if known.is_some() => self.unresolved.push(format!(
                "{}/{}: service {host} is not exported to namespace {client}",
                self.vs.key.namespace, self.vs.key.name
            )),
            None => self.unresolved.push(format!(
                "{}/{}: destination host {host} is not a known service",
                self.vs.key.namespace, self.vs.key.name
            )),
        }
        name
    }
}

fn redirect_code(code: Option<u32>) -> redirect_action::RedirectResponseCode {
    use redirect_action::RedirectResponseCode as Code;
    match code.unwrap_or(301) {
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::MovedPermanently,
    }
}

fn route_match_of(m: &HttpMatchRequest) -> RouteMatch {
    let path_specifier = Some(match &m.uri {
        Some(StringMatch { exact: Some(p), .. }) => route_match::PathSpecifier::Path(p.clone()),
        Some(StringMatch { regex: Some(r), .. }) => {
            route_match::PathSpecifier::SafeRegex(regex_matcher(r))
        }
        Some(StringMatch {
            prefix: Some(p), ..
        }) => route_match::PathSpecifier::Prefix(p.clone()),
        _ => route_match::PathSpecifier::Prefix("/".into()),
    });
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(name, value)| header_matcher(name, value))
        .collect();
    if let Some(method) = &m.method {
        headers.push(header_matcher(":method", method));
    }
    if let Some(authority) = &m.authority {
        headers.push(header_matcher(":authority", authority));
    }
    RouteMatch {
        path_specifier,
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(name, value)| QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(
                    query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(value),
                    ),
                ),
            })
            .collect(),
        ..Default::default()
    }
}

fn header_matcher(name: &str, value: &StringMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            string_matcher(value),
        )),
        ..Default::default()
    }
}

fn string_matcher(value: &StringMatch) -> StringMatcher {
    let pattern = match value {
        StringMatch { exact: Some(e), .. } => string_matcher::MatchPattern::Exact(e.clone()),
        StringMatch {
            prefix: Some(p), ..
        } => string_matcher::MatchPattern::Prefix(p.clone()),
        StringMatch { regex: Some(r), .. } => {
            string_matcher::MatchPattern::SafeRegex(regex_matcher(r))
        }
        _ => string_matcher::MatchPattern::Prefix(String::new()),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn regex_matcher(regex: &str) -> RegexMatcher {
    RegexMatcher {
        regex: regex.to_owned(),
        ..Default::default()
    }
}

type HeaderEdits = (
    Vec<HeaderValueOption>,
    Vec<String>,
    Vec<HeaderValueOption>,
    Vec<String>,
);

fn header_ops(headers: Option<&Headers>) -> HeaderEdits {
    let ops = |o: Option<&HeaderOperations>| -> (Vec<HeaderValueOption>, Vec<String>) {
        let Some(o) = o else {
            return (Vec::new(), Vec::new());
        };
        let value = |(k, v): (&String, &String), action: HeaderAppendAction| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
        let mut add: Vec<HeaderValueOption> = o
            .set
            .iter()
            .map(|kv| value(kv, HeaderAppendAction::OverwriteIfExistsOrAdd))
            .collect();
        add.extend(
            o.add
                .iter()
                .map(|kv| value(kv, HeaderAppendAction::AppendIfExistsOrAdd)),
        );
        (add, o.remove.clone())
    };
    let (req_add, req_remove) = ops(headers.and_then(|h| h.request.as_ref()));
    let (resp_add, resp_remove) = ops(headers.and_then(|h| h.response.as_ref()));
    (req_add, req_remove, resp_add, resp_remove)
}
