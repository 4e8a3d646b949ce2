//! Header names and edits as Envoy takes them. Envoy refuses a route that sets, appends or
//! removes a pseudo-header (`:path`, `:status`, ...) or `host` ("may not be modified"), a header
//! name that is empty, and a name or value holding NUL, CR or LF; any of them would NACK the
//! whole route configuration of the port.

use super::Errors;
use crate::api::istio::{HeaderOperations, Headers};

/// The header edits of a route or destination (`headers.request` and `headers.response`).
pub(super) fn check_edits(e: &mut Errors, path: &str, headers: Option<&Headers>) {
    let Some(headers) = headers else { return };
    for (side, operations) in [
        ("request", &headers.request),
        ("response", &headers.response),
    ] {
        if let Some(operations) = operations {
            check_operations(e, &format!("{path}.{side}"), operations);
        }
    }
}

fn check_operations(e: &mut Errors, path: &str, operations: &HeaderOperations) {
    for (kind, edits) in [("set", &operations.set), ("add", &operations.add)] {
        for (name, value) in edits {
            let p = format!("{path}.{kind}[{name:?}]");
            check_modifiable(e, &p, name);
            if has_line_break_or_nul(value) {
                e.push(p, "the value must not hold NUL, CR or LF");
            }
        }
    }
    for (i, name) in operations.remove.iter().enumerate() {
        check_modifiable(e, &format!("{path}.remove[{i}]"), name);
    }
}

fn check_modifiable(e: &mut Errors, path: &str, name: &str) {
    if !check_name(e, path, name) {
        return;
    }
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        e.push(
            path,
            format!("{name:?} cannot be changed: Envoy refuses edits of pseudo-headers and host (rewrite the authority with rewrite.authority instead)"),
        );
    }
}

/// A header name anywhere (matches included): not empty, no NUL, CR or LF. Whether it passed.
pub(super) fn check_name(e: &mut Errors, path: &str, name: &str) -> bool {
    if name.is_empty() {
        e.push(path, "a header name must not be empty");
        return false;
    }
    if has_line_break_or_nul(name) {
        e.push(path, "a header name must not hold NUL, CR or LF");
        return false;
    }
    true
}

fn has_line_break_or_nul(text: &str) -> bool {
    text.bytes().any(|b| matches!(b, b'\0' | b'\r' | b'\n'))
}
