//! The ops gRPC API (proto/meridian/ops/v1/ops.proto), served next to ADS.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::control_plane::xds::server::{OpsCaller, XdsState};
use crate::core::json::config_to_json;

pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("meridian.ops.v1");
}

pub struct OpsService {
    state: Arc<XdsState>,
}

impl OpsService {
    pub fn new(state: Arc<XdsState>) -> pb::ops_server::OpsServer<OpsService> {
        pb::ops_server::OpsServer::new(OpsService { state })
    }
}

/// The proxy-status table from the live registry, of the proxies `caller` may see.
pub fn proxy_status(state: &XdsState, caller: &OpsCaller) -> pb::ProxyStatusResponse {
    let proxies = state
        .fleet_proxies()
        .into_iter()
        .filter(|(_, p)| match caller {
            OpsCaller::Anyone => true,
            OpsCaller::Gateway(gateway) => p.gateway == gateway.to_string(),
        })
        .map(|(replica, p)| pb::Proxy {
            replica: replica.unwrap_or_default(),
            node_id: p.node_id,
            gateway: p.gateway,
            cluster: p.cluster,
            zone: p.zone,
            role: p.role.as_str().to_owned(),
            mode: p.mode.to_owned(),
            generation: p.generation,
            refresh_delay_ms: p.polling.as_ref().map_or(0, |s| s.refresh_delay_ms),
            last_poll_ms_ago: p.polling.as_ref().map_or(0, |s| s.last_poll_ms_ago),
            stopped_polling: p.polling.as_ref().is_some_and(|s| s.stopped),
            types: p
                .types
                .into_iter()
                .map(|t| pb::TypeSync {
                    r#type: t.kind,
                    state: serde_json::to_value(t.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    sent_version: t.sent_version.unwrap_or_default(),
                    acked_version: t.acked_version.unwrap_or_default(),
                    resources: t.resources as u32,
                    last_nack: t.last_nack.map(|n| n.message).unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    pb::ProxyStatusResponse {
        proxies,
        generation: state.snapshots.borrow().generation,
    }
}

/// What a connected node is served, as JSON; `None` if no such node is connected (that
/// `caller` may see).
pub fn config_dump(
    state: &XdsState,
    caller: &OpsCaller,
    node_id: &str,
) -> Option<Result<serde_json::Value, String>> {
    let identity = state.identity_in_fleet(node_id)?;
    if let OpsCaller::Gateway(gateway) = caller {
        if &identity.gateway != gateway {
            return None;
        }
    }
    let translation = state.config_for(&identity);
    Some(config_to_json(&translation.config).map_err(|e| e.to_string()))
}

fn refused(error: crate::control_plane::xds::identity::IdentityError) -> Status {
    Status::permission_denied(error.to_string())
}

#[tonic::async_trait]
impl pb::ops_server::Ops for OpsService {
    async fn proxy_status(
        &self,
        request: Request<pb::ProxyStatusRequest>,
    ) -> Result<Response<pb::ProxyStatusResponse>, Status> {
        let caller = self.state.ops_caller(&request).map_err(refused)?;
        Ok(Response::new(proxy_status(&self.state, &caller)))
    }

    async fn config_dump(
        &self,
        request: Request<pb::ConfigDumpRequest>,
    ) -> Result<Response<pb::ConfigDumpResponse>, Status> {
        let caller = self.state.ops_caller(&request).map_err(refused)?;
        let node = request.into_inner().node_id;
        match config_dump(&self.state, &caller, &node) {
            None => Err(Status::not_found(format!(
                "no connected proxy with node id {node:?}"
            ))),
            Some(Err(e)) => Err(Status::internal(e)),
            Some(Ok(json)) => Ok(Response::new(pb::ConfigDumpResponse {
                json: json.to_string(),
            })),
        }
    }
}
