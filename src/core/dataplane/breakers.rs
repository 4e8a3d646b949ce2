//! Circuit breakers, as Envoy's cluster-wide thresholds (priority DEFAULT): how many upstream
//! connections, requests waiting for one, requests in flight and retries in flight a cluster
//! may have. A request over a limit is refused at once with a 503 marked
//! `x-envoy-overloaded`, rather than queued without bound behind a failing backend.
//!
//! HTTP/1.1 carries one request per connection, so there a request in flight holds one of
//! `max_connections`; beyond it up to `max_pending_requests` wait for one. HTTP/2 multiplexes,
//! so only `max_requests` limits it.

use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;

use super::{refuse_leftovers, CompileError};

/// A cluster's limits (Envoy's defaults: 1024, 1024, 1024 and 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// What to do with a request that wants an HTTP/1.1 connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A connection is free within `max_connections`.
    Go,
    /// Wait for one (within `max_pending_requests`).
    Wait,
    /// Refuse: the cluster is overloaded.
    Overflow,
}

impl Limits {
    /// Compiles a cluster's `circuit_breakers`: thresholds of priority DEFAULT only (what
    /// Meridian sets); anything else is refused by name.
    pub fn compile(breakers: &CircuitBreakers, resource: &str) -> Result<Limits, CompileError> {
        let mut rest = breakers.clone();
        let mut limits = Limits::default();
        for (i, mut threshold) in std::mem::take(&mut rest.thresholds).into_iter().enumerate() {
            let field = format!("circuit_breakers.thresholds[{i}]");
            if threshold.priority != RoutingPriority::Default as i32 {
                return Err(CompileError::new(
                    resource,
                    format!("{field}.priority"),
                    "only DEFAULT is supported by meridian proxy",
                ));
            }
            let take = |value: &mut Option<envoy_types::pb::google::protobuf::UInt32Value>,
                        into: &mut u32| {
                if let Some(v) = value.take() {
                    *into = v.value;
                }
            };
            take(&mut threshold.max_connections, &mut limits.max_connections);
            take(
                &mut threshold.max_pending_requests,
                &mut limits.max_pending_requests,
            );
            take(&mut threshold.max_requests, &mut limits.max_requests);
            take(&mut threshold.max_retries, &mut limits.max_retries);
            refuse_leftovers(&threshold, resource, &field)?;
        }
        refuse_leftovers(&rest, resource, "circuit_breakers")?;
        Ok(limits)
    }

    /// A new request, with `in_flight` requests already going to the cluster.
    pub fn admit_request(&self, in_flight: u32) -> bool {
        in_flight < self.max_requests
    }

    /// A request that needs an HTTP/1.1 connection, with `connected` in use and `waiting`
    /// requests already waiting for one.
    pub fn admit_connection(&self, connected: u32, waiting: u32) -> Admission {
        if connected < self.max_connections {
            Admission::Go
        } else if waiting < self.max_pending_requests {
            Admission::Wait
        } else {
            Admission::Overflow
        }
    }

    /// A retry, with `retrying` retries of the cluster's requests already in flight.
    pub fn admit_retry(&self, retrying: u32) -> bool {
        retrying < self.max_retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn limits(connections: u32, pending: u32) -> Limits {
        Limits::compile(
            &CircuitBreakers {
                thresholds: vec![Thresholds {
                    max_connections: Some(UInt32Value { value: connections }),
                    max_pending_requests: Some(UInt32Value { value: pending }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "Cluster c",
        )
        .unwrap()
    }

    #[test]
    fn connections_then_waiting_room_then_overflow() {
        let l = limits(1, 1);
        assert_eq!(l.max_requests, 1024, "unset limits keep Envoy's defaults");
        assert_eq!(l.admit_connection(0, 0), Admission::Go);
        assert_eq!(l.admit_connection(1, 0), Admission::Wait);
        assert_eq!(l.admit_connection(1, 1), Admission::Overflow);
        let none = limits(0, 0);
        assert_eq!(none.admit_connection(0, 0), Admission::Overflow);
        assert!(l.admit_request(1023) && !l.admit_request(1024));
        assert!(l.admit_retry(2) && !l.admit_retry(3));
    }

    #[test]
    fn other_priorities_and_budgets_are_refused_by_name() {
        let high = CircuitBreakers {
            thresholds: vec![Thresholds {
                priority: RoutingPriority::High as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let error = Limits::compile(&high, "Cluster c").unwrap_err();
        assert_eq!(error.field, "circuit_breakers.thresholds[0].priority");
        let tracked = CircuitBreakers {
            thresholds: vec![Thresholds {
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let error = Limits::compile(&tracked, "Cluster c").unwrap_err();
        assert!(error.message.contains("trackRemaining"), "{error}");
    }
}
