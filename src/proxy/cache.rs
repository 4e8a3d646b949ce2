//! `--config-cache DIR`: the last accepted resources on disk, so a proxy restarted while
//! Meridian is unreachable serves at once what it served before. The file holds one
//! `DiscoveryResponse` per type (length-delimited protobuf), written whole and atomically, with
//! mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;

use super::config::Accepted;

const FILE: &str = "meridian-proxy-config.pb";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a config cache: {source}")]
    Decode {
        path: String,
        source: prost::DecodeError,
    },
}

#[derive(Clone, Debug)]
pub struct ConfigCache {
    path: PathBuf,
}

impl ConfigCache {
    pub fn new(dir: &Path) -> ConfigCache {
        ConfigCache {
            path: dir.join(FILE),
        }
    }

    /// The cached responses, in the order to apply them; empty when there is no cache yet.
    pub fn load(&self) -> Result<Vec<DiscoveryResponse>, CacheError> {
        let shown = self.path.display().to_string();
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CacheError::Io {
                    path: shown,
                    source,
                })
            }
        };
        let mut rest = bytes.as_slice();
        let mut responses = Vec::new();
        while !rest.is_empty() {
            let response =
                DiscoveryResponse::decode_length_delimited(&mut rest).map_err(|source| {
                    CacheError::Decode {
                        path: shown.clone(),
                        source,
                    }
                })?;
            responses.push(response);
        }
        Ok(responses)
    }

    /// Writes what `accepted` holds, types in the order they apply (clusters, endpoints,
    /// listeners, routes).
    pub fn save(&self, accepted: &Accepted, order: &[&'static str]) -> Result<(), CacheError> {
        let mut bytes = Vec::new();
        for kind in order {
            let Some(resources) = accepted.raw.get(kind) else {
                continue;
            };
            let response = DiscoveryResponse {
                version_info: accepted.versions.get(kind).cloned().unwrap_or_default(),
                resources: resources.values().cloned().collect(),
                type_url: (*kind).to_owned(),
                ..Default::default()
            };
            response
                .encode_length_delimited(&mut bytes)
                .map_err(|e| CacheError::Io {
                    path: self.path.display().to_string(),
                    source: std::io::Error::other(e),
                })?;
        }
        let tmp = self.path.with_extension("tmp");
        let io = |source| CacheError::Io {
            path: tmp.display().to_string(),
            source,
        };
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|source| CacheError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}
