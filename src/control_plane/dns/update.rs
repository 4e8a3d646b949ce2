//! The RFC 2136 provider: keeps NameService records in external authoritative servers with
//! TSIG-signed dynamic updates.
//!
//! Ownership is recorded the way external-dns does it: next to every name Meridian manages sits
//! a TXT record `meridian-owner.<name>` saying `heritage=meridian,nameservice=<ns>/<name>`.
//! Meridian reads the zone (AXFR, signed with the same key), changes only names it owns or that
//! are free, and removes only what its TXT records claim. A name someone else holds is left
//! alone and logged. Failures are retried with exponential backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::xfer::{DnsHandle, DnsMultiplexer, FirstAnswer};
use hickory_proto::op::{Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use tokio::sync::watch;

use crate::api::name_service::Rfc2136Provider;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::control_plane::fleet_acks::FleetAcks;
use crate::control_plane::index::Snapshot;
use crate::core::dns::status::{DnsPublication, ProviderState};
use crate::core::dns::{
    provider_of, rfc2136_records, serving_clusters, DnsRecords, NameRecords, ServingClusters,
};

/// Prefix of the TXT records that mark names Meridian owns.
pub const OWNER_PREFIX: &str = "meridian-owner";
const HERITAGE: &str = "heritage=meridian";
/// Re-reads every server this often even without changes (records edited behind our back).
const RESYNC_EVERY: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What one zone holds of Meridian's concern: addresses by name, and the names it owns.
#[derive(Debug, Default, PartialEq)]
struct Observed {
    addresses: BTreeMap<String, (BTreeSet<IpAddr>, u32)>,
    owned: BTreeMap<String, String>,
}

/// Keeps every RFC 2136 provider's zone in line with the NameServices until `stopped`; with
/// `leading`, only while it is true (one replica writes).
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut acks: FleetAcks,
    published: watch::Sender<DnsPublication>,
    mut leading: Option<watch::Receiver<bool>>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_secs(1);
    // What each server was last brought in line with; a provider whose last NameService went
    // away is reconciled once more with nothing, which removes what Meridian owns there.
    let mut applied: BTreeMap<Rfc2136Provider, DnsRecords> = BTreeMap::new();
    let mut resync_all = true;
    let mut states: BTreeMap<Rfc2136Provider, ProviderState> = BTreeMap::new();
    loop {
        if let Some(leading) = &mut leading {
            if !*leading.borrow_and_update() {
                tokio::select! {
                    changed = leading.changed() => if changed.is_err() { return Ok(()) },
                    _ = stopped.changed() => return Ok(()),
                }
                resync_all = true;
                continue;
            }
        }
        let snapshot = snapshots.borrow_and_update().clone();
        let uses_providers = snapshot
            .model
            .name_services
            .values()
            .any(|s| provider_of(s).is_some());
        // Without RFC 2136 NameServices there is nothing to publish: skip the fleet's acks.
        let serving = if uses_providers {
            serving_clusters(&acks.current())
        } else {
            ServingClusters::new()
        };
        let mut desired = rfc2136_records(&snapshot.model, &serving);
        for gone in applied.keys() {
            desired.entry(gone.clone()).or_default();
        }
        let mut failed = false;
        for (provider, records) in &desired {
            if !resync_all && applied.get(provider) == Some(records) {
                continue;
            }
            for problem in &records.problems {
                tracing::warn!(%problem, "NameService not published");
            }
            let result = reconcile(provider, records).await;
            let state = states.entry(provider.clone()).or_default();
            match result {
                Ok(_) if records.names.is_empty() && records.problems.is_empty() => {
                    applied.remove(provider);
                    states.remove(provider);
                }
                Ok(refused) => {
                    applied.insert(provider.clone(), records.clone());
                    *state = ProviderState {
                        last_sync: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                        last_error: None,
                        refused,
                    };
                }
                Err(error) => {
                    failed = true;
                    state.last_error = Some(format!("{error:#}"));
                    tracing::warn!(server = %provider.server, zone = %provider.zone, error = %format!("{error:#}"), retry_in = ?backoff, "RFC 2136 update failed");
                }
            }
        }
        desired.retain(|_, records| !records.names.is_empty() || !records.problems.is_empty());
        published.send_if_modified(|p| {
            let changed = *p.external != desired || p.providers != states;
            if changed {
                p.external = Arc::new(desired);
                p.providers = states.clone();
            }
            changed
        });
        if failed {
            // Nothing else is tried before the backoff ends, however much changes meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.changed() => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            resync_all = true;
            continue;
        }
        backoff = Duration::from_secs(1);
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                resync_all = false;
            }
            _ = acks.changed() => resync_all = false,
            _ = tokio::time::sleep(RESYNC_EVERY) => resync_all = true,
            _ = stopped.changed() => return Ok(()),
        }
    }
}

/// Brings one zone in line: adds and replaces what NameServices want, removes what Meridian
/// owns and nobody wants any more. Returns the names left alone because someone else holds
/// them, with why.
async fn reconcile(
    provider: &Rfc2136Provider,
    records: &DnsRecords,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut client = connect(provider).await?;
    let zone = fqdn(&provider.zone)?;
    let observed = observe(&mut client, &zone).await?;
    let mut message = update_message(&zone);
    let mut changes = 0;
    let mut refused = BTreeMap::new();
    for (name, wanted) in &records.names {
        let owner = wanted.owner.to_string();
        match observed.owned.get(name) {
            Some(holder) if holder != &owner => {
                tracing::warn!(%name, %holder, "name owned by another NameService; left alone");
                refused.insert(
                    name.clone(),
                    format!("{name} is marked as NameService {holder}'s on the server"),
                );
                continue;
            }
            None if observed.addresses.contains_key(name) => {
                tracing::warn!(%name, zone = %provider.zone, "name exists and is not owned by Meridian; left alone");
                refused.insert(
                    name.clone(),
                    format!("{name} already exists on the server and is not Meridian's"),
                );
                continue;
            }
            _ => {}
        }
        let want: BTreeSet<IpAddr> = wanted
            .v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(wanted.v6.iter().map(|a| IpAddr::V6(*a)))
            .collect();
        let have = observed.addresses.get(name);
        let owned = observed.owned.contains_key(name);
        if owned && have == Some(&(want.clone(), wanted.ttl)) {
            continue;
        }
        replace(&mut message, name, wanted, &owner)?;
        changes += 1;
    }
    for name in observed.owned.keys() {
        if !records.names.contains_key(name) {
            remove(&mut message, name)?;
            changes += 1;
        }
    }
    if changes == 0 {
        return Ok(refused);
    }
    let response = client
        .send(message.into())
        .first_answer()
        .await
        .context("sending the update")?;
    if response.response_code != ResponseCode::NoError {
        bail!("the server refused the update: {}", response.response_code);
    }
    tracing::info!(server = %provider.server, zone = %provider.zone, changes, "RFC 2136 update applied");
    Ok(refused)
}

async fn connect(provider: &Rfc2136Provider) -> anyhow::Result<Client<TokioRuntimeProvider>> {
    let address: SocketAddr = tokio::net::lookup_host(&provider.server)
        .await
        .with_context(|| format!("resolving {}", provider.server))?
        .next()
        .with_context(|| format!("{} resolves to nothing", provider.server))?;
    let key = &provider.tsig_key;
    let secret = std::fs::read_to_string(&key.secret_file)
        .with_context(|| format!("reading TSIG secret {}", key.secret_file))?;
    let secret = base64_decode(secret.trim())
        .with_context(|| format!("TSIG secret {} is not base64", key.secret_file))?;
    let algorithm = match key.algorithm.as_deref().unwrap_or("hmac-sha256") {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        other => bail!("TSIG algorithm {other:?} is not supported (hmac-sha256, -sha384, -sha512)"),
    };
    let signer = TSigner::new(secret, algorithm, fqdn(&key.name)?, 300)
        .map_err(|e| anyhow::anyhow!("TSIG key {}: {e}", key.name))?;
    let (stream, handle) = TcpClientStream::new(
        address,
        None,
        Some(Duration::from_secs(5)),
        TokioRuntimeProvider::new(),
    );
    let stream = stream
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let multiplexer = DnsMultiplexer::new(stream, handle)
        .with_timeout(Duration::from_secs(5))
        .with_signer(signer);
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(multiplexer);
    tokio::spawn(background);
    Ok(client)
}

/// Reads the zone (AXFR): every address record, and the names Meridian's TXT records claim.
async fn observe(
    client: &mut Client<TokioRuntimeProvider>,
    zone: &Name,
) -> anyhow::Result<Observed> {
    let mut observed = Observed::default();
    let mut transfer = client.zone_transfer(zone.clone(), None);
    while let Some(response) = transfer.next().await {
        let response = response.context("zone transfer")?;
        for record in &response.answers {
            let name = crate::core::dns::normalize(&record.name.to_ascii());
            match &record.data {
                RData::A(a) => {
                    let entry = observed.addresses.entry(name).or_default();
                    entry.0.insert(IpAddr::V4(a.0));
                    entry.1 = record.ttl;
                }
                RData::AAAA(a) => {
                    let entry = observed.addresses.entry(name).or_default();
                    entry.0.insert(IpAddr::V6(a.0));
                    entry.1 = record.ttl;
                }
                RData::TXT(txt) => {
                    let text: String = txt
                        .txt_data
                        .iter()
                        .map(|d| String::from_utf8_lossy(d).into_owned())
                        .collect();
                    let owned_name = name.strip_prefix(&format!("{OWNER_PREFIX}."));
                    if let (Some(owned_name), Some(owner)) = (
                        owned_name,
                        text.strip_prefix(&format!("{HERITAGE},nameservice=")),
                    ) {
                        observed
                            .owned
                            .insert(owned_name.to_owned(), owner.to_owned());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(observed)
}

fn update_message(zone: &Name) -> Message {
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    let mut query = Query::new();
    query
        .set_name(zone.clone())
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    message.add_zone(query);
    message
}

/// Deletes a whole RRset (RFC 2136 §2.5.2: class ANY, TTL 0, no data).
fn delete_rrset(message: &mut Message, name: &Name, kind: RecordType) {
    let mut record = Record::update0(name.clone(), 0, kind);
    record.dns_class = DNSClass::ANY;
    message.add_update(record);
}

fn replace(
    message: &mut Message,
    name: &str,
    wanted: &NameRecords,
    owner: &str,
) -> anyhow::Result<()> {
    let owner_name = fqdn(&format!("{OWNER_PREFIX}.{name}"))?;
    let name = fqdn(name)?;
    for kind in [RecordType::A, RecordType::AAAA] {
        delete_rrset(message, &name, kind);
    }
    delete_rrset(message, &owner_name, RecordType::TXT);
    for v4 in &wanted.v4 {
        message.add_update(Record::from_rdata(
            name.clone(),
            wanted.ttl,
            RData::A(A(*v4)),
        ));
    }
    for v6 in &wanted.v6 {
        message.add_update(Record::from_rdata(
            name.clone(),
            wanted.ttl,
            RData::AAAA(AAAA(*v6)),
        ));
    }
    message.add_update(Record::from_rdata(
        owner_name,
        wanted.ttl,
        RData::TXT(TXT::new(vec![format!("{HERITAGE},nameservice={owner}")])),
    ));
    Ok(())
}

fn remove(message: &mut Message, name: &str) -> anyhow::Result<()> {
    let owner_name = fqdn(&format!("{OWNER_PREFIX}.{name}"))?;
    let name = fqdn(name)?;
    for kind in [RecordType::A, RecordType::AAAA] {
        delete_rrset(message, &name, kind);
    }
    delete_rrset(message, &owner_name, RecordType::TXT);
    Ok(())
}

fn fqdn(name: &str) -> anyhow::Result<Name> {
    let name = format!("{}.", name.trim_end_matches('.'));
    Name::from_str(&name).with_context(|| format!("{name:?} is not a DNS name"))
}

fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
}
