//! `meridian approve`, `meridian rollout status|pause|resume|undo` and `meridian diff`: the
//! operator's side of staged rollouts, through a standalone Meridian's admin API.

use anyhow::{bail, Context};

use crate::api::rollout::RolloutStatus;
use crate::core::rollout::diff::GatewayDiff;

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
    let query = [("stage", stage), ("by", by.as_str())];
    post(target, "approve", &query).await?;
    println!(
        "approved stage {stage} of {}/{}",
        target.namespace, target.access_point
    );
    Ok(())
}

pub async fn run(command: RolloutCommand) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Status { target, json } => {
            let status: RolloutStatus = get(&target, "").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", describe(&target, &status));
            }
            Ok(())
        }
        RolloutCommand::Pause { target } => act(&target, "pause", "paused").await,
        RolloutCommand::Resume { target } => act(&target, "resume", "resumed").await,
        RolloutCommand::Undo { target } => act(&target, "undo", "undone").await,
    }
}

/// Prints what each gateway of `cluster` (default: every placed cluster) would be served if
/// it took the current revision.
pub async fn diff(target: &Target, cluster: Option<&str>, json: bool) -> anyhow::Result<()> {
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

async fn act(target: &Target, action: &str, done: &str) -> anyhow::Result<()> {
    post(target, action, &[]).await?;
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
        out += &format!(
            "  cluster {:<14} {:<11} {:<12} {}\n",
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
        .query(query)
        .send()
        .await
        .with_context(|| format!("reaching {url}"))?;
    if !response.status().is_success() {
        bail!("{}", response.text().await.unwrap_or_default().trim());
    }
    Ok(())
}
