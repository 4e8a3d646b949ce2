//! The optional access log (`--access-log FILE`, `-` for standard output): one JSON object per
//! request, with the fields of Envoy's default format. Workers hand lines to a writer thread
//! over a bounded channel and never wait on the disk: when the writer falls behind, lines are
//! dropped and counted (`meridian_proxy_access_log_dropped_total`).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Lines waiting for the writer before new ones are dropped.
const BACKLOG: usize = 65_536;

pub struct AccessLog {
    lines: mpsc::Sender<String>,
    pub dropped: Counter,
}

/// What Envoy's default access log format records, as JSON fields.
#[derive(serde::Serialize)]
pub struct Entry<'a> {
    pub start_time: String,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub response_code: u16,
    /// Envoy's response flags: `NR` no route, `UH` no healthy upstream, `UO` overflow (circuit
    /// breaker), `UF` upstream connect failure, `UC` upstream reset, `UT` upstream timeout.
    pub response_flags: &'a str,
    pub duration_ms: u64,
    pub x_forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub authority: &'a str,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_host: Option<&'a str>,
    pub downstream_remote_address: String,
}

impl AccessLog {
    /// Opens `path` for appending (`-`: standard output) and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("access log {}: {e}", path.display()))
                    })?,
            )
        };
        let (lines, mut receiver) = mpsc::channel::<String>(BACKLOG);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buffer = std::io::BufWriter::new(&mut out);
                while let Some(line) = receiver.blocking_recv() {
                    let _ = buffer.write_all(line.as_bytes());
                    if receiver.is_empty() {
                        let _ = buffer.flush();
                    }
                }
                let _ = buffer.flush();
            })?;
        Ok(AccessLog {
            lines,
            dropped: Counter::default(),
        })
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if self.lines.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

/// `2026-12-04T21:10:51.123Z`.
pub fn timestamp(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let nanos = i128::try_from(since.as_nanos()).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
