//! A request's hash for ring-hash and Maglev clusters, from its route's hash policies as Envoy
//! computes it: each policy that finds its value (a header, a query parameter, the client's
//! address) hashes it with xxHash64, hashes combine by rotating and xor-ing, and a `terminal`
//! policy that produced a hash ends the list. No value at all means no hash: the cluster
//! then chooses at random.

use std::fmt::Display;

use xxhash_rust::xxh64::xxh64;

use super::RequestHead;

/// One compiled hash policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub source: HashSource,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    /// A request header (lower-case name); several values are sorted and hashed together.
    Header(String),
    QueryParameter(String),
    SourceIp,
}

/// The request's hash under `policies`, or `None` when none of them found a value.
pub fn request_hash(
    policies: &[HashPolicy],
    head: &RequestHead<'_>,
    client: &dyn Display,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for policy in policies {
        let Some(next) = policy.source.hash(head, client) else {
            continue;
        };
        hash = Some(hash.map_or(next, |h| h.rotate_left(1) ^ next));
        if policy.terminal {
            break;
        }
    }
    hash
}

impl HashSource {
    fn hash(&self, head: &RequestHead<'_>, client: &dyn Display) -> Option<u64> {
        match self {
            HashSource::Header(name) => {
                let mut values: Vec<&[u8]> = head
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                match values.len() {
                    0 => None,
                    1 => Some(xxh64(values[0], 0)),
                    _ => {
                        values.sort_unstable();
                        Some(xxh64(&values.join(&b","[..]), 0))
                    }
                }
            }
            HashSource::QueryParameter(name) => {
                let query = head.path.split_once('?')?.1;
                query.split('&').find_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (key == name).then(|| xxh64(value.as_bytes(), 0))
                })
            }
            HashSource::SourceIp => Some(xxh64(client.to_string().as_bytes(), 0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(path: &'a str, headers: &'a http::HeaderMap) -> RequestHead<'a> {
        RequestHead {
            method: "GET",
            authority: "h",
            path,
            headers,
        }
    }

    fn policy(source: HashSource, terminal: bool) -> HashPolicy {
        HashPolicy { source, terminal }
    }

    #[test]
    fn a_header_a_query_parameter_or_the_client_address_make_the_hash() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", "ann".parse().unwrap());
        let client = &"10.1.2.3";
        let by_header = [policy(HashSource::Header("x-user".into()), false)];
        let by_query = [policy(HashSource::QueryParameter("u".into()), false)];
        let by_ip = [policy(HashSource::SourceIp, false)];
        let h = head("/p?u=ann&v=1", &headers);
        assert_eq!(request_hash(&by_header, &h, client), Some(xxh64(b"ann", 0)));
        assert_eq!(request_hash(&by_query, &h, client), Some(xxh64(b"ann", 0)));
        assert_eq!(
            request_hash(&by_ip, &h, client),
            Some(xxh64(b"10.1.2.3", 0))
        );
        let empty = http::HeaderMap::new();
        assert_eq!(request_hash(&by_header, &head("/p", &empty), client), None);
        assert_eq!(
            request_hash(&by_query, &head("/p?v=1", &empty), client),
            None
        );
    }

    #[test]
    fn policies_combine_until_a_terminal_one_hashes() {
        let mut headers = http::HeaderMap::new();
        headers.insert("a", "1".parse().unwrap());
        headers.insert("b", "2".parse().unwrap());
        let client = &"::1";
        let h = head("/", &headers);
        let (a, b) = (xxh64(b"1", 0), xxh64(b"2", 0));
        let both = [
            policy(HashSource::Header("a".into()), false),
            policy(HashSource::Header("b".into()), false),
        ];
        assert_eq!(request_hash(&both, &h, client), Some(a.rotate_left(1) ^ b));
        let first_ends = [
            policy(HashSource::Header("missing".into()), true),
            policy(HashSource::Header("a".into()), true),
            policy(HashSource::Header("b".into()), false),
        ];
        assert_eq!(request_hash(&first_ends, &h, client), Some(a));
    }

    #[test]
    fn several_values_of_a_header_hash_alike_in_any_order() {
        let mut one = http::HeaderMap::new();
        one.append("x", "b".parse().unwrap());
        one.append("x", "a".parse().unwrap());
        let mut other = http::HeaderMap::new();
        other.append("x", "a".parse().unwrap());
        other.append("x", "b".parse().unwrap());
        let p = [policy(HashSource::Header("x".into()), false)];
        let ip = &"127.0.0.1";
        assert_eq!(
            request_hash(&p, &head("/", &one), ip),
            request_hash(&p, &head("/", &other), ip)
        );
    }
}
