//! Gateway scope: translating one gateway from only the part of the model it can read.
//!
//! A cluster view holds every AccessPoint placed in the cluster, and building one costs a
//! pass over all of them. When one gateway must be translated again after an edit, a view of
//! just the AccessPoints that define or bind its Gateway, or serve (or hold DestinationRules
//! for) the hosts its routes reference, gives the same translation for a fraction of that.
//! The hosts are known only once the routes are built, so the scope starts from a guess (the
//! hosts of the gateway's previous translation) and widens until the translation references
//! no host outside it.
//! A [`ReferenceIndex`] says which AccessPoints name a gateway or host, so the view is built
//! without looking at the others at all.
//!
//! Architecture Invariant: a scoped translation equals the translation from the full cluster
//! view. Everything translation reads about a gateway is reachable from its name and its hosts
//! through `expand::affected::for_each_reference`; what is not (WorkloadEntries, wildcard rules) is in every
//! scope.

use std::collections::BTreeSet;

use super::{translate, GatewayIdentity, NodeRole, Translation};
use crate::core::expand::{scoped_view, ReferenceIndex, Scope};
use crate::core::model::Model;

/// Translates `identity` from a view scoped to it, starting from `hosts` (a guess: those of
/// its previous translation, or none). `None` when the gateway reads most of the model: a
/// full cluster view is then no dearer, and shared with other gateways. Always `None` for an
/// L4 node, which reads every AccessPoint of its cluster.
///
/// `index`, when it describes `model`, saves looking at every AccessPoint.
pub fn translate_scoped(
    model: &Model,
    identity: &GatewayIdentity,
    hosts: &BTreeSet<String>,
    index: Option<&ReferenceIndex>,
) -> Option<Translation> {
    if identity.role == NodeRole::L4 {
        return None;
    }
    let mut hosts = hosts.clone();
    // The hosts a gateway's routes reference come from the VirtualServices binding it, which
    // every scope holds; so the second round references nothing new.
    for _ in 0..2 {
        let scope = Scope::new(&identity.gateway, &hosts).with_index(index);
        let view = scoped_view(model, &identity.cluster, &scope)?;
        let translation = translate(&view, identity);
        if translation.hosts.is_subset(&hosts) {
            return Some(translation);
        }
        hosts.extend(translation.hosts.iter().cloned());
    }
    None
}

/// Translates `identity` from the full cluster view, asserting that a scoped translation (from
/// no guess, and from the right hosts) is the same. Every translation test goes through it.
#[cfg(test)]
pub(super) fn translate_checked(model: &Model, identity: &GatewayIdentity) -> Translation {
    let full = translate(
        &crate::core::expand::cluster_view(model, &identity.cluster),
        identity,
    );
    let mut index = ReferenceIndex::default();
    index.update(model, 1, &crate::core::expand::ModelChanges::default());
    for guess in [BTreeSet::new(), full.hosts.clone()] {
        for index in [None, Some(&index)] {
            assert_eq!(
                translate_scoped(model, identity, &guess, index).as_ref(),
                Some(&full),
                "the scoped translation of {identity:?} (guessing {guess:?}, index: {}) differs",
                index.is_some()
            );
        }
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::ObjectKey;
    use crate::core::resources::ResourceType;

    /// One gateway whose every input comes from a different AccessPoint (or a plain object),
    /// plus an AccessPoint it cannot reach.
    const SPREAD: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: gateway, namespace: edge}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*/*"]}]}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: routes, namespace: shop}
spec:
  template:
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com]
        gateways: [edge/gw]
        http:
        - match: [{uri: {prefix: /legacy}}]
          route: [{destination: {host: legacy.internal}}]
        - match: [{uri: {prefix: /api}}]
          route: [{destination: {host: api}}]
        - route: [{destination: {host: web, subset: v2}}]
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: web, namespace: shop}
spec:
  template:
    service:
      metadata: {name: web}
      spec: {ports: [{port: 80}]}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: rules, namespace: shop}
spec:
  template:
    destinationRules:
    - metadata: {name: web}
      spec:
        host: web
        subsets: [{name: v2, labels: {version: v2}}]
        trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: legacy, namespace: shop}
spec:
  template:
    serviceEntries:
    - metadata: {name: legacy}
      spec:
        hosts: [legacy.internal]
        ports: [{number: 80, name: http, protocol: HTTP}]
        workloadSelector: {labels: {app: legacy}}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: vms, namespace: shop}
spec:
  template:
    workloadEntries:
    - metadata: {name: vm1}
      spec: {address: 192.0.2.10, labels: {app: legacy}}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {ports: [{port: 9000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints: [{addresses: ["10.0.0.9"]}]
ports: [{port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["10.0.0.7"], labels: {version: v2}}]
ports: [{port: 8080}]
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: elsewhere, namespace: other}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*"]}]}
    virtualServices:
    - metadata: {name: other}
      spec: {hosts: [other.example.com], gateways: [gw], http: [{route: [{destination: {host: other}}]}]}
    service:
      metadata: {name: other}
      spec: {ports: [{port: 80}]}
"#;

    fn identity() -> GatewayIdentity {
        GatewayIdentity {
            role: crate::core::translate::NodeRole::Gateway,
            xds: crate::core::translate::XdsTransport::Ads,
            gateway: ObjectKey::new("edge", "gw"),
            cluster: crate::api::LOCAL_CLUSTER.to_owned(),
            zone: String::new(),
        }
    }

    #[test]
    fn a_gateway_reading_many_access_points_is_translated_the_same_from_its_scope() {
        let model = crate::core::test_support::model_of(SPREAD, "default");
        let translation = translate_checked(&model, &identity());
        assert_eq!(translation.unresolved, Vec::<String>::new());
        let config = &translation.config;
        assert_eq!(config.resources(ResourceType::Cluster).len(), 3);
        assert_eq!(
            config.resources(ResourceType::Endpoint).len(),
            3,
            "{config:?}"
        );

        let hosts = translation.hosts.clone();
        let gateway = identity().gateway;
        let scope = Scope::new(&gateway, &hosts);
        let view = scoped_view(&model, crate::api::LOCAL_CLUSTER, &scope).unwrap();
        let origins: BTreeSet<&str> = (view.gateways.iter().map(|g| g.origin))
            .chain(view.virtual_services.iter().map(|v| v.origin))
            .chain(view.service_entries.iter().map(|e| e.origin))
            .map(|key| key.name.as_str())
            .collect();
        assert_eq!(origins, BTreeSet::from(["gateway", "routes", "legacy"]));
        assert_eq!(view.services.len(), 2, "web and the plain api, not other");
        assert_eq!(view.endpoint_slices.len(), 2);
    }
}
