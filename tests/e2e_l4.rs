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

/// A VIP pool for the hub's own cluster; one AccessPoint whose Service (port `vip_port`) is
/// backed by two gateway pods, 127.0.0.11 and 127.0.0.12 on `gateway_port`, each serving its
/// own Gateway, routed to its own backend so a response says which gateway it crossed.
fn manifests(vip_port: u16, gateway_port: u16, alpha: u16, beta: u16) -> String {
    let gateway = |name: &str, bind: &str| {
        format!(
            "    - metadata: {{name: {name}}}\n      spec: {{servers: [{{port: {{number: {gateway_port}, protocol: HTTP}}, bind: {bind}, hosts: [\"*\"]}}]}}\n"
        )
    };
    let route = |gateway: &str, backend: &str| {
        format!(
            "    - metadata: {{name: {gateway}}}\n      spec: {{hosts: [\"*\"], gateways: [{gateway}], http: [{{route: [{{destination: {{host: {backend}}}}}]}}]}}\n"
        )
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
metadata: {{name: shop-gateway-1, namespace: shop, labels: {{kubernetes.io/service-name: shop-gateway}}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.11"]}}, {{addresses: ["127.0.0.12"]}}]
ports: [{{name: http, port: {gateway_port}}}]
---
{alpha_service}{beta_service}apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  template:
    service:
      metadata: {{name: shop-gateway}}
      spec: {{ports: [{{name: http, port: {vip_port}, targetPort: {gateway_port}}}]}}
    gateways:
{gateways}    virtualServices:
{routes}"#,
        alpha_service = loopback_service("alpha", alpha),
        beta_service = loopback_service("beta", beta),
        gateways = gateway("gw-a", "127.0.0.11") + &gateway("gw-b", "127.0.0.12"),
        routes = route("gw-a", "alpha") + &route("gw-b", "beta"),
    )
}

/// One request on a new connection to the VIP: the backend that answered.
async fn through_vip(vip_port: u16) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{VIP}:{vip_port}/"))
        .header("host", "shop.example.test")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_l4_node_serves_the_vip_and_drops_a_dead_gateway() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let (alpha, beta) = (Backend::start("alpha").await, Backend::start("beta").await);
    let (vip_port, gateway_port, xds_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        config.join("shop.yaml"),
        manifests(vip_port, gateway_port, alpha.port, beta.port),
    )
    .unwrap();
    let meridian = start_meridian(&config, &work.path().join("state"), xds_port).await;
    let mut gateway_a = Some(Envoy::start(
        work.path(),
        "gw-a",
        "shop/gw-a",
        xds_port,
        false,
    ));
    let _gateway_b = Envoy::start(work.path(), "gw-b", "shop/gw-b", xds_port, true);
    let l4 = Envoy::launch(
        work.path(),
        BootstrapOptions {
            node_id: "l4-1".into(),
            gateway: "meridian-system/l4".into(),
            l4: true,
            cluster: None,
            zone: None,
            xds_host: "127.0.0.1".into(),
            xds_port,
            delta: false,
            admin_port: free_port(),
            tls: None,
        },
    );

    // Both gateways get connections: Maglev without a hash policy picks per connection.
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

    // The L4 node is listed as one, and took everything it was sent.
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
        .find(|p| p.node_id == "l4-1")
        .expect("the L4 node is connected");
    assert_eq!(node.role, "l4");
    for kind in ["CDS", "EDS", "LDS"] {
        let sync = node.types.iter().find(|t| t.r#type == kind).unwrap();
        assert_eq!(sync.state, "SYNCED", "{kind}: {sync:?}\n{}", l4.log_text());
    }

    // Gateway A dies. A connection it had accepted as it died is lost with it; new ones it
    // refuses try gateway B, and two refusals in a row eject it before any check runs.
    drop(gateway_a.take());
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
    meridian.shutdown().await.unwrap();
}
