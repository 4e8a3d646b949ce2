//! The proxy's request workers, as Envoy's and HAProxy's: one thread per core (`--workers N`),
//! each running its own single-threaded runtime. Every listener has one socket per worker
//! (`SO_REUSEPORT`, so the kernel spreads connections), and a connection lives on the worker
//! that accepted it with everything it touches: its upstream connection pools are the worker's
//! own, so the request path takes no lock and hands nothing to another thread. The admin
//! listener and load reports run on the control thread, the ADS client and the route compiler
//! on threads of their own at idle priority ([`run_at_idle_priority`]).

use std::future::Future;
use std::io;

use tokio::runtime::Handle;
use tokio::sync::watch;

/// Running workers; they stop when this is dropped.
pub struct Workers {
    handles: Vec<Handle>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("proxy-worker-{index}"))
                .spawn(move || {
                    super::shards::enter_shard(index);
                    runtime.block_on(async move {
                        tokio::spawn(super::upstream::sweep_idle());
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                })?;
        }
        Ok(Workers { handles, stop })
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task(worker index)` on every worker.
    pub fn spawn_each<F, T>(&self, mut task: T)
    where
        T: FnMut(usize) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        for (index, handle) in self.handles.iter().enumerate() {
            handle.spawn(task(index));
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// How much lower than the workers the calling thread runs (a nice value).
const CONTROL_NICENESS: libc::c_int = 10;

/// Makes the calling thread (the control thread: ADS, compiling configs, admin, load reports)
/// yield the CPU to the workers: on a busy core, decoding and compiling a large config then
/// delays the config, not the requests. Threads it starts afterwards inherit the priority;
/// the workers are started before. A refusal is logged and changes nothing.
pub fn yield_to_workers() {
    // SAFETY: gettid, getpriority and setpriority take and return plain integers.
    let (tid, result) = unsafe {
        let tid = libc::gettid();
        let result = libc::setpriority(
            libc::PRIO_PROCESS,
            libc::id_t::try_from(tid).unwrap_or(0),
            libc::getpriority(libc::PRIO_PROCESS, 0).saturating_add(CONTROL_NICENESS),
        );
        (tid, result)
    };
    if result != 0 {
        tracing::warn!(tid, error = %io::Error::last_os_error(), "cannot lower the control thread's priority");
    }
}

/// Makes the calling thread run at idle priority (`SCHED_IDLE`): the kernel gives it a core
/// only when no worker there wants it, and a worker that wakes takes the core back at once.
/// A refusal is logged (naming `thread`), and the thread keeps the priority it had.
pub fn run_at_idle_priority(thread: &str) {
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the parameter we pass; pid 0 is the calling thread.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
    if result != 0 {
        tracing::warn!(thread, error = %io::Error::last_os_error(), "cannot run at idle priority");
    }
}

/// One per core, as Envoy's `--concurrency` defaults.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
