//! Meridian: a federated Envoy xDS control plane. See `docs/ARCHITECTURE.md` for the code map.

pub mod admin;
pub mod api;
pub mod bootstrap;
pub mod cli;
pub mod core;
pub mod crds;
pub mod index;
pub mod metrics;
pub mod ops;
pub mod provider;
pub mod standalone;
pub mod xds;
