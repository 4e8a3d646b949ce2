//! Cross-zone failover with a real Envoy: a gateway in zone z1 of member cluster `east-1`
//! serves its own zone's endpoints, moves to zone z2 when they are removed or fail, and comes
//! back when they return. Standalone mode: MemberClusters and member EndpointSlices from files.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{client, eventually, get, start_meridian, Backend, Envoy};

const WAIT: Duration = Duration::from_secs(30);

fn manifests(gateway_port: u16, service_port: u16) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {{name: east-1}}
spec: {{region: r1, zone: z1}}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {{name: east-2}}
spec: {{region: r1, zone: z2}}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  placement: {{clusters: [east-1, east-2]}}
  template:
    service:
      metadata: {{name: web}}
      spec: {{ports: [{{name: http, port: {service_port}}}]}}
    gateways:
    - metadata: {{name: public}}
      spec: {{servers: [{{port: {{number: {gateway_port}, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.test]
        gateways: [public]
        http: [{{route: [{{destination: {{host: web}}}}]}}]
    destinationRules:
    - metadata: {{name: web}}
      spec:
        host: web
        trafficPolicy:
          outlierDetection: {{consecutiveGatewayErrors: 1, interval: 0.2s, baseEjectionTime: 1s, maxEjectionPercent: 100}}
"#
    )
}

fn slice(cluster: &str, port: u16, ready: bool) -> String {
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-{cluster}
  namespace: shop
  labels: {{kubernetes.io/service-name: web, meridian.dev/cluster: {cluster}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: {ready}}}}}]
ports: [{{name: http, port: {port}}}]
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// How many of `n` requests each backend answered (failures under "error").
async fn spread(
    http: &reqwest::Client,
    port: u16,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = get(http, port, "shop.example.test", "/")
            .await
            .unwrap_or_else(|_| "error".to_owned());
        *counts.entry(who).or_default() += 1;
    }
    counts
}

async fn all_from(http: &reqwest::Client, port: u16, backend: &str) {
    eventually(WAIT, &format!("all traffic on {backend}"), || async {
        spread(http, port, 20).await.keys().eq([backend])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_fails_over_to_the_other_zone_and_back() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let near = Backend::start("near").await;
    let far = Backend::start("far").await;
    let near_port = near.port;
    let gateway_port = support::free_port();
    write(&config, "shop.yaml", &manifests(gateway_port, 80));
    write(&config, "east-1.yaml", &slice("east-1", near_port, true));
    write(&config, "east-2.yaml", &slice("east-2", far.port, true));

    let xds_port = support::free_port();
    let meridian = start_meridian(&config, &work.path().join("state"), xds_port).await;
    let _envoy = Envoy::start_in(
        work.path(),
        "gw-east-1",
        "shop/public",
        xds_port,
        true,
        Some(("east-1", "z1")),
    );
    let http = client();

    // Own zone first: the remote zone is only a lower priority.
    all_from(&http, gateway_port, "near").await;
    assert_eq!(spread(&http, gateway_port, 100).await["near"], 100);

    // Local endpoints removed (not ready) → the other zone; restored → back.
    write(&config, "east-1.yaml", &slice("east-1", near_port, false));
    let moved = std::time::Instant::now();
    all_from(&http, gateway_port, "far").await;
    eprintln!("failover after removal: {:?}", moved.elapsed());
    write(&config, "east-1.yaml", &slice("east-1", near_port, true));
    all_from(&http, gateway_port, "near").await;

    // Local backend fails (connections refused): outlier detection ejects it and traffic moves
    // to the other zone; once it is back and the ejection ends, traffic returns.
    drop(near);
    let failed_at = std::time::Instant::now();
    all_from(&http, gateway_port, "far").await;
    eprintln!("failover after backend failure: {:?}", failed_at.elapsed());
    let near = Backend::start_on("near", near_port).await;
    let back_at = std::time::Instant::now();
    all_from(&http, gateway_port, "near").await;
    eprintln!("failback after recovery: {:?}", back_at.elapsed());

    drop(near);
    meridian.shutdown().await.unwrap();
}
