//! REST xDS end to end: a real Envoy 1.40 that polls Meridian (`meridian bootstrap --rest`)
//! routes, follows edits, hears `304 Not Modified` while nothing changes, outlives Meridian,
//! and is reported (and stops counting) when it stops polling. Plus the HTTP edge itself,
//! driven with plain HTTP/1.1 requests.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian::control_plane::admin::ops::pb::{ops_client::OpsClient, ProxyStatusRequest};
use meridian::control_plane::bootstrap::BootstrapOptions;
use support::shop::*;
use support::*;

const REFRESH: Duration = Duration::from_secs(1);

fn polling_envoy(f: &Fixture, node: &str) -> Envoy {
    Envoy::launch_with(
        f.path(),
        BootstrapOptions {
            rest: Some(REFRESH),
            ..bootstrap_options(node, "edge/public", f.xds_port)
        },
        None,
        // Its log, read by the test, written out promptly.
        &["--file-flush-interval-msec", "100"],
    )
}

/// `meridian_xds_rest_polls_total` summed over types, for one answer.
fn polls(metrics: &str, answer: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("meridian_xds_rest_polls_total{"))
        .filter(|l| l.contains(&format!("answer=\"{answer}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The one proxy of `/debug/syncz`.
async fn proxy(client: &reqwest::Client, admin: std::net::SocketAddr) -> serde_json::Value {
    admin_json(client, admin, "/debug/syncz").await["proxies"][0].clone()
}

fn all_synced(proxy: &serde_json::Value) -> bool {
    proxy["types"].as_array().is_some_and(|types| {
        types.len() >= 4
            && types
                .iter()
                .all(|t| t["state"] == "SYNCED" || t["type"] == "SDS")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_envoy_routes_follows_edits_hears_304s_and_outlives_meridian() {
    let f = Fixture::new().await;
    let client = client();
    let port = f.gateway_port;
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    let envoy = polling_envoy(&f, "gw-rest");
    eventually(Duration::from_secs(30), "a polling Envoy routes", || {
        routes_to(&client, port, "shop.example.test", "/a", "alpha")
    })
    .await;

    // It shows in `meridian status` as a polling proxy, in sync.
    let admin = meridian.admin_addr;
    eventually(Duration::from_secs(10), "the poller in sync", || async {
        all_synced(&proxy(&client, admin).await)
    })
    .await;
    let mut ops = OpsClient::connect(format!("http://127.0.0.1:{}", f.xds_port))
        .await
        .unwrap();
    let status = ops
        .proxy_status(ProxyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let polled = &status.proxies[0];
    assert_eq!(
        (
            polled.node_id.as_str(),
            polled.mode.as_str(),
            polled.refresh_delay_ms
        ),
        ("gw-rest", "rest", 1000)
    );
    assert!(polled.last_poll_ms_ago < 3000, "{polled:?}");
    let table = meridian::cli::render_status(&status);
    assert!(table.contains("polls every 1.0s, last poll"), "{table}");

    // While nothing changes, every poll is answered 304 and nothing is resent.
    let metrics = admin_text(&client, admin, "/metrics").await;
    let (changed_before, unchanged_before) =
        (polls(&metrics, "changed"), polls(&metrics, "not_modified"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let metrics = admin_text(&client, admin, "/metrics").await;
    let (changed_after, unchanged_after) =
        (polls(&metrics, "changed"), polls(&metrics, "not_modified"));
    eprintln!(
        "4 s of quiet: {} polls answered 304, {} answered with resources",
        unchanged_after - unchanged_before,
        changed_after - changed_before
    );
    assert_eq!(
        changed_after, changed_before,
        "config resent while nothing changed"
    );
    // LDS, CDS, RDS and two EDS subscriptions, each polling every 1–2 s.
    assert!(
        unchanged_after - unchanged_before >= 8,
        "{} 304s in 4 s",
        unchanged_after - unchanged_before
    );

    // An edit under load: followed within two refresh delays (Envoy's jitter) plus a second,
    // and no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, client) = (stop.clone(), failures.clone(), client.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(&client, port, "shop.example.test", "/a").await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    f.write("shop.yaml", &shop_manifest(port, "beta", ""));
    let took = eventually(
        Duration::from_secs(10),
        "the edit reaches the poller",
        || routes_to(&client, port, "shop.example.test", "/a", "beta"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    eprintln!("edit → polling Envoy: {took:?} (refresh delay {REFRESH:?})");
    assert!(
        took <= REFRESH * 2 + Duration::from_secs(1),
        "edit took {took:?}"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the edit"
    );

    // Meridian goes away: the poller keeps serving what it has.
    meridian.shutdown().await.unwrap();
    let down = Instant::now();
    while down.elapsed() < REFRESH * 3 {
        assert_eq!(
            get(&client, port, "shop.example.test", "/a").await.unwrap(),
            "beta"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An edit made meanwhile is picked up when Meridian is back.
    f.write("shop.yaml", &shop_manifest(port, "alpha", ""));
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    eventually(Duration::from_secs(10), "the poller resumes", || {
        routes_to(&client, port, "shop.example.test", "/a", "alpha")
    })
    .await;
    let admin = meridian.admin_addr;
    eventually(
        Duration::from_secs(10),
        "Ready from the poller's acknowledgements",
        || async {
            condition(&admin_json(&client, admin, "/debug/status").await, "Ready")
                == ("True".to_owned(), "Ready".to_owned())
        },
    )
    .await;

    // The Envoy stops: within the stale threshold (3 refresh delays) and a sweep it shows as
    // stopped, every type STALE, and its acknowledgements no longer count.
    drop(envoy);
    let stopped = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the poller shown stopped",
        || async {
            let p = proxy(&client, admin).await;
            p["polling"]["stopped"] == true
                && p["types"]
                    .as_array()
                    .is_some_and(|t| t.iter().all(|t| t["state"] != "SYNCED"))
        },
    )
    .await;
    let noticed = stopped.elapsed();
    assert!(noticed >= REFRESH * 2, "stopped after only {noticed:?}");
    eventually(
        Duration::from_secs(10),
        "Ready no longer claimed",
        || async {
            condition(&admin_json(&client, admin, "/debug/status").await, "Ready").0 != "True"
        },
    )
    .await;
    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_a_poller_does_not_take_is_reported_and_held_back() {
    let f = Fixture::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let client = client();
    let port = f.gateway_port;
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    let envoy = polling_envoy(&f, "gw-rest-nack");
    eventually(Duration::from_secs(30), "a polling Envoy routes", || {
        routes_to(&client, port, "shop.example.test", "/a", "alpha")
    })
    .await;

    // A second server on a port that is taken: Envoy cannot bind it and keeps its listeners.
    f.write(
        "shop.yaml",
        &with_server_on(&shop_manifest(port, "alpha", ""), taken_port),
    );
    let admin = meridian.admin_addr;
    eventually(Duration::from_secs(15), "the change held back", || async {
        let statuses = admin_json(&client, admin, "/debug/status").await;
        let (programmed, reason) = condition(&statuses, "Programmed");
        programmed == "False" && reason == "Rejected"
    })
    .await;
    let statuses = admin_json(&client, admin, "/debug/status")
        .await
        .to_string();
    assert!(statuses.contains("did not take version"), "{statuses}");
    let log = envoy.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("rejected") && l.contains(&taken_port.to_string())),
        "Envoy's own log says why:\n{log}"
    );
    // Held back, the poller is served what it had and is in sync again.
    eventually(
        Duration::from_secs(10),
        "the poller in sync on the held config",
        || async { all_synced(&proxy(&client, admin).await) },
    )
    .await;
    assert_eq!(
        get(&client, port, "shop.example.test", "/a").await.unwrap(),
        "alpha"
    );

    // Fixing the input moves it on.
    f.write("shop.yaml", &shop_manifest(port, "beta", ""));
    eventually(Duration::from_secs(10), "the fixed config applied", || {
        routes_to(&client, port, "shop.example.test", "/a", "beta")
    })
    .await;
    drop((envoy, taken));
    meridian.shutdown().await.unwrap();
}

/// POSTs `body` to the REST path for `kind` over HTTP/1.1; (status, body).
async fn post(client: &reqwest::Client, xds_port: u16, path: &str, body: &str) -> (u16, String) {
    let response = client
        .post(format!("http://127.0.0.1:{xds_port}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_edge_answers_json_304s_and_clear_refusals() {
    let f = Fixture::new().await;
    let client = client();
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    let node = r#""node": {"id": "curl-1", "metadata": {"meridian.dev/gateway": "edge/public"}}"#;

    let lds = format!(
        r#"{{{node}, "typeUrl": "type.googleapis.com/envoy.config.listener.v3.Listener"}}"#
    );
    let (status, body) = post(&client, f.xds_port, "/v3/discovery:listeners", &lds).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let version = answer["version_info"].as_str().unwrap().to_owned();
    assert_eq!(
        answer["resources"][0]["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(
        answer["resources"][0]["name"],
        format!("127.0.0.1_{}", f.gateway_port)
    );
    // Envoy's spelling of the same request, holding that version: 304, no body.
    let held = format!(r#"{{{node}, "version_info": "{version}"}}"#);
    let (status, body) = post(&client, f.xds_port, "/v3/discovery:listeners", &held).await;
    assert_eq!((status, body.as_str()), (304, ""));

    // Routes by name only: the wildcard means nothing for RDS.
    let rds = format!(
        r#"{{{node}, "resource_names": ["http.{}"]}}"#,
        f.gateway_port
    );
    let (status, body) = post(&client, f.xds_port, "/v3/discovery:routes", &rds).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("shop.example.test"), "{body}");
    let (_, body) = post(
        &client,
        f.xds_port,
        "/v3/discovery:routes",
        &format!("{{{node}}}"),
    )
    .await;
    let empty: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(empty["resources"], serde_json::json!([]));

    // Refusals name what is wrong.
    let refused = [
        ("/v3/discovery:runtime", lds.clone(), 404, "not a REST xDS endpoint"),
        ("/v3/discovery:listeners", "{\"node\": 5}".to_owned(), 400, "DiscoveryRequest"),
        ("/v3/discovery:listeners", "{\"node\": {\"id\": \"x\"}}".to_owned(), 400, "meridian.dev/gateway"),
        ("/v3/discovery:clusters", lds.clone(), 400, "is not what /v3/discovery:clusters serves"),
        (
            "/v3/discovery:listeners",
            r#"{"node": {"id": "x", "metadata": {"meridian.dev/gateway": "edge/public", "meridian.dev/refresh-delay": "soon"}}}"#.to_owned(),
            400,
            "meridian.dev/refresh-delay",
        ),
    ];
    for (path, body, want, says) in refused {
        let (status, text) = post(&client, f.xds_port, path, &body).await;
        assert_eq!(status, want, "{path} {body}: {text}");
        assert!(text.contains(says), "{path} {body}: {text}");
    }
    let get = client
        .get(format!(
            "http://127.0.0.1:{}/v3/discovery:listeners",
            f.xds_port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let huge = format!(
        r#"{{{node}, "resource_names": ["{}"]}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, _) = post(&client, f.xds_port, "/v3/discovery:routes", &huge).await;
    assert_eq!(status, 413);

    // gRPC on the same port still works (the ops API answers).
    let mut ops = OpsClient::connect(format!("http://127.0.0.1:{}", f.xds_port))
        .await
        .unwrap();
    let status = ops
        .proxy_status(ProxyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status
        .proxies
        .iter()
        .any(|p| p.node_id == "curl-1" && p.mode == "rest"));
    meridian.shutdown().await.unwrap();
}
