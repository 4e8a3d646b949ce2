//! Semantic validation of AccessPoints: what a schema cannot check.
//!
//! An AccessPoint with any error is not accepted; the index keeps serving its last accepted
//! generation. Errors carry the field path so they can be shown on the object (status
//! conditions) or next to the file name (standalone mode).

use std::fmt;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::tls::TlsMode;
use crate::api::access_point::AccessPointTemplate;
use crate::api::istio::{
    DestinationRuleSpec, GatewaySpec, HttpMatchRequest, HttpRoute, Resolution, ServerTls,
    ServiceEntrySpec, StringMatch, TrafficPolicy, VirtualServiceSpec,
};
use crate::api::AccessPointSpec;

use super::duration;

mod export_to;
mod headers;
mod hosts;
pub mod re2;
use export_to::NoneAllowed;

use crate::core::node_subsets::node_port_mode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.path, self.message)
    }
}

/// What makes a plain Service (not an AccessPoint's) unusable: its node-port settings.
pub fn validate_service(service: &k8s_openapi::api::core::v1::Service) -> Vec<FieldError> {
    let annotations = service.metadata.annotations.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    match node_port_mode(&annotations, &spec, false) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| FieldError {
                path: e.field,
                message: e.message,
            })
            .collect(),
    }
}

/// Why the latest version of an AccessPoint was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `metadata.generation` of the rejected version (absent in standalone mode).
    pub generation: Option<i64>,
    pub errors: Vec<FieldError>,
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: String, value: Option<&String>) {
        if let Some(v) = value {
            if let Err(e) = duration::parse(v) {
                self.push(path, e.to_string());
            }
        }
    }

    fn regex(&mut self, path: String, value: &str) {
        match regex::Regex::new(value) {
            Err(e) => self.push(path, format!("invalid regex: {e}")),
            Ok(_) => {
                if let Some(why) = re2::refusal(value) {
                    self.push(path, format!("regex Envoy would refuse: {why}"));
                }
            }
        }
    }

    fn string_match(&mut self, path: String, m: &StringMatch) {
        let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
            .iter()
            .filter(|s| **s)
            .count();
        if set != 1 {
            self.push(
                path.clone(),
                "exactly one of exact, prefix or regex must be set",
            );
        }
        if let Some(r) = &m.regex {
            self.regex(format!("{path}.regex"), r);
        }
    }
}

/// Hosts of TLS servers whose certificate Meridian would issue that name something reserved
/// (`localhost`, Meridian's own server names, operator-forbidden names): the embedded CA must
/// not hand a tenant a certificate clients trust for those.
pub fn validate_certificate_names(spec: &AccessPointSpec, reserved: &[String]) -> Vec<FieldError> {
    let mut errors = Errors::default();
    for (i, gateway) in spec.template.gateways.iter().enumerate() {
        for (j, server) in gateway.spec.servers.iter().enumerate() {
            let embedded = server
                .tls
                .as_ref()
                .is_some_and(|t| t.credential_name.is_none());
            if !embedded {
                continue;
            }
            for (k, host) in server.hosts.iter().enumerate() {
                let name = host.split_once('/').map_or(host.as_str(), |(_, h)| h);
                if let Some(hit) = reserved.iter().find(|r| covers(name, r)) {
                    errors.push(
                        format!("spec.template.gateways[{i}].spec.servers[{j}].hosts[{k}]"),
                        format!("Meridian does not issue certificates for {hit:?} (reserved); use credentialName with your own certificate"),
                    );
                }
            }
        }
    }
    errors.0
}

/// Whether a certificate for `host` (maybe `*.suffix`) would be valid for `reserved` (maybe
/// `*.suffix`, then any name under it).
fn covers(host: &str, reserved: &str) -> bool {
    let (host, reserved) = (host.to_ascii_lowercase(), reserved.to_ascii_lowercase());
    if host == reserved {
        return true;
    }
    let one_label_under = |name: &str, suffix: &str| {
        name.strip_suffix(suffix)
            .and_then(|label| label.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
    };
    match (host.strip_prefix("*."), reserved.strip_prefix("*.")) {
        (Some(suffix), None) => one_label_under(&reserved, suffix),
        (None, Some(suffix)) => host.ends_with(&format!(".{suffix}")),
        (Some(a), Some(b)) => a == b || a.ends_with(&format!(".{b}")),
        (None, None) => false,
    }
}

/// Validates an AccessPoint spec; empty means accepted.
pub fn validate_access_point(spec: &AccessPointSpec) -> Vec<FieldError> {
    let mut errors = Errors::default();
    template(&mut errors, "spec.template", &spec.template);
    for (i, o) in spec.overrides.iter().enumerate() {
        let path = format!("spec.overrides[{i}]");
        if o.cluster_name.is_none() && o.cluster_selector.is_none() {
            errors.push(path.clone(), "set clusterName or clusterSelector");
        }
        for (j, p) in o.patches.iter().enumerate() {
            if !matches!(
                p.op.as_str(),
                "add" | "remove" | "replace" | "move" | "copy" | "test"
            ) {
                errors.push(
                    format!("{path}.patches[{j}].op"),
                    format!("{:?} is not an RFC 6902 operation", p.op),
                );
            }
            if !p.path.is_empty() && !p.path.starts_with('/') {
                errors.push(
                    format!("{path}.patches[{j}].path"),
                    "must be a JSON pointer starting with /",
                );
            }
        }
    }
    if let Some(rollout) = &spec.rollout {
        rollout_stages(&mut errors, &rollout.stages);
        if let Some(health) = &rollout.health {
            if health.max_error_percent > 100 {
                errors.push(
                    "spec.rollout.health.maxErrorPercent",
                    "must be between 0 and 100",
                );
            }
            if health
                .window_seconds
                .is_some_and(|w| !(1..=300).contains(&w))
            {
                errors.push(
                    "spec.rollout.health.windowSeconds",
                    "must be between 1 and 300 (load reports are kept five minutes)",
                );
            }
        }
    }
    errors.0
}

fn rollout_stages(e: &mut Errors, stages: &[crate::api::rollout::RolloutStage]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, stage) in stages.iter().enumerate() {
        let path = format!("spec.rollout.stages[{i}]");
        if stage.name.is_empty() {
            e.push(format!("{path}.name"), "must not be empty");
        } else if stage.name == "remaining" {
            e.push(
                format!("{path}.name"),
                "\"remaining\" names the implicit last stage of unlisted clusters",
            );
        } else if !seen.insert(stage.name.as_str()) {
            e.push(
                format!("{path}.name"),
                format!("stage {:?} is defined twice", stage.name),
            );
        }
        if stage.clusters.is_empty() && stage.cluster_selector.is_none() {
            e.push(path, "set clusters or clusterSelector");
        }
    }
}

fn template(e: &mut Errors, path: &str, t: &AccessPointTemplate) {
    let named = |e: &mut Errors, p: String, name: &str| {
        if name.is_empty() {
            e.push(format!("{p}.metadata.name"), "must not be empty");
        }
    };
    if let Some(s) = &t.service {
        named(e, format!("{path}.service"), &s.metadata.name);
        let annotation = crate::core::model::export::EXPORT_TO_ANNOTATION;
        let export = crate::core::model::export::from_annotation(Some(&s.metadata.annotations));
        export_to::check(
            e,
            &format!("{path}.service.metadata.annotations[{annotation}]"),
            &export,
            s.metadata.namespace.as_deref(),
            NoneAllowed::Yes,
        );
        if let Err(errors) = node_port_mode(&s.metadata.annotations, &s.spec, true) {
            for error in errors {
                e.push(format!("{path}.service.{}", error.field), error.message);
            }
        }
        for (i, port) in s.spec.ports.iter().flatten().enumerate() {
            let p = format!("{path}.service.spec.ports[{i}]");
            hosts::check_port(e, format!("{p}.port"), port.port.into());
            if let Some(IntOrString::Int(target)) = &port.target_port {
                hosts::check_port(e, format!("{p}.targetPort"), (*target).into());
            }
        }
    }
    for (i, g) in t.gateways.iter().enumerate() {
        let p = format!("{path}.gateways[{i}]");
        named(e, p.clone(), &g.metadata.name);
        gateway(e, &format!("{p}.spec"), &g.spec);
    }
    for (i, vs) in t.virtual_services.iter().enumerate() {
        let p = format!("{path}.virtualServices[{i}]");
        named(e, p.clone(), &vs.metadata.name);
        virtual_service(e, &format!("{p}.spec"), &vs.spec);
        let namespace = vs.metadata.namespace.as_deref();
        export_to::check(
            e,
            &format!("{p}.spec.exportTo"),
            &vs.spec.export_to,
            namespace,
            NoneAllowed::No,
        );
    }
    for (i, dr) in t.destination_rules.iter().enumerate() {
        let p = format!("{path}.destinationRules[{i}]");
        named(e, p.clone(), &dr.metadata.name);
        destination_rule(e, &format!("{p}.spec"), &dr.spec);
        let namespace = dr.metadata.namespace.as_deref();
        export_to::check(
            e,
            &format!("{p}.spec.exportTo"),
            &dr.spec.export_to,
            namespace,
            NoneAllowed::No,
        );
    }
    for (i, se) in t.service_entries.iter().enumerate() {
        let p = format!("{path}.serviceEntries[{i}]");
        named(e, p.clone(), &se.metadata.name);
        service_entry(e, &format!("{p}.spec"), &se.spec);
        let namespace = se.metadata.namespace.as_deref();
        export_to::check(
            e,
            &format!("{p}.spec.exportTo"),
            &se.spec.export_to,
            namespace,
            NoneAllowed::Yes,
        );
    }
    for (i, we) in t.workload_entries.iter().enumerate() {
        let p = format!("{path}.workloadEntries[{i}]");
        named(e, p.clone(), &we.metadata.name);
        if we.spec.address.is_empty() {
            e.push(format!("{p}.spec.address"), "must not be empty");
        }
        for (name, port) in &we.spec.ports {
            hosts::check_port(e, format!("{p}.spec.ports.{name}"), (*port).into());
        }
    }
}

fn gateway(e: &mut Errors, path: &str, g: &GatewaySpec) {
    if g.servers.is_empty() {
        e.push(format!("{path}.servers"), "at least one server is required");
    }
    for (i, s) in g.servers.iter().enumerate() {
        let p = format!("{path}.servers[{i}]");
        if s.port.number == 0 || s.port.number > 65535 {
            e.push(format!("{p}.port.number"), "must be 1-65535");
        }
        let protocol = s.port.protocol.to_ascii_uppercase();
        if !matches!(protocol.as_str(), "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "") {
            e.push(
                format!("{p}.port.protocol"),
                format!(
                    "{:?} is not supported yet (HTTP, HTTPS, HTTP2, GRPC)",
                    s.port.protocol
                ),
            );
        }
        match &s.tls {
            Some(tls) => server_tls(e, &format!("{p}.tls"), tls, &s.hosts),
            None if protocol == "HTTPS" => {
                e.push(format!("{p}.tls"), "an HTTPS server needs tls settings");
            }
            None => {}
        }
        if s.hosts.is_empty() {
            e.push(format!("{p}.hosts"), "at least one host is required");
        }
        for (j, host) in s.hosts.iter().enumerate() {
            hosts::check_server_host(e, format!("{p}.hosts[{j}]"), host);
        }
    }
}

fn server_tls(e: &mut Errors, path: &str, tls: &ServerTls, hosts: &[String]) {
    if TlsMode::parse(&tls.mode).is_none() {
        e.push(
            format!("{path}.mode"),
            format!("{:?} is not supported (SIMPLE, MUTUAL)", tls.mode),
        );
    }
    if tls.https_redirect {
        e.push(format!("{path}.httpsRedirect"), "is not supported yet");
    }
    match tls.credential_name.as_deref() {
        Some(name) => {
            if !is_dns_subdomain(name) {
                e.push(
                    format!("{path}.credentialName"),
                    format!("{name:?} is not a valid Secret name"),
                );
            }
        }
        None => {
            if let Some(i) = hosts.iter().position(|h| {
                let host = h.split_once('/').map_or(h.as_str(), |(_, host)| host);
                host == "*"
            }) {
                e.push(
                    format!("{path}.credentialName"),
                    format!(
                        "required: hosts[{i}] is `*`, and Meridian cannot issue a certificate for any name"
                    ),
                );
            }
        }
    }
}

/// A Kubernetes object name (DNS-1123 subdomain).
fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

fn virtual_service(e: &mut Errors, path: &str, vs: &VirtualServiceSpec) {
    if vs.hosts.is_empty() {
        e.push(format!("{path}.hosts"), "at least one host is required");
    }
    for (i, host) in vs.hosts.iter().enumerate() {
        hosts::check_host(e, format!("{path}.hosts[{i}]"), host);
    }
    for (i, http) in vs.http.iter().enumerate() {
        http_route(e, &format!("{path}.http[{i}]"), http);
        shadowed(e, path, &vs.http[..i], i, http);
    }
}

/// Routes are tried in order; one that an earlier route always takes first is a mistake.
fn shadowed(e: &mut Errors, path: &str, earlier: &[HttpRoute], index: usize, route: &HttpRoute) {
    if let Some(catch_all) = earlier.iter().position(matches_everything) {
        e.push(
            format!("{path}.http[{index}]"),
            format!("never matches: http[{catch_all}] matches every request first"),
        );
        return;
    }
    for (m, matcher) in route.matches.iter().enumerate() {
        let duplicate = earlier.iter().enumerate().find_map(|(r, other)| {
            let at = other
                .matches
                .iter()
                .position(|o| same_conditions(o, matcher))?;
            Some(format!("http[{r}].match[{at}]"))
        });
        if let Some(first) = duplicate {
            e.push(
                format!("{path}.http[{index}].match[{m}]"),
                format!("never matches: {first} has the same conditions and comes first"),
            );
        }
    }
}

fn matches_everything(route: &HttpRoute) -> bool {
    route.matches.is_empty() || route.matches.iter().any(match_all_condition)
}

/// No conditions, or only `uri: {prefix: /}`.
fn match_all_condition(m: &HttpMatchRequest) -> bool {
    let root = StringMatch {
        prefix: Some("/".to_owned()),
        ..Default::default()
    };
    let uri_any = m.uri.as_ref().is_none_or(|u| *u == root);
    uri_any
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.query_params.is_empty()
}

fn same_conditions(a: &HttpMatchRequest, b: &HttpMatchRequest) -> bool {
    HttpMatchRequest {
        name: None,
        ..a.clone()
    } == HttpMatchRequest {
        name: None,
        ..b.clone()
    }
}

fn http_route(e: &mut Errors, path: &str, r: &HttpRoute) {
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ]
    .iter()
    .filter(|a| **a)
    .count();
    if actions != 1 {
        e.push(
            path,
            "exactly one of route, redirect or directResponse must be set",
        );
    }
    for (i, m) in r.matches.iter().enumerate() {
        let p = format!("{path}.match[{i}]");
        if let Some(u) = &m.uri {
            e.string_match(format!("{p}.uri"), u);
        }
        if let Some(u) = &m.method {
            e.string_match(format!("{p}.method"), u);
        }
        if let Some(u) = &m.authority {
            e.string_match(format!("{p}.authority"), u);
        }
        for (name, h) in &m.headers {
            headers::check_name(e, &format!("{p}.headers"), name);
            e.string_match(format!("{p}.headers.{name}"), h);
        }
        for (name, q) in &m.query_params {
            e.string_match(format!("{p}.queryParams.{name}"), q);
        }
    }
    headers::check_edits(e, &format!("{path}.headers"), r.headers.as_ref());
    for (i, d) in r.route.iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        headers::check_edits(e, &format!("{p}.headers"), d.headers.as_ref());
        if d.destination.host.is_empty() {
            e.push(format!("{p}.destination.host"), "must not be empty");
        }
        if r.route.len() > 1 && d.weight.is_none() {
            e.push(
                format!("{p}.weight"),
                "required when a route has several destinations",
            );
        }
    }
    let total: u64 = r.route.iter().filter_map(|d| d.weight).map(u64::from).sum();
    if r.route.len() > 1 && total == 0 {
        e.push(format!("{path}.route"), "weights must not all be zero");
    }
    if let Some(redirect) = &r.redirect {
        if let Some(code) = redirect.redirect_code {
            if ![301, 302, 303, 307, 308].contains(&code) {
                e.push(
                    format!("{path}.redirect.redirectCode"),
                    "must be 301, 302, 303, 307 or 308",
                );
            }
        }
    }
    if let Some(direct) = &r.direct_response {
        if !(200..=599).contains(&direct.status) {
            e.push(format!("{path}.directResponse.status"), "must be 200-599");
        }
    }
    if let Some(rewrite) = &r.rewrite {
        if let Some(rr) = &rewrite.uri_regex_rewrite {
            e.regex(format!("{path}.rewrite.uriRegexRewrite.match"), &rr.pattern);
        }
    }
    e.duration(format!("{path}.timeout"), r.timeout.as_ref());
    if let Some(retries) = &r.retries {
        e.duration(
            format!("{path}.retries.perTryTimeout"),
            retries.per_try_timeout.as_ref(),
        );
    }
}

fn destination_rule(e: &mut Errors, path: &str, dr: &DestinationRuleSpec) {
    if dr.host.is_empty() {
        e.push(format!("{path}.host"), "must not be empty");
    } else {
        hosts::check_host(e, format!("{path}.host"), &dr.host);
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(e, &format!("{path}.trafficPolicy"), tp);
    }
    for (i, s) in dr.subsets.iter().enumerate() {
        let p = format!("{path}.subsets[{i}]");
        if s.name.is_empty() {
            e.push(format!("{p}.name"), "must not be empty");
        }
        if dr.subsets[..i].iter().any(|o| o.name == s.name) {
            e.push(
                format!("{p}.name"),
                format!("duplicate subset {:?}", s.name),
            );
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(e, &format!("{p}.trafficPolicy"), tp);
        }
    }
}

fn traffic_policy(e: &mut Errors, path: &str, tp: &TrafficPolicy) {
    if let Some(setting) = tp
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref())
    {
        let p = format!("{path}.loadBalancer.localityLbSetting");
        if !setting.distribute.is_empty() && !setting.failover.is_empty() {
            e.push(p.clone(), "distribute and failover are exclusive");
        }
        for (i, rule) in setting.distribute.iter().enumerate() {
            let total: u64 = rule.to.values().map(|&v| u64::from(v)).sum();
            if total != 100 {
                e.push(
                    format!("{p}.distribute[{i}].to"),
                    format!("percentages sum to {total}, not 100"),
                );
            }
        }
    }
    if let Some(lb) = &tp.load_balancer {
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            e.push(
                format!("{path}.loadBalancer"),
                "simple and consistentHash are exclusive",
            );
        }
        if let Some(ch) = &lb.consistent_hash {
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                e.push(
                    format!("{path}.loadBalancer.consistentHash"),
                    "ringHash and maglev are exclusive",
                );
            }
            if let Some(size) = ch.maglev.as_ref().and_then(|m| m.table_size) {
                if size > 5_000_011 || !is_prime(size) {
                    e.push(
                        format!("{path}.loadBalancer.consistentHash.maglev.tableSize"),
                        "must be a prime no larger than 5000011",
                    );
                }
            }
        }
    }
    if let Some(pool) = &tp.connection_pool {
        e.duration(
            format!("{path}.connectionPool.tcp.connectTimeout"),
            pool.tcp.as_ref().and_then(|t| t.connect_timeout.as_ref()),
        );
    }
    if let Some(od) = &tp.outlier_detection {
        e.duration(
            format!("{path}.outlierDetection.interval"),
            od.interval.as_ref(),
        );
        e.duration(
            format!("{path}.outlierDetection.baseEjectionTime"),
            od.base_ejection_time.as_ref(),
        );
        if od.max_ejection_percent.is_some_and(|p| p > 100) {
            e.push(
                format!("{path}.outlierDetection.maxEjectionPercent"),
                "must be 0-100",
            );
        }
        if od.min_health_percent.is_some_and(|p| p > 100) {
            e.push(
                format!("{path}.outlierDetection.minHealthPercent"),
                "must be 0-100",
            );
        }
    }
}

fn service_entry(e: &mut Errors, path: &str, se: &ServiceEntrySpec) {
    if se.hosts.is_empty() {
        e.push(format!("{path}.hosts"), "at least one host is required");
    }
    for (i, host) in se.hosts.iter().enumerate() {
        hosts::check_host(e, format!("{path}.hosts[{i}]"), host);
    }
    for (i, port) in se.ports.iter().enumerate() {
        hosts::check_port(e, format!("{path}.ports[{i}].number"), port.number.into());
        if let Some(target) = port.target_port {
            hosts::check_port(e, format!("{path}.ports[{i}].targetPort"), target.into());
        }
    }
    for (i, endpoint) in se.endpoints.iter().enumerate() {
        for (name, port) in &endpoint.ports {
            hosts::check_port(
                e,
                format!("{path}.endpoints[{i}].ports.{name}"),
                (*port).into(),
            );
        }
    }
    if se.ports.is_empty() {
        e.push(format!("{path}.ports"), "at least one port is required");
    }
    if se.resolution == Resolution::None {
        e.push(
            format!("{path}.resolution"),
            "NONE cannot be served by a gateway; use STATIC or DNS",
        );
    }
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        e.push(
            format!("{path}.workloadSelector"),
            "endpoints and workloadSelector are exclusive",
        );
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::parse_documents;
    use crate::core::model::InputObject;

    fn errors_of(yaml: &str) -> Vec<String> {
        let objects = parse_documents(yaml, "default").unwrap();
        let InputObject::AccessPoint(ap) = &objects[0] else {
            panic!()
        };
        validate_access_point(&ap.spec)
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn rollout_stages_need_unique_names_and_clusters() {
        let errors = errors_of(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template: {}
  rollout:
    strategy: Staged
    stages:
    - {name: canary, clusters: [a]}
    - {name: canary, clusters: [b]}
    - {name: remaining, clusterSelector: {matchLabels: {x: y}}}
    - {name: empty}
    health: {maxErrorPercent: 150, windowSeconds: 600}
"#,
        );
        assert_eq!(
            errors,
            [
                "field `spec.rollout.stages[1].name`: stage \"canary\" is defined twice",
                "field `spec.rollout.stages[2].name`: \"remaining\" names the implicit last stage of unlisted clusters",
                "field `spec.rollout.stages[3]`: set clusters or clusterSelector",
                "field `spec.rollout.health.maxErrorPercent`: must be between 0 and 100",
                "field `spec.rollout.health.windowSeconds`: must be between 1 and 300 (load reports are kept five minutes)",
            ]
        );
    }

    #[test]
    fn reports_each_mistake_with_its_path() {
        let errors = errors_of(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec:
        servers: [{port: {number: 70000, protocol: HTTP}, hosts: []}]
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com]
        http:
        - match: [{uri: {regex: "(unclosed"}}, {uri: {prefix: /a, exact: /b}}]
          route:
          - destination: {host: a}
            weight: 50
          - destination: {host: b}
          timeout: soon
        - redirect: {uri: /x, redirectCode: 305}
          match: [{uri: {prefix: /a}, name: first}]
        - match: [{uri: {prefix: /b}}, {uri: {prefix: /a}, name: again}]
          route: [{destination: {host: a}}]
        - route: [{destination: {host: a}}]
        - match: [{uri: {prefix: /late}}]
          route: [{destination: {host: a}}]
    destinationRules:
    - metadata: {name: a}
      spec:
        host: a
        trafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 65536}}}}
"#,
        );
        let expected = [
            "spec.template.gateways[0].spec.servers[0].port.number",
            "spec.template.gateways[0].spec.servers[0].hosts",
            "spec.template.virtualServices[0].spec.http[0].match[0].uri.regex",
            "spec.template.virtualServices[0].spec.http[0].match[1].uri",
            "spec.template.virtualServices[0].spec.http[0].route[1].weight",
            "spec.template.virtualServices[0].spec.http[0].timeout",
            "spec.template.virtualServices[0].spec.http[1].redirect.redirectCode",
            "spec.template.virtualServices[0].spec.http[2].match[1]",
            "spec.template.virtualServices[0].spec.http[4]",
            "spec.template.destinationRules[0].spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        ];
        for path in expected {
            assert!(
                errors.iter().any(|e| e.contains(&format!("`{path}`"))),
                "missing {path} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn tls_servers_say_what_they_need() {
        let errors = errors_of(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec:
        servers:
        - {port: {number: 443, protocol: HTTPS}, hosts: [a.example.com]}
        - {port: {number: 443, protocol: HTTPS}, hosts: [b.example.com], tls: {mode: PASSTHROUGH}}
        - {port: {number: 443, protocol: HTTPS}, hosts: ["ns/*"], tls: {mode: SIMPLE}}
        - {port: {number: 443, protocol: HTTPS}, hosts: ["*"], tls: {mode: MUTUAL, credentialName: Bad_Name}}
        - {port: {number: 443, protocol: HTTPS}, hosts: ["*"], tls: {mode: SIMPLE, credentialName: good}}
        - {port: {number: 443, protocol: HTTPS}, hosts: [c.example.com], tls: {mode: SIMPLE}}
"#,
        );
        let expected = [
            "`spec.template.gateways[0].spec.servers[0].tls`: an HTTPS server needs tls settings",
            "`spec.template.gateways[0].spec.servers[1].tls.mode`: \"PASSTHROUGH\" is not supported (SIMPLE, MUTUAL)",
            "`spec.template.gateways[0].spec.servers[2].tls.credentialName`: required: hosts[0] is `*`, and Meridian cannot issue a certificate for any name",
            "`spec.template.gateways[0].spec.servers[3].tls.credentialName`: \"Bad_Name\" is not a valid Secret name",
        ];
        for message in expected {
            assert!(
                errors.iter().any(|e| e.contains(message)),
                "missing {message} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn a_good_access_point_has_no_errors() {
        let errors = errors_of(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 8080, protocol: HTTP}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com]
        gateways: [gw]
        http:
        - match: [{uri: {regex: "/v[0-9]+/.*"}}]
          route: [{destination: {host: web}}]
          timeout: 1.5s
"#,
        );
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn hosts_and_ports_envoy_would_refuse_are_rejected_with_their_paths() {
        let errors = errors_of(
            r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template:
    service:
      metadata: {name: web}
      spec: {ports: [{port: 80, targetPort: 70000}]}
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*/bücher.example"]}]}
    virtualServices:
    - metadata: {name: vs}
      spec:
        hosts: ["shop example.com"]
        http: [{route: [{destination: {host: web}}]}]
    destinationRules:
    - metadata: {name: dr}
      spec: {host: "web\u0000"}
    serviceEntries:
    - metadata: {name: se}
      spec:
        hosts: [ext.example.com]
        ports: [{number: 70000, name: http, protocol: HTTP}]
        resolution: STATIC
        endpoints: [{address: 10.0.0.1, ports: {http: 0}}]
"#,
        );
        for path in [
            "spec.template.service.spec.ports[0].targetPort",
            "spec.template.gateways[0].spec.servers[0].hosts[0]",
            "spec.template.virtualServices[0].spec.hosts[0]",
            "spec.template.destinationRules[0].spec.host",
            "spec.template.serviceEntries[0].spec.ports[0].number",
            "spec.template.serviceEntries[0].spec.endpoints[0].ports.http",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(&format!("`{path}`"))),
                "{path}: {errors:?}"
            );
        }
        assert!(errors.iter().any(|e| e.contains("xn--")), "{errors:?}");
    }

    #[test]
    fn certificates_for_reserved_names_are_refused() {
        let spec = |host: &str, credential: &str| {
            let objects = parse_documents(
                &format!(
                    r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: gw}}
      spec: {{servers: [{{port: {{number: 443, protocol: HTTPS}}, hosts: ["{host}"], tls: {{mode: SIMPLE{credential}}}}}]}}
"#
                ),
                "default",
            )
            .unwrap();
            let InputObject::AccessPoint(ap) = &objects[0] else {
                panic!()
            };
            ap.spec.clone()
        };
        let reserved = [
            "localhost".to_owned(),
            "meridian.system.svc".to_owned(),
            "*.corp.example".to_owned(),
        ];
        for host in [
            "localhost",
            "LocalHost",
            "ns/localhost",
            "*.system.svc",
            "meridian.system.svc",
            "a.corp.example",
            "*.corp.example",
            "*.x.corp.example",
        ] {
            let errors = validate_certificate_names(&spec(host, ""), &reserved);
            assert_eq!(errors.len(), 1, "{host}: {errors:?}");
            assert!(errors[0].path.ends_with("hosts[0]") && errors[0].message.contains("reserved"));
        }
        for host in [
            "shop.example.com",
            "*.svc",
            "localhost.example.com",
            "*.example",
        ] {
            assert!(
                validate_certificate_names(&spec(host, ""), &reserved).is_empty(),
                "{host}"
            );
        }
        // The operator's own certificate: nothing is issued, nothing to refuse.
        assert!(validate_certificate_names(
            &spec("localhost", ", credentialName: mine"),
            &reserved
        )
        .is_empty());
    }
}
