//! `meridian l4`'s packet path, its XDP program run by the kernel on frames this test builds
//! (`BPF_PROG_TEST_RUN`): the verifier accepts it, it picks the gateway the user-space table
//! picks for the same 5-tuple (the same xxh64, the same Maglev entries), rewrites both
//! directions with checksums a receiver accepts, keeps a flow's gateway while it stays and
//! moves the flow when it leaves, leaves to the kernel what is not its own, and, draining,
//! takes no new flow while tracked ones go on. Also: the committed object is what its source
//! compiles to.
//!
//! The route lookups run in a namespace of this test's own:
//!
//! ```text
//!  client side: cli (10.88.0.1/24) ── frames from 10.88.0.2
//!  gateway side: gw (10.77.0.1/24) ── gateways 10.77.0.2 .. 10.77.0.5 (static neighbours)
//! ```

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use meridian::core::dataplane::balancer::{Assignment, Endpoint, Locality};
use meridian::core::dataplane::conntrack::FlowKey;
use meridian::core::dataplane::l4::packet_tables::{PacketService, ServiceKey, TCP, UDP};
use meridian::core::dataplane::l4::table::L4Table;
use meridian::l4::xdp::{Mode, PacketPath, XdpOptions};
use support::netns::{link, Netns};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x88, 0x02];
const NODE_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x88, 0x01];
const TABLE_SIZE: u64 = 1_009;

fn gateway(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

fn gateway_mac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x77, last]
}

fn table(lasts: &[u8], excluded: &[u8]) -> L4Table {
    let assignment = Assignment {
        localities: vec![Locality {
            zone: "z".into(),
            weight: 1,
            priority: 0,
            endpoints: lasts
                .iter()
                .map(|l| Endpoint {
                    host: gateway(*l).to_string(),
                    port: 8080,
                    weight: 1,
                })
                .collect(),
        }],
    };
    let excluded: BTreeSet<String> = excluded
        .iter()
        .map(|l| format!("{}:8080", gateway(*l)))
        .collect();
    L4Table::build(&assignment, &excluded, 0.0, TABLE_SIZE).expect("table")
}

fn service(port: u16, protocol: u8, table: &L4Table) -> PacketService<'_> {
    PacketService {
        key: ServiceKey {
            vip: VIP,
            port,
            protocol,
        },
        cluster: "shop",
        idle_timeout: Some(Duration::from_secs(60)),
        table,
    }
}

/// A frame as it is built and read back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Frame {
    destination_mac: [u8; 6],
    source_mac: [u8; 6],
    source: SocketAddrV4,
    destination: SocketAddrV4,
    protocol: u8,
    /// TCP flags (SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04); none for UDP.
    flags: u8,
    payload: Vec<u8>,
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn l4_checksum(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&destination.octets());
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(sum16(&pseudo) + sum16(segment))
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        let mut segment = Vec::new();
        segment.extend_from_slice(&self.source.port().to_be_bytes());
        segment.extend_from_slice(&self.destination.port().to_be_bytes());
        if self.protocol == TCP {
            segment.extend_from_slice(&1000u32.to_be_bytes()); // sequence
            segment.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement
            segment.extend_from_slice(&[0x50, self.flags, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            segment.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            segment.extend_from_slice(&[0, 0]);
        }
        segment.extend_from_slice(&self.payload);
        let check = l4_checksum(
            *self.source.ip(),
            *self.destination.ip(),
            self.protocol,
            &segment,
        );
        let at = if self.protocol == TCP { 16 } else { 6 };
        segment[at..at + 2].copy_from_slice(&check.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + segment.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, self.protocol, 0, 0]);
        ip.extend_from_slice(&self.source.ip().octets());
        ip.extend_from_slice(&self.destination.ip().octets());
        let header_check = !fold(sum16(&ip));
        ip[10..12].copy_from_slice(&header_check.to_be_bytes());
        let mut frame = Vec::new();
        frame.extend_from_slice(&self.destination_mac);
        frame.extend_from_slice(&self.source_mac);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&segment);
        frame
    }

    /// Reads a frame back, checking both checksums as a receiver would.
    fn parse(bytes: &[u8]) -> Frame {
        let ip = &bytes[14..34];
        assert_eq!(
            fold(sum16(ip)),
            0xffff,
            "IP header checksum of {bytes:02x?}"
        );
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let segment = &bytes[34..14 + total];
        let source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let destination = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let protocol = ip[9];
        assert_eq!(
            l4_checksum(source, destination, protocol, segment),
            0,
            "{} checksum of {bytes:02x?}",
            if protocol == TCP { "TCP" } else { "UDP" }
        );
        let port = |at: usize| u16::from_be_bytes([segment[at], segment[at + 1]]);
        let header = if protocol == TCP { 20 } else { 8 };
        Frame {
            destination_mac: bytes[0..6].try_into().unwrap(),
            source_mac: bytes[6..12].try_into().unwrap(),
            source: SocketAddrV4::new(source, port(0)),
            destination: SocketAddrV4::new(destination, port(2)),
            protocol,
            flags: if protocol == TCP { segment[13] } else { 0 },
            payload: segment[header..].to_vec(),
        }
    }
}

fn from_client(port: u16, vip_port: u16, protocol: u8, flags: u8) -> Frame {
    Frame {
        destination_mac: NODE_CLIENT_MAC,
        source_mac: CLIENT_MAC,
        source: SocketAddrV4::new(CLIENT, port),
        destination: SocketAddrV4::new(VIP, vip_port),
        protocol,
        flags,
        payload: b"hello".to_vec(),
    }
}

/// The gateway the user-space path picks for this frame's 5-tuple.
fn user_space_pick(table: &L4Table, frame: &Frame) -> SocketAddr {
    let key = FlowKey {
        protocol: frame.protocol,
        source: frame.source.ip().to_ipv6_mapped().octets(),
        source_port: frame.source.port(),
        destination: frame.destination.ip().to_ipv6_mapped().octets(),
        destination_port: frame.destination.port(),
    };
    table.pick(key.hash(), &[]).expect("a gateway").address
}

struct Lab {
    netns: Netns,
    _peer: Netns,
    client_side: u32,
    gateway_side: u32,
}

/// The namespace the route lookups run in: both sides, forwarding on, gateways' neighbours.
/// `tag` tells apart the labs of tests running at once.
fn lab(tag: &str) -> Option<Lab> {
    if !support::netns::available() {
        eprintln!("skipped: needs root and `ip netns`");
        return None;
    }
    let netns = Netns::new(&format!("xdp{tag}"));
    let peer = Netns::new(&format!("xdp{tag}-peer"));
    let (client_link, gateway_link) = (format!("cli{tag}"), format!("gw{tag}"));
    link(
        &netns,
        &client_link,
        "10.88.0.1/24",
        &peer,
        &format!("c{tag}"),
        None,
    );
    link(
        &netns,
        &gateway_link,
        "10.77.0.1/24",
        &peer,
        &format!("g{tag}"),
        None,
    );
    netns.sysctl("net.ipv4.conf.all.forwarding", "1");
    for last in 2..=5u8 {
        let mac = gateway_mac(last)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        netns.ip(&[
            "neigh",
            "add",
            &gateway(last).to_string(),
            "lladdr",
            &mac,
            "dev",
            &gateway_link,
            "nud",
            "permanent",
        ]);
    }
    let index = |name: &str| -> u32 {
        let name = std::ffi::CString::new(name).expect("interface name");
        // SAFETY: a NUL-terminated name; the lookup runs in the namespace's thread.
        let index = netns.enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) });
        assert_ne!(index, 0, "no interface {name:?} in the lab");
        index
    };
    let (client_side, gateway_side) = (index(&client_link), index(&gateway_link));
    Some(Lab {
        netns,
        _peer: peer,
        client_side,
        gateway_side,
    })
}

fn options() -> XdpOptions {
    XdpOptions {
        interfaces: Vec::new(),
        mode: Mode::Generic,
        snat_ports: 20_000..=20_999,
        flows: 4_096,
        services: 4,
        backends: 64,
        table_size: 1_009,
    }
}

/// Runs `frame` in the lab: the verdict and the frame that comes out.
fn run(lab: &Lab, path: &PacketPath, frame: &Frame, ingress: u32) -> (u32, Frame) {
    let bytes = frame.bytes();
    let (verdict, out) = lab
        .netns
        .enter(|| path.run_frame(&bytes, ingress))
        .expect("test run");
    (verdict, Frame::parse(&out))
}

fn load(lab: &Lab) -> PacketPath {
    lab.netns
        .enter(|| PacketPath::load(&options()))
        .expect("the verifier accepts the program")
}

#[test]
fn udp_flows_go_where_user_space_would_send_them_and_replies_come_back_from_the_vip() {
    let Some(lab) = lab("1") else { return };
    let mut path = load(&lab);
    let gateways = table(&[2, 3, 4], &[]);
    let skipped = lab
        .netns
        .enter(|| path.apply(&[service(53, UDP, &gateways)]))
        .expect("maps written");
    assert!(skipped.is_empty(), "{skipped:?}");

    let mut picked = BTreeSet::new();
    for client_port in 40_000..40_200u16 {
        let frame = from_client(client_port, 53, UDP, 0);
        let expected = user_space_pick(&gateways, &frame);
        let (verdict, out) = run(&lab, &path, &frame, lab.client_side);
        assert_eq!(verdict, XDP_REDIRECT, "port {client_port}");
        assert_eq!(
            SocketAddr::V4(out.destination),
            expected,
            "port {client_port}"
        );
        assert_eq!(*out.source.ip(), NODE, "full NAT: from the node's address");
        assert!((20_000..=20_999).contains(&out.source.port()));
        let last = out.destination.ip().octets()[3];
        assert_eq!(
            out.destination_mac,
            gateway_mac(last),
            "the gateway's neighbour"
        );
        assert_eq!(out.payload, b"hello");
        picked.insert(last);

        // The gateway's answer goes back to the client, from the VIP.
        let answer = Frame {
            destination_mac: out.source_mac,
            source_mac: out.destination_mac,
            source: out.destination,
            destination: out.source,
            protocol: UDP,
            flags: 0,
            payload: b"world!".to_vec(),
        };
        let (verdict, back) = run(&lab, &path, &answer, lab.gateway_side);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(back.source, SocketAddrV4::new(VIP, 53));
        assert_eq!(back.destination, frame.source);
        assert_eq!(back.destination_mac, CLIENT_MAC);
        assert_eq!(back.source_mac, NODE_CLIENT_MAC);
        assert_eq!(back.payload, b"world!");
    }
    assert_eq!(picked.len(), 3, "every gateway takes flows: {picked:?}");

    // Not its own: another port, another address, a reply to a port it never gave out.
    for (frame, ingress) in [
        (from_client(40_000, 54, UDP, 0), lab.client_side),
        (
            Frame {
                destination: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 53),
                ..from_client(40_000, 53, UDP, 0)
            },
            lab.client_side,
        ),
        (
            Frame {
                source: SocketAddrV4::new(gateway(2), 8080),
                destination: SocketAddrV4::new(NODE, 19_999),
                ..from_client(1, 1, UDP, 0)
            },
            lab.gateway_side,
        ),
    ] {
        assert_eq!(run(&lab, &path, &frame, ingress).0, XDP_PASS, "{frame:?}");
    }
    let counters = path.counters();
    assert_eq!(counters[0], 200, "forwarded: {counters:?}");
    assert_eq!(counters[1], 200, "returned: {counters:?}");
    assert_eq!(counters[2], 200, "new flows: {counters:?}");
}

#[test]
fn tcp_starts_with_a_syn_keeps_its_gateway_and_closes() {
    let Some(lab) = lab("2") else { return };
    let mut path = load(&lab);
    let gateways = table(&[2, 3, 4, 5], &[]);
    lab.netns
        .enter(|| path.apply(&[service(443, TCP, &gateways)]))
        .expect("maps written");
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;

    // A segment of a connection the program did not see start is the kernel's.
    let (verdict, _) = run(
        &lab,
        &path,
        &from_client(50_000, 443, TCP, ACK),
        lab.client_side,
    );
    assert_eq!(verdict, XDP_PASS);

    let syn = from_client(50_000, 443, TCP, SYN);
    let (verdict, out) = run(&lab, &path, &syn, lab.client_side);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        SocketAddr::V4(out.destination),
        user_space_pick(&gateways, &syn)
    );
    let (verdict, again) = run(
        &lab,
        &path,
        &from_client(50_000, 443, TCP, ACK),
        lab.client_side,
    );
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        (again.source, again.destination),
        (out.source, out.destination)
    );

    // Both sides close; a new connection from the same client port may start at once.
    run(
        &lab,
        &path,
        &from_client(50_000, 443, TCP, FIN | ACK),
        lab.client_side,
    );
    let fin = Frame {
        destination_mac: out.source_mac,
        source_mac: out.destination_mac,
        source: out.destination,
        destination: out.source,
        protocol: TCP,
        flags: FIN | ACK,
        payload: Vec::new(),
    };
    let (verdict, back) = run(&lab, &path, &fin, lab.gateway_side);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(back.flags, FIN | ACK);
    let (verdict, reopened) = run(&lab, &path, &syn, lab.client_side);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(reopened.destination, out.destination);
}

#[test]
fn flows_keep_their_gateway_when_one_joins_and_move_when_theirs_leaves() {
    let Some(lab) = lab("3") else { return };
    let mut path = load(&lab);
    let three = table(&[2, 3, 4], &[]);
    lab.netns
        .enter(|| path.apply(&[service(53, UDP, &three)]))
        .expect("maps written");
    let flows: Vec<Frame> = (41_000..41_300u16)
        .map(|p| from_client(p, 53, UDP, 0))
        .collect();
    let first: Vec<SocketAddrV4> = flows
        .iter()
        .map(|f| run(&lab, &path, f, lab.client_side).1.destination)
        .collect();

    // 10.77.0.5 joins: the table sends some of these 5-tuples to it, but they are tracked.
    let four = table(&[2, 3, 4, 5], &[]);
    lab.netns
        .enter(|| path.apply(&[service(53, UDP, &four)]))
        .expect("maps written");
    let moved_in_table = flows
        .iter()
        .filter(|f| user_space_pick(&four, f).ip().to_string() == "10.77.0.5")
        .count();
    assert!(
        moved_in_table > 30,
        "the new table moves about a quarter: {moved_in_table}"
    );
    for (frame, before) in flows.iter().zip(&first) {
        assert_eq!(
            run(&lab, &path, frame, lab.client_side).1.destination,
            *before
        );
    }
    // A new flow goes where the new table says.
    let new = from_client(42_000, 53, UDP, 0);
    assert_eq!(
        SocketAddr::V4(run(&lab, &path, &new, lab.client_side).1.destination),
        user_space_pick(&four, &new)
    );

    // 10.77.0.3 fails: its flows are hashed again onto the gateways left; the others stay.
    let without = table(&[2, 3, 4, 5], &[3]);
    lab.netns
        .enter(|| path.apply(&[service(53, UDP, &without)]))
        .expect("maps written");
    for (frame, before) in flows.iter().zip(&first) {
        let now = run(&lab, &path, frame, lab.client_side).1.destination;
        if before.ip().octets()[3] == 3 {
            assert_eq!(SocketAddr::V4(now), user_space_pick(&without, frame));
        } else {
            assert_eq!(now, *before);
        }
    }
    assert!(path.counters()[3] > 0, "rehashed flows are counted");
}

#[test]
fn a_draining_path_keeps_tracked_flows_and_leaves_new_ones_to_the_kernel() {
    let Some(lab) = lab("4") else { return };
    let mut path = load(&lab);
    let gateways = table(&[2, 3], &[]);
    lab.netns
        .enter(|| path.apply(&[service(53, UDP, &gateways)]))
        .expect("maps written");
    let tracked = from_client(43_000, 53, UDP, 0);
    let (verdict, before) = run(&lab, &path, &tracked, lab.client_side);
    assert_eq!(verdict, XDP_REDIRECT);
    path.drain().expect("draining");
    let (verdict, after) = run(&lab, &path, &tracked, lab.client_side);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(after.destination, before.destination);
    let new = from_client(43_001, 53, UDP, 0);
    assert_eq!(run(&lab, &path, &new, lab.client_side).0, XDP_PASS);
    assert_eq!(path.counters()[8], 1, "counted as passed_draining");
}

#[test]
fn a_snat_range_over_the_kernels_ephemeral_ports_is_refused_by_name() {
    let Some(lab) = lab("5") else { return };
    lab.netns
        .sysctl("net.ipv4.ip_local_port_range", "20500 40000");
    let error = lab
        .netns
        .enter(|| PacketPath::load(&options()).err())
        .expect("an overlapping range is refused");
    let text = error.to_string();
    assert!(
        text.contains("--xdp-snat-ports 20000-20999")
            && text.contains("ip_local_port_range (20500-40000)"),
        "{text}"
    );
}

#[test]
fn the_committed_object_is_what_its_source_compiles_to() {
    let clang = std::process::Command::new("clang-14")
        .arg("--version")
        .output();
    if clang.is_err() {
        eprintln!("skipped: clang-14 is not installed (make test installs it)");
        return;
    }
    let out = std::env::temp_dir().join(format!("balancer-{}.bpf.o", std::process::id()));
    let arch = std::env::consts::ARCH;
    let status = std::process::Command::new("clang-14")
        .args(["-O2", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{arch}-linux-gnu"))
        .args(["-c", "src/l4/xdp/balancer.bpf.c", "-o"])
        .arg(&out)
        .status()
        .expect("run clang-14");
    assert!(
        status.success(),
        "clang-14 failed to compile balancer.bpf.c"
    );
    let built = std::fs::read(&out).expect("the object clang wrote");
    let _ = std::fs::remove_file(&out);
    assert!(
        built == meridian::l4::xdp::OBJECT,
        "src/l4/xdp/balancer.bpf.o is stale: rebuild it with the command in balancer.bpf.c"
    );
}
