//! `meridian node-agent` with a real HAProxy 2.6 and a real kube-apiserver: HAProxy's agent
//! check follows the node's cordon, readiness and the Service's weight annotation.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::kube::KubeCluster;
use support::{eventually, free_port, Backend};

const WAIT: Duration = Duration::from_secs(30);

const NODE_AND_SERVICE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
status:
  conditions: [{type: Ready, status: "True", reason: KubeletReady, message: ready}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, annotations: {meridian.dev/weight: "50"}}
spec: {type: NodePort, ports: [{name: http, port: 80}]}
"#;

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy(dir: &Path, backend_port: u16, agent_port: u16) -> (Running, std::path::PathBuf) {
    let socket = dir.join("haproxy.sock");
    let config = format!(
        "global\n    stats socket {socket} mode 600 level admin\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
         backend web\n    server s1 127.0.0.1:{backend_port} weight 100 check inter 300ms agent-check agent-port {agent_port} agent-inter 300ms agent-send \"shop/web\\n\"\n\
         frontend fe\n    bind 127.0.0.1:{front}\n    default_backend web\n",
        socket = socket.display(),
        front = free_port(),
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (make test installs it)");
    (Running(child), socket)
}

/// (status, weight) of server s1 as HAProxy's stats socket shows them.
fn server_state(socket: &Path) -> Option<(String, String)> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.write_all(b"show stat\n").ok()?;
    let mut csv = String::new();
    stream.read_to_string(&mut csv).ok()?;
    let header: Vec<&str> = csv
        .lines()
        .next()?
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (status, weight) = (column("status")?, column("weight")?);
    let row: Vec<&str> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"web") && f.get(1) == Some(&"s1"))?;
    Some((row.get(status)?.to_string(), row.get(weight)?.to_string()))
}

async fn state_becomes(socket: &Path, want: (&str, Option<&str>), what: &str) -> Duration {
    eventually(WAIT, what, || async {
        server_state(socket).is_some_and(|(status, weight)| {
            status.starts_with(want.0) && want.1.is_none_or(|w| weight == w)
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_cordons_readiness_and_weights() {
    let cluster = KubeCluster::start();
    cluster.apply_ok(NODE_AND_SERVICE);
    let work = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    let agent_port = free_port();
    let log = work.path().join("agent.log");
    let _agent = Running(
        Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["node-agent", "--node", "node-1"])
            .args(["--addr", &format!("127.0.0.1:{agent_port}")])
            .arg("--kubeconfig")
            .arg(&cluster.admin_kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let (_haproxy, socket) = haproxy(work.path(), backend.port, agent_port);

    // Ready, uncordoned: up at the annotated 50 % of the configured weight 100.
    state_becomes(&socket, ("UP", Some("50")), "UP at weight 50").await;

    // Cordoned: DRAIN within 3 s; uncordoned: UP again.
    let cordoned = Instant::now();
    cluster.kubectl_ok(&["cordon", "node-1"]);
    state_becomes(&socket, ("DRAIN", None), "DRAIN after a cordon").await;
    let drained = cordoned.elapsed();
    eprintln!("cordon → HAProxy DRAIN: {drained:?}");
    assert!(drained < Duration::from_secs(3), "{drained:?}");
    cluster.kubectl_ok(&["uncordon", "node-1"]);
    state_becomes(&socket, ("UP", Some("50")), "UP after the uncordon").await;

    // A drain taint drains too.
    cluster.kubectl_ok(&[
        "taint",
        "node",
        "node-1",
        "meridian.dev/drain=yes:NoSchedule",
    ]);
    state_becomes(&socket, ("DRAIN", None), "DRAIN with the drain taint").await;
    cluster.kubectl_ok(&["taint", "node", "node-1", "meridian.dev/drain-"]);
    state_becomes(&socket, ("UP", None), "UP without it").await;

    // The weight follows the annotation; a bad one is reported and changes nothing.
    let annotate = |value: &str| {
        cluster.kubectl_ok(&[
            "annotate",
            "--overwrite",
            "service",
            "web",
            "-n",
            "shop",
            &format!("meridian.dev/weight={value}"),
        ]);
    };
    annotate("20");
    state_becomes(&socket, ("UP", Some("20")), "weight 20").await;
    annotate("lots");
    eventually(WAIT, "the bad weight reported", || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains(
            r#"Service shop/web: annotation meridian.dev/weight must be a whole number from 0 to 100, got "lots""#,
        )
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        server_state(&socket),
        Some(("UP".to_owned(), "20".to_owned())),
        "HAProxy keeps the weight it had"
    );

    // Not Ready: DOWN; Ready again: UP.
    let file = kube::config::Kubeconfig::read_from(&cluster.admin_kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
        kube::Api::all(kube::Client::try_from(config).unwrap());
    let set_ready = |status: &'static str| {
        let nodes = nodes.clone();
        async move {
            let patch = serde_json::json!({"status": {"conditions": [
                {"type": "Ready", "status": status, "reason": "e2e", "message": "e2e"}
            ]}});
            nodes
                .patch_status(
                    "node-1",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .unwrap();
        }
    };
    set_ready("False").await;
    state_becomes(&socket, ("DOWN", None), "DOWN while not Ready").await;
    set_ready("True").await;
    state_becomes(&socket, ("UP", Some("20")), "UP when Ready again").await;
}
