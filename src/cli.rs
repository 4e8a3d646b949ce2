//! Command line: `meridian <subcommand>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::control_plane::admin::ops::pb::ops_client::OpsClient;
use crate::control_plane::admin::ops::pb::{ConfigDumpRequest, ProxyStatusRequest};
use crate::control_plane::bootstrap::{bootstrap, BootstrapOptions, ClientTls};
use crate::control_plane::certs::{CertOptions, XdsTlsOptions};
use crate::control_plane::dns::server::DnsOptions;
use crate::control_plane::kubernetes::controller::{self, ControllerOptions};
use crate::control_plane::kubernetes::leader::LeaseConfig;
use crate::control_plane::standalone::{self, StandaloneOptions};
use crate::core::model::export::ExportPolicy;
use crate::core::selector::parse_selector;

mod ops_tls;
mod rollout;

#[derive(Parser, Debug)]
#[command(name = "meridian", version, about = "Federated Envoy xDS control plane", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The async runtime the command runs on: a thread per core, except for `meridian proxy`,
    /// whose control thread (ADS, admin, load reports) needs one; its requests run on workers
    /// of their own (`proxy::workers`).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.command {
            Command::Proxy { .. } => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }
}

/// Mesh-wide `exportTo` defaults, as Istio's MeshConfig has them.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// exportTo of Services and ServiceEntries that set none (`*`, `.`, `~` or namespaces).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub default_service_export_to: Vec<String>,
    /// exportTo of VirtualServices that set none.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub default_virtual_service_export_to: Vec<String>,
    /// exportTo of DestinationRules that set none.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub default_destination_rule_export_to: Vec<String>,
    /// The last namespace DestinationRules are looked up in.
    #[arg(long, default_value = "meridian-system")]
    pub root_namespace: String,
}

impl MeshArgs {
    pub fn export_policy(&self) -> ExportPolicy {
        ExportPolicy {
            service: self.default_service_export_to.clone(),
            virtual_service: self.default_virtual_service_export_to.clone(),
            destination_rule: self.default_destination_rule_export_to.clone(),
            root_namespace: self.root_namespace.clone(),
        }
    }
}

/// What both serving modes take besides their input: mesh defaults, certificates, secured
/// xDS and DNS.
#[derive(clap::Args, Debug, Clone)]
pub struct ServingArgs {
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub certs: CertOptions,
    #[command(flatten)]
    pub xds_tls: XdsTlsOptions,
    #[command(flatten)]
    pub dns: DnsOptions,
    /// How often gateways report their upstream requests and failures (Envoy LRS), the
    /// health signal of staged rollouts.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub load_report_interval: Duration,
    /// A polling (REST xDS) proxy silent for this many of its refresh delays is shown STALE
    /// and its acknowledgements stop counting (Envoy waits one to two delays between polls).
    #[arg(long, default_value_t = crate::control_plane::xds::server::DEFAULT_STALE_AFTER_REFRESHES,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub rest_stale_after: u32,
    /// Connections the xDS and the admin listener each take at once (lowered to fit the
    /// process's open-file limit, which is raised to its hard limit at start).
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// How long a new connection may stay silent before it is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
}

impl ServingArgs {
    fn connection_limits(&self) -> crate::runtime::connections::ConnectionLimits {
        let fd_limit = crate::runtime::connections::raise_fd_limit();
        crate::runtime::connections::ConnectionLimits {
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
        }
        .within(fd_limit)
    }
}

/// What `meridian bootstrap` prints a bootstrap for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapRole {
    Gateway,
    L4,
}

/// The tier name an L4 node reports when `--gateway` is not given.
const DEFAULT_L4_TIER: &str = "meridian-system/l4";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve xDS (and optionally DNS) from a directory of YAML manifests (AccessPoint,
    /// MemberCluster, NameService, Service, EndpointSlice, Deployment, Node, TLS Secret), applying
    /// edits live.
    Standalone {
        /// Directory of manifests, read recursively (*.yaml, *.yml).
        #[arg(long)]
        config_dir: PathBuf,
        /// Where Meridian keeps state across restarts (the last good manifests).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// gRPC address for ADS and the ops API.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds_addr: SocketAddr,
        /// HTTP address for /healthz, /readyz, /metrics and /debug/*.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_addr: SocketAddr,
        #[command(flatten)]
        serving: ServingArgs,
    },
    /// Serve xDS from Kubernetes: watch AccessPoint, MemberCluster, NameService, Service,
    /// EndpointSlice, Deployment, Node, TLS Secret and Namespace objects; while holding the leader
    /// lease, write AccessPoint status, member-cluster Services, the VIP table and RFC 2136
    /// updates. Every replica serves xDS (and DNS, with --dns-addr).
    Controller {
        /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Only process namespaces whose labels match this selector (kubectl syntax, e.g.
        /// `meridian.dev/enabled=true`); repeat to match any of several. Default: all.
        #[arg(long = "namespace-selector", value_name = "SELECTOR")]
        namespace_selectors: Vec<String>,
        /// gRPC address for ADS and the ops API.
        #[arg(long, default_value = "0.0.0.0:18000")]
        xds_addr: SocketAddr,
        /// HTTP address for /healthz, /readyz, /metrics and /debug/*.
        #[arg(long, default_value = "0.0.0.0:9090")]
        admin_addr: SocketAddr,
        /// Namespace of the leader-election Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "meridian-system")]
        lease_namespace: String,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "meridian-controller")]
        lease_name: String,
        /// This replica's identity in the Lease (default: $POD_NAME, else hostname-pid).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// How long a silent leader keeps the lease before a standby takes over.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        lease_duration: Duration,
        /// How often the lease is renewed (and a standby checks it).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        renew_every: Duration,
        /// Secret (in the lease namespace) holding Meridian's CA; created on first start.
        #[arg(long, default_value = "meridian-ca")]
        ca_secret: String,
        /// Where the admission webhook that stamps RolloutActions with their authenticated
        /// creator listens (TLS, certificate from Meridian's CA).
        #[arg(long, default_value = "0.0.0.0:9443")]
        webhook_addr: SocketAddr,
        /// How the API server reaches the webhook, for a Meridian outside the cluster
        /// (default: the `meridian` Service in the lease namespace, port 9443).
        #[arg(long)]
        webhook_url: Option<String>,
        #[command(flatten)]
        serving: ServingArgs,
    },
    /// Run Meridian's own HTTP gateway proxy, fed over ADS like Envoy: takes the bootstrap
    /// `meridian bootstrap` prints (state of the world or delta, mutual TLS when it says so).
    Proxy {
        /// The bootstrap file (JSON), as for `envoy -c`.
        #[arg(short = 'c', long = "config-path")]
        config_path: PathBuf,
        /// Admin listener (`/ready`, `/config_dump`, `/stats/prometheus`); default: the bootstrap's admin address.
        #[arg(long)]
        admin_addr: Option<std::net::SocketAddr>,
        /// Keep the last accepted config in this directory and serve it at start, before
        /// Meridian answers (a restart while Meridian is unreachable keeps serving).
        #[arg(long)]
        config_cache: Option<PathBuf>,
        /// Report not ready (`/ready` 503) until Meridian itself sent a config, even when the
        /// cached one is served.
        #[arg(long)]
        wait_first_config: bool,
        /// How long connections of a removed listener, or of all at SIGTERM, may take to
        /// finish before they are closed.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        drain_time: Duration,
        /// Write an access log, one JSON object per request, to this file (`-`: standard
        /// output).
        #[arg(long, value_name = "FILE")]
        access_log: Option<PathBuf>,
        /// Request workers: threads each with its own listening socket per listener
        /// (SO_REUSEPORT) and upstream connection pools (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Keep a real HAProxy (2.6+, started here in master-worker mode) serving what Meridian
    /// serves a gateway: takes the bootstrap `meridian bootstrap` prints. Endpoint changes go
    /// through HAProxy's Runtime API; only frontend or backend changes reload, after
    /// `haproxy -c` approved them.
    Haproxy {
        /// The bootstrap file (JSON), as for `envoy -c`.
        #[arg(short = 'c', long = "config-path")]
        config_path: PathBuf,
        /// The haproxy binary.
        #[arg(long, default_value = "haproxy")]
        haproxy: PathBuf,
        /// Where haproxy.cfg, certificates, crt-lists and HAProxy's sockets are written.
        #[arg(long, default_value = "/var/lib/meridian-haproxy")]
        dir: PathBuf,
        /// Agent-check every server of a Kubernetes Service on this port (`meridian
        /// node-agent`); 0: no agent checks.
        #[arg(long, default_value_t = 5555)]
        agent_port: u16,
        /// Interval of the agent checks.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        agent_inter: Duration,
        /// Interval of the TCP health check of every server.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        check_inter: Duration,
        /// How long old workers may finish their requests after a reload, or at SIGTERM.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        drain_time: Duration,
        /// Serve HAProxy's Prometheus metrics (`/metrics`) and stats page (`/stats`) here
        /// (`address:port`).
        #[arg(long)]
        stats_addr: Option<String>,
    },
    /// Answer HAProxy's agent check for the services an edge reaches through this node's
    /// NodePorts (`agent-send` names the service, namespace/name): `down` while the node is
    /// not Ready, `drain` while it is cordoned or carries a drain taint, else `up` with the
    /// Service's `meridian.dev/weight` annotation as a percentage.
    NodeAgent {
        /// This node's name (in a DaemonSet, from the downward API's spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        #[arg(long, default_value = "0.0.0.0:5555")]
        addr: SocketAddr,
        /// Default: in a pod, its service account; else $KUBECONFIG or ~/.kube/config.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Taint keys that drain the node besides a cordon (repeat the flag for several).
        #[arg(long = "drain-taint", default_value = crate::core::node_agent::DRAIN_TAINT)]
        drain_taints: Vec<String>,
    },
    /// Run Meridian's own L4 node in front of the gateways, fed over ADS like Envoy: takes the
    /// bootstrap `meridian bootstrap --role l4` prints; listens on every VIP:port of its
    /// cluster and sends each connection to a gateway chosen by Maglev over its 5-tuple.
    L4 {
        /// The bootstrap file (JSON), as for `envoy -c`.
        #[arg(short = 'c', long = "config-path")]
        config_path: PathBuf,
        /// Admin listener (`/ready`, `/config_dump`, `/stats/prometheus`); default: the
        /// bootstrap's admin address.
        #[arg(long)]
        admin_addr: Option<std::net::SocketAddr>,
        /// How long open connections may take to finish at SIGTERM before they are closed.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        drain_time: Duration,
        /// Announce the VIPs this node can serve through BIRD 2: write them to this file
        /// (which bird.conf includes) and run `birdc configure`.
        #[arg(long, value_name = "FILE")]
        bird_config: Option<PathBuf>,
        /// The birdc binary.
        #[arg(long, default_value = "birdc", requires = "bird_config")]
        birdc: PathBuf,
        /// BIRD's control socket (birdc -s); BIRD's default if unset.
        #[arg(long, requires = "bird_config")]
        bird_socket: Option<PathBuf>,
        /// At SIGTERM, how long to keep accepting after the VIPs were withdrawn.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        withdraw_wait: Duration,
        /// UDP flows each UDP listener tracks at most; past it, the least recently used flow
        /// makes room (bounded also by the open-file limit: a flow holds a socket).
        #[arg(long, default_value_t = 65_536)]
        udp_flows: usize,
        /// Forward IPv4 flows to the gateways in XDP on this interface (repeat the flag for
        /// several: where clients' packets and gateways' replies arrive). What the packet
        /// path does not take (IPv6, PROXY protocol clusters, connections it did not see
        /// start) reaches the user-space listeners. The interfaces must forward IPv4.
        #[arg(long = "xdp-interface", value_name = "IFACE")]
        xdp_interfaces: Vec<String>,
        /// Where XDP runs: in the driver, or in the kernel's receive path (any device).
        #[arg(
            long,
            value_enum,
            default_value = "native",
            requires = "xdp_interfaces"
        )]
        xdp_mode: crate::l4::xdp::Mode,
        /// Source ports of flows the packet path forwards (full NAT), as FIRST-LAST; it must
        /// be clear of net.ipv4.ip_local_port_range (refused otherwise).
        #[arg(long, default_value = "1024-32767", value_parser = parse_port_range, requires = "xdp_interfaces")]
        xdp_snat_ports: std::ops::RangeInclusive<u16>,
        /// Flows the packet path tracks at most; the least recently used give way. Each
        /// costs two map entries (~216 bytes of kernel memory), reserved at start.
        #[arg(long, default_value_t = 262_144, requires = "xdp_interfaces")]
        xdp_flows: u32,
        /// VIP:ports the packet path serves at most (each reserves a Maglev table of
        /// --xdp-table-size entries, 4 bytes each).
        #[arg(long, default_value_t = 64, requires = "xdp_interfaces")]
        xdp_services: u32,
        /// Largest Maglev table of a VIP:port on the packet path (larger ones stay in user space).
        #[arg(long, default_value_t = 65_537, requires = "xdp_interfaces")]
        xdp_table_size: u32,
    },
    /// Print an Envoy bootstrap (JSON) that connects a gateway (or an L4 node) to Meridian over
    /// ADS.
    Bootstrap {
        /// Envoy node id; must be unique per proxy.
        #[arg(long)]
        node_id: String,
        /// What the proxy is: an L7 gateway, or an L4 node serving every VIP of its cluster.
        #[arg(long, value_enum, default_value_t = BootstrapRole::Gateway)]
        role: BootstrapRole,
        /// The Gateway this proxy serves, as namespace/name (for an L4 node, the name of its
        /// tier; default meridian-system/l4).
        #[arg(long)]
        gateway: Option<String>,
        /// Member cluster of the proxy (default: the hub's own, `local`).
        #[arg(long)]
        cluster: Option<String>,
        /// Availability zone of the proxy.
        #[arg(long)]
        zone: Option<String>,
        /// Meridian's xDS address.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds_addr: String,
        /// Use incremental (delta) xDS instead of state-of-the-world.
        #[arg(long, conflicts_with = "rest")]
        delta: bool,
        /// Poll Meridian over REST xDS (HTTP/1.1, `304 Not Modified` while nothing changed)
        /// instead of holding an ADS stream; such a proxy sends no load reports.
        #[arg(long)]
        rest: bool,
        /// Print a gRPC xDS bootstrap (for `GRPC_XDS_BOOTSTRAP`) for a proxyless gRPC
        /// application that uses the routes of `--gateway`: it then dials
        /// `xds:///<host>:<port>` for a host and port that Gateway serves.
        #[arg(long, conflicts_with_all = ["rest", "delta", "role"])]
        grpc: bool,
        /// How often a polling proxy asks (Envoy waits between one and two of these).
        #[arg(long, default_value = "3s", value_parser = parse_refresh_delay, requires = "rest")]
        refresh_delay: Duration,
        /// Envoy's own admin port (bound on 127.0.0.1).
        #[arg(long, default_value_t = 19000)]
        admin_port: u16,
        /// Mint a client certificate for the gateway into this directory (tls.crt, tls.key,
        /// ca.crt) and connect over mutual TLS (for a Meridian started with --xds-mtls).
        #[arg(long)]
        cert_dir: Option<PathBuf>,
        /// Where the CA is kept (standalone: <state-dir>/ca); or give --ca-cert and --ca-key.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        #[command(flatten)]
        certs: CertOptions,
    },
    /// Mint an operator's client certificate for the ops API over --xds-mtls (`status`,
    /// `config-dump` see every proxy with it; a gateway's certificate sees only its own).
    OperatorCredentials {
        /// The operator's name (in the SPIFFE ID spiffe://<trust-domain>/operator/<name>).
        #[arg(long)]
        name: String,
        /// Where to write tls.crt, tls.key and ca.crt.
        #[arg(long)]
        cert_dir: PathBuf,
        /// Where the CA is kept (standalone: <state-dir>/ca); or give --ca-cert and --ca-key.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        #[command(flatten)]
        certs: CertOptions,
    },
    /// Show connected proxies and their per-type sync state (SYNCED, STALE, NACKED, NOT_SENT):
    /// every proxy, or with a gateway's certificate only that gateway's.
    Status {
        /// Meridian's gRPC address (`https://…` when it runs with --xds-mtls).
        #[arg(long, default_value = "http://127.0.0.1:18000")]
        server: String,
        /// Client credentials for --xds-mtls (tls.crt, tls.key, ca.crt, as
        /// `meridian bootstrap --cert-dir` writes them).
        #[arg(long)]
        cert_dir: Option<PathBuf>,
    },
    /// Print what one connected proxy is served, as xDS JSON (private keys redacted).
    ConfigDump {
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "http://127.0.0.1:18000")]
        server: String,
        /// Client credentials for --xds-mtls, as for `status`.
        #[arg(long)]
        cert_dir: Option<PathBuf>,
    },
    /// Measure translation on a synthetic fleet: load, full translation, one edit, the largest
    /// gateway configuration, and memory.
    BenchTranslate {
        #[arg(long, default_value_t = 10_000)]
        access_points: usize,
        #[arg(long, default_value_t = 100)]
        namespaces: usize,
        /// Gateways the VirtualServices are spread over (1 = every route on one gateway).
        #[arg(long, default_value_t = 1)]
        gateways: usize,
        /// Endpoints per Service.
        #[arg(long, default_value_t = 3)]
        endpoints: usize,
    },
    /// Measure ADS at scale: start `meridian standalone` on a synthetic fleet, open N streams
    /// that ACK like Envoy, change one route per gateway and time until every stream ACKed it.
    BenchXds {
        /// ADS streams (simulated gateway proxies), spread over the gateways.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Use delta xDS instead of state of the world.
        #[arg(long)]
        delta: bool,
        #[arg(long, default_value_t = 1000)]
        access_points: usize,
        #[arg(long, default_value_t = 10)]
        namespaces: usize,
        #[arg(long, default_value_t = 10)]
        gateways: usize,
        #[arg(long, default_value_t = 3)]
        endpoints: usize,
        /// Config changes measured.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Streams per HTTP/2 connection (Envoy opens one connection per proxy).
        #[arg(long, default_value_t = 1)]
        streams_per_connection: usize,
        /// Give up on a phase after this long.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Measure REST xDS: a real `meridian standalone` and N proxies polling it like Envoy
    /// (LDS, CDS, and RDS and EDS per name, every 1–2 refresh delays), with one edit.
    BenchRest {
        #[arg(long, default_value_t = 300)]
        pollers: usize,
        #[arg(long, default_value = "3s", value_parser = parse_refresh_delay)]
        refresh_delay: Duration,
        /// The steady state measured (one edit half way).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 300)]
        access_points: usize,
        #[arg(long, default_value_t = 10)]
        namespaces: usize,
        #[arg(long, default_value_t = 10)]
        gateways: usize,
        #[arg(long, default_value_t = 3)]
        endpoints: usize,
        /// Give up on the warm-up after this long.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Measure the embedded CA: certificates issued per second and the size of one SDS secret.
    BenchCerts {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, value_enum, default_value_t = crate::control_plane::certs::ca::KeyType::EcdsaP256)]
        key_type: crate::control_plane::certs::ca::KeyType,
    },
    /// Measure the L4 balancer's Maglev tables: build time, lookups per second (also through
    /// connection tracking), balance, and entries moved when one backend leaves.
    BenchMaglev {
        /// Entries (a prime, as Envoy requires).
        #[arg(long, default_value_t = crate::core::dataplane::maglev::DEFAULT_TABLE_SIZE)]
        table_size: u64,
        #[arg(long, default_value_t = 1000)]
        backends: usize,
        /// Table builds timed.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        #[arg(long, default_value_t = 20_000_000)]
        lookups: u64,
    },
    /// Write the CustomResourceDefinitions generated from the API types.
    Crds {
        /// Output directory.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
    },
    /// Check a manifest directory without serving it; exits non-zero on any problem.
    Validate {
        #[arg(long)]
        config_dir: PathBuf,
    },
    /// Approve a stage of an AccessPoint's staged rollout; the next stage starts once the
    /// approved one is done.
    Approve {
        #[command(flatten)]
        target: rollout::Target,
        /// The stage to approve (as named in spec.rollout.stages).
        #[arg(long)]
        stage: String,
        /// Who approves, for the record (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Inspect or steer an AccessPoint's staged rollout.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Show how each gateway's Envoy configuration (listeners, routes, clusters, endpoints)
    /// would change if its cluster took the AccessPoint's current revision.
    Diff {
        #[command(flatten)]
        target: rollout::Target,
        /// Only this member cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Print JSON instead of unified diffs.
        #[arg(long)]
        json: bool,
    },
}

/// A client of the ops API, over mutual TLS when `cert_dir` holds client credentials.
async fn ops_client(
    server: &str,
    cert_dir: Option<&std::path::Path>,
) -> anyhow::Result<OpsClient<tonic::transport::Channel>> {
    if let Some(dir) = cert_dir {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        use crate::control_plane::certs::{CLIENT_CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE};
        let (ca, cert, key) = (
            read(CLIENT_CA_FILE)?,
            read(CLIENT_CERT_FILE)?,
            read(CLIENT_KEY_FILE)?,
        );
        let channel = ops_tls::connect(server, &ca, &cert, &key).await?;
        return Ok(OpsClient::new(channel));
    }
    // `host:port` means plain HTTP/2 (mutual TLS goes through --cert-dir above).
    let server = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let channel = tonic::transport::Endpoint::from_shared(server.clone())
        .with_context(|| format!("--server {server:?} is not a URL"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    Ok(OpsClient::new(channel))
}

/// Logs to stderr, filtered by `RUST_LOG` (default: info, hickory-server's per-query lines off),
/// in colour only when stderr is a terminal and `NO_COLOR` is unset: a file or a pipe gets
/// plain text.
pub fn init_logging() {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Standalone {
            config_dir,
            state_dir,
            xds_addr,
            admin_addr,
            serving,
        } => {
            let connections = serving.connection_limits();
            let running = standalone::start(StandaloneOptions {
                config_dir,
                state_dir,
                xds_addr,
                admin_addr,
                export: serving.mesh.export_policy(),
                certs: serving.certs,
                xds_tls: serving.xds_tls,
                connections,
                dns: serving.dns,
                load_report_interval: serving.load_report_interval,
                rest_stale_after: serving.rest_stale_after,
            })
            .await?;
            running.run_until(shutdown_signal()).await
        }
        Command::Controller {
            kubeconfig,
            namespace_selectors,
            xds_addr,
            admin_addr,
            lease_namespace,
            lease_name,
            identity,
            lease_duration,
            renew_every,
            ca_secret,
            webhook_addr,
            webhook_url,
            serving,
        } => {
            if renew_every >= lease_duration {
                bail!("--renew-every must be shorter than --lease-duration");
            }
            let namespace_selectors = namespace_selectors
                .iter()
                .map(|s| parse_selector(s))
                .collect::<Result<Vec<_>, _>>()?;
            let identity = identity.unwrap_or_else(default_identity);
            let connections = serving.connection_limits();
            let running = controller::start(ControllerOptions {
                kubeconfig,
                namespace_selectors,
                xds_addr,
                admin_addr,
                export: serving.mesh.export_policy(),
                lease: LeaseConfig {
                    namespace: lease_namespace,
                    name: lease_name,
                    identity,
                    lease_duration,
                    renew_every,
                },
                certs: serving.certs,
                xds_tls: serving.xds_tls,
                ca_secret,
                webhook: crate::control_plane::kubernetes::controller::WebhookOptions {
                    addr: webhook_addr,
                    url: webhook_url,
                },
                connections,
                dns: serving.dns,
                load_report_interval: serving.load_report_interval,
                rest_stale_after: serving.rest_stale_after,
            })
            .await?;
            running.run_until(shutdown_signal()).await
        }
        Command::Bootstrap {
            node_id,
            role,
            gateway,
            cluster,
            zone,
            xds_addr,
            delta,
            rest,
            grpc,
            refresh_delay,
            admin_port,
            cert_dir,
            ca_dir,
            certs,
        } => {
            let (host, port) = xds_addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .with_context(|| format!("--xds-addr {xds_addr:?} must be host:port"))?;
            let gateway = match (role, gateway) {
                (_, Some(gateway)) => gateway,
                (BootstrapRole::L4, None) => DEFAULT_L4_TIER.to_owned(),
                (BootstrapRole::Gateway, None) => {
                    bail!("--gateway namespace/name is required (it names the Gateway served)")
                }
            };
            let Some((namespace, name)) = gateway.split_once('/') else {
                bail!("--gateway {gateway:?} must be namespace/name");
            };
            let tls = match &cert_dir {
                None => None,
                Some(dir) => {
                    let ca = crate::control_plane::certs::load_existing(&certs, ca_dir.as_deref())?;
                    let (cert, key, ca_file) =
                        crate::control_plane::certs::write_client_credentials(
                            &ca,
                            &certs,
                            (namespace, name),
                            dir,
                        )?;
                    let path =
                        |p: PathBuf| std::path::absolute(&p).unwrap_or(p).display().to_string();
                    Some(ClientTls {
                        cert_file: path(cert),
                        key_file: path(key),
                        ca_file: path(ca_file),
                        server_identity: crate::control_plane::certs::xds_server_id(
                            &certs.trust_domain,
                        ),
                    })
                }
            };
            let options = BootstrapOptions {
                node_id,
                l4: role == BootstrapRole::L4,
                gateway,
                cluster,
                zone,
                xds_host: host,
                xds_port: port,
                delta,
                rest: rest.then_some(refresh_delay),
                admin_port,
                tls,
            };
            let json = if grpc {
                crate::control_plane::bootstrap::grpc_bootstrap(&options)
            } else {
                bootstrap(&options)
            };
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(())
        }
        Command::Proxy {
            config_path,
            admin_addr,
            config_cache,
            wait_first_config,
            drain_time,
            workers,
            access_log,
        } => {
            let stopped = stopped_on_signal();
            let options = crate::proxy::ProxyOptions {
                bootstrap: config_path,
                admin_addr,
                config_cache,
                wait_first_config,
                drain_time,
                workers: workers.unwrap_or_else(crate::proxy::workers::default_count),
                access_log,
            };
            crate::proxy::run(options, stopped).await
        }
        Command::NodeAgent {
            node,
            addr,
            kubeconfig,
            drain_taints,
        } => {
            let stopped = stopped_on_signal();
            let options = crate::node_agent::Options {
                node,
                addr,
                kubeconfig,
                drain_taints,
            };
            crate::node_agent::run(options, stopped).await
        }
        Command::L4 {
            config_path,
            admin_addr,
            drain_time,
            bird_config,
            birdc,
            bird_socket,
            withdraw_wait,
            udp_flows,
            xdp_interfaces,
            xdp_mode,
            xdp_snat_ports,
            xdp_flows,
            xdp_services,
            xdp_table_size,
        } => {
            let stopped = stopped_on_signal();
            let options = crate::l4::L4Options {
                bootstrap: config_path,
                admin_addr,
                drain_time,
                bird: bird_config.map(|config| crate::l4::announce::BirdOptions {
                    config,
                    birdc,
                    socket: bird_socket,
                }),
                withdraw_wait,
                udp_flows,
                xdp: (!xdp_interfaces.is_empty()).then_some(crate::l4::xdp::XdpOptions {
                    interfaces: xdp_interfaces,
                    mode: xdp_mode,
                    snat_ports: xdp_snat_ports,
                    flows: xdp_flows,
                    services: xdp_services,
                    backends: XDP_BACKENDS,
                    table_size: xdp_table_size,
                }),
            };
            crate::l4::run(options, stopped).await
        }
        Command::Haproxy {
            config_path,
            haproxy,
            dir,
            agent_port,
            agent_inter,
            check_inter,
            drain_time,
            stats_addr,
        } => {
            let options = crate::haproxy::HaproxyOptions {
                bootstrap: config_path,
                binary: haproxy,
                dir,
                agent_port: (agent_port != 0).then_some(agent_port),
                agent_inter,
                check_inter,
                drain_time,
                stats_addr,
            };
            crate::haproxy::run(options, stopped_on_signal()).await
        }
        Command::Status { server, cert_dir } => {
            let mut client = ops_client(&server, cert_dir.as_deref()).await?;
            let status = client
                .proxy_status(ProxyStatusRequest {})
                .await?
                .into_inner();
            print!("{}", render_status(&status));
            Ok(())
        }
        Command::ConfigDump {
            node,
            server,
            cert_dir,
        } => {
            let mut client = ops_client(&server, cert_dir.as_deref()).await?;
            let dump = client
                .config_dump(ConfigDumpRequest { node_id: node })
                .await?
                .into_inner();
            let value: serde_json::Value = serde_json::from_str(&dump.json)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
        Command::BenchMaglev {
            table_size,
            backends,
            rounds,
            lookups,
        } => {
            let report = crate::bench::maglev::run(table_size, backends, rounds, lookups)?;
            print!("{}", crate::bench::maglev::render(&report));
            Ok(())
        }
        Command::BenchCerts { count, key_type } => {
            let report = crate::control_plane::certs::bench::run(key_type, count)?;
            print!("{}", crate::control_plane::certs::bench::render(&report));
            Ok(())
        }
        Command::BenchTranslate {
            access_points,
            namespaces,
            gateways,
            endpoints,
        } => {
            let options = crate::bench::FleetOptions {
                access_points,
                namespaces,
                gateways: gateways.max(1),
                endpoints,
            };
            let report = crate::bench::translate_bench(&options)?;
            print!("{}", crate::bench::render(&options, &report));
            Ok(())
        }
        Command::BenchRest {
            pollers,
            refresh_delay,
            duration,
            access_points,
            namespaces,
            gateways,
            endpoints,
            timeout,
        } => {
            let options = crate::bench::rest::RestBenchOptions {
                fleet: crate::bench::FleetOptions {
                    access_points,
                    namespaces,
                    gateways: gateways.max(1),
                    endpoints,
                },
                pollers,
                refresh: refresh_delay,
                duration,
                timeout,
            };
            let report = crate::bench::rest::run(&options).await?;
            print!("{}", crate::bench::rest::render(&options, &report));
            Ok(())
        }
        Command::BenchXds {
            streams,
            delta,
            access_points,
            namespaces,
            gateways,
            endpoints,
            rounds,
            streams_per_connection,
            timeout,
        } => {
            let options = crate::bench::xds::XdsBenchOptions {
                fleet: crate::bench::FleetOptions {
                    access_points,
                    namespaces,
                    gateways: gateways.max(1),
                    endpoints,
                },
                streams,
                delta,
                rounds,
                streams_per_connection,
                timeout,
            };
            let report = crate::bench::xds::run(&options).await?;
            print!("{}", crate::bench::xds::render(&options, &report));
            Ok(())
        }
        Command::Crds { out_dir } => {
            std::fs::create_dir_all(&out_dir)?;
            for (name, yaml) in crate::api::crds::all()? {
                let path = out_dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::OperatorCredentials {
            name,
            cert_dir,
            ca_dir,
            certs,
        } => {
            let ca = crate::control_plane::certs::load_existing(&certs, ca_dir.as_deref())?;
            let (cert, key, ca_file) = crate::control_plane::certs::write_operator_credentials(
                &ca, &certs, &name, &cert_dir,
            )?;
            for path in [cert, key, ca_file] {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Approve { target, stage, by } => rollout::approve(&target, &stage, by).await,
        Command::Rollout(command) => rollout::run(command).await,
        Command::Diff {
            target,
            cluster,
            json,
        } => rollout::diff(&target, cluster.as_deref(), json).await,
        Command::Validate { config_dir } => {
            let (mut index, _) = crate::control_plane::index::Index::new();
            let mut provider =
                crate::control_plane::standalone::files::FileProvider::new(&config_dir, None)?;
            let mut problems = provider.sync(&mut index)?;
            // A file written just now that does not parse may be caught mid-write; it is
            // judged once it settles, never passed over.
            for _ in 0..20 {
                if !provider.settling() {
                    break;
                }
                tokio::time::sleep(crate::control_plane::standalone::files::SETTLE).await;
                problems = provider.sync(&mut index)?;
            }
            if provider.settling() {
                bail!("{}: a file is still being written", config_dir.display());
            }
            for p in &problems {
                println!("{}: {}", p.source, p.message);
            }
            if !problems.is_empty() {
                bail!("{} problem(s) in {}", problems.len(), config_dir.display());
            }
            println!(
                "{}: {} objects, no problems",
                config_dir.display(),
                index.model().len()
            );
            Ok(())
        }
    }
}

/// Ctrl-C or SIGTERM (what Kubernetes sends a pod it stops).
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending().await,
            }
        } => {}
    }
    tracing::info!("shutting down");
}

/// Turns true on SIGTERM or Ctrl-C: how the data-plane programs learn to drain and stop.
fn stopped_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.send_replace(true);
    });
    stopped
}

fn parse_refresh_delay(text: &str) -> Result<Duration, String> {
    let delay = parse_duration(text)?;
    let allowed = crate::control_plane::xds::identity::REFRESH_DELAYS;
    if !allowed.contains(&delay) {
        return Err("a refresh delay must be from 100ms to 1h".into());
    }
    Ok(delay)
}

/// Gateways the packet path knows at most (its `backends` map: 16 bytes each).
const XDP_BACKENDS: u32 = 4_096;

/// `FIRST-LAST`, a non-empty port range.
fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected FIRST-LAST, as 1024-32767"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{text:?}: port {p:?}: {e}"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || first > last {
        return Err(format!("{text:?}: FIRST must be between 1 and LAST"));
    }
    Ok(first..=last)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::core::duration::parse(text).map_err(|e| e.to_string())
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "meridian".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The `meridian status` table.
pub fn render_status(status: &crate::control_plane::admin::ops::pb::ProxyStatusResponse) -> String {
    let mut out = format!(
        "{:<24} {:<20} {:<7} {:<10} {:<6} {:<8} {:<8} {:<8} {:<8} {:<8} {}\n",
        "NODE", "GATEWAY", "ROLE", "CLUSTER", "MODE", "CDS", "LDS", "EDS", "RDS", "SDS", "REPLICA"
    );
    for p in &status.proxies {
        let state = |t: &str| {
            p.types
                .iter()
                .find(|s| s.r#type == t)
                .map(|s| s.state.clone())
                .unwrap_or_else(|| "NOT_SENT".into())
        };
        out.push_str(&format!(
            "{:<24} {:<20} {:<7} {:<10} {:<6} {:<8} {:<8} {:<8} {:<8} {:<8} {}\n",
            p.node_id,
            p.gateway,
            p.role,
            p.cluster,
            p.mode,
            state("CDS"),
            state("LDS"),
            state("EDS"),
            state("RDS"),
            state("SDS"),
            p.replica
        ));
        if p.mode == "rest" {
            let seconds = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
            out.push_str(&format!(
                "  polls every {}, last poll {} ago, answered from generation {}{}\n",
                seconds(p.refresh_delay_ms),
                seconds(p.last_poll_ms_ago),
                p.generation,
                if p.stopped_polling {
                    " (STOPPED POLLING)"
                } else {
                    ""
                }
            ));
        }
        for t in p.types.iter().filter(|t| !t.last_nack.is_empty()) {
            out.push_str(&format!("  last {} NACK: {}\n", t.r#type, t.last_nack));
        }
    }
    out
}
