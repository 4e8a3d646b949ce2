//! Istio's `exportTo`: which namespaces may see a Service, ServiceEntry, VirtualService or
//! DestinationRule. For a gateway the viewing ("client") namespace is its Gateway's namespace.
//!
//! Values: `*` every namespace, `.` the object's own namespace, `~` none, or namespace names.
//! An object without `exportTo` uses the mesh-wide default for its kind (`*` unless configured).

/// Annotation carrying a Kubernetes Service's `exportTo`, comma separated.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// Mesh-wide defaults and the root namespace (the last place DestinationRules are looked up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportPolicy {
    pub service: Vec<String>,
    pub virtual_service: Vec<String>,
    pub destination_rule: Vec<String>,
    pub root_namespace: String,
}

impl Default for ExportPolicy {
    fn default() -> ExportPolicy {
        let all = vec!["*".to_owned()];
        ExportPolicy {
            service: all.clone(),
            virtual_service: all.clone(),
            destination_rule: all,
            root_namespace: "meridian-system".to_owned(),
        }
    }
}

/// Whether an object in `owner` with `export_to` (or `default` when empty) is visible from
/// `client`.
pub fn is_exported(export_to: &[String], default: &[String], owner: &str, client: &str) -> bool {
    let list = if export_to.is_empty() {
        default
    } else {
        export_to
    };
    list.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => owner == client,
        "~" => false,
        namespace => namespace == client,
    })
}

/// The `exportTo` list of a Service's annotations.
pub fn from_annotation(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<String> {
    annotations
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_to_table() {
        let star = vec!["*".to_owned()];
        let dot = vec![".".to_owned()];
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (exportTo, default, owner, client, visible)
        type Case<'a> = (Vec<String>, &'a Vec<String>, &'a str, &'a str, bool);
        let cases: &[Case] = &[
            (vec![], &star, "shop", "edge", true),
            (vec![], &dot, "shop", "edge", false),
            (vec![], &dot, "shop", "shop", true),
            (list(&["."]), &star, "shop", "edge", false),
            (list(&["."]), &star, "shop", "shop", true),
            (list(&["*"]), &dot, "shop", "edge", true),
            (list(&["~"]), &star, "shop", "shop", false),
            (list(&["edge"]), &star, "shop", "edge", true),
            (list(&["edge"]), &star, "shop", "shop", false),
            // Own namespace plus another: both see it, nobody else does.
            (list(&[".", "edge"]), &star, "shop", "shop", true),
            (list(&[".", "edge"]), &star, "shop", "edge", true),
            (list(&[".", "edge"]), &star, "shop", "other", false),
        ];
        for (export_to, default, owner, client, visible) in cases {
            assert_eq!(
                is_exported(export_to, default, owner, client),
                *visible,
                "exportTo {export_to:?} (default {default:?}) of {owner} seen from {client}"
            );
        }
    }

    #[test]
    fn annotation_lists_are_comma_separated() {
        let annotations = [(EXPORT_TO_ANNOTATION.to_owned(), ". , edge".to_owned())].into();
        assert_eq!(from_annotation(Some(&annotations)), [".", "edge"]);
        assert!(from_annotation(None).is_empty());
    }
}
