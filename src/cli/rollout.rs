//! `meridian approve`, `meridian rollout status|pause|resume|undo` and `meridian diff`: the
//! operator's side of staged rollouts, through a standalone Meridian's admin API.

use anyhow::{bail, Context};

use crate::api::rollout::RolloutStatus;
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
    if target.kubernetes {
        if by.is_some() {
            bail!("--by has no effect with --kubernetes: the approver recorded is the user the API server authenticates");
        }
        let command = Command::Approve {
            stage: stage.to_owned(),
            by: None,
        };
        kube_act(target, command).await?;
    } else {
        let by = by
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default();
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

/// Creates a RolloutAction for `command`. Who acts is not said here: Meridian's admission
/// webhook records the user the API server authenticated.
async fn kube_act(target: &Target, command: Command) -> anyhow::Result<()> {
    use crate::api::rollout_action::{ActionKind, RolloutAction, RolloutActionSpec};
    let (api, status) = kube_status(target).await?;
    let name = format!("{}/{}", target.namespace, target.access_point);
    let revision = status.revision.clone();
    let (action, stage, revision) = match command {
        Command::Approve { stage, .. } => {
            if !status.stages.iter().any(|s| s.name == stage) {
                let names: Vec<&str> = status.stages.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "AccessPoint {name} has no stage {stage:?}; its stages are {}",
                    names.join(", ")
                );
            }
            (ActionKind::Approve, Some(stage), Some(revision))
        }
        Command::Pause => (ActionKind::Pause, None, None),
        Command::Resume => (ActionKind::Resume, None, None),
        Command::Undo => {
            if status.completed_revision.is_none() {
                bail!("AccessPoint {name}: no revision ever reached every cluster, so there is nothing to undo to");
            }
            (ActionKind::Undo, None, Some(revision))
        }
    };
    let mut object = RolloutAction::new(
        "",
        RolloutActionSpec {
            access_point: target.access_point.clone(),
            action,
            stage,
            revision,
        },
    );
    object.metadata.name = None;
    object.metadata.generate_name = Some(format!(
        "{}-{}-",
        target.access_point,
        format!("{action:?}").to_lowercase()
    ));
    let actions: kube::Api<RolloutAction> =
        kube::Api::namespaced(api.into_client(), &target.namespace);
    actions
        .create(&kube::api::PostParams::default(), &object)
        .await
        .with_context(|| format!("creating a RolloutAction for AccessPoint {name}"))?;
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
