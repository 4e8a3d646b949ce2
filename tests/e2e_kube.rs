//! Kubernetes mode against a real kube-apiserver + etcd, a real Envoy, and `meridian
//! controller` running as its least-privilege service account from `deploy/meridian.yaml`.

mod support;

use std::time::Duration;

use support::kube::{repo, Controller, KubeCluster};
use support::tls::{curl_https, UserCertificate};
use support::{client, eventually, get, Backend, Envoy};

const WAIT: Duration = Duration::from_secs(60);

/// CRDs, the install manifest, and a labelled `shop` namespace with a backend Service whose
/// EndpointSlice points at `backend_port` on loopback.
fn install(cluster: &KubeCluster, backend_port: u16) {
    cluster.kubectl_ok(&["apply", "-f", &repo("crds")]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/accesspoints.meridian.dev",
        "crd/memberclusters.meridian.dev",
        "crd/nameservices.meridian.dev",
    ]);
    cluster.kubectl_ok(&["apply", "-f", &repo("deploy/meridian.yaml")]);
    cluster.apply_ok(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{meridian.dev/enabled: "true"}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: ignored}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{ports: [{{name: http, port: 80, targetPort: {backend_port}}}]}}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {{ready: true}}
ports: [{{name: http, port: {backend_port}, protocol: TCP}}]
"#
    ));
}

fn access_point(
    name: &str,
    namespace: &str,
    gateway_port: u32,
    vs_gateway: &str,
    host: &str,
) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  template:
    gateways:
    - metadata: {{name: public}}
      spec: {{servers: [{{port: {{number: {gateway_port}, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: {name}}}
      spec:
        hosts: [{host}]
        gateways: [{vs_gateway}]
        http: [{{route: [{{destination: {{host: web, port: {{number: 80}}}}}}]}}]
"#
    )
}

/// Waits until Envoy on `port` routes `host` to the backend.
async fn routed(http: &reqwest::Client, port: u16, host: &str) {
    eventually(
        WAIT,
        &format!("Envoy routes {host} to the backend"),
        || async { get(http, port, host, "/").await.as_deref() == Ok("web") },
    )
    .await;
}

fn condition(cluster: &KubeCluster, ap: &str, kind: &str, field: &str) -> String {
    cluster.jsonpath(
        &["get", "accesspoint", ap, "-n", "shop"],
        &format!("{{.status.conditions[?(@.type==\"{kind}\")].{field}}}"),
    )
}

/// Patches `ap`'s status to `Ready=True` as another client (a merge patch, as `kubectl
/// patch --subresource=status` sends).
async fn forge_ready(cluster: &KubeCluster, ap: &str) {
    let file = kube::config::Kubeconfig::read_from(&cluster.admin_kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: kube::Api<meridian::api::AccessPoint> = kube::Api::namespaced(client, "shop");
    let forged = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "Ready", "message": "trust me",
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1
    }]}});
    let patched = api
        .patch_status(
            ap,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&forged),
        )
        .await
        .unwrap();
    let conditions = patched.status.map(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{conditions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_drives_envoy_and_status() {
    let cluster = KubeCluster::start();
    let work = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    install(&cluster, backend.port);

    // The schema rejects what it can check statically, naming the field.
    let rejected = cluster.apply(&access_point(
        "bad",
        "shop",
        70000,
        "public",
        "bad.example.test",
    ));
    assert!(!rejected.status.success());
    let message = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        message.contains("spec.template.gateways.spec.servers.port.number")
            || message.contains("port.number"),
        "{message}"
    );
    assert!(message.contains("65535"), "{message}");
    // The apiserver publishes CRD schemas to OpenAPI a few seconds after creation.
    eventually(WAIT, "kubectl explain shows field descriptions", || async {
        let out = cluster.kubectl(&["explain", "accesspoint.spec.placement"]);
        String::from_utf8_lossy(&out.stdout).contains("Where the AccessPoint is expanded")
    })
    .await;
    // And the fields of optional objects: 1.20 publishes a `nullable` object without them.
    for (path, fields) in [
        (
            "accesspoint.spec.placement",
            &["clusters", "zones", "clusterSelector"][..],
        ),
        ("accesspoint.spec.vip", &["pool", "shareWith"][..]),
        (
            "accesspoint.spec.overrides",
            &["clusterName", "patches"][..],
        ),
        ("membercluster.spec", &["zone", "vipPools"][..]),
    ] {
        let lists_them = || {
            let out = cluster.kubectl(&["explain", path]);
            let explained = String::from_utf8_lossy(&out.stdout).into_owned();
            fields
                .iter()
                .all(|field| explained.contains(&format!("   {field}\t")))
        };
        let what = format!("kubectl explain {path} lists {fields:?}");
        eventually(WAIT, &what, || std::future::ready(lists_them())).await;
    }

    let controller = Controller::start(
        &cluster.controller_kubeconfig,
        work.path(),
        "replica-a",
        &["--namespace-selector", "meridian.dev/enabled=true"],
    );
    let gateway_port = support::free_port();
    let port = u32::from(gateway_port);
    let envoy = Envoy::start(
        work.path(),
        "gw-1",
        "shop/public",
        controller.xds_port,
        true,
    );
    cluster.apply_ok(&access_point(
        "shop",
        "shop",
        port,
        "public",
        "shop.example.test",
    ));

    let http = client();
    routed(&http, gateway_port, "shop.example.test").await;
    let waited = cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "accesspoint/shop",
        "-n",
        "shop",
        "--timeout=60s",
    ]);
    assert!(
        waited.status.success(),
        "kubectl wait: {}\ncontroller log:\n{}",
        String::from_utf8_lossy(&waited.stderr),
        controller.log_text()
    );
    assert_eq!(condition(&cluster, "shop", "Programmed", "status"), "True");
    assert_eq!(
        condition(&cluster, "shop", "Ready", "observedGeneration"),
        "1"
    );
    let table = cluster.kubectl_ok(&["get", "accesspoints", "-n", "shop"]);
    assert!(
        table.contains("READY") && table.contains("PROGRAMMED") && table.contains("CLUSTERS"),
        "{table}"
    );

    // A dangling Gateway reference is admitted but not accepted; the valid AccessPoint is untouched.
    cluster.apply_ok(&access_point(
        "dangling",
        "shop",
        port,
        "missing",
        "dangling.example.test",
    ));
    eventually(
        WAIT,
        "Accepted=False on the dangling AccessPoint",
        || async { condition(&cluster, "dangling", "Accepted", "status") == "False" },
    )
    .await;
    assert_eq!(
        condition(&cluster, "dangling", "Accepted", "reason"),
        "NoMatchingGateway"
    );
    // Status cannot be forged: someone allowed to patch accesspoints/status (the approver
    // role is) sets Ready=True on the AccessPoint that is not accepted; the leader writes the
    // computed status back.
    forge_ready(&cluster, "dangling").await;
    eventually(WAIT, "the forged Ready=True overwritten", || async {
        condition(&cluster, "dangling", "Ready", "status") == "False"
            && condition(&cluster, "dangling", "Accepted", "status") == "False"
    })
    .await;
    // Only the forged status was taken for another writer's: Meridian's own writes, coming
    // back through its watch, were not.
    let log = controller.log_text();
    assert_eq!(
        log.matches("status changed by another writer").count(),
        1,
        "{log}"
    );
    let message = condition(&cluster, "dangling", "Accepted", "message");
    assert!(
        message.contains("Gateway shop/missing does not exist"),
        "{message}"
    );
    assert!(
        message.contains("spec.template.virtualServices[0].spec.gateways[0]"),
        "{message}"
    );
    assert_eq!(
        get(&http, gateway_port, "shop.example.test", "/")
            .await
            .as_deref(),
        Ok("web")
    );

    // A namespace outside the selector is not processed at all.
    cluster.apply_ok(&access_point(
        "elsewhere",
        "ignored",
        port,
        "public",
        "x.example.test",
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cluster.jsonpath(
            &["get", "accesspoint", "elsewhere", "-n", "ignored"],
            "{.status}"
        ),
        ""
    );

    // A new generation is reported once Envoy has acknowledged it.
    let moved = access_point("shop", "shop", port, "public", "shop2.example.test");
    cluster.apply_ok(&moved);
    eventually(WAIT, "generation 2 programmed", || async {
        condition(&cluster, "shop", "Programmed", "observedGeneration") == "2"
            && condition(&cluster, "shop", "Programmed", "status") == "True"
    })
    .await;
    assert_eq!(
        get(&http, gateway_port, "shop2.example.test", "/")
            .await
            .as_deref(),
        Ok("web")
    );

    // Deleting the AccessPoint withdraws its routes from Envoy.
    cluster.kubectl_ok(&["delete", "accesspoint", "shop", "-n", "shop"]);
    eventually(WAIT, "routes removed from Envoy", || {
        let http = http.clone();
        async move {
            get(&http, gateway_port, "shop2.example.test", "/")
                .await
                .is_err()
        }
    })
    .await;
    drop(envoy);
}

/// A member with a VIP pool (Meridian serves its gateways only), an AccessPoint placed there
/// and a NameService for it.
const VIP_FLEET: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: edge}
spec: {zone: edge-1, vipPools: [{name: edge-main, cidrs: ["192.0.2.0/24"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: vip, namespace: shop}
spec: {placement: {clusters: [edge]}, template: {}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: vip, namespace: shop}
spec: {fqdn: vip.example.test, target: {accessPoint: vip}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_status_writes_while_xds_keeps_serving() {
    let cluster = KubeCluster::start();
    let work = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    install(&cluster, backend.port);
    let lease_flags = [
        "--lease-duration",
        "4s",
        "--renew-every",
        "1s",
        "--dns-addr",
        "127.0.0.1:0",
        "--dns-zone",
        "example.test",
    ];
    let mut replicas = [
        Controller::start(
            &cluster.controller_kubeconfig,
            work.path(),
            "replica-a",
            &lease_flags,
        ),
        Controller::start(
            &cluster.controller_kubeconfig,
            work.path(),
            "replica-b",
            &lease_flags,
        ),
    ];
    let holder = || cluster.lease_holder();
    eventually(WAIT, "a replica holds the lease", || async {
        !holder().is_empty()
    })
    .await;
    let leader = replicas
        .iter()
        .position(|r| r.identity == holder())
        .unwrap();
    let follower = 1 - leader;

    // The gateway is connected to the follower only: the leader learns of its ACKs from the
    // follower's report.
    let gateway_port = support::free_port();
    let port = u32::from(gateway_port);
    let _envoy = Envoy::start(
        work.path(),
        "gw-1",
        "shop/public",
        replicas[follower].xds_port,
        false,
    );
    cluster.apply_ok(&access_point(
        "shop",
        "shop",
        port,
        "public",
        "shop.example.test",
    ));
    let http = client();
    routed(&http, gateway_port, "shop.example.test").await;
    eventually(WAIT, "Ready written by the leader", || async {
        condition(&cluster, "shop", "Ready", "status") == "True"
    })
    .await;
    assert!(replicas[leader]
        .log_text()
        .contains("leading: writing AccessPoint status"));

    // `meridian status` and `config-dump` on the leader cover the follower's gateway too.
    let meridian = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(args)
            .output()
            .unwrap()
    };
    let leader_server = format!("127.0.0.1:{}", replicas[leader].xds_port);
    let follower_identity = replicas[follower].identity.clone();
    eventually(
        WAIT,
        "the follower's gateway in the leader's status",
        || async {
            let out = meridian(&["status", "--server", &leader_server]);
            String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                l.starts_with("gw-1")
                    && l.matches("SYNCED").count() == 4
                    && l.trim_end().ends_with(&follower_identity)
            })
        },
    )
    .await;
    let dump = meridian(&["config-dump", "--node", "gw-1", "--server", &leader_server]);
    assert!(dump.status.success(), "{dump:?}");
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert!(
        dump["LDS"].as_object().is_some_and(|l| l
            .keys()
            .any(|name| name.ends_with(&format!("_{gateway_port}")))),
        "the leader dumps what the follower's gateway is served: {dump}"
    );
    assert!(!replicas[follower]
        .log_text()
        .contains("leading: writing AccessPoint status"));

    // A VIP from a member's pool, kept in the ConfigMap, and a name answering it, whose
    // status the leader writes.
    cluster.apply_ok(VIP_FLEET);
    let ns_status =
        |path: &str| cluster.jsonpath(&["get", "nameservice", "vip", "-n", "shop"], path);
    eventually(WAIT, "the NameService published with the VIP", || async {
        ns_status("{.status.addresses[0]}") == "192.0.2.1"
            && ns_status("{.status.conditions[0].reason}") == "Published"
    })
    .await;
    let vip_table = || {
        cluster.jsonpath(
            &["get", "configmap", "meridian-vips", "-n", "meridian-system"],
            "{.data}",
        )
    };
    assert!(vip_table().contains("192.0.2.1"), "{}", vip_table());
    // A NameService status patched by someone else is written back, as AccessPoints' are.
    let file = kube::config::Kubeconfig::read_from(&cluster.admin_kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    let names: kube::Api<meridian::api::NameService> =
        kube::Api::namespaced(kube::Client::try_from(config).unwrap(), "shop");
    names
        .patch_status(
            "vip",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                &serde_json::json!({"status": {"addresses": ["203.0.113.66"]}}),
            ),
        )
        .await
        .unwrap();
    eventually(
        WAIT,
        "the forged NameService addresses written back",
        || async { ns_status("{.status.addresses}") == r#"["192.0.2.1"]"# },
    )
    .await;

    // Traffic keeps flowing while the leader dies.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (http, stop) = (http.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(&http, gateway_port, "shop.example.test", "/").await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed)
        })
    };
    replicas[leader].kill();
    let killed_at = std::time::Instant::now();
    let both = "shop.example.test, shop2.example.test";
    cluster.apply_ok(&access_point("shop", "shop", port, "public", both));
    eventually(WAIT, "the new leader programs generation 2", || async {
        condition(&cluster, "shop", "Programmed", "observedGeneration") == "2"
            && condition(&cluster, "shop", "Ready", "status") == "True"
    })
    .await;
    let takeover = killed_at.elapsed();
    assert_eq!(holder(), replicas[follower].identity);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    // Lease duration plus one renew period for the standby to notice, plus the write itself.
    assert!(
        takeover < Duration::from_secs(4 + 1 + 2),
        "takeover took {takeover:?}"
    );
    eprintln!("status writes resumed {takeover:?} after the leader was killed; {ok} requests, none failed");

    // The new leader allocates from the table the old one kept: the next AccessPoint gets
    // the next address, and the first keeps its own.
    cluster.apply_ok(
        "apiVersion: meridian.dev/v1alpha1\nkind: AccessPoint\n\
         metadata: {name: vip2, namespace: shop}\n\
         spec: {placement: {clusters: [edge]}, template: {}}\n",
    );
    let vips_of = |ap: &str| {
        cluster.jsonpath(
            &["get", "accesspoint", ap, "-n", "shop"],
            "{.status.clusters[0].vips[0]}",
        )
    };
    eventually(WAIT, "the second VIP allocated", || async {
        vips_of("vip2") == "192.0.2.2"
    })
    .await;
    assert_eq!(vips_of("vip"), "192.0.2.1");
    assert_eq!(ns_status("{.status.addresses}"), r#"["192.0.2.1"]"#);
    assert_eq!(
        get(&http, gateway_port, "shop2.example.test", "/")
            .await
            .as_deref(),
        Ok("web")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_uses_the_ca_secret_and_credential_secrets() {
    let cluster = KubeCluster::start();
    let work = tempfile::tempdir().unwrap();
    let backend = Backend::start("web").await;
    install(&cluster, backend.port);
    // Plain ADS on loopback: keys go to a gateway without a client certificate only so.
    let controller = Controller::start(
        &cluster.controller_kubeconfig,
        work.path(),
        "replica-a",
        &["--insecure-serve-keys-without-mtls"],
    );
    let gateway_port = support::free_port();
    let _envoy = Envoy::start(
        work.path(),
        "gw-tls",
        "shop/public",
        controller.xds_port,
        true,
    );

    // The operator's own certificate for byo.example.test, from their own CA.
    let user = UserCertificate::new("byo.example.test", "byo", "shop");
    cluster.apply_ok(&user.secret_manifest);
    cluster.apply_ok(&format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: secure, namespace: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: public}}
      spec:
        servers:
        - {{port: {{number: {gateway_port}, protocol: HTTPS}}, hosts: [secure.example.test], tls: {{mode: SIMPLE}}}}
        - {{port: {{number: {gateway_port}, protocol: HTTPS}}, hosts: [byo.example.test], tls: {{mode: SIMPLE, credentialName: byo}}}}
    virtualServices:
    - metadata: {{name: secure}}
      spec:
        hosts: [secure.example.test, byo.example.test]
        gateways: [public]
        http: [{{route: [{{destination: {{host: web, port: {{number: 80}}}}}}]}}]
"#
    ));

    // Meridian's CA lives in a Secret the first replica created.
    let ca_json = cluster.kubectl_ok(&[
        "get",
        "secret",
        "meridian-ca",
        "-n",
        "meridian-system",
        "-o",
        "json",
    ]);
    let ca_secret: k8s_openapi::api::core::v1::Secret = serde_json::from_str(&ca_json).unwrap();
    assert_eq!(ca_secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca_file = work.path().join("meridian-ca.crt");
    std::fs::write(&ca_file, &ca_secret.data.as_ref().unwrap()["tls.crt"].0).unwrap();
    let user_ca_file = work.path().join("user-ca.crt");
    std::fs::write(&user_ca_file, &user.ca_pem).unwrap();

    eventually(WAIT, "HTTPS with Meridian's certificate", || async {
        curl_https(&ca_file, "secure.example.test", gateway_port, &[]).as_deref() == Ok("web")
    })
    .await;
    eventually(WAIT, "HTTPS with the user's certificate", || async {
        curl_https(&user_ca_file, "byo.example.test", gateway_port, &[]).as_deref() == Ok("web")
    })
    .await;
    let status =
        |path: &str| cluster.jsonpath(&["get", "accesspoint", "secure", "-n", "shop"], path);
    eventually(WAIT, "certificates in status", || async {
        status("{.status.clusters[0].certificates[*].serial}")
            .split_whitespace()
            .count()
            == 2
    })
    .await;
    assert_eq!(
        status("{.status.clusters[0].certificates[*].source}"),
        "embedded secret"
    );

    // The Secret goes away: its server is withdrawn and reported; the other keeps serving.
    cluster.kubectl_ok(&["delete", "secret", "byo", "-n", "shop"]);
    eventually(WAIT, "ResolvedRefs=False naming the credential", || async {
        condition(&cluster, "secure", "ResolvedRefs", "reason") == "InvalidCertificateRef"
    })
    .await;
    let message = condition(&cluster, "secure", "ResolvedRefs", "message");
    assert!(
        message.contains("spec.template.gateways[0].spec.servers[1].tls.credentialName: Secret shop/byo does not exist"),
        "{message}"
    );
    eventually(WAIT, "the byo server withdrawn", || async {
        curl_https(&user_ca_file, "byo.example.test", gateway_port, &[]).is_err()
    })
    .await;
    assert_eq!(
        curl_https(&ca_file, "secure.example.test", gateway_port, &[]).as_deref(),
        Ok("web")
    );
}
