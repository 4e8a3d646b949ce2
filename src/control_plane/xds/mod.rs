//! The xDS edge: ADS protocol state machines (sans-IO) and the gRPC server that drives them.

pub mod delta;
pub mod identity;
pub mod load_stats;
pub mod lrs;
pub mod polling;
pub mod rest;
pub mod server;
pub mod sotw;
pub mod status;
pub mod translator;

#[cfg(test)]
mod session_proptests;
#[cfg(test)]
mod test_support;
