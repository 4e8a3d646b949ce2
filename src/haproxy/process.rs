//! The HAProxy process `meridian haproxy` runs: master-worker, started once, reloaded by
//! signal after `haproxy -c` approved the new configuration; endpoint changes go through the
//! Runtime API instead ([`runtime_command`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;

use crate::runtime::log_budget::LogBudget;

/// How long a reload may take to bring up its new worker.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// How long one Runtime API exchange may take.
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("HAProxy refused the configuration: {0}")]
    Refused(String),
    #[error("running {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("HAProxy could not load the configuration ({0}); the previous one keeps serving")]
    ReloadFailed(String),
    #[error("HAProxy exited: {0}")]
    Exited(String),
    #[error("Runtime API {socket}: {message}")]
    Runtime { socket: String, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// HAProxy, shared by the xDS subscriber and the watchdog that restarts it.
pub type SharedHaproxy = std::sync::Arc<tokio::sync::Mutex<Haproxy>>;

pub struct Haproxy {
    binary: PathBuf,
    config: PathBuf,
    master_socket: PathBuf,
    /// The HAProxy this program started (or found running at start, and adopted).
    started: bool,
    /// HAProxy's latest alerts (what it logs when it cannot load a configuration), from the
    /// master this program started.
    alerts: Arc<Mutex<VecDeque<String>>>,
}

/// Alerts kept.
const ALERTS: usize = 8;

/// A running master and the worker serving its latest configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Processes {
    master: i32,
    worker: Option<i32>,
    /// Reloads that failed (the master keeps the workers it had).
    failed: u32,
}

impl Haproxy {
    pub fn new(binary: PathBuf, dir: &Path) -> Haproxy {
        Haproxy {
            binary,
            config: dir.join("haproxy.cfg"),
            master_socket: dir.join("master.sock"),
            started: false,
            alerts: Arc::default(),
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// `haproxy -c` on `candidate`: its complaint, trimmed to the alerts, when it refuses it.
    pub async fn check(&self, candidate: &Path) -> Result<(), HaproxyError> {
        let output = Command::new(&self.binary)
            .arg("-c")
            .arg("-f")
            .arg(candidate)
            .output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        if output.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        let alerts: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ALERT"))
            .take(5)
            .collect();
        let shown = if alerts.is_empty() {
            text.trim().to_owned()
        } else {
            alerts.join("; ")
        };
        Err(HaproxyError::Refused(shown))
    }

    /// Starts HAProxy on the configuration in place, or reloads the one running (started
    /// here, or left running by an earlier run of this program); returns once a new worker
    /// serves it.
    pub async fn load(&mut self) -> Result<(), HaproxyError> {
        let Some(before) = self.processes().await else {
            return self.start().await;
        };
        self.started = true;
        self.alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // The master re-executes itself; what it answers, if anything, does not matter.
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            exchange(&self.master_socket, "reload"),
        )
        .await;
        let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(now) = self.processes().await {
                if now.failed > before.failed {
                    // Its alerts reach us a moment later than the master's status.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(HaproxyError::ReloadFailed(self.latest_alerts()));
                }
                if now.worker.is_some() && now.worker != before.worker {
                    return Ok(());
                }
            }
        }
        Err(HaproxyError::ReloadFailed(format!(
            "no new worker within {}s",
            RELOAD_WAIT.as_secs()
        )))
    }

    fn latest_alerts(&self) -> String {
        let alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        if alerts.is_empty() {
            "HAProxy's log says why".to_owned()
        } else {
            alerts.iter().cloned().collect::<Vec<_>>().join("; ")
        }
    }

    async fn start(&mut self) -> Result<(), HaproxyError> {
        let _ = std::fs::remove_file(&self.master_socket);
        let mut child = Command::new(&self.binary)
            .arg("-W")
            .arg("-S")
            .arg(&self.master_socket)
            .arg("-p")
            .arg(self.pid_file())
            .arg("-f")
            .arg(&self.config)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(relay_log(stderr, self.alerts.clone()));
        }
        self.started = true;
        let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HaproxyError::Exited(status.to_string()));
            }
            if self.processes().await.is_some_and(|p| p.worker.is_some()) {
                tracing::info!(config = %self.config.display(), "HAProxy started");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(HaproxyError::ReloadFailed(self.latest_alerts()))
    }

    /// The master and its current worker (`show proc` on the master CLI: the first line
    /// under `# workers`), if a master answers.
    async fn processes(&self) -> Option<Processes> {
        let answer = exchange(&self.master_socket, "show proc;quit").await.ok()?;
        let mut master = None;
        let mut worker = None;
        let mut failed = 0;
        let mut section = "";
        for line in answer.lines() {
            if let Some(name) = line.strip_prefix("# ") {
                section = name.trim();
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(pid), Some(kind)) = (fields.next(), fields.next()) else {
                continue;
            };
            let pid = pid.parse::<i32>().ok();
            match (section, kind) {
                (_, "master") => {
                    master = pid;
                    // `<reloads> [failed: <n>]`
                    failed = line
                        .split("failed:")
                        .nth(1)
                        .and_then(|rest| rest.split(']').next())
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0);
                }
                ("workers", "worker") if worker.is_none() => worker = pid,
                _ => {}
            }
        }
        Some(Processes {
            master: master?,
            worker,
            failed,
        })
    }

    /// Whether HAProxy was started and its master is gone (neither answers on its CLI nor
    /// runs under the pid it wrote); it is then started again on the configuration in place
    /// (which runtime updates keep current). A master that is only slow to answer, on a
    /// loaded machine, is left alone: starting another beside it would leave two serving.
    pub async fn restart_if_exited(&mut self) -> Option<Result<(), HaproxyError>> {
        if !self.started || self.master().await.is_some() {
            return None;
        }
        tracing::error!("HAProxy is not running; starting it again");
        Some(self.start().await)
    }

    /// Soft stop: the workers finish their requests (bounded by `hard-stop-after`), then the
    /// master exits. Returns the master's pid for [`wait_exit`].
    pub async fn stop(&mut self) -> Option<i32> {
        let master = self.master().await?;
        // SAFETY: kill(2) with a valid signal number has no memory effects.
        unsafe {
            libc::kill(master, libc::SIGUSR1);
        }
        Some(master)
    }

    /// The running master's pid: as its CLI says, or, when the CLI does not answer in time,
    /// as the pid file says if that process is still an HAProxy.
    async fn master(&self) -> Option<i32> {
        if let Some(processes) = self.processes().await {
            return Some(processes.master);
        }
        let pid = std::fs::read_to_string(self.pid_file())
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse::<i32>()
            .ok()?;
        // A pid is reused once its process is gone: it must still name an HAProxy.
        let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let binary = self.binary.file_name()?.to_string_lossy();
        // comm holds at most 15 bytes of the name.
        let running = binary.starts_with(command.trim()) && !command.trim().is_empty();
        static SILENT: LogBudget = LogBudget::new(1, Duration::from_secs(30));
        if running {
            if let Some(suppressed) = SILENT.allow() {
                tracing::warn!(
                    pid,
                    suppressed,
                    "HAProxy's master CLI does not answer; its pid file names it"
                );
            }
        }
        running.then_some(pid)
    }

    fn pid_file(&self) -> PathBuf {
        self.config.with_file_name("haproxy.pid")
    }

    fn spawn_error(&self, source: std::io::Error) -> HaproxyError {
        HaproxyError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        }
    }
}

/// Passes HAProxy's log on (as this program's, with `haproxy` as the target), keeping its
/// alerts.
async fn relay_log(stderr: tokio::process::ChildStderr, alerts: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains("[ALERT]") {
            tracing::warn!(target: "haproxy", "{line}");
            let mut alerts = alerts.lock().unwrap_or_else(|e| e.into_inner());
            if alerts.len() == ALERTS {
                alerts.pop_front();
            }
            // `[ALERT]    (1234) : <what>`: only what.
            alerts.push_back(
                line.split_once(" : ")
                    .map_or(line.as_str(), |(_, what)| what)
                    .to_owned(),
            );
        } else {
            tracing::info!(target: "haproxy", "{line}");
        }
    }
}

/// Sends `commands` to the Runtime API at `socket` in one exchange; an answer naming an
/// error is the error.
pub async fn runtime_command(socket: &Path, commands: &[String]) -> Result<(), HaproxyError> {
    for batch in commands.chunks(64) {
        let answer = exchange(socket, &batch.join(";"))
            .await
            .map_err(|message| HaproxyError::Runtime {
                socket: socket.display().to_string(),
                message,
            })?;
        let refused = answer.lines().find(|l| {
            let l = l.to_ascii_lowercase();
            [
                "no such", "unknown", "require", "invalid", "failed", "cannot", "can't",
            ]
            .iter()
            .any(|word| l.contains(word))
        });
        if let Some(line) = refused {
            return Err(HaproxyError::Runtime {
                socket: socket.display().to_string(),
                message: line.to_owned(),
            });
        }
    }
    Ok(())
}

async fn exchange(socket: &Path, command: &str) -> Result<String, String> {
    let talk = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer)
    };
    tokio::time::timeout(RUNTIME_TIMEOUT, talk)
        .await
        .map_err(|_| "no answer".to_owned())?
}

/// Waits until process `pid` is gone, or `limit` passed.
pub async fn wait_exit(pid: i32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 && tokio::time::Instant::now() < deadline {
        // Reap it if it is our child (a zombie still answers signal 0).
        // SAFETY: waitpid on a pid with WNOHANG and a null status pointer.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `content` to `path` whole (a temporary file renamed over it).
pub fn write_atomically(path: &Path, content: &str) -> Result<(), HaproxyError> {
    write_with_mode(path, content, 0o644)
}

/// [`write_atomically`], readable by the owner only (private keys).
pub fn write_private(path: &Path, content: &str) -> Result<(), HaproxyError> {
    write_with_mode(path, content, 0o600)
}

fn write_with_mode(path: &Path, content: &str, mode: u32) -> Result<(), HaproxyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| HaproxyError::Write {
        path: path.display().to_string(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(error)?;
    file.write_all(content.as_bytes()).map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}
