//! The packet path's map entries, laid out as `balancer.bpf.c` declares them (`#[repr(C)]`,
//! addresses and ports in network byte order, times in ticks of 2^20 ns).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::core::dataplane::l4::packet_tables::ServiceKey;

/// The program's clock: `bpf_ktime_get_ns() >> 20`.
pub fn ticks(duration: Option<Duration>) -> u32 {
    duration.map_or(u32::MAX, |d| {
        u32::try_from(d.as_nanos() >> 20).unwrap_or(u32::MAX)
    })
}

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceKeyC {
    pub vip: u32,
    pub port: u16,
    pub protocol: u8,
    pub pad: u8,
}

impl From<ServiceKey> for ServiceKeyC {
    fn from(key: ServiceKey) -> ServiceKeyC {
        ServiceKeyC {
            vip: be(key.vip),
            port: key.port.to_be(),
            protocol: key.protocol,
            pad: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Service {
    pub offset: u32,
    pub size: u32,
    pub idle: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Backend {
    pub ip: u32,
    pub snat_ip: u32,
    pub port: u16,
    pub available: u16,
}

impl Backend {
    pub fn new(address: SocketAddrV4, snat_ip: Ipv4Addr, available: bool) -> Backend {
        Backend {
            ip: be(*address.ip()),
            snat_ip: be(snat_ip),
            port: address.port().to_be(),
            available: u16::from(available),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    pub port_min: u16,
    pub port_span: u16,
    pub closing: u32,
    /// 1: tracked flows go on, new ones go to the kernel.
    pub draining: u32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` integers with explicit padding fields: every bit pattern is a
// value, and none has implicit padding.
unsafe impl aya::Pod for ServiceKeyC {}
unsafe impl aya::Pod for Service {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for Settings {}

/// The program's counters, by index (`enum counter`).
pub const COUNTERS: [&str; 9] = [
    "forwarded",
    "returned",
    "new_flow",
    "rehashed",
    "passed_unknown_connection",
    "passed_no_route",
    "passed_no_snat_port",
    "passed_no_gateway",
    "passed_draining",
];
