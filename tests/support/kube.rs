//! A real Kubernetes control plane on loopback: etcd plus kube-apiserver, with kubectl.
//!
//! Binaries come from `$KUBEBUILDER_ASSETS` when set, else from `e2e/kube/install.sh` (which
//! builds kube-apiserver 1.20.2 once from Debian's source package and caches it outside the
//! repository). Three identities are configured with static tokens: `admin` (system:masters),
//! the `meridian-system/meridian` service account, which gets only what
//! `deploy/meridian.yaml` grants it, and `approver`, which gets what a test binds to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::free_port;

pub const CONTROLLER_USER: &str = "system:serviceaccount:meridian-system:meridian";
/// The identity `deploy/member.yaml` grants a member cluster's rights to.
pub const MEMBER_USER: &str = "system:serviceaccount:meridian-system:meridian-member";

/// An etcd that one or several apiservers store into (each under its own prefix).
pub struct Etcd {
    _dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

impl Etcd {
    pub fn start(assets: &Path) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let (port, peer_port) = (free_port(), free_port());
        let child = Command::new(assets.join("etcd"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.err")).unwrap())
            .spawn()
            .expect("start etcd");
        Etcd {
            _dir: dir,
            child,
            port,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct KubeCluster {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    pub assets: PathBuf,
    apiserver: Option<Child>,
    apiserver_args: Vec<String>,
    /// Dropped after the apiserver (field order).
    _etcd: Arc<Etcd>,
    pub port: u16,
    pub admin_kubeconfig: PathBuf,
    /// Authenticates as the controller's service account (RBAC applies).
    pub controller_kubeconfig: PathBuf,
    /// User `approver`, with no rights until a test binds some.
    pub approver_kubeconfig: PathBuf,
    /// Released last: lets the next test's cluster start.
    _slot: Option<Slot>,
}

/// At most this many single-cluster tests of one binary run at once: more apiservers than
/// that do not become ready in time on a 2-core machine.
const CONCURRENT_CLUSTERS: usize = 2;

static RUNNING: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// One of the [`CONCURRENT_CLUSTERS`] slots, held while a cluster runs.
pub struct Slot;

impl Slot {
    fn acquire() -> Slot {
        let (count, freed) = &RUNNING;
        let mut running = count.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= CONCURRENT_CLUSTERS {
            running = freed.wait(running).unwrap_or_else(|p| p.into_inner());
        }
        *running += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (count, freed) = &RUNNING;
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// The kube-apiserver, etcd and kubectl binaries.
pub fn assets() -> PathBuf {
    static ASSETS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ASSETS
        .get_or_init(|| {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new("bash")
                .arg(repo.join("e2e/kube/install.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run e2e/kube/install.sh");
            assert!(out.status.success(), "e2e/kube/install.sh failed");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

impl KubeCluster {
    /// A cluster with its own etcd.
    pub fn start() -> KubeCluster {
        let slot = Slot::acquire();
        let etcd = Arc::new(Etcd::start(&assets()));
        let mut cluster = KubeCluster::start_on(etcd, "meridian-e2e");
        cluster._slot = Some(slot);
        cluster
    }

    /// A cluster storing into a shared etcd under `/prefix`, as several "clusters" of one test do.
    pub fn start_on(etcd: Arc<Etcd>, prefix: &str) -> KubeCluster {
        let cluster = KubeCluster::launch(etcd, prefix);
        cluster.wait_ready();
        cluster
    }

    /// Starts several clusters on one etcd at once (apiservers boot in parallel).
    pub fn start_fleet(prefixes: &[&str]) -> Vec<KubeCluster> {
        let etcd = Arc::new(Etcd::start(&assets()));
        let fleet: Vec<KubeCluster> = prefixes
            .iter()
            .map(|p| KubeCluster::launch(etcd.clone(), p))
            .collect();
        for cluster in &fleet {
            cluster.wait_ready();
        }
        fleet
    }

    fn launch(etcd: Arc<Etcd>, prefix: &str) -> KubeCluster {
        let assets = assets();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let sa_key = dir.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .expect("openssl generates the service-account key");
        assert!(status.success());
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "admin-token,admin,admin,\"system:masters\"\n\
                 meridian-token,{CONTROLLER_USER},meridian,\"system:serviceaccounts,system:serviceaccounts:meridian-system\"\n\
                 approver-token,approver,approver\n\
                 member-token,{MEMBER_USER},meridian-member,\"system:serviceaccounts,system:serviceaccounts:meridian-system\"\n"
            ),
        )
        .unwrap();
        let apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", etcd.port),
            format!("--etcd-prefix=/{prefix}"),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".to_owned(),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
        ];
        let kubeconfig = |name: &str, token: &str| {
            let path = dir.join(name);
            std::fs::write(&path, kubeconfig_text(port, token)).unwrap();
            path
        };
        let mut cluster = KubeCluster {
            admin_kubeconfig: kubeconfig("admin.kubeconfig", "admin-token"),
            controller_kubeconfig: kubeconfig("meridian.kubeconfig", "meridian-token"),
            approver_kubeconfig: kubeconfig("approver.kubeconfig", "approver-token"),
            _dir: tmp,
            dir,
            assets,
            apiserver: None,
            apiserver_args,
            _etcd: etcd,
            port,
            _slot: None,
        };
        cluster.start_apiserver();
        cluster
    }

    /// Starts (or restarts) the apiserver with the same port, certificates and storage.
    pub fn start_apiserver(&mut self) {
        let log = |name: &str| std::fs::File::create(self.dir.join(name)).unwrap();
        let child = Command::new(self.assets.join("kube-apiserver"))
            .args(&self.apiserver_args)
            .stdout(log("apiserver.log"))
            .stderr(log("apiserver.err"))
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
    }

    /// Stops the apiserver, as an outage of that cluster's control plane.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An admin kubeconfig, for storing in a Secret.
    /// The kubeconfig a hub is given for this cluster as a member, as the identity
    /// `deploy/member.yaml` grants rights to (apply it first).
    pub fn member_kubeconfig_text(&self) -> String {
        kubeconfig_text(self.port, "member-token")
    }

    pub fn admin_kubeconfig_text(&self) -> String {
        kubeconfig_text(self.port, "admin-token")
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                // The default namespace appears shortly after readiness.
                if self
                    .kubectl(&["get", "namespace", "default"])
                    .status
                    .success()
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "kube-apiserver did not become ready:\n{}",
            std::fs::read_to_string(self.dir.join("apiserver.err")).unwrap_or_default()
        );
    }

    /// Runs kubectl as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.assets.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl as admin and returns stdout; panics with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` with `yaml` on stdin.
    pub fn apply(&self, yaml: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(self.assets.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A field of an object via `-o jsonpath`; empty when absent or on error.
    pub fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let mut all = args.to_vec();
        let expr = format!("jsonpath={path}");
        all.extend(["-o", &expr]);
        let out = self.kubectl(&all);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        self.stop_apiserver();
    }
}

fn kubeconfig_text(port: u16, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: u, namespace: default}}\ncurrent-context: e2e\n"
    )
}

/// `meridian controller` as a child process (so a test can kill it like a crashed pod).
pub struct Controller {
    child: Child,
    pub identity: String,
    pub xds_port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Controller {
    pub fn start(kubeconfig: &Path, dir: &Path, identity: &str, extra: &[&str]) -> Controller {
        Controller::start_on(
            kubeconfig,
            dir,
            identity,
            extra,
            (free_port(), free_port()),
            "",
        )
    }

    /// Kills it and starts it again, same identity and ports, as a restarted pod would be.
    pub fn restart(&mut self, kubeconfig: &Path, dir: &Path, extra: &[&str]) {
        self.kill();
        let ports = (self.xds_port, self.admin_port);
        *self = Controller::start_on(kubeconfig, dir, &self.identity, extra, ports, "-restarted");
    }

    fn start_on(
        kubeconfig: &Path,
        dir: &Path,
        identity: &str,
        extra: &[&str],
        (xds_port, admin_port): (u16, u16),
        log_suffix: &str,
    ) -> Controller {
        // MERIDIAN_E2E_LOGS=DIR keeps controller logs after the test for debugging.
        let log_dir =
            std::env::var_os("MERIDIAN_E2E_LOGS").map_or(dir.to_path_buf(), PathBuf::from);
        let log = log_dir.join(format!("{identity}{log_suffix}.log"));
        // The RolloutAction webhook, which the API server reaches on loopback.
        let webhook_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .arg("controller")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--xds-addr", &format!("127.0.0.1:{xds_port}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
            .args([
                "--webhook-url",
                &format!("https://127.0.0.1:{webhook_port}/rollout-actions"),
            ])
            .args(["--identity", identity])
            .args(extra)
            .env("RUST_LOG", "info,meridian=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start meridian controller");
        Controller {
            child,
            identity: identity.to_owned(),
            xds_port,
            admin_port,
            log,
        }
    }

    /// SIGKILL: no lease release, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- {} log (last 80 lines) ---", self.identity);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A path in this repository, as a string for command lines.
pub fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

impl KubeCluster {
    /// Who holds Meridian's leader Lease now (empty: nobody yet).
    pub fn lease_holder(&self) -> String {
        self.jsonpath(
            &[
                "get",
                "lease",
                "meridian-controller",
                "-n",
                "meridian-system",
            ],
            "{.spec.holderIdentity}",
        )
    }
}
