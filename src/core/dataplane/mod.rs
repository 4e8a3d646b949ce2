//! What a data plane computes from the xDS it receives, without any I/O: route tables compiled
//! once per route configuration (host lookup, ordered matchers with precompiled regexes, the
//! action of each route) and endpoint choice per cluster. `meridian proxy` is the I/O around
//! these; they are tested here with plain `#[test]`s.
//!
//! Every field Meridian may set is either honoured or refused with a [`CompileError`] that
//! names the resource and field (the proxy NACKs with it): nothing is silently ignored.

pub mod balancer;
pub mod breakers;
pub mod conntrack;
pub mod haproxy;
pub mod l4;
pub mod listeners;
pub mod maglev;
pub mod outlier;
pub mod proxy_protocol;
pub mod ring_hash;
pub mod routes;
pub mod secrets;

use prost::{Message, Name};

/// A map looked up per request, keyed by names and addresses from the control plane: hashed
/// with foldhash (seeded per process) rather than SipHash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use crate::core::json::any_to_json;

/// Why a resource cannot be honoured: the resource, the field path and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct CompileError {
    pub resource: String,
    pub field: String,
    pub message: String,
}

impl CompileError {
    pub fn new(
        resource: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> CompileError {
        CompileError {
            resource: resource.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Refuses `rest` (a message with every honoured field taken out) when anything is left in
/// it, naming the fields.
pub(crate) fn refuse_leftovers<M: Message + Name + Default + PartialEq>(
    rest: &M,
    resource: &str,
    field: &str,
) -> Result<(), CompileError> {
    refuse_leftovers_of("meridian proxy", rest, resource, field)
}

/// [`refuse_leftovers`], saying which of Meridian's data planes refuses them.
pub(crate) fn refuse_leftovers_of<M: Message + Name + Default + PartialEq>(
    program: &str,
    rest: &M,
    resource: &str,
    field: &str,
) -> Result<(), CompileError> {
    if *rest == M::default() {
        return Ok(());
    }
    let any = envoy_types::pb::google::protobuf::Any {
        type_url: M::type_url(),
        value: rest.encode_to_vec(),
    };
    let names: Vec<String> = match any_to_json(&any) {
        Ok(serde_json::Value::Object(map)) => {
            map.keys().filter(|k| *k != "@type").cloned().collect()
        }
        _ => vec![M::NAME.to_owned()],
    };
    // At the top of a resource the leftover fields are the path; inside a field, the message
    // names them.
    if field.is_empty() {
        return Err(CompileError::new(
            resource,
            names.join(", "),
            format!("not supported by {program}"),
        ));
    }
    Err(CompileError::new(
        resource,
        field,
        format!("not supported by {program}: {}", names.join(", ")),
    ))
}
