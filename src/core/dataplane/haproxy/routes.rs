//! A `RouteConfiguration` as HAProxy rules: virtual hosts and routes become conditions
//! (`acl` expressions), and each route's action becomes `http-request` / `use_backend` /
//! `http-response` lines guarded by the route's id. The proto is first compiled by
//! [`RouteTable`](super::super::routes::RouteTable), which refuses every field meridian proxy
//! does not honour; what is left to refuse here is what HAProxy cannot express.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    route::Action,
    route_action::hash_policy::PolicySpecifier,
    route_action::{ClusterSpecifier, HostRewriteSpecifier},
    route_match::PathSpecifier,
    HeaderMatcher, RouteConfiguration,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

use super::super::routes::RouteTable;
use super::super::CompileError;
use super::quote::quoted;

/// A route configuration HAProxy can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRules {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHostRules>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualHostRules {
    /// Lower-case, as Envoy compares them: `a.example.com`, `*.example.com`, `www.*`, `*`.
    pub domains: Vec<String>,
    pub routes: Vec<RouteRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    pub name: String,
    /// ACL expressions, all of which must hold (`{ path -m beg /api }`).
    pub conditions: Vec<String>,
    pub action: RuleAction,
    /// Route, virtual host and configuration edits, in that order.
    pub edits: Edits,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Forward(ForwardRule),
    /// `http-request redirect` arguments: `location <fmt> code <n>`, without and with the
    /// query appended.
    Redirect {
        location: String,
        keep_query: bool,
        code: u16,
    },
    Direct {
        status: u16,
        /// Single-quoted, as the configuration takes it.
        body: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardRule {
    /// Clusters with weights (one with weight 1 when not weighted) and their own edits.
    pub targets: Vec<(String, u32, Edits)>,
    /// `http-request replace-path` arguments.
    pub replace_path: Option<(String, String)>,
    pub host_rewrite: Option<String>,
    /// The server timeout for this route's requests (`http-request set-timeout server`).
    pub timeout: Option<Duration>,
    pub retry: Option<RetryRule>,
    /// The backend `balance` the route's hash policy asks of hashing clusters.
    pub hash: Option<String>,
}

/// What HAProxy retries (`retries`, `retry-on`); a backend's routes must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRule {
    pub attempts: u32,
    pub on: Vec<String>,
}

/// Header edits: `(name, value, append)` to set, names to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    pub request_set: Vec<(String, String, bool)>,
    pub request_remove: Vec<String>,
    pub response_set: Vec<(String, String, bool)>,
    pub response_remove: Vec<String>,
}

impl Edits {
    fn extend(&mut self, other: Edits) {
        self.request_set.extend(other.request_set);
        self.request_remove.extend(other.request_remove);
        self.response_set.extend(other.response_set);
        self.response_remove.extend(other.response_remove);
    }

    pub fn is_empty(&self) -> bool {
        *self == Edits::default()
    }
}

struct Context<'a> {
    resource: &'a str,
}

impl Context<'_> {
    fn refuse(&self, field: impl Into<String>, message: impl Into<String>) -> CompileError {
        CompileError::new(
            self.resource,
            field,
            format!("not supported by meridian haproxy: {}", message.into()),
        )
    }
}

impl super::quote::Refuse for Context<'_> {
    fn refuse_value(&self, field: &str, value: &str) -> CompileError {
        self.refuse(
            field,
            format!("the value {value:?} (a quote or control character)"),
        )
    }
}

impl RouteRules {
    pub fn compile(config: &RouteConfiguration) -> Result<RouteRules, CompileError> {
        RouteTable::compile(config.clone())?;
        let resource = format!("RouteConfiguration {}", config.name);
        let cx = Context {
            resource: &resource,
        };
        let config_edits = edits(
            &cx,
            "",
            (
                &config.request_headers_to_add,
                &config.request_headers_to_remove,
            ),
            (
                &config.response_headers_to_add,
                &config.response_headers_to_remove,
            ),
        )?;
        let mut virtual_hosts = Vec::new();
        for (i, host) in config.virtual_hosts.iter().enumerate() {
            let field = format!("virtual_hosts[{i}]");
            let mut host_edits = edits(
                &cx,
                &format!("{field}."),
                (
                    &host.request_headers_to_add,
                    &host.request_headers_to_remove,
                ),
                (
                    &host.response_headers_to_add,
                    &host.response_headers_to_remove,
                ),
            )?;
            host_edits.extend(config_edits.clone());
            let mut routes = Vec::new();
            for (j, route) in host.routes.iter().enumerate() {
                let field = format!("{field}.routes[{j}]");
                let mut rule = route_rule(&cx, &field, route)?;
                rule.edits.extend(host_edits.clone());
                routes.push(rule);
            }
            virtual_hosts.push(VirtualHostRules {
                domains: host
                    .domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                routes,
            });
        }
        Ok(RouteRules {
            name: config.name.clone(),
            virtual_hosts,
        })
    }
}

fn route_rule(
    cx: &Context<'_>,
    field: &str,
    route: &envoy_types::pb::envoy::config::route::v3::Route,
) -> Result<RouteRule, CompileError> {
    let matcher = route.r#match.clone().unwrap_or_default();
    let ignore_case = matcher.case_sensitive.is_some_and(|c| !c.value);
    let i = if ignore_case { " -i" } else { "" };
    let mut conditions = Vec::new();
    let mut matched_prefix = None;
    match &matcher.path_specifier {
        Some(PathSpecifier::Prefix(prefix)) => {
            if !prefix.is_empty() && prefix != "/" {
                conditions.push(format!(
                    "{{ path{i} -m beg {} }}",
                    quoted(cx, field, prefix)?
                ));
            }
            matched_prefix = Some(prefix.clone());
        }
        Some(PathSpecifier::Path(path)) => {
            conditions.push(format!("{{ path{i} -m str {} }}", quoted(cx, field, path)?));
        }
        Some(PathSpecifier::SafeRegex(regex)) => {
            let anchored = format!("^(?:{})$", regex.regex);
            conditions.push(format!(
                "{{ path{i} -m reg {} }}",
                quoted(cx, field, &anchored)?
            ));
        }
        _ => return Err(cx.refuse(format!("{field}.match"), "this path match")),
    }
    for (k, header) in matcher.headers.iter().enumerate() {
        conditions.push(header_condition(
            cx,
            &format!("{field}.match.headers[{k}]"),
            header,
        )?);
    }
    for (k, query) in matcher.query_parameters.iter().enumerate() {
        let qfield = format!("{field}.match.query_parameters[{k}]");
        let fetch = format!("url_param({})", fetch_arg(cx, &qfield, &query.name)?);
        conditions.push(match &query.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(m)) => {
                string_condition(cx, &qfield, &fetch, m)?
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(true)) => {
                format!("{{ {fetch} -m found }}")
            }
            _ => return Err(cx.refuse(qfield, "this query parameter match")),
        });
    }
    let route_edits = edits(
        cx,
        &format!("{field}."),
        (
            &route.request_headers_to_add,
            &route.request_headers_to_remove,
        ),
        (
            &route.response_headers_to_add,
            &route.response_headers_to_remove,
        ),
    )?;
    let action = match &route.action {
        Some(Action::Route(action)) => {
            let afield = format!("{field}.route");
            let targets = match &action.cluster_specifier {
                Some(ClusterSpecifier::Cluster(name)) => vec![(name.clone(), 1, Edits::default())],
                Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                    let mut targets = Vec::new();
                    for (k, c) in weighted.clusters.iter().enumerate() {
                        let cfield = format!("{afield}.weighted_clusters.clusters[{k}].");
                        let target_edits = edits(
                            cx,
                            &cfield,
                            (&c.request_headers_to_add, &c.request_headers_to_remove),
                            (&c.response_headers_to_add, &c.response_headers_to_remove),
                        )?;
                        let weight = c.weight.as_ref().map_or(0, |w| w.value);
                        targets.push((c.name.clone(), weight, target_edits));
                    }
                    targets
                }
                _ => return Err(cx.refuse(afield, "this cluster specifier")),
            };
            if action.regex_rewrite.is_some() {
                return Err(cx.refuse(
                    format!("{afield}.regex_rewrite"),
                    "HAProxy replaces a path whole, not each match of a pattern",
                ));
            }
            let replace_path = if action.prefix_rewrite.is_empty() {
                None
            } else {
                let rewrite = action.prefix_rewrite.replace('\\', "\\\\");
                let pattern = match &matched_prefix {
                    Some(prefix) => format!(
                        "{}{}(.*)",
                        if ignore_case { "(?i)" } else { "" },
                        regex_escape(prefix)
                    ),
                    None => ".*()".to_owned(),
                };
                Some((
                    quoted(cx, &afield, &format!("^{pattern}"))?,
                    quoted(cx, &afield, &format!("{rewrite}\\1"))?,
                ))
            };
            let host_rewrite = match &action.host_rewrite_specifier {
                None => None,
                Some(HostRewriteSpecifier::HostRewriteLiteral(host)) => {
                    Some(quoted(cx, &afield, host)?)
                }
                Some(_) => {
                    return Err(cx.refuse(
                        format!("{afield}.host_rewrite_specifier"),
                        "only a literal host",
                    ))
                }
            };
            let retry = match &action.retry_policy {
                None => None,
                Some(policy) => Some(retry_rule(cx, &format!("{afield}.retry_policy"), policy)?),
            };
            // The route's timeout bounds each attempt in HAProxy (`timeout server`); a
            // per-try timeout, when set, is the tighter bound.
            let per_try = action
                .retry_policy
                .as_ref()
                .and_then(|r| r.per_try_timeout)
                .map(proto_duration);
            let timeout = per_try
                .or(action.timeout.map(proto_duration))
                .filter(|t| !t.is_zero());
            let mut hash = None;
            for (k, policy) in action.hash_policy.iter().enumerate() {
                let hfield = format!("{afield}.hash_policy[{k}]");
                if hash.is_some() {
                    return Err(cx.refuse(hfield, "HAProxy hashes by one key per backend"));
                }
                hash = Some(match &policy.policy_specifier {
                    Some(PolicySpecifier::Header(h)) => {
                        format!("hdr({})", fetch_arg(cx, &hfield, &h.header_name)?)
                    }
                    Some(PolicySpecifier::QueryParameter(q)) => {
                        format!("url_param {}", fetch_arg(cx, &hfield, &q.name)?)
                    }
                    Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => {
                        "source".to_owned()
                    }
                    _ => return Err(cx.refuse(hfield, "this hash policy")),
                });
            }
            RuleAction::Forward(ForwardRule {
                targets,
                replace_path,
                host_rewrite,
                timeout,
                retry,
                hash,
            })
        }
        Some(Action::Redirect(redirect)) => {
            let rfield = format!("{field}.redirect");
            let scheme = match &redirect.scheme_rewrite_specifier {
                Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => "https".to_owned(),
                Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => literal(cx, &rfield, s)?,
                _ => "%[ssl_fc,iif(https,http)]".to_owned(),
            };
            let authority = match (redirect.host_redirect.as_str(), redirect.port_redirect) {
                ("", 0) => "%[req.hdr(host)]".to_owned(),
                ("", port) => format!("%[var(txn.host)]:{port}"),
                (host, 0) => literal(cx, &rfield, host)?,
                (host, port) => format!("{}:{port}", literal(cx, &rfield, host)?),
            };
            let path = match &redirect.path_rewrite_specifier {
                None => "%[path]".to_owned(),
                Some(PathRewriteSpecifier::PathRedirect(p)) => literal(cx, &rfield, p)?,
                Some(_) => {
                    return Err(cx.refuse(format!("{rfield}.prefix_rewrite"), "a prefix redirect"))
                }
            };
            let code = match RedirectResponseCode::try_from(redirect.response_code) {
                Ok(RedirectResponseCode::MovedPermanently) => 301,
                Ok(RedirectResponseCode::Found) => 302,
                Ok(RedirectResponseCode::SeeOther) => 303,
                Ok(RedirectResponseCode::TemporaryRedirect) => 307,
                Ok(RedirectResponseCode::PermanentRedirect) => 308,
                Err(_) => return Err(cx.refuse(format!("{rfield}.response_code"), "this code")),
            };
            RuleAction::Redirect {
                location: format!("{scheme}://{authority}{path}"),
                keep_query: !redirect.strip_query && !path.contains('?'),
                code,
            }
        }
        Some(Action::DirectResponse(direct)) => {
            let body = match direct.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(data_source::Specifier::InlineString(s)) => Some(s.clone()),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    Some(String::from_utf8_lossy(b).into_owned())
                }
                Some(_) => {
                    return Err(
                        cx.refuse(format!("{field}.direct_response.body"), "a body not inline")
                    )
                }
            };
            let body = match body {
                Some(text) => Some(quoted(cx, &format!("{field}.direct_response.body"), &text)?),
                None => None,
            };
            let status = u16::try_from(direct.status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| {
                    cx.refuse(
                        format!("{field}.direct_response.status"),
                        "a status outside 200-599",
                    )
                })?;
            RuleAction::Direct { status, body }
        }
        _ => return Err(cx.refuse(format!("{field}.action"), "this action")),
    };
    Ok(RouteRule {
        name: route.name.clone(),
        conditions,
        action,
        edits: route_edits,
    })
}

fn header_condition(
    cx: &Context<'_>,
    field: &str,
    header: &HeaderMatcher,
) -> Result<String, CompileError> {
    let name = header.name.to_ascii_lowercase();
    let fetch = match name.as_str() {
        ":method" => "method".to_owned(),
        ":authority" | "host" => "req.hdr(host)".to_owned(),
        ":path" => "pathq".to_owned(),
        n if n.starts_with(':') => return Err(cx.refuse(field, format!("pseudo-header {n}"))),
        n => format!("req.hdr({})", fetch_arg(cx, field, n)?),
    };
    let condition = match &header.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => string_condition(cx, field, &fetch, m)?,
        Some(HeaderMatchSpecifier::PresentMatch(present)) => {
            let count = format!("req.hdr_cnt({})", fetch_arg(cx, field, &name)?);
            format!("{{ {count} {} 0 }}", if *present { "gt" } else { "eq" })
        }
        _ => return Err(cx.refuse(field, "this header match")),
    };
    Ok(if header.invert_match {
        format!("!{condition}")
    } else {
        condition
    })
}

fn string_condition(
    cx: &Context<'_>,
    field: &str,
    fetch: &str,
    m: &StringMatcher,
) -> Result<String, CompileError> {
    let i = if m.ignore_case { " -i" } else { "" };
    let (method, value) = match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => ("str", v.clone()),
        Some(MatchPattern::Prefix(v)) => ("beg", v.clone()),
        Some(MatchPattern::Suffix(v)) => ("end", v.clone()),
        Some(MatchPattern::Contains(v)) => ("sub", v.clone()),
        Some(MatchPattern::SafeRegex(r)) => ("reg", format!("^(?:{})$", r.regex)),
        _ => return Err(cx.refuse(field, "this string match")),
    };
    if value.is_empty() && method != "reg" {
        // HAProxy has no empty pattern; an empty exact value is a present, empty header.
        return Ok(match method {
            "str" => format!("{{ {fetch} -m len 0 }}"),
            _ => format!("{{ {fetch} -m found }}"),
        });
    }
    Ok(format!(
        "{{ {fetch}{i} -m {method} {} }}",
        quoted(cx, field, &value)?
    ))
}

fn retry_rule(
    cx: &Context<'_>,
    field: &str,
    policy: &envoy_types::pb::envoy::config::route::v3::RetryPolicy,
) -> Result<RetryRule, CompileError> {
    let mut on: Vec<String> = Vec::new();
    let mut add = |codes: &[&str]| {
        for c in codes {
            if !on.iter().any(|o| o == c) {
                on.push((*c).to_owned());
            }
        }
    };
    for condition in policy
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        match condition {
            "5xx" => add(&["500", "501", "502", "503", "504"]),
            "gateway-error" => add(&["502", "503", "504"]),
            "connect-failure" | "refused-stream" => add(&["conn-failure"]),
            "reset" => add(&["conn-failure", "empty-response", "junk-response"]),
            "retriable-status-codes" => {
                for code in &policy.retriable_status_codes {
                    let code = code.to_string();
                    if !["404", "408", "425", "500", "501", "502", "503", "504"]
                        .contains(&code.as_str())
                    {
                        return Err(cx.refuse(
                            format!("{field}.retriable_status_codes"),
                            format!("HAProxy retries on 404, 408, 425 and 500-504, not {code}"),
                        ));
                    }
                    add(&[code.as_str()]);
                }
            }
            other => {
                return Err(cx.refuse(format!("{field}.retry_on"), format!("retrying on {other}")))
            }
        }
    }
    Ok(RetryRule {
        attempts: policy.num_retries.as_ref().map_or(1, |n| n.value),
        on,
    })
}

fn edits(
    cx: &Context<'_>,
    prefix: &str,
    (request_add, request_remove): (&[HeaderValueOption], &[String]),
    (response_add, response_remove): (&[HeaderValueOption], &[String]),
) -> Result<Edits, CompileError> {
    let set = |list: &[HeaderValueOption],
               which: &str|
     -> Result<Vec<(String, String, bool)>, CompileError> {
        let mut out = Vec::new();
        for (k, option) in list.iter().enumerate() {
            let field = format!("{prefix}{which}[{k}]");
            let header = option.header.clone().unwrap_or_default();
            let append = match HeaderAppendAction::try_from(option.append_action) {
                Ok(HeaderAppendAction::AppendIfExistsOrAdd) => true,
                Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => false,
                _ => return Err(cx.refuse(format!("{field}.append_action"), "this append action")),
            };
            let value = literal(cx, &field, &header.value)?;
            out.push((
                fetch_arg(cx, &field, &header.key)?,
                quoted(cx, &field, &value)?,
                append,
            ));
        }
        Ok(out)
    };
    let names = |list: &[String], which: &str| -> Result<Vec<String>, CompileError> {
        list.iter()
            .enumerate()
            .map(|(k, n)| fetch_arg(cx, &format!("{prefix}{which}[{k}]"), n))
            .collect()
    };
    Ok(Edits {
        request_set: set(request_add, "request_headers_to_add")?,
        request_remove: names(request_remove, "request_headers_to_remove")?,
        response_set: set(response_add, "response_headers_to_add")?,
        response_remove: names(response_remove, "response_headers_to_remove")?,
    })
}

/// A header name or parameter as a sample fetch argument: only token characters.
fn fetch_arg(cx: &Context<'_>, field: &str, name: &str) -> Result<String, CompileError> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~!#&*+^`|".contains(&b));
    if token {
        Ok(name.to_owned())
    } else {
        Err(cx.refuse(field, format!("the name {name:?}")))
    }
}

/// A literal inside a log-format string (`Location`, header values): `%` would start a
/// sample expression, and quotes and control characters end the argument.
fn literal(cx: &Context<'_>, field: &str, value: &str) -> Result<String, CompileError> {
    if value.contains('%') {
        return Err(cx.refuse(
            field,
            format!("the value {value:?}: '%' starts an HAProxy expression"),
        ));
    }
    quoted(cx, field, value)?;
    Ok(value.to_owned())
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn proto_duration(d: envoy_types::pb::google::protobuf::Duration) -> Duration {
    let seconds = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(seconds, nanos)
}
