//! The L4 tier over BGP and ECMP, in network namespaces this test makes: two `meridian l4`
//! nodes announce the VIP through their own BIRD 2 to a router namespace running BIRD, which
//! installs a multipath route; a client namespace reaches the VIP through the router. A node
//! whose gateways all fail withdraws its route and traffic goes on through the other; a node
//! that drains withdraws first, and no connection fails.
//!
//! ```text
//!  client ── router (BIRD, ECMP) ──┬── l4-1 (meridian l4 + BIRD) ──┐
//!  10.98.0.2  10.98.0.1/10.99.0.2  └── l4-2 (meridian l4 + BIRD) ──┴── hub: Meridian, gateways
//!                                       10.99.0.11 / 10.99.0.12        10.99.0.1, .21, .22
//! ```

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use meridian::control_plane::bootstrap::BootstrapOptions;
use support::netns::{http_get, Daemon, Netns};
use support::*;

const VIP: &str = "10.100.0.1";
const POOL: &str = "10.100.0.0/29";
const GATEWAYS: [&str; 2] = ["10.99.0.21", "10.99.0.22"];
const ROUTER_AS: u32 = 65000;

/// BIRD on the router: a BGP session per L4 node, routes learnt merged into one multipath
/// kernel route.
fn router_bird(nodes: &[(&str, u32)]) -> String {
    let mut config = String::from(
        "router id 10.99.0.2;\nprotocol device {}\n\
         protocol kernel { ipv4 { export all; }; merge paths on; }\n",
    );
    for (i, (address, asn)) in nodes.iter().enumerate() {
        config.push_str(&format!(
            "protocol bgp node{i} {{ local 10.99.0.2 as {ROUTER_AS}; neighbor {address} as {asn}; \
             connect retry time 1; error wait time 1, 2; hold time 9; keepalive time 3; \
             ipv4 {{ import all; export none; }}; }}\n"
        ));
    }
    config
}

/// BIRD on an L4 node: announces what `meridian l4` writes to `vips` to the router.
fn node_bird(address: &str, asn: u32, vips: &Path) -> String {
    format!(
        "router id {address};\nprotocol device {{}}\ninclude \"{}\";\n\
         protocol bgp uplink {{ local {address} as {asn}; neighbor 10.99.0.2 as {ROUTER_AS}; \
         connect retry time 1; error wait time 1, 2; hold time 9; keepalive time 3; \
         ipv4 {{ import none; export where proto ~ \"meridian_vips*\"; }}; }}\n",
        vips.display()
    )
}

/// BIRD in `netns`, from `config`, its control socket in `dir`.
fn bird(netns: &Netns, dir: &Path, name: &str, config: &str) -> Daemon {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, config).unwrap();
    let socket = dir.join(format!("{name}.ctl"));
    Daemon::spawn(
        netns,
        dir.join(format!("{name}-bird.log")),
        "bird",
        &[
            "-f",
            "-c",
            path.to_str().unwrap(),
            "-s",
            socket.to_str().unwrap(),
            "-P",
            dir.join(format!("{name}.pid")).to_str().unwrap(),
        ],
    )
}

/// The next hops of the router's kernel route to the VIP.
fn next_hops(router: &Netns) -> Vec<String> {
    let output = router.enter(|| {
        std::process::Command::new("ip")
            .args(["route", "show", &format!("{VIP}/32")])
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut hops: Vec<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    hops
}

/// Polls `check` every 50 ms until it holds or `timeout` passes; the time it took.
fn wait_for(timeout: Duration, what: &str, check: impl FnMut() -> bool) -> Duration {
    wait_for_or(timeout, what, check, String::new)
}

/// [`wait_for`], saying what `diagnose` finds when it times out.
fn wait_for_or(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
    diagnose: impl FnOnce() -> String,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}\n{}",
        diagnose()
    );
}

/// An L4 node's admin page, read from inside its namespace.
fn admin(node: &Netns, port: u16, path: &str) -> String {
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    node.enter(|| http_get(address, "admin", path))
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Connections the node accepted on the VIP so far.
fn accepted(node: &Netns, port: u16) -> u64 {
    admin(node, port, "/stats/prometheus")
        .lines()
        .filter(|l| l.starts_with("meridian_l4_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

struct Node {
    netns: Netns,
    address: &'static str,
    asn: u32,
    admin_port: u16,
    vips_file: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Node {
    fn new(name: &str, address: &'static str, asn: u32, hub: &Netns, dir: &Path) -> Node {
        let netns = Netns::new(name);
        support::l4::join_hub(hub, &netns, name, &format!("{address}/24"));
        netns.ip(&["route", "add", "default", "via", "10.99.0.2"]);
        // The VIP pool is local to the node: what the router sends it is delivered here.
        netns.ip(&["route", "add", "local", POOL, "dev", "lo"]);
        let vips_file = dir.join(format!("{name}-vips.conf"));
        std::fs::write(&vips_file, "").unwrap();
        Node {
            netns,
            address,
            asn,
            admin_port: free_port(),
            vips_file,
            socket: dir.join(format!("{name}.ctl")),
        }
    }

    fn start_l4(&self, dir: &Path, node_id: &str, xds_port: u16) -> MeridianProxy {
        let options = BootstrapOptions {
            l4: true,
            admin_port: self.admin_port,
            xds_host: "10.99.0.1".into(),
            ..bootstrap_options(node_id, "meridian-system/l4", xds_port)
        };
        let args = [
            "--bird-config",
            self.vips_file.to_str().unwrap(),
            "--bird-socket",
            self.socket.to_str().unwrap(),
            "--withdraw-wait",
            "2s",
            "--drain-time",
            "5s",
        ];
        self.netns
            .enter(|| MeridianProxy::start_l4_with(dir, options, &args))
    }

    fn start_bird(&self, dir: &Path, name: &str) -> Daemon {
        bird(
            &self.netns,
            dir,
            name,
            &node_bird(self.address, self.asn, &self.vips_file),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_nodes_announce_the_vip_over_bgp_and_ecmp_spreads_and_fails_over() {
    assert!(
        netns::available(),
        "this test makes network namespaces: run it as root with iproute2"
    );
    assert!(
        std::process::Command::new("bird")
            .arg("--version")
            .output()
            .is_ok(),
        "this test needs BIRD 2 (`make test` installs Debian's bird2)"
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // The hub: Meridian, the gateways and their backends, on a bridge the nodes join.
    let hub = support::l4::hub_namespace("hub", GATEWAYS);
    let router = Netns::new("router");
    support::l4::join_hub(&hub, &router, "router", "10.99.0.2/24");
    router.sysctl("net.ipv4.ip_forward", "1");
    // Spread flows by their ports too, not only by addresses.
    router.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
    let client = support::l4::client_behind(&router, "client");
    let one = Node::new("l4a", "10.99.0.11", 65011, &hub, dir);
    let two = Node::new("l4b", "10.99.0.12", 65012, &hub, dir);

    let (vip_port, gateway_port, xds_port) = (8080, 8081, 18000);
    let _hub_services = support::l4::serve_hub(
        &hub,
        dir,
        (GATEWAYS, POOL),
        (vip_port, gateway_port, xds_port),
    );
    let _router_bird = bird(
        &router,
        dir,
        "router",
        &router_bird(&[(one.address, one.asn), (two.address, two.asn)]),
    );

    // Node one starts before its BIRD: it serves, and says it cannot announce yet.
    let _l4_one = one.start_l4(dir, "l4-1", xds_port);
    wait_for(
        Duration::from_secs(30),
        "node one serving, BGP down",
        || {
            let ready = admin(&one.netns, one.admin_port, "/ready");
            ready.contains(" serving ") && ready.contains("bgp error:")
        },
    );
    let _bird_one = one.start_bird(dir, "l4a");
    let _bird_two = two.start_bird(dir, "l4b");
    let mut l4_two = Some(two.start_l4(dir, "l4-2", xds_port));
    let both = vec![one.address.to_owned(), two.address.to_owned()];
    let converged = wait_for_or(
        Duration::from_secs(30),
        "a multipath route over both nodes",
        || next_hops(&router) == both,
        || {
            let birdc = |netns: &Netns, socket: &Path, what: &str| {
                let output = netns.enter(|| {
                    std::process::Command::new("birdc")
                        .args(["-s", socket.to_str().unwrap()])
                        .args(what.split(' '))
                        .output()
                        .unwrap()
                });
                String::from_utf8_lossy(&output.stdout).to_string()
            };
            format!(
                "router: {}\n{}\nnode one: {}\n{}\n{}",
                birdc(&router, &dir.join("router.ctl"), "show protocols"),
                birdc(&router, &dir.join("router.ctl"), "show route"),
                birdc(&one.netns, &one.socket, "show protocols"),
                birdc(&one.netns, &one.socket, "show route"),
                admin(&one.netns, one.admin_port, "/ready"),
            )
        },
    );
    println!("the router has both nodes as next hops after {converged:?}");

    // Connections from the client spread over both nodes, and all are answered.
    let vip: SocketAddr = format!("{VIP}:{vip_port}").parse().unwrap();
    let ask = |count: usize| {
        client.enter(|| {
            (0..count)
                .map(|_| http_get(vip, "shop.example.test", "/"))
                .filter(|r| !matches!(r, Ok((200, _))))
                .count()
        })
    };
    let before = (
        accepted(&one.netns, one.admin_port),
        accepted(&two.netns, two.admin_port),
    );
    assert_eq!(ask(60), 0, "failed connections through the VIP");
    let after = (
        accepted(&one.netns, one.admin_port),
        accepted(&two.netns, two.admin_port),
    );
    let (by_one, by_two) = (after.0 - before.0, after.1 - before.1);
    assert!(
        by_one > 0 && by_two > 0,
        "ECMP spread: {by_one} and {by_two} of 60"
    );
    println!("ECMP: node one took {by_one}, node two {by_two} of 60 connections");

    // Every gateway behind node one fails (node one can no longer reach them): its checks fail
    // them, it withdraws the VIP, and the client's connections all go through node two.
    for gateway in GATEWAYS {
        one.netns
            .ip(&["route", "add", "blackhole", &format!("{gateway}/32")]);
    }
    let withdrawn = wait_for(
        Duration::from_secs(15),
        "node one's route withdrawn",
        || next_hops(&router) == [two.address.to_owned()],
    );
    println!("node one withdrew the VIP {withdrawn:?} after losing its gateways");
    let ready = admin(&one.netns, one.admin_port, "/ready");
    assert!(ready.contains("no available gateway"), "{ready}");
    assert_eq!(ask(40), 0, "connections failed with node one withdrawn");

    // Its gateways come back: so does its route.
    for gateway in GATEWAYS {
        one.netns
            .ip(&["route", "del", "blackhole", &format!("{gateway}/32")]);
    }
    wait_for(Duration::from_secs(15), "node one's route back", || {
        next_hops(&router) == both
    });

    // Node two drains (SIGTERM): it withdraws first and keeps accepting meanwhile, so
    // connections made all along fail none — except one in flight on node two at the instant
    // the router drops it as a next hop: its next packets go to node one, which never saw the
    // connection (the user-space data path ends TCP on the node; a packet path that forwards
    // would keep it). Failures are allowed only around that instant.
    let asking = std::sync::atomic::AtomicBool::new(true);
    let (failed, made, switch) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            client.enter(|| {
                let (mut failed, mut made) = (Vec::new(), 0);
                while asking.load(std::sync::atomic::Ordering::Relaxed) {
                    made += 1;
                    let started = Instant::now();
                    match http_get(vip, "shop.example.test", "/") {
                        Ok((200, _)) => {}
                        other => failed.push((started, Instant::now(), format!("{other:?}"))),
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (failed, made)
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        // When the router's route loses node two.
        let switched = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if next_hops(&router) == [one.address.to_owned()] {
                    return Instant::now();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            panic!("the router kept node two");
        });
        let mut draining = l4_two.take().unwrap();
        let status = draining.terminate();
        assert!(status.success(), "node two exited with {status}");
        assert_eq!(next_hops(&router), [one.address.to_owned()]);
        std::thread::sleep(Duration::from_millis(500));
        asking.store(false, std::sync::atomic::Ordering::Relaxed);
        let (failed, made) = load.join().unwrap();
        (failed, made, switched.join().unwrap())
    });
    // The switch is seen up to a poll late; a connection in flight then spans it.
    let at_switch = |(started, ended, _): &(Instant, Instant, String)| {
        *started <= switch && *ended + Duration::from_millis(20) >= switch
    };
    let unexplained: Vec<&String> = failed
        .iter()
        .filter(|f| !at_switch(f))
        .map(|(_, _, what)| what)
        .collect();
    assert!(
        unexplained.is_empty() && failed.len() <= 1,
        "{} of {made} connections failed while node two drained ({} away from the route switch): {failed:?}",
        failed.len(),
        unexplained.len()
    );
    println!(
        "node two drained: {made} connections made meanwhile, {} failed (in flight at the route switch)",
        failed.len()
    );
}
