//! gRPC and HTTP/2 backends behind a real Envoy gateway. Envoy must speak HTTP/2 to them: a
//! port is gRPC or HTTP/2 by its `appProtocol`, its name's prefix, or a ServiceEntry port's
//! `protocol`, as Istio infers it. The gRPC backend is Meridian's own ops API (tonic).

mod support;

use std::time::Duration;

use meridian::control_plane::admin::ops::pb::ops_client::OpsClient;
use meridian::control_plane::admin::ops::pb::ProxyStatusRequest;
use support::*;

/// Four ways to say "gRPC" for one backend on `backend_port`, each behind its own host, and the
/// gateway on `gateway_port` (protocol HTTP2).
fn manifests(gateway_port: u16, backend_port: u16) -> String {
    let service = |name: &str, port_name: &str, app_protocol: &str| {
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: rpc}}
spec: {{ports: [{{name: {port_name}, port: 80{app_protocol}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: rpc, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"]}}]
ports: [{{name: {port_name}, port: {backend_port}}}]
---
"#
        )
    };
    let route = |host: &str, to: &str| {
        format!(
            "    - metadata: {{name: {host}}}\n      spec: {{hosts: [{host}.example.test], gateways: [edge], http: [{{route: [{{destination: {{host: {to}}}}}]}}]}}\n"
        )
    };
    format!(
        r#"{named}{app}{h2c}apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: rpc, namespace: rpc}}
spec:
  template:
    gateways:
    - metadata: {{name: edge}}
      spec:
        servers:
        - port: {{number: {gateway_port}, protocol: HTTP2}}
          bind: 127.0.0.1
          hosts: ["*"]
    serviceEntries:
    - metadata: {{name: entry}}
      spec:
        hosts: [entry.internal]
        ports: [{{number: 9000, name: api, protocol: GRPC}}]
        resolution: STATIC
        endpoints: [{{address: 127.0.0.1, ports: {{api: {backend_port}}}}}]
    virtualServices:
{routes}"#,
        named = service("named", "grpc-ops", ""),
        app = service("app", "api", ", appProtocol: grpc"),
        h2c = service("h2c", "web", ", appProtocol: kubernetes.io/h2c"),
        routes = route("named", "named")
            + &route("app", "app")
            + &route("h2c", "h2c")
            + &route("entry", "entry.internal"),
    )
}

/// A gRPC call through the gateway with `host` as the authority.
async fn call(gateway_port: u16, host: &str) -> Result<(), String> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{gateway_port}"))
            .unwrap()
            .origin(format!("http://{host}").parse().unwrap())
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
    OpsClient::new(channel)
        .proxy_status(ProxyStatusRequest {})
        .await
        .map(|_| ())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_backends_are_reached_over_http2_however_the_port_says_grpc() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let (gateway_port, xds_port) = (free_port(), free_port());
    std::fs::write(config.join("rpc.yaml"), manifests(gateway_port, xds_port)).unwrap();
    let meridian = start_meridian(&config, &work.path().join("state"), xds_port).await;
    let _envoy = Envoy::start(work.path(), "gw-grpc", "rpc/edge", xds_port, false);
    for host in ["named", "app", "h2c", "entry"] {
        let authority = format!("{host}.example.test");
        eventually(
            Duration::from_secs(30),
            &format!("a gRPC call via {host}"),
            || async { call(gateway_port, &authority).await.is_ok() },
        )
        .await;
        // Not a lucky first call: every call succeeds.
        for _ in 0..20 {
            call(gateway_port, &authority)
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }
    meridian.shutdown().await.unwrap();
}
