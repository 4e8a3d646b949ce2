//! The shop: two loopback backends (alpha, beta) behind a gateway `edge/public` on one
//! loopback port, with host, path and weighted routes, as a directory of manifests a test
//! edits.

use std::path::Path;

use super::{free_port, get, loopback_service, Backend};

pub fn shop_manifest(gateway_port: u16, path_a_backend: &str, extra_route: &str) -> String {
    format!(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  template:
    gateways:
    - metadata: {{name: public, namespace: edge}}
      spec:
        servers:
        - port: {{number: {gateway_port}, protocol: HTTP}}
          bind: 127.0.0.1
          hosts: ["*/*.example.test"]
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.test]
        gateways: [edge/public]
        http:
{extra_route}        - match: [{{uri: {{prefix: /a}}}}]
          route: [{{destination: {{host: {path_a_backend}}}}}]
        - route: [{{destination: {{host: beta}}}}]
    - metadata: {{name: split}}
      spec:
        hosts: [split.example.test]
        gateways: [edge/public]
        http:
        - route:
          - destination: {{host: alpha}}
            weight: 90
          - destination: {{host: beta}}
            weight: 10
"#
    )
}

pub fn backends_manifest(alpha: u16, beta: u16) -> String {
    loopback_service("alpha", alpha) + &loopback_service("beta", beta)
}

pub struct Fixture {
    pub _alpha: Backend,
    pub _beta: Backend,
    pub dir: tempfile::TempDir,
    pub gateway_port: u16,
    pub xds_port: u16,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let alpha = Backend::start("alpha").await;
        let beta = Backend::start("beta").await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let fixture = Fixture {
            gateway_port: free_port(),
            xds_port: free_port(),
            _alpha: alpha,
            _beta: beta,
            dir,
        };
        fixture.write(
            "backends.yaml",
            &backends_manifest(fixture._alpha.port, fixture._beta.port),
        );
        fixture.write(
            "shop.yaml",
            &shop_manifest(fixture.gateway_port, "alpha", ""),
        );
        fixture
    }

    pub fn config_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("config")
    }

    pub fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Writes atomically (rename), as editors and config management do.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_dir().join(name)).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub async fn routes_to(
    client: &reqwest::Client,
    port: u16,
    host: &str,
    path: &str,
    want: &str,
) -> bool {
    get(client, port, host, path).await.as_deref() == Ok(want)
}

/// `manifest` with a second server of the gateway on `port` (a new listener).
pub fn with_server_on(manifest: &str, port: u16) -> String {
    let first = "          hosts: [\"*/*.example.test\"]\n";
    manifest.replacen(
        first,
        &format!("{first}        - port: {{number: {port}, protocol: HTTP}}\n          bind: 127.0.0.1\n{first}"),
        1,
    )
}

/// (status, reason) of one condition of `shop/shop` in `/debug/status`.
pub fn condition(statuses: &serde_json::Value, kind: &str) -> (String, String) {
    let conditions = statuses["shop/shop"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = conditions.iter().find(|c| c["type"] == kind);
    let field = |name: &str| {
        found
            .and_then(|c| c[name].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    (field("status"), field("reason"))
}
