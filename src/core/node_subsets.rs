//! Stable subsets of nodes for NodePort backends (issue 24): an edge tier reaching a Service
//! through its NodePort sends to k of the cluster's nodes, not all of them (health checks from
//! every edge server to every node are what the SoundCloud design could not afford).
//!
//! Each Service's subset is chosen by rendezvous (highest-random-weight) hashing: every node
//! gets a score from the hash of (Service, node), and the k highest scores win. So the subset
//! depends only on the Service and the set of nodes — not on their order, nor on when it is
//! computed — and a node joining or leaving changes a Service's subset by at most one node.
//! Only nodes that are Ready and schedulable are candidates.
//!
//! A Service opts in with `meridian.dev/destination: node-ports` ([`node_port_mode`]); it must
//! be of type NodePort, and when it comes from an AccessPoint template every port must name its
//! `nodePort` (Meridian creates it in every member cluster, so the edge needs one number
//! everywhere).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceSpec;
use xxhash_rust::xxh64::xxh64;

/// The annotation on a Service that sets its subset size.
pub const SUBSET_SIZE_ANNOTATION: &str = "meridian.dev/node-subset-size";

/// The Service annotation choosing how gateways reach it, and its one value besides the
/// default (the Service's endpoints): through node ports.
pub const DESTINATION_ANNOTATION: &str = "meridian.dev/destination";
pub const NODE_PORTS: &str = "node-ports";

/// How a Service in node-port mode is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePortMode {
    /// How many nodes of each cluster serve it.
    pub subset_size: usize,
    /// `externalTrafficPolicy: Local`: only nodes running one of its ready endpoints answer
    /// on the node port, so only they are candidates.
    pub local_only: bool,
}

/// A field of a Service that makes node-port mode impossible, relative to the Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePortFieldError {
    pub field: String,
    pub message: String,
}

/// Whether `spec` (with `annotations`) is reached through node ports, and how.
/// `explicit_ports`: every port must name its `nodePort` (templates; a Service read from
/// Kubernetes has them allocated).
pub fn node_port_mode(
    annotations: &BTreeMap<String, String>,
    spec: &ServiceSpec,
    explicit_ports: bool,
) -> Result<Option<NodePortMode>, Vec<NodePortFieldError>> {
    let mut errors = Vec::new();
    let mut error =
        |field: String, message: String| errors.push(NodePortFieldError { field, message });
    match annotations.get(DESTINATION_ANNOTATION).map(|v| v.trim()) {
        None => {
            if annotations.contains_key(SUBSET_SIZE_ANNOTATION) {
                error(
                    format!("metadata.annotations[{SUBSET_SIZE_ANNOTATION}]"),
                    format!("only applies with {DESTINATION_ANNOTATION}: {NODE_PORTS}"),
                );
                return Err(errors);
            }
            return Ok(None);
        }
        Some(NODE_PORTS) => {}
        Some(other) => {
            error(
                format!("metadata.annotations[{DESTINATION_ANNOTATION}]"),
                format!("{other:?} is not a destination; the one there is: {NODE_PORTS:?}"),
            );
            return Err(errors);
        }
    }
    if spec.type_.as_deref() != Some("NodePort") {
        error(
            "spec.type".to_owned(),
            format!(
                "{DESTINATION_ANNOTATION}: {NODE_PORTS} needs type NodePort, not {}",
                spec.type_.as_deref().unwrap_or("ClusterIP (the default)")
            ),
        );
    }
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        match port.node_port {
            Some(n) if !(1..=65535).contains(&n) => error(
                format!("spec.ports[{i}].nodePort"),
                format!("{n} is not a port (1-65535)"),
            ),
            None => error(
                format!("spec.ports[{i}].nodePort"),
                if explicit_ports {
                    "must be set: the edge reaches this Service on the same node port in every cluster".to_owned()
                } else {
                    "has no node port allocated".to_owned()
                },
            ),
            Some(_) => {}
        }
    }
    let subset_size = subset_size(annotations, DEFAULT_SUBSET_SIZE).map_err(|e| {
        vec![NodePortFieldError {
            field: format!("metadata.annotations[{SUBSET_SIZE_ANNOTATION}]"),
            message: e.to_string(),
        }]
    });
    let subset_size = match subset_size {
        Ok(k) => k,
        Err(mut more) => {
            errors.append(&mut more);
            0
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(NodePortMode {
        subset_size,
        local_only: spec.external_traffic_policy.as_deref() == Some("Local"),
    }))
}

/// The subset size of a Service that sets none.
pub const DEFAULT_SUBSET_SIZE: usize = 3;

/// Every node scores alike on every replica and after restarts: a fixed seed.
const SEED: u64 = 0x6e6f_6465_7375_6273;

/// A node as subsets see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub ready: bool,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubsetError {
    #[error(
        "annotation {SUBSET_SIZE_ANNOTATION}: {value:?} is not a whole number of nodes above 0"
    )]
    BadSize { value: String },
}

/// The subset size a Service asks for with its annotations, or the default.
pub fn subset_size(
    annotations: &BTreeMap<String, String>,
    default: usize,
) -> Result<usize, SubsetError> {
    match annotations.get(SUBSET_SIZE_ANNOTATION) {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|k| *k > 0)
            .ok_or_else(|| SubsetError::BadSize {
                value: value.clone(),
            }),
    }
}

/// A node's score for a Service (`namespace/name`).
fn score(service: &str, node: &str) -> u64 {
    let mut key = Vec::with_capacity(service.len() + node.len() + 1);
    key.extend_from_slice(service.as_bytes());
    key.push(0);
    key.extend_from_slice(node.as_bytes());
    xxh64(&key, SEED)
}

/// The names of the (at most) `k` nodes that serve `service`, highest score first.
pub fn subset<'a>(service: &str, nodes: &'a [Node], k: usize) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = nodes
        .iter()
        .filter(|n| n.ready && !n.unschedulable)
        .map(|n| (score(service, &n.name), n.name.as_str()))
        .collect();
    // Highest score first; equal scores (a hash collision) by name, so order never matters.
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(k).map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn nodes(names: impl IntoIterator<Item = String>) -> Vec<Node> {
        names
            .into_iter()
            .map(|name| Node {
                name,
                ready: true,
                unschedulable: false,
            })
            .collect()
    }

    fn set<'a>(members: &[&'a str]) -> BTreeSet<&'a str> {
        members.iter().copied().collect()
    }

    #[test]
    fn only_ready_schedulable_nodes_are_chosen() {
        let mut all = nodes((0..6).map(|i| format!("node-{i}")));
        all[0].ready = false;
        all[1].unschedulable = true;
        let chosen = subset("shop/web", &all, 6);
        assert_eq!(chosen.len(), 4);
        assert!(!chosen.contains(&"node-0") && !chosen.contains(&"node-1"));
    }

    #[test]
    fn the_size_comes_from_the_annotation_or_the_default() {
        let mut annotations = BTreeMap::new();
        assert_eq!(subset_size(&annotations, 3), Ok(3));
        annotations.insert(SUBSET_SIZE_ANNOTATION.to_owned(), " 5 ".to_owned());
        assert_eq!(subset_size(&annotations, 3), Ok(5));
        for bad in ["0", "-2", "three", ""] {
            annotations.insert(SUBSET_SIZE_ANNOTATION.to_owned(), bad.to_owned());
            let error = subset_size(&annotations, 3).unwrap_err();
            assert!(
                error.to_string().contains(SUBSET_SIZE_ANNOTATION),
                "{error}"
            );
        }
    }

    fn service(yaml: &str) -> (BTreeMap<String, String>, ServiceSpec) {
        let service: k8s_openapi::api::core::v1::Service = serde_yaml::from_str(yaml).unwrap();
        (
            service.metadata.annotations.unwrap_or_default(),
            service.spec.unwrap_or_default(),
        )
    }

    #[test]
    fn node_port_mode_is_opted_into_and_checked() {
        let (a, s) = service("metadata: {name: web}\nspec: {ports: [{port: 80}]}");
        assert_eq!(node_port_mode(&a, &s, true), Ok(None));
        let (a, s) = service(
            "metadata: {name: web, annotations: {meridian.dev/destination: node-ports, meridian.dev/node-subset-size: '2'}}
spec: {type: NodePort, externalTrafficPolicy: Local, ports: [{port: 80, nodePort: 30080}]}",
        );
        assert_eq!(
            node_port_mode(&a, &s, true),
            Ok(Some(NodePortMode {
                subset_size: 2,
                local_only: true
            }))
        );
        let (a, s) = service(
            "metadata: {name: web, annotations: {meridian.dev/destination: node-ports, meridian.dev/node-subset-size: none}}
spec: {ports: [{port: 80, nodePort: 30080}, {port: 81}]}",
        );
        let fields: Vec<String> = node_port_mode(&a, &s, true)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.type",
                "spec.ports[1].nodePort",
                "metadata.annotations[meridian.dev/node-subset-size]"
            ]
        );
        let (a, s) =
            service("metadata: {name: web, annotations: {meridian.dev/destination: nodes}}");
        let errors = node_port_mode(&a, &s, false).unwrap_err();
        assert!(
            errors[0].message.contains("\"nodes\" is not a destination"),
            "{errors:?}"
        );
        let (a, s) =
            service("metadata: {name: web, annotations: {meridian.dev/node-subset-size: '2'}}");
        assert!(node_port_mode(&a, &s, false).is_err());
    }

    #[test]
    fn subsets_spread_evenly_over_the_nodes() {
        let all = nodes((0..20).map(|i| format!("node-{i}")));
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        let (services, k) = (2_000, 3);
        for s in 0..services {
            for node in subset(&format!("ns/svc-{s}"), &all, k) {
                *load.entry(node).or_default() += 1;
            }
        }
        let mean = (services * k) as f64 / all.len() as f64;
        for (node, count) in &load {
            let ratio = *count as f64 / mean;
            assert!(
                (0.85..1.15).contains(&ratio),
                "{node}: {count} vs mean {mean}"
            );
        }
        assert_eq!(load.len(), all.len());
    }

    proptest! {
        /// The same Service and nodes give the same subset whatever the order of the nodes.
        #[test]
        fn order_does_not_matter(
            count in 1usize..30,
            k in 1usize..6,
            rotation in 0usize..30,
            service in "[a-z]{1,8}/[a-z]{1,8}",
        ) {
            let all = nodes((0..count).map(|i| format!("node-{i}")));
            let mut shuffled = all.clone();
            shuffled.rotate_left(rotation % count);
            shuffled.reverse();
            prop_assert_eq!(set(&subset(&service, &all, k)), set(&subset(&service, &shuffled, k)));
            prop_assert_eq!(subset(&service, &all, k).len(), k.min(count));
        }

        /// A node joining or leaving changes each subset by at most one member.
        #[test]
        fn one_node_in_or_out_changes_at_most_one_member(
            count in 2usize..30,
            k in 1usize..6,
            leaving in 0usize..30,
            service in "[a-z]{1,8}/[a-z]{1,8}",
        ) {
            let all = nodes((0..count).map(|i| format!("node-{i}")));
            let before = set(&subset(&service, &all, k));
            let mut fewer = all.clone();
            fewer.remove(leaving % count);
            let after = set(&subset(&service, &fewer, k));
            prop_assert!(before.difference(&after).count() <= 1);
            prop_assert!(after.difference(&before).count() <= 1);
            let mut more = all.clone();
            more.push(Node { name: "newcomer".into(), ready: true, unschedulable: false });
            let grown = set(&subset(&service, &more, k));
            prop_assert!(before.difference(&grown).count() <= 1);
            prop_assert!(grown.difference(&before).count() <= 1);
        }
    }
}
