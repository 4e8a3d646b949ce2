//! Istio's rules for `exportTo` lists, so Meridian accepts exactly what Istio accepts.
//!
//! Each value is `.` (the object's namespace), `*` (every namespace) or a namespace name (a
//! DNS-1123 label), listed once; `*` stands alone; `~` (no one) is for ServiceEntries and
//! Services only, and stands alone too.

use std::collections::BTreeMap;

use super::Errors;

/// Whether `~` may be used: Istio allows it on ServiceEntries and Services, not on
/// VirtualServices or DestinationRules.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum NoneAllowed {
    Yes,
    No,
}

/// Checks one object's `exportTo` at `path`; `namespace` is the object's own, where known, so
/// that `.` and its name count as the same entry.
pub(super) fn check(
    e: &mut Errors,
    path: &str,
    values: &[String],
    namespace: Option<&str>,
    none: NoneAllowed,
) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, value) in values.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = match (value.as_str(), namespace) {
            (".", Some(own)) => own,
            _ => value.as_str(),
        };
        if let Some(earlier) = seen.insert(key, value) {
            let message = if earlier == value {
                format!("{value:?} is listed twice")
            } else {
                format!("\".\" and {key:?} name the same namespace")
            };
            e.push(p, message);
            continue;
        }
        match value.as_str() {
            "." | "*" => {}
            "~" if none == NoneAllowed::Yes => {}
            "~" => e.push(
                p,
                "\"~\" (export to no one) is allowed only on ServiceEntries and Services",
            ),
            name if is_dns_label(name) => {}
            name => e.push(
                p,
                format!("{name:?} is not \".\", \"*\" or a namespace name (a DNS-1123 label)"),
            ),
        }
    }
    if values.len() > 1 {
        for (alone, what) in [("*", "public (*)"), ("~", "no one (~)")] {
            if values.iter().any(|v| v == alone) {
                e.push(
                    path,
                    format!("exporting to {what} cannot be combined with other values"),
                );
            }
        }
    }
}

/// A namespace name: lowercase letters, digits and `-`, at most 63, alphanumeric at both ends.
pub(super) fn is_dns_label(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(values: &[&str], namespace: Option<&str>, none: NoneAllowed) -> Vec<String> {
        let mut e = Errors::default();
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        check(&mut e, "exportTo", &values, namespace, none);
        e.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn istio_accepts_these() {
        for ok in [
            &[][..],
            &["*"],
            &["."],
            &[".", "other"],
            &["a", "b-2"],
            &["x".repeat(63).as_str()],
        ] {
            assert!(
                errors(ok, Some("shop"), NoneAllowed::No).is_empty(),
                "{ok:?}"
            );
        }
        assert!(errors(&["~"], None, NoneAllowed::Yes).is_empty());
    }

    #[test]
    fn istio_rejects_these() {
        let cases: &[(&[&str], NoneAllowed, &str)] = &[
            (&["~"], NoneAllowed::No, "only on ServiceEntries"),
            (
                &["*", "a"],
                NoneAllowed::No,
                "public (*) cannot be combined",
            ),
            (
                &["~", "a"],
                NoneAllowed::Yes,
                "no one (~) cannot be combined",
            ),
            (&["a", "a"], NoneAllowed::No, "listed twice"),
            (&[".", "shop"], NoneAllowed::No, "name the same namespace"),
            (&["Shop"], NoneAllowed::No, "DNS-1123"),
            (&["a.b"], NoneAllowed::No, "DNS-1123"),
            (&["-a"], NoneAllowed::No, "DNS-1123"),
            (&[""], NoneAllowed::No, "DNS-1123"),
        ];
        for (values, none, want) in cases {
            let got = errors(values, Some("shop"), *none);
            assert!(
                got.iter()
                    .any(|e| e.contains(want) && e.contains("exportTo")),
                "{values:?}: {got:?}"
            );
        }
        assert!(errors(&["x".repeat(64).as_str()], None, NoneAllowed::No)[0].contains("DNS-1123"));
    }
}
