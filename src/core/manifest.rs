//! Parsing Kubernetes-style multi-document YAML into input objects.
//!
//! Errors name the document (0-based index within the file) and the field path, so an operator
//! can find the mistake without reading the whole file.

use serde::de::DeserializeOwned;

use super::model::tls::TlsSecret;
use super::model::{InputObject, ObjectKey};
use crate::api::API_VERSION;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document}: invalid YAML: {message}")]
    Yaml { document: usize, message: String },
    #[error("document {document}: missing `apiVersion` or `kind`")]
    MissingKind { document: usize },
    #[error("document {document}: unsupported kind {api_version}/{kind}")]
    UnsupportedKind {
        document: usize,
        api_version: String,
        kind: String,
    },
    #[error("document {document} ({kind} {name}): field `{path}`: {message}")]
    Field {
        document: usize,
        kind: String,
        name: String,
        path: String,
        message: String,
    },
    #[error("document {document} ({kind}): metadata.name is required")]
    MissingName { document: usize, kind: String },
    #[error("line {line}: brackets nested deeper than {MAX_FLOW_DEPTH}")]
    TooDeep { line: usize },
}

/// How deep `[` and `{` may nest. The YAML parser takes time quadratic in the nesting (100,000
/// brackets: 20 s), and deserialization gives up at 128 levels anyway, so deeper text is
/// refused before it is parsed.
pub const MAX_FLOW_DEPTH: usize = 128;

/// Parses every document of one file. Empty documents are skipped. Objects without a
/// namespace get `default_namespace` (as `kubectl apply` would), except cluster-scoped kinds.
pub fn parse_documents(
    text: &str,
    default_namespace: &str,
) -> Result<Vec<InputObject>, ManifestError> {
    check_flow_depth(text)?;
    let mut objects = Vec::new();
    for (document, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: serde_yaml::Value =
            serde::Deserialize::deserialize(doc).map_err(|e| ManifestError::Yaml {
                document,
                message: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        objects.push(parse_object(document, value, default_namespace)?);
    }
    Ok(objects)
}

/// Refuses text whose flow collections nest deeper than [`MAX_FLOW_DEPTH`], in one pass.
/// Brackets inside quoted scalars and comments do not count; it may over-count brackets in
/// plain or block scalars, which only matters past 128 unclosed ones.
fn check_flow_depth(text: &str) -> Result<(), ManifestError> {
    let mut depth = 0usize;
    let mut line = 1;
    let mut chars = text.chars().peekable();
    let mut previous = '\n';
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '#' if previous.is_whitespace() => while chars.next_if(|&c| c != '\n').is_some() {},
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '\'' if !previous.is_alphanumeric() => {
                while let Some(c) = chars.next() {
                    match c {
                        '\'' if chars.next_if_eq(&'\'').is_none() => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(ManifestError::TooDeep { line });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        previous = c;
    }
    Ok(())
}

fn parse_object(
    document: usize,
    value: serde_yaml::Value,
    default_namespace: &str,
) -> Result<InputObject, ManifestError> {
    let field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        return Err(ManifestError::MissingKind { document });
    };
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .ok_or_else(|| ManifestError::MissingName {
            document,
            kind: kind.clone(),
        })?;
    // Named as validation errors and `/debug/problems` name objects: `namespace/name`.
    let namespace = match kind.as_str() {
        "MemberCluster" | "Node" => String::new(),
        _ => value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(default_namespace)
            .to_owned(),
    };
    let key = ObjectKey::new(namespace, name).to_string();
    let typed = Typed {
        document,
        kind: &kind,
        name: &key,
    };
    let mut object = match (api_version.as_str(), kind.as_str()) {
        (API_VERSION, "AccessPoint") => InputObject::AccessPoint(typed.parse(value)?),
        (API_VERSION, "MemberCluster") => InputObject::MemberCluster(typed.parse(value)?),
        (API_VERSION, "NameService") => InputObject::NameService(typed.parse(value)?),
        ("v1", "Service") => InputObject::Service(typed.parse(value)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => InputObject::EndpointSlice(typed.parse(value)?),
        ("apps/v1", "Deployment") => InputObject::Deployment(typed.parse(value)?),
        ("v1", "Node") => InputObject::Node(typed.parse(value)?),
        ("v1", "Secret") => {
            let secret: k8s_openapi::api::core::v1::Secret = typed.parse(value)?;
            InputObject::Secret(TlsSecret::from(secret))
        }
        _ => {
            return Err(ManifestError::UnsupportedKind {
                document,
                api_version,
                kind,
            })
        }
    };
    default_namespace_of(&mut object, default_namespace);
    Ok(object)
}

struct Typed<'a> {
    document: usize,
    kind: &'a str,
    name: &'a str,
}

impl Typed<'_> {
    fn parse<T: DeserializeOwned>(&self, value: serde_yaml::Value) -> Result<T, ManifestError> {
        serde_path_to_error::deserialize(value).map_err(|e| ManifestError::Field {
            document: self.document,
            kind: self.kind.to_owned(),
            name: self.name.to_owned(),
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })
    }
}

fn default_namespace_of(object: &mut InputObject, default_namespace: &str) {
    if let InputObject::MemberCluster(_) | InputObject::Node(_) = object {
        return;
    }
    let meta = object.metadata_mut();
    if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some(default_namespace.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_defaults_namespace() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["127.0.0.1"]}]
ports: [{name: http, port: 8080}]
---
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: east}
spec: {zone: us-east-1a, region: us-east-1}
"#;
        let objects = parse_documents(text, "default").unwrap();
        assert_eq!(objects.len(), 3);
        assert_eq!(objects[0].key().to_string(), "default/web");
        assert_eq!(objects[1].key().to_string(), "shop/web-1");
        assert_eq!(objects[2].key().to_string(), "east");
    }

    #[test]
    fn field_errors_name_document_object_and_path() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: ok}
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template:
    virtualServices:
    - metadata: {name: shop}
      spec:
        hosts: [shop.example.com]
        http:
        - route:
          - destination: {host: web}
            weight: "ninety"
"#;
        let err = parse_documents(text, "default").unwrap_err();
        let ManifestError::Field {
            document,
            kind,
            name,
            path,
            ..
        } = &err
        else {
            panic!("unexpected error {err}");
        };
        assert_eq!(
            (*document, kind.as_str(), name.as_str()),
            (1, "AccessPoint", "default/shop")
        );
        assert_eq!(
            path,
            "spec.template.virtualServices[0].spec.http[0].route[0].weight"
        );
    }

    #[test]
    fn parse_and_validation_errors_name_an_object_the_same_way() {
        let text = "apiVersion: meridian.dev/v1alpha1\nkind: AccessPoint\nmetadata: {name: web, namespace: apps}\nspec: {nope: 1}\n";
        let err = parse_documents(text, "default").unwrap_err().to_string();
        assert!(err.contains("(AccessPoint apps/web)"), "{err}");
        let cluster = "apiVersion: meridian.dev/v1alpha1\nkind: MemberCluster\nmetadata: {name: east}\nspec: {nope: 1}\n";
        let err = parse_documents(cluster, "default").unwrap_err().to_string();
        assert!(err.contains("(MemberCluster east)"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_before_the_quadratic_parse() {
        for open in ["[", "{a: "] {
            let text = format!("a: {}", open.repeat(100_000));
            let started = std::time::Instant::now();
            let err = parse_documents(&text, "d").unwrap_err();
            assert!(matches!(err, ManifestError::TooDeep { line: 1 }), "{err}");
            // Refused in one pass; the parser would take tens of seconds.
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
        }
        // Quoted brackets and comments do not count; real nesting up to the limit parses.
        let quoted = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations: {{a: \"{0}\", b: '{0}'}} # {0}\nspec: {{ports: [{{port: 80}}]}}\n",
            "[".repeat(500)
        );
        assert_eq!(parse_documents(&quoted, "d").unwrap().len(), 1);
        let nested = format!("a: {}{}", "[".repeat(100), "]".repeat(100));
        assert!(!matches!(
            parse_documents(&nested, "d"),
            Err(ManifestError::TooDeep { .. })
        ));
    }

    #[test]
    fn alias_bombs_are_refused_quickly() {
        // "Billion laughs": nine levels of nine aliases each would expand to 9^9 strings.
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for level in b'b'..=b'i' {
            let (this, prev) = (level as char, (level - 1) as char);
            let refs = vec![format!("*{prev}"); 9].join(",");
            text.push_str(&format!("{this}: &{this} [{refs}]\n"));
        }
        let text = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\n{text}");
        let started = std::time::Instant::now();
        let error = parse_documents(&text, "d").unwrap_err().to_string();
        assert!(error.contains("repetition limit"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn unknown_fields_are_errors_not_silence() {
        let text = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec:
        servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*"], tsl: {}}]
"#;
        let err = parse_documents(text, "default").unwrap_err().to_string();
        assert!(
            err.contains("spec.template.gateways[0].spec.servers[0]"),
            "{err}"
        );
        assert!(err.contains("tsl"), "{err}");
    }

    #[test]
    fn unsupported_kind_and_bad_yaml_are_reported() {
        let err =
            parse_documents("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "d").unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedKind { .. }));
        let err = parse_documents("a: [1, 2\n", "d").unwrap_err();
        assert!(matches!(err, ManifestError::Yaml { document: 0, .. }));
    }
}
