//! References an AccessPoint makes that must resolve in each cluster it is placed on:
//! VirtualService `gateways` must name a Gateway in force there, and route destinations must
//! name a known Service or ServiceEntry port.
//!
//! An unresolved Gateway means that part of the AccessPoint is not in force at all (reported as
//! `Accepted=False`); an unresolved destination is served as a 503 (`ResolvedRefs=False`), the
//! way Istio serves it.

use std::collections::{BTreeMap, BTreeSet};

use super::binding::{bound_domains, gateway_ports, host_owners, serves, GatewayPort};
use super::expand::ServiceRegistry;
use super::expand::{cluster_view, ClusterView, Expanded};
use super::hosts::resolve_host;
use super::model::tls::TlsServer;
use super::model::{Model, ObjectKey};
use crate::api::istio::{Destination, VirtualServiceSpec};

/// Istio's reserved gateway name for sidecars; a gateway control plane has none to bind.
const MESH_GATEWAY: &str = "mesh";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefKind {
    /// `virtualServices[].spec.gateways[]`.
    Gateway,
    /// `virtualServices[].spec.hosts[]` already served on that gateway port by an older
    /// AccessPoint.
    HostConflict,
    /// `virtualServices[].spec.http[].route[].destination`.
    Backend,
    /// `gateways[].spec.servers[].tls.credentialName`: a Secret missing or unusable.
    Credential,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnresolvedRef {
    pub kind: RefKind,
    pub cluster: String,
    /// Field path inside the AccessPoint.
    pub path: String,
    pub message: String,
}

/// A gateway port and which AccessPoint owns each host on it.
type PortOwners = (GatewayPort, BTreeMap<String, ObjectKey>);

/// One cluster's view and service registry, built once and shared by the checks of every
/// AccessPoint placed there.
pub struct ClusterRefs<'m> {
    pub view: ClusterView<'m>,
    registry: ServiceRegistry<'m>,
    gateways: BTreeSet<ObjectKey>,
    /// Each gateway's ports, with the owner of every host on them.
    ports: BTreeMap<ObjectKey, Vec<PortOwners>>,
    /// Indexes into `view.virtual_services` by originating AccessPoint.
    by_origin: BTreeMap<ObjectKey, Vec<usize>>,
}

impl<'m> ClusterRefs<'m> {
    pub fn new(model: &'m Model, cluster: &str) -> ClusterRefs<'m> {
        let view = cluster_view(model, cluster);
        let registry = ServiceRegistry::new(&view);
        let gateways: BTreeSet<ObjectKey> = view.gateways.iter().map(|g| g.key.clone()).collect();
        let ports = gateways
            .iter()
            .map(|g| {
                let ports = gateway_ports(&view, g)
                    .into_iter()
                    .map(|port| {
                        let owners = host_owners(&view, &port)
                            .into_iter()
                            .map(|(host, owner)| (host, owner.clone()))
                            .collect();
                        (port, owners)
                    })
                    .collect();
                (g.clone(), ports)
            })
            .collect();
        let mut by_origin: BTreeMap<ObjectKey, Vec<usize>> = BTreeMap::new();
        for (i, vs) in view.virtual_services.iter().enumerate() {
            by_origin.entry(vs.origin.clone()).or_default().push(i);
        }
        ClusterRefs {
            view,
            registry,
            gateways,
            ports,
            by_origin,
        }
    }

    /// The VirtualServices `origin` contributes to this cluster.
    fn virtual_services_of<'s>(
        &'s self,
        origin: &ObjectKey,
    ) -> impl Iterator<Item = &'s Expanded<'m, VirtualServiceSpec>> + 's {
        self.by_origin
            .get(origin)
            .into_iter()
            .flatten()
            .map(|i| &self.view.virtual_services[*i])
    }

    /// Every known cluster's references, by cluster name.
    pub fn all(model: &'m Model) -> BTreeMap<String, ClusterRefs<'m>> {
        model
            .cluster_names()
            .into_iter()
            .map(|c| {
                let refs = ClusterRefs::new(model, &c);
                (c, refs)
            })
            .collect()
    }

    /// The unresolved references of the AccessPoint `origin` in this cluster.
    pub fn unresolved(&self, origin: &ObjectKey) -> Vec<UnresolvedRef> {
        let view = &self.view;
        let mut out = Vec::new();
        let mut push = |kind, path: String, message: String| {
            out.push(UnresolvedRef {
                kind,
                cluster: view.cluster.clone(),
                path,
                message,
            })
        };
        for gateway in view.gateways.iter().filter(|g| g.origin == origin) {
            for (s, server) in gateway.spec.servers.iter().enumerate() {
                let Some(tls) = TlsServer::of(&gateway.key, server) else {
                    continue;
                };
                if tls.is_embedded() {
                    // Owed but not issued: awaited (the listener warms), and said here.
                    if let Some(error) = view.tls.issue_errors.get(&tls.certificate) {
                        push(
                            RefKind::Credential,
                            format!(
                                "spec.template.gateways[{}].spec.servers[{s}].hosts",
                                gateway.index
                            ),
                            format!("the certificate could not be issued: {error}"),
                        );
                    }
                    continue;
                }
                let error = tls
                    .secret_names()
                    .find_map(|name| view.tls.resolve(name).err());
                if let Some(error) = error {
                    push(
                        RefKind::Credential,
                        format!(
                            "spec.template.gateways[{}].spec.servers[{s}].tls.credentialName",
                            gateway.index
                        ),
                        format!("{error} in cluster {}", view.cluster),
                    );
                }
            }
        }
        for vs in self.virtual_services_of(origin) {
            let base = format!("spec.template.virtualServices[{}].spec", vs.index);
            for (i, name) in vs.spec.gateways.iter().enumerate() {
                if name == MESH_GATEWAY {
                    continue;
                }
                let key = gateway_key(name, &vs.key.namespace);
                if !self.gateways.contains(&key) {
                    push(
                        RefKind::Gateway,
                        format!("{base}.gateways[{i}]"),
                        format!("Gateway {key} does not exist in cluster {}", view.cluster),
                    );
                } else if !serves(view, vs, &key) {
                    push(
                        RefKind::Gateway,
                        format!("{base}.exportTo"),
                        format!(
                            "not exported to namespace {} of Gateway {key}",
                            key.namespace
                        ),
                    );
                }
            }
            let clients: Vec<&str> = self
                .gateways
                .iter()
                .filter(|g| serves(view, vs, g))
                .map(|g| g.namespace.as_str())
                .collect();
            for (gateway, port, domain, owner) in self.host_claims(vs) {
                if owner != origin {
                    push(
                        RefKind::HostConflict,
                        format!("{base}.hosts"),
                        format!(
                            "host {domain} on Gateway {gateway} port {port} in cluster {} is already served by AccessPoint {owner}",
                            view.cluster
                        ),
                    );
                }
            }
            for (h, http) in vs.spec.http.iter().enumerate() {
                for (r, route) in http.route.iter().enumerate() {
                    let path = format!("{base}.http[{h}].route[{r}].destination");
                    if let Some((field, message)) =
                        self.unresolved_destination(&route.destination, &vs.key.namespace, &clients)
                    {
                        push(RefKind::Backend, format!("{path}.{field}"), message);
                    }
                }
            }
        }
        out
    }

    /// For each (gateway, port, host) `vs` claims: who owns that host there.
    fn host_claims<'v>(
        &'v self,
        vs: &Expanded<'_, VirtualServiceSpec>,
    ) -> Vec<(&'v ObjectKey, u32, String, &'v ObjectKey)> {
        let mut out = Vec::new();
        for (gateway, ports) in &self.ports {
            if !serves(&self.view, vs, gateway) {
                continue;
            }
            for (port, owners) in ports {
                for domain in bound_domains(vs, port) {
                    if let Some(owner) = owners.get(&domain) {
                        out.push((gateway, port.number, domain, owner));
                    }
                }
            }
        }
        out
    }

    /// Why `destination` does not resolve (the failing field and a message), if it does not.
    fn unresolved_destination(
        &self,
        destination: &Destination,
        namespace: &str,
        clients: &[&str],
    ) -> Option<(&'static str, String)> {
        let host = resolve_host(&destination.host, namespace);
        let Some(service) = self.registry.get(&host) else {
            let cluster = &self.view.cluster;
            return Some((
                "host",
                format!("no Service or ServiceEntry {host} in cluster {cluster}"),
            ));
        };
        if let Some(client) = clients.iter().find(|c| !service.visible_to(c, &self.view)) {
            return Some((
                "host",
                format!("{host} is not exported to namespace {client}, where its Gateway is"),
            ));
        }
        match destination.port.as_ref().map(|p| p.number) {
            Some(number) if service.port(number).is_none() => {
                Some(("port", format!("{host} has no port {number}")))
            }
            None if service.ports.len() != 1 => {
                Some(("port", format!("{host} has several ports; name one")))
            }
            _ => None,
        }
    }

    /// The hosts the HTTP routes of `origin`'s VirtualServices send to, resolved as the
    /// Envoy clusters built for them name them.
    pub fn destination_hosts(&self, origin: &ObjectKey) -> BTreeSet<String> {
        self.virtual_services_of(origin)
            .flat_map(|v| {
                v.spec
                    .http
                    .iter()
                    .flat_map(|http| &http.route)
                    .map(|d| resolve_host(&d.destination.host, &v.key.namespace))
            })
            .collect()
    }

    /// Gateways in this cluster that serve something of `origin`: its own Gateways and those
    /// its VirtualServices bind to.
    pub fn bound_gateways(&self, origin: &ObjectKey) -> BTreeSet<ObjectKey> {
        let own = self
            .view
            .gateways
            .iter()
            .filter(|g| g.origin == origin)
            .map(|g| g.key.clone());
        let referenced = self.virtual_services_of(origin).flat_map(|v| {
            v.spec
                .gateways
                .iter()
                .map(|g| gateway_key(g, &v.key.namespace))
                .filter(|k| self.gateways.contains(k) && serves(&self.view, v, k))
        });
        own.chain(referenced).collect()
    }
}

fn gateway_key(name: &str, vs_namespace: &str) -> ObjectKey {
    match name.split_once('/') {
        Some((ns, name)) => ObjectKey::new(ns, name),
        None => ObjectKey::new(vs_namespace, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LOCAL_CLUSTER;
    use crate::core::placement::placed_clusters;

    fn model_of(yaml: &str) -> Model {
        crate::core::test_support::model_of(yaml, "shop")
    }

    const AP: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template:
    service:
      metadata: {name: web}
      spec: {ports: [{name: http, port: 80}, {name: admin, port: 9000}]}
    gateways:
    - metadata: {name: public}
      spec: {servers: [{port: {number: 8080, protocol: HTTP}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com]
        gateways: [public, edge/other, mesh]
        http:
        - route: [{destination: {host: web, port: {number: 80}}}]
        - route: [{destination: {host: web}}]
        - route: [{destination: {host: payments.shop.svc.cluster.local}}]
"#;

    #[test]
    fn names_each_unresolved_reference_with_its_path() {
        let model = model_of(AP);
        let key = ObjectKey::new("shop", "shop");
        let cluster = ClusterRefs::new(&model, LOCAL_CLUSTER);
        let refs = cluster.unresolved(&key);
        let described: Vec<(RefKind, &str, &str)> = refs
            .iter()
            .map(|r| (r.kind, r.path.as_str(), r.message.as_str()))
            .collect();
        assert_eq!(
            described,
            vec![
                (
                    RefKind::Gateway,
                    "spec.template.virtualServices[0].spec.gateways[1]",
                    "Gateway edge/other does not exist in cluster local"
                ),
                (
                    RefKind::Backend,
                    "spec.template.virtualServices[0].spec.http[1].route[0].destination.port",
                    "web.shop.svc.cluster.local has several ports; name one"
                ),
                (
                    RefKind::Backend,
                    "spec.template.virtualServices[0].spec.http[2].route[0].destination.host",
                    "no Service or ServiceEntry payments.shop.svc.cluster.local in cluster local"
                ),
            ]
        );
        assert_eq!(
            cluster.bound_gateways(&key).into_iter().collect::<Vec<_>>(),
            vec![ObjectKey::new("shop", "public")]
        );
    }

    #[test]
    fn placement_decides_the_clusters() {
        let mut model = model_of(AP);
        assert_eq!(
            placed_clusters(
                &model,
                &model.access_points[&ObjectKey::new("shop", "shop")]
            ),
            vec!["local"]
        );
        let ap = model
            .access_points
            .get_mut(&ObjectKey::new("shop", "shop"))
            .unwrap();
        ap.spec.placement = Some(Default::default());
        let ap = ap.clone();
        assert!(placed_clusters(&model, &ap).is_empty());
    }
}

#[cfg(test)]
mod export_tests {
    use super::*;
    use crate::api::LOCAL_CLUSTER;
    use crate::core::test_support::model_of;

    #[test]
    fn references_hidden_by_export_to_are_reported() {
        let yaml = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: edge, namespace: edge}
spec:
  template:
    gateways:
    - metadata: {name: public}
      spec: {servers: [{port: {number: 8080, protocol: HTTP}, hosts: ["*/*"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  template:
    service:
      metadata: {name: web, annotations: {networking.istio.io/exportTo: "."}}
      spec: {ports: [{name: http, port: 80}]}
    virtualServices:
    - metadata: {name: private}
      spec:
        hosts: [a.example.com]
        gateways: [edge/public]
        exportTo: ["."]
        http: [{route: [{destination: {host: web}}]}]
    - metadata: {name: public}
      spec:
        hosts: [b.example.com]
        gateways: [edge/public]
        http: [{route: [{destination: {host: web}}]}]
"#;
        let model = model_of(yaml, "default");
        let refs =
            ClusterRefs::new(&model, LOCAL_CLUSTER).unresolved(&ObjectKey::new("shop", "shop"));
        let described: Vec<(&str, &str)> = refs
            .iter()
            .map(|r| (r.path.as_str(), r.message.as_str()))
            .collect();
        assert_eq!(
            described,
            [
                (
                    "spec.template.virtualServices[0].spec.exportTo",
                    "not exported to namespace edge of Gateway edge/public"
                ),
                (
                    "spec.template.virtualServices[1].spec.http[0].route[0].destination.host",
                    "web.shop.svc.cluster.local is not exported to namespace edge, where its Gateway is"
                ),
            ]
        );
    }
}
