//! Federation against real API servers: a hub and three member "clusters" (four
//! kube-apiservers on one etcd, each under its own prefix), `meridian controller` as its
//! service account, and one real Envoy per member cluster.

mod support;

use std::time::Duration;

use support::kube::{repo, Controller, KubeCluster};
use support::{client, eventually, get, Backend, Envoy};

const WAIT: Duration = Duration::from_secs(60);

fn member_cluster(name: &str, zone: &str, vip_cidr: &str) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {{name: {name}, labels: {{tier: edge}}}}
spec:
  region: r1
  zone: {zone}
  connection: {{kubeconfigSecret: {{name: {name}}}}}
  vipPools: [{{name: {name}-vips, cidrs: ["{vip_cidr}"]}}]
"#
    )
}

/// The first `status.loadBalancer.ingress` IP of the `web` Service in a member.
fn member_service_vip(member: &KubeCluster) -> String {
    member.jsonpath(
        &["get", "service", "web", "-n", "shop"],
        "{.status.loadBalancer.ingress[0].ip}",
    )
}

fn endpoint_slice(port: u16) -> String {
    format!(
        r#"
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {{name: web-local, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
ports: [{{name: http, port: {port}, protocol: TCP}}]
"#
    )
}

fn access_point(m1_port: u16, m3_port: u16, exclude: &str, policy: &str) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  placement: {{clusterSelector: {{matchLabels: {{tier: edge}}}}, excludeClusters: [{exclude}]}}
  conflictPolicy: {policy}
  template:
    service:
      metadata: {{name: web}}
      spec: {{ports: [{{name: http, port: 80}}]}}
    gateways:
    - metadata: {{name: public}}
      spec: {{servers: [{{port: {{number: {m1_port}, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.test]
        gateways: [public]
        http: [{{route: [{{destination: {{host: web, port: {{number: 80}}}}}}]}}]
  overrides:
  - clusterName: m3
    patches:
    - {{op: replace, path: /gateways/0/spec/servers/0/port/number, value: {m3_port}}}
    - {{op: replace, path: /service/spec/ports/0/port, value: 9090}}
    - {{op: replace, path: /virtualServices/0/spec/http/0/route/0/destination/port/number, value: 9090}}
"#
    )
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: api, image: api:1}]}
"#;

const FOLLOWER: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: api, namespace: shop}
spec:
  placement: {followDeployment: {name: api}}
  template:
    service:
      metadata: {name: api}
      spec: {ports: [{name: http, port: 80}]}
"#;

/// The `web` Service's first port in a member, or None when it does not exist.
fn member_service_port(member: &KubeCluster) -> Option<String> {
    let out = member.kubectl(&[
        "get",
        "service",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.ports[0].port}",
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status_field(hub: &KubeCluster, path: &str) -> String {
    hub.jsonpath(&["get", "accesspoint", "shop", "-n", "shop"], path)
}

fn condition(hub: &KubeCluster, kind: &str, field: &str) -> String {
    status_field(
        hub,
        &format!("{{.status.conditions[?(@.type==\"{kind}\")].{field}}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_point_expands_into_member_clusters_and_survives_a_member_outage() {
    let mut fleet = KubeCluster::start_fleet(&["hub", "m1", "m2", "m3"]);
    let work = tempfile::tempdir().unwrap();
    let (one, three) = (Backend::start("one").await, Backend::start("three").await);
    {
        let hub = &fleet[0];
        hub.kubectl_ok(&["apply", "-f", &repo("crds")]);
        hub.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/accesspoints.meridian.dev",
            "crd/memberclusters.meridian.dev",
        ]);
        hub.kubectl_ok(&["apply", "-f", &repo("deploy/meridian.yaml")]);
        hub.kubectl_ok(&["create", "namespace", "shop"]);
    }
    for (i, name) in ["m1", "m2", "m3"].iter().enumerate() {
        let member = &fleet[i + 1];
        member.kubectl_ok(&["create", "namespace", "shop"]);
        // The hub acts in members with only what deploy/member.yaml grants.
        member.kubectl_ok(&["apply", "-f", &repo("deploy/member.yaml")]);
        let kubeconfig = work.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&kubeconfig, member.member_kubeconfig_text()).unwrap();
        fleet[0].kubectl_ok(&[
            "create",
            "secret",
            "generic",
            name,
            "-n",
            "meridian-system",
            &format!("--from-file=kubeconfig={}", kubeconfig.display()),
        ]);
    }
    fleet[1].apply_ok(&endpoint_slice(one.port));
    fleet[3].apply_ok(&endpoint_slice(three.port));
    // m2 already has a Service `web` of its own.
    fleet[2].apply_ok(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 7000}]}\n",
    );
    let hub = &fleet[0];
    hub.apply_ok(&format!(
        "{}---{}---{}",
        member_cluster("m1", "z1", "192.0.2.0/28"),
        member_cluster("m2", "z1", "192.0.2.16/28"),
        member_cluster("m3", "z2", "198.51.100.0/28")
    ));

    let mut controller =
        Controller::start(&hub.controller_kubeconfig, work.path(), "replica-a", &[]);
    let (m1_port, m3_port) = (support::free_port(), support::free_port());
    let _envoy_m1 = Envoy::start_in(
        work.path(),
        "gw-m1",
        "shop/public",
        controller.xds_port,
        true,
        Some(("m1", "z1")),
    );
    let _envoy_m3 = Envoy::start_in(
        work.path(),
        "gw-m3",
        "shop/public",
        controller.xds_port,
        true,
        Some(("m3", "z2")),
    );
    hub.apply_ok(&access_point(m1_port, m3_port, "m2", "Abort"));

    // The Service lands in exactly the placed members, with m3's override.
    eventually(WAIT, "Services in m1 and m3", || async {
        member_service_port(&fleet[1]).as_deref() == Some("80")
            && member_service_port(&fleet[3]).as_deref() == Some("9090")
    })
    .await;
    assert_eq!(
        member_service_port(&fleet[2]).as_deref(),
        Some("7000"),
        "excluded m2 untouched"
    );
    assert_eq!(
        member_service_port(&fleet[0]),
        None,
        "the hub is not placed"
    );

    // Each placed member's Service carries the AccessPoint's VIP there, as a LoadBalancer
    // controller would write it; status lists them; the leader keeps the table in a ConfigMap.
    eventually(WAIT, "VIPs on the member Services", || async {
        member_service_vip(&fleet[1]) == "192.0.2.1"
            && member_service_vip(&fleet[3]) == "198.51.100.1"
    })
    .await;
    assert_eq!(
        status_field(&fleet[0], "{.status.clusters[?(@.name==\"m3\")].vips[0]}"),
        "198.51.100.1"
    );
    let table = fleet[0].jsonpath(
        &["get", "configmap", "meridian-vips", "-n", "meridian-system"],
        "{.data.vips\\.json}",
    );
    assert!(
        table.contains("192.0.2.1") && table.contains("198.51.100.1"),
        "{table}"
    );

    // Each member's gateway serves its own variant, from its own zone's endpoints read back
    // from that member.
    let http = client();
    for (port, backend) in [(m1_port, "one"), (m3_port, "three")] {
        eventually(
            WAIT,
            &format!("gateway on {port} routes to {backend}"),
            || async { get(&http, port, "shop.example.test", "/").await.as_deref() == Ok(backend) },
        )
        .await;
    }
    eventually(WAIT, "Ready with every placed cluster ready", || async {
        condition(hub, "Ready", "status") == "True"
            && status_field(hub, "{.status.readyClusters}") == "2"
    })
    .await;
    assert_eq!(condition(hub, "Applied", "status"), "True");
    let m1_ready = hub.jsonpath(
        &["get", "membercluster", "m1"],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    );
    assert_eq!(m1_ready, "True");

    // m3's API server goes down: its status says so; m1 keeps working, and so does m3's
    // gateway (its config comes from Meridian, not from m3's API server).
    fleet[3].stop_apiserver();
    let hub = &fleet[0];
    eventually(WAIT, "m3 reported unreachable", || async {
        condition(hub, "Applied", "status") == "False"
            && hub.jsonpath(
                &["get", "membercluster", "m3"],
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "False"
    })
    .await;
    let message = condition(hub, "Applied", "message");
    assert!(
        message.contains("cluster m3") && message.contains("unreachable"),
        "{message}"
    );
    assert_eq!(status_field(hub, "{.status.readyClusters}"), "1");
    assert_eq!(
        get(&http, m1_port, "shop.example.test", "/")
            .await
            .as_deref(),
        Ok("one")
    );
    assert_eq!(
        get(&http, m3_port, "shop.example.test", "/")
            .await
            .as_deref(),
        Ok("three")
    );

    // Meridian restarts while m3 is still down: it serves m3's last known endpoints (kept in
    // the hub by the leader), so m3's gateway, reconnected to it, keeps routing to `three`.
    eventually(WAIT, "m3's state kept in the hub", || async {
        fleet[0]
            .jsonpath(
                &[
                    "get",
                    "configmap",
                    "meridian-member-m3",
                    "-n",
                    "meridian-system",
                ],
                "{.data.objects\\.json}",
            )
            .contains(&three.port.to_string())
    })
    .await;
    controller.restart(&fleet[0].controller_kubeconfig, work.path(), &[]);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], controller.admin_port));
    eventually(
        WAIT,
        "m3's gateway back in sync with the restarted Meridian",
        || async {
            // Refused until the restarted process listens.
            let Ok(response) = http.get(format!("http://{admin}/debug/syncz")).send().await else {
                return false;
            };
            let syncz: serde_json::Value = response.json().await.unwrap_or_default();
            syncz["proxies"].as_array().is_some_and(|proxies| {
                proxies.iter().any(|p| {
                    p["node_id"] == "gw-m3"
                        && p["types"].as_array().is_some_and(|types| {
                            types.len() >= 4 && types.iter().all(|t| t["state"] == "SYNCED")
                        })
                })
            })
        },
    )
    .await;
    assert!(
        controller
            .log_text()
            .contains("member's last known state restored"),
        "restored from the hub"
    );
    // From its first answer on: nothing was served before the kept state was read.
    for _ in 0..10 {
        assert_eq!(
            get(&http, m3_port, "shop.example.test", "/")
                .await
                .as_deref(),
            Ok("three"),
            "m3's endpoints served after the restart"
        );
    }

    // It comes back: so does the status.
    fleet[3].start_apiserver();
    fleet[3].wait_ready();
    let hub = &fleet[0];
    eventually(WAIT, "m3 recovered", || async {
        condition(hub, "Applied", "status") == "True" && condition(hub, "Ready", "status") == "True"
    })
    .await;

    // Placing m2 runs into its own Service: Abort reports it and leaves it alone ...
    hub.apply_ok(&access_point(m1_port, m3_port, "none", "Abort"));
    eventually(WAIT, "conflict reported for m2", || async {
        condition(hub, "Applied", "message").contains("cluster m2: Service shop/web already exists")
    })
    .await;
    assert_eq!(member_service_port(&fleet[2]).as_deref(), Some("7000"));
    // ... and Overwrite takes it over.
    hub.apply_ok(&access_point(m1_port, m3_port, "none", "Overwrite"));
    eventually(WAIT, "m2 taken over", || async {
        member_service_port(&fleet[2]).as_deref() == Some("80")
    })
    .await;

    // followDeployment: placed exactly where the Deployment runs, and withdrawn with it.
    fleet[3].apply_ok(DEPLOYMENT);
    let hub = &fleet[0];
    hub.apply_ok(FOLLOWER);
    let api_port = |member: &KubeCluster| {
        let out = member.kubectl(&["get", "service", "api", "-n", "shop", "-o", "name"]);
        out.status.success()
    };
    eventually(
        WAIT,
        "Service api only where Deployment api runs",
        || async { api_port(&fleet[3]) },
    )
    .await;
    assert!(!api_port(&fleet[1]) && !api_port(&fleet[2]));
    fleet[3].kubectl_ok(&["delete", "deployment", "api", "-n", "shop"]);
    eventually(
        WAIT,
        "Service api withdrawn with the Deployment",
        || async { !api_port(&fleet[3]) },
    )
    .await;
    let hub = &fleet[0];

    // Deleting the AccessPoint removes what Meridian created in every member first.
    hub.kubectl_ok(&[
        "delete",
        "accesspoint",
        "shop",
        "-n",
        "shop",
        "--wait=false",
    ]);
    eventually(
        WAIT,
        "member Services removed and the AccessPoint gone",
        || async {
            (1..=3).all(|i| member_service_port(&fleet[i]).is_none())
                && !hub
                    .kubectl(&["get", "accesspoint", "shop", "-n", "shop"])
                    .status
                    .success()
        },
    )
    .await;
    drop(controller);
}
