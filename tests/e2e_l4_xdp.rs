//! `meridian l4` with its XDP packet path, in network namespaces this test makes: a client
//! reaches the VIP through the node, whose XDP program (generic mode, on both of its veths)
//! forwards every connection to a gateway — a real Envoy and a real `meridian proxy` fed by
//! one Meridian — with full NAT, so the node's user-space listeners accept none. The kernels
//! at both ends verify every checksum the program rewrote (transmit checksum offload is off,
//! as on a wire). A gateway the node can no longer reach leaves the packet path's table with
//! the user-space one, and no connection fails after; at SIGTERM the node drains and detaches
//! the program.
//!
//! ```text
//!  client ─── eth1 l4 node (meridian l4, XDP on eth0 and eth1) eth0 ─── hub: Meridian, gateways
//!  10.98.0.2  10.98.0.1                                   10.99.0.11    10.99.0.1, .21, .22
//! ```

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian::control_plane::bootstrap::BootstrapOptions;
use support::netns::{http_get, Netns};
use support::*;

const VIP: &str = "10.100.0.1";
const POOL: &str = "10.100.0.0/29";
const GATEWAYS: [&str; 2] = ["10.99.0.21", "10.99.0.22"];

fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn admin(node: &Netns, port: u16, path: &str) -> String {
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    node.enter(|| http_get(address, "admin", path))
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The sum of a metric's series whose line starts with `prefix`.
fn metric(node: &Netns, port: u16, prefix: &str) -> u64 {
    admin(node, port, "/stats/prometheus")
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Turns transmit checksum offload off, so packets carry whole checksums as on a wire.
fn whole_checksums(netns: &Netns, device: &str) {
    let output = netns
        .enter(|| {
            std::process::Command::new("ethtool")
                .args(["-K", device, "tx", "off"])
                .output()
        })
        .expect("ethtool (`make test` installs it)");
    assert!(
        output.status.success(),
        "ethtool -K {device} tx off: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packet_path_forwards_connections_to_the_gateways_and_follows_their_health() {
    assert!(
        netns::available(),
        "this test makes network namespaces: run it as root with iproute2"
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    let hub = support::l4::hub_namespace("xhub", GATEWAYS);
    let node = Netns::new("xnode");
    support::l4::join_hub(&hub, &node, "xnode", "10.99.0.11/24");
    let client = support::l4::client_behind(&node, "xclient");
    node.ip(&["route", "add", "local", POOL, "dev", "lo"]);
    node.sysctl("net.ipv4.ip_forward", "1");
    whole_checksums(&client, "eth0");
    whole_checksums(&hub, "br0");
    whole_checksums(&hub, "xnode");

    let (vip_port, gateway_port, xds_port) = (8080, 8081, 18000);
    let _hub_services = support::l4::serve_hub(
        &hub,
        dir,
        (GATEWAYS, POOL),
        (vip_port, gateway_port, xds_port),
    );

    let admin_port = free_port();
    let options = BootstrapOptions {
        l4: true,
        admin_port,
        xds_host: "10.99.0.1".into(),
        ..bootstrap_options("l4-xdp", "meridian-system/l4", xds_port)
    };
    let args = [
        "--xdp-interface",
        "eth0",
        "--xdp-interface",
        "eth1",
        "--xdp-mode",
        "generic",
    ];
    let l4 = node.enter(|| MeridianProxy::start_l4_with(dir, options, &args));
    wait_for(
        Duration::from_secs(30),
        "the VIP served on the packet path",
        || {
            let ready = admin(&node, admin_port, "/ready");
            ready.contains(" serving ") && ready.contains("packet path: 1 VIP:ports on eth0 eth1")
        },
    );
    let attached = |device: &str| {
        let output = node
            .enter(|| {
                std::process::Command::new("ip")
                    .args(["-d", "link", "show", "dev", device])
                    .output()
            })
            .unwrap();
        String::from_utf8_lossy(&output.stdout).contains("xdpgeneric")
    };
    assert!(attached("eth0") && attached("eth1"), "XDP attached to both");

    // Both gateways serve (Envoy may start late on a loaded machine), and the node's checks
    // have both in its table: the packet path does not retry a refused connection elsewhere.
    wait_for(Duration::from_secs(60), "both gateways serving", || {
        GATEWAYS.iter().all(|gateway| {
            let address: SocketAddr = format!("{gateway}:{gateway_port}").parse().unwrap();
            matches!(
                hub.enter(|| http_get(address, "shop.example.test", "/")),
                Ok((200, _))
            )
        })
    });
    wait_for(
        Duration::from_secs(30),
        "both gateways in the node's table",
        || {
            let dump = admin(&node, admin_port, "/config_dump");
            dump.contains("\"failed\":[]")
                && GATEWAYS
                    .iter()
                    .all(|g| dump.contains(&format!("\"{g}:{gateway_port}\"")))
        },
    );
    let vip: SocketAddr = format!("{VIP}:{vip_port}").parse().unwrap();
    let ask = |count: usize| {
        client.enter(|| {
            (0..count)
                .map(|_| http_get(vip, "shop.example.test", "/"))
                .collect::<Vec<_>>()
        })
    };
    let answers = ask(40);
    let failed: Vec<_> = answers
        .iter()
        .filter(|r| !matches!(r, Ok((200, _))))
        .collect();
    assert!(failed.is_empty(), "through the packet path: {failed:?}");
    let bodies: Vec<&str> = answers
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(_, b)| b.as_str()))
        .collect();
    assert!(
        bodies.iter().any(|b| b.contains("alpha")) && bodies.iter().any(|b| b.contains("beta")),
        "both gateways take connections: {bodies:?}"
    );
    // The gateways saw the node's address (full NAT), and the node's listeners saw nothing.
    assert!(
        bodies.iter().all(|b| b.contains("10.99.0.11")),
        "gateways see the node's address: {bodies:?}"
    );
    let accepted = metric(&node, admin_port, "meridian_l4_connections_total{");
    assert_eq!(accepted, 0, "the user-space listeners accepted connections");
    // (The node reads the program's counters every 100 ms.)
    wait_for(Duration::from_secs(2), "40 new flows counted", || {
        metric(
            &node,
            admin_port,
            "meridian_l4_packet_path_events_total{event=\"new_flow\"}",
        ) >= 40
    });

    // The node loses its route to gateway a: its checks fail it, and the packet path stops
    // sending it connections with the user-space table.
    node.ip(&["route", "add", "blackhole", &format!("{}/32", GATEWAYS[0])]);
    wait_for(Duration::from_secs(20), "gateway a failed", || {
        admin(&node, admin_port, "/config_dump").contains("\"failed\":[\"10.99.0.21:8081\"]")
    });
    std::thread::sleep(Duration::from_millis(300));
    let answers = ask(30);
    let failed: Vec<_> = answers
        .iter()
        .filter(|r| !matches!(r, Ok((200, body)) if body.contains("beta")))
        .collect();
    assert!(failed.is_empty(), "after gateway a failed: {failed:?}");
    assert_eq!(
        metric(&node, admin_port, "meridian_l4_connections_total{"),
        0
    );

    // SIGTERM: the node drains (no flow is moving) and detaches its program.
    let mut l4 = l4;
    let status = l4.terminate();
    assert!(status.success(), "meridian l4 exited with {status}");
    assert!(
        l4.log_text().contains("packet path detached"),
        "{}",
        l4.log_text()
    );
    wait_for(Duration::from_secs(5), "XDP detached", || {
        !attached("eth0") && !attached("eth1")
    });
}
