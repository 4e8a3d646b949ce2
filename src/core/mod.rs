//! The pure core: model, expansion, validation and translation to Envoy resources.
//!
//! Architecture Invariant: nothing under `core` performs I/O or depends on an async runtime,
//! Kubernetes client, gRPC stack or socket; `tests/architecture.rs` enforces it.

pub mod duration;
pub mod expand;
pub mod json;
pub mod manifest;
pub mod model;
pub mod placement;
pub mod resources;
pub mod translate;
pub mod validate;
