//! The three-cluster fleet of the staged-rollout tests: manifests, and what each cluster's
//! Envoy answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{eventually, get, Envoy};

pub const CLUSTERS: [&str; 3] = ["canary", "east", "west"];

pub const FLEET: &str = include_str!("../fixtures/three_clusters.yaml");

/// The AccessPoint: one direct response whose body names the version; every cluster's gateway
/// listens on its own port (overrides), since all Envoys share this host.
pub fn web(ports: &[u16; 3], body: &str, mode: &str, extra_route: &str) -> String {
    let http = format!(
        "{extra_route}\n        - directResponse: {{status: 200, body: {{string: \"{body}\"}}}}"
    );
    access_point(ports, mode, "", &http)
}

/// The AccessPoint routing every request to Service `backend`, with the canary's health
/// watched: more than 10 % failed requests (of at least 5 in 10 s) halts the rollout.
pub fn routed_web(ports: &[u16; 3], backend: &str) -> String {
    let health = "\n    health: {maxErrorPercent: 10, minRequests: 5, windowSeconds: 10}";
    let http = format!("\n        - route: [{{destination: {{host: {backend}}}}}]");
    access_point(ports, "Serve", health, &http)
}

/// `web` with the given HTTP routes and extra `spec.rollout` fields.
fn access_point(ports: &[u16; 3], mode: &str, rollout_extra: &str, http: &str) -> String {
    let overrides: String = CLUSTERS
        .iter()
        .zip(ports)
        .map(|(cluster, port)| {
            format!(
                "  - clusterName: {cluster}\n    patches: [{{op: replace, path: /gateways/0/spec/servers/0/port/number, value: {port}}}]\n"
            )
        })
        .collect();
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: web, namespace: shop}}
spec:
  placement: {{clusters: [canary, east, west]}}
  rollout:
    strategy: Staged
    mode: {mode}
    progressDeadlineSeconds: 60{rollout_extra}
    stages:
    - {{name: canary, clusters: [canary], requireApproval: true}}
    - {{name: rest, clusters: [east, west]}}
  template:
    gateways:
    - metadata: {{name: public}}
      spec:
        servers:
        - port: {{number: 1, protocol: HTTP}}
          bind: 127.0.0.1
          hosts: ["*"]
    virtualServices:
    - metadata: {{name: web}}
      spec:
        hosts: ["*"]
        gateways: [public]
        http:{http}
  overrides:
{overrides}"#
    )
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub xds_port: u16,
    pub ports: [u16; 3],
    pub client: reqwest::Client,
}

impl Fleet {
    /// One Envoy per cluster (zones z1–z3) for gateway `shop/public`, working in `dir`.
    pub fn start_envoys(&self, dir: &Path, delta: bool) -> Vec<Envoy> {
        CLUSTERS
            .iter()
            .zip(["z1", "z2", "z3"])
            .map(|(cluster, zone)| {
                Envoy::start_in(
                    dir,
                    &format!("gw-{cluster}"),
                    "shop/public",
                    self.xds_port,
                    delta,
                    Some((cluster, zone)),
                )
            })
            .collect()
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn write_web(&self, body: &str, mode: &str, extra_route: &str) {
        let text = web(&self.ports, body, mode, extra_route);
        std::fs::write(self.config_dir().join("web.yaml"), text).unwrap();
    }

    /// A revision every Envoy NACKs: a second server on `taken`, a port another socket holds
    /// (the proxy cannot bind it; validation cannot know).
    pub fn write_web_unbindable(&self, body: &str, taken: u16) {
        let server = "          hosts: [\"*\"]\n";
        let text = web(&self.ports, body, "Serve", "").replacen(
            server,
            &format!("{server}        - port: {{number: {taken}, protocol: HTTP}}\n          bind: 127.0.0.1\n{server}"),
            1,
        );
        std::fs::write(self.config_dir().join("web.yaml"), text).unwrap();
    }

    /// What each cluster's Envoy answers (the body, or the error).
    pub async fn bodies(&self) -> Vec<String> {
        let mut out = Vec::new();
        for port in self.ports {
            out.push(match get(&self.client, port, "web.test", "/").await {
                Ok(body) => body,
                Err(e) => format!("error: {e}"),
            });
        }
        out
    }

    pub async fn wait_for(&self, expected: [&str; 3], what: &str) {
        eventually(Duration::from_secs(20), what, || async {
            self.bodies().await == expected
        })
        .await;
    }

    /// Asserts the bodies stay `expected` for a while (nothing moves on its own).
    pub async fn stays(&self, expected: [&str; 3]) {
        for _ in 0..8 {
            assert_eq!(self.bodies().await, expected);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}
