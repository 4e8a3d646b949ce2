//! The routing conformance suite: every case in `tests/conformance/` runs against Envoy 1.40
//! and `meridian proxy` (over state-of-the-world ADS, and again over delta ADS), all fed by one
//! Meridian, and all must meet every expectation. The cases HAProxy can express (those without
//! `haproxy:` naming why not) run against `meridian haproxy` with a real HAProxy too.
//! See `tests/conformance/README.md` for the case format.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian::control_plane::bootstrap::BootstrapOptions;
use serde::Deserialize;
use support::*;

#[derive(Debug, Deserialize)]
struct Case {
    template: serde_yaml::Value,
    requests: Vec<Probe>,
    /// Why `meridian haproxy` is not held to this case (what HAProxy does otherwise); absent:
    /// it is.
    #[serde(default)]
    haproxy: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Probe {
    host: String,
    path: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    samples: Option<usize>,
    /// Over TLS to the gateways' HTTPS port, with `host` as SNI (status and backend checked).
    #[serde(default)]
    tls: bool,
    /// Sends this many requests at once (statuses counted: `expect.statuses`).
    #[serde(default)]
    concurrent: Option<usize>,
    /// Requests sent first, whatever they answer (to trip outlier detection, say).
    #[serde(default)]
    warmup: usize,
    /// Each sample sets this header to a value of its own (`user-<n>`).
    #[serde(default)]
    vary_header: Option<String>,
    /// Each sample appends this query parameter with a value of its own (`user-<n>`).
    #[serde(default)]
    vary_query: Option<String>,
    /// Why `meridian haproxy` is not held to this request (what HAProxy does otherwise).
    #[serde(default)]
    haproxy: Option<String>,
    expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
struct Expect {
    backend: Option<String>,
    status: Option<u16>,
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent: Vec<String>,
    /// Response headers that must be there with a value other than this one (a value the
    /// client sent, replaced on the way).
    #[serde(default)]
    replaced: BTreeMap<String, String>,
    location: Option<String>,
    #[serde(default)]
    distribution: BTreeMap<String, f64>,
    /// Every sample answered by one backend.
    #[serde(default)]
    sticky: bool,
    /// The samples reached at least this many backends.
    #[serde(default)]
    spread: Option<usize>,
    /// With `concurrent`: how many answers of each status.
    #[serde(default)]
    statuses: BTreeMap<u16, usize>,
    /// The samples reached their backend over this many upstream connections.
    #[serde(default)]
    connections: Option<usize>,
}

/// An HTTP backend that answers with its name and echoes the request as it arrived.
struct EchoBackend {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl EchoBackend {
    /// `flaky` answers 503 the first time it sees an `x-request-id` (a retry carries the same
    /// id, so it succeeds), `broken` always; every backend waits `x-delay-ms` before answering when asked to.
    async fn start(name: &'static str) -> EchoBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let seen = seen.clone();
            async move {
                let (request, _body) = request.into_parts();
                let header = |key: &str| {
                    request
                        .headers
                        .get(key)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                if let Some(delay) = header("x-delay-ms").and_then(|d| d.parse().ok()) {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let first_time =
                    header("x-request-id").is_some_and(|id| seen.lock().unwrap().insert(id));
                // `x-respond` asks for a framing: a chunked body, a 204, `connection: close`.
                let respond = header("x-respond").unwrap_or_default();
                let body = match respond.as_str() {
                    "chunked" => axum::body::Body::from_stream(futures::stream::iter(
                        name.bytes().map(|byte| Ok::<_, std::io::Error>(vec![byte])),
                    )),
                    "no-content" => axum::body::Body::empty(),
                    _ => axum::body::Body::from(name),
                };
                let mut response = axum::response::Response::new(body);
                if name == "broken" || (name == "flaky" && first_time) {
                    *response.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                match respond.as_str() {
                    "no-content" => *response.status_mut() = axum::http::StatusCode::NO_CONTENT,
                    "close" => {
                        response.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                    }
                    _ => {}
                }
                let headers = response.headers_mut();
                let mut put = |key: String, value: &str| {
                    if let (Ok(k), Ok(v)) = (
                        axum::http::HeaderName::from_bytes(key.as_bytes()),
                        axum::http::HeaderValue::from_str(value),
                    ) {
                        headers.append(k, v);
                    }
                };
                put("x-backend".into(), name);
                if let Some(peer) = request
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                {
                    put("x-seen-peer".into(), &peer.0.to_string());
                }
                let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
                put("x-seen-path".into(), path);
                put("x-seen-version".into(), &format!("{:?}", request.version));
                if let Some(authority) = request.uri.authority() {
                    put("x-seen-authority".into(), authority.as_str());
                }
                for (key, value) in &request.headers {
                    put(format!("x-seen-{key}"), value.to_str().unwrap_or_default());
                }
                response
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await;
        });
        EchoBackend { port, task }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend whose every answer breaks HTTP/1.1 (a `content-length` that is not a number).
async fn garbled_backend() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                if socket.read(&mut buffer).await.is_ok_and(|n| n > 0) {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\nok";
                    let _ = socket.write_all(answer).await;
                }
            });
        }
    });
    (port, task)
}

/// A gateway's plaintext and HTTPS ports.
#[derive(Clone, Copy)]
struct Ports {
    http: u16,
    https: u16,
}

fn gateways(envoy: Ports, proxy: Ports, delta: Ports, haproxy: Ports) -> String {
    let gateway = |name: &str, ports: Ports| {
        let (port, tls_port) = (ports.http, ports.https);
        format!(
            "    - metadata: {{name: {name}}}\n      spec:\n        servers:\n        - port: {{number: {port}, protocol: HTTP}}\n          bind: 127.0.0.1\n          hosts: [\"*/*.example.test\"]\n        - port: {{number: {tls_port}, protocol: HTTPS}}\n          bind: 127.0.0.1\n          hosts: [\"*/secure.example.test\"]\n          tls: {{mode: SIMPLE}}\n"
        )
    };
    format!(
        "apiVersion: meridian.dev/v1alpha1\nkind: AccessPoint\nmetadata: {{name: gateways, namespace: edge}}\nspec:\n  template:\n    gateways:\n{}{}{}{}",
        gateway("envoy", envoy),
        gateway("proxy", proxy),
        gateway("proxy-delta", delta),
        gateway("haproxy", haproxy)
    )
}

/// The case's template as an AccessPoint, its routes bound to every gateway (HAProxy's when
/// it is held to the case).
fn access_point(name: &str, case: &Case) -> String {
    let haproxy = if case.haproxy.is_none() {
        ", edge/haproxy"
    } else {
        ""
    };
    let template = serde_yaml::to_string(&case.template)
        .unwrap()
        .replace(
            "- edge/public",
            &format!(
                "- edge/envoy\n    - edge/proxy\n    - edge/proxy-delta{}",
                haproxy.replace(", ", "\n    - ")
            ),
        )
        .replace(
            "[edge/public]",
            &format!("[edge/envoy, edge/proxy, edge/proxy-delta{haproxy}]"),
        );
    let indented: String = template.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: meridian.dev/v1alpha1\nkind: AccessPoint\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  template:\n{indented}"
    )
}

fn cases() -> Vec<(String, Case)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut cases: Vec<(String, Case)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let case: Case =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, case)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn send(
    client: &reqwest::Client,
    ports: Ports,
    ca_pem: &str,
    probe: &Probe,
) -> Result<Answer, String> {
    if probe.tls {
        let tls = support::tls::TlsClient::trusting(ca_pem);
        let mut connection = tls
            .connect(ports.https, &probe.host)
            .await
            .map_err(|e| e.to_string())?;
        let (status, body) = connection
            .get(&probe.path)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Answer {
            status,
            headers: Default::default(),
            body,
        });
    }
    let port = ports.http;
    let method = reqwest::Method::from_bytes(probe.method.as_deref().unwrap_or("GET").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut request = client
        .request(method, format!("http://127.0.0.1:{port}{}", probe.path))
        .header("host", &probe.host);
    for (k, v) in &probe.headers {
        request = request.header(k, v);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// What is wrong with `answer` for `expect`, if anything.
fn check(expect: &Expect, answer: &Answer, port: u16) -> Vec<String> {
    let mut wrong = Vec::new();
    if let Some(status) = expect.status {
        if answer.status != status {
            wrong.push(format!("status {} (want {status})", answer.status));
        }
    }
    if let Some(backend) = &expect.backend {
        if answer.status != 200 || &answer.body != backend {
            wrong.push(format!(
                "answered {} {:?} (want backend {backend})",
                answer.status, answer.body
            ));
        }
    }
    if let Some(body) = &expect.body {
        if &answer.body != body {
            wrong.push(format!("body {:?} (want {body:?})", answer.body));
        }
    }
    let header = |name: &str| {
        answer
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    for (name, value) in &expect.headers {
        if &header(name) != value {
            wrong.push(format!(
                "header {name}: {:?} (want {value:?})",
                header(name)
            ));
        }
    }
    for name in &expect.absent {
        if answer.headers.contains_key(name.as_str()) {
            wrong.push(format!("header {name} present: {:?}", header(name)));
        }
    }
    for (name, sent) in &expect.replaced {
        if !answer.headers.contains_key(name.as_str()) || &header(name) == sent {
            wrong.push(format!(
                "header {name}: {:?} (want a value other than {sent:?})",
                header(name)
            ));
        }
    }
    if let Some(location) = &expect.location {
        let location = location.replace("{port}", &port.to_string());
        if header("location") != location {
            wrong.push(format!(
                "location {:?} (want {location:?})",
                header("location")
            ));
        }
    }
    wrong
}

async fn run_probe(
    client: &reqwest::Client,
    ports: Ports,
    ca_pem: &str,
    probe: &Probe,
) -> Vec<String> {
    let port = ports.http;
    if let Some(n) = probe.concurrent {
        let answers =
            futures::future::join_all((0..n).map(|_| send(client, ports, ca_pem, probe))).await;
        let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
        let mut peers: HashSet<String> = HashSet::new();
        let mut wrong = Vec::new();
        for answer in answers {
            match answer {
                Ok(answer) => {
                    *statuses.entry(answer.status).or_default() += 1;
                    if let Some(peer) = answer.headers.get("x-seen-peer") {
                        peers.insert(peer.to_str().unwrap_or_default().to_owned());
                    }
                    if answer.status == 503 {
                        wrong.extend(check(&probe.expect, &answer, port));
                    }
                }
                Err(e) => wrong.push(e),
            }
        }
        if statuses != probe.expect.statuses {
            wrong.push(format!(
                "statuses {statuses:?} (want {:?})",
                probe.expect.statuses
            ));
        }
        if let Some(connections) = probe.expect.connections {
            if peers.len() != connections {
                wrong.push(format!(
                    "{n} requests at once took {} upstream connections (want {connections})",
                    peers.len()
                ));
            }
        }
        return wrong;
    }
    let sampled = !probe.expect.distribution.is_empty()
        || probe.expect.sticky
        || probe.expect.spread.is_some()
        || probe.expect.connections.is_some();
    if sampled {
        let samples = probe.samples.unwrap_or(200);
        for _ in 0..probe.warmup {
            let _ = send(client, ports, ca_pem, probe).await;
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut peers: HashSet<String> = HashSet::new();
        for n in 0..samples {
            let mut varied = Probe {
                host: probe.host.clone(),
                path: probe.path.clone(),
                method: probe.method.clone(),
                headers: probe.headers.clone(),
                samples: None,
                concurrent: None,
                warmup: 0,
                tls: probe.tls,
                vary_header: None,
                vary_query: None,
                haproxy: None,
                expect: Expect::default(),
            };
            if let Some(header) = &probe.vary_header {
                varied.headers.insert(header.clone(), format!("user-{n}"));
            }
            if let Some(query) = &probe.vary_query {
                let joiner = if varied.path.contains('?') { '&' } else { '?' };
                varied.path = format!("{}{joiner}{query}=user-{n}", varied.path);
            }
            if probe.expect.connections.is_some() && n > 0 {
                // The client's pool takes its connection back just after a response ends;
                // without a pause a loaded machine can start the next sample on a second
                // client connection, which HAProxy serves with a server connection of its own.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match send(client, ports, ca_pem, &varied).await {
                Ok(answer) if answer.status == 200 => {
                    if let Some(peer) = answer.headers.get("x-seen-peer") {
                        peers.insert(peer.to_str().unwrap_or_default().to_owned());
                    }
                    *counts.entry(answer.body).or_default() += 1
                }
                Ok(answer) => return vec![format!("status {} ({})", answer.status, answer.body)],
                Err(e) => return vec![e],
            }
        }
        let mut wrong = Vec::new();
        if probe.expect.sticky && counts.len() != 1 {
            wrong.push(format!("one key reached several backends: {counts:?}"));
        }
        if let Some(spread) = probe.expect.spread {
            if counts.len() < spread {
                wrong.push(format!(
                    "{samples} keys reached {} backends (want {spread}): {counts:?}",
                    counts.len()
                ));
            }
        }
        if let Some(connections) = probe.expect.connections {
            if peers.len() != connections {
                wrong.push(format!(
                    "{samples} requests took {} upstream connections (want {connections})",
                    peers.len()
                ));
            }
        }
        for (backend, share) in &probe.expect.distribution {
            let seen = counts.get(backend).copied().unwrap_or(0) as f64 / samples as f64;
            if (seen - share).abs() > 0.08 {
                wrong.push(format!(
                    "{backend} took {seen:.2} of {samples} (want {share:.2})"
                ));
            }
        }
        return wrong;
    }
    match send(client, ports, ca_pem, probe).await {
        Ok(answer) => check(&probe.expect, &answer, port),
        Err(e) => vec![e],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_meridian_proxy_route_every_case_alike() {
    let cases = cases();
    assert!(!cases.is_empty());
    let alpha = EchoBackend::start("alpha").await;
    let beta = EchoBackend::start("beta").await;
    let gamma = EchoBackend::start("gamma").await;
    let flaky = EchoBackend::start("flaky").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let envoy_ports = Ports {
        http: free_port(),
        https: free_port(),
    };
    let proxy_ports = Ports {
        http: free_port(),
        https: free_port(),
    };
    let delta_ports = Ports {
        http: free_port(),
        https: free_port(),
    };
    let haproxy_ports = Ports {
        http: free_port(),
        https: free_port(),
    };
    let xds_port = free_port();
    let broken = EchoBackend::start("broken").await;
    let (garbled, _garbled_task) = garbled_backend().await;
    let pool = |name: &str, members: &[(&str, u16)]| {
        let slices: String = members
            .iter()
            .map(|(backend, port)| {
                format!(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{backend}, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\nports: [{{name: http, port: {port}}}]\n---\n"
                )
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n{slices}"
        )
    };
    let three = [
        ("alpha", alpha.port),
        ("beta", beta.port),
        ("gamma", gamma.port),
    ];
    let backends = pool("pool", &three)
        + &pool("pool-maglev", &three)
        + &pool("shaky", &[("alpha", alpha.port), ("broken", broken.port)])
        + &loopback_service("alpha", alpha.port)
        + &loopback_service("beta", beta.port)
        + &loopback_service("gamma", gamma.port)
        + &loopback_service("flaky", flaky.port)
        + &loopback_service("garbled", garbled)
        + &loopback_service("short-lived", beta.port)
        + &loopback_service("alpha-h2", alpha.port).replace("name: http,", "name: http2,")
        + &loopback_service("beta-h2", beta.port).replace("name: http,", "name: http2,");
    std::fs::write(config.join("backends.yaml"), backends).unwrap();
    std::fs::write(
        config.join("gateways.yaml"),
        gateways(envoy_ports, proxy_ports, delta_ports, haproxy_ports),
    )
    .unwrap();
    for (name, case) in &cases {
        std::fs::write(
            config.join(format!("{name}.yaml")),
            access_point(name, case),
        )
        .unwrap();
    }
    // Both gateways fetch their certificates over plain ADS here, on loopback.
    let mut serving = meridian_options(&config, &state, xds_port);
    serving.xds_tls.insecure_serve_keys_without_mtls = true;
    let meridian = meridian::control_plane::standalone::start(serving)
        .await
        .expect("meridian starts");
    let ca_pem = std::fs::read_to_string(state.join("ca").join("ca.crt")).unwrap();
    let options = |node: &str, gateway: &str, delta: bool| BootstrapOptions {
        l4: false,
        node_id: node.into(),
        gateway: gateway.into(),
        cluster: None,
        zone: None,
        xds_host: "127.0.0.1".into(),
        xds_port,
        delta,
        rest: None,
        admin_port: free_port(),
        tls: None,
    };
    // One worker each: Envoy lets each worker's connection pool open one connection past
    // max_connections, so circuit-breaker cases only compare alike with one.
    let envoy = Envoy::launch_with(
        dir.path(),
        options("conformance-envoy", "edge/envoy", false),
        None,
        &["--concurrency", "1"],
    );
    let proxy = MeridianProxy::start_with(
        dir.path(),
        options("conformance-proxy", "edge/proxy", false),
        &["--workers", "1"],
    );
    // The same proxy over delta ADS must agree as well.
    let delta = MeridianProxy::start_with(
        dir.path(),
        options("conformance-proxy-delta", "edge/proxy-delta", true),
        &["--workers", "1"],
    );
    // HAProxy, kept by `meridian haproxy`, for the cases it is held to.
    let haproxy_files = dir.path().join("haproxy");
    let haproxy = MeridianProxy::start_haproxy_with(
        dir.path(),
        options("conformance-haproxy", "edge/haproxy", false),
        &[
            "--dir",
            haproxy_files.to_str().unwrap(),
            "--agent-port",
            "0",
            "--drain-time",
            "1s",
        ],
    );
    let _haproxy_process = KillByPidFile(haproxy_files.join("haproxy.pid"));
    let peers = [
        ("envoy", envoy_ports),
        ("meridian-proxy", proxy_ports),
        ("meridian-proxy-delta", delta_ports),
        ("meridian-haproxy", haproxy_ports),
    ];
    let logs = || {
        format!(
            "proxy log:\n{}\n\ndelta proxy log:\n{}\n\nhaproxy log:\n{}",
            std::fs::read_to_string(&proxy.log).unwrap_or_default(),
            std::fs::read_to_string(&delta.log).unwrap_or_default(),
            std::fs::read_to_string(&haproxy.log).unwrap_or_default()
        )
    };
    // Redirects are answers to check, not to follow.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let first = &cases[0].1.requests[0];
    for (what, ports) in peers {
        let ready = || async { run_probe(&client, ports, &ca_pem, first).await.is_empty() };
        let mut waited = Duration::ZERO;
        while !ready().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
            assert!(
                waited < Duration::from_secs(30),
                "{what} never served the first case; {}",
                logs()
            );
        }
    }
    let mut failures = Vec::new();
    for (name, case) in &cases {
        for (i, probe) in case.requests.iter().enumerate() {
            for (what, ports) in peers {
                if what == "meridian-haproxy" && (case.haproxy.is_some() || probe.haproxy.is_some())
                {
                    continue;
                }
                for wrong in run_probe(&client, ports, &ca_pem, probe).await {
                    failures.push(format!(
                        "{name}[{i}] {} {}{} on {what}: {wrong}",
                        probe.method.as_deref().unwrap_or("GET"),
                        probe.host,
                        probe.path
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}\n\n{}",
        failures.len(),
        failures.join("\n"),
        logs()
    );
    drop((envoy, proxy, delta, haproxy));
    meridian.shutdown().await.unwrap();
}
