//! Route configurations are decoded and compiled on a thread of their own that runs at idle
//! priority (`SCHED_IDLE`): the kernel runs it only when no worker on its core wants the CPU,
//! and a worker that wakes takes the core back at once. Compiling 10,000 virtual hosts then
//! fills the gaps between requests instead of taking turns with them (with the control
//! thread's nice +10 it still took whole time slices of a busy worker's core). A large config
//! applies later on a saturated core, and its ACK waits for it: traffic before config, the
//! order a gateway wants. The control thread stays free for the admin listener and load
//! reports meanwhile. (The ADS client's thread, which hands the configs over, runs at idle
//! priority too.)

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::google::protobuf::Any;

use super::Unheld;
use crate::core::dataplane::routes::RouteTable;

type Job = Box<dyn FnOnce() + Send>;

/// What one route configuration became: its name and table, or why it was refused.
pub type Compiled = Result<(String, Arc<RouteTable>), String>;

/// The accepted route tables by name.
pub type Tables = BTreeMap<String, Arc<RouteTable>>;

/// The idle-priority compile thread; it ends when every clone of this is dropped.
#[derive(Clone)]
pub struct Compiler {
    jobs: mpsc::Sender<Job>,
}

impl Compiler {
    pub fn start() -> io::Result<Compiler> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("proxy-compile".to_owned())
            .spawn(move || {
                super::workers::run_at_idle_priority("proxy-compile");
                while let Ok(job) = queue.recv() {
                    job();
                }
            })?;
        Ok(Compiler { jobs })
    }

    /// Compiles each resource (an encoded `RouteConfiguration`) on the compile thread,
    /// reusing the virtual hosts of its `previous` version that did not change; the results
    /// are in the resources' order. Should that thread be gone, they are compiled here.
    pub async fn routes(&self, resources: &[Any], previous: &Tables) -> Vec<Compiled> {
        let encoded: Vec<Vec<u8>> = resources.iter().map(|any| any.value.clone()).collect();
        let (done, result) = tokio::sync::oneshot::channel();
        let tables = previous.clone();
        let job: Job = Box::new(move || {
            let _ = done.send(compile_all(&encoded, &tables));
        });
        if self.jobs.send(job).is_ok() {
            if let Ok(compiled) = result.await {
                return compiled;
            }
        }
        let encoded: Vec<&[u8]> = resources.iter().map(|any| any.value.as_slice()).collect();
        compile_all(&encoded, previous)
    }

    /// Frees replaced configs on the compile thread (here, should it be gone).
    pub fn free(&self, unheld: Unheld) {
        if unheld.0.is_empty() {
            return;
        }
        let _ = self.jobs.send(Box::new(move || free_all(unheld)));
    }
}

/// How long the compile thread computes before it offers its core back.
const TURN: Duration = Duration::from_micros(100);

/// Yields the core every [`TURN`] of work. Idle priority alone is not enough: the kernel still
/// gives an idle thread a turn now and then on a core whose worker never sleeps, and without a
/// yield that turn lasts until the next scheduler tick (4 ms at 250 Hz), a stall that every
/// request in flight on that worker waits out.
struct Turns {
    started: Instant,
}

impl Turns {
    fn new() -> Turns {
        Turns {
            started: Instant::now(),
        }
    }

    fn pause(&mut self) {
        if self.started.elapsed() >= TURN {
            std::thread::yield_now();
            self.started = Instant::now();
        }
    }
}

/// Frees the configs' route tables that nothing else holds one virtual host at a time (a
/// table unchanged by the last version is shared with the config that replaced it).
fn free_all(unheld: Unheld) {
    let mut turns = Turns::new();
    for config in unheld.0 {
        let Ok(config) = Arc::try_unwrap(config) else {
            continue;
        };
        for (_, table) in config.routes {
            if let Ok(table) = Arc::try_unwrap(table) {
                table.free_pausing(|| turns.pause());
            }
        }
    }
}

/// Compiles each configuration over its previous version, yielding the core every [`TURN`].
fn compile_all(encoded: &[impl AsRef<[u8]>], previous: &Tables) -> Vec<Compiled> {
    let mut turns = Turns::new();
    encoded
        .iter()
        .map(|config| {
            let table = RouteTable::compile_encoded_reusing(
                config.as_ref(),
                |name| previous.get(name).cloned(),
                || turns.pause(),
            )
            .map_err(|e| e.to_string())?;
            Ok((table.name.clone(), Arc::new(table)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use prost::Message;

    use super::*;

    fn encoded(config: RouteConfiguration) -> Any {
        Any {
            type_url: crate::runtime::xds_client::resources::ROUTES.to_owned(),
            value: config.encode_to_vec(),
        }
    }

    #[tokio::test]
    async fn compiles_in_the_order_given_and_names_what_it_refuses() {
        let compiler = Compiler::start().expect("a thread");
        let good = RouteConfiguration {
            name: "http.80".to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: "a".to_owned(),
                domains: vec!["a.test".to_owned()],
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        };
        let refused = RouteConfiguration {
            name: "http.81".to_owned(),
            ignore_port_in_host_matching: true,
            ..RouteConfiguration::default()
        };
        let compiled = compiler
            .routes(&[encoded(good), encoded(refused)], &Tables::new())
            .await;
        assert_eq!(compiled.len(), 2);
        assert_eq!(
            compiled[0].as_ref().map(|(name, _)| name.as_str()),
            Ok("http.80")
        );
        let error = compiled[1].as_ref().expect_err("refused");
        assert!(error.contains("RouteConfiguration http.81"), "{error}");
    }

    #[test]
    fn its_thread_runs_at_idle_priority() {
        let compiler = Compiler::start().expect("a thread");
        let (policy, seen) = mpsc::channel();
        let job: Job = Box::new(move || {
            // SAFETY: sched_getscheduler takes and returns plain integers.
            let _ = policy.send(unsafe { libc::sched_getscheduler(0) });
        });
        compiler.jobs.send(job).expect("the thread takes jobs");
        assert_eq!(seen.recv(), Ok(libc::SCHED_IDLE));
    }
}
