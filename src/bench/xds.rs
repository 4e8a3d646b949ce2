//! `meridian bench-xds`: a real `meridian standalone` process serving the synthetic fleet, and
//! N ADS streams (state of the world or delta) that ACK like Envoy. It measures how long all
//! N take to connect and sync, how long a config change takes to be ACKed by every stream
//! (p50/p99 over streams and rounds), and the server's RSS and CPU.
//!
//! The change: one AccessPoint per gateway gets a new route timeout, written to a file in the
//! watched directory, so each round crosses the whole path: file watcher, validation, index,
//! translation and ADS push.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use super::ads_client::{run_delta, run_sotw, Acked, Identity};
use super::translate::{fleet, FleetOptions};
use crate::core::model::InputObject;
use crate::core::resources::ResourceType;

#[derive(Clone, Debug)]
pub struct XdsBenchOptions {
    pub fleet: FleetOptions,
    pub streams: usize,
    pub delta: bool,
    /// Config changes measured, one after the other.
    pub rounds: usize,
    /// Streams sharing one HTTP/2 connection (Envoy uses one connection per proxy: 1).
    pub streams_per_connection: usize,
    /// How long to wait for every stream, per phase.
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct XdsReport {
    /// From the first connection to every stream having ACKed CDS, EDS, LDS and RDS.
    pub connect: Duration,
    /// Per stream and round: from the file write to the stream ACKing the new routes.
    pub convergence: Vec<Duration>,
    pub rss_before_streams: u64,
    pub rss_connected: u64,
    pub rss_after: u64,
    /// Server CPU (user + system) while the streams connected, and over all rounds.
    pub cpu_connect: Duration,
    pub cpu_rounds: Duration,
}

/// The `meridian standalone` child process; killed when dropped.
pub(super) struct Server {
    child: Child,
    pub(super) xds: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(super) fn start(dir: &Path) -> anyhow::Result<Server> {
        let xds = free_addr()?;
        let admin = free_addr()?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("standalone")
            .arg("--config-dir")
            .arg(dir.join("config"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args([
                "--xds-addr",
                &xds.to_string(),
                "--admin-addr",
                &admin.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting meridian standalone")?;
        Ok(Server { child, xds, admin })
    }

    fn proc_file(&self, name: &str) -> anyhow::Result<String> {
        let path = format!("/proc/{}/{name}", self.child.id());
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    }

    pub(super) fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = self.proc_file("status")?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .context("no VmRSS")?;
        Ok(kib * 1024)
    }

    /// User plus system CPU time so far.
    pub(super) fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = self.proc_file("stat")?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        // utime and stime are fields 14 and 15 of stat; here (from field 3) indexes 11, 12.
        let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
            bail!("unreadable /proc stat");
        };
        // Linux reports in USER_HZ, 100 per second on every mainstream build.
        Ok(Duration::from_millis((user + system) * 10))
    }

    pub(super) async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.admin);
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                bail!("meridian exited with {status} (see its server.log)");
            }
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("meridian was not ready within {timeout:?}")
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Writes the fleet as JSON documents (valid YAML): the AccessPoints each round edits in
/// `edited.yaml`, the rest in `fleet.yaml`.
pub(super) fn write_fleet(
    options: &FleetOptions,
    config: &Path,
) -> anyhow::Result<Vec<InputObject>> {
    std::fs::create_dir_all(config)?;
    let mut rest = String::new();
    let mut edited = Vec::new();
    for object in fleet(options)? {
        if is_edited(&object, options.gateways) {
            edited.push(object);
        } else {
            rest.push_str(&document(&object)?);
        }
    }
    std::fs::write(config.join("fleet.yaml"), rest)?;
    write_edited(&edited, config, "2s")?;
    Ok(edited)
}

/// The first AccessPoint of each gateway: app-0 … app-(gateways-1).
fn is_edited(object: &InputObject, gateways: usize) -> bool {
    let InputObject::AccessPoint(ap) = object else {
        return false;
    };
    ap.metadata
        .name
        .as_deref()
        .and_then(|n| n.strip_prefix("app-"))
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i < gateways)
}

fn document(object: &InputObject) -> anyhow::Result<String> {
    let json = match object {
        InputObject::AccessPoint(o) => serde_json::to_string(o)?,
        InputObject::EndpointSlice(o) => serde_json::to_string(o)?,
        other => bail!("the synthetic fleet has no {}", other.kind()),
    };
    Ok(format!("---\n{json}\n"))
}

/// Writes the edited AccessPoints with the first route's timeout set to `timeout`.
pub(super) fn write_edited(
    edited: &[InputObject],
    config: &Path,
    timeout: &str,
) -> anyhow::Result<()> {
    let mut text = String::new();
    for object in edited {
        let mut object = object.clone();
        if let InputObject::AccessPoint(ap) = &mut object {
            if let Some(vs) = ap.spec.template.virtual_services.first_mut() {
                if let Some(route) = vs.spec.http.first_mut() {
                    route.timeout = Some(timeout.to_owned());
                }
            }
        }
        text.push_str(&document(&object)?);
    }
    // Written whole and renamed, so the watcher never reads half a file.
    let partial = config.join(".edited.yaml.tmp");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, config.join("edited.yaml"))?;
    Ok(())
}

pub async fn run(options: &XdsBenchOptions) -> anyhow::Result<XdsReport> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let edited = write_fleet(&options.fleet, &config)?;
    let mut server = Server::start(dir.path())?;
    server.wait_ready(options.timeout).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_streams = server.rss_bytes()?;

    let cpu_start = server.cpu()?;
    let started = Instant::now();
    let (acked_tx, mut acked) = mpsc::unbounded_channel::<Acked>();
    // Dropped before the server: the streams are aborted, not failed by its exit.
    let _streams = open_streams(server.xds, options, acked_tx).await?;
    wait_synced(&mut acked, options, started + options.timeout).await?;
    let connect = started.elapsed();
    let cpu_connect = server.cpu()?.saturating_sub(cpu_start);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = server.rss_bytes()?;

    let cpu_start = server.cpu()?;
    let mut convergence = Vec::new();
    for round in 0..options.rounds {
        while acked.try_recv().is_ok() {}
        let written = Instant::now();
        write_edited(&edited, &config, &format!("{}s", 3 + round))?;
        let acked_at = wait_route_acks(&mut acked, options, written)
            .await
            .with_context(|| format!("round {round}"))?;
        convergence.extend(acked_at);
    }
    let cpu_rounds = server.cpu()?.saturating_sub(cpu_start);
    let rss_after = server.rss_bytes()?;
    convergence.sort();
    Ok(XdsReport {
        connect,
        convergence,
        rss_before_streams,
        rss_connected,
        rss_after,
        cpu_connect,
        cpu_rounds,
    })
}

/// Opens every stream, each claiming a gateway round-robin.
async fn open_streams(
    addr: SocketAddr,
    options: &XdsBenchOptions,
    acked: mpsc::UnboundedSender<Acked>,
) -> anyhow::Result<JoinSet<()>> {
    let channels = connect(addr, options).await?;
    let mut streams = JoinSet::new();
    for stream in 0..options.streams {
        let channel = channels[stream / options.streams_per_connection.max(1)].clone();
        let identity = Identity {
            stream,
            gateway: format!("edge/gw-{}", stream % options.fleet.gateways.max(1)),
            cluster: crate::api::LOCAL_CLUSTER.to_owned(),
        };
        let acked = acked.clone();
        let delta = options.delta;
        streams.spawn(async move {
            let outcome = if delta {
                run_delta(channel, identity, acked).await
            } else {
                run_sotw(channel, identity, acked).await
            };
            if let Err(error) = outcome {
                tracing::warn!(%error, "bench stream ended");
            }
        });
    }
    Ok(streams)
}

/// Waits until every stream has ACKed CDS, EDS, LDS and RDS at least once.
async fn wait_synced(
    acked: &mut mpsc::UnboundedReceiver<Acked>,
    options: &XdsBenchOptions,
    deadline: Instant,
) -> anyhow::Result<()> {
    let bit = |kind: ResourceType| match kind {
        ResourceType::Cluster => 1u8,
        ResourceType::Endpoint => 2,
        ResourceType::Listener => 4,
        ResourceType::Route => 8,
        _ => 0,
    };
    let mut seen: BTreeMap<usize, u8> = BTreeMap::new();
    let mut synced = 0;
    while synced < options.streams {
        let event = tokio::time::timeout_at(deadline.into(), acked.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {synced} of {} streams synced within {:?}",
                    options.streams,
                    options.timeout
                )
            })?
            .context("every stream ended")?;
        let mask = seen.entry(event.stream).or_default();
        let before = *mask;
        *mask |= bit(event.kind);
        if before != 15 && *mask == 15 {
            synced += 1;
        }
    }
    Ok(())
}

/// Per stream, how long after `written` it ACKed a route response.
async fn wait_route_acks(
    acked: &mut mpsc::UnboundedReceiver<Acked>,
    options: &XdsBenchOptions,
    written: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut done: BTreeMap<usize, Duration> = BTreeMap::new();
    while done.len() < options.streams {
        let event = tokio::time::timeout_at((written + options.timeout).into(), acked.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {} streams ACKed the change within {:?}",
                    done.len(),
                    options.streams,
                    options.timeout
                )
            })?
            .context("every stream ended")?;
        if event.kind == ResourceType::Route {
            done.entry(event.stream)
                .or_insert_with(|| written.elapsed());
        }
    }
    Ok(done.into_values().collect())
}

/// One HTTP/2 connection per `streams_per_connection` streams, opened at most 256 at a time.
async fn connect(addr: SocketAddr, options: &XdsBenchOptions) -> anyhow::Result<Vec<Channel>> {
    let count = options
        .streams
        .div_ceil(options.streams_per_connection.max(1));
    let limit = std::sync::Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await;
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(10))
                .connect()
                .await
        }));
    }
    let mut channels = Vec::new();
    for task in tasks {
        channels.push(task.await?.context("connecting to the xDS server")?);
    }
    Ok(channels)
}

pub fn render(options: &XdsBenchOptions, report: &XdsReport) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| {
        let samples = &report.convergence;
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
        samples.get(i).copied().map_or(0.0, ms)
    };
    format!(
        "fleet: {} AccessPoints, {} gateways; {} {} streams, {} per connection\n\
         connect + initial sync (all):  {:>9.1} ms   server CPU {:.2} s\n\
         convergence ({} rounds × {} streams): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms   server CPU {:.2} s\n\
         server RSS: before streams {:.1} MiB, connected {:.1} MiB, after rounds {:.1} MiB\n",
        options.fleet.access_points,
        options.fleet.gateways,
        options.streams,
        if options.delta { "delta" } else { "SotW" },
        options.streams_per_connection,
        ms(report.connect),
        report.cpu_connect.as_secs_f64(),
        options.rounds,
        options.streams,
        at(0.50),
        at(0.99),
        report.convergence.last().copied().map_or(0.0, ms),
        report.cpu_rounds.as_secs_f64(),
        mib(report.rss_before_streams),
        mib(report.rss_connected),
        mib(report.rss_after),
    )
}
