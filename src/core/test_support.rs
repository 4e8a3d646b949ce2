//! Helpers shared by the core's unit tests.

use std::collections::BTreeMap;

use super::manifest::parse_documents;
use super::model::Model;

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A model of every object in `yaml` (objects without a namespace get `namespace`).
pub fn model_of(yaml: &str, namespace: &str) -> Model {
    let mut model = Model::default();
    for object in parse_documents(yaml, namespace).unwrap() {
        model.apply(object);
    }
    model
}
