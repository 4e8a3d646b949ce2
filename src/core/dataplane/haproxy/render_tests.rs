//! The HAProxy configuration rendered from route configurations and plans, as text.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::render::{check_agreement, render, Inputs, Settings};
use super::routes::RouteRules;
use crate::core::dataplane::listeners::{ChainPlan, ListenerPlan, TlsPlan};
use crate::core::json::message_from_json;

fn rules(json: serde_json::Value) -> Result<RouteRules, String> {
    let config: RouteConfiguration = message_from_json(
        "envoy.config.route.v3.RouteConfiguration",
        json.to_string().as_bytes(),
    )
    .unwrap();
    RouteRules::compile(&config).map_err(|e| e.to_string())
}

fn settings() -> Settings {
    Settings {
        runtime_socket: "/run/admin.sock".into(),
        files_dir: "/etc/edge".into(),
        agent_port: Some(5555),
        agent_inter: Duration::from_secs(2),
        check_inter: Duration::from_secs(2),
        drain: Duration::from_secs(15),
        stats_addr: None,
    }
}

fn listener(chains: Vec<ChainPlan>) -> BTreeMap<String, ListenerPlan> {
    BTreeMap::from([(
        "0.0.0.0_443".to_owned(),
        ListenerPlan {
            name: "0.0.0.0_443".into(),
            address: "0.0.0.0".into(),
            port: 443,
            chains,
            proxy_protocol: true,
        },
    )])
}

fn chain(names: &[&str], route_config: &str, tls: bool) -> ChainPlan {
    ChainPlan {
        server_names: names.iter().map(|n| (*n).to_owned()).collect(),
        tls: tls.then(|| TlsPlan {
            certificate: format!("embedded://{route_config}"),
            validation: None,
            require_client_certificate: false,
            alpn: vec!["h2".into(), "http/1.1".into()],
        }),
        route_config: route_config.into(),
        use_remote_address: true,
    }
}

fn rendered(routes: &[RouteRules], chains: Vec<ChainPlan>) -> (String, BTreeMap<String, String>) {
    let routes: BTreeMap<String, RouteRules> =
        routes.iter().map(|r| (r.name.clone(), r.clone())).collect();
    let out = render(&Inputs {
        listeners: &listener(chains),
        routes: &routes,
        clusters: &BTreeMap::new(),
        slots: &BTreeMap::new(),
        settings: &settings(),
    });
    (out.config, out.crt_lists)
}

/// The index of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

#[test]
fn virtual_hosts_are_chosen_in_envoys_order_whatever_their_order_in_the_config() {
    let config = rules(serde_json::json!({
        "name": "https.443",
        "virtualHosts": [
            {"name": "any", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 200}}]},
            {"name": "prefix", "domains": ["shop.*"], "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 201}}]},
            {"name": "short", "domains": ["*.com"], "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 202}}]},
            {"name": "long", "domains": ["*.example.com"], "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 203}}]},
            {"name": "exact", "domains": ["Shop.Example.com"], "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 204}}]}
        ]
    }))
    .unwrap();
    let (text, _) = rendered(&[config], vec![chain(&[], "https.443", false)]);
    let exact = line_of(&text, "-m str shop.example.com");
    let long = line_of(&text, "-m end .example.com");
    let short = line_of(&text, "-m end .com");
    let prefix = line_of(&text, "-m beg shop.");
    let any = line_of(&text, "str(c0v0) if !{ var(txn.vhost) -m found }");
    assert!(
        exact < long && long < short && short < prefix && prefix < any,
        "{text}"
    );
    // No route chosen: 404 before any action.
    assert!(line_of(&text, "return status 404") < line_of(&text, "return status 200"));
    assert!(text.contains("bind 0.0.0.0:443 accept-proxy"), "{text}");
    assert!(text.contains("option forwardfor"), "{text}");
    assert!(
        text.contains("http-request del-header proxy-connection"),
        "{text}"
    );
    assert!(
        text.contains("http-request set-header x-forwarded-proto https if { ssl_fc }"),
        "{text}"
    );
}

#[test]
fn routes_match_and_act_as_envoy_routes_do() {
    let config = rules(serde_json::json!({
        "name": "http.80",
        "virtualHosts": [{"name": "shop", "domains": ["shop.example.com"], "routes": [
            {"name": "api", "match": {"safeRegex": {"regex": "/api/v[2-9]/.*"},
                "headers": [{"name": ":method", "stringMatch": {"exact": "POST"}},
                            {"name": "x-canary", "presentMatch": true, "invertMatch": true}],
                "queryParameters": [{"name": "debug", "stringMatch": {"prefix": "1"}}]},
             "route": {"cluster": "api", "prefixRewrite": "/", "hostRewriteLiteral": "api.internal",
                       "timeout": "2s", "retryPolicy": {"retryOn": "5xx,connect-failure", "numRetries": 2}}},
            {"name": "split", "match": {"prefix": "/", "caseSensitive": false},
             "requestHeadersToRemove": ["x-debug"],
             "route": {"weightedClusters": {"clusters": [
                {"name": "v1", "weight": 90},
                {"name": "v2", "weight": 10, "requestHeadersToAdd": [{"header": {"key": "x-variant", "value": "v2"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}]}]}}}
        ]}]
    }))
    .unwrap();
    let (text, _) = rendered(&[config], vec![chain(&[], "http.80", false)]);
    for expected in [
        "{ path -m reg '^(?:/api/v[2-9]/.*)$' } { method -m str 'POST' } !{ req.hdr_cnt(x-canary) gt 0 } { url_param(debug) -m beg '1' }",
        // Matched by regex: the whole path is the matched prefix, as in Envoy.
        "http-request replace-path '^.*()' '/\\1' if { var(txn.route) -m str r0 }",
        "http-request set-header host 'api.internal' if { var(txn.route) -m str r0 }",
        "http-request set-var(txn.timeout) int(2000) if { var(txn.route) -m str r0 }",
        "http-request set-var(txn.pick) rand(100) if { var(txn.route) -m str r1 }",
        "http-request set-header x-variant 'v2' if { var(txn.route) -m str r1 } { var(txn.pick) -m int ge 90 } { var(txn.pick) -m int lt 100 }",
        "http-request del-header x-debug if { var(txn.route) -m str r1 }",
        // Clusters HAProxy does not have: 503, as Envoy's cluster-not-found.
        "use_backend meridian_no_cluster if { var(txn.route) -m str r1 } { var(txn.pick) -m int ge 0 } { var(txn.pick) -m int lt 90 }",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn tls_chains_become_crt_list_lines_and_sni_picks_the_routes() {
    let a = rules(serde_json::json!({"name": "https.a", "virtualHosts": [{"name": "a", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 201}}]}]})).unwrap();
    let b = rules(serde_json::json!({"name": "https.b", "virtualHosts": [{"name": "b", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 202}}]}]})).unwrap();
    let (text, lists) = rendered(
        &[a, b],
        vec![
            chain(&["a.example.com"], "https.a", true),
            chain(&["*.example.com"], "https.b", true),
        ],
    );
    let list = &lists["0.0.0.0_443.crtlist"];
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[1].ends_with("[alpn h2,http/1.1] a.example.com"),
        "{list}"
    );
    assert!(
        lines[2].ends_with("[alpn h2,http/1.1] *.example.com"),
        "{list}"
    );
    assert!(
        text.contains("ssl crt-list /etc/edge/0.0.0.0_443.crtlist"),
        "{text}"
    );
    assert!(
        line_of(&text, "ssl_fc_sni -i a.example.com")
            < line_of(&text, "ssl_fc_sni -i -m end .example.com")
    );
    assert!(text.contains("{ var(txn.chain) -m str c1 }"), "{text}");
}

#[test]
fn what_haproxy_cannot_express_is_refused_naming_the_field() {
    let refused = |route: serde_json::Value| {
        rules(serde_json::json!({"name": "http.80", "virtualHosts": [{"name": "v", "domains": ["*"], "routes": [route]}]}))
            .unwrap_err()
    };
    let error = refused(
        serde_json::json!({"match": {"prefix": "/"}, "route": {"cluster": "a",
        "regexRewrite": {"pattern": {"regex": "^/a/(.*)"}, "substitution": "/\\1"}}}),
    );
    assert!(
        error.contains("virtual_hosts[0].routes[0].route.regex_rewrite"),
        "{error}"
    );
    let error = refused(
        serde_json::json!({"match": {"prefix": "/"}, "route": {"cluster": "a"},
        "requestHeadersToAdd": [{"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}}]}),
    );
    assert!(
        error.contains("request_headers_to_add[0]") && error.contains("'%'"),
        "{error}"
    );
    let error = refused(
        serde_json::json!({"match": {"prefix": "/"}, "directResponse": {"status": 200,
        "body": {"inlineString": "it's"}}}),
    );
    assert!(error.contains("quote"), "{error}");
}

#[test]
fn routes_to_one_backend_must_agree_on_retries_and_hashing() {
    let route = |name: &str, retries: u32| {
        rules(serde_json::json!({"name": name, "virtualHosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "shared", "retryPolicy": {"retryOn": "5xx", "numRetries": retries}}}]}]}))
        .unwrap()
    };
    let (a, b, c) = (route("http.1", 2), route("http.2", 2), route("http.3", 3));
    assert_eq!(check_agreement(&b, [&a].into_iter()), Ok(()));
    let error = check_agreement(&c, [&a].into_iter())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("RouteConfiguration http.3") && error.contains("retry_policy"),
        "{error}"
    );
}
