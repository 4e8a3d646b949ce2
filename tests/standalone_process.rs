//! The `meridian standalone` binary as operators run it: its logs and its quiet when idle.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const INVALID: &str = r#"apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: web, namespace: apps}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 0}, hosts: ["*"]}]}
"#;

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {metrics}"))
}

/// `meridian standalone` on `config` (a state dir beside it), admin on `admin`, xDS on `xds`,
/// logging to `log` with default settings; returns once the admin API answers.
async fn standalone(
    config: &std::path::Path,
    admin: u16,
    xds: u16,
    log: &std::path::Path,
) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("standalone")
        .arg("--config-dir")
        .arg(config)
        .arg("--state-dir")
        .arg(config.with_file_name("state"))
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let client = client();
    eventually(Duration::from_secs(30), "admin answers", || async {
        client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    child
}

/// A rejected file is logged once, not on every resync; an idle directory is not re-read in
/// a loop (the watcher ignores reads, its own included); logs to a file carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_logged_once_and_an_idle_directory_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("invalid.yaml"), INVALID).unwrap();
    std::fs::write(config.join("unparsable.yaml"), "kind: [").unwrap();
    let log_path = dir.path().join("meridian.log");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = standalone(&config, admin.port(), free_port(), &log_path).await;
    let client = client();
    let syncs = metric(
        &admin_text(&client, admin, "/metrics").await,
        "meridian_config_syncs_total",
    );
    // Reading the files, as an operator or a backup job would, is not a change.
    for _ in 0..20 {
        for name in ["invalid.yaml", "unparsable.yaml"] {
            std::fs::read(config.join(name)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = admin_text(&client, admin, "/metrics").await;
    let more = metric(&metrics, "meridian_config_syncs_total") - syncs;
    // At most the periodic resync (every 5 s) in these 2 s.
    assert!(more <= 1.0, "{more} re-syncs of an idle directory in 2 s");
    assert_eq!(metric(&metrics, "meridian_config_errors"), 2.0);

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    let rejected = log.matches("config rejected").count();
    assert_eq!(rejected, 2, "each rejection logged once:\n{log}");
    assert!(
        log.contains("invalid.yaml") && log.contains("unparsable.yaml"),
        "{log}"
    );
}

/// What one client can make Meridian log is bounded: a 64 KB node id and a thousand secret
/// names of 1 KB each (62 MB of logs before) stay a few kilobytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_flood_the_log() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let log_path = dir.path().join("meridian.log");
    let (admin, xds) = (free_port(), free_port());
    let mut child = standalone(&config, admin, xds, &log_path).await;
    let client = client();
    let before = std::fs::metadata(&log_path).unwrap().len();

    let gateway = Value {
        kind: Some(Kind::StringValue("edge/public".into())),
    };
    let node = Node {
        id: "n".repeat(64 * 1024),
        metadata: Some(Struct {
            fields: [("meridian.dev/gateway".to_owned(), gateway)].into(),
        }),
        ..Default::default()
    };
    let names: Vec<String> = (0..1000)
        .map(|i| format!("{i}-{}", "s".repeat(1024)))
        .collect();
    let request = DiscoveryRequest {
        node: Some(node),
        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
        resource_names: names,
        ..Default::default()
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{xds}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(request).await.unwrap();
    let mut responses = ads
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let _ = tokio::time::timeout(Duration::from_secs(2), responses.message()).await;
    eventually(Duration::from_secs(10), "the denials counted", || async {
        let metrics = admin_text(&client, ([127, 0, 0, 1], admin).into(), "/metrics").await;
        metric(&metrics, "meridian_sds_denied_total") >= 1000.0
    })
    .await;
    drop((tx, responses));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let logged = std::fs::metadata(&log_path).unwrap().len() - before;
    assert!(logged < 32 * 1024, "{logged} bytes logged for one request");
}

/// Idle connections cannot take Meridian down: with few file descriptors, a flood of silent
/// connections to the xDS and admin ports is closed after the handshake timeout, accepting
/// waits instead of failing, and the process keeps serving and shuts down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_never_exhaust_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let (admin, xds) = (free_port(), free_port());
    // 256 descriptors: the connection limit becomes 192 per listener.
    let script = format!(
        "ulimit -n 256 && exec {} standalone --config-dir {} --xds-addr 127.0.0.1:{xds} --admin-addr 127.0.0.1:{admin} --handshake-timeout 1s",
        env!("CARGO_BIN_EXE_meridian"),
        config.display()
    );
    let log_path = dir.path().join("meridian.log");
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let client = client();
    let healthy = || async {
        client
            .get(format!("http://127.0.0.1:{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    eventually(Duration::from_secs(30), "admin answers", healthy).await;

    // More silent connections than the process has descriptors for.
    let mut silent = Vec::new();
    for i in 0..600 {
        let port = if i % 2 == 0 { xds } else { admin };
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            silent.push(stream);
        }
    }
    // Closed by the server after the handshake timeout: reading reaches the end (past the
    // HTTP/2 server's own SETTINGS frame).
    let mut closed = 0;
    for stream in silent.iter_mut().take(20) {
        use tokio::io::AsyncReadExt;
        let mut sink = Vec::new();
        let to_end = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink));
        if to_end.await.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 20, "silent connections are closed");
    eventually(Duration::from_secs(20), "admin answers again", healthy).await;
    drop(silent);
    eventually(
        Duration::from_secs(20),
        "admin answers once they are gone",
        healthy,
    )
    .await;
    assert!(child.try_wait().unwrap().is_none(), "meridian exited");

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "exit {status:?}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// `meridian validate` right after a file is written (a CI step after a generator): a broken
/// file must fail the check, not be passed over as possibly mid-write.
#[test]
fn validate_judges_a_file_written_a_moment_ago() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("clusters.yaml"),
        "apiVersion: meridian.dev/v1alpha1\nkind: MemberCluster\nmetadata: {name: east}\nspec: {}\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("validate")
        .arg("--config-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("clusters.yaml")
            && stdout.contains("MemberCluster east")
            && stdout.contains("zone"),
        "{stdout}"
    );
}
