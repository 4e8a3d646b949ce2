//! Host names: how a Service is spelled as a host, short-name resolution and wildcard
//! intersection, as Istio does them.

/// The Kubernetes cluster domain Service hostnames live under.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The hostname of Service `name` in `namespace`.
pub fn service_host(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// Resolves a VirtualService/DestinationRule host relative to the object's namespace:
/// `reviews` → `reviews.<ns>.svc.cluster.local`; names with a dot are taken as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.svc.{DOMAIN_SUFFIX}")
    }
}

/// The host both patterns accept, if any: the more specific of the two.
pub fn host_intersection(a: &str, b: &str) -> Option<String> {
    if a == b {
        return Some(a.to_owned());
    }
    if covers(a, b) {
        return Some(b.to_owned());
    }
    if covers(b, a) {
        return Some(a.to_owned());
    }
    None
}

/// Whether wildcard pattern `pattern` accepts every name `other` accepts.
fn covers(pattern: &str, other: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => other.len() > suffix.len() && other.ends_with(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_namespace() {
        assert_eq!(resolve_host("web", "shop"), "web.shop.svc.cluster.local");
        assert_eq!(resolve_host("api.example.com", "shop"), "api.example.com");
    }

    #[test]
    fn intersection_picks_the_narrower_host() {
        assert_eq!(
            host_intersection("*", "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            host_intersection("*.example.com", "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            host_intersection("*.example.com", "*.b.example.com").as_deref(),
            Some("*.b.example.com")
        );
        assert_eq!(host_intersection("*.example.com", "example.com"), None);
        assert_eq!(host_intersection("a.example.com", "b.example.com"), None);
    }
}
