//! `meridian l4`'s packet path: an XDP program (`balancer.bpf.c`, committed compiled as
//! `balancer.bpf.o`) on the node's interfaces forwards IPv4 TCP and UDP flows to the gateways
//! with full NAT, so that a new connection costs a few map lookups and no socket. User space
//! stays the control: this module loads and attaches the program, and keeps its maps equal to
//! the user-space tables ([`PacketTables`] computes the writes). Whatever the program does not
//! handle reaches the kernel and the user-space listeners, which keep serving it.
//!
//! The maps are written from a thread of their own that follows the snapshot and every
//! cluster's lookup table (by pointer, every 100 ms): a gateway that fails its checks leaves
//! the packet path's table at most 100 ms after the user-space one.

pub mod maps;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

use self::maps::{Backend, Service, ServiceKeyC, Settings};
use super::{L4State, Snapshot};
use crate::core::dataplane::l4::packet_tables::{
    Limits, PacketService, PacketTables, ServiceKey, Write, TCP, UDP,
};
use crate::core::dataplane::l4::table::L4Table;
use crate::core::dataplane::l4::Transport;

/// The compiled program (see `balancer.bpf.c` for how it is built).
pub static OBJECT: &[u8] = include_bytes!("balancer.bpf.o");

const PROGRAM: &str = "meridian_l4";

/// How long a closed TCP flow (both FINs, or a RST) keeps its SNAT port, for the last ACK.
const CLOSING: Duration = Duration::from_secs(2);

/// How often the maps are compared with the user-space tables.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// Where XDP runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// In the driver, before the kernel allocates anything (the fast one; needs driver support).
    Native,
    /// In the kernel's receive path, on any device (what veth tests and unsupported NICs use).
    Generic,
}

/// How the packet path runs.
#[derive(Clone, Debug)]
pub struct XdpOptions {
    /// Interfaces clients' packets and the gateways' replies arrive on.
    pub interfaces: Vec<String>,
    pub mode: Mode,
    /// Source ports flows to gateways leave from; keep it clear of the kernel's
    /// `ip_local_port_range` (the user-space path and health checks use those).
    pub snat_ports: RangeInclusive<u16>,
    /// Flows tracked at most (least recently used ones give way).
    pub flows: u32,
    /// VIP:ports the packet path serves at most.
    pub services: u32,
    /// Gateways the packet path knows at most.
    pub backends: u32,
    /// Largest Maglev table per VIP:port.
    pub table_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP program: {0}")]
    Load(String),
    #[error("--xdp-interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
    #[error("the XDP program's map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("--xdp-snat-ports {0}: a range of at least one port, below 65536")]
    SnatPorts(String),
    #[error("--xdp-snat-ports {ports} overlaps net.ipv4.ip_local_port_range ({local}): the user-space path and the health checks connect from those ports, and their replies would be taken for flows'")]
    SnatOverlap { ports: String, local: String },
}

/// Refuses a SNAT range that overlaps the kernel's ephemeral ports (in the calling thread's
/// network namespace): the program would take replies to the node's own connections.
fn check_clear_of_local_ports(ports: &RangeInclusive<u16>) -> Result<(), XdpError> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(()); // no such sysctl: nothing to collide with
    };
    let mut bounds = text
        .split_whitespace()
        .filter_map(|b| b.parse::<u16>().ok());
    let (Some(first), Some(last)) = (bounds.next(), bounds.next()) else {
        return Ok(());
    };
    if *ports.start() <= last && first <= *ports.end() {
        return Err(XdpError::SnatOverlap {
            ports: format!("{}-{}", ports.start(), ports.end()),
            local: format!("{first}-{last}"),
        });
    }
    Ok(())
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |e| XdpError::Map {
        map,
        reason: e.to_string(),
    }
}

/// The loaded program, its maps, and what they hold.
pub struct PacketPath {
    ebpf: Ebpf,
    config: Array<MapData, Settings>,
    settings: Settings,
    services: BpfHashMap<MapData, ServiceKeyC, Service>,
    maglev: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    counters: PerCpuArray<MapData, u64>,
    tables: PacketTables,
    /// The node's source address towards each gateway.
    snat: HashMap<Ipv4Addr, Ipv4Addr>,
    interfaces: Vec<String>,
}

impl PacketPath {
    /// Loads the program and sizes its maps, attached nowhere yet.
    pub fn load(options: &XdpOptions) -> Result<PacketPath, XdpError> {
        let span = u32::from(*options.snat_ports.end())
            .checked_sub(u32::from(*options.snat_ports.start()))
            .and_then(|s| s.checked_add(1))
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                XdpError::SnatPorts(format!(
                    "{}-{}",
                    options.snat_ports.start(),
                    options.snat_ports.end()
                ))
            })?;
        check_clear_of_local_ports(&options.snat_ports)?;
        let maglev_entries = options
            .services
            .checked_mul(options.table_size)
            .ok_or_else(|| XdpError::Load("--xdp-services × --xdp-table-size overflows".into()))?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("services", options.services.max(1))
            .map_max_entries("maglev", maglev_entries.max(1))
            .map_max_entries("backends", options.backends.max(1))
            .map_max_entries("flows", options.flows.max(1))
            .map_max_entries("nat", options.flows.max(1))
            .load(OBJECT)
            .map_err(|e| XdpError::Load(e.to_string()))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| XdpError::Load(format!("no program {PROGRAM}")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpError::Load(e.to_string()))?;
        program
            .load()
            .map_err(|e| XdpError::Load(format!("{e:#}")))?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(XdpError::Map {
                map: name,
                reason: "not in the object".into(),
            })
        };
        let mut config: Array<MapData, Settings> =
            Array::try_from(take(&mut ebpf, "config")?).map_err(map_error("config"))?;
        let settings = Settings {
            port_min: *options.snat_ports.start(),
            port_span: span,
            closing: maps::ticks(Some(CLOSING)),
            draining: 0,
            pad: 0,
        };
        config.set(0, settings, 0).map_err(map_error("config"))?;
        Ok(PacketPath {
            config,
            settings,
            services: BpfHashMap::try_from(take(&mut ebpf, "services")?)
                .map_err(map_error("services"))?,
            maglev: Array::try_from(take(&mut ebpf, "maglev")?).map_err(map_error("maglev"))?,
            backends: Array::try_from(take(&mut ebpf, "backends")?)
                .map_err(map_error("backends"))?,
            counters: PerCpuArray::try_from(take(&mut ebpf, "counters")?)
                .map_err(map_error("counters"))?,
            ebpf,
            tables: PacketTables::new(Limits {
                services: options.services,
                backends: options.backends,
                table_size: options.table_size,
            }),
            snat: HashMap::new(),
            interfaces: Vec::new(),
        })
    }

    /// Attaches the program to `interface`. Its route lookups need the interface to forward
    /// IPv4, which is checked here rather than found out by packets going to the kernel.
    pub fn attach(&mut self, interface: &str, mode: Mode) -> Result<(), XdpError> {
        let error = |reason: String| XdpError::Interface {
            interface: interface.to_owned(),
            reason,
        };
        let sysctl = format!("/proc/sys/net/ipv4/conf/{interface}/forwarding");
        match std::fs::read_to_string(&sysctl) {
            Ok(value) if value.trim() == "1" => {}
            Ok(_) => {
                let reason = format!("IPv4 forwarding is off ({sysctl} is 0); the packet path's route lookups need it");
                return Err(error(reason));
            }
            Err(e) => return Err(error(format!("no such interface ({sysctl}: {e})"))),
        }
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| error("the program is not loaded".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| error(e.to_string()))?;
        let mode = match mode {
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        };
        program
            .attach(interface, mode)
            .map_err(|e| error(format!("attaching XDP: {e:#}")))?;
        self.interfaces.push(interface.to_owned());
        Ok(())
    }

    /// Stops taking new flows (they go to the kernel); tracked ones go on.
    pub fn drain(&mut self) -> Result<(), XdpError> {
        self.settings.draining = 1;
        self.config
            .set(0, self.settings, 0)
            .map_err(map_error("config"))
    }

    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Makes the maps serve what `snapshot` serves; returns the services left to the
    /// user-space path, with why.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<Vec<(ServiceKey, String)>, XdpError> {
        let tables: Vec<(ServiceKey, &str, Option<Duration>, Arc<L4Table>)> = snapshot
            .listeners
            .values()
            .filter_map(|plan| {
                let IpAddr::V4(vip) = plan.address.ip() else {
                    return None;
                };
                let upstream = snapshot.clusters.get(&plan.cluster)?;
                // A PROXY protocol header is written by the user-space relay.
                upstream.assignment.as_ref()?;
                if upstream.plan.proxy_protocol {
                    return None;
                }
                let protocol = match plan.transport {
                    Transport::Tcp => TCP,
                    Transport::Udp => UDP,
                };
                let key = ServiceKey {
                    vip,
                    port: plan.address.port(),
                    protocol,
                };
                Some((
                    key,
                    plan.cluster.as_str(),
                    plan.idle_timeout,
                    upstream.table(),
                ))
            })
            .collect();
        let wanted: Vec<PacketService<'_>> = tables
            .iter()
            .map(|(key, cluster, idle_timeout, table)| PacketService {
                key: *key,
                cluster,
                idle_timeout: *idle_timeout,
                table,
            })
            .collect();
        self.apply(&wanted)
    }

    /// Makes the maps serve `wanted` and nothing else; returns the services left to the
    /// user-space path, with why.
    pub fn apply(
        &mut self,
        wanted: &[PacketService<'_>],
    ) -> Result<Vec<(ServiceKey, String)>, XdpError> {
        let (update, planned) = self.tables.plan(wanted);
        for write in &update.writes {
            self.write(write)?;
        }
        self.tables.commit(planned);
        Ok(update
            .skipped
            .into_iter()
            .map(|(key, why)| (key, why.to_string()))
            .collect())
    }

    fn write(&mut self, write: &Write) -> Result<(), XdpError> {
        match write {
            Write::Backend {
                slot,
                address,
                available,
            } => {
                let snat = self.snat_ip(*address)?;
                self.backends
                    .set(*slot, Backend::new(*address, snat, *available), 0)
                    .map_err(map_error("backends"))
            }
            Write::Entries(changes) => {
                for (index, slot) in changes {
                    self.maglev
                        .set(*index, *slot, 0)
                        .map_err(map_error("maglev"))?;
                }
                Ok(())
            }
            Write::Service {
                key,
                offset,
                size,
                idle_timeout,
            } => self
                .services
                .insert(
                    ServiceKeyC::from(*key),
                    Service {
                        offset: *offset,
                        size: *size,
                        idle: maps::ticks(*idle_timeout),
                        pad: 0,
                    },
                    0,
                )
                .map_err(map_error("services")),
            Write::RemoveService(key) => match self.services.remove(&ServiceKeyC::from(*key)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(map_error("services")(e)),
            },
        }
    }

    /// The address the node's route to `gateway` leaves from (what flows are NATed to).
    fn snat_ip(&mut self, gateway: SocketAddrV4) -> Result<Ipv4Addr, XdpError> {
        if let Some(ip) = self.snat.get(gateway.ip()) {
            return Ok(*ip);
        }
        let route = || -> std::io::Result<IpAddr> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(gateway)?;
            Ok(socket.local_addr()?.ip())
        };
        match route() {
            Ok(IpAddr::V4(ip)) => {
                self.snat.insert(*gateway.ip(), ip);
                Ok(ip)
            }
            Ok(IpAddr::V6(_)) => Err(XdpError::Map {
                map: "backends",
                reason: format!("the route to gateway {gateway} leaves from an IPv6 address"),
            }),
            Err(e) => Err(XdpError::Map {
                map: "backends",
                reason: format!("no route to gateway {gateway}: {e}"),
            }),
        }
    }

    /// The program's counters, summed over CPUs, in [`maps::COUNTERS`] order.
    pub fn counters(&self) -> Vec<u64> {
        (0..maps::COUNTERS.len())
            .map(|i| {
                u32::try_from(i)
                    .ok()
                    .and_then(|i| self.counters.get(&i, 0).ok())
                    .map_or(0, |values| {
                        values.iter().fold(0u64, |a, v| a.saturating_add(*v))
                    })
            })
            .collect()
    }

    /// Runs one Ethernet frame through the program as if it arrived on `ingress_ifindex`
    /// (`BPF_PROG_TEST_RUN`, in the calling thread's network namespace): the verdict
    /// (`XDP_PASS` 2, `XDP_TX` 3, `XDP_REDIRECT` 4) and the frame as the program left it.
    pub fn run_frame(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<(u32, Vec<u8>), XdpError> {
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM)
            .ok_or_else(|| XdpError::Load("the program is not loaded".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpError::Load(e.to_string()))?;
        let size = u32::try_from(frame.len()).map_err(|e| XdpError::Load(e.to_string()))?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let mut context = [0u8; 24];
        context[4..8].copy_from_slice(&size.to_ne_bytes());
        context[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&context),
                ..TestRunOptions::default()
            })
            .map_err(|e| XdpError::Load(format!("test run: {e:#}")))?;
        out.truncate(usize::try_from(result.data_size_out).unwrap_or(0));
        Ok((result.return_value, out))
    }
}

/// Keeps `path`'s maps equal to the user-space tables until `stopped`, on a thread of its own
/// (writing a new table is thousands of system calls). Then drains: new flows go to the kernel
/// (whose listeners have stopped accepting), tracked ones go on until none has moved a packet
/// for a second or `drain_time` passed, and the program is detached.
pub fn follow(
    mut path: PacketPath,
    state: Arc<L4State>,
    stopped: tokio::sync::watch::Receiver<bool>,
    drain_time: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("l4-xdp".into())
        .spawn(move || {
            let mut seen: Option<(Arc<Snapshot>, Vec<Arc<L4Table>>)> = None;
            let mut reported = vec![0u64; maps::COUNTERS.len()];
            let mut last_error: Option<(String, std::time::Instant)> = None;
            while !*stopped.borrow() {
                let snapshot = state.snapshot.load_full();
                let tables: Vec<Arc<L4Table>> = snapshot
                    .clusters
                    .values()
                    .map(|upstream| upstream.table())
                    .collect();
                let unchanged = seen.as_ref().is_some_and(|(s, t)| {
                    Arc::ptr_eq(s, &snapshot)
                        && t.len() == tables.len()
                        && t.iter().zip(&tables).all(|(a, b)| Arc::ptr_eq(a, b))
                });
                if !unchanged {
                    match path.sync(&snapshot) {
                        Ok(skipped) => {
                            for (key, why) in &skipped {
                                tracing::warn!(vip = %key.vip, port = key.port, protocol = key.protocol, reason = %why, "VIP:port left to the user-space path");
                            }
                            state.set_packet_path(PacketPathStatus {
                                interfaces: path.interfaces().to_vec(),
                                services: path.tables.services(),
                                user_space_only: skipped
                                    .iter()
                                    .map(|(k, why)| format!("{}:{}/{}: {why}", k.vip, k.port, protocol_name(k.protocol)))
                                    .collect(),
                                error: None,
                            });
                            seen = Some((snapshot, tables));
                        }
                        Err(error) => {
                            // Retried every 100 ms; said again only when it changes, or
                            // after a minute.
                            let error = error.to_string();
                            let repeat = last_error.as_ref().is_some_and(|(last, when)| {
                                *last == error && when.elapsed() < Duration::from_secs(60)
                            });
                            if !repeat {
                                tracing::warn!(%error, "could not update the packet path; retrying");
                                last_error = Some((error.clone(), std::time::Instant::now()));
                            }
                            state.set_packet_path_error(error);
                        }
                    }
                }
                report(&path, &state, &mut reported);
                std::thread::sleep(FOLLOW_INTERVAL);
            }
            if let Err(error) = path.drain() {
                tracing::warn!(%error, "could not stop the packet path's new flows");
            }
            let started = std::time::Instant::now();
            let mut moving = (path.counters(), std::time::Instant::now());
            while started.elapsed() < drain_time && moving.1.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(FOLLOW_INTERVAL);
                let now = path.counters();
                // Packets forwarded or returned: a tracked flow is still in use.
                if now.get(..2) != moving.0.get(..2) {
                    moving = (now, std::time::Instant::now());
                }
            }
            report(&path, &state, &mut reported);
            drop(path);
            tracing::info!(
                drained_ms = started.elapsed().as_millis() as u64,
                "packet path detached"
            );
        })
}

/// Adds what the program counted since the last report to the node's metrics.
fn report(path: &PacketPath, state: &L4State, reported: &mut [u64]) {
    let counters = path.counters();
    for ((name, now), before) in maps::COUNTERS.iter().zip(&counters).zip(reported) {
        state
            .stats
            .packet_path
            .get_or_create(&super::stats::PacketPathEvent { event: name })
            .inc_by(now.saturating_sub(*before));
        *before = *now;
    }
}

fn protocol_name(protocol: u8) -> &'static str {
    if protocol == UDP {
        "udp"
    } else {
        "tcp"
    }
}

/// What `/ready` says of the packet path.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PacketPathStatus {
    pub interfaces: Vec<String>,
    /// VIP:ports it forwards.
    pub services: usize,
    /// VIP:ports only the user-space path serves, with why.
    pub user_space_only: Vec<String>,
    pub error: Option<String>,
}
