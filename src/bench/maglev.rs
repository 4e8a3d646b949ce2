//! `meridian bench-maglev`: the L4 balancer's pure tables at the sizes the L4 tier uses. How
//! long a Maglev table takes to build (the paper reports 1.8 ms for M = 65,537, N = 1,000),
//! how fast flows are looked up (5-tuple hash plus table entry, and through connection
//! tracking), how evenly entries spread, and how many move when one backend leaves.

use std::time::{Duration, Instant};

use crate::core::dataplane::conntrack::{ConnTrack, FlowKey};
use crate::core::dataplane::maglev::{Backend, MaglevError, MaglevTable};

pub struct MaglevReport {
    pub table_size: u64,
    pub backends: usize,
    pub build_min: Duration,
    pub build_median: Duration,
    pub lookups_per_second: f64,
    pub tracked_per_second: f64,
    /// Entries of the fullest and emptiest backend, over the mean.
    pub max_over_mean: f64,
    pub min_over_mean: f64,
    /// Share of entries that changed backend when one of N left (ideal: 1/N).
    pub moved_on_removal: f64,
}

/// Builds `rounds` tables of `table_size` entries for `backends` equal backends, then looks up
/// `lookups` pseudo-random flows.
pub fn run(
    table_size: u64,
    backends: usize,
    rounds: usize,
    lookups: u64,
) -> Result<MaglevReport, MaglevError> {
    let ids: Vec<String> = (0..backends)
        .map(|i| format!("10.{}.{}.{}:8080", i / 65_536, (i / 256) % 256, i % 256))
        .collect();
    let all: Vec<Backend<'_>> = ids.iter().map(|id| Backend { id, weight: 1 }).collect();
    let mut builds = Vec::with_capacity(rounds.max(1));
    let mut table = MaglevTable::build(&all, table_size)?;
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        table = MaglevTable::build(&all, table_size)?;
        builds.push(started.elapsed());
    }
    builds.sort();

    let mut flow = FlowKey {
        protocol: 6,
        source: [0; 16],
        source_port: 0,
        destination: [0; 16],
        destination_port: 443,
    };
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next_flow = |flow: &mut FlowKey| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        flow.source[12..16].copy_from_slice(&(state as u32).to_be_bytes());
        flow.source_port = (state >> 32) as u16;
    };
    let started = Instant::now();
    let mut checksum = 0usize;
    for _ in 0..lookups {
        next_flow(&mut flow);
        checksum = checksum.wrapping_add(table.get(flow.hash()).unwrap_or(0));
    }
    let lookups_per_second = lookups as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box(checksum);

    // Through connection tracking: new flows, each tracked, most expiring.
    let mut tracker = ConnTrack::new(Duration::from_secs(30), 1 << 20);
    let tracked = lookups.min(2_000_000);
    let started = Instant::now();
    for i in 0..tracked {
        next_flow(&mut flow);
        let now = Duration::from_micros(i);
        checksum = checksum.wrapping_add(
            tracker
                .choose(flow, now, &all, &table, &|_| true)
                .unwrap_or(0),
        );
    }
    let tracked_per_second = tracked as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box(checksum);

    let shares = table.shares(backends);
    let mean = table_size as f64 / backends.max(1) as f64;
    let max_over_mean = shares.iter().copied().max().unwrap_or(0) as f64 / mean;
    let min_over_mean = shares.iter().copied().min().unwrap_or(0) as f64 / mean;

    let fewer = MaglevTable::build(&all[1..], table_size)?;
    let moved = (0..table_size)
        .filter(|&hash| {
            // Indexes in `fewer` are shifted by the one removed.
            let before = table.get(hash).map(|i| all[i].id);
            let after = fewer.get(hash).map(|i| all[i + 1].id);
            before != after
        })
        .count();
    Ok(MaglevReport {
        table_size,
        backends,
        build_min: builds[0],
        build_median: builds[builds.len() / 2],
        lookups_per_second,
        tracked_per_second,
        max_over_mean,
        min_over_mean,
        moved_on_removal: moved as f64 / table_size as f64,
    })
}

/// The report as printed, with the paper's build time as the reference.
pub fn render(report: &MaglevReport) -> String {
    const PAPER_BUILD_MS: f64 = 1.8;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "Maglev, M = {} entries, N = {} backends of equal weight\n\
         build: {:.3} ms min, {:.3} ms median (paper: {PAPER_BUILD_MS} ms; ratio {:.2})\n\
         lookups (5-tuple hash + entry): {:.1} M/s on one core\n\
         through connection tracking (new flows): {:.1} M/s\n\
         balance: fullest backend {:.3}x the mean, emptiest {:.3}x\n\
         one backend removed: {:.2} % of entries moved (ideal 1/N = {:.2} %)\n",
        report.table_size,
        report.backends,
        ms(report.build_min),
        ms(report.build_median),
        ms(report.build_median) / PAPER_BUILD_MS,
        report.lookups_per_second / 1e6,
        report.tracked_per_second / 1e6,
        report.max_over_mean,
        report.min_over_mean,
        report.moved_on_removal * 100.0,
        100.0 / report.backends.max(1) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_sane_figures() {
        let report = run(251, 10, 3, 10_000).unwrap();
        assert!(report.build_min <= report.build_median);
        assert!(report.lookups_per_second > 0.0 && report.tracked_per_second > 0.0);
        assert!(report.max_over_mean >= 1.0 && report.min_over_mean <= 1.0);
        // Removing one of 10 moves its own tenth and little else.
        assert!(
            (0.09..0.2).contains(&report.moved_on_removal),
            "{}",
            report.moved_on_removal
        );
        assert!(render(&report).contains("M = 251 entries, N = 10 backends"));
    }
}
