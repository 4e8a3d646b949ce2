//! The HAProxy edge from scratch on a real kube-apiserver: Nodes and a NodePort Service read
//! by `meridian controller` (with only the RBAC deploy/meridian.yaml grants), the Service's
//! node subset served over xDS to `meridian haproxy`, and `meridian node-agent` on every node
//! answering HAProxy's agent checks. A cordon moves the subset within seconds without a
//! reload; the Service's weight annotation reaches HAProxy's weights.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian::core::node_subsets::{subset, Node};
use support::kube::{repo, Controller, KubeCluster};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const NODES: usize = 4;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn address(i: usize) -> String {
    format!("127.0.1.{}", 10 + i)
}

fn inputs() -> String {
    let mut yaml = String::from(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {meridian.dev/enabled: "true"}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {meridian.dev/destination: node-ports, meridian.dev/node-subset-size: "2", meridian.dev/weight: "50"}
spec: {type: NodePort, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["10.244.0.7"], conditions: {ready: true}}]
ports: [{name: http, port: 8080}]
"#,
    );
    for i in 1..=NODES {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{i}}}\n\
             status:\n  conditions: [{{type: Ready, status: \"True\", reason: KubeletReady, message: ready}}]\n  \
             addresses: [{{type: InternalIP, address: \"{}\"}}]\n",
            address(i)
        ));
    }
    yaml
}

fn access_point(gateway_port: u16) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: edge}}
      spec: {{servers: [{{port: {{number: {gateway_port}, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.com]
        gateways: [edge]
        http: [{{route: [{{destination: {{host: web}}}}]}}]
"#
    )
}

/// The subset `meridian::core::node_subsets` chooses for shop/web when `cordoned` is.
fn expected(cordoned: Option<&str>) -> BTreeSet<String> {
    let nodes: Vec<Node> = (1..=NODES)
        .map(|i| Node {
            name: format!("node-{i}"),
            ready: true,
            unschedulable: cordoned == Some(format!("node-{i}").as_str()),
        })
        .collect();
    subset("shop/web", &nodes, 2)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

async fn answering(client: &reqwest::Client, port: u16) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        if let Ok(name) = get(client, port, "shop.example.com", "/").await {
            seen.insert(name);
        }
    }
    seen
}

/// The weights HAProxy shows for the servers that are UP (`show stat` on the Runtime API).
fn weights_up(socket: &Path) -> Vec<String> {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Vec::new();
    };
    let _ = stream.write_all(b"show stat\n");
    let mut csv = String::new();
    let _ = stream.read_to_string(&mut csv);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(svname), Some(status), Some(weight)) =
        (column("svname"), column("status"), column("weight"))
    else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| {
            f.get(svname).is_some_and(|s| s.starts_with('a')) && f.get(status) == Some(&"UP")
        })
        .filter_map(|f| f.get(weight).map(|w| (*w).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_follows_nodes_and_weights_from_the_api_server() {
    let cluster = KubeCluster::start();
    cluster.kubectl_ok(&["apply", "-f", &repo("crds")]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/accesspoints.meridian.dev",
    ]);
    cluster.kubectl_ok(&["apply", "-f", &repo("deploy/meridian.yaml")]);
    cluster.apply_ok(&inputs());
    let node_port: u16 = cluster
        .kubectl_ok(&[
            "get",
            "service",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .trim()
        .parse()
        .expect("an allocated node port");
    let work = tempfile::tempdir().unwrap();
    let _guard = KillByPidFile(work.path().join("haproxy/haproxy.pid"));
    // Every node: a backend on its node port, and its node agent.
    let agent_port = free_port();
    let mut backends = Vec::new();
    let mut agents = Vec::new();
    for i in 1..=NODES {
        let listener = tokio::net::TcpListener::bind((address(i).as_str(), node_port))
            .await
            .unwrap();
        let name: &'static str = Box::leak(format!("node-{i}").into_boxed_str());
        backends.push(Backend::start_with_listener(name, listener));
        agents.push(Running(
            Command::new(env!("CARGO_BIN_EXE_meridian"))
                .args(["node-agent", "--node", name])
                .args(["--addr", &format!("{}:{agent_port}", address(i))])
                .arg("--kubeconfig")
                .arg(&cluster.admin_kubeconfig)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(work.path().join(format!("agent-{i}.log"))).unwrap())
                .spawn()
                .unwrap(),
        ));
    }
    let controller = Controller::start(
        &cluster.controller_kubeconfig,
        work.path(),
        "replica-a",
        &["--namespace-selector", "meridian.dev/enabled=true"],
    );
    let gateway_port = free_port();
    cluster.apply_ok(&access_point(gateway_port));
    let files = work.path().join("haproxy");
    let node = MeridianProxy::start_haproxy_with(
        work.path(),
        bootstrap_options("edge-1", "shop/edge", controller.xds_port),
        &[
            "--dir",
            files.to_str().unwrap(),
            "--agent-port",
            &agent_port.to_string(),
            "--agent-inter",
            "300ms",
            "--check-inter",
            "300ms",
        ],
    );
    let client = client();
    let first = expected(None);
    eventually(WAIT, "HAProxy serves the Service's node subset", || async {
        answering(&client, gateway_port).await == first
    })
    .await;
    let socket = files.join("admin.sock");
    // The agents say `ready up 50%`: half the configured weight of 100.
    eventually(WAIT, "weights at 50%", || async {
        weights_up(&socket) == ["50", "50"]
    })
    .await;
    // HAProxy serves the routes a moment before the program logs their reload.
    eventually(WAIT, "the reload with the routes is logged", || async {
        node.log_text().contains("routes=[\"http.")
    })
    .await;
    let reloads = node.log_text().matches("HAProxy (re)loaded").count();

    // Under load: a cordon moves the subset; nothing fails, nothing reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed, client) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let counter = match get(&client, gateway_port, "shop.example.com", "/").await {
                    Ok(_) => &ok,
                    Err(_) => &failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let member = first.iter().next().unwrap().clone();
    let moved = expected(Some(&member));
    let cordoned = Instant::now();
    cluster.kubectl_ok(&["cordon", &member]);
    eventually(WAIT, "the subset without the cordoned node", || async {
        answering(&client, gateway_port).await == moved
    })
    .await;
    let took = cordoned.elapsed();
    eprintln!("cordon {member} -> subset {moved:?} through HAProxy in {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The Service's weight annotation: HAProxy's weights follow through the agents.
    cluster.kubectl_ok(&[
        "annotate",
        "--overwrite",
        "service",
        "web",
        "-n",
        "shop",
        "meridian.dev/weight=20",
    ]);
    eventually(WAIT, "weights at 20%", || async {
        weights_up(&socket) == ["20", "20"]
    })
    .await;
    cluster.kubectl_ok(&["uncordon", &member]);
    eventually(WAIT, "the first subset again", || async {
        answering(&client, gateway_port).await == first
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("during cordon, reweight and uncordon: {ok} requests, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(
        node.log_text().matches("HAProxy (re)loaded").count(),
        reloads,
        "node and weight changes reload nothing: {}",
        node.log_text()
    );
    drop(controller);
}
