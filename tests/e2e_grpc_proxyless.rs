//! Proxyless gRPC end to end with real clients: grpcio (Python, gRPC C-core) and
//! @grpc/grpc-js with @grpc/grpc-js-xds (Node) dial `xds:///greeter.example.test:<port>`
//! with the bootstrap `meridian bootstrap --grpc` prints. A weighted split, a live edit with
//! no failed call, a backend killed moving calls to the other zone, and the same greeter
//! through a real Envoy gateway. `make grpc-deps` installs the clients.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian::control_plane::admin::ops::pb::{ops_client::OpsClient, ProxyStatusRequest};
use meridian::control_plane::bootstrap::{grpc_bootstrap, BootstrapOptions};
use support::*;

const HOST: &str = "greeter.example.test";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("e2e/grpc")
        .join(name)
}

/// A greeter backend (greeter.py on grpcio) answering its name; killed on drop.
struct Greeter {
    child: Child,
    port: u16,
}

impl Greeter {
    fn start(name: &str) -> Greeter {
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(script("greeter.py"))
            .args(["serve", name, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with grpcio (make grpc-deps)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "serving", "greeter {name} did not start");
        Greeter { child, port }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real gRPC client library.
#[derive(Clone, Copy, Debug)]
enum Client {
    Python,
    Node,
}

/// One call's outcome, as the client scripts print it.
#[derive(Debug, serde::Deserialize)]
struct Call {
    t: f64,
    backend: Option<String>,
    error: Option<String>,
}

/// A client calling the greeter for a while.
struct Calls(Child);

impl Calls {
    fn start(client: Client, bootstrap: &Path, target: &str, seconds: f64) -> Calls {
        let mut command = match client {
            Client::Python => {
                let mut c = Command::new("python3");
                c.arg(script("greeter.py")).arg("call");
                c
            }
            Client::Node => {
                let mut c = Command::new("node");
                c.arg(script("greeter.js")).env(
                    "NODE_PATH",
                    dirs_home().join(".cache/meridian/node/node_modules"),
                );
                c
            }
        };
        let child = command
            .args([target, &seconds.to_string()])
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gRPC client (make grpc-deps)");
        Calls(child)
    }

    fn finish(self) -> Vec<Call> {
        let output = self.0.wait_with_output().unwrap();
        assert!(output.status.success(), "the client failed: {output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

fn manifests(gateway_port: u16, weights: (u32, u32), backends: [(&str, u16, &str); 3]) -> String {
    let slices: String = backends
        .iter()
        .map(|(service, port, zone)| {
            format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-{zone}, namespace: rpc, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"], zone: {zone}}}]\nports: [{{name: grpc, port: {port}}}]\n"
            )
        })
        .collect();
    format!(
        r#"apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: greeter, namespace: rpc}}
spec:
  template:
    gateways:
    - metadata: {{name: edge}}
      spec:
        servers:
        - port: {{number: {gateway_port}, protocol: GRPC}}
          bind: 127.0.0.1
          hosts: ["*/{HOST}"]
    virtualServices:
    - metadata: {{name: greeter}}
      spec:
        hosts: [{HOST}]
        gateways: [edge]
        http:
        - route:
          - destination: {{host: greeter-v1}}
            weight: {v1}
          - destination: {{host: greeter-v2}}
            weight: {v2}
---
apiVersion: v1
kind: Service
metadata: {{name: greeter-v1, namespace: rpc}}
spec: {{ports: [{{name: grpc, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: greeter-v2, namespace: rpc}}
spec: {{ports: [{{name: grpc, port: 80}}]}}
{slices}"#,
        v1 = weights.0,
        v2 = weights.1,
    )
}

fn count(calls: &[Call], backend: &str) -> usize {
    calls
        .iter()
        .filter(|c| c.backend.as_deref() == Some(backend))
        .count()
}

fn errors(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.error.is_some()).collect()
}

async fn scenario(client: Client, through_envoy: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let mut v1_a = Greeter::start("v1-a");
    let v1_b = Greeter::start("v1-b");
    let v2 = Greeter::start("v2");
    let backends = [
        ("greeter-v1", v1_a.port, "zone-a"),
        ("greeter-v1", v1_b.port, "zone-b"),
        ("greeter-v2", v2.port, "zone-a"),
    ];
    let gateway_port = free_port();
    let write = |weights: (u32, u32)| {
        let tmp = dir.path().join(".greeter.yaml");
        std::fs::write(&tmp, manifests(gateway_port, weights, backends)).unwrap();
        std::fs::rename(&tmp, config.join("greeter.yaml")).unwrap();
    };
    write((80, 20));
    let xds_port = free_port();
    let meridian = start_meridian(&config, &dir.path().join("state"), xds_port).await;
    let options = BootstrapOptions {
        zone: Some("zone-a".into()),
        ..bootstrap_options("app-1", "rpc/edge", xds_port)
    };
    let bootstrap = dir.path().join("grpc-bootstrap.json");
    std::fs::write(&bootstrap, grpc_bootstrap(&options).to_string()).unwrap();
    let target = format!("xds:///{HOST}:{gateway_port}");

    // An 80/20 split; v1's calls stay in the client's zone.
    let calls = tokio::task::spawn_blocking({
        let (bootstrap, target) = (bootstrap.clone(), target.clone());
        move || Calls::start(client, &bootstrap, &target, 3.0).finish()
    })
    .await
    .unwrap();
    let (a, b, two) = (
        count(&calls, "v1-a"),
        count(&calls, "v1-b"),
        count(&calls, "v2"),
    );
    let share = 100.0 * two as f64 / calls.len() as f64;
    eprintln!(
        "{client:?}: {} calls: v1-a {a}, v1-b {b}, v2 {two} ({share:.1}% v2)",
        calls.len()
    );
    assert!(calls.len() >= 100, "{} calls", calls.len());
    assert!(
        (share - 20.0).abs() <= 5.0,
        "v2 share {share:.1}% (want 20±5)"
    );
    assert_eq!(b, 0, "v1 calls left the client's zone");
    assert!(errors(&calls).is_empty(), "{:?}", errors(&calls));

    // Served on one port only, the host may be dialled without it.
    let calls = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || Calls::start(client, &bootstrap, &format!("xds:///{HOST}"), 0.5).finish()
    })
    .await
    .unwrap();
    assert!(!calls.is_empty() && errors(&calls).is_empty(), "{calls:?}");

    // The same greeter through a real Envoy gateway (HTTP/2 upstream), same split.
    if through_envoy {
        let _envoy = Envoy::launch(
            dir.path(),
            BootstrapOptions {
                zone: Some("zone-a".into()),
                ..bootstrap_options("gw-1", "rpc/edge", xds_port)
            },
        );
        let calls = eventually_calls(&format!("127.0.0.1:{gateway_port}")).await;
        let (a, two) = (count(&calls, "v1-a"), count(&calls, "v2"));
        eprintln!("through Envoy: {} calls: v1-a {a}, v2 {two}", calls.len());
        assert_eq!(a + two, calls.len(), "{:?}", errors(&calls));
        assert!(a > two && two > 0, "v1-a {a}, v2 {two}");
    }

    // A live edit: all to v2, no failed call; `meridian status` shows the client in sync.
    let running = Calls::start(client, &bootstrap, &target, 6.0);
    let mut ops = OpsClient::connect(format!("http://127.0.0.1:{xds_port}"))
        .await
        .unwrap();
    let asked = Instant::now();
    loop {
        let status = ops
            .proxy_status(ProxyStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let in_sync = status.proxies.iter().any(|p| {
            p.node_id == "app-1"
                && p.role == "grpc"
                && ["LDS", "RDS", "CDS", "EDS"].iter().all(|kind| {
                    p.types
                        .iter()
                        .any(|t| t.r#type == *kind && t.state == "SYNCED")
                })
        });
        if in_sync {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the gRPC client not in sync in status: {}",
            meridian::cli::render_status(&status)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let synced = asked.elapsed();
    eprintln!("{client:?}: in status, all SYNCED, {synced:?} after the calls began");
    tokio::time::sleep(Duration::from_secs(1)).await;
    write((0, 100));
    let calls = tokio::task::spawn_blocking(move || running.finish())
        .await
        .unwrap();
    assert!(
        errors(&calls).is_empty(),
        "calls failed during the edit: {:?}",
        errors(&calls)
    );
    let last = calls.last().map_or(0.0, |c| c.t);
    let tail: Vec<&Call> = calls.iter().filter(|c| c.t > last - 1.5).collect();
    assert!(
        tail.iter().all(|c| c.backend.as_deref() == Some("v2")),
        "after the edit every call goes to v2"
    );
    assert!(count(&calls, "v1-a") > 0, "v1 was called before the edit");

    // A backend killed: v1's calls move to the other zone.
    write((100, 0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = Calls::start(client, &bootstrap, &target, 6.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    v1_a.kill();
    let calls = tokio::task::spawn_blocking(move || running.finish())
        .await
        .unwrap();
    let last = calls.last().map_or(0.0, |c| c.t);
    let tail: Vec<&Call> = calls.iter().filter(|c| c.t > last - 1.5).collect();
    eprintln!(
        "{client:?}: zone-a's v1 killed: {} calls failed, the last {} went to {:?}",
        errors(&calls).len(),
        tail.len(),
        tail.iter()
            .filter_map(|c| c.backend.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(count(&calls, "v1-a") > 0, "zone-a answered before");
    assert!(
        !tail.is_empty() && tail.iter().all(|c| c.backend.as_deref() == Some("v1-b")),
        "after zone-a's backend died, zone-b answers"
    );

    meridian.shutdown().await.unwrap();
}

/// Calls through a gateway (plain gRPC, authority `HOST`) once it routes.
async fn eventually_calls(gateway: &str) -> Vec<Call> {
    let started = Instant::now();
    loop {
        let output = Command::new("python3")
            .arg(script("greeter.py"))
            .args(["call", gateway, "1", HOST])
            .output()
            .unwrap();
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no answer through Envoy: {output:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_through_xds_and_through_an_envoy_gateway() {
    scenario(Client::Python, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_xds_calls_through_xds() {
    scenario(Client::Node, false).await;
}

/// Over mutual TLS (`--xds-mtls`): the bootstrap `meridian bootstrap --grpc --cert-dir` prints
/// (gRFC A65 channel credentials with the gateway's client certificate) reaches Meridian, and
/// the client is served its gateway's routes. One backend is listed in two zones, which gRPC
/// would refuse (a duplicate address): it is served once, in the nearer zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_over_mutual_tls() {
    use meridian::control_plane::bootstrap::ClientTls;
    use meridian::control_plane::certs::{self, CertOptions};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let (v1, v2) = (Greeter::start("v1-a"), Greeter::start("v2"));
    let gateway_port = free_port();
    let backends = [
        ("greeter-v1", v1.port, "zone-a"),
        ("greeter-v1", v1.port, "zone-b"),
        ("greeter-v2", v2.port, "zone-a"),
    ];
    std::fs::write(
        config.join("greeter.yaml"),
        manifests(gateway_port, (50, 50), backends),
    )
    .unwrap();
    let xds_port = free_port();
    let state = dir.path().join("state");
    let mut options = meridian_options(&config, &state, xds_port);
    options.xds_tls.xds_mtls = true;
    let meridian = meridian::control_plane::standalone::start(options)
        .await
        .expect("meridian starts");
    let ca = certs::load_existing(&CertOptions::default(), Some(&state.join("ca"))).unwrap();
    let (cert, key, ca_file) = certs::write_client_credentials(
        &ca,
        &CertOptions::default(),
        ("rpc", "edge"),
        &dir.path().join("creds"),
    )
    .unwrap();
    let bootstrap = dir.path().join("grpc-tls.json");
    let tls = ClientTls {
        cert_file: cert.display().to_string(),
        key_file: key.display().to_string(),
        ca_file: ca_file.display().to_string(),
        server_identity: certs::xds_server_id("meridian.local"),
    };
    let options = BootstrapOptions {
        zone: Some("zone-a".into()),
        xds_host: "localhost".into(),
        tls: Some(tls),
        ..bootstrap_options("app-tls", "rpc/edge", xds_port)
    };
    let printed = grpc_bootstrap(&options);
    assert_eq!(printed["xds_servers"][0]["channel_creds"][0]["type"], "tls");
    std::fs::write(&bootstrap, printed.to_string()).unwrap();
    let target = format!("xds:///{HOST}:{gateway_port}");
    let calls = tokio::task::spawn_blocking(move || {
        Calls::start(Client::Python, &bootstrap, &target, 1.0).finish()
    })
    .await
    .unwrap();
    assert!(calls.len() > 10 && errors(&calls).is_empty(), "{calls:?}");
    assert!(count(&calls, "v1-a") > 0 && count(&calls, "v2") > 0);
    meridian.shutdown().await.unwrap();
}
