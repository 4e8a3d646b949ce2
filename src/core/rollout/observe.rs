//! What the gateways of each cluster report about an AccessPoint, as the engine reads it.

use std::collections::BTreeMap;

use crate::core::model::ObjectKey;
use crate::core::refs::ClusterRefs;
use crate::core::status::GatewayAck;

use super::Observation;

/// Per cluster: whether every proxy serving `key` there acknowledged `generation` (the
/// current spec's), and the NACK of any that did not. A cluster where no proxy serves the
/// AccessPoint has nothing to protect and counts as programmed.
pub fn observations(
    key: &ObjectKey,
    generation: i64,
    clusters: &[String],
    refs: &BTreeMap<String, ClusterRefs<'_>>,
    proxies: &[GatewayAck],
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
            let observation = Observation {
                programmed: behind.is_empty(),
                nack,
                unhealthy: None,
            };
            (cluster.clone(), observation)
        })
        .collect()
}
