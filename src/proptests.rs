//! Property tests over the whole input path: any text given to the parser, and the fixture's
//! manifests with values swapped for hostile ones, go through parsing, validation (the index)
//! and translation without a panic, and what is accepted translates into what Envoy takes.

use proptest::prelude::*;
use proptest::sample::Index as Pick;

use crate::control_plane::index::Index;
use crate::core::expand::cluster_view;
use crate::core::json::any_to_json;
use crate::core::manifest::parse_documents;
use crate::core::model::ObjectKey;
use crate::core::resources::ResourceType;
use crate::core::translate::{translate, GatewayIdentity};

const SHOP: &str = include_str!("../tests/fixtures/shop.yaml");

/// Values that have broken parsers and validators before: huge and negative numbers, ports
/// out of range, empty and control-character strings, Unicode, regexes RE2 refuses, nesting.
fn hostile() -> impl Strategy<Value = serde_yaml::Value> {
    use serde_yaml::Value;
    prop_oneof![
        Just(Value::Number(u32::MAX.into())),
        Just(Value::Number(i64::MAX.into())),
        Just(Value::Number((-1).into())),
        Just(Value::Number(0.into())),
        Just(Value::Number(70000.into())),
        Just(Value::Number(serde_yaml::Number::from(1e300))),
        Just(Value::String(String::new())),
        Just(Value::String("a\0b".into())),
        Just(Value::String("bücher.example".into())),
        Just(Value::String("a b".into())),
        Just(Value::String("*".into())),
        Just(Value::String(".{0,1000}".into())),
        Just(Value::String("5000000000000000h5000000000000000h".into())),
        Just(Value::String("x".repeat(300))),
        Just(Value::Bool(true)),
        Just(Value::Null),
        Just(Value::Sequence(vec![])),
        Just(Value::Mapping(Default::default())),
        "[a-z0-9./*~-]{0,12}".prop_map(Value::String),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
    ]
}

/// Every scalar in `value`, as a path of steps from the root.
fn paths(
    value: &serde_yaml::Value,
    here: &mut Vec<serde_yaml::Value>,
    out: &mut Vec<Vec<serde_yaml::Value>>,
) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (key, child) in map {
                here.push(key.clone());
                paths(child, here, out);
                here.pop();
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                here.push(serde_yaml::Value::Number(i.into()));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => out.push(here.clone()),
    }
}

fn replace(value: &mut serde_yaml::Value, path: &[serde_yaml::Value], with: serde_yaml::Value) {
    let Some((step, rest)) = path.split_first() else {
        *value = with;
        return;
    };
    let child = match (value, step) {
        (serde_yaml::Value::Mapping(map), key) => map.get_mut(key),
        (serde_yaml::Value::Sequence(items), serde_yaml::Value::Number(n)) => {
            n.as_u64().and_then(|i| items.get_mut(i as usize))
        }
        _ => None,
    };
    if let Some(child) = child {
        replace(child, rest, with);
    }
}

/// The fixture with each (document, path) pick replaced by its hostile value.
fn mutated(mutations: &[(Pick, Pick, serde_yaml::Value)]) -> String {
    let mut documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(SHOP)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    for (document, at, with) in mutations {
        let count = documents.len();
        let document = &mut documents[document.index(count)];
        let mut all = Vec::new();
        paths(document, &mut Vec::new(), &mut all);
        let path = all[at.index(all.len())].clone();
        replace(document, &path, with.clone());
    }
    documents
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn any_text_parses_or_is_refused_without_a_panic(text in "(?s).{0,400}") {
        let _ = parse_documents(&text, "default");
    }

    #[test]
    fn hostile_values_are_refused_or_translate_into_what_envoy_takes(
        mutations in proptest::collection::vec((any::<Pick>(), any::<Pick>(), hostile()), 1..5)
    ) {
        let text = mutated(&mutations);
        let Ok(objects) = parse_documents(&text, "default") else { return Ok(()) };
        let (mut index, _) = Index::new();
        for object in objects {
            let _ = index.apply(object);
        }
        let view = cluster_view(index.model(), "local");
        let identity = GatewayIdentity {
            role: crate::core::translate::NodeRole::Gateway,
            xds: crate::core::translate::XdsTransport::Ads,
            gateway: ObjectKey::new("edge", "public"),
            cluster: "local".into(),
            zone: String::new(),
        };
        let translation = translate(&view, &identity);
        for kind in [ResourceType::Listener, ResourceType::Endpoint] {
            for resource in translation.config.resources(kind).values() {
                let json = any_to_json(&resource.body).unwrap().to_string();
                for port in json.split("\"portValue\":").skip(1) {
                    let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
                    let port: u64 = digits.parse().unwrap_or(0);
                    prop_assert!((1..=65535).contains(&port), "port {} in {}", port, json);
                }
            }
        }
    }
}
