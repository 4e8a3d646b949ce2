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

/// `shop` placed on east-1 (z1) and east-2 (z2), 99 % of z1's traffic kept in z1, outlier
/// detection that ejects a host on its first gateway error and keeps it out for 30 s.
fn distributed(gateway_port: u16, min_health_percent: Option<u32>) -> String {
    let min_health =
        min_health_percent.map_or(String::new(), |p| format!(", minHealthPercent: {p}"));
    manifests(gateway_port, 80).replace(
        "          outlierDetection: {consecutiveGatewayErrors: 1, interval: 0.2s, baseEjectionTime: 1s, maxEjectionPercent: 100}\n",
        &format!(
            r#"          loadBalancer: {{localityLbSetting: {{distribute: [{{from: "r1/z1/*", to: {{"r1/z1/*": 99, "r1/z2/*": 1}}}}]}}}}
          outlierDetection: {{consecutiveGatewayErrors: 1, interval: 0.2s, baseEjectionTime: 30s, maxEjectionPercent: 100{min_health}}}
"#
        ),
    )
}

/// An EndpointSlice `web-<name>` of cluster `cluster` with one endpoint on `port`.
fn named_slice(name: &str, cluster: &str, port: u16) -> String {
    slice(cluster, port, true).replace(
        &format!("name: web-{cluster}\n"),
        &format!("name: web-{name}\n"),
    )
}

/// Istio's default minHealthPercent is 0: with three of four local hosts ejected (two of five
/// healthy), Envoy must not fall into panic mode (its own default below 50 %) and send traffic
/// to the ejected hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejected_hosts_stay_out_however_many_fail() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let near = [
        Backend::start("near-1").await,
        Backend::start("near-2").await,
        Backend::start("near-3").await,
        Backend::start("near-4").await,
    ];
    let far = Backend::start("far").await;
    let gateway_port = support::free_port();
    write(&config, "shop.yaml", &distributed(gateway_port, None));
    for (i, backend) in near.iter().enumerate() {
        write(
            &config,
            &format!("near-{i}.yaml"),
            &named_slice(&format!("near-{i}"), "east-1", backend.port),
        );
    }
    write(&config, "far.yaml", &named_slice("far", "east-2", far.port));
    let xds_port = support::free_port();
    let meridian = start_meridian(&config, &work.path().join("state"), xds_port).await;
    let _envoy = Envoy::start_in(
        work.path(),
        "gw-panic",
        "shop/public",
        xds_port,
        false,
        Some(("east-1", "z1")),
    );
    let http = client();
    eventually(WAIT, "all three local backends answer", || async {
        spread(&http, gateway_port, 40)
            .await
            .keys()
            .filter(|k| k.starts_with("near"))
            .count()
            == 4
    })
    .await;

    let [a, b, c, survivor] = near;
    drop((a, b, c));
    // Each dead host fails once and is ejected; then the survivor (and 1 % far) take it all.
    eventually(WAIT, "the dead hosts ejected", || async {
        !spread(&http, gateway_port, 20).await.contains_key("error")
    })
    .await;
    let counts = spread(&http, gateway_port, 300).await;
    eprintln!("after ejecting 3 of 4 local hosts: {counts:?}");
    assert_eq!(
        counts.get("error"),
        None,
        "requests went to ejected hosts: {counts:?}"
    );
    assert!(
        counts.get("near-4").copied().unwrap_or(0) >= 270,
        "{counts:?}"
    );

    // minHealthPercent is honoured: above the healthy share (2 of 5), Envoy balances across
    // every host again, ejected ones included.
    write(&config, "shop.yaml", &distributed(gateway_port, Some(80)));
    eventually(
        WAIT,
        "panic mode sends requests to the dead hosts",
        || async {
            spread(&http, gateway_port, 30)
                .await
                .get("error")
                .copied()
                .unwrap_or(0)
                > 5
        },
    )
    .await;
    drop(survivor);
    meridian.shutdown().await.unwrap();
}
