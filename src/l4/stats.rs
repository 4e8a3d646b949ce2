//! `meridian l4`'s Prometheus metrics, at `/stats/prometheus` on the admin listener:
//! connections (new UDP flows) per listener, UDP flows tracked and evicted, gateway connect failures and connections no gateway took, bytes
//! forwarded, gateways by state per cluster, config updates applied or rejected, and what the
//! XDP packet path did.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Bytes {
    pub listener: String,
    /// `received` (from clients) or `sent` (to clients).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayState {
    pub cluster: String,
    /// `available`, `failed` (active checks) or `ejected` (passive).
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Update {
    pub r#type: &'static str,
    /// `ack` or `nack`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketPathEvent {
    /// One of `xdp::maps::COUNTERS`.
    pub event: &'static str,
}

pub struct Stats {
    pub registry: Registry,
    pub connections: Family<ListenerLabel, Counter>,
    pub active_connections: Family<ListenerLabel, Gauge>,
    /// Connections closed because no gateway took them (none available, or all refused).
    pub unserved: Family<ListenerLabel, Counter>,
    pub connect_failures: Family<ClusterLabel, Counter>,
    pub bytes: Family<Bytes, Counter>,
    pub gateways: Family<GatewayState, Gauge>,
    pub config_updates: Family<Update, Counter>,
    /// UDP flows tracked, and those dropped to make room for new ones.
    pub udp_flows: Family<ListenerLabel, Gauge>,
    pub udp_evicted: Family<ListenerLabel, Counter>,
    /// What the XDP packet path did: packets forwarded and returned, new and rehashed flows,
    /// packets left to the kernel and why.
    pub packet_path: Family<PacketPathEvent, Counter>,
}

impl Stats {
    /// A listener's byte counters: received from clients, sent to clients.
    pub fn bytes_of(&self, listener: &str) -> (Counter, Counter) {
        let series = |direction| {
            self.bytes
                .get_or_create(&Bytes {
                    listener: listener.to_owned(),
                    direction,
                })
                .clone()
        };
        (series("received"), series("sent"))
    }
}

impl Default for Stats {
    fn default() -> Stats {
        let mut registry = Registry::with_prefix("meridian_l4");
        let connections = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections",
            "Client connections accepted, by listener",
            connections.clone(),
        );
        let active_connections = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "active_connections",
            "Client connections open, by listener",
            active_connections.clone(),
        );
        let unserved = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "unserved_connections",
            "Client connections closed because no gateway took them",
            unserved.clone(),
        );
        let connect_failures = Family::<ClusterLabel, Counter>::default();
        registry.register(
            "gateway_connect_failures",
            "Connections to gateways that failed or timed out, by cluster",
            connect_failures.clone(),
        );
        let bytes = Family::<Bytes, Counter>::default();
        registry.register(
            "bytes",
            "Bytes forwarded, by listener and direction",
            bytes.clone(),
        );
        let gateways = Family::<GatewayState, Gauge>::default();
        registry.register(
            "gateways",
            "Gateways by cluster and state (available, failed, ejected)",
            gateways.clone(),
        );
        let config_updates = Family::<Update, Counter>::default();
        registry.register(
            "config_updates",
            "xDS responses applied (ack) or rejected (nack), by type",
            config_updates.clone(),
        );
        let udp_flows = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "udp_flows",
            "UDP flows tracked, by listener",
            udp_flows.clone(),
        );
        let udp_evicted = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "udp_flows_evicted",
            "UDP flows forgotten to make room for new ones (least recently used first)",
            udp_evicted.clone(),
        );
        let packet_path = Family::<PacketPathEvent, Counter>::default();
        registry.register(
            "packet_path_events",
            "What the XDP packet path did, by event (forwarded, returned, new_flow, rehashed, passed_*)",
            packet_path.clone(),
        );
        Stats {
            registry,
            packet_path,
            udp_flows,
            udp_evicted,
            connections,
            active_connections,
            unserved,
            connect_failures,
            bytes,
            gateways,
            config_updates,
        }
    }
}
