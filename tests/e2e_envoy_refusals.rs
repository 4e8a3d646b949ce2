//! Meridian's validation against Envoy 1.40's own, for what would NACK a whole route
//! configuration: every regex and header edit validation refuses, Envoy refuses too (the check
//! never costs a user what Envoy would take), and the refusals it exists for are caught.

mod support;

use std::process::{Command, Stdio};

use meridian::core::validate::re2::refusal;

/// Whether Envoy accepts a route with `route` (a `Route` in JSON, `match` and action added).
fn envoy_accepts_route(dir: &std::path::Path, mut route: serde_json::Value) -> bool {
    if route.get("match").is_none() {
        route["match"] = serde_json::json!({"prefix": "/"});
    }
    route["direct_response"] = serde_json::json!({"status": 200});
    let config = serde_json::json!({
        "static_resources": {"listeners": [{
            "name": "l",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "t",
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]}
                }
            }]}]
        }]}
    });
    let path = dir.join("route.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Command::new(support::envoy_binary())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "critical",
            "-c",
        ])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run envoy")
        .success()
}

/// Whether Envoy accepts `pattern` as a route's `safe_regex` (`envoy --mode validate`).
fn envoy_accepts(dir: &std::path::Path, pattern: &str) -> bool {
    envoy_accepts_route(
        dir,
        serde_json::json!({"match": {"safe_regex": {"regex": pattern}}}),
    )
}

/// Meridian's field errors for an AccessPoint whose route edits headers as `headers` (YAML).
fn header_errors(headers: &str) -> Vec<String> {
    let yaml = format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  template:
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.test]
        gateways: [edge/public]
        http:
        - route: [{{destination: {{host: web}}}}]
          headers: {headers}
"#
    );
    let objects = meridian::core::manifest::parse_documents(&yaml, "shop").unwrap();
    let meridian::core::model::InputObject::AccessPoint(ap) = &objects[0] else {
        panic!("not an AccessPoint");
    };
    meridian::core::validate::validate_access_point(&ap.spec)
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn header_edits_validation_refuses_are_the_ones_envoy_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let add = |name: &str| serde_json::json!({"request_headers_to_add": [{"header": {"key": name, "value": "v"}}]});
    let remove = |name: &str| serde_json::json!({"response_headers_to_remove": [name]});
    for name in [":path", ":authority", "host", "Host"] {
        assert!(
            !envoy_accepts_route(dir.path(), add(name)),
            "Envoy sets {name}"
        );
        let errors = header_errors(&format!("{{request: {{set: {{\"{name}\": v}}}}}}"));
        assert!(
            errors.iter().any(|e| e.contains("cannot be changed")),
            "{name}: {errors:?}"
        );
    }
    for name in [":status", "host"] {
        assert!(
            !envoy_accepts_route(dir.path(), remove(name)),
            "Envoy removes {name}"
        );
        let errors = header_errors(&format!("{{response: {{remove: [\"{name}\"]}}}}"));
        assert!(
            errors.iter().any(|e| e.contains("cannot be changed")),
            "{name}: {errors:?}"
        );
    }
    assert!(!envoy_accepts_route(dir.path(), add("")));
    assert!(!header_errors("{request: {add: {\"\": v}}}").is_empty());
    let line_break = serde_json::json!({"request_headers_to_add": [{"header": {"key": "x-a", "value": "a\nb"}}]});
    assert!(!envoy_accepts_route(dir.path(), line_break));
    assert!(!header_errors("{request: {set: {x-a: \"a\\nb\"}}}").is_empty());
    // What both take.
    for name in ["x-request-id", "X-Upper", "x-with space"] {
        assert!(envoy_accepts_route(dir.path(), add(name)), "{name}");
        let errors = header_errors(&format!(
            "{{request: {{add: {{\"{name}\": v}}}}, response: {{remove: [\"{name}\"]}}}}"
        ));
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
}

#[test]
fn what_validation_refuses_envoy_refuses_and_common_regexes_pass_both() {
    let dir = tempfile::tempdir().unwrap();
    let refused = [
        "/(x{500}){100}",
        ".{0,1000}",
        "x{1000}",
        "/(x{10}){100}",
        "(abcdefghij){11}",
    ];
    for pattern in refused {
        assert!(
            refusal(pattern).is_some(),
            "validation should refuse {pattern}"
        );
        assert!(
            !envoy_accepts(dir.path(), pattern),
            "Envoy accepts {pattern}: validation must not refuse it"
        );
    }
    // Accepted by Envoy, but read as other characters than Rust (and the operator) read them.
    for pattern in ["[a-z&&[^aeiou]]", r"\<word\>", r"\b{start}x"] {
        assert!(envoy_accepts(dir.path(), pattern), "{pattern}");
        let why = refusal(pattern).unwrap_or_default();
        assert!(why.contains("literal characters"), "{pattern}: {why:?}");
    }
    let common = [
        "^/re/[0-9]+$",
        "/api/v[12]/.*",
        "/shop/(cart|checkout)/[a-z]+",
        "/users/[^/]+/orders/[0-9]{1,10}",
        "(?i)/static/.*",
        "x{50}",
    ];
    for pattern in common {
        assert_eq!(refusal(pattern), None, "validation refuses {pattern}");
        assert!(
            envoy_accepts(dir.path(), pattern),
            "Envoy refuses {pattern}"
        );
    }
}
