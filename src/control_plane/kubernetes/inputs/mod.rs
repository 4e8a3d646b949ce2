//! The Kubernetes provider: kube-runtime watchers on Meridian's kinds plus Service,
//! EndpointSlice and Namespace, feeding the same index standalone mode feeds.
//!
//! Watch tasks only decode and forward ([`Update`]); one task owns the [`Scope`] and the
//! index, so applying updates stays synchronous and ordered.

pub mod endpoint_slice;
pub mod scope;
pub mod watch;

use std::collections::BTreeMap;

use crate::control_plane::certs::manager::IssuedSecrets;
use crate::control_plane::rollouts::PinUpdate;
use crate::control_plane::vips::VipUpdate;
use crate::core::model::{InputObject, Kind, ObjectKey};
pub use scope::{Scope, Watched};

/// One change a watch observed. (Short-lived; boxing would only add noise.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Update {
    Apply(InputObject),
    Delete(Kind, ObjectKey),
    Namespace {
        name: String,
        labels: BTreeMap<String, String>,
    },
    NamespaceGone(String),
    /// The watch (re)started listing; what it does not list again is gone.
    RelistStarted(Watched),
    /// The list finished; from now on changes stream in.
    RelistDone(Watched),
    /// A member cluster was disconnected: drop what was read from it.
    MemberGone(String),
    /// Every member's last known state kept in the hub has been fed (see
    /// `members::cache`); serving may begin.
    MembersRestored,
    /// The certificate manager's current set of issued certificates.
    Issued(IssuedSecrets),
    /// The VIP allocator's current table.
    Vips(VipUpdate),
    /// The revision each cluster is served, from the rollout task.
    Pins(PinUpdate),
}

impl From<PinUpdate> for Update {
    fn from(pins: PinUpdate) -> Update {
        Update::Pins(pins)
    }
}

impl From<VipUpdate> for Update {
    fn from(vips: VipUpdate) -> Update {
        Update::Vips(vips)
    }
}

impl From<IssuedSecrets> for Update {
    fn from(issued: IssuedSecrets) -> Update {
        Update::Issued(issued)
    }
}

impl Scope {
    /// Applies one update to the scope and, through it, the index.
    pub fn update(&mut self, index: &mut crate::control_plane::index::Index, update: Update) {
        match update {
            Update::Apply(object) => self.apply(index, object),
            Update::Delete(kind, key) => self.delete(index, kind, &key),
            Update::Namespace { name, labels } => self.apply_namespace(index, &name, labels),
            Update::NamespaceGone(name) => self.delete_namespace(index, &name),
            Update::RelistStarted(watched) => self.begin_relist(watched),
            Update::RelistDone(watched) => self.end_relist(index, watched),
            Update::MemberGone(cluster) => self.drop_member(index, &cluster),
            Update::MembersRestored => {}
            Update::Issued(issued) => index.set_issued(issued.secrets, issued.errors),
            Update::Vips(vips) => index.set_vips(vips.table, vips.errors),
            Update::Pins(PinUpdate(pins)) => index.set_pins(pins),
        }
    }
}
