//! What `meridian haproxy` computes from the xDS it receives, without I/O: the HAProxy
//! configuration of a gateway (one frontend per listener, one backend per cluster) and the
//! Runtime API commands that follow endpoint changes without a reload.
//!
//! Listeners, clusters, endpoints and secrets compile as for `meridian proxy`
//! (`ListenerPlan`, `ClusterPlan`, `Assignment`, `SecretPlan`); route configurations compile
//! to [`routes::RouteRules`], refusing what HAProxy cannot express. The configuration is then
//! one function of those plans and each backend's slot counts ([`render`]): the same inputs
//! give the same text, so an unchanged text means no reload.

mod quote;
pub mod render;
pub mod routes;
pub mod servers;

use xxhash_rust::xxh64::xxh64;

/// An HAProxy section name for a listener or cluster: letters, digits, `-_.:`; anything else
/// becomes `_`, and a name that had to change gets a hash of the original so two names never
/// meet.
pub fn section_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == name && !clean.is_empty() {
        clean
    } else {
        format!("{clean}_{:08x}", xxh64(name.as_bytes(), 0) as u32)
    }
}

/// A file name for a secret's PEM: [`section_name`] of the SDS name.
pub fn pem_file(secret: &str) -> String {
    format!("{}.pem", section_name(secret))
}

/// The `namespace/name` of the Kubernetes Service a cluster reaches
/// (`outbound|80|v1|web.shop.svc.cluster.local`): what the node agent is asked about.
pub fn service_of_cluster(cluster: &str) -> Option<String> {
    let host = cluster.split('|').nth(3)?;
    let (name, rest) = host.split_once('.')?;
    let (namespace, suffix) = rest.split_once('.')?;
    suffix
        .starts_with("svc.")
        .then(|| format!("{namespace}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_names_are_haproxy_names_and_stay_distinct() {
        assert_eq!(section_name("0.0.0.0_8080"), "0.0.0.0_8080");
        let a = section_name("outbound|80||web.shop.svc.cluster.local");
        let b = section_name("outbound_80__web.shop.svc.cluster.local");
        assert!(
            a.starts_with("outbound_80__web.shop.svc.cluster.local_"),
            "{a}"
        );
        assert_ne!(a, b);
        assert_eq!(
            service_of_cluster("outbound|80|v1|web.shop.svc.cluster.local").as_deref(),
            Some("shop/web")
        );
        assert_eq!(service_of_cluster("outbound|443||api.example.com"), None);
    }
}

#[cfg(test)]
mod render_tests;
