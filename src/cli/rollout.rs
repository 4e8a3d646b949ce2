//! `meridian approve`, `meridian rollout status|pause|resume|undo` and `meridian diff`: the
//! operator's side of staged rollouts, through a standalone Meridian's admin API.

use anyhow::{bail, Context};

use crate::api::rollout::{Approval, RolloutControls, RolloutStatus};
use crate::api::AccessPoint;
use crate::core::rollout::diff::GatewayDiff;
use crate::core::rollout::fleet::Command;

/// Which AccessPoint, on which Meridian.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The AccessPoint's name.
    pub access_point: String,
    /// Its namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Meridian's admin address (standalone mode).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Kubernetes mode: read and write the AccessPoint's status through the API server, as
    /// the user of the kubeconfig (approvers need `patch` on `accesspoints/status`).
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubeconfig for --kubernetes (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

impl Target {
    fn url(&self, rest: &str) -> String {
        let base = if self.admin.contains("://") {
            self.admin.clone()
        } else {
            format!("http://{}", self.admin)
        };
        format!(
            "{}/rollouts/{}/{}{rest}",
            base.trim_end_matches('/'),
            self.namespace,
            self.access_point
        )
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// Where the rollout stands: revision, phase, each stage and each cluster.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move no further cluster to a new revision until resumed.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Continue a paused rollout.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Send every cluster back to the last revision that reached all of them.
    Undo {
        #[command(flatten)]
        target: Target,
    },
}

/// Approves `stage` of the rollout in progress (recorded with `by`, default $USER).
pub async fn approve(target: &Target, stage: &str, by: Option<String>) -> anyhow::Result<()> {
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    if target.kubernetes {
        let command = Command::Approve {
            stage: stage.to_owned(),
            by: Some(by),
        };
        kube_act(target, command).await?;
    } else {
        let query = [("stage", stage), ("by", by.as_str())];
        post(target, "approve", &query).await?;
    }
    println!(
        "approved stage {stage} of {}/{}",
        target.namespace, target.access_point
    );
    Ok(())
}

pub async fn run(command: RolloutCommand) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Status { target, json } => {
            let status: RolloutStatus = if target.kubernetes {
                kube_status(&target).await?.1
            } else {
                get(&target, "").await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", describe(&target, &status));
            }
            Ok(())
        }
        RolloutCommand::Pause { target } => act(&target, Command::Pause, "paused").await,
        RolloutCommand::Resume { target } => act(&target, Command::Resume, "resumed").await,
        RolloutCommand::Undo { target } => act(&target, Command::Undo, "undone").await,
    }
}

/// Prints what each gateway of `cluster` (default: every placed cluster) would be served if
/// it took the current revision.
pub async fn diff(target: &Target, cluster: Option<&str>, json: bool) -> anyhow::Result<()> {
    if target.kubernetes {
        bail!("diff needs the controller's model: run it against a replica's admin address (kubectl port-forward deploy/meridian 9090), without --kubernetes");
    }
    let rest = match cluster {
        Some(c) => format!("/diff?cluster={c}"),
        None => "/diff".to_owned(),
    };
    let diffs: Vec<GatewayDiff> = get(target, &rest).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&diffs)?);
        return Ok(());
    }
    for gateway in &diffs {
        if gateway.changes.is_empty() {
            println!(
                "cluster {} gateway {}: no change",
                gateway.cluster, gateway.gateway
            );
            continue;
        }
        for change in &gateway.changes {
            println!(
                "cluster {} gateway {}: {} {} {}",
                gateway.cluster, gateway.gateway, change.kind, change.name, change.change
            );
            print!("{}", change.diff);
        }
    }
    Ok(())
}

async fn act(target: &Target, command: Command, done: &str) -> anyhow::Result<()> {
    if target.kubernetes {
        kube_act(target, command).await?;
    } else {
        let action = match command {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Undo => "undo",
            Command::Approve { .. } => "approve",
        };
        post(target, action, &[]).await?;
    }
    println!(
        "rollout of {}/{} {done}",
        target.namespace, target.access_point
    );
    Ok(())
}

fn describe(target: &Target, status: &RolloutStatus) -> String {
    let mut out = format!(
        "{}/{}: revision {} {}",
        target.namespace, target.access_point, status.revision, status.phase
    );
    if let Some(stage) = &status.stage {
        out += &format!(" (stage {stage})");
    }
    if let Some(completed) = &status.completed_revision {
        out += &format!(", last completed {completed}");
    }
    out.push('\n');
    if let Some(message) = &status.message {
        out += &format!("  {message}\n");
    }
    for stage in &status.stages {
        out += &format!(
            "  stage {:<16} {:<17} {}\n",
            stage.name,
            stage.state,
            stage.clusters.join(", ")
        );
    }
    for cluster in &status.clusters {
        let applied = match cluster.applied {
            Some(true) => "applied=true ",
            Some(false) => "applied=false ",
            None => "",
        };
        out += &format!(
            "  cluster {:<14} {:<11} {:<12} {applied}{}\n",
            cluster.name,
            cluster.revision,
            cluster.state,
            cluster.message.as_deref().unwrap_or("")
        );
    }
    out
}

async fn get<T: serde::de::DeserializeOwned>(target: &Target, rest: &str) -> anyhow::Result<T> {
    let url = target.url(rest);
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("reaching {url}"))?;
    if !response.status().is_success() {
        bail!("{}", response.text().await.unwrap_or_default().trim());
    }
    response
        .json()
        .await
        .with_context(|| format!("reading {url}"))
}

async fn post(target: &Target, action: &str, query: &[(&str, &str)]) -> anyhow::Result<()> {
    let url = target.url(&format!("/{action}"));
    let response = reqwest::Client::new()
        .post(&url)
        .header(crate::control_plane::admin::guard::REQUEST_HEADER, "cli")
        .query(query)
        .send()
        .await
        .with_context(|| format!("reaching {url}"))?;
    if !response.status().is_success() {
        bail!("{}", response.text().await.unwrap_or_default().trim());
    }
    Ok(())
}

/// Field manager of the operator's acts in Kubernetes mode (apart from Meridian's own).
const OPERATOR_FIELD_MANAGER: &str = "meridian-operator";

/// The AccessPoint's API and its rollout status, or why there is none.
async fn kube_status(target: &Target) -> anyhow::Result<(kube::Api<AccessPoint>, RolloutStatus)> {
    let client =
        crate::control_plane::kubernetes::controller::client(target.kubeconfig.as_ref()).await?;
    let api: kube::Api<AccessPoint> = kube::Api::namespaced(client, &target.namespace);
    let name = format!("{}/{}", target.namespace, target.access_point);
    let ap = api
        .get(&target.access_point)
        .await
        .with_context(|| format!("reading AccessPoint {name}"))?;
    let status = ap.status.and_then(|s| s.rollout).with_context(|| {
        format!("AccessPoint {name} shows no staged rollout (spec.rollout.strategy: Staged, with a Meridian leader running)")
    })?;
    Ok((api, status))
}

/// Records `command` in the AccessPoint's `status.rollout.controls` by server-side apply,
/// under the operator's own field manager (Meridian never writes these fields).
async fn kube_act(target: &Target, command: Command) -> anyhow::Result<()> {
    let (api, status) = kube_status(target).await?;
    let name = format!("{}/{}", target.namespace, target.access_point);
    let mut controls: RolloutControls = status.controls.clone().unwrap_or_default();
    let revision = status.revision.clone();
    match command {
        Command::Approve { stage, by } => {
            if !status.stages.iter().any(|s| s.name == stage) {
                let names: Vec<&str> = status.stages.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "AccessPoint {name} has no stage {stage:?}; its stages are {}",
                    names.join(", ")
                );
            }
            controls
                .approvals
                .retain(|a| a.revision == revision && a.stage != stage);
            controls.approvals.push(Approval {
                revision,
                stage,
                by,
                at: Some(k8s_openapi::jiff::Timestamp::now().to_string()),
            });
        }
        Command::Pause => controls.paused = true,
        Command::Resume => controls.paused = false,
        Command::Undo => {
            if status.completed_revision.is_none() {
                bail!("AccessPoint {name}: no revision ever reached every cluster, so there is nothing to undo to");
            }
            controls.undo = Some(revision);
        }
    }
    let patch = serde_json::json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": "AccessPoint",
        "status": { "rollout": { "controls": controls } },
    });
    api.patch_status(
        &target.access_point,
        &kube::api::PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .with_context(|| format!("writing the status of AccessPoint {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rollout::ClusterRollout;

    #[test]
    fn rollout_status_shows_a_member_write_that_failed() {
        let target = Target {
            access_point: "web".into(),
            namespace: "shop".into(),
            admin: String::new(),
            kubernetes: false,
            kubeconfig: None,
        };
        let status = RolloutStatus {
            revision: "r2".into(),
            phase: "Progressing".into(),
            clusters: vec![ClusterRollout {
                name: "east".into(),
                revision: "r2".into(),
                state: "Progressing".into(),
                message: Some("member Service write failed: forbidden".into()),
                applied: Some(false),
            }],
            ..Default::default()
        };
        let text = describe(&target, &status);
        assert!(
            text.contains("cluster east")
                && text.contains("applied=false member Service write failed: forbidden"),
            "{text}"
        );
    }
}
