//! The index: a synchronous store fed by providers with `apply`/`delete`, publishing immutable
//! snapshots of accepted input on a `tokio::sync::watch` channel.
//!
//! Architecture Invariant: an AccessPoint that fails validation never replaces its last
//! accepted version; the snapshot always holds only accepted objects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::core::model::{InputObject, Kind, Model, ObjectKey};
use crate::core::validate::{validate_access_point, FieldError};

/// An immutable view of accepted input, numbered by generation.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub model: Model,
    /// When this snapshot was published (for convergence metrics).
    pub published_at: Instant,
}

pub struct Index {
    model: Model,
    rejected: BTreeMap<ObjectKey, Vec<FieldError>>,
    generation: u64,
    dirty: bool,
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Index {
    pub fn new() -> (Index, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot {
            generation: 0,
            model: Model::default(),
            published_at: Instant::now(),
        }));
        let index = Index {
            model: Model::default(),
            rejected: BTreeMap::new(),
            generation: 0,
            dirty: false,
            tx,
        };
        (index, rx)
    }

    /// Applies an object. An invalid AccessPoint is rejected with its field errors and the
    /// previously accepted version (if any) stays in force.
    pub fn apply(&mut self, object: InputObject) -> Result<(), Vec<FieldError>> {
        let key = object.key();
        if let InputObject::AccessPoint(ap) = &object {
            let errors = validate_access_point(&ap.spec);
            if !errors.is_empty() {
                self.rejected.insert(key, errors.clone());
                return Err(errors);
            }
            self.rejected.remove(&key);
        }
        self.dirty |= self.model.apply(object);
        Ok(())
    }

    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) {
        if kind == Kind::AccessPoint {
            self.rejected.remove(key);
        }
        self.dirty |= self.model.delete(kind, key);
    }

    /// Publishes a new snapshot if anything changed since the last one; returns its generation.
    pub fn publish(&mut self) -> u64 {
        if self.dirty || self.generation == 0 {
            self.generation += 1;
            self.dirty = false;
            self.tx.send_replace(Arc::new(Snapshot {
                generation: self.generation,
                model: self.model.clone(),
                published_at: Instant::now(),
            }));
        }
        self.generation
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// AccessPoints whose latest version was rejected, with why.
    pub fn rejected(&self) -> &BTreeMap<ObjectKey, Vec<FieldError>> {
        &self.rejected
    }
}
