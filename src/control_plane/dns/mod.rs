//! DNS at the edge of the control plane: the authoritative server answering NameService zones
//! from the pure records in `core::dns`, and the RFC 2136 client that pushes the same records to
//! an external primary.

pub mod server;
pub mod update;
