//! What the gateways of each cluster report about an AccessPoint, as the engine reads it.

use std::collections::BTreeMap;

use crate::core::model::ObjectKey;
use crate::core::observed::GatewayAck;
use crate::core::refs::ClusterRefs;
use crate::core::status::{MemberWrite, MemberWrites};

use super::health::{verdict, HealthCheck};
use super::Observation;

/// How much of the proxies' reported traffic counts for health: the check, and the window.
#[derive(Clone, Copy, Debug)]
pub struct HealthWindow<'a> {
    pub check: &'a HealthCheck,
    /// When the current stage started; earlier traffic is the old revision's.
    pub since_ms: u64,
    pub now_ms: u64,
}

/// Per cluster: whether every proxy serving `key` there acknowledged `generation` (the
/// current spec's), the NACK of any that did not, and (with `health`) whether the traffic
/// those proxies sent to the AccessPoint's destinations failed too often. A cluster where no
/// proxy serves the AccessPoint has nothing to protect and counts as programmed, unless the
/// AccessPoint's Service could not be written into it (`writes`): that holds it.
pub fn observations(
    key: &ObjectKey,
    generation: i64,
    clusters: &[String],
    refs: &BTreeMap<String, ClusterRefs<'_>>,
    proxies: &[GatewayAck],
    writes: &MemberWrites,
    health: Option<HealthWindow<'_>>,
) -> BTreeMap<String, Observation> {
    clusters
        .iter()
        .map(|cluster| {
            let gateways = refs
                .get(cluster)
                .map(|r| r.bound_gateways(key))
                .unwrap_or_default();
            let serving: Vec<&GatewayAck> = proxies
                .iter()
                .filter(|p| &p.cluster == cluster && gateways.contains(&p.gateway))
                .collect();
            let behind: Vec<&&GatewayAck> = serving
                .iter()
                .filter(|p| p.acked.get(key) != Some(&generation))
                .collect();
            let nack = behind.iter().find_map(|p| {
                let why = p.nack.as_ref()?;
                Some(format!("proxy {}: {why}", p.node_id))
            });
            let unhealthy = health.and_then(|window| {
                let hosts = refs.get(cluster)?.destination_hosts(key);
                verdict(
                    window.check,
                    serving.iter().flat_map(|p| &p.load),
                    &hosts,
                    window.since_ms,
                    window.now_ms,
                )
            });
            let applied = writes
                .get(&(key.clone(), cluster.clone()))
                .map(|write| match write {
                    MemberWrite::Applied => Ok(()),
                    MemberWrite::Failed(error) => {
                        Err(format!("member Service write failed: {error}"))
                    }
                });
            let observation = Observation {
                programmed: behind.is_empty() && !matches!(applied, Some(Err(_))),
                nack,
                unhealthy,
                applied,
            };
            (cluster.clone(), observation)
        })
        .collect()
}
