//! `meridian haproxy` with a real HAProxy 2.6, fed by an in-process Meridian: the routes of
//! an AccessPoint served by HAProxy frontends, a node-port Service reached through its node
//! subset, servers following node changes through the Runtime API without a reload (under
//! load, no request failing), and what HAProxy refuses reported while the running
//! configuration keeps serving.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use meridian::core::node_subsets::{subset, Node};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// `meridian haproxy` for gateway `gateway`, its files in `dir/haproxy`.
fn haproxy_node(dir: &Path, gateway: &str, xds_port: u16, extra: &[&str]) -> MeridianProxy {
    let files = dir.join("haproxy");
    let files = files.to_str().unwrap();
    let mut args = vec![
        "--dir",
        files,
        "--agent-port",
        "0",
        "--check-inter",
        "200ms",
        "--drain-time",
        "3s",
    ];
    args.extend_from_slice(extra);
    MeridianProxy::start_haproxy_with(
        dir,
        bootstrap_options("edge-haproxy", gateway, xds_port),
        &args,
    )
}

fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

async fn status_of(
    client: &reqwest::Client,
    port: u16,
    host: &str,
    method: reqwest::Method,
    path: &str,
) -> (u16, String, String) {
    let response = client
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .send()
        .await;
    match response {
        Ok(r) => {
            let status = r.status().as_u16();
            let location = r
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, location, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, String::new(), e.to_string()),
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_fixture_is_served_by_haproxy_frontends() {
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = (dir.path().join("config"), dir.path().join("state"));
    std::fs::create_dir_all(&config).unwrap();
    let gateway_port = free_port();
    let fixture = include_str!("fixtures/shop.yaml")
        .replace("number: 8080", &format!("number: {gateway_port}"));
    std::fs::write(config.join("shop.yaml"), fixture).unwrap();
    let xds_port = free_port();
    let _meridian = start_meridian(&config, &state, xds_port).await;
    let _guard = KillByPidFile(dir.path().join("haproxy/haproxy.pid"));
    let stats = format!("127.0.0.1:{}", free_port());
    let node = haproxy_node(
        dir.path(),
        "edge/public",
        xds_port,
        &["--stats-addr", &stats],
    );
    let client = no_redirects();
    eventually(WAIT, "HAProxy serves the redirect route", || async {
        status_of(
            &client,
            gateway_port,
            "shop.example.com",
            reqwest::Method::GET,
            "/old",
        )
        .await
        .0 == 302
    })
    .await;
    let (_, location, _) = status_of(
        &client,
        gateway_port,
        "shop.example.com",
        reqwest::Method::GET,
        "/old?x=1",
    )
    .await;
    assert_eq!(location, "http://shop.example.com/new?x=1");
    let (status, _, body) = status_of(
        &client,
        gateway_port,
        "shop.example.com",
        reqwest::Method::POST,
        "/tea",
    )
    .await;
    assert_eq!((status, body.as_str()), (418, "short and stout"));
    // GET /tea is no teapot: the method is part of the match.
    let (status, _, _) = status_of(
        &client,
        gateway_port,
        "other.example.com",
        reqwest::Method::GET,
        "/",
    )
    .await;
    assert_eq!(status, 404, "no virtual host: 404, as in Envoy");
    let written = std::fs::read_to_string(dir.path().join("haproxy/haproxy.cfg")).unwrap();
    assert!(
        written.contains("hash-type consistent") && written.contains("balance hdr(x-user)"),
        "{written}"
    );
    assert!(written.contains("retries 3"), "{written}");
    // HAProxy's own metrics, for Prometheus.
    let metrics = client
        .get(format!("http://{stats}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("haproxy_frontend_http_requests_total"),
        "{metrics}"
    );
    assert!(
        count(&node.log_text(), "HAProxy (re)loaded") >= 1,
        "{}",
        node.log_text()
    );
}

const NODE_PORT_SHOP: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  template:
    service:
      metadata:
        name: web
        annotations: {meridian.dev/destination: node-ports, meridian.dev/node-subset-size: "2"}
      spec: {type: NodePort, ports: [{name: http, port: 80, nodePort: NODE_PORT}]}
    gateways:
    - metadata: {name: edge}
      spec: {servers: [{port: {number: GATEWAY_PORT, protocol: HTTP, name: http}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com]
        gateways: [edge]
        http:
        - headers: {response: {set: {x-edge: EDGE_TAG}}}
          route: [{destination: {host: web}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["10.244.0.7"], nodeName: node-1}]
ports: [{name: http, port: 8080}]
"#;

/// A node: its name, its address, and whether it is Ready and schedulable.
#[derive(Clone)]
struct TestNode {
    name: String,
    address: String,
    ready: bool,
    cordoned: bool,
}

fn node_yaml(n: &TestNode) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{unschedulable: {}}}\n\
         status:\n  conditions: [{{type: Ready, status: \"{}\"}}]\n  addresses: [{{type: InternalIP, address: {}}}]\n",
        n.name,
        n.cordoned,
        if n.ready { "True" } else { "False" },
        n.address
    )
}

/// `count` "nodes", each a loopback address (`<prefix>.<i>`) answering on the node port with
/// its name (`node-<i>`), Ready and schedulable.
async fn start_nodes(count: usize, prefix: &str, node_port: u16) -> (Vec<Backend>, Vec<TestNode>) {
    let mut backends = Vec::new();
    let mut nodes = Vec::new();
    for i in 1..=count {
        let address = format!("{prefix}.{i}");
        let listener = tokio::net::TcpListener::bind((address.as_str(), node_port))
            .await
            .unwrap();
        let name: &'static str = Box::leak(format!("node-{i}").into_boxed_str());
        backends.push(Backend::start_with_listener(name, listener));
        nodes.push(TestNode {
            name: name.to_owned(),
            address,
            ready: true,
            cordoned: false,
        });
    }
    (backends, nodes)
}

/// One change to the nodes.
type NodeChange<'a> = Box<dyn Fn(&mut Vec<TestNode>) + 'a>;

/// The node names `meridian::core::node_subsets` chooses for shop/web among `nodes`.
fn expected(nodes: &[TestNode]) -> BTreeSet<String> {
    let candidates: Vec<Node> = nodes
        .iter()
        .map(|n| Node {
            name: n.name.clone(),
            ready: n.ready,
            unschedulable: n.cordoned,
        })
        .collect();
    subset("shop/web", &candidates, 2)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The backends answering over `tries` requests.
async fn answering(client: &reqwest::Client, port: u16, tries: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        if let Ok(name) = get(client, port, "shop.example.com", "/").await {
            seen.insert(name);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_subsets_follow_node_changes_through_the_runtime_api_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let _guard = KillByPidFile(dir.path().join("haproxy/haproxy.pid"));
    let (config, state) = (dir.path().join("config"), dir.path().join("state"));
    std::fs::create_dir_all(&config).unwrap();
    let (gateway_port, node_port) = (free_port(), free_port());
    // Six "nodes", each a loopback address answering on the node port with its name.
    let (_backends, nodes) = start_nodes(6, "127.0.1", node_port).await;
    let write = |nodes: &[TestNode], tag: &str| {
        let mut yaml = NODE_PORT_SHOP
            .replace("NODE_PORT", &node_port.to_string())
            .replace("GATEWAY_PORT", &gateway_port.to_string())
            .replace("EDGE_TAG", tag);
        for n in nodes {
            yaml.push_str(&node_yaml(n));
        }
        std::fs::write(config.join("shop.yaml"), yaml).unwrap();
    };
    // Five nodes to begin with; node-6 joins later.
    write(&nodes[..5], "one");
    let xds_port = free_port();
    let _meridian = start_meridian(&config, &state, xds_port).await;
    let node = haproxy_node(dir.path(), "shop/edge", xds_port, &[]);
    let client = client();
    let want = expected(&nodes[..5]);
    eventually(WAIT, "the subset answers through HAProxy", || async {
        answering(&client, gateway_port, 20).await == want
    })
    .await;
    // HAProxy serves the routes a moment before the program logs their reload.
    eventually(WAIT, "the reload with the routes is logged", || async {
        node.log_text().contains("routes=[\"http.")
    })
    .await;
    let reloads_before = count(&node.log_text(), "HAProxy (re)loaded");

    // Load for the whole churn: wrk, 8 keep-alive connections, stopped with SIGINT (it then
    // prints its summary).
    let wrk = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            "8",
            "-d",
            "60s",
            "-H",
            "Host: shop.example.com",
        ])
        .arg(format!("http://127.0.0.1:{gateway_port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk (make test installs it)");
    let mut current: Vec<TestNode> = nodes[..5].to_vec();
    let steps: Vec<(&str, NodeChange)> = vec![
        (
            "cordon a subset member",
            Box::new(|n: &mut Vec<TestNode>| {
                let member = expected(n).into_iter().next().unwrap();
                n.iter_mut().find(|x| x.name == member).unwrap().cordoned = true;
            }),
        ),
        (
            "node-6 joins",
            Box::new(|n: &mut Vec<TestNode>| n.push(nodes[5].clone())),
        ),
        (
            "a subset member turns NotReady",
            Box::new(|n: &mut Vec<TestNode>| {
                let member = expected(n).into_iter().next().unwrap();
                n.iter_mut().find(|x| x.name == member).unwrap().ready = false;
            }),
        ),
        (
            "a subset member leaves",
            Box::new(|n: &mut Vec<TestNode>| {
                let member = expected(n).into_iter().next_back().unwrap();
                n.retain(|x| x.name != member);
            }),
        ),
        (
            "the cordoned node is uncordoned",
            Box::new(|n: &mut Vec<TestNode>| {
                n.iter_mut().for_each(|x| x.cordoned = false);
            }),
        ),
    ];
    for (what, change) in &steps {
        let before = expected(&current);
        change(&mut current);
        let want = expected(&current);
        assert!(
            before.difference(&want).count() <= 1,
            "{what}: {before:?} -> {want:?}"
        );
        // Requests in flight on the nodes while one leaves the subset: all finish.
        let in_flight: Vec<_> = (0..6)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    get(&client, gateway_port, "shop.example.com", "/slow").await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        write(&current, "one");
        let took = eventually(WAIT, what, || async {
            answering(&client, gateway_port, 20).await == want
        })
        .await;
        eprintln!("{what}: {before:?} -> {want:?} in {took:?}");
        for request in in_flight {
            let answer = request.await.unwrap();
            assert!(
                answer.as_ref().is_ok_and(|b| before.contains(b)),
                "{what}: in flight: {answer:?}"
            );
        }
    }
    let log = node.log_text();
    assert_eq!(
        count(&log, "HAProxy (re)loaded"),
        reloads_before,
        "node changes reload nothing: {log}"
    );
    assert!(
        count(&log, "servers updated through the Runtime API") >= steps.len(),
        "{log}"
    );
    // Route changes are frontend changes: a reload each, under the same load.
    let edits = ["two", "three", "four", "five", "six"];
    for tag in edits {
        write(&current, tag);
        eventually(WAIT, "the new response header", || async {
            client
                .get(format!("http://127.0.0.1:{gateway_port}/"))
                .header("host", "shop.example.com")
                .send()
                .await
                .is_ok_and(|r| r.headers().get("x-edge").is_some_and(|v| v == tag))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: kill(2) on the wrk this test started.
    unsafe {
        libc::kill(wrk.id() as i32, libc::SIGINT);
    }
    let out = wrk.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("wrk under churn:\n{summary}");
    let requests: u64 = summary
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("wrk's request count");
    assert!(requests > 500, "{summary}");
    assert!(
        !summary.contains("Non-2xx") && !summary.contains("Socket errors"),
        "no request fails while nodes and routes change: {summary}"
    );
    assert_eq!(
        count(&node.log_text(), "HAProxy (re)loaded"),
        reloads_before + edits.len()
    );
}

fn plain_shop(gateway_ports: &[u16], backend_port: u16, tag: &str) -> String {
    let servers: Vec<String> = gateway_ports
        .iter()
        .map(|p| {
            format!("{{port: {{number: {p}, protocol: HTTP, name: http-{p}}}, hosts: [\"*\"]}}")
        })
        .collect();
    format!(
        r#"{service}apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: edge}}
      spec: {{servers: [{servers}]}}
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.com]
        gateways: [edge]
        http: [{{headers: {{response: {{set: {{x-edge: {tag}}}}}}}, route: [{{destination: {{host: web}}}}]}}]
"#,
        service = loopback_service("web", backend_port),
        servers = servers.join(", ")
    )
}

fn haproxy_master(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("haproxy/haproxy.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_the_running_config_and_haproxy_outlives_its_keeper() {
    let dir = tempfile::tempdir().unwrap();
    let _guard = KillByPidFile(dir.path().join("haproxy/haproxy.pid"));
    let (config, state) = (dir.path().join("config"), dir.path().join("state"));
    std::fs::create_dir_all(&config).unwrap();
    let backend = Backend::start("web").await;
    let (port, taken) = (free_port(), free_port());
    std::fs::write(
        config.join("shop.yaml"),
        plain_shop(&[port], backend.port, "one"),
    )
    .unwrap();
    let xds_port = free_port();
    let meridian = start_meridian(&config, &state, xds_port).await;
    let admin = meridian.admin_addr;
    let mut node = haproxy_node(dir.path(), "shop/edge", xds_port, &[]);
    let client = client();
    let tag = |client: reqwest::Client| async move {
        client
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "shop.example.com")
            .send()
            .await
            .ok()
            .and_then(|r| {
                r.headers()
                    .get("x-edge")
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
            })
    };
    eventually(WAIT, "HAProxy serves the shop", || async {
        tag(client.clone()).await.as_deref() == Some("one")
    })
    .await;

    // A second server on a port something else holds: HAProxy cannot load it. The reason is
    // NACKed, the quarantine holds the change back, and the running configuration serves.
    let holder = std::net::TcpListener::bind(("0.0.0.0", taken)).unwrap();
    std::fs::write(
        config.join("shop.yaml"),
        plain_shop(&[port, taken], backend.port, "two"),
    )
    .unwrap();
    eventually(WAIT, "the NACK with HAProxy's reason", || async {
        let syncz = admin_json(&client, admin, "/debug/syncz").await;
        syncz
            .to_string()
            .contains(&format!("cannot bind 0.0.0.0:{taken}"))
    })
    .await;
    assert_eq!(
        tag(client.clone()).await.as_deref(),
        Some("one"),
        "the running configuration serves"
    );
    let statuses = admin_json(&client, admin, "/debug/status").await;
    assert!(statuses.to_string().contains("Rejected"), "{statuses}");
    // Fixed at once (another port): it applies.
    let second = free_port();
    std::fs::write(
        config.join("shop.yaml"),
        plain_shop(&[port, second], backend.port, "three"),
    )
    .unwrap();
    eventually(WAIT, "the fixed change applies", || async {
        tag(client.clone()).await.as_deref() == Some("three")
    })
    .await;
    eventually(WAIT, "the new port serves", || async {
        get(&client, second, "shop.example.com", "/")
            .await
            .as_deref()
            == Ok("web")
    })
    .await;
    drop(holder);

    // HAProxy killed: started again on the configuration it had.
    let master = haproxy_master(dir.path());
    // SAFETY: kill(2) on the HAProxy this test's node started.
    unsafe {
        libc::kill(master, libc::SIGKILL);
    }
    let took = eventually(WAIT, "HAProxy started again", || async {
        std::fs::read_to_string(dir.path().join("haproxy/haproxy.pid"))
            .is_ok_and(|p| p.trim() != master.to_string())
            && tag(client.clone()).await.as_deref() == Some("three")
    })
    .await;
    eprintln!("HAProxy back {took:?} after SIGKILL");
    assert!(node
        .log_text()
        .contains("HAProxy is not running; starting it again"));

    // `meridian haproxy` itself killed: HAProxy keeps serving, and a new one adopts it.
    let starts = count(&node.log_text(), "HAProxy started");
    drop(node);
    for _ in 0..20 {
        assert_eq!(
            tag(client.clone()).await.as_deref(),
            Some("three"),
            "served without its keeper"
        );
    }
    node = haproxy_node(dir.path(), "shop/edge", xds_port, &[]);
    std::fs::write(
        config.join("shop.yaml"),
        plain_shop(&[port, second], backend.port, "four"),
    )
    .unwrap();
    eventually(WAIT, "the adopted HAProxy follows edits", || async {
        tag(client.clone()).await.as_deref() == Some("four")
    })
    .await;
    let log = node.log_text();
    assert_eq!(
        count(&log, "HAProxy started"),
        starts,
        "adopted, not started anew: {log}"
    );

    // A Service asking for node ports without being a NodePort: a problem naming the file and
    // field; nothing else is disturbed.
    std::fs::write(
        config.join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop, annotations: {meridian.dev/destination: node-ports}}\nspec: {ports: [{port: 80}]}\n",
    )
    .unwrap();
    eventually(WAIT, "the bad Service reported", || async {
        let problems = admin_json(&client, admin, "/debug/problems")
            .await
            .to_string();
        problems.contains("bad.yaml")
            && problems.contains("spec.type")
            && problems.contains("spec.ports[0].nodePort")
    })
    .await;
    assert_eq!(tag(client.clone()).await.as_deref(), Some("four"));
    // A master CLI that does not answer (here: its socket gone; on a loaded machine: slow)
    // is not a master that exited: no second HAProxy is started beside it (the watchdog looks
    // every second), and SIGTERM still stops it, found by its pid file.
    std::fs::remove_file(dir.path().join("haproxy/master.sock")).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(&node.log_text(), "HAProxy started"),
        starts,
        "no HAProxy started beside the running one: {}",
        node.log_text()
    );
    assert_eq!(tag(client.clone()).await.as_deref(), Some("four"));
    // SIGTERM: HAProxy stops softly with it.
    let status = node.terminate();
    assert!(status.success(), "{status}");
    eventually(WAIT, "HAProxy stopped with meridian haproxy", || async {
        tag(client.clone()).await.is_none()
    })
    .await;
}

/// Envoy is served the same subsets over EDS (node address, node port) and follows a cordon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reaches_the_same_node_subset_over_eds() {
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = (dir.path().join("config"), dir.path().join("state"));
    std::fs::create_dir_all(&config).unwrap();
    let (gateway_port, node_port) = (free_port(), free_port());
    let (_backends, mut nodes) = start_nodes(5, "127.0.2", node_port).await;
    let write = |nodes: &[TestNode]| {
        let mut yaml = NODE_PORT_SHOP
            .replace("NODE_PORT", &node_port.to_string())
            .replace("GATEWAY_PORT", &gateway_port.to_string())
            .replace("EDGE_TAG", "envoy");
        for n in nodes {
            yaml.push_str(&node_yaml(n));
        }
        std::fs::write(config.join("shop.yaml"), yaml).unwrap();
    };
    write(&nodes);
    let xds_port = free_port();
    let _meridian = start_meridian(&config, &state, xds_port).await;
    let _envoy = Envoy::start(dir.path(), "edge-envoy", "shop/edge", xds_port, false);
    let client = client();
    let want = expected(&nodes);
    eventually(WAIT, "Envoy reaches the subset", || async {
        answering(&client, gateway_port, 20).await == want
    })
    .await;
    let member = want.iter().next().unwrap().clone();
    nodes
        .iter_mut()
        .find(|n| n.name == member)
        .unwrap()
        .cordoned = true;
    let moved = expected(&nodes);
    write(&nodes);
    eventually(WAIT, "Envoy follows the cordon", || async {
        answering(&client, gateway_port, 20).await == moved
    })
    .await;
}
