//! The pure core: model, expansion, validation, translation to Envoy resources, reference
//! checking and AccessPoint status.
//!
//! Architecture Invariant: nothing under `core` performs I/O or depends on an async runtime,
//! Kubernetes client, gRPC stack or socket; `tests/architecture.rs` enforces it.

pub mod binding;
pub mod certificates;
pub mod dataplane;
pub mod dns;
pub mod duration;
pub mod expand;
pub mod federation;
pub mod hosts;
pub mod json;
pub mod manifest;
pub mod model;
pub mod node_agent;
pub mod node_subsets;
pub mod observed;
pub mod overrides;
pub mod placement;
pub mod quarantine;
pub mod refs;
pub mod resources;
pub mod rollout;
pub mod selector;
pub mod status;
#[cfg(test)]
pub(crate) mod test_support;
pub mod translate;
pub mod validate;
pub mod vip_allocation;
