//! Canonical proto3 JSON for served resources (config dumps, snapshot tests, diffs).
//!
//! Uses the descriptor set build.rs compiles from the Envoy API protos vendored in
//! `proto/envoy-api` (the same version as the `envoy-types` Rust types), so nested `Any` fields
//! (the HTTP connection manager inside a listener, the router filter) render as readable
//! objects, not base64.

use std::sync::LazyLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static ENVOY_API_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_api.bin"));

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(ENVOY_API_DESCRIPTORS).map_err(|e| e.to_string()));

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("xDS descriptor set is unreadable: {0}")]
    Descriptors(String),
    #[error("no descriptor for {0}")]
    UnknownType(String),
    #[error("cannot decode {type_url}: {source}")]
    Decode {
        type_url: String,
        source: prost::DecodeError,
    },
    #[error("cannot render JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("not a valid {message} in proto3 JSON: {reason}")]
    Parse { message: String, reason: String },
}

/// Renders an `Any` (type URL + bytes) as proto3 JSON with an `@type` field.
pub fn any_to_json(any: &Any) -> Result<serde_json::Value, JsonError> {
    let pool = POOL
        .as_ref()
        .map_err(|e| JsonError::Descriptors(e.clone()))?;
    let message_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = pool
        .get_message_by_name(message_name)
        .ok_or_else(|| JsonError::UnknownType(any.type_url.clone()))?;
    let message = DynamicMessage::decode(descriptor, any.value.as_slice()).map_err(|source| {
        JsonError::Decode {
            type_url: any.type_url.clone(),
            source,
        }
    })?;
    let options = SerializeOptions::new().skip_default_fields(true);
    let mut value = message.serialize_with_options(serde_json::value::Serializer, &options)?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(
            "@type".into(),
            serde_json::Value::String(any.type_url.clone()),
        );
    }
    Ok(value)
}

/// Reads proto3 JSON (as Envoy writes it: either field spelling, `@type` on `Any`) into `T`,
/// the message the descriptor set calls `full_name`. Fields this API version does not know
/// are skipped, as a newer client may send them.
pub fn message_from_json<T: prost::Message + Default>(
    full_name: &str,
    json: &[u8],
) -> Result<T, JsonError> {
    let pool = POOL
        .as_ref()
        .map_err(|e| JsonError::Descriptors(e.clone()))?;
    let descriptor = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.to_owned()))?;
    let parse_error = |reason: String| JsonError::Parse {
        message: full_name.to_owned(),
        reason,
    };
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize_with_options(descriptor, &mut deserializer, &options)
        .map_err(|e| parse_error(e.to_string()))?;
    deserializer.end().map_err(|e| parse_error(e.to_string()))?;
    message
        .transcode_to::<T>()
        .map_err(|e| parse_error(e.to_string()))
}

/// Replaces a Secret's private key with `[redacted]`, as Envoy's own config dump does.
fn redact_private_key(secret: &mut serde_json::Value) {
    if let Some(key) = secret.pointer_mut("/tlsCertificate/privateKey") {
        *key = serde_json::json!({ "inlineString": "[redacted]" });
    }
}

/// Renders a whole gateway configuration: `{ "CDS": {name: resource}, "EDS": …, … }`.
pub fn config_to_json(
    config: &super::resources::GatewayConfig,
) -> Result<serde_json::Value, JsonError> {
    let mut out = serde_json::Map::new();
    for kind in super::resources::ResourceType::ALL {
        let resources = config.resources(kind);
        if resources.is_empty() {
            continue;
        }
        let mut by_name = serde_json::Map::new();
        for (name, resource) in resources {
            let mut json = any_to_json(&resource.body)?;
            if kind == super::resources::ResourceType::Secret {
                redact_private_key(&mut json);
            }
            by_name.insert(name.clone(), json);
        }
        out.insert(
            kind.short_name().to_owned(),
            serde_json::Value::Object(by_name),
        );
    }
    Ok(serde_json::Value::Object(out))
}
