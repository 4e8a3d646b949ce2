//! NameService status: whether the name is published, with which addresses, and how its
//! provider's server took the last update.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{normalize, provider_of, DnsRecords};
use crate::api::name_service::{NameServiceStatus, ProviderStatus, Rfc2136Provider};
use crate::api::NameService;
use crate::core::model::ObjectKey;
use crate::core::status::Draft;

pub const PUBLISHED: &str = "Published";

/// How the last attempt to bring one RFC 2136 server in line went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderState {
    /// When the server last held what Meridian wanted there.
    pub last_sync: Option<Time>,
    /// Why the last attempt failed; `None` when it succeeded.
    pub last_error: Option<String>,
    /// Names left alone because the server holds them for someone else, with why.
    pub refused: BTreeMap<String, String>,
}

/// What is published: the embedded server's records (absent when none runs), the records each
/// RFC 2136 server is given, and how each server is doing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DnsPublication {
    /// The zones the embedded server is authoritative for.
    pub zones: Vec<String>,
    pub embedded: Option<Arc<DnsRecords>>,
    pub external: Arc<BTreeMap<Rfc2136Provider, DnsRecords>>,
    pub providers: BTreeMap<Rfc2136Provider, ProviderState>,
}

/// The status of NameService `key`; condition times carry over from `old`.
pub fn name_service_status(
    publication: &DnsPublication,
    key: &ObjectKey,
    service: &NameService,
    old: Option<&NameServiceStatus>,
    now: &Time,
) -> NameServiceStatus {
    let provider = provider_of(service);
    let records = match provider {
        Some(provider) => publication.external.get(provider),
        None => publication.embedded.as_deref(),
    };
    let name = normalize(&service.spec.fqdn);
    let owned = records
        .and_then(|r| r.names.get(&name))
        .filter(|n| &n.owner == key);
    let addresses: Vec<String> = owned
        .map(|n| {
            let v4 = n.v4.iter().map(ToString::to_string);
            v4.chain(n.v6.iter().map(ToString::to_string)).collect()
        })
        .unwrap_or_default();
    let problems: Vec<_> = records
        .map(|r| {
            r.problems
                .iter()
                .filter(|p| &p.name_service == key)
                .collect()
        })
        .unwrap_or_default();
    let state = provider.and_then(|p| publication.providers.get(p));
    let draft = if let Some(first) = problems.first() {
        let message = problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect::<Vec<_>>()
            .join("; ");
        Draft::new(PUBLISHED, false, first.reason, message)
    } else if records.is_none() && provider.is_none() {
        Draft::new(
            PUBLISHED,
            false,
            "NoServer",
            "no embedded DNS server runs (--dns-addr) and no provider is set".to_owned(),
        )
    } else if addresses.is_empty() {
        Draft::new(
            PUBLISHED,
            false,
            "NoAddresses",
            "no address to publish yet (the AccessPoint has no VIP)".to_owned(),
        )
    } else {
        match (provider, state) {
            (None, _) => Draft::new(
                PUBLISHED,
                true,
                "Published",
                "answered by the embedded DNS server".to_owned(),
            ),
            (Some(p), None) => Draft::new(
                PUBLISHED,
                false,
                "Pending",
                format!("not yet sent to {}", p.server),
            ),
            (
                Some(p),
                Some(ProviderState {
                    last_error: Some(error),
                    ..
                }),
            ) => Draft::new(
                PUBLISHED,
                false,
                "ProviderFailing",
                format!("{}: {error}", p.server),
            ),
            (Some(_), Some(state)) if state.refused.contains_key(&name) => {
                Draft::new(PUBLISHED, false, "NameTaken", state.refused[&name].clone())
            }
            (Some(p), Some(_)) => Draft::new(
                PUBLISHED,
                true,
                "Published",
                format!("published to {} in zone {}", p.server, p.zone),
            ),
        }
    };
    let old_conditions = old.map(|o| o.conditions.as_slice()).unwrap_or_default();
    NameServiceStatus {
        conditions: vec![draft.into_condition(service.metadata.generation, old_conditions, now)],
        addresses,
        provider: provider.map(|p| ProviderStatus {
            server: p.server.clone(),
            zone: p.zone.clone(),
            synced: state.is_some_and(|s| s.last_error.is_none() && s.last_sync.is_some()),
            last_sync_time: state.and_then(|s| s.last_sync.clone()),
            last_error: state.and_then(|s| s.last_error.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::dns::{records, rfc2136_records, ServingClusters};
    use crate::core::test_support::model_of;

    const FLEET: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: web, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {fqdn: web.example.test, target: {addresses: ["203.0.113.7", "2001:db8::7"]}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: copy, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {fqdn: web.example.test, target: {addresses: ["203.0.113.8"]}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: orphan, namespace: shop}
spec: {fqdn: orphan.example.test, target: {accessPoint: gone}}
---
apiVersion: meridian.dev/v1alpha1
kind: NameService
metadata: {name: remote, namespace: shop}
spec:
  fqdn: remote.example.net
  target: {addresses: ["203.0.113.9"]}
  provider: {rfc2136: {server: "127.0.0.1:5353", zone: example.net, tsigKey: {name: k, secretFile: /k}}}
"#;

    fn status_of(publication: &DnsPublication, name: &str) -> NameServiceStatus {
        let model = model_of(FLEET, "shop");
        let key = ObjectKey::new("shop", name);
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        name_service_status(publication, &key, &model.name_services[&key], None, &now)
    }

    fn published() -> DnsPublication {
        let model = model_of(FLEET, "shop");
        let serving = ServingClusters::new();
        DnsPublication {
            zones: vec!["example.test".to_owned()],
            embedded: Some(Arc::new(records(
                &model,
                &serving,
                &["example.test".to_owned()],
            ))),
            external: Arc::new(rfc2136_records(&model, &serving)),
            providers: BTreeMap::new(),
        }
    }

    fn condition(status: &NameServiceStatus) -> (&str, &str, &str) {
        let c = &status.conditions[0];
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn embedded_names_report_what_they_answer_and_why_not() {
        let publication = published();
        let web = status_of(&publication, "web");
        assert_eq!(web.addresses, ["203.0.113.7", "2001:db8::7"]);
        assert_eq!(
            condition(&web),
            ("True", "Published", "answered by the embedded DNS server")
        );
        assert_eq!(
            condition(&status_of(&publication, "copy")),
            (
                "False",
                "NameInUse",
                "spec.fqdn: web.example.test is already served by NameService shop/web"
            )
        );
        assert_eq!(
            condition(&status_of(&publication, "orphan")).1,
            "TargetNotFound"
        );
        let no_server = DnsPublication {
            embedded: None,
            ..publication
        };
        assert_eq!(condition(&status_of(&no_server, "web")).1, "NoServer");
    }

    #[test]
    fn provider_names_follow_their_server() {
        let mut publication = published();
        let provider = publication.external.keys().next().unwrap().clone();
        let remote = status_of(&publication, "remote");
        assert_eq!(condition(&remote).1, "Pending");
        assert!(!remote.provider.as_ref().unwrap().synced);

        let synced_at = Time(k8s_openapi::jiff::Timestamp::from_second(900).unwrap());
        publication.providers.insert(
            provider.clone(),
            ProviderState {
                last_sync: Some(synced_at.clone()),
                last_error: None,
                refused: BTreeMap::new(),
            },
        );
        let remote = status_of(&publication, "remote");
        assert_eq!(
            condition(&remote),
            (
                "True",
                "Published",
                "published to 127.0.0.1:5353 in zone example.net"
            )
        );
        assert_eq!(remote.addresses, ["203.0.113.9"]);

        publication.providers.insert(
            provider,
            ProviderState {
                last_sync: Some(synced_at.clone()),
                last_error: Some("connection refused".to_owned()),
                refused: BTreeMap::new(),
            },
        );
        let remote = status_of(&publication, "remote");
        assert_eq!(
            condition(&remote),
            (
                "False",
                "ProviderFailing",
                "127.0.0.1:5353: connection refused"
            )
        );
        let provider = remote.provider.unwrap();
        assert!(!provider.synced);
        assert_eq!(provider.last_sync_time, Some(synced_at));
    }
}
