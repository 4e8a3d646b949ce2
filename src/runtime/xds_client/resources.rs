//! The resource types data planes ask for, and how a response's resources become compiled
//! plans: a state-of-the-world set (clusters, listeners), or resources that each stand alone
//! (endpoints, secrets). A resource that does not compile is rejected with its error and keeps
//! its previous version, as Envoy keeps a resource whose update it rejects.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

pub const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENERS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTES: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRETS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// `CDS`, `EDS`, `LDS`, `RDS` or `SDS`.
pub fn short_name(kind: &str) -> &'static str {
    match kind {
        CLUSTERS => "CDS",
        ENDPOINTS => "EDS",
        LISTENERS => "LDS",
        ROUTES => "RDS",
        SECRETS => "SDS",
        _ => "other",
    }
}

/// Compiles a state-of-the-world set of resources (clusters, listeners): each compiled one
/// with the `Any` it came from; one that does not compile is rejected (its error pushed) and
/// keeps its previous version.
pub fn compile_whole_set<M: Message + Default, P: Clone>(
    resources: &[Any],
    kind: &str,
    (old_plans, old_raw): (&BTreeMap<String, P>, &BTreeMap<String, Any>),
    name_of: impl Fn(&M) -> String,
    compile: impl Fn(&M) -> Result<P, String>,
    errors: &mut Vec<String>,
) -> (BTreeMap<String, P>, BTreeMap<String, Any>) {
    let mut plans = BTreeMap::new();
    let mut raw = BTreeMap::new();
    for any in resources {
        let message = match decode::<M>(any, kind) {
            Ok(message) => message,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        let name = name_of(&message);
        match compile(&message) {
            Ok(plan) => {
                raw.insert(name.clone(), any.clone());
                plans.insert(name, plan);
            }
            Err(error) => {
                errors.push(error);
                if let (Some(old), Some(old_any)) = (old_plans.get(&name), old_raw.get(&name)) {
                    raw.insert(name.clone(), old_any.clone());
                    plans.insert(name, old.clone());
                }
            }
        }
    }
    (plans, raw)
}

/// Compiles resources that each stand alone (endpoints, secrets): one that compiles replaces
/// its previous version, with the `Any` it came from; one that does not is rejected (its error
/// pushed) and leaves its previous version in place.
pub fn compile_each<M: Message + Default, P>(
    resources: &[Any],
    kind: &str,
    compile: impl Fn(M) -> Result<(String, P), String>,
    (plans, raw): (&mut BTreeMap<String, P>, &mut BTreeMap<String, Any>),
    errors: &mut Vec<String>,
) {
    for any in resources {
        match decode::<M>(any, kind).and_then(&compile) {
            Ok((name, plan)) => {
                raw.insert(name.clone(), any.clone());
                plans.insert(name, plan);
            }
            Err(error) => errors.push(error),
        }
    }
}

pub fn decode<M: Message + Default>(any: &Any, kind: &str) -> Result<M, String> {
    decode_value(value_of(any, kind)?, kind)
}

/// The encoded resource in `any`, which must be of `kind`.
pub fn value_of<'a>(any: &'a Any, kind: &str) -> Result<&'a [u8], String> {
    if any.type_url != kind {
        return Err(format!("a {} in a {kind} response", any.type_url));
    }
    Ok(&any.value)
}

pub fn decode_value<M: Message + Default>(value: &[u8], kind: &str) -> Result<M, String> {
    M::decode(value).map_err(|e| format!("undecodable {kind}: {e}"))
}

/// Resources that compiled but could not be applied (a listener that cannot bind), with why:
/// each is reported as `<kind> <name>: <field>: <why>` and keeps its previous version, or is
/// left out if it had none.
pub fn keep_previous<P: Clone>(
    failed: Vec<(String, String)>,
    (kind, field): (&str, &str),
    (plans, raw): (&mut BTreeMap<String, P>, &mut BTreeMap<String, Any>),
    (old_plans, old_raw): (&BTreeMap<String, P>, &BTreeMap<String, Any>),
    errors: &mut Vec<String>,
) {
    for (name, error) in failed {
        errors.push(format!("{kind} {name}: {field}: {error}"));
        match (old_plans.get(&name), old_raw.get(&name)) {
            (Some(old), Some(old_any)) => {
                raw.insert(name.clone(), old_any.clone());
                plans.insert(name, old.clone());
            }
            _ => {
                raw.remove(&name);
                plans.remove(&name);
            }
        }
    }
}

/// Subscribes `kind` to exactly `wanted`; `Some(kind)` when that changed what is asked for
/// (the type to follow with a request).
pub fn follow_by_name(
    kind: &'static str,
    wanted: BTreeSet<String>,
    names: &mut super::Names,
) -> Option<&'static str> {
    let changed = names.get(kind) != Some(&wanted);
    names.insert(kind, wanted);
    changed.then_some(kind)
}
