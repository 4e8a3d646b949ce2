//! Matching a request against compiled routes: comparisons and lookups only.

use super::{
    HeaderMatch, Matcher, PathMatch, QueryMatch, RequestHead, StringKind, StringTest, ValueTest,
};

impl Matcher {
    pub(super) fn matches(&self, request: &RequestHead<'_>) -> bool {
        let (path, query) = request
            .path
            .split_once('?')
            .map_or((request.path, ""), |(p, q)| (p, q));
        let path_ok = match &self.path {
            PathMatch::Prefix(prefix) => starts_with(request.path, prefix, self.case_sensitive),
            PathMatch::Exact(exact) => match self.case_sensitive {
                true => path == exact,
                false => path.eq_ignore_ascii_case(exact),
            },
            PathMatch::Regex(regex) => regex.is_match(path),
        };
        path_ok
            && self.headers.iter().all(|h| h.matches(request))
            && self.query.iter().all(|q| q.matches(query))
    }
}

fn starts_with(text: &str, prefix: &str, case_sensitive: bool) -> bool {
    match case_sensitive {
        true => text.starts_with(prefix),
        false => text
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
    }
}

impl HeaderMatch {
    fn matches(&self, request: &RequestHead<'_>) -> bool {
        let value: Option<String> = match self.name.as_str() {
            ":method" => Some(request.method.to_owned()),
            ":authority" => Some(request.authority.to_owned()),
            ":path" => Some(request.path.to_owned()),
            name => {
                let values: Vec<&str> = request
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| values.join(","))
            }
        };
        match (value, &self.test) {
            (None, ValueTest::Present(present)) => *present == self.invert,
            (None, ValueTest::String(_)) => false,
            (Some(_), ValueTest::Present(present)) => *present != self.invert,
            (Some(value), ValueTest::String(test)) => test.matches(&value) != self.invert,
        }
    }
}

impl QueryMatch {
    fn matches(&self, query: &str) -> bool {
        let value = query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == self.name).then_some(value)
        });
        match (value, &self.test) {
            (None, ValueTest::Present(present)) => !present,
            (None, ValueTest::String(_)) => false,
            (Some(_), ValueTest::Present(present)) => *present,
            (Some(value), ValueTest::String(test)) => test.matches(value),
        }
    }
}

impl StringTest {
    fn matches(&self, value: &str) -> bool {
        let fold = |s: &str| match self.ignore_case {
            true => s.to_ascii_lowercase(),
            false => s.to_owned(),
        };
        match &self.kind {
            StringKind::Exact(v) => fold(value) == fold(v),
            StringKind::Prefix(v) => fold(value).starts_with(&fold(v)),
            StringKind::Suffix(v) => fold(value).ends_with(&fold(v)),
            StringKind::Contains(v) => fold(value).contains(&fold(v)),
            StringKind::Regex(r) => r.is_match(value),
        }
    }
}
