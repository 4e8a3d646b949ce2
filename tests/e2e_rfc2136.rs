//! The RFC 2136 provider against a real BIND 9 started by the test, with a TSIG key: records
//! appear, change and disappear with the NameService; records Meridian does not own are left
//! alone; a server that is down at first is retried.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const KEY_NAME: &str = "meridian-key";

/// `named` in the foreground, killed on drop.
struct Bind {
    child: Child,
    port: u16,
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bind {
    fn start(dir: &Path, port: u16, secret: &str) -> Bind {
        std::fs::write(
            dir.join("example.org.zone"),
            "$ORIGIN example.org.\n$TTL 300\n\
             @ IN SOA ns1.example.org. hostmaster.example.org. 1 3600 600 86400 30\n\
             @ IN NS ns1.example.org.\n\
             ns1 IN A 127.0.0.1\n\
             keep IN A 203.0.113.50\n\
             taken IN A 203.0.113.51\n",
        )
        .unwrap();
        let conf = format!(
            r#"options {{
  directory "{dir}";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  pid-file "{dir}/named.pid";
  recursion no;
  dnssec-validation no;
}};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "example.org" {{
  type primary;
  file "{dir}/example.org.zone";
  allow-update {{ key "{KEY_NAME}"; }};
  allow-transfer {{ key "{KEY_NAME}"; }};
}};
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("named.conf"), conf).unwrap();
        let child = Command::new("named")
            .args(["-g", "-c"])
            .arg(dir.join("named.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("named.log")).unwrap())
            .spawn()
            .expect("named runs (Debian bind9)");
        Bind { child, port }
    }

    fn dig(&self, name: &str, kind: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.port.to_string(), name, kind])
            .args(["+short", "+time=1", "+tries=1"])
            .output()
            .unwrap();
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }
}

fn name_service(name: &str, fqdn: &str, address: &str, port: u16, secret_file: &Path) -> String {
    format!(
        r#"---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {{name: {name}, namespace: dns}}
spec:
  fqdn: {fqdn}
  ttl: 60
  target: {{addresses: ["{address}"]}}
  provider:
    rfc2136:
      server: 127.0.0.1:{port}
      zone: example.org
      tsigKey: {{name: {KEY_NAME}, secretFile: {secret_file}}}
"#,
        secret_file = secret_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_follow_the_name_service_and_foreign_ones_are_left_alone() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (config, bind_dir) = (dir.path().join("config"), dir.path().join("bind"));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&bind_dir).unwrap();
    let secret = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let secret_file = dir.path().join("tsig.secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let port = free_port();
    let write = |text: String| {
        let tmp = dir.path().join(".ns.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, config.join("ns.yaml")).unwrap();
    };
    write(format!(
        "{}{}",
        name_service("shop", "shop.example.org", "192.0.2.10", port, &secret_file),
        name_service(
            "taken",
            "taken.example.org",
            "192.0.2.99",
            port,
            &secret_file
        )
    ));

    // Meridian first: the server is down, and updates are retried until it is up.
    let meridian = start_meridian(&config, &dir.path().join("state"), free_port()).await;
    let status = |name: &'static str| {
        let admin = meridian.admin_addr;
        async move {
            let view = admin_json(&client(), admin, "/debug/dns").await;
            view["nameServices"][format!("dns/{name}")].clone()
        }
    };
    eventually(Duration::from_secs(10), "the failure in status", || async {
        let shop = status("shop").await;
        shop["conditions"][0]["reason"] == "ProviderFailing"
            && shop["provider"]["synced"] == false
            && shop["provider"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("127.0.0.1:{port}")))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bind = Bind::start(&bind_dir, port, &secret);
    eventually(Duration::from_secs(30), "shop in BIND", || async {
        bind.dig("shop.example.org", "A") == ["192.0.2.10"]
    })
    .await;
    assert_eq!(
        bind.dig("meridian-owner.shop.example.org", "TXT"),
        ["\"heritage=meridian,nameservice=dns/shop\""]
    );
    assert_eq!(
        bind.dig("taken.example.org", "A"),
        ["203.0.113.51"],
        "not ours: untouched"
    );
    assert_eq!(bind.dig("keep.example.org", "A"), ["203.0.113.50"]);
    eventually(Duration::from_secs(10), "status caught up", || async {
        let shop = status("shop").await;
        shop["conditions"][0]["status"] == "True" && shop["provider"]["synced"] == true
    })
    .await;
    let (shop, taken) = (status("shop").await, status("taken").await);
    assert_eq!(
        shop["addresses"],
        serde_json::json!(["192.0.2.10"]),
        "{shop}"
    );
    assert_eq!(
        shop["conditions"][0]["message"],
        format!("published to 127.0.0.1:{port} in zone example.org")
    );
    assert_eq!(taken["conditions"][0]["reason"], "NameTaken", "{taken}");
    assert_eq!(
        taken["conditions"][0]["message"],
        "taken.example.org already exists on the server and is not Meridian's"
    );

    // A changed address replaces the record.
    write(format!(
        "{}{}",
        name_service("shop", "shop.example.org", "192.0.2.11", port, &secret_file),
        name_service(
            "taken",
            "taken.example.org",
            "192.0.2.99",
            port,
            &secret_file
        )
    ));
    eventually(Duration::from_secs(30), "shop changed", || async {
        bind.dig("shop.example.org", "A") == ["192.0.2.11"]
    })
    .await;

    // `taken` goes: it never owned its name, so nothing changes there.
    write(name_service(
        "shop",
        "shop.example.org",
        "192.0.2.11",
        port,
        &secret_file,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bind.dig("taken.example.org", "A"), ["203.0.113.51"]);
    assert_eq!(bind.dig("shop.example.org", "A"), ["192.0.2.11"]);

    // The last NameService of the provider goes: its records and ownership mark go; nothing
    // else does.
    write(String::new());
    eventually(Duration::from_secs(30), "shop removed", || async {
        bind.dig("shop.example.org", "A").is_empty()
            && bind
                .dig("meridian-owner.shop.example.org", "TXT")
                .is_empty()
    })
    .await;
    assert_eq!(bind.dig("taken.example.org", "A"), ["203.0.113.51"]);
    assert_eq!(bind.dig("keep.example.org", "A"), ["203.0.113.50"]);
    meridian.shutdown().await.unwrap();
}
