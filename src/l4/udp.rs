//! UDP through the L4 node. Datagrams from one client address and port to a VIP:port are a
//! flow; a new flow gets a gateway by Maglev over its 5-tuple (as a TCP connection does) and a
//! socket connected to that gateway, whose answers go back to the client from the VIP. A flow
//! lives in its listener's [`FlowTable`] until it has been idle for the listener's idle
//! timeout, or a new flow needs its place (least recently used first), or its gateway leaves
//! the table (failed, ejected or gone): then its next datagram is hashed again.
//!
//! The data path is one thread running an event loop over the VIP sockets and the flows'
//! sockets, so a flow costs its socket and its table entry — no task, no buffer. The async
//! side sends it [`Command`]s and wakes it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::stats::ListenerLabel;
use super::upstream::Upstream;
use super::L4State;
use crate::core::dataplane::conntrack::FlowKey;
use crate::core::dataplane::l4::flows::FlowTable;
use crate::core::dataplane::l4::L4ListenerPlan;
use crate::runtime::log_budget::LogBudget;

const UDP: u8 = 17;
const WAKER: Token = Token(usize::MAX);
/// The largest datagram.
const DATAGRAM: usize = 65_536;
/// How often idle flows are looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// What the async side asks of the data path.
pub enum Command {
    /// Serve `socket` (bound to the plan's address) as listener `name`.
    Listen {
        plan: L4ListenerPlan,
        socket: std::net::UdpSocket,
    },
    /// New settings for a listener whose address stays.
    Update(L4ListenerPlan),
    /// Stop serving the listener and forget its flows.
    Close(String),
}

/// The UDP data path's thread, stopped and joined on drop.
pub struct UdpPlane {
    commands: mpsc::Sender<Option<Command>>,
    waker: Arc<Waker>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpPlane {
    /// Starts the data path; each listener tracks at most `capacity` flows.
    pub fn start(state: Arc<L4State>, capacity: usize) -> io::Result<UdpPlane> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("meridian-l4-udp".into())
            .spawn(move || {
                let mut plane = Plane {
                    poll,
                    state,
                    capacity,
                    listeners: HashMap::new(),
                    next_listener: 0,
                    buffer: vec![0u8; DATAGRAM],
                };
                plane.run(&receiver);
            })?;
        Ok(UdpPlane {
            commands,
            waker,
            thread: Some(thread),
        })
    }

    pub fn send(&self, command: Command) {
        if self.commands.send(Some(command)).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

impl Drop for UdpPlane {
    fn drop(&mut self) {
        let _ = self.commands.send(None);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A flow: its socket to the gateway, and the table it was last checked against.
struct Flow {
    socket: UdpSocket,
    gateway: SocketAddr,
    checked_against: usize,
}

/// One VIP:port and its flows.
struct Listener {
    plan: L4ListenerPlan,
    socket: UdpSocket,
    flows: FlowTable<SocketAddr, Flow>,
    counters: Counters,
}

struct Counters {
    flows: Gauge,
    new_flows: Counter,
    evicted: Counter,
    unserved: Counter,
    received: Counter,
    sent: Counter,
}

impl Counters {
    fn resolve(plan: &L4ListenerPlan, state: &L4State) -> Counters {
        let stats = &state.stats;
        let listener = ListenerLabel {
            listener: plan.name.clone(),
        };
        let (received, sent) = stats.bytes_of(&plan.name);
        Counters {
            flows: stats.udp_flows.get_or_create(&listener).clone(),
            new_flows: stats.connections.get_or_create(&listener).clone(),
            evicted: stats.udp_evicted.get_or_create(&listener).clone(),
            unserved: stats.unserved.get_or_create(&listener).clone(),
            received,
            sent,
        }
    }
}

struct Plane {
    poll: Poll,
    state: Arc<L4State>,
    capacity: usize,
    /// By listener id: a VIP socket's token is its id; a flow's is (id + 1) << 32 | slot.
    listeners: HashMap<u32, Listener>,
    next_listener: u32,
    buffer: Vec<u8>,
}

fn flow_token(listener: u32, slot: u32) -> Token {
    Token(((listener as usize + 1) << 32) | slot as usize)
}

/// (listener, slot) of a flow's token; `None` for a VIP socket's.
fn flow_of(token: Token) -> Option<(u32, u32)> {
    let high = token.0 >> 32;
    let listener = u32::try_from(high.checked_sub(1)?).ok()?;
    Some((listener, (token.0 & 0xffff_ffff) as u32))
}

/// The id Endpoint::id gives a gateway: `ip:port`.
fn gateway_id(address: SocketAddr) -> String {
    format!("{}:{}", address.ip(), address.port())
}

fn octets(address: SocketAddr) -> [u8; 16] {
    match address.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Plane {
    fn run(&mut self, commands: &mpsc::Receiver<Option<Command>>) {
        static POLL_FAILED: LogBudget = LogBudget::new(1, Duration::from_secs(10));
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = self.state.clock();
        loop {
            if let Err(error) = self.poll.poll(&mut events, Some(SWEEP)) {
                if error.kind() != io::ErrorKind::Interrupted {
                    if let Some(suppressed) = POLL_FAILED.allow() {
                        tracing::warn!(%error, suppressed, "UDP event loop");
                    }
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    token => match flow_of(token) {
                        Some((listener, slot)) => self.answers(listener, slot),
                        None => self.datagrams(token.0 as u32),
                    },
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(Some(command)) => self.command(command),
                    Ok(None) | Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            let now = self.state.clock();
            if now.saturating_sub(last_sweep) >= SWEEP {
                last_sweep = now;
                for listener in self.listeners.values_mut() {
                    let expired = listener.flows.expire(now);
                    if !expired.is_empty() {
                        listener.counters.flows.set(listener.flows.len() as i64);
                    }
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Listen { plan, socket } => {
                let id = self.next_listener;
                self.next_listener = self.next_listener.wrapping_add(1);
                if let Err(error) = socket.set_nonblocking(true) {
                    tracing::warn!(listener = %plan.name, %error, "UDP listener");
                    return;
                }
                let mut socket = UdpSocket::from_std(socket);
                let registered = self.poll.registry().register(
                    &mut socket,
                    Token(id as usize),
                    Interest::READABLE,
                );
                if let Err(error) = registered {
                    tracing::warn!(listener = %plan.name, %error, "UDP listener");
                    return;
                }
                // Replacing a listener of the same name: the old one goes.
                self.close(&plan.name);
                let idle = plan.idle_timeout.unwrap_or(Duration::MAX);
                let counters = Counters::resolve(&plan, &self.state);
                self.listeners.insert(
                    id,
                    Listener {
                        flows: FlowTable::new(self.capacity, idle),
                        plan,
                        socket,
                        counters,
                    },
                );
            }
            Command::Update(plan) => {
                if let Some(listener) = self
                    .listeners
                    .values_mut()
                    .find(|l| l.plan.name == plan.name)
                {
                    listener.plan = plan;
                }
            }
            Command::Close(name) => self.close(&name),
        }
    }

    fn close(&mut self, name: &str) {
        self.listeners.retain(|_, l| {
            let keep = l.plan.name != name;
            if !keep {
                l.counters.flows.set(0);
            }
            keep
        });
    }

    /// The listener's cluster as it is now.
    fn upstream(&self, cluster: &str) -> Option<Arc<Upstream>> {
        self.state.snapshot.load().clusters.get(cluster).cloned()
    }

    /// Datagrams from clients on listener `id`.
    fn datagrams(&mut self, id: u32) {
        static NO_GATEWAY: LogBudget = LogBudget::new(2, Duration::from_secs(10));
        loop {
            let Some(listener) = self.listeners.get(&id) else {
                return;
            };
            let (length, client) = match listener.socket.recv_from(&mut self.buffer) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let now = self.state.clock();
            let upstream = self.upstream(&listener.plan.cluster);
            let Some(upstream) = upstream else {
                self.unserved(id, &NO_GATEWAY);
                continue;
            };
            let table = upstream.table();
            let table_id = Arc::as_ptr(&table) as usize;
            let Some(listener) = self.listeners.get_mut(&id) else {
                return;
            };
            listener.counters.received.inc_by(length as u64);
            let mut slot = listener.flows.find(&client);
            // A flow keeps its gateway while the gateway is in the table.
            if let Some(existing) = slot {
                let stale = match listener.flows.get_mut(existing) {
                    Some(flow) if flow.checked_against == table_id => false,
                    Some(flow) => {
                        let kept = table.gateways().iter().any(|g| g.address == flow.gateway);
                        flow.checked_against = table_id;
                        !kept
                    }
                    None => true,
                };
                if stale {
                    listener.flows.remove(existing);
                    slot = None;
                }
            }
            let slot = match slot {
                Some(slot) => slot,
                None => {
                    let key = FlowKey {
                        protocol: UDP,
                        source: octets(client),
                        source_port: client.port(),
                        destination: octets(listener.plan.address),
                        destination_port: listener.plan.address.port(),
                    };
                    let Some(gateway) = table.pick(key.hash(), &[]).map(|g| g.address) else {
                        self.unserved(id, &NO_GATEWAY);
                        continue;
                    };
                    match self.open_flow(id, client, gateway, table_id, now) {
                        Some(slot) => slot,
                        None => continue,
                    }
                }
            };
            let Some(listener) = self.listeners.get_mut(&id) else {
                return;
            };
            listener.flows.touch(slot, now);
            let sent = listener
                .flows
                .get(slot)
                .map(|(_, flow)| (flow.socket.send(&self.buffer[..length]), flow.gateway));
            if let Some((Err(error), gateway)) = sent {
                if error.kind() != io::ErrorKind::WouldBlock {
                    // Refused (ICMP port unreachable): a failure of the gateway; the next
                    // datagram is hashed again.
                    listener.flows.remove(slot);
                    listener.counters.flows.set(listener.flows.len() as i64);
                    upstream.record_connect(&gateway_id(gateway), false, now, &self.state.stats);
                }
            }
        }
    }

    fn unserved(&self, id: u32, budget: &LogBudget) {
        if let Some(listener) = self.listeners.get(&id) {
            listener.counters.unserved.inc();
            if let Some(suppressed) = budget.allow() {
                let (name, cluster) = (&listener.plan.name, &listener.plan.cluster);
                tracing::warn!(listener = %name, %cluster, suppressed, "no gateway for a UDP flow; datagram dropped");
            }
        }
    }

    /// A socket connected to `gateway` for `client`'s new flow, in the listener's table.
    fn open_flow(
        &mut self,
        id: u32,
        client: SocketAddr,
        gateway: SocketAddr,
        table_id: usize,
        now: Duration,
    ) -> Option<u32> {
        static OPEN_FAILED: LogBudget = LogBudget::new(1, Duration::from_secs(10));
        let unspecified = match gateway {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let opened = UdpSocket::bind(unspecified).and_then(|socket| {
            socket.connect(gateway)?;
            Ok(socket)
        });
        let socket = match opened {
            Ok(socket) => socket,
            Err(error) => {
                if let Some(suppressed) = OPEN_FAILED.allow() {
                    tracing::warn!(%error, suppressed, "cannot open a UDP flow's socket");
                }
                return None;
            }
        };
        let listener = self.listeners.get_mut(&id)?;
        let flow = Flow {
            socket,
            gateway,
            checked_against: table_id,
        };
        let (slot, evicted) = listener.flows.insert(client, flow, now);
        if evicted.is_some() {
            listener.counters.evicted.inc();
        }
        listener.counters.new_flows.inc();
        listener.counters.flows.set(listener.flows.len() as i64);
        let token = flow_token(id, slot);
        let registry = self.poll.registry();
        let flow = listener.flows.get_mut(slot)?;
        if registry
            .register(&mut flow.socket, token, Interest::READABLE)
            .is_err()
        {
            listener.flows.remove(slot);
            return None;
        }
        Some(slot)
    }

    /// Answers from a flow's gateway, sent back to its client from the VIP.
    fn answers(&mut self, id: u32, slot: u32) {
        let now = self.state.clock();
        let Some(listener) = self.listeners.get_mut(&id) else {
            return;
        };
        loop {
            let Some((client, flow)) = listener.flows.get(slot) else {
                return;
            };
            let client = *client;
            match flow.socket.recv(&mut self.buffer) {
                Ok(length) => {
                    // UDP may drop: an answer the VIP socket cannot take now is lost.
                    if listener
                        .socket
                        .send_to(&self.buffer[..length], client)
                        .is_ok()
                    {
                        listener.counters.sent.inc_by(length as u64);
                    }
                    listener.flows.touch(slot, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    let gateway = flow.gateway;
                    listener.flows.remove(slot);
                    listener.counters.flows.set(listener.flows.len() as i64);
                    let cluster = listener.plan.cluster.clone();
                    if let Some(upstream) = self.upstream(&cluster) {
                        upstream.record_connect(
                            &gateway_id(gateway),
                            false,
                            now,
                            &self.state.stats,
                        );
                    }
                    return;
                }
            }
        }
    }
}
