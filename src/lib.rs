//! Meridian: a federated gateway platform. Programs over one pure core; see
//! `docs/ARCHITECTURE.md` for the code map and the layers `tests/architecture.rs` enforces.
//!
//! - [`api`] and [`core`]: the CRD types and the pure core (no I/O).
//! - [`runtime`]: I/O plumbing every program shares.
//! - [`control_plane`]: the xDS control plane (standalone and Kubernetes modes).
//! - [`proxy`]: `meridian proxy`, the L7 gateway fed by the same xDS.
//! - [`l4`]: `meridian l4`, the L4 node in front of the gateways, fed by the same xDS.
//! - [`haproxy`]: `meridian haproxy`, keeping a real HAProxy in line with the same xDS.
//! - [`node_agent`]: `meridian node-agent`, answering HAProxy's agent check on each node.
//! - [`bench`] and [`cli`]: benchmarks and the command line, on top.

pub mod api;
pub mod bench;
pub mod cli;
pub mod control_plane;
pub mod core;
pub mod haproxy;
pub mod l4;
pub mod node_agent;
pub mod proxy;
pub mod runtime;

#[cfg(test)]
mod proptests;
