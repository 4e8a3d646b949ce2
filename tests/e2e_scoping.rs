//! Per-gateway scoping with real Envoys: two gateways in different namespaces each hold only
//! what `exportTo` lets them see (counted in Envoy's own config_dump), and a host that is not
//! exported to a gateway is not routed by it.

mod support;

use std::time::Duration;

use support::{client, eventually, get, start_meridian, Backend, Envoy};

const WAIT: Duration = Duration::from_secs(30);

fn manifests(port_a: u16, port_b: u16, web_a: u16, web_b: u16) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: a, namespace: team-a}}
spec:
  template:
    service:
      metadata: {{name: web, annotations: {{networking.istio.io/exportTo: "."}}}}
      spec: {{ports: [{{name: http, port: 80}}]}}
    gateways:
    - metadata: {{name: gw}}
      spec: {{servers: [{{port: {{number: {port_a}, protocol: HTTP}}, hosts: ["*/*"]}}]}}
    virtualServices:
    - metadata: {{name: a}}
      spec:
        hosts: [a.example.test]
        gateways: [team-a/gw, team-b/gw]
        exportTo: ["."]
        http: [{{route: [{{destination: {{host: web}}}}]}}]
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: b, namespace: team-b}}
spec:
  template:
    service:
      metadata: {{name: web}}
      spec: {{ports: [{{name: http, port: 80}}]}}
    gateways:
    - metadata: {{name: gw}}
      spec: {{servers: [{{port: {{number: {port_b}, protocol: HTTP}}, hosts: ["*/*"]}}]}}
    virtualServices:
    - metadata: {{name: b}}
      spec:
        hosts: [b.example.test]
        gateways: [team-b/gw]
        http: [{{route: [{{destination: {{host: web}}}}]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, namespace: team-a, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"]}}]
ports: [{{name: http, port: {web_a}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-b, namespace: team-b, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"]}}]
ports: [{{name: http, port: {web_b}}}]
"#
    )
}

/// (dynamic cluster names, route domains) in an Envoy's own config_dump.
async fn envoy_config(http: &reqwest::Client, admin_port: u16) -> (Vec<String>, Vec<String>) {
    let dump = |resource: &'static str| async move {
        http.get(format!(
            "http://127.0.0.1:{admin_port}/config_dump?resource={resource}"
        ))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()
    };
    let clusters = dump("dynamic_active_clusters").await["configs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_owned))
        .collect();
    let mut domains: Vec<String> = dump("dynamic_route_configs").await["configs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .flat_map(|r| {
            r["route_config"]["virtual_hosts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|vh| vh["domains"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    domains.sort();
    (clusters, domains)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gateway_holds_only_what_is_exported_to_it() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let (web_a, web_b) = (Backend::start("web-a").await, Backend::start("web-b").await);
    let (port_a, port_b) = (support::free_port(), support::free_port());
    std::fs::write(
        config.join("teams.yaml"),
        manifests(port_a, port_b, web_a.port, web_b.port),
    )
    .unwrap();
    let xds_port = support::free_port();
    let meridian = start_meridian(&config, &work.path().join("state"), xds_port).await;
    let envoy_a = Envoy::start(work.path(), "gw-a", "team-a/gw", xds_port, true);
    let envoy_b = Envoy::start(work.path(), "gw-b", "team-b/gw", xds_port, false);
    let http = client();

    for (port, host, backend) in [
        (port_a, "a.example.test", "web-a"),
        (port_b, "b.example.test", "web-b"),
    ] {
        eventually(WAIT, &format!("{host} routed on {port}"), || async {
            get(&http, port, host, "/").await.as_deref() == Ok(backend)
        })
        .await;
    }
    // team-a's VirtualService names team-b's gateway but is exported only to team-a.
    let refused = get(&http, port_b, "a.example.test", "/").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with("404")),
        "{refused:?}"
    );

    let (clusters_a, domains_a) = envoy_config(&http, envoy_a.admin_port).await;
    let (clusters_b, domains_b) = envoy_config(&http, envoy_b.admin_port).await;
    assert_eq!(clusters_a, ["outbound|80||web.team-a.svc.cluster.local"]);
    assert_eq!(domains_a, ["a.example.test"]);
    assert_eq!(clusters_b, ["outbound|80||web.team-b.svc.cluster.local"]);
    assert_eq!(domains_b, ["b.example.test"]);
    meridian.shutdown().await.unwrap();
}
