//! The embedded authoritative DNS server (hickory-server) on UDP and TCP.
//!
//! On every change the answer table is rebuilt and swapped in whole, so an answer always comes
//! from one consistent snapshot. A and AAAA queries for a served name are answered here, per
//! query, choosing among the name's zones (`core::dns::answer`: the client's own zone, then
//! priorities and weights). Everything else goes to hickory's catalog of the same records,
//! with an SOA and NS per zone: NXDOMAIN for absent names, NODATA (NOERROR, SOA in authority)
//! for absent types, SOA and NS queries, and refusals.
//!
//! Cluster health for `Failover` comes from the snapshot (ready endpoints) and from the fleet's
//! acknowledgements (a gateway proxy there serves the AccessPoint).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use hickory_net::runtime::{Time, TokioRuntimeProvider};
use hickory_proto::op::{Edns, MessageType, Metadata, OpCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use crate::control_plane::fleet_acks::FleetAcks;
use crate::control_plane::index::Snapshot;
use crate::core::dns::answer::Family;
use crate::core::dns::status::DnsPublication;
use crate::core::dns::{normalize, records, serving_clusters, DnsRecords, NameRecords};

/// DNS flags shared by both modes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DnsOptions {
    /// Serve NameService records over DNS (UDP and TCP) on this address.
    #[arg(long)]
    pub dns_addr: Option<SocketAddr>,
    /// A zone Meridian is authoritative for (repeat for several), e.g. `example.com`.
    #[arg(long = "dns-zone", value_name = "ZONE")]
    pub dns_zones: Vec<String>,
}

/// A TCP client that sends nothing for this long is disconnected.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// SOA timers: refresh, retry, expire (seconds) and the negative-caching TTL.
const SOA_TIMERS: (i32, i32, i32, u32) = (3600, 600, 86400, 30);

/// What answers: the served names (for A and AAAA) and the catalog (for everything else).
#[derive(Default)]
struct AnswerTable {
    names: HashMap<LowerName, ServedName>,
    catalog: Catalog,
}

/// One name's records, prebuilt per zone.
struct ServedName {
    records: NameRecords,
    /// Per entry of `records.zones`: its A and AAAA records.
    a: Vec<Vec<Record>>,
    aaaa: Vec<Vec<Record>>,
}

/// The table currently answering; replaced whole on every change.
#[derive(Clone, Default)]
struct LiveTable {
    current: Arc<RwLock<Arc<AnswerTable>>>,
    /// Advanced per weighted answer, so weights split queries exactly.
    tickets: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl RequestHandler for LiveTable {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let table = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match self.answer(&table, request, response_handle).await {
            Ok(info) => info,
            Err(response_handle) => {
                table
                    .catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
        }
    }
}

impl LiveTable {
    /// Answers an A or AAAA query for a served name that has addresses of that family; gives
    /// the handle back for anything else.
    async fn answer<R: ResponseHandler>(
        &self,
        table: &AnswerTable,
        request: &Request,
        mut response_handle: R,
    ) -> Result<ResponseInfo, R> {
        let metadata = &request.metadata;
        let edns = request.edns.as_ref();
        if metadata.message_type != MessageType::Query
            || metadata.op_code != OpCode::Query
            || request.queries.len() != 1
            || edns.is_some_and(|e| e.version() > 0)
        {
            return Err(response_handle);
        }
        let query = &request.queries.queries()[0];
        let family = match query.query_type() {
            RecordType::A => Family::V4,
            RecordType::AAAA => Family::V6,
            _ => return Err(response_handle),
        };
        let Some(served) = table.names.get(query.name()) else {
            return Err(response_handle);
        };
        if query.query_class() != DNSClass::IN {
            return Err(response_handle);
        }
        let subnet = edns.and_then(|e| match e.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(subnet)) if subnet.source_prefix() > 0 => Some(subnet),
            _ => None,
        });
        let client = subnet
            .map(ClientSubnet::addr)
            .unwrap_or_else(|| request.src().ip());
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let chosen = served.records.answer(family, Some(client), ticket);
        if chosen.is_empty() {
            return Err(response_handle);
        }
        let per_zone = match family {
            Family::V4 => &served.a,
            Family::V6 => &served.aaaa,
        };
        let answers = served
            .records
            .zones
            .iter()
            .zip(per_zone)
            .filter(|(zone, _)| chosen.iter().any(|c| std::ptr::eq(*c, *zone)))
            .flat_map(|(_, records)| records);
        let response_edns = edns.map(|request_edns| response_edns(request_edns, subnet, served));
        let mut response_metadata = Metadata::response_from_request(metadata);
        response_metadata.authoritative = true;
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &response_edns {
            builder.edns(edns);
        }
        let response = builder.build(
            response_metadata,
            answers,
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        );
        Ok(match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "DNS response not sent");
                let mut failed = Metadata::response_from_request(metadata);
                failed.response_code = hickory_proto::op::ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata: failed,
                    counts: Default::default(),
                })
            }
        })
    }
}

/// The OPT record of a response (RFC 6891), echoing the client subnet with the scope the
/// answer depends on (RFC 7871): the whole source prefix for source-aware names, else none.
fn response_edns(request: &Edns, subnet: Option<&ClientSubnet>, served: &ServedName) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(request.max_payload().max(512));
    edns.set_version(0);
    if let Some(subnet) = subnet {
        let scope = if served.records.source_aware() {
            subnet.source_prefix()
        } else {
            0
        };
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                subnet.addr(),
                subnet.source_prefix(),
                scope,
            )));
    }
    edns
}

/// Binds UDP and TCP on the same address. Port 0 takes the port the kernel gives UDP, and
/// tries again when TCP's port of that number is taken.
async fn bind_both(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    const ATTEMPTS: usize = 16;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS UDP {addr}"))?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && attempt < ATTEMPTS => {
                tracing::debug!(port = bound.port(), error = %e, "DNS TCP port taken; another");
            }
            Err(e) => return Err(e).with_context(|| format!("binding DNS TCP {bound}")),
        }
    }
}

/// A running DNS server.
#[derive(Clone)]
pub struct DnsServer {
    pub addr: SocketAddr,
    table: LiveTable,
    zones: Vec<String>,
    published: watch::Sender<DnsPublication>,
}

impl DnsServer {
    /// Binds UDP and TCP on `options.dns_addr` and starts answering from `snapshots`.
    pub async fn start(
        options: &DnsOptions,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        acks: FleetAcks,
        published: watch::Sender<DnsPublication>,
        stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Option<(DnsServer, tokio::task::JoinHandle<anyhow::Result<()>>)>> {
        let Some(addr) = options.dns_addr else {
            return Ok(None);
        };
        let (udp, tcp) = bind_both(addr).await?;
        let addr = udp.local_addr()?;
        let zones: Vec<String> = options.dns_zones.iter().map(|z| normalize(z)).collect();
        for zone in &zones {
            Name::from_str(zone).with_context(|| format!("--dns-zone {zone:?}"))?;
        }
        let table = LiveTable::default();
        published.send_modify(|p| p.zones = zones.clone());
        let dns = DnsServer {
            addr,
            table: table.clone(),
            zones,
            published,
        };
        let mut server = Server::new(table);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 64 * 1024);
        tracing::info!(%addr, zones = ?dns.zones, "DNS serving");
        let updater = dns.clone();
        let task = tokio::spawn(async move {
            let updates = updater.follow(snapshots, acks, stopped.clone());
            tokio::select! {
                result = updates => result,
                _ = crate::runtime::stopped_signal(stopped) => {
                    server.shutdown_gracefully().await.context("DNS server")?;
                    Ok(())
                }
            }
        });
        Ok(Some((dns, task)))
    }

    /// The zones served, normalized.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// Rebuilds the table whenever the snapshot or the fleet's acknowledgements change what
    /// is answered.
    async fn follow(
        &self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut acks: FleetAcks,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut last: Option<DnsRecords> = None;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let serving = serving_clusters(&acks.current());
            let zones = self.zones.clone();
            let records =
                tokio::task::spawn_blocking(move || records(&snapshot.model, &serving, &zones))
                    .await?;
            if last.as_ref() != Some(&records) {
                if last.as_ref().map(|l| &l.problems) != Some(&records.problems) {
                    for problem in &records.problems {
                        tracing::warn!(%problem, "NameService not served");
                    }
                }
                let serial = serial_of(&records);
                let table = build_table(&self.zones, &records, serial)?;
                *self
                    .table
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
                tracing::info!(names = records.names.len(), serial, "DNS records updated");
                let shared = Arc::new(records.clone());
                self.published.send_modify(|p| p.embedded = Some(shared));
                last = Some(records);
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
                _ = acks.changed() => {}
                _ = stopped.changed() => return Ok(()),
            }
        }
    }
}

/// A zone serial that changes whenever the records do (secondaries compare serials).
fn serial_of(records: &DnsRecords) -> u32 {
    let text = format!("{:?}", records.names);
    let hash = crate::core::resources::content_hash([text.as_bytes()]);
    u32::from_str_radix(&hash[..8], 16).unwrap_or(1)
}

fn build_table(zones: &[String], records: &DnsRecords, serial: u32) -> anyhow::Result<AnswerTable> {
    let mut names = HashMap::new();
    for (name, set) in &records.names {
        let owner = Name::from_str(&format!("{name}."))?;
        let record = |rdata: RData| Record::from_rdata(owner.clone(), set.ttl, rdata);
        let a = set
            .zones
            .iter()
            .map(|z| z.v4.iter().map(|v4| record(RData::A(A(*v4)))).collect())
            .collect();
        let aaaa = set
            .zones
            .iter()
            .map(|z| {
                z.v6.iter()
                    .map(|v6| record(RData::AAAA(AAAA(*v6))))
                    .collect()
            })
            .collect();
        let served = ServedName {
            records: set.clone(),
            a,
            aaaa,
        };
        names.insert(LowerName::new(&owner), served);
    }
    Ok(AnswerTable {
        names,
        catalog: build_catalog(zones, records, serial)?,
    })
}

fn build_catalog(zones: &[String], records: &DnsRecords, serial: u32) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::new();
    for zone in zones {
        let origin = Name::from_str(&format!("{zone}."))?;
        let ns_name = Name::from_str(&format!("ns1.{zone}."))?;
        let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let (refresh, retry, expire, minimum) = SOA_TIMERS;
        let soa = SOA::new(
            ns_name.clone(),
            Name::from_str(&format!("hostmaster.{zone}."))?,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        );
        handler.upsert_mut(
            Record::from_rdata(origin.clone(), minimum, RData::SOA(soa)),
            serial,
        );
        handler.upsert_mut(
            Record::from_rdata(origin.clone(), 3600, RData::NS(NS(ns_name))),
            serial,
        );
        for (name, set) in records
            .names
            .iter()
            .filter(|(n, _)| crate::core::dns::in_zone(n, zone))
        {
            let owner = Name::from_str(&format!("{name}."))?;
            for v4 in &set.v4 {
                handler.upsert_mut(
                    Record::from_rdata(owner.clone(), set.ttl, RData::A(A(*v4))),
                    serial,
                );
            }
            for v6 in &set.v6 {
                handler.upsert_mut(
                    Record::from_rdata(owner.clone(), set.ttl, RData::AAAA(AAAA(*v6))),
                    serial,
                );
            }
            if set.v4.is_empty() && set.v6.is_empty() {
                tracing::debug!(%name, "no addresses yet: answered with NODATA");
            }
        }
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
    }
    Ok(catalog)
}
