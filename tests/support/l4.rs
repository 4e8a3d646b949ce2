//! The L4 tier's manifests, shared by the L4 tests.

/// A VIP pool (`pool`) for the hub's own cluster; one AccessPoint whose Service (port
/// `vip_port`) is backed by two gateway pods at `gateways` on `gateway_port`, each serving its
/// own Gateway (bound to its pod's address), routed to its own backend (loopback ports
/// `alpha` and `beta`) so a response says which gateway it crossed. `vip`: the AccessPoint's
/// `spec.vip`, as YAML flow.
pub fn manifests(
    gateways: [&str; 2],
    pool: &str,
    (vip_port, gateway_port): (u16, u16),
    (alpha, beta): (u16, u16),
    vip: &str,
) -> String {
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
  vipPools: [{{name: lb, cidrs: ["{pool}"]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: shop-gateway-1, namespace: shop, labels: {{kubernetes.io/service-name: shop-gateway}}}}
addressType: IPv4
endpoints: [{{addresses: ["{a}"]}}, {{addresses: ["{b}"]}}]
ports: [{{name: http, port: {gateway_port}}}]
---
{alpha_service}{beta_service}apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  vip: {vip}
  template:
    service:
      metadata: {{name: shop-gateway}}
      spec: {{ports: [{{name: http, port: {vip_port}, targetPort: {gateway_port}}}]}}
    gateways:
{gateways}    virtualServices:
{routes}"#,
        alpha_service = super::loopback_service("alpha", alpha),
        beta_service = super::loopback_service("beta", beta),
        gateways = gateway("gw-a", gateways[0]) + &gateway("gw-b", gateways[1]),
        a = gateways[0],
        b = gateways[1],
        routes = route("gw-a", "alpha") + &route("gw-b", "beta"),
    )
}
