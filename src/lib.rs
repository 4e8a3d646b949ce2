//! Meridian: a federated Envoy xDS control plane. See `docs/ARCHITECTURE.md` for the code map.

pub mod api;
pub mod core;
pub mod index;
pub mod metrics;
pub mod xds;
