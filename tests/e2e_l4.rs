//! The L4 tier over ADS, with a real Envoy as the L4 node: Meridian allocates the AccessPoint a
//! VIP, serves the L4 node a TCP listener on it that forwards to the gateway pods behind the
//! AccessPoint's Service, and the gateways (real Envoys too) route to the backends. A gateway
//! that dies leaves the L4 node's table within its health check's interval × threshold.

mod support;

use std::time::{Duration, Instant};

use meridian::control_plane::admin::ops::pb::ops_client::OpsClient;
use meridian::control_plane::admin::ops::pb::ProxyStatusRequest;
use meridian::control_plane::bootstrap::BootstrapOptions;
use support::*;

const VIP: &str = "127.77.0.1";

/// The L4 set-up of [`support::l4::manifests`] on loopback: gateway pods 127.0.0.11 and
/// 127.0.0.12, the VIP pool 127.77.0.0/29.
fn manifests(vip_port: u16, gateway_port: u16, alpha: u16, beta: u16, vip: &str) -> String {
    support::l4::manifests(
        ["127.0.0.11", "127.0.0.12"],
        "127.77.0.0/29",
        (vip_port, gateway_port),
        (alpha, beta),
        vip,
    )
}

/// The shop tier of [`manifests`] served by Meridian: its two echoing backends, its ports,
/// and the manifest directory (rewritten with another `spec.vip` by [`ShopTier::write`]).
struct ShopTier {
    work: tempfile::TempDir,
    alpha: Backend,
    beta: Backend,
    vip_port: u16,
    gateway_port: u16,
    xds_port: u16,
    meridian: meridian::control_plane::standalone::Running,
}

impl ShopTier {
    async fn start() -> ShopTier {
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(work.path().join("config")).unwrap();
        let (alpha, beta) = (
            Backend::echoing_forwarded_for("alpha").await,
            Backend::echoing_forwarded_for("beta").await,
        );
        let (vip_port, gateway_port, xds_port) = (free_port(), free_port(), free_port());
        let config = work.path().join("config");
        let state = work.path().join("state");
        std::fs::write(
            config.join("shop.yaml"),
            manifests(vip_port, gateway_port, alpha.port, beta.port, "{}"),
        )
        .unwrap();
        let meridian = start_meridian(&config, &state, xds_port).await;
        ShopTier {
            work,
            alpha,
            beta,
            vip_port,
            gateway_port,
            xds_port,
            meridian,
        }
    }

    /// The manifests again, with `vip` as the AccessPoint's `spec.vip`.
    fn write(&self, vip: &str) {
        let manifests = manifests(
            self.vip_port,
            self.gateway_port,
            self.alpha.port,
            self.beta.port,
            vip,
        );
        std::fs::write(self.work.path().join("config/shop.yaml"), manifests).unwrap();
    }
}

/// Meridian lists `node_id` as an L4 node with CDS, EDS and LDS in sync.
async fn assert_synced_l4(xds_port: u16, node_id: &str, log: &str) {
    let mut ops = OpsClient::connect(format!("http://127.0.0.1:{xds_port}"))
        .await
        .unwrap();
    let status = ops
        .proxy_status(ProxyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let node = status
        .proxies
        .iter()
        .find(|p| p.node_id == node_id)
        .expect("the L4 node is connected");
    assert_eq!(node.role, "l4");
    for kind in ["CDS", "EDS", "LDS"] {
        let sync = node.types.iter().find(|t| t.r#type == kind).unwrap();
        assert_eq!(sync.state, "SYNCED", "{kind}: {sync:?}\n{log}");
    }
}

/// Waits until new connections through the VIP reach both gateways.
async fn both_gateways_answer(vip_port: u16) {
    eventually(
        Duration::from_secs(30),
        "both gateways answer through the VIP",
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..30 {
                if let Ok(backend) = through_vip(vip_port).await {
                    seen.insert(backend);
                }
            }
            seen.len() == 2
        },
    )
    .await;
}

/// 60 new connections through the VIP just after gateway A died: every answer is B's, and at
/// most two (those A took as it died) among the first ten are lost. How many were lost.
async fn connections_after_gateway_a_died(vip_port: u16) -> usize {
    let mut lost = 0;
    for attempt in 0..60 {
        match through_vip(vip_port).await {
            Ok(backend) => assert_eq!(backend, "beta", "connection {attempt} after A died"),
            Err(error) => {
                lost += 1;
                assert!(attempt < 10 && lost <= 2, "connection {attempt}: {error}");
            }
        }
    }
    lost
}

/// One request on a new connection to the VIP: the backend that answered.
async fn through_vip(vip_port: u16) -> Result<String, String> {
    through_vip_from(vip_port, [127, 0, 0, 1])
        .await
        .map(|answer| answer.split(' ').next().unwrap_or_default().to_owned())
}

/// One request on a new connection to the VIP from `source`: the backend's whole answer.
async fn through_vip_from(vip_port: u16, source: [u8; 4]) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(0)
        .local_address(std::net::IpAddr::from(source))
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{VIP}:{vip_port}/"))
        .header("host", "shop.example.test")
        .send()
        .await;
    body_of(response).await
}

/// A real Envoy as an L4 node of the hub's own cluster.
fn l4_envoy(dir: &std::path::Path, xds_port: u16) -> Envoy {
    Envoy::launch(
        dir,
        BootstrapOptions {
            l4: true,
            ..bootstrap_options("l4-1", "meridian-system/l4", xds_port)
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_l4_node_serves_the_vip_and_drops_a_dead_gateway() {
    let tier = ShopTier::start().await;
    let (work, vip_port, xds_port) = (&tier.work, tier.vip_port, tier.xds_port);
    let mut gateway_a = Some(Envoy::start(
        work.path(),
        "gw-a",
        "shop/gw-a",
        xds_port,
        false,
    ));
    let _gateway_b = Envoy::start(work.path(), "gw-b", "shop/gw-b", xds_port, true);
    let l4 = l4_envoy(work.path(), xds_port);

    // Both gateways get connections: Maglev without a hash policy picks per connection.
    both_gateways_answer(vip_port).await;

    // The L4 node is listed as one, and took everything it was sent.
    assert_synced_l4(xds_port, "l4-1", &l4.log_text()).await;

    // Gateway A dies. A connection it had accepted as it died is lost with it; new ones it
    // refuses try gateway B, and two refusals in a row eject it before any check runs.
    drop(gateway_a.take());
    let lost = connections_after_gateway_a_died(vip_port).await;
    // The active check marks it failed within its interval × threshold (2 s × 2), plus a
    // check's timeout.
    let killed = Instant::now();
    let admin = format!("http://127.0.0.1:{}/clusters", l4.admin_port);
    let client = client();
    let failed_checks = eventually(Duration::from_secs(8), "gateway A fails its checks", || {
        let (client, admin) = (client.clone(), admin.clone());
        async move {
            let Ok(response) = client.get(&admin).send().await else {
                return false;
            };
            response.text().await.is_ok_and(|table| {
                table.lines().any(|line| {
                    line.contains("127.0.0.11:")
                        && line.contains("health_flags")
                        && line.contains("failed_active_hc")
                })
            })
        }
    })
    .await;
    println!(
        "{lost} of 60 new connections lost as gateway A died; it failed its active checks \
         {:?} after the last one",
        failed_checks.max(killed.elapsed())
    );
    tier.meridian.shutdown().await.unwrap();
}

/// A request straight to a gateway listener at `address`, behind a PROXY protocol v2 header
/// that says the connection came from `client` (as an L4 node would); the response's body.
async fn with_proxy_header(address: std::net::SocketAddrV4, client: [u8; 4]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(client);
    header.extend(address.ip().octets());
    header.extend(40000u16.to_be_bytes());
    header.extend(address.port().to_be_bytes());
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(&header).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: shop.example.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response));
    read.await.unwrap().unwrap();
    response
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// With `spec.vip.proxyProtocol`, gateways learn the client's address from the L4 node: their
/// listeners require a PROXY protocol header (so a connection around the L4 tier is refused),
/// the L4 node sends one (so connections through the VIP still work), and the address in it is
/// the one the gateway forwards as X-Forwarded-For. (Envoy replaces loopback addresses in
/// X-Forwarded-For with its own, so the address is checked with a header sent by hand.)
/// Gateway A is an Envoy, gateway B `meridian proxy`: both must honour it; the L4 node is an
/// Envoy, then `meridian l4`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_carries_the_client_address_to_the_gateways() {
    let tier = ShopTier::start().await;
    let (work, vip_port, xds_port) = (&tier.work, tier.vip_port, tier.xds_port);
    let gateway_port = tier.gateway_port;
    let _gateway_a = Envoy::start(work.path(), "gw-a", "shop/gw-a", xds_port, false);
    let _gateway_b = MeridianProxy::start(
        work.path(),
        bootstrap_options("gw-b", "shop/gw-b", xds_port),
    );
    let l4 = l4_envoy(work.path(), xds_port);
    let gateway_a = std::net::SocketAddrV4::new([127, 0, 0, 11].into(), gateway_port);
    let gateway_b = std::net::SocketAddrV4::new([127, 0, 0, 12].into(), gateway_port);
    let direct = |gateway| async move {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap()
            .get(format!("http://{gateway}/"))
            .send()
            .await
    };
    eventually(Duration::from_secs(30), "both gateways up", || async {
        direct(gateway_a).await.is_ok() && direct(gateway_b).await.is_ok()
    })
    .await;

    tier.write("{proxyProtocol: true}");
    eventually(
        Duration::from_secs(30),
        "the gateway refusing a connection without a PROXY header",
        || async { direct(gateway_a).await.is_err() && direct(gateway_b).await.is_err() },
    )
    .await;
    // Through the L4 node connections work again once it has the change too: it sends the
    // header.
    eventually(
        Duration::from_secs(30),
        "an answer through the VIP",
        || async { through_vip(vip_port).await.is_ok() },
    )
    .await;
    for attempt in 0..20 {
        let answer = through_vip(vip_port).await;
        assert!(answer.is_ok(), "connection {attempt}: {answer:?}");
    }
    let answer = with_proxy_header(gateway_a, [203, 0, 113, 7]).await;
    assert_eq!(answer, "alpha 203.0.113.7");
    let answer = with_proxy_header(gateway_b, [203, 0, 113, 8]).await;
    assert_eq!(answer, "beta 203.0.113.8");

    // `meridian l4` in the Envoy's place sends the header too: both gateways forward the
    // client's own address.
    drop(l4);
    let _l4 = meridian_l4(work.path(), "l4-m", xds_port, free_port());
    eventually(
        Duration::from_secs(30),
        "gateway B names the client through meridian l4",
        || async {
            through_vip_from(vip_port, [127, 0, 0, 9])
                .await
                .is_ok_and(|answer| answer == "beta 127.0.0.9")
        },
    )
    .await;
    for attempt in 0..20 {
        let answer = through_vip_from(vip_port, [127, 0, 0, 9]).await;
        assert!(
            answer.as_ref().is_ok_and(|a| a.ends_with(" 127.0.0.9")),
            "connection {attempt} through meridian l4: {answer:?}"
        );
    }
    tier.meridian.shutdown().await.unwrap();
}

/// One request to the VIP on a connection from `source` (address and port fixed, so its
/// 5-tuple is known): the backend that answered. The connection is reset after the response,
/// so the same 5-tuple can be used again at once.
async fn ask_from(source: std::net::SocketAddr, vip_port: u16) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
    socket.bind(source).map_err(|e| e.to_string())?;
    let vip = format!("{VIP}:{vip_port}").parse().unwrap();
    let connect = tokio::time::timeout(Duration::from_secs(3), socket.connect(vip));
    let mut stream = connect
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: shop.example.test\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let read = async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before a whole response".to_owned());
            }
            response.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&response).to_string();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .ok_or("no content-length")?;
            if body.len() >= length {
                return Ok(body[..length].to_owned());
            }
        }
    };
    let body = tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .map_err(|_| "no response in time".to_owned())??;
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(|e| e.to_string())?;
    Ok(body.split(' ').next().unwrap_or_default().to_owned())
}

/// `meridian l4` as an L4 node of the hub's own cluster, its admin on `admin_port`.
fn meridian_l4(
    dir: &std::path::Path,
    node_id: &str,
    xds_port: u16,
    admin_port: u16,
) -> MeridianProxy {
    MeridianProxy::start_l4(
        dir,
        BootstrapOptions {
            l4: true,
            admin_port,
            ..bootstrap_options(node_id, "meridian-system/l4", xds_port)
        },
    )
}

/// The L4 node's `/config_dump` entry of the one cluster.
async fn l4_cluster(admin_port: u16) -> serde_json::Value {
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let dump = admin_json(&client(), admin, "/config_dump").await;
    dump["clusters"][0].clone()
}

fn gateway_ids(cluster: &serde_json::Value, state: &str) -> Vec<String> {
    cluster[state]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// `meridian l4` in front of an Envoy gateway and a `meridian proxy` gateway: it serves the
/// VIP, a second node maps the same 5-tuples to the same gateways with nothing shared, a dead
/// gateway costs at most the connections it held and leaves the table within its check's
/// interval × threshold, and comes back when it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meridian_l4_node_hashes_5_tuples_alike_and_drops_a_dead_gateway() {
    let tier = ShopTier::start().await;
    let (work, vip_port, xds_port) = (&tier.work, tier.vip_port, tier.xds_port);
    let mut gateway_a = Some(Envoy::start(
        work.path(),
        "gw-a",
        "shop/gw-a",
        xds_port,
        false,
    ));
    let _gateway_b = MeridianProxy::start(
        work.path(),
        bootstrap_options("gw-b", "shop/gw-b", xds_port),
    );
    let first_admin = free_port();
    let first = meridian_l4(work.path(), "l4-1", xds_port, first_admin);

    let sources: Vec<std::net::SocketAddr> = (0..40)
        .map(|i| {
            format!("127.0.0.{}:{}", 20 + i % 4, 43000 + i)
                .parse()
                .unwrap()
        })
        .collect();
    let mapping = |label: &'static str| {
        let sources = sources.clone();
        async move {
            let mut seen = Vec::new();
            for source in &sources {
                match ask_from(*source, vip_port).await {
                    Ok(backend) => seen.push(backend),
                    Err(error) => panic!("{label}: from {source}: {error}"),
                }
            }
            seen
        }
    };
    both_gateways_answer(vip_port).await;
    let by_first = mapping("first node").await;
    assert!(
        by_first.contains(&"alpha".to_owned()) && by_first.contains(&"beta".to_owned()),
        "40 5-tuples spread over both gateways: {by_first:?}"
    );
    // The same 5-tuples asked again: the same gateways.
    assert_eq!(mapping("first node again").await, by_first);

    // Meridian lists the node as an L4 node, in sync.
    assert_synced_l4(xds_port, "l4-1", &first.log_text()).await;
    let ready = admin_text(
        &client(),
        format!("127.0.0.1:{first_admin}").parse().unwrap(),
        "/ready",
    )
    .await;
    assert!(
        ready.starts_with("LIVE\n") && ready.contains(" serving "),
        "{ready}"
    );

    // Another node, sharing nothing with the first (not even the ADS protocol): the same
    // 5-tuples go the same way.
    drop(first);
    let second_admin = free_port();
    // The second node asks over delta ADS.
    let second = MeridianProxy::start_l4(
        work.path(),
        BootstrapOptions {
            l4: true,
            delta: true,
            admin_port: second_admin,
            ..bootstrap_options("l4-2", "meridian-system/l4", xds_port)
        },
    );
    eventually(
        Duration::from_secs(30),
        "the second node serves",
        || async { through_vip(vip_port).await.is_ok() },
    )
    .await;
    assert_eq!(mapping("second node").await, by_first);

    // Gateway A dies. New connections it refuses are tried on B, and refusals eject it.
    drop(gateway_a.take());
    let killed = Instant::now();
    let lost = connections_after_gateway_a_died(vip_port).await;
    // Its active checks fail it within interval × threshold (2 s × 2) plus a timeout.
    let failed = eventually(
        Duration::from_secs(8),
        "gateway A fails its checks",
        || async {
            gateway_ids(&l4_cluster(second_admin).await, "failed")
                .iter()
                .any(|id| id.starts_with("127.0.0.11:"))
        },
    )
    .await;
    println!(
        "meridian l4: {lost} of 60 new connections lost as gateway A died; failed by its \
         checks {:?} after it died",
        failed.max(killed.elapsed())
    );
    // Every 5-tuple that went to A now goes to B; those that went to B stay.
    assert!(mapping("without A").await.iter().all(|b| b == "beta"));

    // A comes back: its checks pass, and the 5-tuples return to it.
    let _gateway_a = Envoy::start(work.path(), "gw-a", "shop/gw-a", xds_port, false);
    eventually(
        Duration::from_secs(30),
        "gateway A back in the table",
        || async {
            let cluster = l4_cluster(second_admin).await;
            gateway_ids(&cluster, "available").len() == 2
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the first mapping again",
        || async { mapping("A back").await == by_first },
    )
    .await;
    drop(second);
    tier.meridian.shutdown().await.unwrap();
}

/// A VIP pool for the hub's own cluster and an AccessPoint `dns` whose Service's UDP port
/// `vip_port` (and the same TCP port, with `tcp`) targets `gateway_port` on `gateways`.
fn dns_manifests((vip_port, gateway_port): (u16, u16), gateways: &[&str], tcp: bool) -> String {
    let endpoints: Vec<String> = gateways
        .iter()
        .map(|g| format!("{{addresses: [\"{g}\"]}}"))
        .collect();
    let endpoints = endpoints.join(", ");
    let (tcp_endpoint_port, tcp_port) = if tcp {
        (
            format!(", {{name: dns-tcp, port: {gateway_port}}}"),
            format!(
                ", {{name: dns-tcp, port: {vip_port}, protocol: TCP, targetPort: {gateway_port}}}"
            ),
        )
    } else {
        Default::default()
    };
    format!(
        r#"apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {{name: local}}
spec:
  zone: local-1
  vipPools: [{{name: lb, cidrs: ["127.77.0.0/29"]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: dns-1, namespace: dns, labels: {{kubernetes.io/service-name: dns}}}}
addressType: IPv4
endpoints: [{endpoints}]
ports: [{{name: dns, port: {gateway_port}, protocol: UDP}}{tcp_endpoint_port}]
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: dns, namespace: dns}}
spec:
  template:
    service:
      metadata: {{name: dns}}
      spec: {{ports: [{{name: dns, port: {vip_port}, protocol: UDP, targetPort: {gateway_port}}}{tcp_port}]}}
"#
    )
}

/// A UDP "gateway": answers each datagram with `<name> <sender>`.
async fn udp_echo(
    address: std::net::SocketAddr,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    let socket = tokio::net::UdpSocket::bind(address).await.unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 2048];
        while let Ok((_, from)) = socket.recv_from(&mut buffer).await {
            let _ = socket
                .send_to(format!("{name} {from}").as_bytes(), from)
                .await;
        }
    })
}

/// One datagram to the VIP from `socket`: the answering gateway's name, if one answered.
async fn ask_udp(socket: &tokio::net::UdpSocket, vip: std::net::SocketAddr) -> Option<String> {
    socket.send_to(b"hello", vip).await.ok()?;
    let mut buffer = [0u8; 2048];
    let (length, _) =
        tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buffer))
            .await
            .ok()?
            .ok()?;
    let answer = String::from_utf8_lossy(&buffer[..length]).to_string();
    answer.split(' ').next().map(str::to_owned)
}

/// A UDP port of the AccessPoint's Service: Envoy's UDP proxy and `meridian l4` both carry
/// datagrams through the VIP; with `meridian l4` a flow (client address and port) stays on its
/// gateway, flows spread over both, a flow whose gateway died moves to the other within a few
/// datagrams, and a full flow table makes room by dropping the least recently used flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_through_the_vip_keep_their_gateway_and_move_off_a_dead_one() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let (vip_port, gateway_port, xds_port) = (free_port(), free_port(), free_port());
    let write = |gateways: &[&str]| {
        let manifests = dns_manifests((vip_port, gateway_port), gateways, false);
        std::fs::write(config.join("dns.yaml"), manifests).unwrap()
    };
    write(&["127.0.0.11", "127.0.0.12"]);
    let a: std::net::SocketAddr = format!("127.0.0.11:{gateway_port}").parse().unwrap();
    let b: std::net::SocketAddr = format!("127.0.0.12:{gateway_port}").parse().unwrap();
    let mut gateway_a = Some(udp_echo(a, "alpha").await);
    let _gateway_b = udp_echo(b, "beta").await;
    let meridian = start_meridian(&config, &work.path().join("state"), xds_port).await;
    let vip: std::net::SocketAddr = format!("{VIP}:{vip_port}").parse().unwrap();
    let udp_client = || async { tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap() };

    // Envoy's UDP proxy, from the same configuration.
    let envoy = l4_envoy(work.path(), xds_port);
    let socket = udp_client().await;
    eventually(
        Duration::from_secs(30),
        "an answer through Envoy",
        || async { ask_udp(&socket, vip).await.is_some() },
    )
    .await;
    drop(envoy);

    let admin_port = free_port();
    let node = meridian_l4(work.path(), "l4-udp", xds_port, admin_port);
    let sockets = futures::future::join_all((0..16).map(|_| udp_client())).await;
    eventually(
        Duration::from_secs(30),
        "an answer through meridian l4",
        || async { ask_udp(&sockets[0], vip).await.is_some() },
    )
    .await;
    let mut first = Vec::new();
    for socket in &sockets {
        let gateway = ask_udp(socket, vip).await.expect("an answer");
        for _ in 0..3 {
            assert_eq!(
                ask_udp(socket, vip).await.as_deref(),
                Some(gateway.as_str())
            );
        }
        first.push(gateway);
    }
    assert!(
        first.iter().any(|g| g == "alpha") && first.iter().any(|g| g == "beta"),
        "16 flows over both gateways: {first:?}"
    );

    // A third gateway joins: every flow keeps its gateway (the table alone would move about a
    // third of them), while new flows reach the newcomer.
    let c: std::net::SocketAddr = format!("127.0.0.13:{gateway_port}").parse().unwrap();
    let _gateway_c = udp_echo(c, "gamma").await;
    write(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    eventually(Duration::from_secs(30), "a new flow on gamma", || async {
        let socket = udp_client().await;
        ask_udp(&socket, vip).await.as_deref() == Some("gamma")
    })
    .await;
    for (socket, gateway) in sockets.iter().zip(&first) {
        assert_eq!(
            ask_udp(socket, vip).await.as_ref(),
            Some(gateway),
            "a flow after gamma joined"
        );
    }
    write(&["127.0.0.11", "127.0.0.12"]);
    eventually(
        Duration::from_secs(30),
        "gamma gone from the node",
        || async { gateway_ids(&l4_cluster(admin_port).await, "available").len() == 2 },
    )
    .await;

    // Alpha dies: its flows move to beta within a few datagrams (refusals are failures; two in
    // a row eject it); beta's flows stay.
    if let Some(task) = gateway_a.take() {
        task.abort();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (socket, before) in sockets.iter().zip(&first) {
        let mut answers = Vec::new();
        for _ in 0..6 {
            answers.push(ask_udp(socket, vip).await);
        }
        let last = answers.last().cloned().flatten();
        assert_eq!(
            last.as_deref(),
            Some("beta"),
            "a flow once on {before}: {answers:?}"
        );
        if before == "beta" {
            assert!(
                answers.iter().all(|a| a.as_deref() == Some("beta")),
                "{answers:?}"
            );
        }
    }
    drop(node);

    // A table of four flows: sixteen clients still get answers, the oldest flows making room.
    let _gateway_a = udp_echo(a, "alpha").await;
    let node = MeridianProxy::start_l4_with(
        work.path(),
        BootstrapOptions {
            l4: true,
            admin_port,
            ..bootstrap_options("l4-udp-small", "meridian-system/l4", xds_port)
        },
        &["--udp-flows", "4"],
    );
    eventually(
        Duration::from_secs(30),
        "the small node answers",
        || async { ask_udp(&sockets[0], vip).await.is_some() },
    )
    .await;
    for (socket, gateway) in sockets.iter().zip(&first) {
        assert_eq!(ask_udp(socket, vip).await.as_ref(), Some(gateway));
    }
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let stats = admin_text(&client(), admin, "/stats/prometheus").await;
    let value = |name: &str| {
        stats
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    assert!(value("meridian_l4_udp_flows{") <= 4.0, "{stats}");
    assert!(
        value("meridian_l4_udp_flows_evicted_total{") >= 12.0,
        "{stats}"
    );
    drop(node);
    meridian.shutdown().await.unwrap();
}

/// Bad input at the node: a VIP's TCP port is taken by another program. `meridian l4` NACKs
/// that listener by name with the reason, and serves the rest (the same VIP's UDP port); a
/// VIP whose cluster has no gateway at all is listed in `/ready` as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_vip_port_is_nacked_by_name_and_the_rest_serves() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let (vip_port, gateway_port, xds_port) = (free_port(), free_port(), free_port());
    let nobody = format!(
        r#"---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: empty, namespace: dns}}
spec:
  template:
    service:
      metadata: {{name: nobody}}
      spec: {{ports: [{{name: http, port: {vip_port}}}]}}
"#
    );
    let manifests = dns_manifests((vip_port, gateway_port), &["127.0.0.11"], true) + &nobody;
    std::fs::write(config.join("dns.yaml"), manifests).unwrap();
    let a: std::net::SocketAddr = format!("127.0.0.11:{gateway_port}").parse().unwrap();
    let _gateway = udp_echo(a, "alpha").await;
    let vip: std::net::SocketAddr = format!("{VIP}:{vip_port}").parse().unwrap();
    let _squatter = std::net::TcpListener::bind(vip).unwrap();
    let meridian = start_meridian(&config, &work.path().join("state"), xds_port).await;
    let admin_port = free_port();
    let _node = meridian_l4(work.path(), "l4-bad", xds_port, admin_port);

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the UDP listener serving",
        || async { ask_udp(&socket, vip).await.as_deref() == Some("alpha") },
    )
    .await;
    let mut ops = OpsClient::connect(format!("http://127.0.0.1:{xds_port}"))
        .await
        .unwrap();
    let lds = eventually(Duration::from_secs(10), "LDS NACKed", || {
        let mut ops = ops.clone();
        async move {
            let status = ops
                .proxy_status(ProxyStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            status
                .proxies
                .iter()
                .find(|p| p.node_id == "l4-bad")
                .and_then(|p| p.types.iter().find(|t| t.r#type == "LDS"))
                .is_some_and(|t| t.state == "NACKED")
        }
    })
    .await;
    let status = ops
        .proxy_status(ProxyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let node = status
        .proxies
        .iter()
        .find(|p| p.node_id == "l4-bad")
        .unwrap();
    let nack = &node
        .types
        .iter()
        .find(|t| t.r#type == "LDS")
        .unwrap()
        .last_nack;
    assert!(
        nack.contains(&format!("Listener {VIP}_{vip_port}: address:")) && nack.contains("in use"),
        "{nack}"
    );
    println!("LDS NACKed {lds:?} after start: {nack}");
    // The other AccessPoint's VIP has no endpoints behind it: /ready says so.
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let ready = admin_text(&client(), admin, "/ready").await;
    assert!(ready.contains("no available gateway"), "{ready}");
    meridian.shutdown().await.unwrap();
}
