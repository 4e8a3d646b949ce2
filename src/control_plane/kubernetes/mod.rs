//! Everything only Kubernetes mode has: the watchers that feed the index from the API server,
//! the lease that elects a leader, and the leader's writers (AccessPoint and NameService status,
//! member-cluster objects), the acknowledgement and proxy-status reports replicas exchange, and
//! the CA kept in a Secret. `controller` wires them to the shared edges above `core`.

pub mod ack_reports;
pub mod ca_store;
pub mod controller;
pub mod inputs;
pub mod leader;
pub mod members;
pub mod name_service_status;
pub mod proxy_reports;
pub mod rollout_actions;
pub mod status_drift;
pub mod status_writer;
