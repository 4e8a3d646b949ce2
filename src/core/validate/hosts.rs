//! Host names and ports as Envoy and Istio take them: what would otherwise reach a proxy and be
//! NACKed (a NUL or a space in a domain, a port of 70000) or mint a certificate for a name no
//! client can ask for (a Unicode host, where clients send its `xn--` form).

use super::Errors;

/// A host in `hosts` of a VirtualService, ServiceEntry or Gateway server (without the Gateway's
/// `namespace/` part), or a DestinationRule's `host`: `*`, or an optional `*.` before DNS labels
/// of letters, digits and `-` (at most 63 each, 253 in all).
pub(super) fn check_host(e: &mut Errors, path: String, host: &str) {
    if host == "*" {
        return;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if !name.is_ascii() {
        e.push(
            path,
            format!(
                "{host:?} is not ASCII: write an internationalized name in its xn-- (IDNA) form"
            ),
        );
        return;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        e.push(
            path,
            format!(
                "{host:?} is not a host name: DNS labels of letters, digits and '-', optionally after a leading \"*.\""
            ),
        );
    }
}

/// A Gateway server's host: `[namespace/]host`, the namespace `*`, `.` or a name.
pub(super) fn check_server_host(e: &mut Errors, path: String, host: &str) {
    match host.split_once('/') {
        Some((namespace, name)) => {
            if !matches!(namespace, "*" | ".") && !super::export_to::is_dns_label(namespace) {
                e.push(
                    path.clone(),
                    format!("{namespace:?} is not \"*\", \".\" or a namespace name"),
                );
            }
            check_host(e, path, name);
        }
        None => check_host(e, path, host),
    }
}

/// A port number Envoy accepts.
pub(super) fn check_port(e: &mut Errors, path: String, port: i64) {
    if !(1..=65535).contains(&port) {
        e.push(path, "must be 1-65535");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(host: &str) -> Vec<String> {
        let mut e = Errors::default();
        check_server_host(&mut e, "hosts[0]".into(), host);
        e.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn hosts_envoy_and_istio_take_pass() {
        for ok in [
            "*",
            "web",
            "shop.example.com",
            "*.example.com",
            "*/shop.example.com",
            "./*",
            "edge/*.example.test",
            "xn--bcher-kva.example",
            "10.0.0.1",
        ] {
            assert!(errors(ok).is_empty(), "{ok}: {:?}", errors(ok));
        }
    }

    #[test]
    fn hosts_that_would_be_refused_are_named() {
        for (bad, why) in [
            ("bücher.example", "xn--"),
            ("shop\0.example.com", "not a host name"),
            ("shop example.com", "not a host name"),
            ("shop..example.com", "not a host name"),
            ("-shop.example.com", "not a host name"),
            ("shop.example.com.", "not a host name"),
            ("a*.example.com", "not a host name"),
            ("Bad_NS/shop.example.com", "namespace name"),
        ] {
            let got = errors(bad);
            assert!(got.iter().any(|g| g.contains(why)), "{bad:?}: {got:?}");
        }
    }
}
