//! Meridian: a federated Envoy xDS control plane. See `docs/ARCHITECTURE.md` for the code map.

pub mod ack_reports;
pub mod admin;
pub mod api;
pub mod bench;
pub mod bootstrap;
pub mod certs;
pub mod cli;
pub mod controller;
pub mod core;
pub mod crds;
pub mod dns_server;
pub mod dns_update;
pub mod fleet_acks;
pub mod index;
pub mod leader;
pub mod log_budget;
pub mod members;
pub mod metrics;
pub mod name_service_status;
pub mod ops;
pub mod provider;
pub mod rollouts;
pub mod serve;
pub mod standalone;
pub mod status_writer;
pub mod vips;
pub mod xds;

#[cfg(test)]
mod proptests;
