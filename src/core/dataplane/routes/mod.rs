//! Route tables: a `RouteConfiguration` compiled once into host lookup (exact names in a map,
//! then wildcard suffixes longest first, then wildcard prefixes, then `*`, as Envoy orders
//! them) and, per virtual host, routes in order with precompiled matchers. Matching a request is
//! then lookups and comparisons only.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost as EnvoyVirtualHost,
};
use prost::Message;
use regex::Regex;
use xxhash_rust::xxh3::xxh3_128;

use super::{refuse_leftovers, CompileError, FastMap};

pub use encoded::EncodedRoutesError;

/// What a request offers to matching.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The Host header (or `:authority`), port included as the client sent it.
    pub authority: &'a str,
    /// Path and query, as received.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// A compiled route configuration.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    exact: FastMap<String, usize>,
    /// `*.example.com` as `.example.com`, longest first.
    suffixes: Vec<(String, usize)>,
    /// `www.*` as `www.`, longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
    /// Shared with the tables of later versions that did not change them.
    hosts: Vec<Arc<VirtualHost>>,
    /// Each virtual host's index by the 128-bit hash of its encoding (empty for a table
    /// compiled from a decoded configuration): what the next version can reuse.
    by_encoding: FastMap<u128, usize>,
}

#[derive(Debug)]
struct VirtualHost {
    /// Lowercased, as the lookup compares them.
    domains: Vec<String>,
    routes: Vec<Route>,
}

/// One route: what it matches, what it does, and the header edits it makes.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    matcher: Matcher,
    pub action: Action,
    pub edits: HeaderEdits,
}

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct { status: u16, body: Option<String> },
}

/// Forwarding to one cluster, or one of several by weight.
#[derive(Debug)]
pub struct Forward {
    pub targets: Vec<Target>,
    total_weight: u64,
    prefix_rewrite: Option<String>,
    regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<String>,
    /// `None`: no timeout (Envoy's 0s).
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    /// How to hash a request for ring-hash and Maglev clusters.
    pub hash_policies: Vec<HashPolicy>,
}

#[derive(Debug)]
pub struct Target {
    pub cluster: String,
    weight: u32,
    pub edits: HeaderEdits,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Any 5xx response (`5xx`).
    pub on_5xx: bool,
    /// 502, 503 and 504 (`gateway-error`).
    pub on_gateway_error: bool,
    /// The upstream could not be connected to (`connect-failure`).
    pub on_connect_failure: bool,
    /// The upstream reset or refused the request (`reset`, `refused-stream`).
    pub on_reset: bool,
    /// `retriable-status-codes`.
    pub statuses: Vec<u16>,
}

#[derive(Debug)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u32>,
    path: Option<String>,
    strip_query: bool,
    pub status: u16,
}

/// Header edits of one level, in Envoy's order of application.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    pub request_set: Vec<(http::HeaderName, http::HeaderValue, bool)>,
    pub request_remove: Vec<http::HeaderName>,
    pub response_set: Vec<(http::HeaderName, http::HeaderValue, bool)>,
    pub response_remove: Vec<http::HeaderName>,
}

#[derive(Debug)]
struct Matcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
struct HeaderMatch {
    name: String,
    test: ValueTest,
    invert: bool,
}

#[derive(Debug)]
struct QueryMatch {
    name: String,
    test: ValueTest,
}

#[derive(Debug)]
enum ValueTest {
    Present(bool),
    String(StringTest),
}

#[derive(Debug)]
struct StringTest {
    kind: StringKind,
    ignore_case: bool,
}

#[derive(Debug)]
enum StringKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

impl RouteTable {
    /// Compiles `config`, consuming it; the first field it cannot honour is the error.
    pub fn compile(mut config: RouteConfiguration) -> Result<RouteTable, CompileError> {
        let hosts = std::mem::take(&mut config.virtual_hosts);
        let resource = format!("RouteConfiguration {}", config.name);
        let count = hosts.len();
        let hosts = hosts.into_iter().enumerate().map(|(i, host)| {
            let compiled = compile::virtual_host(host, &resource, &format!("virtual_hosts[{i}]"))?;
            Ok((Arc::new(compiled), None))
        });
        RouteTable::compile_parts(config, count, hosts)
    }

    /// Compiles an encoded `RouteConfiguration` one virtual host at a time, each decoded just
    /// before it is compiled: a configuration of 10,000 virtual hosts is never held decoded
    /// whole, which is most of what compiling it would otherwise cost.
    pub fn compile_encoded(encoded: &[u8]) -> Result<RouteTable, EncodedRoutesError> {
        RouteTable::compile_encoded_reusing(encoded, |_| None, || {})
    }

    /// [`RouteTable::compile_encoded`], reusing what did not change: a virtual host whose
    /// encoding is byte for byte one of the `previous` table's (found by the configuration's
    /// name) is that table's compiled host, shared rather than decoded and compiled again.
    /// An edit of one host in 10,000 then costs hashing the others' encodings, not compiling
    /// them. (The hash is 128 bits wide; Envoy trusts 64 to skip an unchanged configuration.)
    /// `between_hosts` is called before each virtual host: the caller's chance to give its
    /// core back during a large configuration.
    pub fn compile_encoded_reusing(
        encoded: &[u8],
        previous: impl FnOnce(&str) -> Option<Arc<RouteTable>>,
        mut between_hosts: impl FnMut(),
    ) -> Result<RouteTable, EncodedRoutesError> {
        let (rest, hosts) = encoded::split_virtual_hosts(encoded)?;
        let previous = previous(&rest.name);
        let reusable = |key: &u128| {
            let previous = previous.as_ref()?;
            previous.hosts.get(*previous.by_encoding.get(key)?).cloned()
        };
        let resource = format!("RouteConfiguration {}", rest.name);
        let count = hosts.len();
        let hosts = hosts.into_iter().enumerate().map(|(i, host)| {
            between_hosts();
            let key = xxh3_128(host);
            if let Some(compiled) = reusable(&key) {
                return Ok((compiled, Some(key)));
            }
            let field = format!("virtual_hosts[{i}]");
            let decoded = EnvoyVirtualHost::decode(host)
                .map_err(|e| CompileError::new(&resource, field.clone(), e.to_string()))?;
            let compiled = compile::virtual_host(decoded, &resource, &field)?;
            Ok((Arc::new(compiled), Some(key)))
        });
        Ok(RouteTable::compile_parts(rest, count, hosts)?)
    }

    /// Drops the table one virtual host at a time, calling `between_hosts` after each:
    /// freeing a large table takes about as long as compiling it did, and the caller may want
    /// its core back meanwhile.
    pub fn free_pausing(self, mut between_hosts: impl FnMut()) {
        let RouteTable {
            exact,
            suffixes,
            prefixes,
            hosts,
            by_encoding,
            ..
        } = self;
        drop((exact, suffixes, prefixes, by_encoding));
        for host in hosts {
            drop(host);
            between_hosts();
        }
    }

    /// `rest` is the configuration without its virtual hosts, which come one by one, compiled,
    /// each with the hash of its encoding when it had one.
    fn compile_parts(
        mut rest: RouteConfiguration,
        count: usize,
        hosts: impl Iterator<Item = Result<(Arc<VirtualHost>, Option<u128>), CompileError>>,
    ) -> Result<RouteTable, CompileError> {
        let name = std::mem::take(&mut rest.name);
        let resource = format!("RouteConfiguration {name}");
        // Meridian sets it to false: clusters are looked up when a request is routed.
        rest.validate_clusters = None;
        refuse_leftovers(&rest, &resource, "")?;
        let mut table = RouteTable {
            name,
            exact: FastMap::with_capacity_and_hasher(count, Default::default()),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            any: None,
            hosts: Vec::with_capacity(count),
            by_encoding: FastMap::default(),
        };
        for (i, host) in hosts.enumerate() {
            let (compiled, key) = host?;
            let index = table.hosts.len();
            if let Some(key) = key {
                table.by_encoding.insert(key, index);
            }
            for domain in &compiled.domains {
                let taken = if domain == "*" {
                    table.any.replace(index).map(|_| domain)
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    table.suffixes.push((suffix.to_owned(), index));
                    None
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    table.prefixes.push((prefix.to_owned(), index));
                    None
                } else {
                    match table.exact.entry(domain.clone()) {
                        Entry::Occupied(_) => Some(domain),
                        Entry::Vacant(free) => {
                            free.insert(index);
                            None
                        }
                    }
                };
                if let Some(domain) = taken {
                    return Err(CompileError::new(
                        &resource,
                        format!("virtual_hosts[{i}].domains"),
                        format!("domain {domain:?} is in two virtual hosts"),
                    ));
                }
            }
            table.hosts.push(compiled);
        }
        table
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        table
            .prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(table)
    }

    /// The route `request` takes, if any (Envoy answers 404 otherwise).
    pub fn route(&self, request: &RequestHead<'_>) -> Option<&Route> {
        let host = self.virtual_host(request.authority)?;
        host.routes.iter().find(|r| r.matcher.matches(request))
    }

    fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host = strip_port(authority).to_ascii_lowercase();
        let index = self
            .exact
            .get(&host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(prefix, _)| host.len() > prefix.len() && host.starts_with(prefix))
                    .map(|(_, i)| *i)
            })
            .or(self.any)?;
        self.hosts.get(index).map(|host| &**host)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

impl Forward {
    /// The request's hash for ring-hash and Maglev clusters (`None`: none of the route's hash
    /// policies found a value).
    /// `client` is the client's IP address (formatted only for a source-IP policy).
    pub fn request_hash(
        &self,
        head: &RequestHead<'_>,
        client: &dyn std::fmt::Display,
    ) -> Option<u64> {
        hashing::request_hash(&self.hash_policies, head, client)
    }

    /// The target for a request, given a uniformly random `draw`.
    pub fn target(&self, draw: u64) -> &Target {
        let mut point = draw % self.total_weight.max(1);
        for target in &self.targets {
            let weight = u64::from(target.weight);
            if point < weight {
                return target;
            }
            point -= weight;
        }
        &self.targets[0]
    }

    /// The upstream path: the prefix rewritten (when the route matched by prefix), or the
    /// regex rewrite applied to the path (query kept).
    pub fn rewrite_path(&self, route: &Route, path: &str) -> Option<String> {
        if let Some(replacement) = &self.prefix_rewrite {
            let matched = match &route.matcher.path {
                PathMatch::Prefix(prefix) => prefix.len(),
                PathMatch::Exact(_) | PathMatch::Regex(_) => {
                    path.split_once('?').map_or(path.len(), |(p, _)| p.len())
                }
            };
            let rest = path.get(matched..).unwrap_or_default();
            return Some(format!("{replacement}{rest}"));
        }
        let (regex, substitution) = self.regex_rewrite.as_ref()?;
        let (only_path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let rewritten = regex.replace_all(only_path, substitution.as_str());
        Some(match query {
            Some(q) => format!("{rewritten}?{q}"),
            None => rewritten.into_owned(),
        })
    }
}

impl Redirect {
    /// The `Location` for a request to `authority` + `path`, over `scheme`.
    pub fn location(&self, scheme: &str, authority: &str, path: &str) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let mut host = self
            .host
            .clone()
            .unwrap_or_else(|| strip_port(authority).to_owned());
        let port = match (self.port, &self.host) {
            (Some(port), _) => Some(port.to_string()),
            (None, Some(_)) => None,
            (None, None) => authority
                .strip_prefix(strip_port(authority))
                .and_then(|p| p.strip_prefix(':'))
                .map(str::to_owned),
        };
        let default_port = matches!(
            (scheme, port.as_deref()),
            ("http", Some("80")) | ("https", Some("443"))
        );
        if let Some(port) = port.filter(|_| !default_port) {
            host = format!("{host}:{port}");
        }
        let (original_path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let mut target = self
            .path
            .clone()
            .unwrap_or_else(|| original_path.to_owned());
        if let Some(q) = query.filter(|_| !self.strip_query && !target.contains('?')) {
            target = format!("{target}?{q}");
        }
        format!("{scheme}://{host}{target}")
    }
}

mod compile;
mod encoded;
pub mod hashing;
mod matching;

pub use hashing::HashPolicy;

#[cfg(test)]
mod tests;
