//! `meridian node-agent`: runs on every node (a DaemonSet) and answers HAProxy's agent check
//! for the services the edge reaches through this node's NodePorts.
//!
//! HAProxy connects to `--addr`, sends its `agent-send` string (the service, `namespace/name`)
//! and reads one line: `down` while the node is not Ready, `drain` while it is cordoned or
//! carries a drain taint (new connections stop, in-flight ones finish), else `ready up` with
//! the Service's `meridian.dev/weight` as a percentage. The node and the Services are watched, so
//! an answer reflects a cordon or an annotation within a check interval. The decisions are
//! `core::node_agent`'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::core::node_agent::{answer, weight_of, NodeState};
use crate::runtime::log_budget::{bounded, LogBudget};

pub struct Options {
    /// This node's name (the Node object).
    pub node: String,
    pub addr: SocketAddr,
    pub kubeconfig: Option<PathBuf>,
    /// Taint keys that drain the node (cordoning always does).
    pub drain_taints: Vec<String>,
}

/// The longest `agent-send` string read; HAProxy sends it at once.
const MAX_REQUEST: usize = 256;
/// How long a connection may take to send it.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until `stopped`.
pub async fn run(options: Options, mut stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let client = crate::runtime::kube_client::client(options.kubeconfig.as_ref()).await?;
    let listener = TcpListener::bind(options.addr)
        .await
        .with_context(|| format!("binding the agent address {}", options.addr))?;
    tracing::info!(node = %options.node, addr = %listener.local_addr()?, "node agent answering HAProxy agent checks");
    let node = follow_node(
        Api::all(client.clone()),
        options.node.clone(),
        Arc::new(options.drain_taints),
        stopped.clone(),
    );
    let weights = follow_weights(Api::all(client), stopped.clone());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "agent accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return Ok(()),
        };
        let (node, weights) = (node.clone(), weights.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, reply(stream, &node, &weights)).await;
        });
    }
}

/// Reads the service HAProxy names and writes this node's answer for it.
async fn reply(
    mut stream: TcpStream,
    node: &watch::Receiver<NodeState>,
    weights: &watch::Receiver<BTreeMap<String, u8>>,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(64);
    let mut buffer = [0u8; 64];
    while !request.contains(&b'\n') && request.len() < MAX_REQUEST {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let service = String::from_utf8_lossy(&request)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let weight = weights.borrow().get(&service).copied();
    let line = answer(&node.borrow(), weight);
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await
}

/// This node's state, as its Node object says (not known until first seen).
fn follow_node(
    api: Api<Node>,
    name: String,
    drain_taints: Arc<Vec<String>>,
    mut stopped: watch::Receiver<bool>,
) -> watch::Receiver<NodeState> {
    let (tx, rx) = watch::channel(NodeState::default());
    tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = stopped.changed() => return,
            };
            let Some(event) = event else { return };
            match event {
                Ok(Event::Apply(node) | Event::InitApply(node)) => {
                    let state = NodeState::of(&node, &drain_taints);
                    tx.send_if_modified(|current| {
                        let changed = *current != state;
                        if changed {
                            tracing::info!(node = %name, ready = state.ready, draining = state.draining, "node state");
                        }
                        *current = state;
                        changed
                    });
                }
                Ok(Event::Delete(_)) => {
                    tx.send_replace(NodeState::default());
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, node = %name, "watching the node failed"),
            }
        }
    });
    rx
}

/// Each Service's weight (`namespace/name` → percent), for those that set one validly.
fn follow_weights(
    api: Api<Service>,
    mut stopped: watch::Receiver<bool>,
) -> watch::Receiver<BTreeMap<String, u8>> {
    static BAD: LogBudget = LogBudget::new(10, Duration::from_secs(60));
    let (tx, rx) = watch::channel(BTreeMap::new());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        let mut listing: Option<BTreeMap<String, u8>> = None;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = stopped.changed() => return,
            };
            let Some(event) = event else { return };
            let key = |s: &Service| {
                format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default()
                )
            };
            // A bad weight is reported and left out: HAProxy keeps the weight it has.
            let weight = |s: &Service| match weight_of(&key(s), s.metadata.annotations.as_ref()) {
                Ok(weight) => weight,
                Err(error) => {
                    if let Some(suppressed) = BAD.allow() {
                        tracing::warn!(error = %bounded(&error.to_string()), suppressed, "weight ignored");
                    }
                    None
                }
            };
            match event {
                Ok(Event::Init) => listing = Some(BTreeMap::new()),
                Ok(Event::InitApply(service)) => {
                    if let (Some(list), Some(w)) = (listing.as_mut(), weight(&service)) {
                        list.insert(key(&service), w);
                    }
                }
                Ok(Event::InitDone) => {
                    tx.send_replace(listing.take().unwrap_or_default());
                }
                Ok(Event::Apply(service)) => {
                    let (name, w) = (key(&service), weight(&service));
                    tx.send_modify(|weights| match w {
                        Some(w) => {
                            weights.insert(name, w);
                        }
                        None => {
                            weights.remove(&name);
                        }
                    });
                }
                Ok(Event::Delete(service)) => {
                    tx.send_modify(|weights| {
                        weights.remove(&key(&service));
                    });
                }
                Err(error) => tracing::warn!(%error, "watching Services failed"),
            }
        }
    });
    rx
}
