//! What Meridian writes into member clusters: each AccessPoint's Service template, as
//! overridden for each connected member cluster it is placed on. Pure and deterministic; the
//! member writer turns it into server-side applies.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceSpec;

use super::expand::placed_templates;
use super::model::{Model, ObjectKey};

/// Label on every object Meridian writes into a member cluster (for listing them back).
pub const MANAGED_LABEL: &str = "meridian.dev/managed";
/// Annotation naming the AccessPoint (`namespace/name`) an object was written for.
pub const OWNER_ANNOTATION: &str = "meridian.dev/access-point";

/// One Service to apply into one member cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberService {
    pub access_point: ObjectKey,
    pub cluster: String,
    /// Namespace and name of the Service in the member.
    pub service: ObjectKey,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: ServiceSpec,
    /// The AccessPoint's VIPs in that cluster, written to `status.loadBalancer.ingress` as a
    /// LoadBalancer controller would.
    pub load_balancer_ips: Vec<String>,
}

/// Whether Meridian writes into `cluster`: a MemberCluster with a `connection`.
pub fn is_connected_member(model: &Model, cluster: &str) -> bool {
    model
        .member_clusters
        .get(&ObjectKey::new("", cluster))
        .is_some_and(|m| m.spec.connection.is_some())
}

/// Every Service to apply, by (AccessPoint, cluster). AccessPoints being deleted and clusters
/// where overrides never produced a template contribute nothing.
pub fn member_services(model: &Model) -> BTreeMap<(ObjectKey, String), MemberService> {
    let mut out = BTreeMap::new();
    for (key, cluster, template) in placed_templates(model) {
        let connected = is_connected_member(model, &cluster);
        let Some(service) = template.service.as_ref().filter(|_| connected) else {
            continue;
        };
        let namespace = service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| key.namespace.clone());
        let mut labels = service.metadata.labels.clone();
        labels.insert(MANAGED_LABEL.to_owned(), "true".to_owned());
        let mut annotations = service.metadata.annotations.clone();
        annotations.insert(OWNER_ANNOTATION.to_owned(), key.to_string());
        let load_balancer_ips = model
            .vips
            .of(key, &cluster)
            .iter()
            .map(ToString::to_string)
            .collect();
        out.insert(
            (key.clone(), cluster.clone()),
            MemberService {
                access_point: key.clone(),
                cluster,
                service: ObjectKey::new(namespace, service.metadata.name.clone()),
                labels,
                annotations,
                spec: with_default_protocols(service.spec.clone()),
                load_balancer_ips,
            },
        );
    }
    out
}

/// Ports without a protocol get Kubernetes' default, `TCP`: `protocol` is part of the
/// ports list's merge key, and server-side apply rejects entries that omit it.
fn with_default_protocols(mut spec: ServiceSpec) -> ServiceSpec {
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".to_owned());
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::overrides::refresh_overrides;
    use crate::core::test_support::model_of;

    #[test]
    fn services_go_to_connected_placed_clusters_with_their_overrides() {
        let yaml = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: m1, labels: {tier: edge}}
spec: {zone: z1, connection: {kubeconfigSecret: {name: m1}}}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: m2, labels: {tier: edge}}
spec: {zone: z1, connection: {kubeconfigSecret: {name: m2}}}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: m3, labels: {tier: edge}}
spec: {zone: z2, connection: {kubeconfigSecret: {name: m3}}}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: static, labels: {tier: edge}}
spec: {zone: z3}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop, namespace: shop}
spec:
  placement: {clusterSelector: {matchLabels: {tier: edge}}, excludeClusters: [m2]}
  template:
    service:
      metadata: {name: web, labels: {app: web}}
      spec: {ports: [{name: http, port: 80}]}
  overrides:
  - clusterName: m3
    patches: [{op: replace, path: /service/spec/ports/0/port, value: 9090}]
"#;
        let mut model = model_of(yaml, "default");
        refresh_overrides(&mut model, None);
        let services = member_services(&model);
        let placed: Vec<(&str, i32)> = services
            .values()
            .map(|s| (s.cluster.as_str(), s.spec.ports.as_ref().unwrap()[0].port))
            .collect();
        assert_eq!(placed, [("m1", 80), ("m3", 9090)]);
        let m1 = services.values().next().unwrap();
        assert_eq!(m1.service, ObjectKey::new("shop", "web"));
        assert_eq!(m1.labels["app"], "web");
        assert_eq!(m1.labels[MANAGED_LABEL], "true");
        assert_eq!(m1.annotations[OWNER_ANNOTATION], "shop/shop");
        assert_eq!(
            m1.spec.ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("TCP")
        );
    }
}

#[cfg(test)]
mod follow_tests {
    use super::*;
    use crate::core::test_support::model_of;

    #[test]
    fn follow_deployment_places_services_where_it_runs() {
        let yaml = r#"
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: m3}
spec: {zone: z2, connection: {kubeconfigSecret: {name: m3}}}
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: m1}
spec: {zone: z1, connection: {kubeconfigSecret: {name: m1}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop, labels: {meridian.dev/cluster: m3}}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: api, namespace: shop}
spec:
  placement: {followDeployment: {name: api}}
  template:
    service:
      metadata: {name: api}
      spec: {ports: [{name: http, port: 80}]}
"#;
        let model = model_of(yaml, "default");
        let clusters: Vec<String> = member_services(&model)
            .into_values()
            .map(|s| s.cluster)
            .collect();
        assert_eq!(clusters, ["m3"]);
    }
}
