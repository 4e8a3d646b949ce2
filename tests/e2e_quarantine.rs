//! One team's config that a real Envoy 1.40 rejects must not hold back another team's changes
//! on the same gateway port (issue 19, item 15).
//!
//! The Envoy here runs with the operator's runtime `re2.max_program_size.error_level: 20`,
//! stricter than the default of 100 Meridian validates against, so a regex Meridian accepts is
//! rejected by this Envoy: the kind of rejection no control-plane validation can foresee. Team B
//! writes such a regex into its route; team A's routes share the route configuration of the
//! port with it.

mod support;

use std::path::Path;
use std::time::Duration;

use meridian::control_plane::bootstrap::BootstrapOptions;
use support::*;

/// Program size 28 in RE2: above this Envoy's limit of 20, below the default 100.
const STRICT_REGEX: &str = "^/(alpha|beta|gamma|delta)/[0-9]+$";

fn gateway(port: u16) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: gateway, namespace: edge}}
spec:
  template:
    gateways:
    - metadata: {{name: public}}
      spec:
        servers:
        - port: {{number: {port}, protocol: HTTP}}
          bind: 127.0.0.1
          hosts: ["*/*.example.test"]
"#
    )
}

/// Team `name`'s AccessPoint: host `<name>.example.test`, `routes` in Istio's shape.
fn team(name: &str, routes: &str) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: team-{name}, namespace: shop}}
spec:
  template:
    virtualServices:
    - metadata: {{name: team-{name}}}
      spec:
        hosts: [{name}.example.test]
        gateways: [edge/public]
        http:
{routes}"#
    )
}

fn route(prefix: &str, backend: &str) -> String {
    format!(
        "        - match: [{{uri: {{prefix: {prefix}}}}}]\n          route: [{{destination: {{host: {backend}}}}}]\n"
    )
}

fn regex_route(regex: &str, backend: &str) -> String {
    format!(
        "        - match: [{{uri: {{regex: \"{regex}\"}}}}]\n          route: [{{destination: {{host: {backend}}}}}]\n"
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

async fn routes_to(
    client: &reqwest::Client,
    port: u16,
    host: &str,
    path: &str,
    backend: &str,
) -> bool {
    get(client, port, host, path).await.as_deref() == Ok(backend)
}

/// `(status, reason, message)` of `key`'s Programmed condition.
async fn programmed(
    client: &reqwest::Client,
    admin: std::net::SocketAddr,
    key: &str,
) -> (String, String, String) {
    let statuses = admin_json(client, admin, "/debug/status").await;
    let conditions = statuses[key]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = conditions.iter().find(|c| c["type"] == "Programmed");
    let field = |name: &str| {
        found
            .and_then(|c| c[name].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    (field("status"), field("reason"), field("message"))
}

async fn scenario(delta: bool) {
    let alpha = Backend::start("alpha").await;
    let beta = Backend::start("beta").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let (port, xds_port) = (free_port(), free_port());
    let client = client();

    write(
        &config,
        "backends.yaml",
        &(loopback_service("alpha", alpha.port) + &loopback_service("beta", beta.port)),
    );
    write(&config, "gateway.yaml", &gateway(port));
    write(&config, "team-a.yaml", &team("a", &route("/a", "alpha")));
    write(&config, "team-b.yaml", &team("b", &route("/b", "beta")));
    let meridian = start_meridian(&config, &state, xds_port).await;
    let options = BootstrapOptions {
        l4: false,
        node_id: "gw-strict".into(),
        gateway: "edge/public".into(),
        cluster: None,
        zone: None,
        xds_host: "127.0.0.1".into(),
        xds_port,
        delta,
        rest: None,
        admin_port: free_port(),
        tls: None,
    };
    let runtime = serde_json::json!({"re2.max_program_size.error_level": 20});
    let envoy = Envoy::launch_with_runtime(dir.path(), options, Some(runtime));
    eventually(Duration::from_secs(30), "both teams routed", || async {
        routes_to(&client, port, "a.example.test", "/a", "alpha").await
            && routes_to(&client, port, "b.example.test", "/b", "beta").await
    })
    .await;

    // Team B adds a route this Envoy rejects. It is held back; its old routes keep serving and
    // its status says why, in Envoy's words ("RE2 program size of 28 > max program size of 20").
    let bad = route("/b", "beta") + &regex_route(STRICT_REGEX, "alpha");
    write(&config, "team-b.yaml", &team("b", &bad));
    let admin = meridian.admin_addr;
    eventually(
        Duration::from_secs(20),
        "team B's rejection in its status",
        || async {
            let (status, reason, message) = programmed(&client, admin, "shop/team-b").await;
            status == "False"
                && reason == "Rejected"
                && message.contains("program size")
                && message.contains("keeps serving")
        },
    )
    .await;
    assert!(routes_to(&client, port, "b.example.test", "/b", "beta").await);

    // Team A's change on the same port still reaches Envoy.
    let a2 = route("/a2", "beta") + &route("/a", "alpha");
    write(&config, "team-a.yaml", &team("a", &a2));
    let took = eventually(
        Duration::from_secs(20),
        "team A's new route despite team B",
        || routes_to(&client, port, "a.example.test", "/a2", "beta"),
    )
    .await;
    eprintln!("team A's change served in {took:?} while team B's is held back");
    let (status, _, message) = programmed(&client, admin, "shop/team-a").await;
    assert_eq!(status, "True", "{message}");

    // The hold survives a restart: Meridian comes back serving B's accepted version, and A's
    // next change still goes through.
    meridian.shutdown().await.unwrap();
    let meridian = start_meridian(&config, &state, xds_port).await;
    let admin = meridian.admin_addr;
    let a3 = route("/a3", "beta") + &a2;
    write(&config, "team-a.yaml", &team("a", &a3));
    eventually(
        Duration::from_secs(20),
        "team A's change after a restart",
        || routes_to(&client, port, "a.example.test", "/a3", "beta"),
    )
    .await;
    let (status, reason, _) = programmed(&client, admin, "shop/team-b").await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Rejected"));

    // Team B fixes its route: tried again, served, programmed.
    let fixed = route("/b", "beta") + &regex_route("^/v[0-9]+$", "alpha");
    write(&config, "team-b.yaml", &team("b", &fixed));
    eventually(Duration::from_secs(20), "team B's fixed route", || {
        routes_to(&client, port, "b.example.test", "/v1", "alpha")
    })
    .await;
    eventually(Duration::from_secs(20), "team B programmed", || async {
        programmed(&client, admin, "shop/team-b").await.0 == "True"
    })
    .await;
    meridian.shutdown().await.unwrap();
    drop(envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_a_rejected_team_does_not_hold_back_the_others() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_a_rejected_team_does_not_hold_back_the_others() {
    scenario(true).await;
}
