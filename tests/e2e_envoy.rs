//! End to end with a real Envoy 1.40: standalone Meridian serving SotW and delta ADS.
//!
//! Each test starts its own backends, Meridian (in-process) and Envoy on loopback ports.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::shop::*;
use support::*;

async fn full_scenario(delta: bool) {
    let f = Fixture::new().await;
    let client = client();
    let node = if delta { "gw-delta" } else { "gw-sotw" };

    // Envoy starts first and waits for a control plane that is not there yet.
    let envoy = Envoy::start(f.path(), node, "edge/public", f.xds_port, delta);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    let port = f.gateway_port;
    eventually(
        Duration::from_secs(30),
        "Envoy converges once Meridian is up",
        || routes_to(&client, port, "shop.example.test", "/a", "alpha"),
    )
    .await;

    // The ops API (what `meridian status` / `config-dump` use) reports the proxy in sync.
    let server = format!("http://127.0.0.1:{}", f.xds_port);
    let mut ops = meridian::control_plane::admin::ops::pb::ops_client::OpsClient::connect(server)
        .await
        .unwrap();
    let mut table = String::new();
    for _ in 0..100 {
        let status = ops
            .proxy_status(meridian::control_plane::admin::ops::pb::ProxyStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        table = meridian::cli::render_status(&status);
        if table
            .lines()
            .nth(1)
            .is_some_and(|l| l.matches("SYNCED").count() == 4)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        table.contains(node) && table.lines().nth(1).unwrap().matches("SYNCED").count() == 4,
        "{table}"
    );
    let dump = ops
        .config_dump(meridian::control_plane::admin::ops::pb::ConfigDumpRequest {
            node_id: node.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let dump: serde_json::Value = serde_json::from_str(&dump.json).unwrap();
    assert!(
        dump["LDS"][format!("127.0.0.1_{port}")].is_object(),
        "{dump}"
    );
    assert!(
        dump["CDS"]["outbound|80||alpha.shop.svc.cluster.local"].is_object(),
        "{dump}"
    );

    // Host and path routing.
    assert_eq!(
        get(&client, port, "shop.example.test", "/a/x")
            .await
            .unwrap(),
        "alpha"
    );
    assert_eq!(
        get(&client, port, "shop.example.test", "/other")
            .await
            .unwrap(),
        "beta"
    );
    assert!(get(&client, port, "nobody.example.test", "/")
        .await
        .unwrap_err()
        .starts_with("404"));

    // A 90/10 split over 1,000 requests lands within ±3 points.
    let mut alpha = 0;
    for _ in 0..1000 {
        if get(&client, port, "split.example.test", "/").await.unwrap() == "alpha" {
            alpha += 1;
        }
    }
    let share = alpha as f64 / 10.0;
    assert!(
        (share - 90.0).abs() <= 3.0,
        "alpha share {share}% (want 90±3)"
    );

    // A live edit under a concurrent request loop: no failed request, effect within 1 s.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, sent, client) =
            (stop.clone(), failures.clone(), sent.clone(), client.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(&client, port, "shop.example.test", "/a").await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edited = Instant::now();
    f.write("shop.yaml", &shop_manifest(port, "beta", ""));
    let took = eventually(Duration::from_secs(5), "edit reaches Envoy", || {
        routes_to(&client, port, "shop.example.test", "/a", "beta")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    eprintln!(
        "edit → Envoy behaviour: {:?} ({} requests in the loop)",
        edited.elapsed().min(took),
        sent.load(Ordering::Relaxed)
    );
    assert!(took < Duration::from_secs(1), "edit took {took:?}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the change"
    );

    // A broken manifest changes nothing and is reported with its file name.
    f.write("shop.yaml", "apiVersion: meridian.dev/v1alpha1\nkind: AccessPoint\nmetadata: {name: shop, namespace: shop}\nspec: [broken\n");
    let admin = meridian.admin_addr;
    eventually(Duration::from_secs(5), "problem reported", || async {
        let problems = admin_json(&client, admin, "/debug/problems").await;
        problems.as_array().is_some_and(|p| {
            p.iter().any(|p| {
                p["source"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("shop.yaml")
            })
        })
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            get(&client, port, "shop.example.test", "/a").await.unwrap(),
            "beta"
        );
    }

    // Meridian dies: Envoy keeps routing with its last config.
    meridian.shutdown().await.unwrap();
    for _ in 0..20 {
        assert_eq!(
            get(&client, port, "shop.example.test", "/a").await.unwrap(),
            "beta"
        );
    }
    // A change made while Meridian is down is picked up when it returns.
    f.write("shop.yaml", &shop_manifest(port, "alpha", ""));
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    eventually(
        Duration::from_secs(30),
        "Envoy reconnects and converges",
        || routes_to(&client, port, "shop.example.test", "/a", "alpha"),
    )
    .await;
    let status = admin_json(&client, meridian.admin_addr, "/debug/syncz").await;
    let proxy = &status["proxies"][0];
    assert_eq!(proxy["node_id"], node);
    assert_eq!(proxy["mode"], if delta { "delta" } else { "sotw" });
    // Standalone mode shows the same conditions Kubernetes mode writes, from Envoy's ACKs.
    let admin = meridian.admin_addr;
    eventually(
        Duration::from_secs(10),
        "Ready in /debug/status",
        || async {
            condition(&admin_json(&client, admin, "/debug/status").await, "Ready")
                == ("True".to_owned(), "Ready".to_owned())
        },
    )
    .await;
    meridian.shutdown().await.unwrap();
    drop(envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_routing_edits_failures_and_restarts() {
    full_scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_routing_edits_failures_and_restarts() {
    full_scenario(true).await;
}

/// `manifest` with a second gateway server on `port`: a listener Envoy cannot bind while
/// another socket holds the port, so it NACKs the listeners (validation cannot know that).
async fn nack_scenario(delta: bool) {
    let f = Fixture::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let client = client();
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    let envoy = Envoy::start(f.path(), "gw-nack", "edge/public", f.xds_port, delta);
    let port = f.gateway_port;
    eventually(Duration::from_secs(30), "Envoy converges", || {
        routes_to(&client, port, "shop.example.test", "/a", "alpha")
    })
    .await;

    f.write(
        "shop.yaml",
        &with_server_on(&shop_manifest(port, "alpha", ""), taken_port),
    );
    let admin = meridian.admin_addr;
    // The quarantine holds the rejected change back: Envoy is sent the previous version of
    // the AccessPoint and ACKs it; the status says why.
    eventually(Duration::from_secs(10), "the change held back", || async {
        let statuses = admin_json(&client, admin, "/debug/status").await;
        let (programmed, reason) = condition(&statuses, "Programmed");
        programmed == "False"
            && reason == "Rejected"
            && statuses.to_string().contains("keeps serving")
    })
    .await;
    let syncz = admin_json(&client, admin, "/debug/syncz").await;
    let lds = syncz["proxies"][0]["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "LDS")
        .unwrap()
        .clone();
    let message = lds["last_nack"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Envoy's reason reaches us.
    assert!(
        message.contains(&taken_port.to_string()) && message.contains("bind"),
        "NACK message: {message}"
    );

    // The rejected version is not resent, in a loop or otherwise: once held, nothing moves.
    let pushes = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with("meridian_xds_pushes_total{type=\"LDS\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    eventually(
        Duration::from_secs(10),
        "Envoy synced on the held version",
        || synced(&client, admin),
    )
    .await;
    let before = pushes(&admin_text(&client, admin, "/metrics").await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = admin_text(&client, admin, "/metrics").await;
    assert_eq!(pushes(&metrics), before, "config was resent");
    assert!(
        metrics.contains("meridian_xds_nacks_total{type=\"LDS\"} 1"),
        "{metrics}"
    );
    // Envoy keeps the listener it had.
    assert_eq!(
        get(&client, port, "shop.example.test", "/a").await.unwrap(),
        "alpha"
    );

    // Fixing the input clears the NACK.
    f.write("shop.yaml", &shop_manifest(port, "beta", ""));
    eventually(Duration::from_secs(5), "fixed config applied", || {
        routes_to(&client, port, "shop.example.test", "/a", "beta")
    })
    .await;
    drop((envoy, taken));
    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_nack_is_reported_and_not_resent() {
    nack_scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_nack_is_reported_and_not_resent() {
    nack_scenario(true).await;
}

/// Versions of `shop.yaml` that parse but fail validation: a regex that does not compile, and a
/// route after the catch-all.
fn rejected_versions(port: u16) -> [(&'static str, String); 2] {
    let catch_all = "        - route: [{destination: {host: beta}}]\n";
    [
        (
            "bad regex",
            shop_manifest(
                port,
                "beta",
                "        - match: [{uri: {regex: \"^/re/[0-9+$\"}}]\n          route: [{destination: {host: alpha}}]\n",
            ),
        ),
        (
            "route after a catch-all",
            shop_manifest(port, "beta", "").replace(
                catch_all,
                &format!("{catch_all}        - match: [{{uri: {{prefix: /late}}}}]\n          route: [{{destination: {{host: alpha}}}}]\n"),
            ),
        ),
    ]
}

/// Requests `/a` until `until` passes; returns how many failed or did not reach `want`.
async fn misses_during(client: &reqwest::Client, port: u16, want: &str, until: Duration) -> usize {
    let start = Instant::now();
    let mut misses = 0;
    while start.elapsed() < until {
        if !routes_to(client, port, "shop.example.test", "/a", want).await {
            misses += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    misses
}

/// Every type in /debug/syncz SYNCED for the one proxy.
async fn synced(client: &reqwest::Client, admin: std::net::SocketAddr) -> bool {
    let syncz = admin_json(client, admin, "/debug/syncz").await;
    syncz["proxies"][0]["types"]
        .as_array()
        .is_some_and(|types| types.len() >= 4 && types.iter().all(|t| t["state"] == "SYNCED"))
}

async fn restart_with_rejected_manifest(delta: bool) {
    let f = Fixture::new().await;
    let client = client();
    let port = f.gateway_port;
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    let envoy = Envoy::start(f.path(), "gw-restart", "edge/public", f.xds_port, delta);
    f.write("shop.yaml", &shop_manifest(port, "beta", ""));
    eventually(Duration::from_secs(30), "Envoy converges", || {
        routes_to(&client, port, "shop.example.test", "/a", "beta")
    })
    .await;
    let mut meridian = Some(meridian);
    for (what, text) in rejected_versions(port) {
        // Stopped, the file broken meanwhile, started again on the same state dir.
        meridian.take().unwrap().shutdown().await.unwrap();
        f.write("shop.yaml", &text);
        let restarted = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
        let admin = restarted.admin_addr;
        eventually(Duration::from_secs(30), "Envoy back in sync", || {
            synced(&client, admin)
        })
        .await;
        let problems = admin_json(&client, admin, "/debug/problems").await;
        assert!(
            problems.to_string().contains("shop.yaml"),
            "{what}: {problems}"
        );
        let misses = misses_during(&client, port, "beta", Duration::from_secs(2)).await;
        assert_eq!(misses, 0, "{what}: requests failed after the restart");
        meridian = Some(restarted);
    }
    meridian.unwrap().shutdown().await.unwrap();
    drop(envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_restart_with_a_rejected_manifest_serves_the_last_good_config() {
    restart_with_rejected_manifest(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_restart_with_a_rejected_manifest_serves_the_last_good_config() {
    restart_with_rejected_manifest(true).await;
}

/// `connect_timeout` of the alpha cluster Envoy has active (a warming one is not active).
async fn active_alpha_timeout(client: &reqwest::Client, envoy: &Envoy) -> Option<String> {
    let url = format!(
        "http://127.0.0.1:{}/config_dump?resource=dynamic_active_clusters",
        envoy.admin_port
    );
    let dump: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    dump["configs"].as_array()?.iter().find_map(|c| {
        let cluster = &c["cluster"];
        (cluster["name"] == "outbound|80||alpha.shop.svc.cluster.local")
            .then(|| cluster["connect_timeout"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// A DestinationRule edit changes a cluster; Envoy warms it until its (unchanged) endpoints
/// arrive, so Meridian sends them again instead of letting Envoy wait out its 15 s
/// initial-fetch timeout.
async fn destination_rule_edit(delta: bool) {
    let f = Fixture::new().await;
    let client = client();
    let port = f.gateway_port;
    let with_timeout = |timeout: &str| {
        shop_manifest(port, "alpha", "")
            + &format!("    destinationRules:\n    - metadata: {{name: alpha}}\n      spec: {{host: alpha, trafficPolicy: {{connectionPool: {{tcp: {{connectTimeout: {timeout}}}}}}}}}\n")
    };
    f.write("shop.yaml", &with_timeout("1s"));
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    let envoy = Envoy::start(f.path(), "gw-warming", "edge/public", f.xds_port, delta);
    eventually(Duration::from_secs(30), "Envoy converges", || async {
        active_alpha_timeout(&client, &envoy).await.as_deref() == Some("1s")
    })
    .await;
    for timeout in ["2s", "3s"] {
        f.write("shop.yaml", &with_timeout(timeout));
        let took = eventually(
            Duration::from_secs(20),
            "the edited cluster is active",
            || async { active_alpha_timeout(&client, &envoy).await.as_deref() == Some(timeout) },
        )
        .await;
        eprintln!("DestinationRule edit → active in Envoy: {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "took {took:?}: the cluster waited to warm"
        );
        assert!(routes_to(&client, port, "shop.example.test", "/a", "alpha").await);
    }
    meridian.shutdown().await.unwrap();
    drop(envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_destination_rule_edit_reaches_envoy_without_waiting_to_warm() {
    destination_rule_edit(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_destination_rule_edit_reaches_envoy_without_waiting_to_warm() {
    destination_rule_edit(true).await;
}

/// Editors and scripts that rewrite a file in place leave it empty or half-written for a
/// moment; what the file served keeps serving meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_rewritten_in_place_withdraw_nothing_while_half_written() {
    use std::io::Write;
    let f = Fixture::new().await;
    let client = client();
    let port = f.gateway_port;
    let meridian = start_meridian(&f.config_dir(), &f.state_dir(), f.xds_port).await;
    let envoy = Envoy::start(f.path(), "gw-in-place", "edge/public", f.xds_port, false);
    eventually(Duration::from_secs(30), "Envoy converges", || {
        routes_to(&client, port, "shop.example.test", "/a", "alpha")
    })
    .await;
    let text = shop_manifest(port, "alpha", "");
    let path = f.config_dir().join("shop.yaml");
    let writer = tokio::task::spawn_blocking(move || {
        for _ in 0..5 {
            // Truncate, then write in two halves with a pause between (same content).
            let mut file = std::fs::File::create(&path).unwrap();
            std::thread::sleep(Duration::from_millis(150));
            file.write_all(&text.as_bytes()[..text.len() / 2]).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(150));
            file.write_all(&text.as_bytes()[text.len() / 2..]).unwrap();
            drop(file);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let misses = misses_during(&client, port, "alpha", Duration::from_millis(3200)).await;
    writer.await.unwrap();
    assert_eq!(misses, 0, "requests failed while the file was half-written");
    let problems = admin_json(&client, meridian.admin_addr, "/debug/problems").await;
    assert_eq!(problems, serde_json::json!([]));
    meridian.shutdown().await.unwrap();
    drop(envoy);
}
