//! `meridian proxy` end to end, fed by a real Meridian: changes and control-plane restarts
//! under load fail no request, and what the proxy cannot honour is NACKed with the resource and
//! field while the rest keeps serving (routing itself is `tests/conformance.rs`).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian::control_plane::bootstrap::BootstrapOptions;
use support::*;

fn shop(port: u16, b_backend: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: public, namespace: edge}}
      spec:
        servers:
        - port: {{number: {port}, protocol: HTTP}}
          bind: 127.0.0.1
          hosts: ["*/*.example.test"]
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.test]
        gateways: [edge/public]
        http:
        - match: [{{uri: {{prefix: /a}}}}]
          route: [{{destination: {{host: alpha}}}}]
        - match: [{{uri: {{prefix: /b}}}}]
          route: [{{destination: {{host: {b_backend}}}}}]
{extra}"#
    )
}

const CATALOG: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: catalog, namespace: shop}
spec:
  template:
    virtualServices:
    - metadata: {name: catalog}
      spec:
        hosts: [catalog.example.test]
        gateways: [edge/public]
        http: [{route: [{destination: {host: beta}}]}]
"#;

fn write(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

struct Setup {
    _alpha: Backend,
    _beta: Backend,
    dir: tempfile::TempDir,
    port: u16,
    xds_port: u16,
}

impl Setup {
    async fn new() -> Setup {
        let alpha = Backend::start("alpha").await;
        let beta = Backend::start("beta").await;
        let dir = tempfile::tempdir().unwrap();
        for sub in ["config", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let setup = Setup {
            port: free_port(),
            xds_port: free_port(),
            _alpha: alpha,
            _beta: beta,
            dir,
        };
        let backends = loopback_service("alpha", setup._alpha.port)
            + &loopback_service("beta", setup._beta.port);
        write(&setup.config(), "backends.yaml", &backends);
        write(&setup.config(), "shop.yaml", &shop(setup.port, "alpha", ""));
        setup
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("config")
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Waits until the proxy on this setup's port routes `/a` to alpha.
    async fn wait_serving(&self, client: &reqwest::Client) {
        let port = self.port;
        eventually(Duration::from_secs(30), "the proxy serves", || {
            routes_to(client, port, "/a", "alpha")
        })
        .await;
    }

    fn proxy(&self) -> MeridianProxy {
        self.proxy_with(free_port(), &[])
    }

    fn proxy_with(&self, admin_port: u16, args: &[&str]) -> MeridianProxy {
        let options = BootstrapOptions {
            l4: false,
            node_id: "gw-proxy".into(),
            gateway: "edge/public".into(),
            cluster: None,
            zone: None,
            xds_host: "127.0.0.1".into(),
            xds_port: self.xds_port,
            delta: false,
            rest: None,
            admin_port,
            tls: None,
        };
        MeridianProxy::start_with(self.dir.path(), options, args)
    }
}

async fn routes_to(client: &reqwest::Client, port: u16, path: &str, backend: &str) -> bool {
    get(client, port, "shop.example.test", path)
        .await
        .as_deref()
        == Ok(backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_control_plane_restarts_under_load_fail_no_request() {
    let setup = Setup::new().await;
    // A second virtual host on the same listener that no edit touches: the proxy reuses its
    // compiled form across every version, and it must keep routing.
    write(&setup.config(), "catalog.yaml", CATALOG);
    let mut meridian = Some(start_meridian(&setup.config(), &setup.state(), setup.xds_port).await);
    let proxy = setup.proxy();
    let client = client();
    let port = setup.port;
    setup.wait_serving(&client).await;

    // A request loop on /a for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, client) =
            (stop.clone(), sent.clone(), failed.clone(), client.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = get(&client, port, "shop.example.test", "/a")
                    .await
                    .as_deref()
                    == Ok("alpha");
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // 20 edits, each seen through the proxy before the next.
    for i in 0..20 {
        let backend = if i % 2 == 0 { "beta" } else { "alpha" };
        write(&setup.config(), "shop.yaml", &shop(port, backend, ""));
        eventually(Duration::from_secs(10), "an edit reaches the proxy", || {
            routes_to(&client, port, "/b", backend)
        })
        .await;
        let catalog = get(&client, port, "catalog.example.test", "/").await;
        assert_eq!(
            catalog.as_deref(),
            Ok("beta"),
            "the unedited host after edit {i}"
        );
    }
    // Meridian stopped and started again three times: the proxy keeps serving meanwhile and
    // follows the restarted one.
    for round in 0..3 {
        meridian.take().unwrap().shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let backend = if round % 2 == 0 { "alpha" } else { "beta" };
        write(&setup.config(), "shop.yaml", &shop(port, backend, ""));
        meridian = Some(start_meridian(&setup.config(), &setup.state(), setup.xds_port).await);
        eventually(
            Duration::from_secs(40),
            "the proxy follows the restarted Meridian",
            || routes_to(&client, port, "/b", backend),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{sent} requests through 20 edits and 3 control-plane restarts, {failed} failed");
    assert!(sent > 100, "the load loop ran ({sent} requests)");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    drop(proxy);
    meridian.unwrap().shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_proxy_cannot_honour_is_nacked_by_name_and_the_rest_keeps_serving() {
    let setup = Setup::new().await;
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let proxy = setup.proxy();
    let client = client();
    let port = setup.port;
    setup.wait_serving(&client).await;

    // A second port, held by another process (without SO_REUSEPORT): the listener cannot
    // bind, which no validation can foresee.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let second_server = format!(
        "          hosts: [\"*/*.example.test\"]\n        - port: {{number: {taken_port}, protocol: HTTP}}\n          bind: 127.0.0.1\n          hosts: [\"*/*.example.test\"]\n"
    );
    let breaking = shop(port, "beta", "").replacen(
        "          hosts: [\"*/*.example.test\"]\n",
        &second_server,
        1,
    );
    write(&setup.config(), "shop.yaml", &breaking);
    let admin = meridian.admin_addr;
    let nack =
        format!("Listener 127.0.0.1_{taken_port}: address: cannot bind 127.0.0.1:{taken_port}");
    eventually(
        Duration::from_secs(20),
        "the NACK, naming listener and reason, in the status",
        || async {
            let statuses = admin_json(&client, admin, "/debug/status")
                .await
                .to_string();
            statuses.contains(&nack)
        },
    )
    .await;
    // The change is held back (the quarantine) and what the proxy accepted keeps serving.
    eventually(
        Duration::from_secs(10),
        "the held-back change's previous routes",
        || async {
            routes_to(&client, port, "/a", "alpha").await
                && routes_to(&client, port, "/b", "alpha").await
        },
    )
    .await;
    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    assert!(log.contains("rejected (NACK)"), "{log}");
    // All that config work (receiving, decoding, compiling) ran at idle priority, never at
    // the workers' expense; the workers themselves at the normal one.
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    let policies = proxy.thread_policies();
    for (thread, policy) in [
        ("proxy-ads", SCHED_IDLE),
        ("proxy-compile", SCHED_IDLE),
        ("proxy-worker-0", SCHED_OTHER),
    ] {
        assert!(
            policies.contains(&(thread.to_owned(), policy)),
            "{thread} should run with policy {policy}: {policies:?}"
        );
    }
    drop((proxy, taken));
    meridian.shutdown().await.unwrap();
}

/// A first config of which a listener cannot bind still initializes the proxy, as it does
/// Envoy: the rest serves and `/ready` says LIVE (the NACK is in the status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_rejected_first_config_makes_the_proxy_ready() {
    let setup = Setup::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let second_server = format!(
        "          hosts: [\"*/*.example.test\"]\n        - port: {{number: {taken_port}, protocol: HTTP}}\n          bind: 127.0.0.1\n          hosts: [\"*/*.example.test\"]\n"
    );
    let config = shop(setup.port, "alpha", "").replacen(
        "          hosts: [\"*/*.example.test\"]\n",
        &second_server,
        1,
    );
    write(&setup.config(), "shop.yaml", &config);
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let admin = free_port();
    let proxy = setup.proxy_with(admin, &[]);
    let client = client();
    setup.wait_serving(&client).await;
    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    assert!(log.contains("rejected (NACK)"), "{log}");
    assert_eq!(ready(&client, admin).await, (200, "LIVE\n".to_owned()));
    drop((proxy, taken));
    meridian.shutdown().await.unwrap();
}

/// (status, body) of the proxy's `/ready`.
async fn ready(client: &reqwest::Client, admin_port: u16) -> (u16, String) {
    match client
        .get(format!("http://127.0.0.1:{admin_port}/ready"))
        .send()
        .await
    {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_meridian_is_down_serves_the_cached_config_at_once() {
    let setup = Setup::new().await;
    let cache = setup.dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let cache_arg = cache.to_str().unwrap().to_owned();
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let client = client();
    let port = setup.port;
    let admin = free_port();
    let proxy = setup.proxy_with(admin, &["--config-cache", &cache_arg]);
    eventually(Duration::from_secs(30), "the proxy serves", || {
        routes_to(&client, port, "/b", "alpha")
    })
    .await;
    assert_eq!(ready(&client, admin).await, (200, "LIVE\n".to_owned()));
    let file = cache.join("meridian-proxy-config.pb");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the cache may hold secrets");

    // Both gone; the proxy comes back first and serves what it had, without Meridian.
    drop(proxy);
    meridian.shutdown().await.unwrap();
    let admin = free_port();
    let proxy = setup.proxy_with(
        admin,
        &["--config-cache", &cache_arg, "--wait-first-config"],
    );
    let took = eventually(Duration::from_secs(10), "the cached config served", || {
        routes_to(&client, port, "/b", "alpha")
    })
    .await;
    eprintln!("served from the cache {took:?} after the start, Meridian down");
    let (status, body) = ready(&client, admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("SERVING_CACHED_CONFIG"), "{body}");

    // Meridian back, with a change meanwhile: followed, and ready.
    write(&setup.config(), "shop.yaml", &shop(port, "beta", ""));
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    eventually(
        Duration::from_secs(40),
        "the proxy follows Meridian again",
        || routes_to(&client, port, "/b", "beta"),
    )
    .await;
    assert_eq!(ready(&client, admin).await.0, 200);
    drop(proxy);
    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_the_proxy_proves_its_gateway_and_pins_meridians_identity() {
    use meridian::control_plane::bootstrap::ClientTls;
    use meridian::control_plane::certs::{self, CertOptions};

    let setup = Setup::new().await;
    let mut options = meridian_options(&setup.config(), &setup.state(), setup.xds_port);
    options.xds_tls.xds_mtls = true;
    let meridian = meridian::control_plane::standalone::start(options)
        .await
        .expect("meridian starts");
    let ca =
        certs::load_existing(&CertOptions::default(), Some(&setup.state().join("ca"))).unwrap();
    let credentials = setup.dir.path().join("gw-proxy-credentials");
    let (cert, key, ca_file) = certs::write_client_credentials(
        &ca,
        &CertOptions::default(),
        ("edge", "public"),
        &credentials,
    )
    .unwrap();
    let bootstrap = |node: &str, identity: &str| BootstrapOptions {
        l4: false,
        node_id: node.into(),
        gateway: "edge/public".into(),
        cluster: None,
        zone: None,
        xds_host: "127.0.0.1".into(),
        xds_port: setup.xds_port,
        delta: false,
        rest: None,
        admin_port: free_port(),
        tls: Some(ClientTls {
            cert_file: cert.display().to_string(),
            key_file: key.display().to_string(),
            ca_file: ca_file.display().to_string(),
            server_identity: identity.into(),
        }),
    };
    let client = client();
    let port = setup.port;
    let proxy = MeridianProxy::start(
        setup.dir.path(),
        bootstrap("gw-proxy", &certs::xds_server_id("meridian.local")),
    );
    eventually(
        Duration::from_secs(30),
        "the proxy serves over mutual TLS",
        || routes_to(&client, port, "/a", "alpha"),
    )
    .await;
    drop(proxy);

    // Pinned to another identity, the same server is refused: nothing is served.
    let impostor = MeridianProxy::start(
        setup.dir.path(),
        bootstrap(
            "gw-pinned-elsewhere",
            "spiffe://meridian.local/somebody-else",
        ),
    );
    eventually(
        Duration::from_secs(20),
        "the refusal in the proxy's log",
        || async {
            std::fs::read_to_string(&impostor.log)
                .unwrap_or_default()
                .contains("not Meridian's xDS server")
        },
    )
    .await;
    assert!(get(&client, port, "shop.example.test", "/a").await.is_err());
    drop(impostor);
    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_reach_meridian_for_rollout_health() {
    use meridian::core::model::ObjectKey;

    let setup = Setup::new().await;
    let broken = Backend::failing("broken").await;
    write(
        &setup.config(),
        "broken.yaml",
        &loopback_service("broken", broken.port),
    );
    write(
        &setup.config(),
        "shop.yaml",
        &shop(setup.port, "broken", ""),
    );
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let proxy = setup.proxy();
    let client = client();
    let port = setup.port;
    setup.wait_serving(&client).await;
    for _ in 0..20 {
        assert!(routes_to(&client, port, "/a", "alpha").await);
        assert!(get(&client, port, "shop.example.test", "/b").await.is_err());
    }
    let gateway = ObjectKey::new("edge", "public");
    let totals = |upstream: &str| {
        let loads = meridian
            .admin
            .xds
            .loads
            .recent("gw-proxy", &gateway, |_| true);
        loads
            .iter()
            .filter(|l| l.upstream == upstream)
            .fold((0, 0), |(r, e), l| (r + l.requests, e + l.errors))
    };
    let alpha = "outbound|80||alpha.shop.svc.cluster.local";
    let broken_cluster = "outbound|80||broken.shop.svc.cluster.local";
    eventually(
        Duration::from_secs(10),
        "the proxy's load reports",
        || async { totals(alpha).0 >= 21 && totals(broken_cluster) == (20, 20) },
    )
    .await;
    assert_eq!(totals(alpha).1, 0);
    drop(proxy);
    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_exits() {
    let setup = Setup::new().await;
    // A backend that takes a second to answer.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        "slow"
    });
    let server = tokio::spawn(async move {
        let _ = axum::serve(slow, app).await;
    });
    write(
        &setup.config(),
        "slow.yaml",
        &loopback_service("slow", slow_port),
    );
    write(&setup.config(), "shop.yaml", &shop(setup.port, "slow", ""));
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let mut proxy = setup.proxy();
    let client = client();
    let port = setup.port;
    setup.wait_serving(&client).await;
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, port, "shop.example.test", "/b").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.terminate();
        (proxy, status)
    });
    assert_eq!(
        in_flight.await.unwrap().as_deref(),
        Ok("slow"),
        "the request in flight finished"
    );
    let (_proxy, status) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drained without waiting for the drain time"
    );
    assert!(
        get(&client, port, "shop.example.test", "/a").await.is_err(),
        "no longer accepting"
    );
    server.abort();
    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stats_and_the_access_log_count_responses_and_upstreams() {
    let setup = Setup::new().await;
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let admin = free_port();
    let access_log = setup.dir.path().join("access.log");
    let proxy = setup.proxy_with(admin, &["--access-log", access_log.to_str().unwrap()]);
    let client = client();
    let port = setup.port;
    setup.wait_serving(&client).await;
    for _ in 0..5 {
        assert!(routes_to(&client, port, "/a", "alpha").await);
        assert!(get(&client, port, "nowhere.example.test", "/")
            .await
            .is_err());
    }
    let stats = client
        .get(format!("http://127.0.0.1:{admin}/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line_start: &str| -> f64 {
        stats
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        value("meridian_proxy_downstream_responses_total{code_class=\"2xx\"}") >= 6.0,
        "{stats}"
    );
    // The five unrouted requests, and no other: requests that arrive before their listener's
    // routes wait for them (listener warming), as Envoy's do.
    assert_eq!(
        value("meridian_proxy_downstream_responses_total{code_class=\"4xx\"}"),
        5.0,
        "{stats}"
    );
    let alpha = "cluster=\"outbound|80||alpha.shop.svc.cluster.local\"";
    assert!(
        value(&format!(
            "meridian_proxy_upstream_responses_total{{{alpha},code_class=\"2xx\"}}"
        )) >= 6.0,
        "{stats}"
    );
    assert!(
        stats.contains(&format!(
            "meridian_proxy_upstream_request_duration_seconds_count{{{alpha}}}"
        )),
        "{stats}"
    );
    assert!(
        value("meridian_proxy_config_updates_total{type=\"LDS\",result=\"ack\"}") >= 1.0,
        "{stats}"
    );
    // One JSON line per request: where it went, or why it went nowhere (NR: no route).
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    eventually(
        Duration::from_secs(5),
        "the access log is written",
        || async { lines().len() >= 11 },
    )
    .await;
    let lines = lines();
    let served = lines
        .iter()
        .find(|l| l["path"] == "/a" && l["response_code"] == 200)
        .expect("a served request");
    assert_eq!(
        served["upstream_cluster"],
        "outbound|80||alpha.shop.svc.cluster.local"
    );
    assert!(served["upstream_host"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(served["request_id"].as_str().unwrap().len(), 36);
    assert_eq!(served["response_flags"], "-");
    let unrouted = lines
        .iter()
        .find(|l| l["authority"] == "nowhere.example.test")
        .expect("an unrouted request");
    assert_eq!(unrouted["response_code"], 404);
    assert_eq!(unrouted["response_flags"], "NR");
    drop(proxy);
    meridian.shutdown().await.unwrap();
}

/// An HTTP/1.1 backend that answers keep-alive but closes each connection a moment after its
/// response, without saying so, as upstreams with short idle timeouts do. Counts connections.
async fn silently_closing_backend(
    accepted: Arc<AtomicUsize>,
) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buf[..read]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ncloser")
                    .await;
                tokio::time::sleep(Duration::from_millis((n % 3 * 5) as u64)).await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_closing_idle_connections_fail_no_request() {
    let setup = Setup::new().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let (closer_port, closer) = silently_closing_backend(accepted.clone()).await;
    let backends =
        loopback_service("alpha", setup._alpha.port) + &loopback_service("closer", closer_port);
    write(&setup.config(), "backends.yaml", &backends);
    write(
        &setup.config(),
        "shop.yaml",
        &shop(setup.port, "closer", ""),
    );
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let proxy = setup.proxy();
    let client = client();
    let port = setup.port;
    eventually(Duration::from_secs(30), "the proxy serves", || {
        routes_to(&client, port, "/b", "closer")
    })
    .await;
    let before = accepted.load(Ordering::Relaxed);
    // Each request comes after the backend closed the last one's connection (a request that
    // races the close can fail, in Envoy too: that is what retries on `reset` are for).
    let mut failed = Vec::new();
    for i in 0..60u64 {
        tokio::time::sleep(Duration::from_millis(30 + i % 3 * 10)).await;
        match get(&client, port, "shop.example.test", "/b").await {
            Ok(backend) if backend == "closer" => {}
            other => failed.push(format!("request {i}: {other:?}")),
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    // Each request found its pooled connection closed and took a new one.
    assert_eq!(accepted.load(Ordering::Relaxed) - before, 60);
    closer.abort();
    drop(proxy);
    meridian.shutdown().await.unwrap();
}

/// Reads one HTTP/1.1 response with a Content-Length from `stream`: its head and body. It
/// reads no byte past the response, so pipelined responses that arrive together are each
/// read whole.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    async fn within<T>(what: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), what)
            .await
            .expect("a response within 10 s")
    }
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = within(stream.read_u8()).await;
        head.push(byte.unwrap_or_else(|e| panic!("closed before a whole head ({e}): {head:?}")));
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    within(stream.read_exact(&mut body))
        .await
        .expect("closed before a whole body");
    let head = head.trim_end().to_owned();
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_release_their_state_and_serve_on() {
    use tokio::io::AsyncWriteExt;
    let setup = Setup::new().await;
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let admin = free_port();
    let proxy = setup.proxy_with(admin, &[]);
    let client = client();
    let port = setup.port;
    setup.wait_serving(&client).await;
    const REQUEST: &[u8] = b"GET /a HTTP/1.1\r\nHost: shop.example.test\r\n\r\n";
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));
    let (mut idle, mut partial) = (connect().await.unwrap(), connect().await.unwrap());
    for stream in [&mut idle, &mut partial] {
        stream.write_all(REQUEST).await.unwrap();
        assert_eq!(read_response(stream).await.1, "alpha");
    }
    // Half of the next request arrives before the connection counts as idle: the bytes hyper
    // read but could not parse yet go to the connection that follows.
    partial.write_all(&REQUEST[..20]).await.unwrap();
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let idle_gauge = || async {
        admin_text(&client, admin_addr, "/stats/prometheus")
            .await
            .lines()
            .find_map(|l| l.strip_prefix("meridian_proxy_downstream_connections_idle "))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    // reqwest's own connection to the listener idles too, so count at least the raw one.
    eventually(
        Duration::from_secs(5),
        "the idle connection released",
        || async { idle_gauge().await >= 1 },
    )
    .await;
    // Two check periods: the partly sent request's connection has been taken apart too.
    tokio::time::sleep(meridian::proxy::serve::IDLE_RELEASE * 2).await;
    partial.write_all(&REQUEST[20..]).await.unwrap();
    let (head, body) = read_response(&mut partial).await;
    assert_eq!(body, "alpha");
    assert!(!head.contains("connection: close"), "{head}");
    // The released connection serves its next request as one keep-alive connection.
    let released = idle_gauge().await;
    idle.write_all(REQUEST).await.unwrap();
    let (head, body) = read_response(&mut idle).await;
    assert_eq!(body, "alpha");
    assert!(!head.contains("connection: close"), "{head}");
    assert!(idle_gauge().await < released);
    // Pipelined requests on it, after the release, are answered in order.
    idle.write_all(&[REQUEST, REQUEST].concat()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(read_response(&mut idle).await.1, "alpha");
    }
    drop(proxy);
    meridian.shutdown().await.unwrap();
}

/// Reads one HTTP/1.1 response with a Content-Length of `length` bytes, returning its head.
async fn read_large_response(stream: &mut tokio::net::TcpStream, length: usize) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::with_capacity(length + 1024);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            if seen.len() >= end + 4 + length {
                assert_eq!(seen.len(), end + 4 + length, "nothing past the body");
                return String::from_utf8_lossy(&seen[..end]).to_lowercase();
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("more of the response within 10 s")
            .unwrap();
        assert!(
            read > 0,
            "closed after {} bytes of the response",
            seen.len()
        );
        seen.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_to_a_slow_reader_arrives_whole_however_the_connection_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LENGTH: usize = 32 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let big_port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async { vec![b'x'; LENGTH] });
    let big = tokio::spawn(async move { axum::serve(listener, app).await });
    let setup = Setup::new().await;
    let backends =
        loopback_service("alpha", setup._alpha.port) + &loopback_service("big", big_port);
    write(&setup.config(), "backends.yaml", &backends);
    write(&setup.config(), "shop.yaml", &shop(setup.port, "big", ""));
    let meridian = start_meridian(&setup.config(), &setup.state(), setup.xds_port).await;
    let proxy = setup.proxy();
    let client = client();
    let port = setup.port;
    setup.wait_serving(&client).await;
    const REQUEST: &[u8] = b"GET /b HTTP/1.1\r\nHost: shop.example.test\r\n\r\n";
    // Kept alive: the client reads nothing for two idle checks while most of the body waits
    // in the proxy, which must not take the connection apart under it.
    let mut kept = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    kept.write_all(REQUEST).await.unwrap();
    tokio::time::sleep(meridian::proxy::serve::IDLE_RELEASE * 3).await;
    let head = read_large_response(&mut kept, LENGTH).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    kept.write_all(REQUEST).await.unwrap();
    read_large_response(&mut kept, LENGTH).await;
    // Closed after its response: all of it is flushed before the socket is shut.
    let mut closed = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    closed
        .write_all(b"GET /b HTTP/1.1\r\nHost: shop.example.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let head = read_large_response(&mut closed, LENGTH).await;
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    closed.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    big.abort();
    drop(proxy);
    meridian.shutdown().await.unwrap();
}
