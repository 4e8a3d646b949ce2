//! `meridian bench-translate`: a synthetic fleet, and how long Meridian takes to turn it into
//! Envoy configuration, how long one edit takes, and how large each gateway's configuration is.
//!
//! The fleet: `access_points` AccessPoints spread over `namespaces` namespaces, each with a
//! Service (backed by an EndpointSlice of `endpoints` addresses), a VirtualService with two
//! routes, and a DestinationRule; VirtualServices bind to one of `gateways` shared Gateways.
//! With one gateway every route lands on it (the unscoped worst case); with more, each gateway
//! holds only its share. An edit goes the server's way: index, snapshot, and the translator,
//! which re-translates only the gateways the edit can reach.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::control_plane::index::Index;
use crate::control_plane::xds::translator::Translator;
use crate::core::expand::cluster_view;
use crate::core::model::{InputObject, ObjectKey};
use crate::core::refs::ClusterRefs;
use crate::core::resources::ResourceType;
use crate::core::status::{access_point_keys, access_point_status, MemberWrites, StatusInput};
use crate::core::translate::{translate, GatewayIdentity, NodeRole};

#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub access_points: usize,
    pub namespaces: usize,
    pub gateways: usize,
    pub endpoints: usize,
}

/// The synthetic fleet's objects.
pub fn fleet(options: &FleetOptions) -> anyhow::Result<Vec<InputObject>> {
    let mut objects = Vec::new();
    for g in 0..options.gateways {
        objects.push(InputObject::AccessPoint(serde_json::from_value(json!({
            "apiVersion": "meridian.dev/v1alpha1", "kind": "AccessPoint",
            "metadata": {"name": format!("edge-{g}"), "namespace": "edge"},
            "spec": {"template": {"gateways": [{
                "metadata": {"name": format!("gw-{g}")},
                "spec": {"servers": [{"port": {"number": 8080, "protocol": "HTTP"}, "hosts": ["*/*"]}]}
            }]}}
        }))?));
    }
    for i in 0..options.access_points {
        let namespace = format!("ns-{}", i % options.namespaces.max(1));
        let name = format!("app-{i}");
        let gateway = format!("edge/gw-{}", i % options.gateways.max(1));
        objects.push(InputObject::AccessPoint(serde_json::from_value(json!({
            "apiVersion": "meridian.dev/v1alpha1", "kind": "AccessPoint",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {"template": {
                "service": {"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80}]}},
                "virtualServices": [{"metadata": {"name": name}, "spec": {
                    "hosts": [format!("{name}.example.test")],
                    "gateways": [gateway],
                    "http": [
                        {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": name}}], "timeout": "2s"},
                        {"route": [{"destination": {"host": name}}]}
                    ]
                }}],
                "destinationRules": [{"metadata": {"name": name}, "spec": {
                    "host": name,
                    "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 5}}
                }}]
            }}
        }))?));
        let addresses: Vec<serde_json::Value> = (0..options.endpoints)
            .map(|e| json!({"addresses": [format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, (i + e) % 256)]}))
            .collect();
        objects.push(InputObject::EndpointSlice(serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": addresses,
            "ports": [{"name": "http", "port": 8080}]
        }))?));
    }
    Ok(objects)
}

/// What `bench translate` measured.
#[derive(Debug)]
pub struct TranslateReport {
    pub objects: usize,
    pub load: Duration,
    pub full_translation: Duration,
    pub largest_gateway_bytes: usize,
    pub largest_gateway_resources: usize,
    pub edit: Duration,
    /// Computing every AccessPoint's status once (the status writer's round).
    pub status_round: Duration,
    pub rss_bytes: Option<u64>,
}

pub fn translate_bench(options: &FleetOptions) -> anyhow::Result<TranslateReport> {
    let objects = fleet(options)?;
    let count = objects.len();
    let (mut index, snapshots) = Index::new();
    let started = Instant::now();
    for object in objects {
        index
            .apply(object)
            .map_err(|e| anyhow::anyhow!("synthetic object rejected: {e:?}"))?;
    }
    index.publish();
    let load = started.elapsed();

    let identities: Vec<GatewayIdentity> = (0..options.gateways)
        .map(|g| GatewayIdentity {
            gateway: ObjectKey::new("edge", format!("gw-{g}")),
            cluster: crate::api::LOCAL_CLUSTER.to_owned(),
            zone: String::new(),
            role: NodeRole::Gateway,
            xds: crate::core::translate::XdsTransport::Ads,
        })
        .collect();
    let snapshot = snapshots.borrow().clone();
    let started = Instant::now();
    let view = cluster_view(&snapshot.model, crate::api::LOCAL_CLUSTER);
    let translations: Vec<_> = identities.iter().map(|id| translate(&view, id)).collect();
    let full_translation = started.elapsed();
    drop(view);
    // The server's path for edits: every gateway connected, translated by the translator.
    let translator = Translator::default();
    let _connected: Vec<_> = identities
        .iter()
        .map(|id| translator.subscribe(id))
        .collect();
    translator.translate(&snapshot, &identities[0]);
    let (largest_gateway_bytes, largest_gateway_resources) = translations
        .iter()
        .map(|t| {
            let bytes: usize = ResourceType::ALL
                .iter()
                .flat_map(|kind| t.config.resources(*kind).values())
                .map(|r| r.body.value.len())
                .sum();
            (bytes, t.config.len())
        })
        .max()
        .unwrap_or_default();

    // One edit: a route change in one AccessPoint, through the index to that gateway's config.
    // The median of several, each a new timeout.
    let original = snapshot
        .model
        .access_points
        .values()
        .find(|ap| ap.metadata.name.as_deref() == Some("app-0"))
        .cloned()
        .context("app-0 missing")?;
    let mut edits = Vec::new();
    for round in 0..EDITS {
        let mut edited = original.clone();
        edited.spec.template.virtual_services[0].spec.http[0].timeout =
            Some(format!("{}s", 3 + round));
        edited.metadata.generation = Some(2 + round as i64);
        let started = Instant::now();
        index
            .apply(InputObject::AccessPoint(edited))
            .map_err(|e| anyhow::anyhow!("edit rejected: {e:?}"))?;
        index.publish();
        let snapshot = snapshots.borrow().clone();
        let _ = translator.translate(&snapshot, &identities[0]);
        edits.push(started.elapsed());
    }
    edits.sort();
    let edit = edits[edits.len() / 2];
    let snapshot = snapshots.borrow().clone();

    let started = Instant::now();
    let published = snapshot.published();
    let clusters = ClusterRefs::all(&snapshot.model);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let writes = MemberWrites::new();
    for key in access_point_keys(published) {
        let input = StatusInput {
            key: &key,
            published,
            clusters: &clusters,
            proxies: &[],
            member_writes: &writes,
            rollout: None,
        };
        let _ = access_point_status(&input, None, &now);
    }
    let status_round = started.elapsed();

    Ok(TranslateReport {
        objects: count,
        load,
        full_translation,
        largest_gateway_bytes,
        largest_gateway_resources,
        edit,
        status_round,
        rss_bytes: rss_bytes(),
    })
}

/// One-AccessPoint edits measured; the median is reported.
const EDITS: usize = 9;

/// This process's resident set size (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn render(options: &FleetOptions, report: &TranslateReport) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "fleet: {} AccessPoints, {} namespaces, {} gateways, {} endpoints each ({} objects)\n\
         load into the index:        {:>10.1} ms\n\
         full translation (all gw):  {:>10.1} ms\n\
         one edit → its gateway:     {:>10.1} ms (median of {EDITS})\n\
         status of every AccessPoint:{:>10.1} ms\n\
         largest gateway config:     {:>10.2} MiB in {} resources\n\
         RSS:                        {:>10.1} MiB\n",
        options.access_points,
        options.namespaces,
        options.gateways,
        options.endpoints,
        report.objects,
        report.load.as_secs_f64() * 1e3,
        report.full_translation.as_secs_f64() * 1e3,
        report.edit.as_secs_f64() * 1e3,
        report.status_round.as_secs_f64() * 1e3,
        mib(report.largest_gateway_bytes as u64),
        report.largest_gateway_resources,
        report.rss_bytes.map_or(0.0, mib),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_translates_and_scopes_by_gateway() {
        let options = FleetOptions {
            access_points: 40,
            namespaces: 4,
            gateways: 4,
            endpoints: 2,
        };
        let report = translate_bench(&options).unwrap();
        assert_eq!(report.objects, 4 + 40 * 2);
        // Each gateway holds a quarter of the fleet: per AccessPoint one cluster and its
        // endpoints, plus the gateway's listener and route configuration.
        assert_eq!(report.largest_gateway_resources, 10 * 2 + 2);
        assert!(report.largest_gateway_bytes > 0);
    }
}
