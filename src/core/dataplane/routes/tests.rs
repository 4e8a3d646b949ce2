use super::compile::re2_substitution;
use super::*;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action as EnvoyAction;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{self, PolicySpecifier};
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{DirectResponseAction, WeightedCluster};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, Route as EnvoyRoute, RouteAction, RouteMatch,
    VirtualHost as EnvoyVirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

fn forward_to(cluster: &str) -> Option<EnvoyAction> {
    Some(EnvoyAction::Route(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    }))
}

fn route_with(path: PathSpecifier, cluster: &str) -> EnvoyRoute {
    EnvoyRoute {
        name: cluster.to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        action: forward_to(cluster),
        ..Default::default()
    }
}

fn host(domains: &[&str], routes: Vec<EnvoyRoute>) -> EnvoyVirtualHost {
    EnvoyVirtualHost {
        name: domains[0].to_owned(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

/// The table as the proxy compiles it: from the encoding Meridian sends.
fn table(hosts: Vec<EnvoyVirtualHost>) -> RouteTable {
    let config = RouteConfiguration {
        name: "http.80".to_owned(),
        virtual_hosts: hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    };
    RouteTable::compile_encoded(&config.encode_to_vec()).unwrap()
}

/// Why `config` is refused, the same whether it is compiled decoded or from its encoding.
fn refused(config: RouteConfiguration) -> CompileError {
    let encoded = match RouteTable::compile_encoded(&config.encode_to_vec()) {
        Err(EncodedRoutesError::Refused(error)) => error,
        other => panic!("not refused: {other:?}"),
    };
    let decoded = RouteTable::compile(config).unwrap_err();
    assert_eq!(encoded, decoded);
    decoded
}

/// The route name (its cluster, in these tests) a request takes.
fn routed(
    table: &RouteTable,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let head = RequestHead {
        method: "GET",
        authority,
        path,
        headers: &map,
    };
    table.route(&head).map(|r| r.name.clone())
}

fn prefix(p: &str) -> PathSpecifier {
    PathSpecifier::Prefix(p.to_owned())
}

#[test]
fn hosts_are_found_exact_then_longest_suffix_then_prefix_then_any() {
    let t = table(vec![
        host(&["*"], vec![route_with(prefix("/"), "any")]),
        host(&["*.example.com"], vec![route_with(prefix("/"), "suffix")]),
        host(
            &["*.shop.example.com"],
            vec![route_with(prefix("/"), "longer-suffix")],
        ),
        host(&["www.*"], vec![route_with(prefix("/"), "prefix")]),
        host(
            &["shop.example.com"],
            vec![route_with(prefix("/"), "exact")],
        ),
    ]);
    assert_eq!(
        routed(&t, "Shop.Example.com:8080", "/", &[]).as_deref(),
        Some("exact")
    );
    assert_eq!(
        routed(&t, "a.shop.example.com", "/", &[]).as_deref(),
        Some("longer-suffix")
    );
    assert_eq!(
        routed(&t, "a.example.com", "/", &[]).as_deref(),
        Some("suffix")
    );
    assert_eq!(
        routed(&t, "www.other.org", "/", &[]).as_deref(),
        Some("prefix")
    );
    assert_eq!(routed(&t, "other.org", "/", &[]).as_deref(), Some("any"));
    // A wildcard never matches the bare suffix.
    let t = table(vec![host(
        &["*.example.com"],
        vec![route_with(prefix("/"), "s")],
    )]);
    assert_eq!(routed(&t, "example.com", "/", &[]), None);
}

#[test]
fn paths_match_by_prefix_with_query_and_exactly_or_by_regex_without() {
    let t = table(vec![host(
        &["*"],
        vec![
            route_with(PathSpecifier::Path("/exact".into()), "exact"),
            route_with(
                PathSpecifier::SafeRegex(RegexMatcher {
                    regex: "/re/[0-9]+".into(),
                    ..Default::default()
                }),
                "regex",
            ),
            route_with(prefix("/p"), "prefix"),
        ],
    )]);
    assert_eq!(routed(&t, "h", "/exact?x=1", &[]).as_deref(), Some("exact"));
    assert_eq!(routed(&t, "h", "/exact/more", &[]), None);
    assert_eq!(routed(&t, "h", "/re/42?q", &[]).as_deref(), Some("regex"));
    assert_eq!(routed(&t, "h", "/re/42x", &[]), None);
    assert_eq!(routed(&t, "h", "/prefix/x", &[]).as_deref(), Some("prefix"));
}

#[test]
fn case_insensitive_routes_and_header_and_query_matchers() {
    let mut insensitive = route_with(prefix("/API"), "api");
    insensitive.r#match.as_mut().unwrap().case_sensitive = Some(BoolValue { value: false });
    let mut canary = route_with(prefix("/"), "canary");
    let m = canary.r#match.as_mut().unwrap();
    m.headers.push(HeaderMatcher {
        name: "x-canary".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact("yes".into())),
            ..Default::default()
        })),
        ..Default::default()
    });
    m.query_parameters.push(QueryParameterMatcher {
        name: "debug".into(),
        query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(MatchPattern::Prefix("1".into())),
                ..Default::default()
            },
        )),
    });
    let mut not_get = route_with(prefix("/"), "not-get");
    not_get
        .r#match
        .as_mut()
        .unwrap()
        .headers
        .push(HeaderMatcher {
            name: ":method".into(),
            invert_match: true,
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("GET".into())),
                ..Default::default()
            })),
            ..Default::default()
        });
    let t = table(vec![host(
        &["*"],
        vec![
            insensitive,
            canary,
            not_get,
            route_with(prefix("/"), "default"),
        ],
    )]);
    assert_eq!(routed(&t, "h", "/api/x", &[]).as_deref(), Some("api"));
    assert_eq!(
        routed(&t, "h", "/?debug=10", &[("x-canary", "yes")]).as_deref(),
        Some("canary")
    );
    assert_eq!(
        routed(&t, "h", "/?debug=2", &[("x-canary", "yes")]).as_deref(),
        Some("default")
    );
    assert_eq!(
        routed(&t, "h", "/?debug=1", &[]).as_deref(),
        Some("default")
    );
}

#[test]
fn weights_split_by_the_draw_and_rewrites_apply() {
    let weighted = |name: &str, weight: u32| ClusterWeight {
        name: name.to_owned(),
        weight: Some(UInt32Value { value: weight }),
        ..Default::default()
    };
    let route = EnvoyRoute {
        name: "split".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(prefix("/old")),
            ..Default::default()
        }),
        action: Some(EnvoyAction::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: vec![weighted("a", 90), weighted("b", 10)],
                ..Default::default()
            })),
            prefix_rewrite: "/new".into(),
            hash_policy: vec![HashPolicy {
                policy_specifier: Some(PolicySpecifier::Header(hash_policy::Header {
                    header_name: "X-User".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    let t = table(vec![host(&["*"], vec![route])]);
    let map = http::HeaderMap::new();
    let head = RequestHead {
        method: "GET",
        authority: "h",
        path: "/old/x?y",
        headers: &map,
    };
    let route = t.route(&head).unwrap();
    let Action::Forward(forward) = &route.action else {
        panic!()
    };
    let picks: Vec<&str> = (0..100)
        .map(|d| forward.target(d).cluster.as_str())
        .collect();
    assert_eq!(picks.iter().filter(|c| **c == "a").count(), 90);
    assert_eq!(
        forward.rewrite_path(route, "/old/x?y").as_deref(),
        Some("/new/x?y")
    );
    // The hash policy's header name is matched without regard to case.
    let mut users = http::HeaderMap::new();
    users.insert("x-user", "ann".parse().unwrap());
    let client = &"127.0.0.1";
    let with_user = RequestHead {
        headers: &users,
        ..head
    };
    assert_eq!(
        forward.request_hash(&with_user, client),
        Some(xxhash_rust::xxh64::xxh64(b"ann", 0))
    );
    assert_eq!(forward.request_hash(&head, client), None);
}

#[test]
fn redirects_keep_what_they_do_not_replace() {
    let redirect = Redirect {
        scheme: Some("https".into()),
        host: None,
        port: None,
        path: Some("/moved".into()),
        strip_query: false,
        status: 301,
    };
    assert_eq!(
        redirect.location("http", "shop.test:8080", "/a?x=1"),
        "https://shop.test:8080/moved?x=1"
    );
    let host_only = Redirect {
        scheme: None,
        host: Some("new.test".into()),
        port: None,
        path: None,
        strip_query: true,
        status: 302,
    };
    assert_eq!(
        host_only.location("http", "shop.test:8080", "/a?x=1"),
        "http://new.test/a"
    );
}

#[test]
fn what_it_cannot_honour_is_refused_with_the_field() {
    let mut route = route_with(prefix("/"), "c");
    route.action = Some(EnvoyAction::Route(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
        idle_timeout: Some(Default::default()),
        ..Default::default()
    }));
    let error = refused(RouteConfiguration {
        name: "http.80".into(),
        virtual_hosts: vec![host(&["*"], vec![route])],
        ..Default::default()
    });
    assert_eq!(error.field, "virtual_hosts[0].routes[0].route");
    assert!(error.message.contains("idleTimeout"), "{error}");

    let direct = EnvoyRoute {
        r#match: Some(RouteMatch {
            path_specifier: Some(prefix("/")),
            ..Default::default()
        }),
        action: Some(EnvoyAction::DirectResponse(DirectResponseAction {
            status: 700,
            body: None,
            ..Default::default()
        })),
        ..Default::default()
    };
    let error = refused(RouteConfiguration {
        virtual_hosts: vec![host(&["*"], vec![direct])],
        ..Default::default()
    });
    assert!(error.field.ends_with("direct_response.status"), "{error}");
}

#[test]
fn re2_substitutions_become_regex_crate_ones() {
    assert_eq!(re2_substitution(r"/v\1/\\x$"), "/v${1}/\\x$$");
}

#[test]
fn a_large_table_is_compiled_and_freed_with_a_pause_between_virtual_hosts() {
    let hosts: Vec<_> = (0..5)
        .map(|i| {
            let domain = format!("h{i}.example.test");
            host(
                &[&domain],
                vec![route_with(PathSpecifier::Prefix("/".into()), &domain)],
            )
        })
        .collect();
    let config = RouteConfiguration {
        name: "http.80".to_owned(),
        virtual_hosts: hosts,
        ..Default::default()
    };
    let mut pauses = 0;
    let table =
        RouteTable::compile_encoded_reusing(&config.encode_to_vec(), |_| None, || pauses += 1)
            .expect("compiles");
    assert_eq!(pauses, 5);
    assert_eq!(
        routed(&table, "h3.example.test", "/x", &[]).as_deref(),
        Some("h3.example.test")
    );
    let mut pauses = 0;
    table.free_pausing(|| pauses += 1);
    assert_eq!(pauses, 5);
}

#[test]
fn a_virtual_host_unchanged_since_the_previous_version_is_reused_not_compiled() {
    let named = |name: &str, second: &str, third_domain: &str| {
        RouteConfiguration {
            name: name.to_owned(),
            virtual_hosts: vec![
                host(
                    &["a.test"],
                    vec![route_with(PathSpecifier::Prefix("/".into()), "a")],
                ),
                host(
                    &["b.test"],
                    vec![route_with(PathSpecifier::Prefix("/".into()), second)],
                ),
                host(
                    &[third_domain],
                    vec![route_with(PathSpecifier::Prefix("/".into()), "c")],
                ),
            ],
            ..Default::default()
        }
        .encode_to_vec()
    };
    let config = |second: &str, third_domain: &str| named("http.80", second, third_domain);
    let first = Arc::new(RouteTable::compile_encoded(&config("b", "c.test")).expect("compiles"));
    let previous = |name: &str| (name == "http.80").then(|| first.clone());
    let second = RouteTable::compile_encoded_reusing(&config("b2", "*.c.test"), previous, || {})
        .expect("compiles");
    assert!(
        Arc::ptr_eq(&first.hosts[0], &second.hosts[0]),
        "a.test was reused"
    );
    assert!(
        !Arc::ptr_eq(&first.hosts[1], &second.hosts[1]),
        "b.test changed"
    );
    assert!(
        !Arc::ptr_eq(&first.hosts[2], &second.hosts[2]),
        "the third host's domain changed"
    );
    assert_eq!(routed(&second, "a.test", "/", &[]).as_deref(), Some("a"));
    assert_eq!(routed(&second, "b.test", "/", &[]).as_deref(), Some("b2"));
    assert_eq!(routed(&second, "x.c.test", "/", &[]).as_deref(), Some("c"));
    assert_eq!(routed(&second, "c.test", "/", &[]), None);
    // The previous version is asked for by the configuration's own name: another
    // configuration's hosts are never shared, even byte for byte the same.
    let previous = |name: &str| (name == "http.80").then(|| first.clone());
    let other =
        RouteTable::compile_encoded_reusing(&named("http.81", "b", "c.test"), previous, || {})
            .expect("compiles");
    assert!(!Arc::ptr_eq(&first.hosts[0], &other.hosts[0]));
}

#[test]
fn a_reused_virtual_host_still_conflicts_with_a_new_one_on_its_domain() {
    let one = |hosts: Vec<EnvoyVirtualHost>| {
        RouteConfiguration {
            name: "http.80".to_owned(),
            virtual_hosts: hosts,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let a = host(
        &["a.test"],
        vec![route_with(PathSpecifier::Prefix("/".into()), "a")],
    );
    let first = Arc::new(RouteTable::compile_encoded(&one(vec![a.clone()])).expect("compiles"));
    let clash = host(
        &["A.test"],
        vec![route_with(PathSpecifier::Prefix("/".into()), "x")],
    );
    let error =
        RouteTable::compile_encoded_reusing(&one(vec![a, clash]), |_| Some(first.clone()), || {})
            .expect_err("a.test is in two virtual hosts");
    assert!(
        error.to_string().contains("virtual_hosts[1].domains"),
        "{error}"
    );
}
