//! Route announcement through the operator's BIRD 2, the way MetalLB drives FRR: the VIPs this
//! node can serve are written to the file `bird.conf` includes, and `birdc configure` makes
//! BIRD read it — BIRD then announces or withdraws the host routes over its BGP sessions.
//!
//! The file is rewritten only when the set changes; a failed write or reconfiguration (BIRD
//! not running, a config it refuses) is retried every second and shown in `/ready`, while the
//! node keeps serving. On drain every VIP is withdrawn first (see `l4::run`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::L4State;
use crate::core::dataplane::l4::announce::{bird_config, servable};
use crate::runtime::log_budget::{bounded, LogBudget};

/// How often the servable set is looked at.
const POLL: Duration = Duration::from_millis(250);
/// A failed reconfiguration is retried this often.
const RETRY: Duration = Duration::from_secs(1);
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct BirdOptions {
    /// The file `bird.conf` includes.
    pub config: PathBuf,
    /// The `birdc` binary.
    pub birdc: PathBuf,
    /// BIRD's control socket (`birdc -s`); BIRD's default if unset.
    pub socket: Option<PathBuf>,
}

/// What BIRD was last told, and whether telling it failed since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announcement {
    pub announced: BTreeSet<IpAddr>,
    /// Why the last change did not reach BIRD (retried).
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum AnnounceError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("running {birdc}: {source}")]
    Spawn {
        birdc: String,
        source: std::io::Error,
    },
    #[error("birdc configure did not answer within {BIRDC_TIMEOUT:?}")]
    Timeout,
    #[error("birdc configure: {0}")]
    Refused(String),
}

/// The VIPs the node can serve now (none while draining).
fn wanted(state: &L4State, draining: bool) -> BTreeSet<IpAddr> {
    if draining {
        return BTreeSet::new();
    }
    let snapshot = state.snapshot.load();
    servable(
        snapshot
            .listeners
            .values()
            .map(|l| (l.address.ip(), snapshot.serving(&l.cluster) == "serving")),
    )
}

/// Keeps BIRD announcing what the node can serve until the node stops.
pub async fn run(
    state: Arc<L4State>,
    options: BirdOptions,
    draining: watch::Receiver<bool>,
    stopped: watch::Receiver<bool>,
) {
    static FAILED: LogBudget = LogBudget::new(1, Duration::from_secs(10));
    let mut applied: Option<BTreeSet<IpAddr>> = None;
    let work = async {
        loop {
            let wanted = wanted(&state, *draining.borrow());
            if applied.as_ref() != Some(&wanted) {
                match apply(&options, &wanted).await {
                    Ok(()) => {
                        let vips: Vec<String> = wanted.iter().map(IpAddr::to_string).collect();
                        tracing::info!(vips = %vips.join(" "), "announced over BGP");
                        state.set_announcement(Announcement {
                            announced: wanted.clone(),
                            error: None,
                        });
                        applied = Some(wanted);
                    }
                    Err(error) => {
                        if let Some(suppressed) = FAILED.allow() {
                            tracing::warn!(%error, suppressed, "cannot update BIRD; retrying");
                        }
                        state.set_announcement_error(error.to_string());
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = crate::runtime::stopped_signal(stopped) => {}
    }
}

async fn apply(options: &BirdOptions, vips: &BTreeSet<IpAddr>) -> Result<(), AnnounceError> {
    let path = &options.config;
    let shown = path.display().to_string();
    let temporary = path.with_extension("tmp");
    let written = tokio::fs::write(&temporary, bird_config(vips)).await;
    written
        .and(tokio::fs::rename(&temporary, path).await)
        .map_err(|source| AnnounceError::Write {
            path: shown,
            source,
        })?;
    let mut command = tokio::process::Command::new(&options.birdc);
    if let Some(socket) = &options.socket {
        command.arg("-s").arg(socket);
    }
    command.arg("configure").kill_on_drop(true);
    let output = tokio::time::timeout(BIRDC_TIMEOUT, command.output())
        .await
        .map_err(|_| AnnounceError::Timeout)?
        .map_err(|source| AnnounceError::Spawn {
            birdc: options.birdc.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    // birdc says "Reconfigured" (or that a reconfiguration is under way) when BIRD took the
    // new configuration; anything else is why not (no socket, a parse error).
    if text.contains("Reconfigured") || text.contains("Reconfiguration in progress") {
        return Ok(());
    }
    let why: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("BIRD ") && !l.starts_with("Reading"))
        .collect();
    Err(AnnounceError::Refused(bounded(&why.join("; ")).to_string()))
}
