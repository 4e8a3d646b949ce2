//! Meridian's RE2 check against Envoy's own: every regex validation refuses, Envoy 1.40
//! refuses too (the check never costs a user a regex Envoy would take), and the refusals it
//! exists for are caught.

mod support;

use std::process::{Command, Stdio};

use meridian::core::validate::re2::refusal;

/// Whether Envoy accepts `pattern` as a route's `safe_regex` (`envoy --mode validate`).
fn envoy_accepts(dir: &std::path::Path, pattern: &str) -> bool {
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
                    "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{
                        "match": {"safe_regex": {"regex": pattern}},
                        "direct_response": {"status": 200}
                    }]}]}
                }
            }]}]
        }]}
    });
    let path = dir.join("re2.json");
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
