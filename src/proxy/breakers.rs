//! A cluster's circuit breakers at run time: counters shared by every worker (Envoy's are
//! cluster-wide too) and a semaphore of HTTP/1.1 connection slots, admitted by the limits
//! `core::dataplane::breakers` compiles.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::core::dataplane::breakers::{Admission, Limits};

#[derive(Debug)]
pub struct Breakers {
    limits: Limits,
    in_flight: AtomicU32,
    waiting: AtomicU32,
    retrying: AtomicU32,
    connections: Arc<Semaphore>,
}

/// A request admitted to the cluster; it holds its place until dropped.
#[derive(Debug)]
pub struct Ticket {
    breakers: Arc<Breakers>,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.breakers.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry in flight.
#[derive(Debug)]
pub struct RetryTicket {
    breakers: Arc<Breakers>,
}

impl Drop for RetryTicket {
    fn drop(&mut self) {
        self.breakers.retrying.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Breakers {
    pub fn new(limits: Limits) -> Breakers {
        Breakers {
            limits,
            in_flight: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            retrying: AtomicU32::new(0),
            connections: Arc::new(Semaphore::new(limits.max_connections as usize)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Admits a request (`None`: overflow). HTTP/1.1 requests also take a connection slot,
    /// waiting for one within `max_pending_requests`.
    pub async fn admit(self: &Arc<Self>, http2: bool) -> Option<Ticket> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let ticket = |connection| Ticket {
            breakers: self.clone(),
            _connection: connection,
        };
        if !self.limits.admit_request(in_flight) {
            drop(ticket(None));
            return None;
        }
        if http2 {
            return Some(ticket(None));
        }
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Some(ticket(Some(permit)));
        }
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
        let admission = self
            .limits
            .admit_connection(self.limits.max_connections, waiting);
        let permit = match admission {
            Admission::Overflow => None,
            Admission::Go | Admission::Wait => Box::pin(self.connections.clone().acquire_owned())
                .await
                .ok(),
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match permit {
            Some(permit) => Some(ticket(Some(permit))),
            None => {
                drop(ticket(None));
                None
            }
        }
    }

    /// Admits a retry (`None`: `max_retries` are in flight).
    pub fn retry(self: &Arc<Self>) -> Option<RetryTicket> {
        let retrying = self.retrying.fetch_add(1, Ordering::Relaxed);
        let ticket = RetryTicket {
            breakers: self.clone(),
        };
        self.limits.admit_retry(retrying).then_some(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_cluster_queues_then_overflows_and_frees_its_places() {
        let breakers = Arc::new(Breakers::new(Limits {
            max_connections: 1,
            max_pending_requests: 1,
            ..Limits::default()
        }));
        let first = breakers.admit(false).await.expect("a free connection");
        let waiter = {
            let breakers = breakers.clone();
            tokio::spawn(async move { breakers.admit(false).await.is_some() })
        };
        tokio::task::yield_now().await;
        while breakers.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            breakers.admit(false).await.is_none(),
            "the waiting room is full"
        );
        // HTTP/2 needs no connection slot.
        assert!(breakers.admit(true).await.is_some());
        drop(first);
        assert!(
            waiter.await.unwrap(),
            "the waiting request got the connection"
        );
        assert_eq!(breakers.in_flight.load(Ordering::Relaxed), 0);
        let retries: Vec<_> = (0..3).filter_map(|_| breakers.retry()).collect();
        assert_eq!(retries.len(), 3);
        assert!(breakers.retry().is_none());
        drop(retries);
        assert!(breakers.retry().is_some());
    }
}
