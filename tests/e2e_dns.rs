//! VIPs and the embedded DNS server, queried with the real `dig`: AccessPoints get a VIP per
//! cluster from its pools, NameServices answer them with their TTL, NXDOMAIN and NODATA are
//! told apart, VIPs survive restarts, a full pool is reported, and malformed packets are
//! shrugged off.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meridian::control_plane::standalone::Running;
use support::*;

const ZONE: &str = "example.test";

/// Two clusters with pools (east: room for two VIPs), AccessPoints placed on `placement`.
fn manifest(access_points: &[(&str, &str)]) -> String {
    let mut yaml = String::from(
        r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east}
spec: {zone: east-1, vipPools: [{name: east-main, cidrs: ["192.0.2.0/30"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: west}
spec: {zone: west-1, vipPools: [{name: west-main, cidrs: ["198.51.100.0/24"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: shop, namespace: shop}
spec: {fqdn: shop.example.test, ttl: 45, target: {accessPoint: shop}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: v6only, namespace: shop}
spec: {fqdn: v6only.example.test, target: {addresses: ["2001:db8::7"]}}
"#,
    );
    for (i, (name, clusters)) in access_points.iter().enumerate() {
        yaml.push_str(&format!(
            r#"---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: {name}, namespace: shop, creationTimestamp: "2026-01-01T00:00:0{i}Z"}}
spec:
  placement: {{clusters: [{clusters}]}}
  template: {{}}
"#
        ));
    }
    yaml
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(access_points: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let f = Fixture { dir };
        f.write(access_points);
        f
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, access_points: &[(&str, &str)]) {
        let tmp = self.path().join(".fleet.yaml.tmp");
        std::fs::write(&tmp, manifest(access_points)).unwrap();
        std::fs::rename(&tmp, self.path().join("config").join("fleet.yaml")).unwrap();
    }

    async fn start(&self) -> Running {
        self.start_on(free_port()).await
    }

    async fn start_on(&self, xds_port: u16) -> Running {
        let mut options = meridian_options(
            &self.path().join("config"),
            &self.path().join("state"),
            xds_port,
        );
        options.dns.dns_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        options.dns.dns_zones = vec![ZONE.to_owned()];
        meridian::control_plane::standalone::start(options)
            .await
            .expect("meridian starts")
    }
}

/// `dig` against Meridian: returns the full output.
fn dig(server: SocketAddr, name: &str, kind: &str, extra: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, kind])
        .args(["+time=2", "+tries=1"])
        .args(extra)
        .output()
        .expect("dig runs (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The answer section as (ttl, address) pairs, sorted.
fn answers(server: SocketAddr, name: &str, kind: &str) -> Vec<(u32, String)> {
    let text = dig(server, name, kind, &["+noall", "+answer"]);
    let mut out: Vec<(u32, String)> = text
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() == 5).then(|| (fields[1].parse().unwrap_or(0), fields[4].to_owned()))
        })
        .collect();
    out.sort();
    out
}

fn status_line(server: SocketAddr, name: &str, kind: &str) -> String {
    dig(server, name, kind, &["+noall", "+comments"])
        .lines()
        .find(|l| l.contains("status:"))
        .unwrap_or_default()
        .to_owned()
}

async fn statuses(running: &Running) -> serde_json::Value {
    admin_json(&client(), running.admin_addr, "/debug/status").await
}

fn cluster<'a>(statuses: &'a serde_json::Value, ap: &str, name: &str) -> &'a serde_json::Value {
    statuses[format!("shop/{ap}")]["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vips_are_answered_over_dns_and_survive_restarts() {
    let f = Fixture::new(&[("shop", "east, west"), ("api", "east")]);
    let meridian = f.start().await;
    let dns = meridian.dns_addr.expect("DNS is serving");

    // Two VIPs, one per cluster, with the configured TTL; over UDP and TCP alike.
    let want = vec![
        (45, "192.0.2.1".to_owned()),
        (45, "198.51.100.1".to_owned()),
    ];
    eventually(Duration::from_secs(10), "both VIPs in DNS", || async {
        answers(dns, "shop.example.test", "A") == want
    })
    .await;
    let tcp = dig(dns, "shop.example.test", "A", &["+tcp", "+short"]);
    assert_eq!(tcp.lines().count(), 2, "{tcp}");

    // The admin view shows what DNS serves, and what it cannot.
    let view = admin_json(&client(), meridian.admin_addr, "/debug/dns").await;
    assert_eq!(view["names"]["shop.example.test"]["ttl"], 45, "{view}");
    assert_eq!(
        view["names"]["shop.example.test"]["nameService"],
        "shop/shop"
    );
    assert_eq!(view["problems"], serde_json::json!([]), "{view}");

    // Status shows them per cluster.
    let status = statuses(&meridian).await;
    assert_eq!(cluster(&status, "shop", "east")["vips"][0], "192.0.2.1");
    assert_eq!(cluster(&status, "shop", "west")["vips"][0], "198.51.100.1");
    assert_eq!(cluster(&status, "api", "east")["vips"][0], "192.0.2.2");

    // NXDOMAIN for a name that does not exist, NODATA for a type a name lacks.
    assert!(
        status_line(dns, "nothing.example.test", "A").contains("status: NXDOMAIN"),
        "{}",
        dig(dns, "nothing.example.test", "A", &[])
    );
    let nodata = dig(dns, "shop.example.test", "AAAA", &[]);
    assert!(nodata.contains("status: NOERROR"), "{nodata}");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    assert!(
        nodata.contains("IN\tSOA"),
        "NODATA carries the SOA: {nodata}"
    );
    assert_eq!(
        answers(dns, "v6only.example.test", "AAAA"),
        [(30, "2001:db8::7".to_owned())]
    );
    // SOA and NS of the zone.
    assert_eq!(
        answers(dns, ZONE, "NS"),
        [(3600, "ns1.example.test.".to_owned())]
    );

    // A third AccessPoint in east finds its pool full: reported, naming the pool.
    f.write(&[("shop", "east, west"), ("api", "east"), ("late", "east")]);
    eventually(
        Duration::from_secs(10),
        "the full pool reported",
        || async {
            cluster(&statuses(&meridian).await, "late", "east")["message"]
                .as_str()
                .is_some_and(|m| {
                    m.contains("VIP pool east-main of cluster east has no free V4 address")
                })
        },
    )
    .await;
    let view = admin_json(&client(), meridian.admin_addr, "/debug/dns").await;
    assert_eq!(
        view["vipErrors"][0], "VIP pool east-main of cluster east has no free V4 address",
        "{view}"
    );

    // `shop` leaves west: its west VIP leaves the answer.
    f.write(&[("shop", "east"), ("api", "east"), ("late", "east")]);
    eventually(
        Duration::from_secs(10),
        "the west VIP withdrawn",
        || async { answers(dns, "shop.example.test", "A") == vec![(45, "192.0.2.1".to_owned())] },
    )
    .await;

    // `api` goes away; after a restart every remaining VIP is where it was, and `late` gets
    // the freed address.
    f.write(&[("shop", "east"), ("late", "east")]);
    eventually(
        Duration::from_secs(10),
        "late gets the freed VIP",
        || async { cluster(&statuses(&meridian).await, "late", "east")["vips"][0] == "192.0.2.2" },
    )
    .await;
    let before = statuses(&meridian).await;
    meridian.shutdown().await.unwrap();
    let meridian = f.start().await;
    let after = statuses(&meridian).await;
    for ap in ["shop", "late"] {
        assert_eq!(
            cluster(&before, ap, "east")["vips"],
            cluster(&after, ap, "east")["vips"],
            "{ap} keeps its VIP across the restart"
        );
    }
    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_never_stop_the_server() {
    use rand::{Rng, SeedableRng};
    let f = Fixture::new(&[("shop", "east")]);
    let meridian = f.start().await;
    let dns = meridian.dns_addr.expect("DNS is serving");
    eventually(Duration::from_secs(10), "the VIP in DNS", || async {
        !answers(dns, "shop.example.test", "A").is_empty()
    })
    .await;

    // Random bytes, truncated and bit-flipped real queries, over UDP and TCP.
    let query = dns_query("shop.example.test");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..3000 {
        let packet: Vec<u8> = match i % 3 {
            0 => (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect(),
            1 => query[..rng.gen_range(0..query.len())].to_vec(),
            _ => {
                let mut flipped = query.clone();
                let at = rng.gen_range(0..flipped.len());
                flipped[at] ^= 1 << rng.gen_range(0..8);
                flipped
            }
        };
        udp.send_to(&packet, dns).await.unwrap();
    }
    for _ in 0..50 {
        use tokio::io::AsyncWriteExt;
        if let Ok(mut tcp) = tokio::net::TcpStream::connect(dns).await {
            let junk: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect();
            let _ = tcp.write_all(&junk).await;
        }
    }
    // Still answering, over both transports.
    assert_eq!(answers(dns, "shop.example.test", "A").len(), 1);
    let tcp = dig(dns, "shop.example.test", "A", &["+tcp", "+short"]);
    assert_eq!(tcp.trim(), "192.0.2.1");
    meridian.shutdown().await.unwrap();
}

/// A well-formed query for `name` (type A), as bytes.
fn dns_query(name: &str) -> Vec<u8> {
    let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}

/// East and west, each with a VIP pool.
const TWO_CLUSTERS: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east}
spec: {zone: east-1, vipPools: [{name: east-main, cidrs: ["192.0.2.0/24"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: west}
spec: {zone: west-1, vipPools: [{name: west-main, cidrs: ["198.51.100.0/24"]}]}
"#;

/// One endpoint of Service `web` read from `cluster`, ready or not.
fn web_slice(cluster: &str, ready: bool) -> String {
    format!(
        r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-{cluster}
  namespace: shop
  labels: {{kubernetes.io/service-name: web, meridian.dev/cluster: {cluster}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: {ready}}}}}]
ports: [{{name: http, port: 80}}]
"#
    )
}

/// The Failover fixture: `shop` on east and west, with a ready or unready endpoint in each.
fn failover_manifest(east_ready: bool, west_ready: bool) -> String {
    format!(
        r#"{TWO_CLUSTERS}---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  placement: {{clusters: [east, west]}}
  template:
    service:
      metadata: {{name: web}}
      spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {{name: shop, namespace: shop}}
spec: {{fqdn: shop.example.test, ttl: 5, policy: Failover, target: {{accessPoint: shop}}}}
{}{}"#,
        web_slice("east", east_ready),
        web_slice("west", west_ready)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_withdraws_an_unhealthy_cluster_and_brings_it_back() {
    let f = Fixture::new(&[]);
    let write = |east: bool, west: bool| {
        let tmp = f.path().join(".fleet.yaml.tmp");
        std::fs::write(&tmp, failover_manifest(east, west)).unwrap();
        std::fs::rename(&tmp, f.path().join("config").join("fleet.yaml")).unwrap();
    };
    write(true, true);
    let meridian = f.start().await;
    let dns = meridian.dns_addr.expect("DNS is serving");
    let addresses = || {
        answers(dns, "shop.example.test", "A")
            .into_iter()
            .map(|(_, a)| a)
            .collect::<Vec<_>>()
    };
    let both = vec!["192.0.2.1".to_owned(), "198.51.100.1".to_owned()];
    eventually(
        Duration::from_secs(10),
        "both clusters answered",
        || async { addresses() == both },
    )
    .await;
    write(true, false);
    eventually(Duration::from_secs(10), "west withdrawn", || async {
        addresses() == vec!["192.0.2.1".to_owned()]
    })
    .await;
    write(true, true);
    eventually(Duration::from_secs(10), "west back", || async {
        addresses() == both
    })
    .await;
    meridian.shutdown().await.unwrap();
}

/// `shop` behind gateway `public` on east and west, with ready endpoints in both, and a
/// Failover name preferring east 99 to 1, except for clients in 10.9.0.0/16 (west's).
fn preferences_manifest(gateway_port: u16) -> String {
    format!(
        r#"{TWO_CLUSTERS}---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: shop, namespace: shop}}
spec:
  placement: {{clusters: [east, west]}}
  template:
    service:
      metadata: {{name: web}}
      spec: {{ports: [{{name: http, port: 80}}]}}
    gateways:
    - metadata: {{name: public}}
      spec: {{servers: [{{port: {{number: {gateway_port}, protocol: HTTP}}, hosts: ["*"]}}]}}
    virtualServices:
    - metadata: {{name: shop}}
      spec:
        hosts: [shop.example.test]
        gateways: [public]
        http: [{{route: [{{destination: {{host: web}}}}]}}]
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {{name: shop, namespace: shop}}
spec:
  fqdn: shop.example.test
  policy: Failover
  target: {{accessPoint: shop}}
  zones: [{{zone: east-1, weight: 99}}, {{zone: west-1, weight: 1}}]
  sourceZones: [{{zone: west-1, cidrs: [10.9.0.0/16]}}]
{}{}"#,
        web_slice("east", true),
        web_slice("west", true)
    )
}

/// How many of `n` A queries (one `dig` run) each address answered.
fn tally(server: SocketAddr, name: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut args = vec![
        format!("@{}", server.ip()),
        "-p".to_owned(),
        server.port().to_string(),
        "+short".to_owned(),
        "+time=2".to_owned(),
        "+tries=1".to_owned(),
    ];
    for _ in 0..n {
        args.extend([name.to_owned(), "A".to_owned()]);
    }
    let out = Command::new("dig").args(&args).output().expect("dig runs");
    let mut counts = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        *counts.entry(line.trim().to_owned()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_client_subnets_and_gateway_health_choose_the_answer() {
    let f = Fixture::new(&[]);
    let gateway_port = free_port();
    let tmp = f.path().join(".fleet.yaml.tmp");
    std::fs::write(&tmp, preferences_manifest(gateway_port)).unwrap();
    std::fs::rename(&tmp, f.path().join("config").join("fleet.yaml")).unwrap();
    let xds_port = free_port();
    let meridian = f.start_on(xds_port).await;
    let dns = meridian.dns_addr.expect("DNS is serving");
    let (east, west) = ("192.0.2.1".to_owned(), "198.51.100.1".to_owned());
    eventually(Duration::from_secs(10), "the name answered", || async {
        !answers(dns, "shop.example.test", "A").is_empty()
    })
    .await;

    // No gateway proxy anywhere yet: endpoints decide, both zones qualify, and the weights
    // split 100 queries exactly 99 to 1, one zone per answer.
    let counts = tally(dns, "shop.example.test", 100);
    assert_eq!(counts.get(&east), Some(&99), "{counts:?}");
    assert_eq!(counts.get(&west), Some(&1), "{counts:?}");

    // A resolver forwarding a client subnet of west's gets west, and the reply says the
    // answer holds for that whole subnet (RFC 7871 scope).
    let ecs = dig(dns, "shop.example.test", "A", &["+subnet=10.9.4.0/24"]);
    assert!(ecs.contains("CLIENT-SUBNET: 10.9.4.0/24/24"), "{ecs}");
    for _ in 0..5 {
        let short = dig(
            dns,
            "shop.example.test",
            "A",
            &["+subnet=10.9.4.0/24", "+short"],
        );
        assert_eq!(short.trim(), west);
    }

    // A real Envoy in west serves the AccessPoint: east, with endpoints but no gateway
    // proxy serving it, leaves the answer, whatever the weights say.
    let envoy = support::Envoy::start_in(
        f.path(),
        "gw-west",
        "shop/public",
        xds_port,
        false,
        Some(("west", "west-1")),
    );
    eventually(Duration::from_secs(20), "only west answered", || async {
        tally(dns, "shop.example.test", 10)
            .keys()
            .collect::<Vec<_>>()
            == [&west]
    })
    .await;
    let view = admin_json(&client(), meridian.admin_addr, "/debug/dns").await;
    assert_eq!(
        view["names"]["shop.example.test"]["zones"][0]["zone"], "west-1",
        "{view}"
    );

    // The gateway goes away: no proxy serves it anywhere, so endpoints decide again.
    drop(envoy);
    eventually(Duration::from_secs(20), "east back", || async {
        tally(dns, "shop.example.test", 100).get(&east) == Some(&99)
    })
    .await;
    meridian.shutdown().await.unwrap();
}
