//! The HAProxy configuration text for a gateway's accepted plans.
//!
//! A request first picks its filter chain (by SNI), then its virtual host (exact names, then
//! wildcard suffixes longest first, then prefixes, then `*`, as Envoy does), then the first
//! route that matches, each stored in a transaction variable before anything is rewritten;
//! every action is then guarded by the route's id. No route: 404, as in Envoy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Duration;

use super::quote::time;
use super::routes::{Edits, ForwardRule, RouteRules, RuleAction};
use super::servers::{Server, SlotTable};
use super::{pem_file, section_name, service_of_cluster};
use crate::core::dataplane::balancer::{ClusterPlan, Policy};
use crate::core::dataplane::listeners::ListenerPlan;
use crate::core::dataplane::CompileError;

/// The backend every route to a cluster HAProxy does not have goes to: no servers, so 503.
pub const NO_CLUSTER: &str = "meridian_no_cluster";

/// How the program runs HAProxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The admin-level Runtime API socket.
    pub runtime_socket: String,
    /// Where certificates (`<secret>.pem`) and crt-lists are written.
    pub files_dir: String,
    /// The node agent's port; `None`: no agent checks.
    pub agent_port: Option<u16>,
    pub agent_inter: Duration,
    /// Active health checks (TCP connect) of every server.
    pub check_inter: Duration,
    /// How long an old worker may finish its requests after a reload.
    pub drain: Duration,
    /// Prometheus metrics and HAProxy's stats page (`/metrics`, `/stats`).
    pub stats_addr: Option<String>,
}

/// What the configuration is made of.
pub struct Inputs<'a> {
    pub listeners: &'a BTreeMap<String, ListenerPlan>,
    pub routes: &'a BTreeMap<String, RouteRules>,
    pub clusters: &'a BTreeMap<String, ClusterPlan>,
    pub slots: &'a BTreeMap<String, SlotTable>,
    pub settings: &'a Settings,
}

/// The configuration and the crt-list of each TLS frontend (file name → content).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub config: String,
    pub crt_lists: BTreeMap<String, String>,
}

/// What a backend's routes ask of it, which HAProxy sets per backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct BackendAsks {
    retry: Option<(u32, Vec<String>)>,
    hash: Option<String>,
}

/// Refuses `rules` when it asks a backend for other retries or hashing than `others` do
/// (HAProxy sets both per backend, not per route).
pub fn check_agreement<'a>(
    rules: &RouteRules,
    others: impl Iterator<Item = &'a RouteRules>,
) -> Result<(), CompileError> {
    let mut asks = BTreeMap::new();
    for other in others.filter(|o| o.name != rules.name) {
        collect_asks(other, &mut asks);
    }
    for (i, host) in rules.virtual_hosts.iter().enumerate() {
        for (j, route) in host.routes.iter().enumerate() {
            let RuleAction::Forward(forward) = &route.action else {
                continue;
            };
            for (cluster, _, _) in &forward.targets {
                let theirs = asks
                    .entry(cluster.clone())
                    .or_insert_with(BackendAsks::default);
                let field = format!("virtual_hosts[{i}].routes[{j}].route");
                if let Some(retry) = &forward.retry {
                    let mine = (retry.attempts, retry.on.clone());
                    match &theirs.retry {
                        Some(existing) if *existing != mine => {
                            return Err(disagree(rules, &format!("{field}.retry_policy"), cluster))
                        }
                        _ => theirs.retry = Some(mine),
                    }
                }
                if let Some(hash) = &forward.hash {
                    match &theirs.hash {
                        Some(existing) if existing != hash => {
                            return Err(disagree(rules, &format!("{field}.hash_policy"), cluster))
                        }
                        _ => theirs.hash = Some(hash.clone()),
                    }
                }
            }
        }
    }
    Ok(())
}

fn disagree(rules: &RouteRules, field: &str, cluster: &str) -> CompileError {
    CompileError::new(
        format!("RouteConfiguration {}", rules.name),
        field,
        format!("not supported by meridian haproxy: another route to cluster {cluster} asks otherwise, and HAProxy sets this per backend"),
    )
}

fn collect_asks(rules: &RouteRules, asks: &mut BTreeMap<String, BackendAsks>) {
    for host in &rules.virtual_hosts {
        for route in &host.routes {
            let RuleAction::Forward(forward) = &route.action else {
                continue;
            };
            for (cluster, _, _) in &forward.targets {
                let entry = asks.entry(cluster.clone()).or_default();
                if entry.retry.is_none() {
                    entry.retry = forward.retry.as_ref().map(|r| (r.attempts, r.on.clone()));
                }
                if entry.hash.is_none() {
                    entry.hash = forward.hash.clone();
                }
            }
        }
    }
}

pub fn render(inputs: &Inputs<'_>) -> Rendered {
    let s = inputs.settings;
    let mut out = String::new();
    let mut crt_lists = BTreeMap::new();
    let _ = writeln!(
        out,
        "# Written by meridian haproxy from the xDS Meridian serves; edits are overwritten.
global
    stats socket {} mode 600 level admin expose-fd listeners
    stats timeout 30s
    hard-stop-after {}

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 300s
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout queue 30s
    retries 0
    # After a reload, the old worker answers what its idle keep-alive connections send next
    # (closing each after its response) rather than closing them under a request in flight.
    option idle-close-on-response
",
        s.runtime_socket,
        time(s.drain)
    );
    if let Some(addr) = &s.stats_addr {
        let _ = writeln!(
            out,
            "frontend meridian_stats
    bind {addr}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
"
        );
    }
    for listener in inputs.listeners.values() {
        frontend(&mut out, &mut crt_lists, listener, inputs);
    }
    let mut asks = BTreeMap::new();
    for rules in inputs.routes.values() {
        collect_asks(rules, &mut asks);
    }
    for cluster in inputs.clusters.values() {
        let slots = inputs.slots.get(&cluster.name).cloned().unwrap_or_default();
        backend(&mut out, cluster, &slots, asks.get(&cluster.name), s);
    }
    let _ = writeln!(out, "backend {NO_CLUSTER}");
    Rendered {
        config: out,
        crt_lists,
    }
}

fn frontend(
    out: &mut String,
    crt_lists: &mut BTreeMap<String, String>,
    listener: &ListenerPlan,
    inputs: &Inputs<'_>,
) {
    let name = section_name(&listener.name);
    let _ = writeln!(out, "frontend {name}");
    let mut bind = format!(
        "    bind {}:{}",
        bind_address(&listener.address),
        listener.port
    );
    if listener.proxy_protocol {
        bind.push_str(" accept-proxy");
    }
    let tls: Vec<_> = listener
        .chains
        .iter()
        .filter_map(|c| c.tls.as_ref().map(|t| (c, t)))
        .collect();
    if !tls.is_empty() {
        let file = format!("{}/{name}.crtlist", inputs.settings.files_dir);
        let mut list = String::new();
        // Chains with names first; the first line is the default certificate.
        let mut ordered = tls.clone();
        ordered.sort_by_key(|(c, _)| c.server_names.is_empty());
        if let Some(default) = ordered
            .iter()
            .find(|(c, _)| c.server_names.is_empty())
            .or(ordered.first())
        {
            crt_line(&mut list, default.1, &[], inputs.settings);
        }
        for (chain, plan) in &ordered {
            if !chain.server_names.is_empty() {
                crt_line(&mut list, plan, &chain.server_names, inputs.settings);
            }
        }
        crt_lists.insert(format!("{name}.crtlist"), list);
        let _ = write!(bind, " ssl crt-list {file}");
    }
    let _ = writeln!(out, "{bind}");
    if listener.chains.iter().any(|c| c.use_remote_address) {
        let _ = writeln!(out, "    option forwardfor");
    }
    let _ = writeln!(out, "    http-request set-header x-request-id %[uuid]");
    // Envoy's gateway defaults that HAProxy does not apply by itself: the hop-by-hop headers
    // HTTP/1.0 clients send are not forwarded, and the scheme the client used is.
    let _ = writeln!(out, "    http-request del-header keep-alive");
    let _ = writeln!(out, "    http-request del-header proxy-connection");
    let _ = writeln!(
        out,
        "    http-request set-header x-forwarded-proto https if {{ ssl_fc }}"
    );
    let _ = writeln!(
        out,
        "    http-request set-header x-forwarded-proto http if !{{ ssl_fc }}"
    );
    // Envoy's `strip_any_host_port`, which Meridian sets: routes and upstreams see the host
    // without its port.
    let _ = writeln!(
        out,
        "    http-request replace-header host '^(.+):[0-9]+$' '\\1'"
    );
    let _ = writeln!(
        out,
        "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower"
    );
    let several = listener.chains.len() > 1;
    if several {
        chain_selection(out, listener);
    }
    let mut route_ids = Vec::new();
    for (c, chain) in listener.chains.iter().enumerate() {
        let Some(rules) = inputs.routes.get(&chain.route_config) else {
            continue;
        };
        let chain_guard = if several {
            format!(" {{ var(txn.chain) -m str c{c} }}")
        } else {
            String::new()
        };
        vhost_selection(out, c, rules, &chain_guard);
        for (v, host) in rules.virtual_hosts.iter().enumerate() {
            for route in &host.routes {
                let id = format!("r{}", route_ids.len());
                let _ = writeln!(
                    out,
                    "    http-request set-var(txn.route) str({id}) if !{{ var(txn.route) -m found }} {{ var(txn.vhost) -m str c{c}v{v} }}{}",
                    route.conditions.iter().map(|c| format!(" {c}")).collect::<String>()
                );
                route_ids.push((id, route));
            }
        }
    }
    let _ = writeln!(
        out,
        "    http-request return status 404 if !{{ var(txn.route) -m found }}"
    );
    let mut use_backends = Vec::new();
    let mut responses = Vec::new();
    for (id, route) in &route_ids {
        let guard = format!("{{ var(txn.route) -m str {id} }}");
        match &route.action {
            RuleAction::Direct { status, body } => {
                let _ = match body.as_deref().filter(|b| *b != "''") {
                    Some(body) => writeln!(
                        out,
                        "    http-request return status {status} content-type text/plain string {body} if {guard}"
                    ),
                    None => writeln!(out, "    http-request return status {status} if {guard}"),
                };
            }
            RuleAction::Redirect {
                location,
                keep_query,
                code,
            } => {
                if *keep_query {
                    let _ = writeln!(
                        out,
                        "    http-request redirect location '{location}?%[query]' code {code} if {guard} {{ query -m found }}"
                    );
                }
                let _ = writeln!(
                    out,
                    "    http-request redirect location '{location}' code {code} if {guard}"
                );
            }
            RuleAction::Forward(forward) => {
                forward_rules(
                    out,
                    &guard,
                    forward,
                    &route.edits,
                    inputs,
                    &mut use_backends,
                    &mut responses,
                );
            }
        }
    }
    for line in use_backends.into_iter().chain(responses) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
}

fn crt_line(
    list: &mut String,
    plan: &crate::core::dataplane::listeners::TlsPlan,
    names: &[String],
    s: &Settings,
) {
    let mut options = Vec::new();
    if !plan.alpn.is_empty() {
        options.push(format!("alpn {}", plan.alpn.join(",")));
    }
    if let Some(ca) = &plan.validation {
        options.push(format!("ca-file {}/{}", s.files_dir, pem_file(ca)));
        options.push(format!(
            "verify {}",
            if plan.require_client_certificate {
                "required"
            } else {
                "optional"
            }
        ));
    }
    let _ = write!(list, "{}/{}", s.files_dir, pem_file(&plan.certificate));
    if !options.is_empty() {
        let _ = write!(list, " [{}]", options.join(" "));
    }
    for name in names {
        let _ = write!(list, " {name}");
    }
    let _ = writeln!(list);
}

/// Sets `txn.chain` as Envoy picks a filter chain: exact server names, then wildcards
/// (longest first), then a chain without names.
fn chain_selection(out: &mut String, listener: &ListenerPlan) {
    let unset = "!{ var(txn.chain) -m found }";
    let mut wildcards = Vec::new();
    for (c, chain) in listener.chains.iter().enumerate() {
        let exact: Vec<&str> = chain
            .server_names
            .iter()
            .filter(|n| !n.starts_with('*'))
            .map(String::as_str)
            .collect();
        if !exact.is_empty() {
            let _ = writeln!(
                out,
                "    http-request set-var(txn.chain) str(c{c}) if {unset} {{ ssl_fc_sni -i {} }}",
                exact.join(" ")
            );
        }
        for w in chain
            .server_names
            .iter()
            .filter_map(|n| n.strip_prefix('*'))
        {
            wildcards.push((w.to_owned(), c));
        }
    }
    wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    for (suffix, c) in wildcards {
        let _ = writeln!(out, "    http-request set-var(txn.chain) str(c{c}) if {unset} {{ ssl_fc_sni -i -m end {suffix} }}");
    }
    if let Some(c) = listener
        .chains
        .iter()
        .position(|c| c.server_names.is_empty())
    {
        let _ = writeln!(
            out,
            "    http-request set-var(txn.chain) str(c{c}) if {unset}"
        );
    }
}

/// Sets `txn.vhost` for chain `c`'s route configuration, in Envoy's order of domains.
fn vhost_selection(out: &mut String, c: usize, rules: &RouteRules, chain_guard: &str) {
    let unset = "!{ var(txn.vhost) -m found }";
    let (mut exact, mut suffixes, mut prefixes, mut any) =
        (Vec::new(), Vec::new(), Vec::new(), None);
    for (v, host) in rules.virtual_hosts.iter().enumerate() {
        for domain in &host.domains {
            if domain == "*" {
                any = any.or(Some(v));
            } else if let Some(suffix) = domain.strip_prefix('*') {
                suffixes.push((suffix.to_owned(), v));
            } else if let Some(prefix) = domain.strip_suffix('*') {
                prefixes.push((prefix.to_owned(), v));
            } else {
                exact.push((domain.clone(), v));
            }
        }
    }
    let mut by_vhost: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (domain, v) in exact {
        by_vhost.entry(v).or_default().push(domain);
    }
    for (v, domains) in by_vhost {
        let _ = writeln!(out, "    http-request set-var(txn.vhost) str(c{c}v{v}) if {unset}{chain_guard} {{ var(txn.host) -m str {} }}", domains.join(" "));
    }
    suffixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    for (suffix, v) in suffixes {
        let _ = writeln!(out, "    http-request set-var(txn.vhost) str(c{c}v{v}) if {unset}{chain_guard} {{ var(txn.host) -m end {suffix} }}");
    }
    prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    for (prefix, v) in prefixes {
        let _ = writeln!(out, "    http-request set-var(txn.vhost) str(c{c}v{v}) if {unset}{chain_guard} {{ var(txn.host) -m beg {prefix} }}");
    }
    if let Some(v) = any {
        let _ = writeln!(
            out,
            "    http-request set-var(txn.vhost) str(c{c}v{v}) if {unset}{chain_guard}"
        );
    }
}

fn forward_rules(
    out: &mut String,
    guard: &str,
    forward: &ForwardRule,
    edits: &Edits,
    inputs: &Inputs<'_>,
    use_backends: &mut Vec<String>,
    responses: &mut Vec<String>,
) {
    let live: Vec<_> = forward.targets.iter().filter(|(_, w, _)| *w > 0).collect();
    let total: u64 = live.iter().map(|(_, w, _)| u64::from(*w)).sum();
    if live.len() > 1 {
        let _ = writeln!(
            out,
            "    http-request set-var(txn.pick) rand({total}) if {guard}"
        );
    }
    let mut low = 0u64;
    let mut target_guards = Vec::new();
    for (cluster, weight, target_edits) in &live {
        let high = low + u64::from(*weight);
        let range = if live.len() > 1 {
            format!(" {{ var(txn.pick) -m int ge {low} }} {{ var(txn.pick) -m int lt {high} }}")
        } else {
            String::new()
        };
        low = high;
        target_guards.push((format!("{guard}{range}"), cluster, target_edits));
    }
    for (target_guard, _, target_edits) in &target_guards {
        request_edits(out, target_edits, target_guard);
    }
    request_edits(out, edits, guard);
    if let Some((pattern, replacement)) = &forward.replace_path {
        let _ = writeln!(
            out,
            "    http-request replace-path {pattern} {replacement} if {guard}"
        );
    }
    if let Some(host) = &forward.host_rewrite {
        let _ = writeln!(out, "    http-request set-header host {host} if {guard}");
    }
    if let Some(timeout) = forward.timeout {
        // Set in the backend (a frontend cannot), from the route's choice.
        let _ = writeln!(
            out,
            "    http-request set-var(txn.timeout) int({}) if {guard}",
            timeout.as_millis().max(1)
        );
    }
    if live.is_empty() {
        let _ = writeln!(out, "    http-request return status 503 if {guard}");
    }
    for (target_guard, cluster, target_edits) in &target_guards {
        let backend = if inputs.clusters.contains_key(cluster.as_str()) {
            section_name(cluster)
        } else {
            NO_CLUSTER.to_owned()
        };
        use_backends.push(format!("    use_backend {backend} if {target_guard}"));
        response_edits(responses, target_edits, target_guard);
    }
    response_edits(responses, edits, guard);
}

fn request_edits(out: &mut String, edits: &Edits, guard: &str) {
    for name in &edits.request_remove {
        let _ = writeln!(out, "    http-request del-header {name} if {guard}");
    }
    for (name, value, append) in &edits.request_set {
        let verb = if *append { "add-header" } else { "set-header" };
        let _ = writeln!(out, "    http-request {verb} {name} {value} if {guard}");
    }
}

fn response_edits(lines: &mut Vec<String>, edits: &Edits, guard: &str) {
    for name in &edits.response_remove {
        lines.push(format!("    http-response del-header {name} if {guard}"));
    }
    for (name, value, append) in &edits.response_set {
        let verb = if *append { "add-header" } else { "set-header" };
        lines.push(format!(
            "    http-response {verb} {name} {value} if {guard}"
        ));
    }
}

fn backend(
    out: &mut String,
    cluster: &ClusterPlan,
    slots: &SlotTable,
    asks: Option<&BackendAsks>,
    s: &Settings,
) {
    let _ = writeln!(out, "backend {}", section_name(&cluster.name));
    let hash = asks.and_then(|a| a.hash.as_deref());
    let balance = match (cluster.policy, hash) {
        (Policy::RingHash { .. } | Policy::Maglev { .. }, Some(hash)) => {
            let _ = writeln!(out, "    hash-type consistent");
            hash
        }
        (Policy::LeastRequest, _) => "leastconn",
        (Policy::RoundRobin, _) => "roundrobin",
        _ => "random",
    };
    let _ = writeln!(out, "    balance {balance}");
    let _ = writeln!(out, "    timeout connect {}", time(cluster.connect_timeout));
    let _ = writeln!(
        out,
        "    http-request set-timeout server var(txn.timeout) if {{ var(txn.timeout) -m found }}"
    );
    if cluster.http2 {
        // Over HTTP/2 the host travels as `:authority` (from an absolute URI), without Host,
        // and concurrent requests share a connection, as Envoy's.
        let _ = writeln!(
            out,
            "    http-request set-uri http://%[req.hdr(host)]%[pathq]"
        );
        let _ = writeln!(out, "    http-request del-header host");
        let _ = writeln!(out, "    http-reuse always");
    }
    if let Some((attempts, on)) = asks.and_then(|a| a.retry.as_ref()) {
        let _ = writeln!(out, "    retries {attempts}");
        if !on.is_empty() {
            let _ = writeln!(out, "    retry-on {}", on.join(" "));
        }
        let _ = writeln!(out, "    option redispatch 1");
    }
    let mut defaults = format!("    default-server check inter {}", time(s.check_inter));
    if let (Some(port), Some(service)) = (s.agent_port, service_of_cluster(&cluster.name)) {
        let _ = write!(
            defaults,
            " agent-check agent-port {port} agent-inter {} agent-send \"{service}\\n\"",
            time(s.agent_inter)
        );
    }
    if cluster.http2 {
        defaults.push_str(" proto h2");
    }
    // Envoy's max_requests_per_connection: a connection carries that many, so is reused one
    // time fewer (HAProxy 2.6 counts reuse from its idle pool, not the requests of the client
    // session a server connection is attached to).
    if let Some(requests) = cluster.max_requests_per_connection {
        let _ = write!(defaults, " max-reuse {}", requests.saturating_sub(1));
    }
    let _ = write!(
        defaults,
        " maxconn {}",
        cluster.limits.max_connections.max(1)
    );
    if let Some(threshold) = cluster
        .outlier
        .as_ref()
        .and_then(|o| o.consecutive_5xx.or(o.consecutive_gateway))
    {
        let _ = write!(
            defaults,
            " observe layer7 error-limit {threshold} on-error mark-down"
        );
    }
    let _ = writeln!(out, "{defaults}");
    for (prefix, list, backup) in [("a", &slots.active, ""), ("b", &slots.backup, " backup")] {
        for (i, slot) in list.iter().enumerate() {
            let _ = match slot {
                Some(Server {
                    address,
                    port,
                    weight,
                }) => writeln!(
                    out,
                    "    server {prefix}{} {}:{port} weight {weight}{backup}",
                    i + 1,
                    bind_address(address)
                ),
                // Weight 100 as filled slots have: the node agent's `NN%` is a share of the
                // weight a server was configured with.
                None => writeln!(
                    out,
                    "    server {prefix}{} 0.0.0.0:1 weight 100 disabled{backup}",
                    i + 1
                ),
            };
        }
    }
    let _ = writeln!(out);
}

/// An address as HAProxy reads it (IPv6 in brackets is not needed: `ipv6@` prefix).
fn bind_address(address: &str) -> String {
    if address.contains(':') {
        format!("ipv6@{address}")
    } else {
        address.to_owned()
    }
}

/// The secrets a set of listeners needs before HAProxy can serve them.
pub fn secrets_of(listener: &ListenerPlan) -> BTreeSet<String> {
    listener
        .chains
        .iter()
        .filter_map(|c| c.tls.as_ref())
        .flat_map(|t| std::iter::once(t.certificate.clone()).chain(t.validation.clone()))
        .collect()
}
