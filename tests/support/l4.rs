//! The L4 tier's manifests, and the hub of the namespace tests, shared by the L4 tests.

use std::path::Path;

use super::netns::{link, Daemon, Netns};
use super::{bootstrap_options, meridian_binary, Backend, Envoy, MeridianProxy};

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

/// The hub namespace of the L4 namespace tests: a bridge `br0` with Meridian's address
/// (10.99.0.1/24) and the gateways' (`gateways`), which nodes join with veths.
pub fn hub_namespace(name: &str, gateways: [&str; 2]) -> Netns {
    let hub = Netns::new(name);
    hub.ip(&["link", "add", "br0", "type", "bridge"]);
    hub.ip(&["addr", "add", "10.99.0.1/24", "dev", "br0"]);
    for gateway in gateways {
        hub.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "br0"]);
    }
    hub.ip(&["link", "set", "br0", "up"]);
    hub
}

/// Plugs `netns` into the hub's bridge: its `eth0` at `address` (with prefix), the hub's end
/// named `name`.
pub fn join_hub(hub: &Netns, netns: &Netns, name: &str, address: &str) {
    link(netns, "eth0", address, hub, name, None);
    hub.ip(&["link", "set", name, "master", "br0"]);
}

/// A client namespace `name` behind `router`: the router's `eth1` at 10.98.0.1/24, the
/// client's `eth0` at 10.98.0.2/24, its default route through the router.
pub fn client_behind(router: &Netns, name: &str) -> Netns {
    let client = Netns::new(name);
    link(
        router,
        "eth1",
        "10.98.0.1/24",
        &client,
        "eth0",
        Some("10.98.0.2/24"),
    );
    client.ip(&["route", "add", "default", "via", "10.98.0.1"]);
    client
}

/// What runs in the hub namespace of the L4 namespace tests: the two backends (loopback),
/// Meridian serving [`manifests`] on `xds_port`, gateway a as an Envoy and gateway b as a
/// `meridian proxy`. All stop on drop.
pub struct Hub {
    pub alpha: Backend,
    pub beta: Backend,
    _meridian: Daemon,
    _gateway_a: Envoy,
    _gateway_b: MeridianProxy,
}

/// Starts the hub's services in `hub`, whose addresses include `gateways` (call from inside a
/// Tokio runtime: the backends are Tokio listeners).
pub fn serve_hub(
    hub: &Netns,
    dir: &Path,
    (gateways, pool): ([&str; 2], &str),
    (vip_port, gateway_port, xds_port): (u16, u16, u16),
) -> Hub {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let backend = |name: &'static str| {
        let listener = hub.enter(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        listener.set_nonblocking(true).unwrap();
        Backend::echoing_forwarded_for_on(
            name,
            tokio::net::TcpListener::from_std(listener).unwrap(),
        )
    };
    let (alpha, beta) = (backend("alpha"), backend("beta"));
    std::fs::write(
        config.join("shop.yaml"),
        manifests(
            gateways,
            pool,
            (vip_port, gateway_port),
            (alpha.port, beta.port),
            "{}",
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let meridian = Daemon::spawn(
        hub,
        dir.join("meridian.log"),
        meridian_binary().to_str().unwrap(),
        &[
            "standalone",
            "--config-dir",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--xds-addr",
            &format!("0.0.0.0:{xds_port}"),
            "--admin-addr",
            "127.0.0.1:0",
        ],
    );
    let gateway_a = hub.enter(|| Envoy::start(dir, "gw-a", "shop/gw-a", xds_port, false));
    let gateway_b =
        hub.enter(|| MeridianProxy::start(dir, bootstrap_options("gw-b", "shop/gw-b", xds_port)));
    Hub {
        alpha,
        beta,
        _meridian: meridian,
        _gateway_a: gateway_a,
        _gateway_b: gateway_b,
    }
}
