//! The control plane: turns AccessPoints into xDS for every gateway. Both modes (a manifest
//! directory, or Kubernetes) feed one [`index`] and share every edge here; only `standalone`
//! and `kubernetes` differ, and only in where input comes from and where status goes.
//!
//! Edges by concern: [`xds`] serving, [`certs`] (CA and certificates), [`dns`], [`rollouts`],
//! [`vips`], [`admin`] (HTTP admin and the gRPC ops API), [`bootstrap`] for Envoy, and
//! [`serve`], which starts the servers both modes run.

pub mod admin;
pub mod bootstrap;
pub mod certs;
pub mod dns;
pub mod fleet_acks;
pub mod index;
pub mod kubernetes;
pub mod metrics;
pub mod problems;
pub mod rollouts;
pub mod serve;
pub mod standalone;
pub mod vips;
pub mod xds;
