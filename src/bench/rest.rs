//! `meridian bench-rest`: a real `meridian standalone` process and N polling proxies that
//! poll like Envoy's REST xDS client — one subscription each for LDS and CDS, one per route
//! configuration the listeners name (RDS) and one per EDS cluster, each asking again one to
//! two refresh delays after its last answer, holding the version it was given. It measures
//! the requests per second, the share answered `304 Not Modified`, response times, the
//! server's CPU and RSS, and how long an edit takes to reach every poller's routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::translate::FleetOptions;
use super::xds::{write_edited, write_fleet, Server};

#[derive(Clone, Debug)]
pub struct RestBenchOptions {
    pub fleet: FleetOptions,
    pub pollers: usize,
    pub refresh: Duration,
    /// How long the steady state is measured; one edit is made half way.
    pub duration: Duration,
    /// How long to wait for every poller's first full config.
    pub timeout: Duration,
}

#[derive(Debug, Default)]
pub struct RestReport {
    /// From the first poll to every poller holding LDS, CDS, RDS and EDS.
    pub warm_up: Duration,
    pub requests: usize,
    /// Response times of `304 Not Modified` answers and of answers with resources.
    pub not_modified: Vec<Duration>,
    pub changed: Vec<Duration>,
    pub failed: usize,
    /// Per poller: from the edit to its routes arriving at the new version.
    pub edit: Vec<Duration>,
    pub cpu: Duration,
    pub rss: u64,
}

/// What every poller records.
#[derive(Default)]
struct Samples {
    not_modified: Vec<Duration>,
    changed: Vec<Duration>,
    failed: usize,
    /// Per poller, when its routes last changed.
    routes_changed: BTreeMap<usize, Instant>,
    /// Pollers holding every type.
    synced: BTreeSet<usize>,
}

pub async fn run(options: &RestBenchOptions) -> anyhow::Result<RestReport> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let edited = write_fleet(&options.fleet, &config)?;
    let mut server = Server::start(dir.path())?;
    server.wait_ready(options.timeout).await?;

    let samples = Arc::new(Mutex::new(Samples::default()));
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let mut pollers = JoinSet::new();
    for id in 0..options.pollers {
        let poller = Poller::new(id, server.xds, options)?;
        let (samples, stopped) = (samples.clone(), stopped.clone());
        pollers.spawn(async move { poller.run(samples, stopped).await });
    }
    let synced = |s: &Mutex<Samples>| samples_lock(s).synced.len();
    while synced(&samples) < options.pollers {
        anyhow::ensure!(
            started.elapsed() < options.timeout,
            "only {} of {} pollers synced within {:?}",
            synced(&samples),
            options.pollers,
            options.timeout
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warm_up = started.elapsed();

    // The steady state, measured from a clean slate, with one edit half way.
    *samples_lock(&samples) = Samples::default();
    let cpu_start = server.cpu()?;
    tokio::time::sleep(options.duration / 2).await;
    let edit_at = Instant::now();
    write_edited(&edited, &config, "7s")?;
    tokio::time::sleep(options.duration / 2).await;
    let cpu = server.cpu()?.saturating_sub(cpu_start);
    let rss = server.rss_bytes()?;
    let _ = stop.send(true);
    while pollers.join_next().await.is_some() {}

    let samples = std::mem::take(&mut *samples_lock(&samples));
    let mut edit: Vec<Duration> = samples
        .routes_changed
        .values()
        .filter(|at| **at >= edit_at)
        .map(|at| at.duration_since(edit_at))
        .collect();
    anyhow::ensure!(
        edit.len() == options.pollers,
        "only {} of {} pollers received the edit within {:?}",
        edit.len(),
        options.pollers,
        options.duration / 2
    );
    edit.sort();
    let (mut not_modified, mut changed) = (samples.not_modified, samples.changed);
    not_modified.sort();
    changed.sort();
    Ok(RestReport {
        warm_up,
        requests: not_modified.len() + changed.len() + samples.failed,
        not_modified,
        changed,
        failed: samples.failed,
        edit,
        cpu,
        rss,
    })
}

/// One subscription: the path, the names asked for, the version held, when to ask next.
struct Subscription {
    path: &'static str,
    names: Vec<String>,
    version: String,
    due: Instant,
}

/// A simulated Envoy: its own HTTP/1.1 connection and its subscriptions.
struct Poller {
    id: usize,
    client: reqwest::Client,
    base: String,
    node: Value,
    refresh: Duration,
    subscriptions: BTreeMap<(&'static str, String), Subscription>,
}

impl Poller {
    fn new(id: usize, xds: SocketAddr, options: &RestBenchOptions) -> anyhow::Result<Poller> {
        let gateway = format!("edge/gw-{}", id % options.fleet.gateways.max(1));
        let refresh = crate::core::duration::format(options.refresh);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut poller = Poller {
            id,
            client,
            base: format!("http://{xds}"),
            node: json!({"id": format!("rest-{id}"), "metadata": {
                "meridian.dev/gateway": gateway, "meridian.dev/refresh-delay": refresh}}),
            refresh: options.refresh,
            subscriptions: BTreeMap::new(),
        };
        // Proxies start spread over one refresh delay, as a fleet does.
        let first = Instant::now() + poller.jitter();
        poller.subscribe("listeners", Vec::new(), first);
        poller.subscribe("clusters", Vec::new(), first);
        Ok(poller)
    }

    fn jitter(&self) -> Duration {
        self.refresh.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
    }

    fn subscribe(&mut self, path: &'static str, names: Vec<String>, due: Instant) {
        let key = (path, names.join(","));
        self.subscriptions.entry(key).or_insert(Subscription {
            path,
            names,
            version: String::new(),
            due,
        });
    }

    /// Keeps the subscriptions of `path` to exactly `wanted` (one per name).
    fn resubscribe(&mut self, path: &'static str, wanted: BTreeSet<String>) {
        self.subscriptions
            .retain(|(p, name), _| *p != path || wanted.contains(name));
        for name in wanted {
            self.subscribe(path, vec![name], Instant::now());
        }
    }

    async fn run(mut self, samples: Arc<Mutex<Samples>>, mut stopped: watch::Receiver<bool>) {
        loop {
            let Some((key, due)) = self
                .subscriptions
                .iter()
                .min_by_key(|(_, s)| s.due)
                .map(|(k, s)| (k.clone(), s.due))
            else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stopped.changed() => return,
            }
            if let Err(error) = self.poll(&key, &samples).await {
                tracing::debug!(poller = self.id, %error, "bench poll failed");
                samples_lock(&samples).failed += 1;
            }
            // Envoy asks again between one and two refresh delays after an answer.
            let next = Instant::now() + self.refresh + self.jitter();
            if let Some(subscription) = self.subscriptions.get_mut(&key) {
                subscription.due = next;
            }
        }
    }

    async fn poll(
        &mut self,
        key: &(&'static str, String),
        samples: &Mutex<Samples>,
    ) -> anyhow::Result<()> {
        let Some(subscription) = self.subscriptions.get(key) else {
            return Ok(());
        };
        let path = subscription.path;
        let body = json!({
            "node": self.node,
            "version_info": subscription.version,
            "resource_names": subscription.names,
        });
        let sent = Instant::now();
        let response = self
            .client
            .post(format!("{}/v3/discovery:{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let took = sent.elapsed();
        let mut recorded = samples_lock(samples);
        match status {
            304 => {
                recorded.not_modified.push(took);
                return Ok(());
            }
            200 => recorded.changed.push(took),
            other => anyhow::bail!("answered {other}: {text}"),
        }
        let answer: Value = serde_json::from_str(&text).context("answer JSON")?;
        let version = answer["version_info"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let resources = answer["resources"].as_array().cloned().unwrap_or_default();
        if path == "routes" {
            recorded.routes_changed.insert(self.id, Instant::now());
        }
        drop(recorded);
        if let Some(subscription) = self.subscriptions.get_mut(key) {
            subscription.version = version;
        }
        match path {
            "listeners" => self.resubscribe("routes", route_names(&resources)),
            "clusters" => self.resubscribe("endpoints", eds_clusters(&resources)),
            _ => {}
        }
        if self.subscriptions.values().all(|s| !s.version.is_empty()) {
            samples_lock(samples).synced.insert(self.id);
        }
        Ok(())
    }
}

fn samples_lock(samples: &Mutex<Samples>) -> std::sync::MutexGuard<'_, Samples> {
    samples.lock().unwrap_or_else(|p| p.into_inner())
}

/// The route configurations a set of listeners names over RDS.
fn route_names(listeners: &[Value]) -> BTreeSet<String> {
    listeners
        .iter()
        .flat_map(|l| l["filterChains"].as_array().cloned().unwrap_or_default())
        .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| {
            f["typedConfig"]["rds"]["routeConfigName"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The clusters whose endpoints come over EDS.
fn eds_clusters(clusters: &[Value]) -> BTreeSet<String> {
    clusters
        .iter()
        .filter(|c| !c["edsClusterConfig"].is_null())
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

pub fn render(options: &RestBenchOptions, report: &RestReport) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |samples: &[Duration], q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
        samples.get(i).copied().map_or(0.0, ms)
    };
    let seconds = options.duration.as_secs_f64();
    let share = |n: usize| 100.0 * n as f64 / report.requests.max(1) as f64;
    format!(
        "fleet: {} AccessPoints, {} gateways; {} pollers, refresh delay {:?} (Envoy asks every 1–2 delays)\n\
         warm-up (every poller holding LDS, CDS, RDS, EDS): {:.1} s\n\
         steady {:.0} s with one edit: {} requests ({:.0}/s), {:.1}% answered 304, {} failed\n\
         response time 304: p50 {:.2} ms  p99 {:.2} ms   with resources: p50 {:.2} ms  p99 {:.2} ms ({} answers)\n\
         server CPU {:.2} s over {:.0} s = {:.1}% of one core; RSS {:.1} MiB\n\
         edit → every poller's routes: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms\n",
        options.fleet.access_points,
        options.fleet.gateways,
        options.pollers,
        options.refresh,
        report.warm_up.as_secs_f64(),
        seconds,
        report.requests,
        report.requests as f64 / seconds,
        share(report.not_modified.len()),
        report.failed,
        at(&report.not_modified, 0.50),
        at(&report.not_modified, 0.99),
        at(&report.changed, 0.50),
        at(&report.changed, 0.99),
        report.changed.len(),
        report.cpu.as_secs_f64(),
        seconds,
        100.0 * report.cpu.as_secs_f64() / seconds,
        report.rss as f64 / (1024.0 * 1024.0),
        at(&report.edit, 0.50),
        at(&report.edit, 0.99),
        report.edit.last().copied().map_or(0.0, ms),
    )
}
