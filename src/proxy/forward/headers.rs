//! Header work on the request path: hop-by-hop headers dropped, Envoy's gateway defaults
//! (`x-forwarded-for` appended, `x-forwarded-proto`, a generated `x-request-id`), and the
//! routes' header edits.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::core::dataplane::routes::HeaderEdits;

const HOP_BY_HOP: [HeaderName; 7] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::TRAILER,
];

/// Drops the hop-by-hop headers. Most messages have none, which one pass over the names
/// (compared, not hashed) finds.
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(super) fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let appended = match headers.get(X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(existing) if !existing.is_empty() => {
            HeaderValue::from_bytes(&[existing, b",", client.as_bytes()].concat()).ok()
        }
        _ => Some(client.clone()),
    };
    if let Some(value) = appended {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// A random UUID (version 4), as Envoy generates for `x-request-id`.
pub(super) fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(super) fn edit_request(headers: &mut HeaderMap, edits: &HeaderEdits) {
    apply(headers, &edits.request_set, &edits.request_remove);
}

pub(super) fn edit_response(headers: &mut HeaderMap, edits: &HeaderEdits) {
    apply(headers, &edits.response_set, &edits.response_remove);
}

fn apply(headers: &mut HeaderMap, set: &[(HeaderName, HeaderValue, bool)], remove: &[HeaderName]) {
    for name in remove {
        headers.remove(name);
    }
    for (name, value, append) in set {
        if *append {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    #[test]
    fn hop_by_hop_headers_are_dropped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "keep-alive".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("transfer-encoding", "chunked".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        super::remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));

        let mut none = HeaderMap::new();
        none.insert("x-kept", "1".parse().unwrap());
        super::remove_hop_by_hop(&mut none);
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = super::request_id();
        let id = id.to_str().unwrap();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert!(groups[2].starts_with('4'), "{id}");
        assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(super::request_id(), super::request_id());
    }
}
