//! TLS end to end with a real Envoy 1.40: certificates Meridian issues and rotates over SDS,
//! MUTUAL servers, user-provided Secrets, a CA that survives restarts, and ADS over mutual TLS
//! where a gateway can fetch only its own secrets.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian::control_plane::bootstrap::{BootstrapOptions, ClientTls};
use meridian::control_plane::certs::{self, CertOptions};
use meridian::control_plane::standalone::Running;
use support::tls::{curl_https, TlsClient, UserCertificate};
use support::*;

const HOST: &str = "shop.example.test";

/// An AccessPoint with HTTPS servers on `port`: `shop` (embedded, SIMPLE), `partners`
/// (embedded, MUTUAL) and `byo` (SIMPLE with the user Secret `byo-cert`).
fn manifest(port: u16, backend: u16) -> String {
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
        - port: {{number: {port}, protocol: HTTPS}}
          bind: 127.0.0.1
          hosts: ["*/{HOST}"]
          tls: {{mode: SIMPLE}}
        - port: {{number: {port}, protocol: HTTPS}}
          bind: 127.0.0.1
          hosts: ["*/partners.example.test"]
          tls: {{mode: MUTUAL}}
        - port: {{number: {port}, protocol: HTTPS}}
          bind: 127.0.0.1
          hosts: ["*/byo.example.test"]
          tls: {{mode: SIMPLE, credentialName: byo-cert}}
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [{HOST}, partners.example.test, byo.example.test]
        gateways: [edge/public]
        http:
        - route: [{{destination: {{host: alpha}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: alpha, namespace: shop}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: alpha-1, namespace: shop, labels: {{kubernetes.io/service-name: alpha}}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"]}}]
ports: [{{name: http, port: {backend}}}]
"#
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    _backend: Backend,
    port: u16,
    xds_port: u16,
}

impl Fixture {
    async fn new() -> Fixture {
        let backend = Backend::start("alpha").await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let f = Fixture {
            dir,
            port: free_port(),
            xds_port: free_port(),
            _backend: backend,
        };
        std::fs::write(
            f.config_dir().join("shop.yaml"),
            manifest(f.port, f._backend.port),
        )
        .unwrap();
        f
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config_dir(&self) -> PathBuf {
        self.path().join("config")
    }

    fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    fn ca_file(&self) -> PathBuf {
        self.state_dir().join("ca").join("ca.crt")
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_file()).unwrap()
    }

    /// Meridian with these certificate options, over mutual TLS or (a loopback demo) plain
    /// ADS that serves keys to gateways without a client certificate.
    async fn start(&self, certs: CertOptions, mtls: bool) -> Running {
        let mut options = meridian_options(&self.config_dir(), &self.state_dir(), self.xds_port);
        options.certs = certs;
        options.xds_tls.xds_mtls = mtls;
        options.xds_tls.insecure_serve_keys_without_mtls = !mtls;
        meridian::control_plane::standalone::start(options)
            .await
            .expect("meridian starts")
    }

    /// `curl --cacert <Meridian's CA>` with SNI `host`, plus `extra` arguments.
    fn curl(&self, host: &str, extra: &[&str]) -> Result<String, String> {
        curl_https(&self.ca_file(), host, self.port, extra)
    }
}

fn short_lived() -> CertOptions {
    CertOptions {
        cert_lifetime: Duration::from_secs(6),
        cert_renew_fraction: 0.5,
        ..CertOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificates_verify_and_rotate_without_dropping_connections() {
    let f = Fixture::new().await;
    let meridian = f.start(short_lived(), false).await;
    let _envoy = Envoy::start(f.path(), "gw-tls", "edge/public", f.xds_port, true);

    eventually(Duration::from_secs(30), "HTTPS through Envoy", || async {
        f.curl(HOST, &[]).as_deref() == Ok("alpha")
    })
    .await;

    // A long-lived keep-alive connection and a loop of fresh connections, across rotations.
    let client = TlsClient::trusting(&f.ca_pem());
    let mut kept = client
        .connect(f.port, HOST)
        .await
        .expect("handshake verifies");
    let first_serial = kept.serial.clone();
    let serials = Arc::new(std::sync::Mutex::new(BTreeSet::from(
        [first_serial.clone()],
    )));
    let failures = Arc::new(AtomicUsize::new(0));
    let fresh_requests = Arc::new(AtomicUsize::new(0));
    let fresh_loop = {
        let (serials, failures, fresh_requests) =
            (serials.clone(), failures.clone(), fresh_requests.clone());
        let client = TlsClient::trusting(&f.ca_pem());
        let port = f.port;
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline {
                match client.connect(port, HOST).await {
                    Ok(mut conn) => {
                        serials.lock().unwrap().insert(conn.serial.clone());
                        match conn.get("/").await {
                            Ok((200, body)) if body == "alpha" => {}
                            other => {
                                eprintln!("fresh connection request: {other:?}");
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(error) => {
                        eprintln!("fresh connection: {error}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                fresh_requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut kept_requests = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let answer = kept.get("/").await;
        assert!(
            matches!(&answer, Ok((200, body)) if body == "alpha"),
            "request {kept_requests} on the kept-alive connection: {answer:?}"
        );
        kept_requests += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fresh_loop.await.unwrap();
    let serials = serials.lock().unwrap().clone();
    println!(
        "rotation: {} serials seen in 8 s (lifetime 6 s, renewed at 3 s); {kept_requests} requests on one kept-alive connection, {} on fresh connections, {} failures",
        serials.len(),
        fresh_requests.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    assert!(
        serials.len() >= 2,
        "the served certificate changed: {serials:?}"
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);

    // Metrics count the rotations.
    let metrics = client_metrics(&meridian).await;
    let rotations = metric(&metrics, "meridian_certs_issued_total{reason=\"rotate\"}");
    assert!(rotations >= 1.0, "{metrics}");
    assert!(metric(&metrics, "meridian_certs_held") >= 2.0, "{metrics}");
    meridian.shutdown().await.unwrap();
}

async fn client_metrics(running: &Running) -> String {
    client()
        .get(format!("http://{}/metrics", running.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_and_user_secrets_are_served() {
    let f = Fixture::new().await;
    // The user's own CA and certificate for byo.example.test, as a kubernetes.io/tls Secret.
    let user = UserCertificate::new("byo.example.test", "byo-cert", "edge");
    std::fs::write(f.config_dir().join("byo.yaml"), &user.secret_manifest).unwrap();
    let meridian = f.start(CertOptions::default(), false).await;
    let _envoy = Envoy::start(f.path(), "gw-mutual", "edge/public", f.xds_port, false);
    eventually(Duration::from_secs(30), "HTTPS through Envoy", || async {
        f.curl(HOST, &[]).as_deref() == Ok("alpha")
    })
    .await;

    // MUTUAL: refused without a client certificate, served with one from Meridian's CA.
    let refused = f.curl("partners.example.test", &[]);
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let ca =
        certs::load_existing(&CertOptions::default(), Some(&f.state_dir().join("ca"))).unwrap();
    let client_dir = f.path().join("client");
    let (cert, key, _) = certs::write_client_credentials(
        &ca,
        &CertOptions::default(),
        ("shop", "tester"),
        &client_dir,
    )
    .unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    assert_eq!(
        f.curl("partners.example.test", &["--cert", &cert, "--key", &key]),
        Ok("alpha".to_owned())
    );

    // credentialName: the user's certificate, verified against the user's CA.
    let user_ca_file = f.path().join("byo-ca.crt");
    std::fs::write(&user_ca_file, &user.ca_pem).unwrap();
    assert_eq!(
        curl_https(&user_ca_file, "byo.example.test", f.port, &[]),
        Ok("alpha".to_owned())
    );
    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_survives_a_restart_and_earlier_certificates_still_verify() {
    let f = Fixture::new().await;
    let meridian = f.start(CertOptions::default(), false).await;
    let _envoy = Envoy::start(f.path(), "gw-restart", "edge/public", f.xds_port, true);
    let client = TlsClient::trusting(&f.ca_pem());
    let before = connect_until(&client, f.port, |_| true).await;
    let ca_before = f.ca_pem();
    meridian.shutdown().await.unwrap();

    let meridian = f.start(CertOptions::default(), false).await;
    assert_eq!(f.ca_pem(), ca_before, "the same CA after a restart");
    // The restarted Meridian issues a new certificate; both verify against the one CA.
    let client = TlsClient::trusting(&f.ca_pem());
    let after = connect_until(&client, f.port, |c| c.serial != before.serial).await;
    let ca =
        certs::load_existing(&CertOptions::default(), Some(&f.state_dir().join("ca"))).unwrap();
    for leaf in [&before.leaf_pem, &after.leaf_pem] {
        assert!(signed_by(leaf, ca.trust_pem()), "{leaf}");
    }
    meridian.shutdown().await.unwrap();
}

/// The first verified connection to `port` that `wanted` accepts (30 s at most).
async fn connect_until(
    client: &TlsClient,
    port: u16,
    wanted: impl Fn(&support::tls::TlsConn) -> bool,
) -> support::tls::TlsConn {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(conn) = client.connect(port, HOST).await {
            if wanted(&conn) {
                return conn;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no wanted TLS connection to port {port} within 30 s");
}

fn signed_by(leaf_pem: &str, ca_pem: &str) -> bool {
    let leaf = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes())
        .unwrap()
        .1;
    let ca = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .unwrap()
        .1;
    let (leaf, ca) = (leaf.parse_x509().unwrap(), ca.parse_x509().unwrap());
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

/// Envoy over mutual TLS with a client certificate for `gateway`.
fn envoy_over_mtls(f: &Fixture, node: &str, gateway: &str) -> Envoy {
    Envoy::launch(f.path(), mtls_bootstrap(f, node, gateway))
}

/// The bootstrap of an Envoy over mutual TLS with a client certificate for `gateway`.
fn mtls_bootstrap(f: &Fixture, node: &str, gateway: &str) -> BootstrapOptions {
    let ca =
        certs::load_existing(&CertOptions::default(), Some(&f.state_dir().join("ca"))).unwrap();
    let (ns, name) = gateway.split_once('/').unwrap();
    let dir = f.path().join(node);
    let (cert, key, ca_file) =
        certs::write_client_credentials(&ca, &CertOptions::default(), (ns, name), &dir).unwrap();
    BootstrapOptions {
        l4: false,
        node_id: node.into(),
        gateway: gateway.into(),
        cluster: None,
        zone: None,
        xds_host: "127.0.0.1".into(),
        xds_port: f.xds_port,
        delta: false,
        rest: None,
        admin_port: free_port(),
        tls: Some(ClientTls {
            cert_file: cert.display().to_string(),
            key_file: key.display().to_string(),
            ca_file: ca_file.display().to_string(),
            server_identity: certs::xds_server_id("meridian.local"),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_a_gateway_gets_only_its_own_secrets() {
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use meridian::core::model::tls::EMBEDDED_PREFIX;

    let f = Fixture::new().await;
    let meridian = f.start(CertOptions::default(), true).await;

    // A real Envoy with the public gateway's certificate is served, HTTPS works.
    let _envoy = envoy_over_mtls(&f, "gw-mtls", "edge/public");
    eventually(
        Duration::from_secs(30),
        "HTTPS through an Envoy on mTLS ADS",
        || async { f.curl(HOST, &[]).as_deref() == Ok("alpha") },
    )
    .await;

    // `meridian status` over mTLS with the gateway's credentials; refused without them.
    let server = format!("https://localhost:{}", f.xds_port);
    let status = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["status", "--server", &server])
            .args(extra)
            .output()
            .unwrap()
    };
    let cert_dir = f.path().join("gw-mtls").display().to_string();
    let all_synced = |table: &str| {
        table
            .lines()
            .any(|l| l.starts_with("gw-mtls") && l.matches("SYNCED").count() == 5)
    };
    let mut table = String::new();
    for _ in 0..100 {
        table = String::from_utf8_lossy(&status(&["--cert-dir", &cert_dir]).stdout).to_string();
        if all_synced(&table) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        all_synced(&table),
        "CDS, LDS, EDS, RDS and SDS synced:\n{table}"
    );
    assert!(
        !status(&[]).status.success(),
        "status without a client certificate"
    );

    // An operator's certificate sees every proxy; another gateway's sees none of this one's,
    // and cannot dump its config.
    let operator_dir = f.path().join("operator");
    let minted = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["operator-credentials", "--name", "alice", "--cert-dir"])
        .arg(&operator_dir)
        .arg("--ca-dir")
        .arg(f.state_dir().join("ca"))
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let operator = status(&["--cert-dir", &operator_dir.display().to_string()]);
    assert!(
        all_synced(&String::from_utf8_lossy(&operator.stdout)),
        "{operator:?}"
    );
    let ca_for_others =
        certs::load_existing(&CertOptions::default(), Some(&f.state_dir().join("ca"))).unwrap();
    let internal_dir = f.path().join("internal");
    certs::write_client_credentials(
        &ca_for_others,
        &CertOptions::default(),
        ("edge", "internal"),
        &internal_dir,
    )
    .unwrap();
    let internal_dir = internal_dir.display().to_string();
    let other = status(&["--cert-dir", &internal_dir]);
    let table = String::from_utf8_lossy(&other.stdout);
    assert!(
        other.status.success() && !table.contains("gw-mtls"),
        "{table}"
    );
    let dump = |cert_dir: &str| {
        Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args([
                "config-dump",
                "--node",
                "gw-mtls",
                "--server",
                &server,
                "--cert-dir",
                cert_dir,
            ])
            .output()
            .unwrap()
    };
    assert!(
        !dump(&internal_dir).status.success(),
        "another gateway dumped gw-mtls"
    );
    assert!(dump(&operator_dir.display().to_string()).status.success());
    assert!(
        dump(&cert_dir).status.success(),
        "a gateway dumps its own config"
    );

    let ca =
        certs::load_existing(&CertOptions::default(), Some(&f.state_dir().join("ca"))).unwrap();
    let ca_pem = ca.trust_pem().to_owned();
    let client_for = |gateway: (&str, &str)| {
        let dir = f.path().join(format!("client-{}", gateway.1));
        let (cert, key, _) =
            certs::write_client_credentials(&ca, &CertOptions::default(), gateway, &dir).unwrap();
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        );
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
            .identity(identity)
            .domain_name("localhost")
    };
    let connect = |tls: Option<tonic::transport::ClientTlsConfig>| {
        let port = f.xds_port;
        async move {
            let mut endpoint =
                tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
                    .unwrap();
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls).unwrap();
            }
            endpoint
                .connect()
                .await
                .map(AggregatedDiscoveryServiceClient::new)
        }
    };

    // The public gateway's certificate name, as its own proxy was served it.
    let public_secret = {
        let mut client = connect(Some(client_for(("edge", "public")))).await.unwrap();
        let responses = ask(&mut client, "edge/public", LDS, &[]).await.unwrap();
        let listeners = format!("{responses:?}");
        let start = listeners.find(EMBEDDED_PREFIX).expect("an SDS reference");
        let end = listeners[start..].find(['"', '\\']).unwrap() + start;
        listeners[start..end].to_owned()
    };
    let mut own = connect(Some(client_for(("edge", "public")))).await.unwrap();
    let served = ask(&mut own, "edge/public", SDS, &[&public_secret])
        .await
        .unwrap();
    assert_eq!(
        served,
        vec![public_secret.clone()],
        "its own secret is served"
    );

    // Another gateway's certificate: asking for the public gateway's secret yields nothing.
    let mut other = connect(Some(client_for(("edge", "internal"))))
        .await
        .unwrap();
    let served = ask(&mut other, "edge/internal", SDS, &[&public_secret])
        .await
        .unwrap();
    assert!(
        served.is_empty(),
        "another gateway's secret was served: {served:?}"
    );
    let metrics = client_metrics(&meridian).await;
    assert_eq!(
        metric(&metrics, "meridian_sds_denied_total"),
        1.0,
        "{metrics}"
    );

    // ... nor by claiming to be the public gateway in its node metadata.
    let mut liar = connect(Some(client_for(("edge", "internal"))))
        .await
        .unwrap();
    let refused = ask(&mut liar, "edge/public", SDS, &[&public_secret]).await;
    let status = refused.expect_err("a node may not claim another gateway");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(
        status
            .message()
            .contains("certificate is for edge/internal"),
        "{status}"
    );

    // Without a client certificate there is no connection at all.
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
        .domain_name("localhost");
    let refused = match connect(Some(anonymous)).await {
        Err(_) => true,
        Ok(mut client) => ask(&mut client, "edge/public", SDS, &[&public_secret])
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    meridian.shutdown().await.unwrap();
}

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const SDS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Opens a SotW stream as `gateway`, asks for `names` of `type_url`, and returns the names of
/// the resources in the first response (none if no response comes within a second), or the
/// debug form of every resource for LDS.
async fn ask(
    client: &mut envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    gateway: &str,
    type_url: &str,
    names: &[&str],
) -> Result<Vec<String>, tonic::Status> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let node = Node {
        id: format!("probe-{gateway}"),
        metadata: Some(Struct {
            fields: [(
                "meridian.dev/gateway".to_owned(),
                Value {
                    kind: Some(Kind::StringValue(gateway.to_owned())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    };
    let request = DiscoveryRequest {
        node: Some(node),
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await.unwrap();
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(1), responses.message()).await;
    drop(tx);
    let response = match first {
        Err(_) => return Ok(Vec::new()),
        Ok(message) => match message? {
            Some(response) => response,
            None => return Ok(Vec::new()),
        },
    };
    Ok(response
        .resources
        .iter()
        .map(|any| {
            let json = meridian::core::json::any_to_json(any).unwrap();
            if type_url == LDS {
                json.to_string()
            } else {
                json["name"].as_str().unwrap_or_default().to_owned()
            }
        })
        .collect())
}

/// Secure by default: without mutual TLS, anyone who reaches the xDS port can claim a gateway,
/// so no private key is served over plain ADS; a real Envoy's HTTPS listener waits for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ads_serves_no_private_keys_unless_told_to() {
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use meridian::core::model::tls::EMBEDDED_PREFIX;

    let f = Fixture::new().await;
    let options = meridian_options(&f.config_dir(), &f.state_dir(), f.xds_port);
    assert!(
        !options.xds_tls.insecure_serve_keys_without_mtls,
        "the default"
    );
    let meridian = meridian::control_plane::standalone::start(options)
        .await
        .unwrap();
    let _envoy = Envoy::start(f.path(), "gw-plain", "edge/public", f.xds_port, false);
    let admin = meridian.admin_addr;
    let http = client();
    // The gateway is connected and served everything but the key.
    eventually(Duration::from_secs(30), "the gateway connected", || async {
        admin_json(&http, admin, "/debug/syncz").await["proxies"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    })
    .await;
    for _ in 0..20 {
        assert!(
            f.curl(HOST, &[]).is_err(),
            "HTTPS answered without a key served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect = || async {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", f.xds_port))
                .unwrap();
        AggregatedDiscoveryServiceClient::new(endpoint.connect().await.unwrap())
    };
    let mut client = connect().await;
    let listeners = format!(
        "{:?}",
        ask(&mut client, "edge/public", LDS, &[]).await.unwrap()
    );
    let start = listeners.find(EMBEDDED_PREFIX).expect("an SDS reference");
    let end = listeners[start..].find(['"', '\\']).unwrap() + start;
    let name = listeners[start..end].to_owned();
    let served = ask(&mut client, "edge/public", SDS, &[name.as_str()])
        .await
        .unwrap();
    assert!(
        served.is_empty(),
        "a private key over plain ADS: {served:?}"
    );
    meridian.shutdown().await.unwrap();

    // Told to (a loopback demo), the same request is answered with the key.
    let mut options = meridian_options(&f.config_dir(), &f.state_dir(), f.xds_port);
    options.xds_tls.insecure_serve_keys_without_mtls = true;
    let meridian = meridian::control_plane::standalone::start(options)
        .await
        .unwrap();
    let mut served = Vec::new();
    for _ in 0..50 {
        let mut client = connect().await;
        served = ask(&mut client, "edge/public", SDS, &[name.as_str()])
            .await
            .unwrap();
        if !served.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served, [name], "the key served when allowed");
    meridian.shutdown().await.unwrap();
}

/// `meridian status` trusts only Meridian's xDS server, not any certificate its CA issued:
/// a tenant's Gateway can get one for `localhost`, and the CLI must not talk to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_a_server_with_a_certificate_for_the_right_name_but_not_meridians() {
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = tempfile::tempdir().unwrap();
    let options = CertOptions::default();
    let ca = certs::load_or_create_in_dir(&dir.path().join("ca"), &options).unwrap();
    let validity = meridian::control_plane::certs::ca::Validity {
        now: std::time::SystemTime::now(),
        lifetime: Duration::from_secs(3600),
    };
    // What the embedded CA issues a Gateway server for host `localhost`.
    let meridian::core::model::tls::SecretMaterial::Certificate { chain_pem, key, .. } = ca
        .issue_server(&["localhost".to_owned()], validity)
        .unwrap()
    else {
        panic!("a certificate");
    };
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key.expose().as_bytes())
        .unwrap()
        .unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let accepted = handshakes.clone();
    let impostor = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if acceptor.accept(tcp).await.is_ok() {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let operator = dir.path().join("operator");
    certs::write_operator_credentials(&ca, &options, "alice", &operator).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "status",
            "--server",
            &format!("https://localhost:{port}"),
            "--cert-dir",
        ])
        .arg(&operator)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        format!("{stderr:?}").contains("not Meridian"),
        "refused for the identity: {stderr}"
    );
    assert_eq!(
        handshakes.load(Ordering::Relaxed),
        0,
        "no handshake completed"
    );
    impostor.abort();
}

/// A tenant cannot get a certificate for a name Meridian uses itself (here `localhost`, in
/// the xDS server certificate): the AccessPoint is rejected, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_for_meridians_own_names_are_not_issued() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let impostor = r#"apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: impostor, namespace: shop}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 8443, protocol: HTTPS}, hosts: [localhost], tls: {mode: SIMPLE}}]}
"#;
    std::fs::write(config.join("impostor.yaml"), impostor).unwrap();
    let meridian = start_meridian(&config, &dir.path().join("state"), free_port()).await;
    let http = client();
    let admin = meridian.admin_addr;
    eventually(
        Duration::from_secs(10),
        "the rejection reported",
        || async {
            let problems = admin_json(&http, admin, "/debug/problems")
                .await
                .to_string();
            problems.contains("servers[0].hosts[0]") && problems.contains("reserved")
        },
    )
    .await;
    // Nothing issued, a second later either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = admin_text(&http, admin, "/metrics").await;
    assert!(metrics.contains("meridian_certs_held 0\n"), "{metrics}");
    meridian.shutdown().await.unwrap();
}

/// A REST xDS poll over HTTPS with curl, presenting the client credentials in `cert_dir`
/// (none: no certificate). `None` when there was no HTTP answer at all.
fn rest_poll(
    f: &Fixture,
    cert_dir: Option<&Path>,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    let mut curl = Command::new("curl");
    curl.args(["-s", "--cacert"])
        .arg(f.ca_file())
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .args(["-w", "\n%{http_code}"]);
    if let Some(dir) = cert_dir {
        curl.arg("--cert")
            .arg(dir.join(certs::CLIENT_CERT_FILE))
            .arg("--key")
            .arg(dir.join(certs::CLIENT_KEY_FILE));
    }
    let output = curl
        .arg(format!("https://localhost:{}{path}", f.xds_port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (output.status.success() && code != 0).then(|| (code, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_a_polling_envoy_gets_its_keys_and_nobody_else_does() {
    use meridian::core::model::tls::EMBEDDED_PREFIX;

    let f = Fixture::new().await;
    let meridian = f.start(CertOptions::default(), true).await;

    // A real Envoy polling (HTTP/2 over mutual TLS) with the public gateway's certificate: its
    // HTTPS listener gets its certificate and key over REST SDS.
    let _envoy = Envoy::launch(
        f.path(),
        BootstrapOptions {
            rest: Some(Duration::from_secs(1)),
            ..mtls_bootstrap(&f, "gw-rest-mtls", "edge/public")
        },
    );
    eventually(
        Duration::from_secs(30),
        "HTTPS through an Envoy polling over mTLS",
        || async { f.curl(HOST, &[]).as_deref() == Ok("alpha") },
    )
    .await;

    let ca =
        certs::load_existing(&CertOptions::default(), Some(&f.state_dir().join("ca"))).unwrap();
    let credentials = |gateway: (&str, &str)| {
        let dir = f.path().join(format!("rest-{}", gateway.1));
        certs::write_client_credentials(&ca, &CertOptions::default(), gateway, &dir).unwrap();
        dir
    };
    let (public, internal) = (
        credentials(("edge", "public")),
        credentials(("edge", "internal")),
    );
    let node = |gateway: &str| {
        format!(r#""node": {{"id": "curl", "metadata": {{"meridian.dev/gateway": "{gateway}"}}}}"#)
    };
    let lds = format!("{{{}}}", node("edge/public"));
    let (code, listeners) =
        rest_poll(&f, Some(&public), "/v3/discovery:listeners", &lds).expect("an answer");
    assert_eq!(code, 200, "{listeners}");
    let start = listeners.find(EMBEDDED_PREFIX).expect("an SDS reference");
    let end = listeners[start..].find('"').unwrap() + start;
    let secret = &listeners[start..end];
    let sds = |gateway: &str| format!(r#"{{{}, "resource_names": ["{secret}"]}}"#, node(gateway));

    // Its own certificate: the key is served.
    let (code, own) = rest_poll(
        &f,
        Some(&public),
        "/v3/discovery:secrets",
        &sds("edge/public"),
    )
    .expect("an answer");
    assert_eq!(code, 200, "{own}");
    assert!(own.contains("privateKey"), "{own}");
    // Another gateway's certificate gets nothing of it, and may not claim to be public.
    let (code, foreign) = rest_poll(
        &f,
        Some(&internal),
        "/v3/discovery:secrets",
        &sds("edge/internal"),
    )
    .expect("an answer");
    assert_eq!(code, 200, "{foreign}");
    assert!(!foreign.contains(secret), "{foreign}");
    let (code, liar) = rest_poll(
        &f,
        Some(&internal),
        "/v3/discovery:secrets",
        &sds("edge/public"),
    )
    .expect("an answer");
    assert_eq!(code, 403, "{liar}");
    assert!(liar.contains("certificate is for edge/internal"), "{liar}");
    // Without a certificate there is no answer at all.
    assert_eq!(
        rest_poll(&f, None, "/v3/discovery:secrets", &sds("edge/public")),
        None
    );
    meridian.shutdown().await.unwrap();
}

/// The same gateway served by `meridian haproxy`: Meridian's certificates (SDS) become the
/// PEM files HAProxy's crt-list names, chosen by SNI, with client certificates required where
/// the server is MUTUAL; a rotated certificate is served on fresh connections with none
/// failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_serves_issued_mutual_and_user_certificates_by_sni_and_rotates() {
    let f = Fixture::new().await;
    let user = UserCertificate::new("byo.example.test", "byo-cert", "edge");
    std::fs::write(f.config_dir().join("byo.yaml"), &user.secret_manifest).unwrap();
    let meridian = f.start(short_lived(), false).await;
    let files = f.path().join("haproxy");
    let node = MeridianProxy::start_haproxy_with(
        f.path(),
        bootstrap_options("gw-haproxy", "edge/public", f.xds_port),
        &[
            "--dir",
            files.to_str().unwrap(),
            "--agent-port",
            "0",
            "--drain-time",
            "2s",
        ],
    );
    let _guard = KillByPidFile(files.join("haproxy.pid"));
    eventually(Duration::from_secs(30), "HTTPS through HAProxy", || async {
        f.curl(HOST, &[]).as_deref() == Ok("alpha")
    })
    .await;
    // Private keys are readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(&files).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pem")
            && std::fs::read_to_string(&path)
                .unwrap()
                .contains("PRIVATE KEY")
        {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
    // MUTUAL: refused without a client certificate, served with one from Meridian's CA.
    assert!(f.curl("partners.example.test", &[]).is_err());
    let ca = certs::load_existing(&short_lived(), Some(&f.state_dir().join("ca"))).unwrap();
    let (cert, key, _) = certs::write_client_credentials(
        &ca,
        &short_lived(),
        ("shop", "tester"),
        &f.path().join("client"),
    )
    .unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    assert_eq!(
        f.curl("partners.example.test", &["--cert", &cert, "--key", &key]),
        Ok("alpha".to_owned())
    );
    // credentialName: the user's certificate, verified against the user's CA.
    let user_ca_file = f.path().join("byo-ca.crt");
    std::fs::write(&user_ca_file, &user.ca_pem).unwrap();
    assert_eq!(
        curl_https(&user_ca_file, "byo.example.test", f.port, &[]),
        Ok("alpha".to_owned())
    );

    // Rotation (6 s certificates, renewed at half-life): fresh connections see a new serial.
    let client = TlsClient::trusting(&f.ca_pem());
    let first = client.connect(f.port, HOST).await.unwrap().serial;
    let (mut failures, mut requests) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut rotated = None;
    while Instant::now() < deadline && rotated.is_none() {
        match client.connect(f.port, HOST).await {
            Ok(mut conn) => {
                if !matches!(conn.get("/").await, Ok((200, body)) if body == "alpha") {
                    failures += 1;
                }
                if conn.serial != first {
                    rotated = Some(conn.serial);
                }
            }
            Err(error) => {
                eprintln!("fresh connection: {error}");
                failures += 1;
            }
        }
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{requests} fresh connections across the rotation, {failures} failed");
    assert!(
        rotated.is_some(),
        "the certificate rotated: {}",
        node.log_text()
    );
    assert_eq!(failures, 0);
    meridian.shutdown().await.unwrap();
}
