//! Label selectors in `kubectl`'s string syntax (`env=prod,tier in (web,api),!legacy`), parsed
//! into the API's `LabelSelector` so one matcher serves flags and objects alike.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

/// Parses `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`
/// and `!key`, joined by commas. An empty string selects everything.
pub fn parse_selector(text: &str) -> Result<LabelSelector, SelectorError> {
    let fail = |reason: String| SelectorError {
        selector: text.to_owned(),
        reason,
    };
    let mut selector = LabelSelector::default();
    for term in split_terms(text) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let requirement = if let Some(key) = term.strip_prefix('!') {
            requirement(key, "DoesNotExist", Vec::new())
        } else if let Some((key, value)) = term.split_once("!=") {
            requirement(key, "NotIn", vec![value.trim().to_owned()])
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            if key.trim().is_empty() {
                return Err(fail(format!("{term:?} has an empty key")));
            }
            let labels = selector.match_labels.get_or_insert_with(Default::default);
            labels.insert(key.trim().to_owned(), value.trim().to_owned());
            continue;
        } else if let Some((key, operator, values)) = set_term(term) {
            requirement(key, operator, values)
        } else if term.contains(char::is_whitespace) || term.contains(['(', ')']) {
            return Err(fail(format!("cannot parse {term:?}")));
        } else {
            requirement(term, "Exists", Vec::new())
        };
        if requirement.key.is_empty() {
            return Err(fail(format!("{term:?} has an empty key")));
        }
        selector
            .match_expressions
            .get_or_insert_with(Default::default)
            .push(requirement);
    }
    Ok(selector)
}

fn requirement(key: &str, operator: &str, values: Vec<String>) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.trim().to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then_some(values),
    }
}

/// `key in (a, b)` / `key notin (a, b)`.
fn set_term(term: &str) -> Option<(&str, &'static str, Vec<String>)> {
    let (head, rest) = term.split_once('(')?;
    let values = rest.strip_suffix(')')?;
    let mut words = head.split_whitespace();
    let key = words.next()?;
    let operator = match words.next()? {
        "in" => "In",
        "notin" => "NotIn",
        _ => return None,
    };
    if words.next().is_some() {
        return None;
    }
    let values = values
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    Some((key, operator, values))
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::placement::selector_matches;
    use crate::core::test_support::labels;

    #[test]
    fn kubectl_syntax_matches_like_kubernetes() {
        let selector =
            parse_selector("env=prod, tier in (web, api),team!=ops,!legacy,meridian.dev/enabled")
                .unwrap();
        let good = labels(&[
            ("env", "prod"),
            ("tier", "api"),
            ("meridian.dev/enabled", ""),
        ]);
        assert!(selector_matches(&selector, &good));
        for (key, value) in [("tier", "db"), ("team", "ops"), ("legacy", "yes")] {
            let mut bad = good.clone();
            bad.insert(key.to_owned(), value.to_owned());
            assert!(!selector_matches(&selector, &bad), "{key}={value}");
        }
        let mut missing = good.clone();
        missing.remove("meridian.dev/enabled");
        assert!(!selector_matches(&selector, &missing));
        assert!(selector_matches(&parse_selector("").unwrap(), &labels(&[])));
    }

    #[test]
    fn nonsense_is_an_error_naming_the_selector() {
        let error = parse_selector("env prod").unwrap_err();
        assert_eq!(
            error.to_string(),
            "label selector \"env prod\": cannot parse \"env prod\""
        );
        assert!(parse_selector("tier within (a)").is_err());
        assert!(parse_selector("=x").is_err());
    }
}
