//! The embedded authoritative DNS server (hickory-server) on UDP and TCP.
//!
//! Each configured zone is an in-memory zone with an SOA and NS record; NameService record sets
//! (`core::dns`) are its A/AAAA records. On every snapshot the catalog is rebuilt and swapped
//! in whole, so an answer always comes from one consistent snapshot. hickory's catalog gives
//! NXDOMAIN for absent names and NODATA (NOERROR, SOA in authority) for absent types, and
//! handles EDNS.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use hickory_net::runtime::{Time, TokioRuntimeProvider};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use crate::core::dns::{normalize, records, DnsRecords};
use crate::index::Snapshot;

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

/// The catalog currently answering; replaced whole on every change.
#[derive(Clone, Default)]
struct LiveCatalog {
    current: Arc<RwLock<Arc<Catalog>>>,
}

#[tonic::async_trait]
impl RequestHandler for LiveCatalog {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let catalog = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// A running DNS server.
#[derive(Clone)]
pub struct DnsServer {
    pub addr: SocketAddr,
    catalog: LiveCatalog,
    zones: Vec<String>,
}

impl DnsServer {
    /// Binds UDP and TCP on `options.dns_addr` and starts answering from `snapshots`.
    pub async fn start(
        options: &DnsOptions,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Option<(DnsServer, tokio::task::JoinHandle<anyhow::Result<()>>)>> {
        let Some(addr) = options.dns_addr else {
            return Ok(None);
        };
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS UDP {addr}"))?;
        let addr = udp.local_addr()?;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding DNS TCP {addr}"))?;
        let zones: Vec<String> = options.dns_zones.iter().map(|z| normalize(z)).collect();
        for zone in &zones {
            Name::from_str(zone).with_context(|| format!("--dns-zone {zone:?}"))?;
        }
        let catalog = LiveCatalog::default();
        let dns = DnsServer {
            addr,
            catalog: catalog.clone(),
            zones,
        };
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 64 * 1024);
        tracing::info!(%addr, zones = ?dns.zones, "DNS serving");
        let updater = dns.clone();
        let task = tokio::spawn(async move {
            let updates = updater.follow(snapshots, stopped.clone());
            tokio::select! {
                result = updates => result,
                _ = crate::serve::stopped_signal(stopped) => {
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

    /// Rebuilds the catalog on every snapshot.
    async fn follow(
        &self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut last: Option<DnsRecords> = None;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let zones = self.zones.clone();
            let records =
                tokio::task::spawn_blocking(move || records(&snapshot.model, &zones)).await?;
            if last.as_ref() != Some(&records) {
                if last.as_ref().map(|l| &l.problems) != Some(&records.problems) {
                    for problem in &records.problems {
                        tracing::warn!(%problem, "NameService not served");
                    }
                }
                let serial = serial_of(&records);
                let catalog = build_catalog(&self.zones, &records, serial)?;
                *self
                    .catalog
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
                tracing::info!(names = records.names.len(), serial, "DNS records updated");
                last = Some(records);
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
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
